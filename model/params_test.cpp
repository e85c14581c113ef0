#include "model/params.h"

#include <algorithm>
#include <map>

#include <gtest/gtest.h>

namespace ramstream::model {
namespace {

ModelConfig tiny(bool bias, bool tied) {
  ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = 37;
  c.hidden_size = 12;
  c.intermediate_size = 20;
  c.num_layers = 3;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 6;  // != C / NH on purpose
  c.max_position_embeddings = 64;
  c.qkv_bias = bias;
  c.o_bias = bias;
  c.tie_word_embeddings = tied;
  return c;
}

TEST(BlockLayout, ShapesAlignedAndDisjoint) {
  for (bool bias : {false, true}) {
    const ModelConfig c = tiny(bias, false);
    const BlockLayout l = block_layout(c);
    EXPECT_EQ(l[BlockTensor::kWqkv].shape, (std::vector<int64_t>{c.qkv_dim(), 12}));
    EXPECT_EQ(l[BlockTensor::kWo].shape, (std::vector<int64_t>{12, c.q_dim()}));
    EXPECT_EQ(l[BlockTensor::kWgu].shape, (std::vector<int64_t>{40, 12}));
    EXPECT_EQ(l[BlockTensor::kWd].shape, (std::vector<int64_t>{12, 20}));
    EXPECT_EQ(l[BlockTensor::kBqkv].present(), bias);
    EXPECT_EQ(l[BlockTensor::kBo].present(), bias);
    std::vector<std::pair<int64_t, int64_t>> ranges;
    for (const TensorSlot& s : l.slots) {
      if (!s.present()) continue;
      EXPECT_EQ(s.offset % kSlotAlignElems, 0) << s.name;
      int64_t n = 1;
      for (int64_t d : s.shape) n *= d;
      EXPECT_EQ(n, s.numel) << s.name;
      EXPECT_LE(s.offset + s.numel, l.numel) << s.name;
      ranges.emplace_back(s.offset, s.offset + s.numel);
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i) EXPECT_LE(ranges[i - 1].second, ranges[i].first);
    EXPECT_EQ(l.numel % kSlotAlignElems, 0);
  }
}

TEST(BlockParams, BindViewsShareTheFlatBuffer) {
  const ModelConfig c = tiny(true, false);
  const BlockLayout l = block_layout(c);
  at::Tensor flat = at::zeros({l.numel}, at::kFloat);
  BlockParams p = bind_block_params(flat, l);
  EXPECT_EQ(p.wqkv.sizes(), at::IntArrayRef({c.qkv_dim(), 12}));
  EXPECT_EQ(p.bqkv.sizes(), at::IntArrayRef({c.qkv_dim()}));
  p.wd.fill_(2.0f);
  EXPECT_EQ(flat.sum().item<float>(), 2.0f * 12 * 20);
  EXPECT_EQ(p.wd.data_ptr<float>(), flat.data_ptr<float>() + l[BlockTensor::kWd].offset);

  const BlockParams nb = bind_block_params(flat, block_layout(tiny(false, false)));
  EXPECT_FALSE(nb.bqkv.defined());
  EXPECT_FALSE(nb.bo.defined());

  EXPECT_THROW(bind_block_params(at::zeros({l.numel - 1}), l), c10::Error);
}

TEST(ModelParams, AllocateNumelAndNames) {
  for (bool tied : {false, true}) {
    const ModelConfig c = tiny(true, tied);
    ModelParams p = allocate_model_params(c, at::kFloat);
    EXPECT_EQ(p.lm_head.is_same(p.embedding), tied);
    const BlockLayout l = block_layout(c);
    int64_t per_block = 0;
    for (const TensorSlot& s : l.slots) per_block += s.numel;
    const int64_t expected = (tied ? 1 : 2) * 37 * 12 + 3 * per_block + 12;
    EXPECT_EQ(p.numel(), expected);
    std::vector<std::string> names;
    for_each_param(p, [&](const std::string& n, at::Tensor&) { names.push_back(n); });
    EXPECT_EQ(names.front(), "embedding");
    EXPECT_EQ(names[1], "layers.0.attn_norm");
    EXPECT_EQ(std::count(names.begin(), names.end(), "lm_head"), tied ? 0 : 1);
    EXPECT_EQ(names.size(), 1 + 3 * 8 + 1 + (tied ? 0u : 1u));
  }
}

TEST(ModelParams, CloneConvertsDtypeAndKeepsTie) {
  const ModelConfig c = tiny(true, true);
  ModelParams p = allocate_model_params(c, at::kFloat);
  float v = 0.0f;
  for_each_param(p, [&](const std::string&, at::Tensor& t) { t.fill_(v += 1.0f); });
  ModelParams q = clone_model_params(p, at::kDouble);
  EXPECT_TRUE(q.lm_head.is_same(q.embedding));
  EXPECT_EQ(q.numel(), p.numel());
  std::map<std::string, at::Tensor> src;
  for_each_param(p, [&](const std::string& n, at::Tensor& t) { src[n] = t; });
  for_each_param(q, [&](const std::string& n, at::Tensor& t) {
    EXPECT_EQ(t.scalar_type(), at::kDouble) << n;
    EXPECT_TRUE(at::equal(t, src.at(n).to(at::kDouble))) << n;
  });
  // Views of the clone live in the clone's flat buffers, not the source's.
  q.blocks[1].wqkv.fill_(-1.0);
  EXPECT_EQ(q.block_flat[1].eq(-1.0).sum().item<int64_t>(), q.blocks[1].wqkv.numel());
  EXPECT_EQ(p.blocks[1].wqkv.eq(-1.0f).sum().item<int64_t>(), 0);
  // Padding of the clone is copied too (the flat buffer is cloned whole).
  EXPECT_EQ(q.block_flat[0].numel(), p.block_flat[0].numel());

  ModelParams u =
      clone_model_params(allocate_model_params(tiny(false, false), at::kFloat), at::kBFloat16);
  EXPECT_FALSE(u.lm_head.is_same(u.embedding));
  EXPECT_EQ(u.lm_head.scalar_type(), at::kBFloat16);
  EXPECT_FALSE(u.blocks[0].bqkv.defined());
}

}  // namespace
}  // namespace ramstream::model
