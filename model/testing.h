// Tiny model configurations for tests (header-only; test binaries only).
//
//   ModelConfig c = model::testing::tiny_config({.model_type = "qwen2", .tied = true});
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <gtest/gtest.h>

#include "model/config.h"
#include "model/params.h"

namespace ramstream::model::testing {

struct TinyOptions {
  std::string model_type = "llama";
  int64_t vocab = 61, hidden = 32, ffn = 48, layers = 2, heads = 4, kv_heads = 2, head_dim = 8;
  bool tied = false;
  bool bias = false;  // qwen2: q/k/v bias always; llama: `bias` sets attention_bias (q/k/v/o)
  RopeScalingType scaling = RopeScalingType::kNone;
};

inline ModelConfig tiny_config(const TinyOptions& o) {
  ModelConfig c;
  c.model_type = o.model_type;
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
  c.qkv_bias = o.model_type == "qwen2" || (o.bias && o.model_type == "llama");
  c.o_bias = o.bias && o.model_type == "llama";
  c.rope_scaling.type = o.scaling;
  if (o.scaling == RopeScalingType::kLlama3) {
    // Wavelength bands of original_max_position_embeddings=64 with theta 5e5 and D=16 put
    // frequencies in all three branches of the llama3 rule.
    c.rope_theta = 500000.0;
    c.rope_scaling.factor = 8.0;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 64;
  } else if (o.scaling == RopeScalingType::kLinear) {
    c.rope_scaling.factor = 4.0;
  }
  return c;
}

// Every parameter of `a` and `b` has the same name and the same values, bit for bit.
inline void expect_equal_params(ModelParams& a, ModelParams& b) {
  std::map<std::string, at::Tensor> ta;
  for_each_param(a, [&](const std::string& n, at::Tensor& t) { ta[n] = t; });
  size_t n = 0;
  for_each_param(b, [&](const std::string& name, at::Tensor& t) {
    ++n;
    ASSERT_TRUE(ta.count(name)) << name;
    EXPECT_TRUE(at::equal(ta.at(name), t)) << name;
  });
  EXPECT_EQ(n, ta.size());
}

}  // namespace ramstream::model::testing
