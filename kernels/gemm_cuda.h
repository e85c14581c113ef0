// Weight-grad GEMM with an fp32 accumulator for half-precision activations, on cuBLAS (CUDA builds
// only). Training keeps every parameter grad in fp32 on the device while activations are bf16:
// one GEMM per linear per micro-batch (and per cross-entropy chunk for the LM head) adds into the
// same fp32 buffer, so the products are summed in fp32 and never rounded to bf16 on the way.
//
// Row-major shapes: C[M,N] += A[K,M]^T B[K,N]; A and B bf16 (or fp16) with row strides lda, ldb
// (elements, >= M and >= N), C fp32 contiguous rows of stride ldc (>= N).
//
//   cublasHandle_t h = at::cuda::getCurrentCUDABlasHandle();
//   cublasStatus_t s = kernels::gemm_tn_accumulate_f32(h, stream, kernels::HalfType::kBf16, M, N,
//                                                      K, dout, OC, x, IC, dw, IC);
#pragma once

#include <cstdint>

#include <cublas_v2.h>
#include <cuda_runtime.h>

namespace ramstream::kernels {

enum class HalfType { kBf16, kFp16 };

// Runs on `stream` (set on the handle); returns the cuBLAS status (CUBLAS_STATUS_INVALID_VALUE
// for sizes beyond int32 or strides below the row length).
cublasStatus_t gemm_tn_accumulate_f32(cublasHandle_t handle, cudaStream_t stream, HalfType type,
                                      int64_t M, int64_t N, int64_t K, const void* A, int64_t lda,
                                      const void* B, int64_t ldb, float* C, int64_t ldc);

}  // namespace ramstream::kernels
