#include "kernels/gemm_bf16.h"

#include "kernels/cpu_isa.h"

#if RAMSTREAM_WITH_DNNL
#include <exception>

#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace ramstream::kernels {

bool bf16_gemm_native() {
  return cpu_has_avx512_bf16() || cpu_has_amx_bf16();
}

#if RAMSTREAM_WITH_DNNL

namespace {

const dnnl::engine& cpu_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

}  // namespace

GemmStatus gemm_bf16_f32(int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t a_row,
                         int64_t a_col, const uint16_t* b, int64_t b_row, int64_t b_col, float* c,
                         int64_t ldc, bool accumulate) {
  using dt = dnnl::memory::data_type;
  using md = dnnl::memory::desc;
  if (M <= 0 || N <= 0) return GemmStatus::kOk;
  try {
    const md a_md({M, K}, dt::bf16, {a_row, a_col});
    const md b_md({K, N}, dt::bf16, {b_row, b_col});
    const md c_md({M, N}, dt::f32, {ldc, 1});
    dnnl::primitive_attr attr;
    if (accumulate) {
      dnnl::post_ops ops;
      ops.append_sum(1.0f);
      attr.set_post_ops(ops);
    }
    // oneDNN caches the compiled kernel per descriptor (its primitive cache), so repeated shapes
    // pay only for the descriptor lookup.
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), attr, cpu_engine());
    const dnnl::matmul prim(pd);
    const dnnl::engine& eng = cpu_engine();
    dnnl::memory am(a_md, eng, const_cast<uint16_t*>(a));
    dnnl::memory bm(b_md, eng, const_cast<uint16_t*>(b));
    dnnl::memory cm(c_md, eng, c);
    dnnl::stream stream(eng);
    prim.execute(stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    stream.wait();
    return GemmStatus::kOk;
  } catch (const std::exception&) {
    // dnnl::error: a layout or shape this oneDNN build does not implement.
    return GemmStatus::kUnsupported;
  }
}

#else

GemmStatus gemm_bf16_f32(int64_t, int64_t, int64_t, const uint16_t*, int64_t, int64_t,
                         const uint16_t*, int64_t, int64_t, float*, int64_t, bool) {
  return GemmStatus::kUnavailable;
}

#endif

}  // namespace ramstream::kernels
