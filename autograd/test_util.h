// Helpers shared by the autograd tests: tiny configs, random parameters and the per-tensor
// error report (max abs and max relative error, printed for every compared tensor).
#pragma once

#include <cstdio>
#include <string>

#include <ATen/ATen.h>

#include "model/config.h"
#include "model/params.h"

namespace ramstream::autograd::testing {

struct TinyOptions {
  int64_t vocab = 61, hidden = 32, ffn = 48, layers = 2, heads = 4, kv_heads = 2, head_dim = 8;
  bool tied = false, qkv_bias = false, o_bias = false;
  model::RopeScalingType scaling = model::RopeScalingType::kNone;
};

inline model::ModelConfig tiny_config(const TinyOptions& o) {
  model::ModelConfig c;
  c.model_type = o.qkv_bias && !o.o_bias ? "qwen2" : "llama";
  c.vocab_size = o.vocab;
  c.hidden_size = o.hidden;
  c.intermediate_size = o.ffn;
  c.num_layers = o.layers;
  c.num_heads = o.heads;
  c.num_kv_heads = o.kv_heads;
  c.head_dim = o.head_dim;
  c.max_position_embeddings = 128;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = o.tied;
  c.qkv_bias = o.qkv_bias;
  c.o_bias = o.o_bias;
  c.rope_scaling.type = o.scaling;
  if (o.scaling == model::RopeScalingType::kLlama3) {
    c.rope_theta = 500000.0;
    c.rope_scaling.factor = 8.0;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 64;
  } else if (o.scaling == model::RopeScalingType::kLinear) {
    c.rope_scaling.factor = 4.0;
  }
  return c;
}

// Weights ~ N(0, 0.1^2) (scaled so activations stay O(1)), norm weights ~ 1 + N(0, 0.1^2).
inline model::ModelParams random_params(const model::ModelConfig& cfg, at::ScalarType dtype,
                                        uint64_t seed) {
  at::manual_seed(seed);
  model::ModelParams p = model::allocate_model_params(cfg, at::kDouble);
  model::for_each_param(p, [&](const std::string& name, at::Tensor& t) {
    const bool is_norm = name.find("norm") != std::string::npos;
    at::Tensor noise = at::randn(t.sizes(), at::kDouble) * (is_norm ? 0.1 : 0.3);
    t.copy_(is_norm ? noise + 1.0 : noise);
  });
  return model::clone_model_params(p, dtype);
}

struct ErrorReport {
  double max_abs = 0, max_rel = 0;
};

// max_rel = max|ours - ref| / max|ref|: the error relative to the tensor's scale, which stays
// meaningful where single elements of ref are near zero.
inline ErrorReport compare(const std::string& name, const at::Tensor& ours, const at::Tensor& ref) {
  const at::Tensor a = ours.detach().to(at::kDouble), b = ref.detach().to(at::kDouble);
  ErrorReport r;
  if (a.sizes() != b.sizes()) {
    std::printf("  %-28s SHAPE MISMATCH\n", name.c_str());
    r.max_abs = r.max_rel = INFINITY;
    return r;
  }
  r.max_abs = a.numel() ? (a - b).abs().max().item<double>() : 0.0;
  const double scale = b.numel() ? b.abs().max().item<double>() : 0.0;
  r.max_rel = scale > 0 ? r.max_abs / scale : r.max_abs;
  std::printf("  %-28s max abs %.3e  max rel %.3e\n", name.c_str(), r.max_abs, r.max_rel);
  return r;
}

}  // namespace ramstream::autograd::testing
