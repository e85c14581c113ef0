// bf16 x bf16 -> fp32 GEMMs on the CPU through oneDNN: the weight-grad product of the bf16 CPU
// path, dW (fp32) += dOut^T X, with every product summed in fp32 and nothing rounded to bf16 (what
// the CUDA path's fp32-output cuBLAS GEMM computes). ATen 1.13 has no bf16 -> fp32 GEMM, and
// widening both inputs to fp32 first runs the product at the fp32 rate (half or less of bf16's on
// AVX512-BF16 / AMX CPUs) and moves twice the bytes.
//
// C[M,N] (+)= A[M,K] B[K,N], every matrix given by its element strides so that transposed views
// need no copy; a, b are raw bf16 bit patterns (uint16), c is fp32.
//
//   // dw [OC,IC] += dout[R,OC]^T x[R,IC]
//   kernels::GemmStatus s = kernels::gemm_bf16_f32(OC, IC, R, dout, 1, OC, x, IC, 1, dw, IC,
//                                                  /*accumulate=*/true);
//   if (s != kernels::GemmStatus::kOk) ... widen and use the fp32 GEMM instead
//
// Threads: oneDNN's own runtime (Debian's build: OpenMP, omp_get_max_threads() of the calling
// thread). Available only when the build found oneDNN (RAMSTREAM_WITH_DNNL); otherwise every call
// returns kUnavailable and callers keep their fp32 fallback.
#pragma once

#include <cstdint>

namespace ramstream::kernels {

enum class GemmStatus { kOk, kUnavailable, kUnsupported };

// The CPU can run the product natively in bf16 (AVX512-BF16 or AMX-BF16): otherwise oneDNN
// emulates it and the fp32 fallback is the faster one.
bool bf16_gemm_native();

// Strides are in elements: element (i, j) of A is a[i * a_row + j * a_col].
GemmStatus gemm_bf16_f32(int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t a_row,
                         int64_t a_col, const uint16_t* b, int64_t b_row, int64_t b_col, float* c,
                         int64_t ldc, bool accumulate);

}  // namespace ramstream::kernels
