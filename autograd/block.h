// Forward and backward of one Llama-family transformer block, composed from ops.h:
//
//   h1 = rmsnorm(x);  q,k,v = rope(split(h1 @ wqkv^T + bqkv));  att = attention(q, k, v)
//   x2 = x + att @ wo^T (+ bo);  h2 = rmsnorm(x2);  y = x2 + (silu(h2 @ wg^T) * (h2 @ wu^T)) @ wd^T
//
// block_forward fills a BlockActs with what block_backward reads. To recompute instead of
// keeping activations, call block_forward again from the saved block input just before
// block_backward (the engine does this; see model.h ActivationMode::kRecompute).
//
//   BlockActs acts = BlockActs::allocate(cfg, B, T, opts);
//   BlockScratch scratch = BlockScratch::allocate(cfg, B, T, opts);
//   block_forward(y, acts, scratch, params, x, rope, cfg);
//   dres.copy_(dy);                                   // residual-stream grad, updated in place
//   block_backward(dres, grads, acts, scratch, params, rope, cfg);   // dres = dL/dx, grads +=
//
// Packed rows pass their TokenPositions (positions.h) to both; forward and backward must get the
// same ones.
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

#include "autograd/positions.h"
#include "autograd/rope.h"
#include "model/config.h"
#include "model/params.h"

namespace ramstream::autograd {

// What the backward of a block needs, in the shapes of ops.h (N = B*T).
struct BlockActs {
  at::Tensor x;      // [N,C] block input; a view of the caller's checkpoint, not owned
  at::Tensor rstd1;  // [N] acc dtype
  at::Tensor h1;     // [N,C] attention-norm output
  at::Tensor q;      // [B,NH,T,D] after rope
  at::Tensor k;      // [B,NKV,T,D] after rope
  at::Tensor v;      // [B,NKV,T,D]
  at::Tensor lse;    // [B,NH,T] acc dtype, softmax statistics
  at::Tensor att;    // [N,NH*D] attention output before wo
  at::Tensor x2;     // [N,C] residual stream after attention
  at::Tensor rstd2;  // [N]
  at::Tensor h2;     // [N,C] mlp-norm output
  at::Tensor gu;     // [N,2F] gate|up projections

  static BlockActs allocate(const model::ModelConfig& cfg, int64_t B, int64_t T,
                            at::ScalarType dtype, at::Device device = at::kCPU);
  int64_t bytes() const;
};

// Temporaries of one block, shared by all layers; nothing in here outlives a block call.
struct BlockScratch {
  at::Tensor qkv;   // [N,QKV] projection before rope; in the backward, its grad
  at::Tensor proj;  // [N,C] output of wo / wd before the residual add
  at::Tensor s;     // [N,F] swiglu output (recomputed in the backward for wd's grad)
  at::Tensor ds;    // [N,F]
  at::Tensor dgu;   // [N,2F]
  at::Tensor dh;    // [N,C] grad of a norm output
  at::Tensor datt;  // [N,NH*D]
  at::Tensor dq;    // [B,NH,T,D]
  at::Tensor dk;    // [B,NKV,T,D]
  at::Tensor dv;    // [B,NKV,T,D]

  static BlockScratch allocate(const model::ModelConfig& cfg, int64_t B, int64_t T,
                               at::ScalarType dtype, at::Device device = at::kCPU);
  int64_t bytes() const;
};

// y [B,T,C] or [N,C] =; x the same shape (kept by reference in acts.x).
void block_forward(at::Tensor& y, BlockActs& acts, BlockScratch& scratch,
                   const model::BlockParams& p, const at::Tensor& x, const RopeTables& rope,
                   const model::ModelConfig& cfg, const TokenPositions& positions = {});

// dres [N,C]: on entry dL/dy, on return dL/dx (updated in place: the residual stream).
// grads +=.
void block_backward(at::Tensor& dres, model::BlockParams& grads, const BlockActs& acts,
                    BlockScratch& scratch, const model::BlockParams& p, const RopeTables& rope,
                    const model::ModelConfig& cfg, const TokenPositions& positions = {});

}  // namespace ramstream::autograd
