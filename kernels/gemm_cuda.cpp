#include "kernels/gemm_cuda.h"

#include <limits>

namespace ramstream::kernels {

cublasStatus_t gemm_tn_accumulate_f32(cublasHandle_t handle, cudaStream_t stream, HalfType type,
                                      int64_t M, int64_t N, int64_t K, const void* A, int64_t lda,
                                      const void* B, int64_t ldb, float* C, int64_t ldc) {
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  if (M < 0 || N < 0 || K < 0 || M > kMax || N > kMax || K > kMax || lda > kMax || ldb > kMax ||
      ldc > kMax || lda < M || ldb < N || ldc < N) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (M == 0 || N == 0 || K == 0) return CUBLAS_STATUS_SUCCESS;
  cublasStatus_t s = cublasSetStream(handle, stream);
  if (s != CUBLAS_STATUS_SUCCESS) return s;
  // cuBLAS is column-major: the row-major C[M,N] is C^T[N,M] to it, B[K,N] is B^T[N,K] and A[K,M]
  // is A^T[M,K]. C^T = B^T (A^T)^T, i.e. op(B^T) = N, op(A^T) = T, with m = N, n = M, k = K.
  const cudaDataType_t t = type == HalfType::kBf16 ? CUDA_R_16BF : CUDA_R_16F;
  const float alpha = 1.0f, beta = 1.0f;
  return cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_T, static_cast<int>(N), static_cast<int>(M),
                      static_cast<int>(K), &alpha, B, t, static_cast<int>(ldb), A, t,
                      static_cast<int>(lda), &beta, C, CUDA_R_32F, static_cast<int>(ldc),
                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

}  // namespace ramstream::kernels
