// Hand-written forward and backward of every op of a Llama-family decoder (no torch autograd).
//
// Shapes: B batch, T tokens, N = B*T rows, C hidden, V vocab, NH query heads, NKV key/value
// heads, G = NH/NKV, D head dim, F MLP width, QKV = (NH + 2*NKV)*D.
//
// The grad contract (every *_backward here and in block.h / model.h keeps it):
//   - parameter grads ACCUMULATE (+=), so micro-batches and tied weights sum for free, and they
//     are held in the acc dtype (fp32 for bf16 activations): thousands of small contributions
//     (one per cross-entropy chunk per micro-batch, frequent tokens in the embedding) would round
//     away in bf16;
//   - activation grads OVERWRITE (=), so no buffer needs zeroing between ops;
//   - except the residual stream: rmsnorm_backward ADDS into dx, because its input x is the
//     residual stream whose grad already holds the skip connection's contribution.
// All tensors are contiguous CPU or CUDA tensors of one floating dtype (float64 for the oracle
// tests, float32 on the CPU backend, bf16 on CUDA) unless a comment says otherwise; statistics
// kept for the backward (rstd, lse) are in the accumulation type (float64 for float64 inputs,
// float32 otherwise). Outputs are preallocated by the caller so a workspace can reuse them.
//
//   rmsnorm_forward(h, rstd, x, w, eps);                // h = x * rstd * w
//   ...
//   rmsnorm_backward(dx, dw, dh, x, w, rstd);            // dx += ..., dw += ...
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

#include "autograd/positions.h"

