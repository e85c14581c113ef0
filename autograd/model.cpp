#include "autograd/model.h"

namespace ramstream::autograd {

ModelWorkspace::ModelWorkspace(const model::ModelConfig& cfg_, int64_t B_, int64_t T_,
                               at::ScalarType dtype, ActivationMode mode_, at::Device device)
    : cfg(cfg_), B(B_), T(T_), mode(mode_) {
  TORCH_CHECK(cfg.sliding_window == 0 || T <= cfg.sliding_window, "sequence length ", T,
              " exceeds the model's sliding_window ", cfg.sliding_window,
              ": sliding-window attention is unsupported (full causal attention only)");
  const int64_t N = B * T, C = cfg.hidden_size, L = cfg.num_layers;
  const auto o = at::TensorOptions().dtype(dtype).device(device);
  rope = make_rope_tables(cfg, T, dtype, device);
  for (int64_t l = 0; l <= L; ++l) checkpoints.push_back(at::empty({N, C}, o));
  const int64_t num_acts = mode == ActivationMode::kSaved ? L : 1;
  for (int64_t l = 0; l < num_acts; ++l)
    acts.push_back(BlockActs::allocate(cfg, B, T, dtype, device));
  scratch = BlockScratch::allocate(cfg, B, T, dtype, device);
  if (mode == ActivationMode::kRecompute) y_recompute = at::empty({N, C}, o);
  final_rstd = at::empty({N}, o.dtype(acc_dtype(dtype)));
  final_h = at::empty({N, C}, o);
  dh = at::empty({N, C}, o);
  dres = at::empty({N, C}, o);
  ce_chunk_rows = cross_entropy_chunk_rows(cfg.vocab_size);
}

int64_t ModelWorkspace::bytes() const {
  auto b = [](const at::Tensor& t) {
    return t.defined() ? t.numel() * static_cast<int64_t>(t.element_size()) : int64_t{0};
  };
  int64_t n = scratch.bytes() + b(y_recompute) + b(final_rstd) + b(final_h) + b(dh) + b(dres);
  for (const at::Tensor& t : checkpoints) n += b(t);
  for (const BlockActs& a : acts) n += a.bytes();
  return n;
}

at::Tensor next_token_targets(const at::Tensor& labels) {
  TORCH_CHECK(labels.dim() == 2, "next_token_targets: labels must be [B,T]");
  at::Tensor targets = at::full_like(labels, kIgnoreIndex);
  const int64_t T = labels.size(1);
  if (T > 1) targets.narrow(1, 0, T - 1).copy_(labels.narrow(1, 1, T - 1));
  return targets;
}

int64_t count_targets(const at::Tensor& targets) {
  return (targets != kIgnoreIndex).sum().item<int64_t>();
}

namespace {

void check_batch(const at::Tensor& ids, const ModelWorkspace& ws) {
  TORCH_CHECK(ids.dim() == 2 && ids.size(0) == ws.B && ids.size(1) == ws.T &&
                  ids.scalar_type() == at::kLong,
              "input ids must be int64 [", ws.B, ",", ws.T, "], got ", ids.sizes(), " ",
              ids.scalar_type());
}

TokenPositions positions_of(const at::Tensor& positions, const ModelWorkspace& ws) {
  TORCH_CHECK(!positions.defined() ||
                  (positions.dim() == 2 && positions.size(0) == ws.B && positions.size(1) == ws.T),
              "position ids must be int64 [", ws.B, ",", ws.T, "], got ", positions.sizes());
  return make_token_positions(positions, ws.checkpoints[0].device());
}

// Embedding and all blocks; the final hidden state lands in ws.checkpoints[L]. When `keep` is
// false every block writes the same BlockActs (forward-only use).
void forward_blocks(const model::ModelParams& p, const at::Tensor& ids, ModelWorkspace& ws,
                    bool keep, const TokenPositions& positions) {
  check_batch(ids, ws);
  embedding_forward(ws.checkpoints[0], ids, p.embedding);
  const int64_t L = ws.cfg.num_layers;
  for (int64_t l = 0; l < L; ++l) {
    BlockActs& a = ws.acts[keep ? static_cast<size_t>(l) : 0];
    block_forward(ws.checkpoints[l + 1], a, ws.scratch, p.blocks[l], ws.checkpoints[l], ws.rope,
                  ws.cfg, positions);
  }
  rmsnorm_forward(ws.final_h, ws.final_rstd, ws.checkpoints[L], p.final_norm, ws.cfg.rms_norm_eps);
}

}  // namespace

CrossEntropyResult model_forward(const model::ModelParams& p, const at::Tensor& ids,
                                 const at::Tensor& targets, ModelWorkspace& ws,
                                 const at::Tensor& positions) {
  forward_blocks(p, ids, ws, /*keep=*/false, positions_of(positions, ws));
  return chunked_cross_entropy_forward(ws.final_h, p.lm_head, targets.reshape({-1}),
                                       ws.ce_chunk_rows);
}

CrossEntropyResult model_forward_backward(const model::ModelParams& p, model::ModelParams& g,
                                          const at::Tensor& ids, const at::Tensor& targets,
                                          double grad_scale, ModelWorkspace& ws,
                                          const at::Tensor& positions) {
  const bool saved = ws.mode == ActivationMode::kSaved;
  const TokenPositions tp = positions_of(positions, ws);
  forward_blocks(p, ids, ws, /*keep=*/saved, tp);
  const int64_t L = ws.cfg.num_layers;

  const CrossEntropyResult r = chunked_cross_entropy_forward_backward(
      ws.dh, g.lm_head, ws.final_h, p.lm_head, targets.reshape({-1}), grad_scale, ws.ce_chunk_rows);
  ws.dres.zero_();
  rmsnorm_backward(ws.dres, g.final_norm, ws.dh, ws.checkpoints[L], p.final_norm, ws.final_rstd);

  for (int64_t l = L - 1; l >= 0; --l) {
    BlockActs& a = ws.acts[saved ? static_cast<size_t>(l) : 0];
    if (!saved) {
      block_forward(ws.y_recompute, a, ws.scratch, p.blocks[l], ws.checkpoints[l], ws.rope, ws.cfg,
                    tp);
    }
    block_backward(ws.dres, g.blocks[l], a, ws.scratch, p.blocks[l], ws.rope, ws.cfg, tp);
  }
  embedding_backward(g.embedding, ws.dres, ids);
  return r;
}

at::Tensor model_logits(const model::ModelParams& p, const at::Tensor& ids, ModelWorkspace& ws,
                        const at::Tensor& positions) {
  forward_blocks(p, ids, ws, /*keep=*/false, positions_of(positions, ws));
  return at::mm(ws.final_h, p.lm_head.t()).view({ws.B, ws.T, -1});
}

}  // namespace ramstream::autograd
