// Model FLOPs of training, for MFU: what the model needs per token, not what the hardware runs.
//
// Counted (per token, forward + backward = 3 x forward, 2 FLOP per multiply-add):
//   - 6 x N_mm, where N_mm are the weights that enter a matrix multiply: per block wqkv
//     [q_dim + 2 kv_dim, C], wo [C, q_dim], wgu [2F, C], wd [C, F]; plus the LM head [V, C], which
//     for tied embeddings is the embedding matrix used as a GEMM. Not counted: the input
//     embedding lookup (a gather, no FLOPs), norm weights and biases (elementwise, negligible).
//   - attention's two matmuls per layer: scores Q K^T and the weighted sum P V. For a query at
//     position t, each costs 2 FLOP x q_dim x (keys seen); causal attention sees t + 1 keys,
//     T/2 on average over a row of T tokens. Forward: 2 matmuls x 2 x q_dim x T/2 = 2 q_dim T;
//     with backward x 3: 6 x L x q_dim x T per token. q_dim (not kv_dim) also under GQA: every
//     query head does its own dot products. Sliding windows are not modelled (the engine refuses
//     rows longer than the window).
// Not counted: the recompute of the blocks' forward in the backward. MFU counts model FLOPs
// (PaLM's definition), so recomputing activations lowers MFU rather than inflating it; hardware
// FLOPs (HFU) would add it.
//
//   const double flops = model::training_flops_per_token(cfg, /*seq_len=*/2048);
//   const double mfu = tokens_per_s * flops / peak_flops_per_s;
#pragma once

#include <cstdint>

#include "model/config.h"

namespace ramstream::model {

// Weights that enter a matrix multiply (see above): L x (qkv_dim C + C q_dim + 3 F C) + V C.
int64_t matmul_param_count(const ModelConfig& cfg);

// Attention score and value matmuls, forward + backward, per token: 6 x L x q_dim x seq_len.
double attention_flops_per_token(const ModelConfig& cfg, int64_t seq_len);

// 6 x matmul_param_count + attention_flops_per_token: FLOPs of one training token (forward and
// backward) in rows of `seq_len` tokens.
double training_flops_per_token(const ModelConfig& cfg, int64_t seq_len);

}  // namespace ramstream::model
