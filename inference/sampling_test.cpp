#include "inference/sampling.h"

#include <cmath>
#include <map>

#include <gtest/gtest.h>

namespace ramstream::inference {
namespace {

const std::vector<float> kLogits = {0.5f, 2.0f, -1.0f, 1.5f, 0.0f, 1.9f};

TEST(Sampling, GreedyIsTheArgmaxWithTheLowestIdOnTies) {
  Sampler s({}, 0);
  EXPECT_EQ(s.next(kLogits.data(), 6, {}), 1);
  const std::vector<float> tie = {1, 3, 3, 0};
  EXPECT_EQ(s.next(tie.data(), 4, {}), 1);
}

TEST(Sampling, SameSeedSameTokensOtherSeedOthers) {
  SamplingOptions o;
  o.temperature = 1.5f;
  o.seed = 42;
  auto draw = [&](uint64_t seed, uint64_t seq) {
    SamplingOptions p = o;
    p.seed = seed;
    Sampler s(p, seq);
    std::vector<int32_t> out;
    for (int i = 0; i < 64; ++i) out.push_back(s.next(kLogits.data(), 6, {}));
    return out;
  };
  EXPECT_EQ(draw(42, 0), draw(42, 0));
  EXPECT_NE(draw(42, 0), draw(43, 0));
  EXPECT_NE(draw(42, 0), draw(42, 1));  // each sequence its own stream
}

TEST(Sampling, FrequenciesFollowTheSoftmax) {
  SamplingOptions o;
  o.temperature = 0.8f;
  o.seed = 7;
  Sampler s(o, 0);
  std::vector<double> p(6);
  double sum = 0;
  for (size_t i = 0; i < 6; ++i) sum += p[i] = std::exp(kLogits[i] / 0.8);
  const int n = 40000;
  std::vector<int> count(6, 0);
  for (int i = 0; i < n; ++i) ++count[static_cast<size_t>(s.next(kLogits.data(), 6, {}))];
  for (size_t i = 0; i < 6; ++i) {
    const double want = p[i] / sum, got = double(count[i]) / n;
    const double sd = std::sqrt(want * (1 - want) / n);
    EXPECT_NEAR(got, want, 5 * sd + 1e-4) << "token " << i;
  }
}

TEST(Sampling, TopKAndTopPCutTheTail) {
  SamplingOptions o;
  o.temperature = 1.0f;
  o.top_k = 2;  // ids 1 and 5
  Sampler s(o, 0);
  for (int i = 0; i < 2000; ++i) {
    const int32_t t = s.next(kLogits.data(), 6, {});
    EXPECT_TRUE(t == 1 || t == 5) << t;
  }
  SamplingOptions q;
  q.temperature = 1.0f;
  q.top_p = 0.05f;  // the first candidate alone reaches it
  Sampler g(q, 0);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(g.next(kLogits.data(), 6, {}), 1);
}

TEST(Sampling, RepetitionPenaltyOncePerDistinctId) {
  SamplingOptions o;
  o.repetition_penalty = 1.2f;
  Sampler s(o, 0);
  // 2.0 / 1.2 = 1.67 < 1.9: id 5 wins once 1 has been seen, however often.
  EXPECT_EQ(s.next(kLogits.data(), 6, {1}), 5);
  EXPECT_EQ(s.next(kLogits.data(), 6, {1, 1, 1, 1}), 5);
  // Negative logits move away from zero.
  const std::vector<float> neg = {-1.0f, -1.1f};
  EXPECT_EQ(s.next(neg.data(), 2, {0}), 1);
}

TEST(Sampling, ValidateNamesTheOption) {
  SamplingOptions o;
  o.top_p = 0;
  EXPECT_NE(validate(o).find("--top-p"), std::string::npos);
  o = {};
  o.temperature = -1;
  EXPECT_NE(validate(o).find("--temperature"), std::string::npos);
  o = {};
  o.repetition_penalty = 0;
  EXPECT_NE(validate(o).find("--repetition-penalty"), std::string::npos);
  EXPECT_EQ(validate(SamplingOptions{}), "");
}

}  // namespace
}  // namespace ramstream::inference
