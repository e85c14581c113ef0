// Hand-written forward and backward of every op of a Llama-family decoder (no torch autograd).
//
// Shapes: B batch, T tokens, N = B*T rows, C hidden, V vocab, NH query heads, NKV key/value
// heads, G = NH/NKV, D head dim, F MLP width, QKV = (NH + 2*NKV)*D.
//
// The grad contract (every *_backward here and in block.h / model.h keeps it):
//   - parameter grads ACCUMULATE (+=), so micro-batches and tied weights sum for free;
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

namespace ramstream::autograd {

constexpr int64_t kIgnoreIndex = -100;

// The dtype of saved statistics and of reductions for inputs of `dtype`.
at::ScalarType acc_dtype(at::ScalarType dtype);

// ---- embedding: out[n] = wte[ids[n]]
// out [N,C], ids [N] int64, wte [V,C]
void embedding_forward(at::Tensor& out, const at::Tensor& ids, const at::Tensor& wte);
// dwte [V,C] +=, dout [N,C]
void embedding_backward(at::Tensor& dwte, const at::Tensor& dout, const at::Tensor& ids);

// ---- RMSNorm: out = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps)
// out [N,C], rstd [N] (acc dtype), x [N,C], w [C]
void rmsnorm_forward(at::Tensor& out, at::Tensor& rstd, const at::Tensor& x, const at::Tensor& w,
                     double eps);
// dx [N,C] += (residual stream), dw [C] +=, dout [N,C]
void rmsnorm_backward(at::Tensor& dx, at::Tensor& dw, const at::Tensor& dout, const at::Tensor& x,
                      const at::Tensor& w, const at::Tensor& rstd);

// ---- linear: out = x @ w^T + b
// out [N,OC], x [N,IC], w [OC,IC], b [OC] or undefined
void linear_forward(at::Tensor& out, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);
// dx [N,IC] = (skipped when undefined), dw [OC,IC] +=, db [OC] += (skipped when undefined)
void linear_backward(at::Tensor& dx, at::Tensor& dw, at::Tensor& db, const at::Tensor& dout,
                     const at::Tensor& x, const at::Tensor& w);

// ---- RoPE, rotate-half layout (Hugging Face): for i < D/2, with (a, b) = (x[i], x[i + D/2]),
//      out[i] = a*cos - b*sin, out[i + D/2] = b*cos + a*sin, angle = pos * inv_freq[i].
// cos, sin [T, D/2] in the acc dtype (see rope.h for building them).
// out [B,H,T,D] contiguous, x [B,H,T,D] any strides with the last dim contiguous (a view into the
// fused qkv projection).
void rope_forward(at::Tensor& out, const at::Tensor& x, const at::Tensor& cos,
                  const at::Tensor& sin);
// dx [B,H,T,D] = (any strides, last dim contiguous), dout [B,H,T,D]. RoPE is a rotation: its
// backward is the rotation by -angle.
void rope_backward(at::Tensor& dx, const at::Tensor& dout, const at::Tensor& cos,
                   const at::Tensor& sin);

// ---- causal self-attention with grouped-query heads, softmax(q k^T / sqrt(D)) v.
// Query head h reads key/value head h / G. Only the log-sum-exp of each softmax row is kept for
// the backward, which recomputes the probabilities (T x T per head never outlives the op).
// out [B,T,NH*D] (ready for the output projection), lse [B,NH,T] (acc dtype),
// q [B,NH,T,D], k, v [B,NKV,T,D]
void attention_forward(at::Tensor& out, at::Tensor& lse, const at::Tensor& q, const at::Tensor& k,
                       const at::Tensor& v);
// dq [B,NH,T,D] =, dk, dv [B,NKV,T,D] =, dout [B,T,NH*D]; out and lse from the forward (the
// CPU path needs only lse; the fused CUDA kernels read out too).
void attention_backward(at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, const at::Tensor& dout,
                        const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& out, const at::Tensor& lse);

// ---- SwiGLU: out = silu(gate) * up, with gu = [gate | up] as produced by the fused projection.
// out [N,F], gu [N,2F]
void swiglu_forward(at::Tensor& out, const at::Tensor& gu);
// dgu [N,2F] =, dout [N,F]
void swiglu_backward(at::Tensor& dgu, const at::Tensor& dout, const at::Tensor& gu);

// ---- residual: out = x + y. Its backward is the identity on both inputs, which the block
// expresses by letting both branches add into one residual-grad buffer.
void residual_forward(at::Tensor& out, const at::Tensor& x, const at::Tensor& y);

// ---- LM head + cross-entropy, in chunks of rows so that N x V logits never exist at once.
// h [N,C] (final-normed hidden), w [V,C], targets [N] int64 (kIgnoreIndex rows are skipped).
// Returns the SUM of -log p(target) over counted rows and the number of counted rows.
struct CrossEntropyResult {
  double loss_sum = 0.0;
  int64_t num_targets = 0;
};
CrossEntropyResult chunked_cross_entropy_forward(const at::Tensor& h, const at::Tensor& w,
                                                 const at::Tensor& targets, int64_t chunk_rows);
// Forward and backward in one pass over the chunks, for the loss `grad_scale * loss_sum` (pass
// 1/num_targets of the whole step for a mean): dh [N,C] =, dw [V,C] +=.
CrossEntropyResult chunked_cross_entropy_forward_backward(at::Tensor& dh, at::Tensor& dw,
                                                          const at::Tensor& h, const at::Tensor& w,
                                                          const at::Tensor& targets,
                                                          double grad_scale, int64_t chunk_rows);
// Which implementation an op runs: hand-fused loops for CPU tensors; ATen compositions for other
// devices (CUDA, where attention uses libtorch 2.x's flash kernel for bf16/fp16 when present).
// Tests force the compositions on the CPU so that the math of the CUDA path is checked without a
// GPU.
void set_composite_ops_for_testing(bool on);

// Rows per chunk so that one chunk of logits (rows x V in the acc dtype) stays near `bytes`.
int64_t cross_entropy_chunk_rows(int64_t vocab_size, int64_t bytes = 8 << 20);

}  // namespace ramstream::autograd
