// Whole-model forward and backward without streaming: embedding -> blocks -> final norm ->
// chunked LM head + cross-entropy. This is the reference the streaming engine must equal, and
// the path the CPU tests compare against libtorch autograd and Hugging Face.
//
//   ModelWorkspace ws(cfg, B, T, at::kFloat, ActivationMode::kRecompute);
//   ModelParams grads = allocate_model_params(cfg, at::kFloat);
//   at::Tensor targets = next_token_targets(labels);
//   CrossEntropyResult r = model_forward_backward(params, grads, ids, targets,
//                                                 1.0 / count_targets(targets), ws);
//   double mean_loss = r.loss_sum / r.num_targets;
//
// Packed rows: pass their positions ([B,T] int64, see positions.h) as the last argument; each
// document then sees only itself and starts at RoPE position 0. Without them (an undefined
// tensor) every row is one document with positions 0..T-1.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

#include "autograd/block.h"
#include "autograd/ops.h"
#include "autograd/positions.h"
#include "autograd/rope.h"
#include "model/config.h"
#include "model/params.h"

namespace ramstream::autograd {

enum class ActivationMode {
  kSaved,      // every block keeps its BlockActs from the forward to the backward
  kRecompute,  // only block inputs are kept; each block is recomputed before its backward
};

// Buffers for one (B, T) shape; reused across steps.
struct ModelWorkspace {
  ModelWorkspace(const model::ModelConfig& cfg, int64_t B, int64_t T, at::ScalarType dtype,
                 ActivationMode mode, at::Device device = at::kCPU);

  model::ModelConfig cfg;
  int64_t B, T;
  ActivationMode mode;
  RopeTables rope;
  std::vector<at::Tensor> checkpoints;  // L+1 of [N,C]: input of layer l; [L] = last hidden
  std::vector<BlockActs> acts;          // L in kSaved mode, 1 in kRecompute mode
  BlockScratch scratch;
  at::Tensor y_recompute;  // [N,C] output of a recomputed block (kRecompute only)
  at::Tensor final_rstd;   // [N]
  at::Tensor final_h;      // [N,C] final-norm output
  at::Tensor dh;           // [N,C]
  at::Tensor dres;         // [N,C] residual-stream grad
  int64_t ce_chunk_rows;

  int64_t bytes() const;  // everything this workspace holds
};

// labels [B,T] in the Hugging Face convention (position t is predicted from tokens < t) ->
// targets [B,T] where targets[:, t] = labels[:, t+1] and the last column is kIgnoreIndex.
at::Tensor next_token_targets(const at::Tensor& labels);
int64_t count_targets(const at::Tensor& targets);

// Loss only (eval). ids, targets, positions [B,T] int64 (positions validated on the host).
CrossEntropyResult model_forward(const model::ModelParams& p, const at::Tensor& ids,
                                 const at::Tensor& targets, ModelWorkspace& ws,
                                 const at::Tensor& positions = {});

// One forward and backward: grads += d(grad_scale * loss_sum)/dparams. Returns the loss sum and
// the target count of this batch.
CrossEntropyResult model_forward_backward(const model::ModelParams& p, model::ModelParams& grads,
                                          const at::Tensor& ids, const at::Tensor& targets,
                                          double grad_scale, ModelWorkspace& ws,
                                          const at::Tensor& positions = {});

// Full logits [B,T,V] (tests, small evaluations; the training path never builds them).
at::Tensor model_logits(const model::ModelParams& p, const at::Tensor& ids, ModelWorkspace& ws,
                        const at::Tensor& positions = {});

}  // namespace ramstream::autograd
