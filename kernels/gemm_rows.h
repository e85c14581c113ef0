// out[n, oc] = x[n, ic] @ w[oc, ic]^T (+ bias) for few rows n (decode: one row per sequence),
// fp32. A BLAS packs the weight matrix into blocks on every call, which for a handful of rows
// costs another full pass over the weights; here each weight row is read once, straight from
// where it lies, and applied to all n rows while it is in L1 (parallel over output rows). With
// AVX-512F (and n >= 2) each instruction serves two x rows: twice the multiply-adds per
// instruction, the same bits as the AVX2 kernel (kernels/cpu_isa.h, kernel_avx512).
//
//   gemm_rows_nt(x, n, ic, w, oc, bias_or_null, out);   // x [n,ic], w [oc,ic], out [n,oc]
#pragma once

#include <cstdint>

namespace ramstream::kernels {

// Rows up to which the Generator uses gemm_rows_nt (decode batches); above, the BLAS packing pays.
constexpr int64_t kGemmRowsMax = 32;

void gemm_rows_nt(const float* x, int64_t n, int64_t ic, const float* w, int64_t oc,
                  const float* bias, float* out);

}  // namespace ramstream::kernels
