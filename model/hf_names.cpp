#include "model/hf_names.h"

#include <cstring>

namespace ramstream::model {
namespace {

using T = HfTarget;
using BT = BlockTensor;
using P = RowPart;

// One row per HF name pattern, in HF named_parameters() order; "{L}" is the layer index.
// Biases and lm_head rows apply only when the config has them (see present()).
// clang-format off
const std::vector<HfNameRow> kHfNameTable = {
  {"model.embed_tokens.weight",                         T::kEmbedding,  BT::kCount,    P::kAll},
  {"model.layers.{L}.self_attn.q_proj.weight",          T::kBlock,      BT::kWqkv,     P::kQ},
  {"model.layers.{L}.self_attn.q_proj.bias",            T::kBlock,      BT::kBqkv,     P::kQ},
  {"model.layers.{L}.self_attn.k_proj.weight",          T::kBlock,      BT::kWqkv,     P::kK},
  {"model.layers.{L}.self_attn.k_proj.bias",            T::kBlock,      BT::kBqkv,     P::kK},
  {"model.layers.{L}.self_attn.v_proj.weight",          T::kBlock,      BT::kWqkv,     P::kV},
  {"model.layers.{L}.self_attn.v_proj.bias",            T::kBlock,      BT::kBqkv,     P::kV},
  {"model.layers.{L}.self_attn.o_proj.weight",          T::kBlock,      BT::kWo,       P::kAll},
  {"model.layers.{L}.self_attn.o_proj.bias",            T::kBlock,      BT::kBo,       P::kAll},
  {"model.layers.{L}.mlp.gate_proj.weight",             T::kBlock,      BT::kWgu,      P::kGate},
  {"model.layers.{L}.mlp.up_proj.weight",               T::kBlock,      BT::kWgu,      P::kUp},
  {"model.layers.{L}.mlp.down_proj.weight",             T::kBlock,      BT::kWd,       P::kAll},
  {"model.layers.{L}.input_layernorm.weight",           T::kBlock,      BT::kAttnNorm, P::kAll},
  {"model.layers.{L}.post_attention_layernorm.weight",  T::kBlock,      BT::kMlpNorm,  P::kAll},
  {"model.norm.weight",                                 T::kFinalNorm,  BT::kCount,    P::kAll},
  {"lm_head.weight",                                    T::kLmHead,     BT::kCount,    P::kAll},
};
// clang-format on

constexpr const char* kLayerMark = "{L}";

// Matches `name` against `pattern`; for a per-layer pattern stores the layer index. Leading
// zeros and absurd lengths are refused so "layers.01" cannot alias "layers.1".
bool match(const char* pattern, const std::string& name, int64_t* layer) {
  const char* mark = std::strstr(pattern, kLayerMark);
  if (mark == nullptr) return name == pattern;
  const size_t prefix_len = static_cast<size_t>(mark - pattern);
  const char* suffix = mark + std::strlen(kLayerMark);
  const size_t suffix_len = std::strlen(suffix);
  if (name.size() <= prefix_len + suffix_len) return false;
  if (name.compare(0, prefix_len, pattern, prefix_len) != 0) return false;
  if (name.compare(name.size() - suffix_len, suffix_len, suffix) != 0) return false;
  const std::string digits = name.substr(prefix_len, name.size() - prefix_len - suffix_len);
  if (digits.empty() || digits.size() > 9) return false;
  if (digits.size() > 1 && digits[0] == '0') return false;
  for (char ch : digits) {
    if (ch < '0' || ch > '9') return false;
  }
  *layer = std::stoll(digits);
  return true;
}

std::string expand(const char* pattern, int64_t layer) {
  std::string s = pattern;
  const size_t at = s.find(kLayerMark);
  if (at != std::string::npos) s.replace(at, std::strlen(kLayerMark), std::to_string(layer));
  return s;
}

bool present(const ModelConfig& cfg, const HfNameRow& row) {
  if (row.target == HfTarget::kLmHead) return !cfg.tie_word_embeddings;
  if (row.target != HfTarget::kBlock) return true;
  if (row.block == BT::kBqkv) return cfg.qkv_bias;
  if (row.block == BT::kBo) return cfg.o_bias;
  return true;
}

}  // namespace

const std::vector<HfNameRow>& hf_name_table() {
  return kHfNameTable;
}

Result<HfParamRef> resolve_hf_name(const ModelConfig& cfg, const std::string& hf_name) {
  HfParamRef ref;
  for (const HfNameRow& row : kHfNameTable) {
    int64_t layer = -1;
    if (!match(row.pattern, hf_name, &layer)) continue;
    ref.row = &row;
    ref.layer = layer;
    break;
  }
  if (ref.row == nullptr) {
    return Error{"unknown Hugging Face tensor name '" + hf_name + "' for model_type " +
                 cfg.model_type};
  }
  const HfNameRow& row = *ref.row;
  if (row.target == HfTarget::kBlock && ref.layer >= cfg.num_layers) {
    return Error{"tensor '" + hf_name + "': layer " + std::to_string(ref.layer) +
                 " out of range (num_hidden_layers " + std::to_string(cfg.num_layers) + ")"};
  }
  if (!present(cfg, row)) {
    const char* why = row.target == HfTarget::kLmHead ? "embeddings are tied (tie_word_embeddings)"
                      : row.block == BT::kBqkv        ? "the config has no q/k/v bias"
                                                      : "the config has no o_proj bias";
    return Error{"tensor '" + hf_name + "': not part of this model: " + why};
  }
  const int64_t q = cfg.q_dim(), kv = cfg.kv_dim(), f = cfg.intermediate_size;
  switch (row.part) {
    case RowPart::kAll:
      ref.row_begin = 0;
      ref.row_end = -1;  // filled below from the target's size
      break;
    case RowPart::kQ:
      ref.row_begin = 0, ref.row_end = q;
      break;
    case RowPart::kK:
      ref.row_begin = q, ref.row_end = q + kv;
      break;
    case RowPart::kV:
      ref.row_begin = q + kv, ref.row_end = q + 2 * kv;
      break;
    case RowPart::kGate:
      ref.row_begin = 0, ref.row_end = f;
      break;
    case RowPart::kUp:
      ref.row_begin = f, ref.row_end = 2 * f;
      break;
  }
  if (ref.row_end < 0) {
    if (row.target == HfTarget::kBlock) {
      ref.row_end = block_layout(cfg)[row.block].shape.at(0);
    } else if (row.target == HfTarget::kFinalNorm) {
      ref.row_end = cfg.hidden_size;
    } else {
      ref.row_end = cfg.vocab_size;
    }
  }
  return ref;
}

Result<at::Tensor> hf_param_view(ModelParams& p, const ModelConfig& cfg,
                                 const std::string& hf_name) {
  Result<HfParamRef> r = resolve_hf_name(cfg, hf_name);
  if (!r.ok()) return r.error();
  const HfParamRef& ref = r.value();
  at::Tensor target;
  switch (ref.row->target) {
    case HfTarget::kEmbedding:
      target = p.embedding;
      break;
    case HfTarget::kFinalNorm:
      target = p.final_norm;
      break;
    case HfTarget::kLmHead:
      target = p.lm_head;
      break;
    case HfTarget::kBlock: {
      if (ref.layer >= static_cast<int64_t>(p.blocks.size())) {
        return Error{"tensor '" + hf_name + "': parameters hold " +
                     std::to_string(p.blocks.size()) + " layers"};
      }
      BlockParams& b = p.blocks[static_cast<size_t>(ref.layer)];
      at::Tensor* by_slot[] = {&b.attn_norm, &b.wqkv,     &b.bqkv, &b.wo,
                               &b.bo,        &b.mlp_norm, &b.wgu,  &b.wd};
      target = *by_slot[static_cast<int>(ref.row->block)];
      break;
    }
  }
  if (!target.defined() || target.dim() == 0 || target.size(0) < ref.row_end) {
    return Error{"tensor '" + hf_name + "': parameters are not allocated for this config"};
  }
  return target.narrow(0, ref.row_begin, ref.row_end - ref.row_begin);
}

std::vector<std::string> hf_param_names(const ModelConfig& cfg) {
  std::vector<std::string> names;
  // Per-layer rows are contiguous in the table; HF lists all of layer 0, then layer 1, ...
  auto is_block = [](const HfNameRow& row) { return row.target == HfTarget::kBlock; };
  for (size_t i = 0; i < kHfNameTable.size();) {
    if (!is_block(kHfNameTable[i])) {
      if (present(cfg, kHfNameTable[i])) names.push_back(kHfNameTable[i].pattern);
      ++i;
      continue;
    }
    size_t end = i;
    while (end < kHfNameTable.size() && is_block(kHfNameTable[end])) ++end;
    for (int64_t l = 0; l < cfg.num_layers; ++l) {
      for (size_t k = i; k < end; ++k) {
        if (present(cfg, kHfNameTable[k])) names.push_back(expand(kHfNameTable[k].pattern, l));
      }
    }
    i = end;
  }
  return names;
}

}  // namespace ramstream::model
