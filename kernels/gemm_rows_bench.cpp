// Decode GEMMs: kernels/gemm_rows.h against libtorch's at::mm (the BLAS it was built with) for the
// projections of SmolLM2-135M at n rows (the decode batch), interleaved round by round, in one
// process. Prints GFLOP/s of each and the ratio; decides where gemm_rows hands over to BLAS
// (kGemmRowsMax).
//
//   build/bin/gemm_rows_bench [--iters 20] [--json]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "kernels/cpu_isa.h"
#include "kernels/gemm_rows.h"
#include "util/bench_flags.h"

namespace rk = ramstream::kernels;

int main(int argc, char** argv) {
  const ramstream::BenchFlags f =
      ramstream::parse_bench_flags(argc, argv, "gemm_rows_bench", {{"iters", 20}});
  struct Shape {
    const char* name;
    int64_t oc, ic;
  };
  // SmolLM2-135M: hidden 576, 9 query + 3 KV heads of 64, MLP 1536 (gate and up fused).
  const Shape shapes[] = {{"qkv", 960, 576},
                          {"o", 576, 576},
                          {"gate_up", 3072, 576},
                          {"down", 576, 1536},
                          {"lm_head", 49152, 576}};
  using Clock = std::chrono::steady_clock;
  std::printf("isa %s, %d threads\n", rk::isa_name(rk::kernel_isa()), at::get_num_threads());
  std::printf("%5s %8s %12s %12s %7s\n", "rows", "shape", "gemm_rows", "at::mm", "ratio");
  std::string json = "[";
  for (int64_t n : {1, 8, 16, 32, 48, 64}) {
    double ours_s = 0, blas_s = 0, flops = 0;
    for (const Shape& s : shapes) {
      const at::Tensor x = at::randn({n, s.ic}), w = at::randn({s.oc, s.ic});
      at::Tensor out = at::empty({n, s.oc});
      double best_ours = 1e30, best_blas = 1e30;
      for (int64_t it = 0; it < f.value("iters"); ++it) {
        auto t0 = Clock::now();
        rk::gemm_rows_nt(x.data_ptr<float>(), n, s.ic, w.data_ptr<float>(), s.oc, nullptr,
                         out.data_ptr<float>());
        auto t1 = Clock::now();
        at::mm_out(out, x, w.t());
        auto t2 = Clock::now();
        best_ours = std::min(best_ours, std::chrono::duration<double>(t1 - t0).count());
        best_blas = std::min(best_blas, std::chrono::duration<double>(t2 - t1).count());
      }
      const double fl = 2.0 * double(n) * double(s.oc) * double(s.ic);
      std::printf("%5lld %8s %10.1f G %10.1f G %6.2fx\n", (long long)n, s.name,
                  fl / best_ours / 1e9, fl / best_blas / 1e9, best_blas / best_ours);
      ours_s += best_ours;
      blas_s += best_blas;
      flops += fl;
    }
    std::printf("%5lld %8s %10.1f G %10.1f G %6.2fx\n", (long long)n, "all", flops / ours_s / 1e9,
                flops / blas_s / 1e9, blas_s / ours_s);
    json += std::string(json.size() > 1 ? "," : "") + "{\"rows\":" + std::to_string(n) +
            ",\"gemm_rows_gflops\":" + std::to_string(flops / ours_s / 1e9) +
            ",\"blas_gflops\":" + std::to_string(flops / blas_s / 1e9) + "}";
  }
  if (f.json) std::printf("{\"rows\":%s]}\n", json.c_str());
  return 0;
}
