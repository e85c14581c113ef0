#include "model/hf_names.h"
#include "model/testing.h"

#include <set>

#include <gtest/gtest.h>

namespace ramstream::model {
namespace {

ModelConfig tiny(const std::string& type, bool tied) {
  return testing::tiny_config({type, /*vocab=*/29, /*hidden=*/16, /*ffn=*/24, /*layers=*/3,
                               /*heads=*/4, /*kv_heads=*/2, /*head_dim=*/6, tied});
}

std::string describe(const ModelConfig& c) {
  return c.model_type + (c.tie_word_embeddings ? " tied" : " untied") + (c.o_bias ? " o_bias" : "");
}

// Every HF name maps to a distinct element range of our storage; together they cover every
// non-padding element exactly once. Checked by writing a per-name marker through each view and
// counting how often each element of storage was written.
TEST(HfNames, RoundTripCoversEveryParameterOnce) {
  std::vector<ModelConfig> configs = {tiny("llama", false), tiny("llama", true),
                                      tiny("qwen2", true), tiny("mistral", false)};
  ModelConfig biased = tiny("llama", false);
  biased.qkv_bias = biased.o_bias = true;
  configs.push_back(biased);
  for (const ModelConfig& c : configs) {
    SCOPED_TRACE(describe(c));
    ModelParams hits = allocate_model_params(c, at::kFloat);
    ModelParams ids = allocate_model_params(c, at::kFloat);
    const std::vector<std::string> names = hf_param_names(c);
    EXPECT_EQ(std::set<std::string>(names.begin(), names.end()).size(), names.size());
    int64_t covered = 0;
    for (size_t i = 0; i < names.size(); ++i) {
      Result<at::Tensor> v = hf_param_view(hits, c, names[i]);
      ASSERT_TRUE(v.ok()) << v.error().message;
      v.value().add_(1.0f);
      hf_param_view(ids, c, names[i]).value().fill_(static_cast<float>(i + 1));
      covered += v.value().numel();
    }
    EXPECT_EQ(covered, hits.numel());
    // Every real element written exactly once...
    for_each_param(hits, [&](const std::string& n, at::Tensor& t) {
      EXPECT_TRUE(t.eq(1.0f).all().item<bool>()) << n;
    });
    // ...and padding never.
    for (const at::Tensor& flat : hits.block_flat) {
      int64_t real = 0;
      for (const TensorSlot& s : block_layout(c).slots) real += s.numel;
      EXPECT_EQ(flat.sum().item<float>(), static_cast<float>(real));
    }
    // Reading back through the view returns what was written under that name.
    for (size_t i = 0; i < names.size(); ++i) {
      at::Tensor v = hf_param_view(ids, c, names[i]).value();
      EXPECT_TRUE(v.eq(static_cast<float>(i + 1)).all().item<bool>()) << names[i];
    }
  }
}

TEST(HfNames, NamesInHfOrder) {
  const ModelConfig c = tiny("qwen2", false);
  const std::vector<std::string> n = hf_param_names(c);
  ASSERT_EQ(n.size(), 1 + 3 * 12 + 2u);
  EXPECT_EQ(n[0], "model.embed_tokens.weight");
  EXPECT_EQ(n[1], "model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(n[2], "model.layers.0.self_attn.q_proj.bias");
  EXPECT_EQ(n[12], "model.layers.0.post_attention_layernorm.weight");
  EXPECT_EQ(n[13], "model.layers.1.self_attn.q_proj.weight");
  EXPECT_EQ(n[n.size() - 2], "model.norm.weight");
  EXPECT_EQ(n.back(), "lm_head.weight");
  EXPECT_EQ(hf_param_names(tiny("llama", true)).size(), 1 + 3 * 9 + 1u);
}

TEST(HfNames, SlicesAreTheDocumentedRows) {
  const ModelConfig c = tiny("qwen2", false);
  ModelParams p = allocate_model_params(c, at::kFloat);
  auto view = [&](const std::string& n) { return hf_param_view(p, c, n).value(); };
  const int64_t q = c.q_dim(), kv = c.kv_dim(), f = c.intermediate_size;
  at::Tensor w = p.blocks[2].wqkv;
  EXPECT_TRUE(view("model.layers.2.self_attn.q_proj.weight").is_same_size(w.narrow(0, 0, q)));
  EXPECT_EQ(view("model.layers.2.self_attn.k_proj.weight").data_ptr(),
            w.narrow(0, q, kv).data_ptr());
  EXPECT_EQ(view("model.layers.2.self_attn.v_proj.weight").data_ptr(),
            w.narrow(0, q + kv, kv).data_ptr());
  EXPECT_EQ(view("model.layers.2.self_attn.v_proj.bias").data_ptr(),
            p.blocks[2].bqkv.narrow(0, q + kv, kv).data_ptr());
  EXPECT_EQ(view("model.layers.0.mlp.up_proj.weight").data_ptr(),
            p.blocks[0].wgu.narrow(0, f, f).data_ptr());
  EXPECT_EQ(view("model.layers.0.mlp.up_proj.weight").sizes(), at::IntArrayRef({f, 16}));
  EXPECT_EQ(view("model.layers.0.self_attn.o_proj.weight").sizes(), at::IntArrayRef({16, q}));
  EXPECT_EQ(view("model.layers.1.mlp.down_proj.weight").sizes(), at::IntArrayRef({16, f}));
  EXPECT_EQ(view("lm_head.weight").data_ptr(), p.lm_head.data_ptr());
}

TEST(HfNames, Errors) {
  const ModelConfig c = tiny("llama", true);
  ModelParams p = allocate_model_params(c, at::kFloat);
  auto err = [&](const std::string& n) {
    Result<at::Tensor> r = hf_param_view(p, c, n);
    EXPECT_FALSE(r.ok()) << n;
    return r.ok() ? std::string() : r.error().message;
  };
  EXPECT_NE(err("model.layers.0.self_attn.qkv.weight").find("unknown"), std::string::npos);
  EXPECT_NE(err("model.layers.3.mlp.up_proj.weight").find("out of range"), std::string::npos);
  EXPECT_NE(err("model.layers.01.mlp.up_proj.weight").find("unknown"), std::string::npos);
  EXPECT_NE(err("model.layers.-1.mlp.up_proj.weight").find("unknown"), std::string::npos);
  EXPECT_NE(err("model.layers..mlp.up_proj.weight").find("unknown"), std::string::npos);
  EXPECT_NE(err("model.layers.99999999999999.mlp.up_proj.weight").find("unknown"),
            std::string::npos);
  EXPECT_NE(err("model.layers.0.self_attn.q_proj.bias").find("bias"), std::string::npos);
  EXPECT_NE(err("model.layers.0.self_attn.o_proj.bias").find("bias"), std::string::npos);
  EXPECT_NE(err("lm_head.weight").find("tied"), std::string::npos);
  // Parameters allocated for a smaller model.
  ModelConfig big = c;
  big.num_layers = 5;
  EXPECT_FALSE(hf_param_view(p, big, "model.layers.4.mlp.up_proj.weight").ok());
}

}  // namespace
}  // namespace ramstream::model
