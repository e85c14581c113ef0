// Greedy generation with a KV cache against the training path's full forward (autograd/model.h):
// the same logits with and without left padding, and the same tokens as recomputing the whole
// sequence for every new token.
#include "trainer/generate.h"

#include <cstdio>

#include <gtest/gtest.h>

#include "autograd/model.h"
#include "model/testing.h"

namespace ramstream::trainer {
namespace {

struct Case {
  const char* name;
  model::testing::TinyOptions opts;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

class GenerateTest : public ::testing::TestWithParam<Case> {};

model::ModelParams make_params(const model::ModelConfig& cfg) {
  model::ModelParams p = model::allocate_model_params(cfg, at::kDouble);
  model::init_params_normal(p, 0.3, 11);
  return p;
}

at::Tensor reference_logits(const model::ModelParams& p, const model::ModelConfig& cfg,
                            const std::vector<int32_t>& ids) {
  const int64_t T = static_cast<int64_t>(ids.size());
  autograd::ModelWorkspace ws(cfg, 1, T, at::kDouble, autograd::ActivationMode::kRecompute);
  at::Tensor t = at::empty({1, T}, at::kLong);
  for (int64_t i = 0; i < T; ++i) t[0][i] = int64_t{ids[static_cast<size_t>(i)]};
  return autograd::model_logits(p, t, ws)[0];  // [T, V]
}

TEST_P(GenerateTest, PaddedForwardMatchesTrainingForward) {
  const model::ModelConfig cfg = model::testing::tiny_config(GetParam().opts);
  const model::ModelParams p = make_params(cfg);
  const std::vector<int32_t> prompt = {3, 17, 5, 42, 8, 1, 29};
  const at::Tensor ref = reference_logits(p, cfg, prompt).to(at::kFloat);
  const int64_t T = static_cast<int64_t>(prompt.size());
  for (int64_t pad : {0, 3}) {
    at::Tensor ids = at::zeros({1, T + pad}, at::kLong);
    for (int64_t i = 0; i < T; ++i) ids[0][pad + i] = int64_t{prompt[static_cast<size_t>(i)]};
    const at::Tensor got = padded_forward_logits(p, cfg, ids, {pad})[0].narrow(0, pad, T);
    const double err = (got - ref).abs().max().item<double>();
    std::printf("%s pad %lld: max abs logit error %.3g\n", GetParam().name, (long long)pad, err);
    EXPECT_LT(err, 1e-4) << "pad " << pad;
  }
}

TEST_P(GenerateTest, GreedyMatchesRecomputingEveryToken) {
  const model::ModelConfig cfg = model::testing::tiny_config(GetParam().opts);
  const model::ModelParams p = make_params(cfg);
  const std::vector<std::vector<int32_t>> prompts = {
      {5}, {9, 2, 33, 14}, {1, 2, 3, 4, 5, 6, 7, 8, 9}, {60, 0, 12}, {7, 7}};
  GenerateOptions opt;
  opt.max_new_tokens = 6;
  opt.max_batch = 3;  // two batches, each with left padding
  const std::vector<std::vector<int32_t>> got = greedy_generate(p, cfg, prompts, opt);
  ASSERT_EQ(got.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::vector<int32_t> seq = prompts[i], expected;
    for (int k = 0; k < opt.max_new_tokens; ++k) {
      const at::Tensor logits = reference_logits(p, cfg, seq);
      const int32_t next = static_cast<int32_t>(logits[-1].argmax().item<int64_t>());
      expected.push_back(next);
      seq.push_back(next);
    }
    EXPECT_EQ(got[i], expected) << "prompt " << i;
  }
}

TEST_P(GenerateTest, StopsAtStopToken) {
  const model::ModelConfig cfg = model::testing::tiny_config(GetParam().opts);
  const model::ModelParams p = make_params(cfg);
  GenerateOptions opt;
  opt.max_new_tokens = 8;
  const auto free_run = greedy_generate(p, cfg, {{4, 8, 15}}, opt);
  ASSERT_EQ(free_run[0].size(), 8u);
  opt.stop_ids = {free_run[0][2]};
  const auto stopped = greedy_generate(p, cfg, {{4, 8, 15}}, opt);
  // Stops at the first occurrence of the stop token, which is kept.
  size_t first = 0;
  while (free_run[0][first] != opt.stop_ids[0]) ++first;
  EXPECT_EQ(stopped[0], std::vector<int32_t>(free_run[0].begin(), free_run[0].begin() + first + 1));
}

INSTANTIATE_TEST_SUITE_P(Models, GenerateTest,
                         ::testing::Values(Case{"llama_gqa", {}},
                                           Case{"qwen2_bias_tied",
                                                [] {
                                                  model::testing::TinyOptions o;
                                                  o.model_type = "qwen2";
                                                  o.tied = true;
                                                  o.bias = true;
                                                  return o;
                                                }()},
                                           Case{"mha_llama3_rope",
                                                [] {
                                                  model::testing::TinyOptions o;
                                                  o.kv_heads = 4;
                                                  o.scaling = model::RopeScalingType::kLlama3;
                                                  return o;
                                                }()}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace ramstream::trainer
