// Device-generic versions of the ops in ops.h, written as ATen compositions (internal).
// ops.cpp calls them for non-CPU tensors, and on the CPU when tests ask for them; they keep the
// grad contract and the shapes of ops.h. Statistics are computed in the acc dtype.
#pragma once

#include <ATen/ATen.h>

#include "autograd/positions.h"

namespace ramstream::autograd::composite {

void rmsnorm_forward(at::Tensor& out, at::Tensor& rstd, const at::Tensor& x, const at::Tensor& w,
                     double eps);
void rmsnorm_backward(at::Tensor& dx, at::Tensor& dw, const at::Tensor& dout, const at::Tensor& x,
                      const at::Tensor& w, const at::Tensor& rstd);
// sign +1: forward rotation, -1: its inverse (the backward).
void rope_apply(const at::Tensor& out, const at::Tensor& x, const at::Tensor& cos,
                const at::Tensor& sin, const TokenPositions& positions, int sign);
// Packed rows: flash attention's variable-length form over the documents (CUDA, half precision,
// libtorch >= 2.1), else the scores masked block-causally.
void attention_forward(at::Tensor& out, at::Tensor& lse, const at::Tensor& q, const at::Tensor& k,
                       const at::Tensor& v, const TokenPositions& positions);
void attention_backward(at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, const at::Tensor& dout,
                        const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& out, const at::Tensor& lse,
                        const TokenPositions& positions);
void swiglu_forward(at::Tensor& out, const at::Tensor& gu);
void swiglu_backward(at::Tensor& dgu, const at::Tensor& dout, const at::Tensor& gu);
// logits [R,V] of counted rows, targets [R]: loss_sum [] float64 += the loss sum (on the device,
// nothing is read back); when `backward`, overwrites logits with grad_scale * (softmax - onehot).
void cross_entropy_rows(at::Tensor& loss_sum, at::Tensor& logits, const at::Tensor& targets,
                        bool backward, double grad_scale);

}  // namespace ramstream::autograd::composite
