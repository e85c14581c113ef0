// The same model written with libtorch autograd: the oracle for the hand-written backward in the
// tests and the peer in autograd_bench. Not part of the library that the engine links.
//
//   ModelParams leaves = reference::make_leaf_params(params, at::kDouble);
//   at::Tensor loss = reference::model_loss_sum(leaves, ids, targets, rope, cfg);
//   loss.backward();
//   ModelParams grads = reference::grads_of(leaves, cfg);
#pragma once

#include <ATen/ATen.h>

#include "autograd/rope.h"
#include "model/config.h"
#include "model/params.h"

namespace ramstream::autograd::reference {

at::Tensor rmsnorm(const at::Tensor& x, const at::Tensor& w, double eps);
// x [B,H,T,D]; cos/sin [T, D/2]; positions [B,T] int64 (positions.h), undefined: 0..T-1
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                const at::Tensor& positions = {});
// q [B,NH,T,D], k/v [B,NKV,T,D] -> [B,T,NH*D]; with positions, query t sees keys
// t - positions[b][t] .. t (an explicit [B,T,T] mask)
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& positions = {});
at::Tensor swiglu(const at::Tensor& gu);
// x [B,T,C] -> y [B,T,C]
at::Tensor block(const model::BlockParams& p, const at::Tensor& x, const RopeTables& rope,
                 const model::ModelConfig& cfg);
// Final hidden state before the final norm, [B,T,C].
at::Tensor hidden(const model::ModelParams& p, const at::Tensor& ids, const RopeTables& rope,
                  const model::ModelConfig& cfg);
at::Tensor logits(const model::ModelParams& p, const at::Tensor& ids, const RopeTables& rope,
                  const model::ModelConfig& cfg);
// Sum of the token losses over targets != -100 (a scalar tensor).
at::Tensor model_loss_sum(const model::ModelParams& p, const at::Tensor& ids,
                          const at::Tensor& targets, const RopeTables& rope,
                          const model::ModelConfig& cfg);

// A copy of `src` in `dtype` whose storage tensors are autograd leaves (requires_grad) and whose
// block views are rebound after that, so gradients of the views reach the leaves.
model::ModelParams make_leaf_params(const model::ModelParams& src, at::ScalarType dtype,
                                    const model::ModelConfig& cfg);
// The .grad() of every leaf, arranged as ModelParams (zeros where no grad was produced).
model::ModelParams grads_of(const model::ModelParams& leaves, const model::ModelConfig& cfg);
// Sets every leaf's grad to zero, keeping the tensors (so their memory stays allocated).
void zero_grads(model::ModelParams& leaves);

}  // namespace ramstream::autograd::reference
