#include "model/flops.h"

#include <gtest/gtest.h>

#include "model/params.h"
#include "model/testing.h"

namespace ramstream::model {
namespace {

using testing::tiny_config;

// tiny_config: V 61, C 32, F 48, L 2, NH 4, NKV 2 (GQA), D 8 -> q_dim 32, kv_dim 16.
TEST(Flops, TinyConfigByHand) {
  const ModelConfig c = tiny_config({});
  // Per block: wqkv (32 + 2 x 16) x 32 = 2048, wo 32 x 32 = 1024, wgu 96 x 32 = 3072,
  // wd 32 x 48 = 1536 -> 7680; two blocks 15360; LM head 61 x 32 = 1952 -> 17312.
  EXPECT_EQ(matmul_param_count(c), 17312);
  // Attention at T = 16: 6 x L 2 x q_dim 32 x 16 = 6144.
  EXPECT_DOUBLE_EQ(attention_flops_per_token(c, 16), 6144.0);
  EXPECT_DOUBLE_EQ(training_flops_per_token(c, 16), 6.0 * 17312 + 6144);
}

TEST(Flops, TiedAndUntiedCountTheHeadOnceAndNeverTheLookup) {
  const ModelConfig untied = tiny_config({});
  const ModelConfig tied = tiny_config({.tied = true});
  // Tied: the one [V, C] matrix is the LM head GEMM; untied: the head is, the embedding is not.
  EXPECT_EQ(matmul_param_count(tied), matmul_param_count(untied));
  // Against the real parameter count: all parameters minus the norm weights (2 per block plus
  // the final one, C each) and, untied, minus the input embedding.
  const int64_t norms = (2 * untied.num_layers + 1) * untied.hidden_size;
  const int64_t embedding = untied.vocab_size * untied.hidden_size;
  EXPECT_EQ(matmul_param_count(untied),
            allocate_model_params(untied, at::kFloat).numel() - norms - embedding);
  EXPECT_EQ(matmul_param_count(tied), allocate_model_params(tied, at::kFloat).numel() - norms);
}

TEST(Flops, BiasesAreNotCounted) {
  const ModelConfig qwen = tiny_config({.model_type = "qwen2"});
  ASSERT_TRUE(qwen.qkv_bias);
  EXPECT_EQ(matmul_param_count(qwen), 17312);
}

TEST(Flops, GqaUsesQueryHeadsForAttention) {
  ModelConfig mha = tiny_config({.kv_heads = 4});
  ModelConfig gqa = tiny_config({.kv_heads = 1});
  EXPECT_DOUBLE_EQ(attention_flops_per_token(mha, 64), attention_flops_per_token(gqa, 64));
  // K and V rows shrink with fewer kv heads: 2 x (4 - 1) x 8 rows of C 32, per layer.
  EXPECT_EQ(matmul_param_count(mha) - matmul_param_count(gqa), 2 * 2 * 3 * 8 * 32);
}

TEST(Flops, SmolLM2Shape) {
  ModelConfig c;
  c.vocab_size = 49152;
  c.hidden_size = 576;
  c.intermediate_size = 1536;
  c.num_layers = 30;
  c.num_heads = 9;
  c.num_kv_heads = 3;
  c.head_dim = 64;
  c.tie_word_embeddings = true;
  // 30 x (960 x 576 + 576 x 576 + 3 x 1536 x 576) + 49152 x 576.
  EXPECT_EQ(matmul_param_count(c), 134479872);
  // The trainer's former attention term, 12 L q_dim T / 2, is the same number.
  EXPECT_DOUBLE_EQ(attention_flops_per_token(c, 256), 12.0 * 30 * 576 * 256 / 2);
}

}  // namespace
}  // namespace ramstream::model
