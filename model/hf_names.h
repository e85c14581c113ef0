// Hugging Face tensor names <-> views into our parameter storage.
//
// HF checkpoints hold q/k/v and gate/up as separate tensors; we store each pair fused (see
// model/params.h), so an HF name maps to a row range of one of our tensors. The map is the
// literal table kHfNameTable in hf_names.cpp; everything else here is derived from it.
//
//   ModelParams p = allocate_model_params(cfg, at::kFloat);
//   for (const std::string& name : hf_param_names(cfg)) {
//     at::Tensor dst = hf_param_view(p, cfg, name).value_or_throw();  // e.g. rows of wqkv
//     dst.copy_(checkpoint_tensor(name));
//   }
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "model/config.h"
#include "model/params.h"
#include "util/result.h"

namespace ramstream::model {

// Which of our tensors an HF name lands in.
enum class HfTarget { kEmbedding, kBlock, kFinalNorm, kLmHead };

// Which rows of the target (dim 0) an HF tensor covers.
enum class RowPart {
  kAll,
  kQ,     // wqkv/bqkv rows [0, q_dim)
  kK,     // rows [q_dim, q_dim + kv_dim)
  kV,     // rows [q_dim + kv_dim, qkv_dim)
  kGate,  // wgu rows [0, F)
  kUp,    // wgu rows [F, 2F)
};

struct HfNameRow {
  const char* pattern;  // "{L}" stands for the layer index
  HfTarget target;
  BlockTensor block;  // meaningful when target == kBlock
  RowPart part;
};

// The table itself, in the order HF models list their parameters (named_parameters()).
const std::vector<HfNameRow>& hf_name_table();

// An HF name resolved against a config, without touching any storage.
struct HfParamRef {
  const HfNameRow* row = nullptr;
  int64_t layer = -1;     // block tensors only
  int64_t row_begin = 0;  // rows [row_begin, row_end) of the target's dim 0
  int64_t row_end = 0;
};

// Errors: unknown name, layer out of range, a bias the config lacks, lm_head of a tied model.
Result<HfParamRef> resolve_hf_name(const ModelConfig& cfg, const std::string& hf_name);

// The view of `p` that HF tensor `hf_name` occupies (same shape as the HF tensor). Writing to it
// writes into `p`.
Result<at::Tensor> hf_param_view(ModelParams& p, const ModelConfig& cfg,
                                 const std::string& hf_name);

// Every HF tensor name the model has, in HF order (lm_head.weight only when untied).
std::vector<std::string> hf_param_names(const ModelConfig& cfg);

}  // namespace ramstream::model
