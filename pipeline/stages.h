// How a model is cut into the stages the engine streams: embedding, one stage per transformer
// block, and the head (final norm + LM head). Each stage owns one flat host region; its device
// template (a slot) has the same layout, so loading a stage is one copy per region.
//
// Head layout: [final_norm | pad | lm_head]. With tied embeddings the head's host region holds
// only final_norm, and its slot's lm_head part is filled from the embedding stage's region; the
// head's grad for it lands in the embedding's grad, which then sums both contributions.
//
//   StagePlan plan = plan_stages(cfg);
//   std::vector<at::Tensor> flats = ...;                 // one [plan.stages[i].numel] per stage
//   ModelParams p = bind_stage_params(flats, plan, cfg); // views: p.blocks[3].wqkv, p.lm_head
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "model/config.h"
#include "model/params.h"

namespace ramstream::pipeline {

enum class StageKind { kEmbedding, kBlock, kHead };

struct Stage {
  StageKind kind = StageKind::kBlock;
  int64_t layer = -1;  // block index for kBlock
  int64_t numel = 0;   // elements of the host region (padding included)
  std::string name() const;
};

struct StagePlan {
  std::vector<Stage> stages;  // embedding, blocks 0..L-1, head
  model::BlockLayout block;
  bool tied = false;
  int64_t vocab = 0, hidden = 0;
  int64_t head_lm_head_offset = 0;  // in the head's slot (and host region when untied)
  int64_t slot_numel = 0;           // elements of a device template: the largest stage
  // Elements of one per-stage grad buffer: the largest stage, or with tied embeddings the largest
  // after the embedding (whose grads have their own vocab x hidden buffer).
  int64_t grad_numel = 0;

  int64_t num_stages() const { return static_cast<int64_t>(stages.size()); }
  int64_t head_index() const { return num_stages() - 1; }
  int64_t block_index(int64_t layer) const { return 1 + layer; }
};

StagePlan plan_stages(const model::ModelConfig& cfg);

// ModelParams whose tensors are views into per-stage buffers (flats[i] for stages[i]); with tied
// embeddings lm_head is the embedding view.
model::ModelParams bind_stage_params(const std::vector<at::Tensor>& flats, const StagePlan& plan,
                                     const model::ModelConfig& cfg);

// The views of one stage inside a device slot of plan.slot_numel elements.
struct SlotViews {
  at::Tensor embedding;      // kEmbedding
  model::BlockParams block;  // kBlock
  at::Tensor final_norm;     // kHead
  at::Tensor lm_head;        // kHead (filled from the embedding region when tied)
};
SlotViews bind_slot(const at::Tensor& slot, const Stage& stage, const StagePlan& plan);

}  // namespace ramstream::pipeline
