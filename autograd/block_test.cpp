// The hand-written block forward/backward against libtorch autograd, in float64.
#include "autograd/block.h"

#include <gtest/gtest.h>

#include "autograd/reference.h"
#include "autograd/test_util.h"

namespace ramstream::autograd {
namespace {

using testing::compare;
constexpr double kBlockTol = 1e-9;

struct BlockCase {
  const char* name;
  testing::TinyOptions opts;
  int64_t B, T;
};

void PrintTo(const BlockCase& c, std::ostream* os) {
  *os << c.name;
}

class BlockTest : public ::testing::TestWithParam<BlockCase> {};

TEST_P(BlockTest, MatchesAutograd) {
  const BlockCase c = GetParam();
  const model::ModelConfig cfg = testing::tiny_config(c.opts);
  const model::ModelParams params = testing::random_params(cfg, at::kDouble, 11);
  const model::BlockParams& p = params.blocks[0];
  const RopeTables rope = make_rope_tables(cfg, c.T, at::kDouble);
  at::manual_seed(12);
  const at::Tensor x = at::randn({c.B, c.T, cfg.hidden_size}, at::kDouble);
  const at::Tensor dy = at::randn({c.B, c.T, cfg.hidden_size}, at::kDouble);

  BlockActs acts = BlockActs::allocate(cfg, c.B, c.T, at::kDouble);
  BlockScratch scratch = BlockScratch::allocate(cfg, c.B, c.T, at::kDouble);
  at::Tensor y = at::empty_like(x);
  block_forward(y, acts, scratch, p, x, rope, cfg);
  model::ModelParams grads = model::allocate_model_params(cfg, at::kDouble);
  at::Tensor dres = dy.clone();
  block_backward(dres, grads.blocks[0], acts, scratch, p, rope, cfg);

  model::ModelParams leaves = reference::make_leaf_params(params, at::kDouble, cfg);
  at::Tensor xl = x.clone().requires_grad_(true);
  at::Tensor y_ref = reference::block(leaves.blocks[0], xl, rope, cfg);
  y_ref.backward(dy);
  const model::ModelParams ref_grads = reference::grads_of(leaves, cfg);

  std::printf("block case %s\n", c.name);
  EXPECT_LE(compare("y", y, y_ref).max_rel, kBlockTol);
  EXPECT_LE(compare("dx", dres.view_as(x), xl.grad()).max_rel, kBlockTol);
  const model::BlockParams& g = grads.blocks[0];
  const model::BlockParams& r = ref_grads.blocks[0];
  EXPECT_LE(compare("attn_norm", g.attn_norm, r.attn_norm).max_rel, kBlockTol);
  EXPECT_LE(compare("wqkv", g.wqkv, r.wqkv).max_rel, kBlockTol);
  if (cfg.qkv_bias) {
    EXPECT_LE(compare("bqkv", g.bqkv, r.bqkv).max_rel, kBlockTol);
  }
  EXPECT_LE(compare("wo", g.wo, r.wo).max_rel, kBlockTol);
  if (cfg.o_bias) {
    EXPECT_LE(compare("bo", g.bo, r.bo).max_rel, kBlockTol);
  }
  EXPECT_LE(compare("mlp_norm", g.mlp_norm, r.mlp_norm).max_rel, kBlockTol);
  EXPECT_LE(compare("wgu", g.wgu, r.wgu).max_rel, kBlockTol);
  EXPECT_LE(compare("wd", g.wd, r.wd).max_rel, kBlockTol);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BlockTest,
    ::testing::Values(
        BlockCase{"gqa", testing::TinyOptions{}, 2, 9},
        BlockCase{"mha", testing::opts_with([](testing::TinyOptions& o) { o.kv_heads = 4; }), 2, 8},
        BlockCase{"t1", testing::TinyOptions{}, 3, 1},
        BlockCase{"qkv_bias",
                  testing::opts_with([](testing::TinyOptions& o) { o.model_type = "qwen2"; }), 2,
                  7},
        BlockCase{"qkvo_bias", testing::opts_with([](testing::TinyOptions& o) { o.bias = true; }),
                  1, 5},
        BlockCase{"llama3_rope", testing::opts_with([](testing::TinyOptions& o) {
                    o.scaling = model::RopeScalingType::kLlama3;
                    o.head_dim = 16;
                    o.hidden = 64;
                  }),
                  2, 13}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace ramstream::autograd
