// The CUDA-only parts of ops.h (compiled with a CUDA libtorch).
#include <ATen/cuda/CUDAContext.h>

#include "autograd/ops.h"
#include "kernels/gemm_cuda.h"

namespace ramstream::autograd {

bool cuda_accumulate_weight_grad(at::Tensor& dw, const at::Tensor& dout, const at::Tensor& x) {
  const at::ScalarType t = x.scalar_type();
  if (dw.scalar_type() != at::kFloat || (t != at::kBFloat16 && t != at::kHalf) ||
      !dw.is_contiguous() || dout.stride(1) != 1 || x.stride(1) != 1 ||
      dout.stride(0) < dout.size(1) || x.stride(0) < x.size(1)) {
    return false;
  }
  // dw[OC,IC] += dout[N,OC]^T x[N,IC]: A = dout (K=N rows of M=OC), B = x (K rows of IC).
  const cublasStatus_t s = kernels::gemm_tn_accumulate_f32(
      at::cuda::getCurrentCUDABlasHandle(), at::cuda::getCurrentCUDAStream(),
      t == at::kBFloat16 ? kernels::HalfType::kBf16 : kernels::HalfType::kFp16, dw.size(0),
      dw.size(1), x.size(0), dout.data_ptr(), dout.stride(0), x.data_ptr(), x.stride(0),
      dw.data_ptr<float>(), dw.stride(0));
  TORCH_CHECK(s == CUBLAS_STATUS_SUCCESS,
              "accumulate_weight_grad: cublasGemmEx failed: ", cublasGetStatusString(s));
  return true;
}

}  // namespace ramstream::autograd