namespace ramstream::autograd {

constexpr int64_t kIgnoreIndex = -100;

// The dtype of saved statistics and of reductions for inputs of `dtype`.
at::ScalarType acc_dtype(at::ScalarType dtype);

// ---- embedding: out[n] = wte[ids[n]]
// out [N,C], ids [N] int64, wte [V,C]
void embedding_forward(at::Tensor& out, const at::Tensor& ids, const at::Tensor& wte);
// dwte [V,C] += (acc dtype), dout [N,C]
void embedding_backward(at::Tensor& dwte, const at::Tensor& dout, const at::Tensor& ids);

// ---- RMSNorm: out = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps)
// out [N,C], rstd [N] (acc dtype), x [N,C], w [C]
void rmsnorm_forward(at::Tensor& out, at::Tensor& rstd, const at::Tensor& x, const at::Tensor& w,
                     double eps);
// dx [N,C] += (residual stream), dw [C] += (acc dtype), dout [N,C]
void rmsnorm_backward(at::Tensor& dx, at::Tensor& dw, const at::Tensor& dout, const at::Tensor& x,
                      const at::Tensor& w, const at::Tensor& rstd);

// ---- linear: out = x @ w^T + b
// out [N,OC], x [N,IC], w [OC,IC], b [OC] or undefined
void linear_forward(at::Tensor& out, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);
// dx [N,IC] = (skipped when undefined), dw [OC,IC] +=, db [OC] += (skipped when undefined);
// dw and db in the dtype of x or its acc dtype.
void linear_backward(at::Tensor& dx, at::Tensor& dw, at::Tensor& db, const at::Tensor& dout,
                     const at::Tensor& x, const at::Tensor& w);
// dw [OC,IC] += dout[N,OC]^T x[N,IC], summed in dw's dtype: with bf16 inputs and an fp32 dw no
// partial sum is rounded to bf16 (CUDA: one cuBLAS GEMM with an fp32 output; CPU: the inputs
// widened to fp32, whose products of bf16 values are exact).
void accumulate_weight_grad(at::Tensor& dw, const at::Tensor& dout, const at::Tensor& x);

// ---- RoPE, rotate-half layout (Hugging Face): for i < D/2, with (a, b) = (x[i], x[i + D/2]),
//      out[i] = a*cos - b*sin, out[i + D/2] = b*cos + a*sin, angle = pos * inv_freq[i], where pos
//      is t, or positions.pos[b][t] for packed rows (positions.h).
// cos, sin [T, D/2] in the acc dtype (see rope.h for building them).
// out [B,H,T,D] contiguous, x [B,H,T,D] any strides with the last dim contiguous (a view into the
// fused qkv projection).
void rope_forward(at::Tensor& out, const at::Tensor& x, const at::Tensor& cos,
                  const at::Tensor& sin, const TokenPositions& positions = {});
// dx [B,H,T,D] = (any strides, last dim contiguous), dout [B,H,T,D]. RoPE is a rotation: its
// backward is the rotation by -angle.
void rope_backward(at::Tensor& dx, const at::Tensor& dout, const at::Tensor& cos,
                   const at::Tensor& sin, const TokenPositions& positions = {});

// ---- causal self-attention with grouped-query heads, softmax(q k^T / sqrt(D)) v.
// Query head h reads key/value head h / G. Only the log-sum-exp of each softmax row is kept for
// the backward, which recomputes the probabilities (T x T per head never outlives the op).
// Packed rows (positions.packed()): block-causal, query t sees keys t - pos[b][t] .. t only; the
// CPU loops compute each document's L x L block alone, never the blocks between documents.
// out [B,T,NH*D] (ready for the output projection), lse [B,NH,T] (acc dtype),
// q [B,NH,T,D], k, v [B,NKV,T,D]
void attention_forward(at::Tensor& out, at::Tensor& lse, const at::Tensor& q, const at::Tensor& k,
                       const at::Tensor& v, const TokenPositions& positions = {});
// dq [B,NH,T,D] =, dk, dv [B,NKV,T,D] =, dout [B,T,NH*D]; out and lse from the forward (the
// CPU path needs only lse; the fused CUDA kernels read out too).
void attention_backward(at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, const at::Tensor& dout,
                        const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& out, const at::Tensor& lse,
                        const TokenPositions& positions = {});

// ---- SwiGLU: out = silu(gate) * up, with gu = [gate | up] as produced by the fused projection.
// out [N,F], gu [N,2F]
void swiglu_forward(at::Tensor& out, const at::Tensor& gu);
// dgu [N,2F] =, dout [N,F]
void swiglu_backward(at::Tensor& dgu, const at::Tensor& dout, const at::Tensor& gu);

// ---- residual: out = x + y. Its backward is the identity on both inputs, which the block
// expresses by letting both branches add into one residual-grad buffer.
void residual_forward(at::Tensor& out, const at::Tensor& x, const at::Tensor& y);

// ---- LM head + cross-entropy, in chunks of rows so that N x V logits never exist at once.
// h [N,C] (final-normed hidden), w [V,C]. Only the rows with a target go through the head. They
// are found on the host, where the targets come from, so the step never asks the device how many
// there are (no nonzero(), no item()); the loss is summed on the device.
struct LossRows {
  at::Tensor index;   // [R] int64: the rows of the batch that carry a loss
  at::Tensor target;  // [R] int64: their targets, each in [0, V)
  int64_t count() const { return index.defined() ? index.numel() : 0; }
  LossRows to(const at::Device& device) const;
};
// targets [N] (or [B,T]) int64, read on the host; kIgnoreIndex rows are skipped. Throws c10::Error
// naming the first position whose target is outside [0, vocab) and not the ignore index.
LossRows find_loss_rows(const at::Tensor& targets, int64_t vocab);

// loss_sum [] float64 on h's device += SUM of -log p(target) over the rows.
void cross_entropy_forward(at::Tensor& loss_sum, const at::Tensor& h, const at::Tensor& w,
                           const LossRows& rows, int64_t chunk_rows);
// Forward and backward in one pass over the chunks, for the loss `grad_scale * loss_sum` (pass
// 1/num_targets of the whole step for a mean): dh [N,C] = (zero on rows without a target),
// dw [V,C] += (acc dtype or h's dtype).
void cross_entropy_forward_backward(at::Tensor& loss_sum, at::Tensor& dh, at::Tensor& dw,
                                    const at::Tensor& h, const at::Tensor& w, const LossRows& rows,
                                    double grad_scale, int64_t chunk_rows);

// The same for whole-model code and tests: targets [N] int64 on any device (read to the host),
// the loss read back.
struct CrossEntropyResult {
  double loss_sum = 0.0;
  int64_t num_targets = 0;
};
CrossEntropyResult chunked_cross_entropy_forward(const at::Tensor& h, const at::Tensor& w,
                                                 const at::Tensor& targets, int64_t chunk_rows);
CrossEntropyResult chunked_cross_entropy_forward_backward(at::Tensor& dh, at::Tensor& dw,
                                                          const at::Tensor& h, const at::Tensor& w,
                                                          const at::Tensor& targets,
                                                          double grad_scale, int64_t chunk_rows);
// Which implementation an op runs: hand-fused loops for CPU tensors; ATen compositions for other
// devices (CUDA, where attention uses libtorch 2.x's flash kernel for bf16/fp16 when present).
// Tests force the compositions on the CPU so that the math of the CUDA path is checked without a
// GPU.
void set_composite_ops_for_testing(bool on);

#if RAMSTREAM_WITH_CUDA
// accumulate_weight_grad's CUDA path for bf16/fp16 inputs and an fp32 dw (ops_cuda.cpp); false
// when the layout does not suit cuBLAS (then the caller widens the inputs instead).
bool cuda_accumulate_weight_grad(at::Tensor& dw, const at::Tensor& dout, const at::Tensor& x);
#endif

// Rows per chunk so that one chunk of logits (rows x V in the acc dtype) stays near `bytes`.
int64_t cross_entropy_chunk_rows(int64_t vocab_size, int64_t bytes = 8 << 20);

}  // namespace ramstream::autograd
