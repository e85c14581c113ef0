// Fused CPU AdamW over flat fp32 arrays: one pass reads param, m, v and grad and writes param,
// m, v and (optionally) the new bf16 working copy, vectorised (AVX2+FMA, chosen at run time) and
// spread over TBB threads in fixed 64K-element chunks.
//
// The arithmetic is torch::optim::AdamW's step (libtorch 1.13, torch/csrc/api/src/optim/
// adamw.cpp, amsgrad off), operation by operation in fp32 with its scalars formed in double:
//   g  = grad * grad_scale                     (grad_scale: clipping coefficient, or 1)
//   p *= 1 - lr*wd
//   m  = m*beta1 + (1-beta1)*g                 one fused multiply-add, as ATen's add_ kernel
//   v  = v*beta2 + ((1-beta2)*g)*g             one fused multiply-add, as ATen's addcmul_ kernel
//   bias_correction1 = 1 - beta1^step, bias_correction2 = 1 - beta2^step          (double)
//   denom = sqrt(v) / sqrt(bias_correction2) + eps
//   p += (-lr/bias_correction1) * m / denom
// With torch's options set to the doubles of this config's floats, ATen 1.13 on an AVX2 CPU
// gives the same bits (adamw_test checks within 1e-6 relative and reports the exact-match count).
//
//   AdamWConfig cfg;  cfg.lr = 3e-4f;
//   adamw_update(master, m, v, grad_fp32, n, cfg, step, clip_coef, working_bf16);
//   // grads staged in the bf16 working copy itself (dead between backward and update):
//   adamw_update(master, m, v, /*grad=*/working_bf16, n, cfg, step, clip_coef, working_bf16);
#pragma once

#include <cstdint>

#include "kernels/bf16.h"

namespace ramstream::kernels {

struct AdamWConfig {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.01f;
};

// One AdamW step over n elements. step >= 1 is the 1-based count of updates including this one
// (it drives the bias corrections). param, m, v and grad must not overlap each other; working
// (nullable) receives the new param rounded to bf16 and must not overlap any of them.
// max_threads: 0 = the calling TBB arena (all cores by default), 1 = serially in the calling
// thread, k > 1 = at most k threads. Throws std::invalid_argument for n < 0 or step < 1.
void adamw_update(float* param, float* m, float* v, const float* grad, int64_t n,
                  const AdamWConfig& cfg, int64_t step, float grad_scale, bf16* working,
                  int max_threads = 0);

// The same with bf16 grads. Here `working` may ALIAS `grad` exactly (the same pointer): each
// element's grad is read before its new weight is written, so grads staged in the dead working
// copy are consumed in place. A partial overlap (working != grad but the ranges intersect) would
// read already-overwritten grads and is rejected with std::invalid_argument.
void adamw_update(float* param, float* m, float* v, const bf16* grad, int64_t n,
                  const AdamWConfig& cfg, int64_t step, float grad_scale, bf16* working,
                  int max_threads = 0);

}  // namespace ramstream::kernels
