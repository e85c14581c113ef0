#include "pipeline/stages.h"

#include <algorithm>

namespace ramstream::pipeline {
namespace {

int64_t align_up(int64_t n) {
  return (n + model::kSlotAlignElems - 1) / model::kSlotAlignElems * model::kSlotAlignElems;
}

}  // namespace

std::string Stage::name() const {
  switch (kind) {
    case StageKind::kEmbedding:
      return "embedding";
    case StageKind::kBlock:
      return "block " + std::to_string(layer);
    case StageKind::kHead:
      return "head";
  }
  return "?";
}

StagePlan plan_stages(const model::ModelConfig& cfg) {
  StagePlan plan;
  plan.block = model::block_layout(cfg);
  plan.tied = cfg.tie_word_embeddings;
  plan.vocab = cfg.vocab_size;
  plan.hidden = cfg.hidden_size;
  const int64_t VC = cfg.vocab_size * cfg.hidden_size;
  plan.head_lm_head_offset = align_up(cfg.hidden_size);
  plan.stages.push_back({StageKind::kEmbedding, -1, VC});
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    plan.stages.push_back({StageKind::kBlock, l, plan.block.numel});
  }
  plan.stages.push_back({StageKind::kHead, -1,
                         plan.tied ? align_up(cfg.hidden_size) : plan.head_lm_head_offset + VC});
  plan.slot_numel = std::max({VC, plan.block.numel, plan.head_lm_head_offset + VC});
  plan.grad_numel = plan.slot_numel;
  if (plan.tied) {
    plan.grad_numel = 0;
    for (size_t s = 1; s < plan.stages.size(); ++s) {
      plan.grad_numel = std::max(plan.grad_numel, plan.stages[s].numel);
    }
  }
  return plan;
}

model::ModelParams bind_stage_params(const std::vector<at::Tensor>& flats, const StagePlan& plan,
                                     const model::ModelConfig& cfg) {
  TORCH_CHECK(static_cast<int64_t>(flats.size()) == plan.num_stages(),
              "bind_stage_params: ", flats.size(), " buffers for ", plan.num_stages(), " stages");
  const int64_t V = cfg.vocab_size, C = cfg.hidden_size;
  model::ModelParams p;
  p.embedding = flats[0].narrow(0, 0, V * C).view({V, C});
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    const at::Tensor& flat = flats[static_cast<size_t>(plan.block_index(l))];
    p.block_flat.push_back(flat);
    p.blocks.push_back(model::bind_block_params(flat, plan.block));
  }
  const at::Tensor& head = flats.back();
  p.final_norm = head.narrow(0, 0, C);
  p.lm_head =
      plan.tied ? p.embedding : head.narrow(0, plan.head_lm_head_offset, V * C).view({V, C});
  return p;
}

SlotViews bind_slot(const at::Tensor& slot, const Stage& stage, const StagePlan& plan) {
  const int64_t V = plan.vocab, C = plan.hidden;
  SlotViews v;
  switch (stage.kind) {
    case StageKind::kEmbedding:
      v.embedding = slot.narrow(0, 0, V * C).view({V, C});
      break;
    case StageKind::kBlock:
      v.block = model::bind_block_params(slot, plan.block);
      break;
    case StageKind::kHead:
      v.final_norm = slot.narrow(0, 0, C);
      v.lm_head = slot.narrow(0, plan.head_lm_head_offset, V * C).view({V, C});
      break;
  }
  return v;
}

}  // namespace ramstream::pipeline
