#include "model/params.h"

namespace ramstream::model {
namespace {

int64_t align_up(int64_t n, int64_t a) {
  return (n + a - 1) / a * a;
}

int64_t product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return shape.empty() ? 0 : n;
}

}  // namespace

BlockLayout block_layout(const ModelConfig& cfg) {
  const int64_t C = cfg.hidden_size, F = cfg.intermediate_size, QKV = cfg.qkv_dim();
  BlockLayout layout;
  auto set = [&](BlockTensor t, const char* name, std::vector<int64_t> shape) {
    TensorSlot& s = layout.slots[static_cast<int>(t)];
    s.name = name;
    s.shape = std::move(shape);
    s.numel = product(s.shape);
  };
  set(BlockTensor::kAttnNorm, "attn_norm", {C});
  set(BlockTensor::kWqkv, "wqkv", {QKV, C});
  set(BlockTensor::kBqkv, "bqkv",
      cfg.qkv_bias ? std::vector<int64_t>{QKV} : std::vector<int64_t>{});
  set(BlockTensor::kWo, "wo", {C, cfg.q_dim()});
  set(BlockTensor::kBo, "bo", cfg.o_bias ? std::vector<int64_t>{C} : std::vector<int64_t>{});
  set(BlockTensor::kMlpNorm, "mlp_norm", {C});
  set(BlockTensor::kWgu, "wgu", {2 * F, C});
  set(BlockTensor::kWd, "wd", {C, F});
  int64_t offset = 0;
  for (TensorSlot& s : layout.slots) {
    s.offset = offset;
    offset = align_up(offset + s.numel, kSlotAlignElems);
  }
  layout.numel = offset;
  return layout;
}

BlockParams bind_block_params(const at::Tensor& flat, const BlockLayout& layout) {
  TORCH_CHECK(flat.dim() == 1 && flat.is_contiguous() && flat.numel() >= layout.numel,
              "bind_block_params: flat buffer of ", flat.numel(), " elements, layout needs ",
              layout.numel);
  auto view = [&](BlockTensor t) -> at::Tensor {
    const TensorSlot& s = layout[t];
    if (!s.present()) return at::Tensor();
    return flat.narrow(0, s.offset, s.numel).view(s.shape);
  };
  BlockParams p;
  p.attn_norm = view(BlockTensor::kAttnNorm);
  p.wqkv = view(BlockTensor::kWqkv);
  p.bqkv = view(BlockTensor::kBqkv);
  p.wo = view(BlockTensor::kWo);
  p.bo = view(BlockTensor::kBo);
  p.mlp_norm = view(BlockTensor::kMlpNorm);
  p.wgu = view(BlockTensor::kWgu);
  p.wd = view(BlockTensor::kWd);
  return p;
}

int64_t ModelParams::numel() const {
  int64_t n = 0;
  ModelParams& self = const_cast<ModelParams&>(*this);
  for_each_param(self, [&](const std::string&, const at::Tensor& t) { n += t.numel(); });
  return n;
}

ModelParams allocate_model_params(const ModelConfig& cfg, at::ScalarType dtype) {
  const auto opts = at::TensorOptions().dtype(dtype);
  ModelParams p;
  p.embedding = at::zeros({cfg.vocab_size, cfg.hidden_size}, opts);
  const BlockLayout layout = block_layout(cfg);
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    p.block_flat.push_back(at::zeros({layout.numel}, opts));
    p.blocks.push_back(bind_block_params(p.block_flat.back(), layout));
  }
  p.final_norm = at::zeros({cfg.hidden_size}, opts);
  p.lm_head =
      cfg.tie_word_embeddings ? p.embedding : at::zeros({cfg.vocab_size, cfg.hidden_size}, opts);
  return p;
}

void init_params_normal(ModelParams& p, double stddev, uint64_t seed) {
  at::manual_seed(seed);
  for_each_param(p, [&](const std::string& name, at::Tensor& t) {
    if (name.find("norm") != std::string::npos) {
      t.fill_(1.0);
    } else {
      t.normal_(0.0, stddev);
    }
  });
}

ModelParams clone_model_params(const ModelParams& src, at::ScalarType dtype, at::Device device) {
  auto copy = [&](const at::Tensor& t) {
    return t.to(device, dtype, /*non_blocking=*/false, /*copy=*/true);
  };
  ModelParams p;
  p.embedding = copy(src.embedding);
  for (const at::Tensor& flat : src.block_flat) p.block_flat.push_back(copy(flat));
  // Rebind views at the same offsets as the source.
  for (size_t l = 0; l < src.blocks.size(); ++l) {
    const BlockParams& s = src.blocks[l];
    const at::Tensor& base = src.block_flat[l];
    const at::Tensor& flat = p.block_flat[l];
    auto rebind = [&](const at::Tensor& v) -> at::Tensor {
      if (!v.defined()) return at::Tensor();
      TORCH_CHECK(v.is_alias_of(base), "clone_model_params: a view of layer ", l,
                  " does not point into that layer's flat buffer");
      const int64_t offset = v.storage_offset() - base.storage_offset();
      return flat.as_strided(v.sizes(), v.strides(), flat.storage_offset() + offset);
    };
    p.blocks.push_back({rebind(s.attn_norm), rebind(s.wqkv), rebind(s.bqkv), rebind(s.wo),
                        rebind(s.bo), rebind(s.mlp_norm), rebind(s.wgu), rebind(s.wd)});
  }
  p.final_norm = copy(src.final_norm);
  p.lm_head = src.lm_head.is_same(src.embedding) ? p.embedding : copy(src.lm_head);
  return p;
}

}  // namespace ramstream::model
