// sum_of_squares against libtorch (float64 sum of squares) and its determinism across thread
// counts and dispatch paths.
#include "kernels/reduce.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "kernels/test_isa.h"

namespace ramstream::kernels {
namespace {

std::vector<float> randn(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& e : x) e = dist(rng);
  return x;
}

double torch_sum_of_squares(const std::vector<float>& x) {
  const at::Tensor t =
      at::from_blob(const_cast<float*>(x.data()), {static_cast<int64_t>(x.size())}, at::kFloat)
          .to(at::kDouble);
  return (t * t).sum().item<double>();
}

uint64_t bits(double d) {
  uint64_t u;
  std::memcpy(&u, &d, sizeof(u));
  return u;
}

TEST(SumOfSquares, MatchesTorchFloat64) {
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{17}, int64_t{65537}, int64_t{1000003}}) {
    const std::vector<float> x = randn(n, static_cast<uint32_t>(n));
    const double ref = torch_sum_of_squares(x);
    for_each_isa([&](Isa isa) {
      SCOPED_TRACE(testing::Message() << isa_name(isa) << " n=" << n);
      // Both sum in double, in different orders; a few thousand sequential adds per lane keep the
      // difference near 1e-14 relative, far below the 1e-12 allowed.
      EXPECT_NEAR(sum_of_squares(x.data(), n), ref, 1e-12 * ref);
    });
  }
}

TEST(SumOfSquares, Bf16EqualsFp32OfTheWidenedValues) {
  const int64_t n = 1000003;
  std::vector<float> x = randn(n, 5);
  std::vector<bf16> xb(n);
  for (int64_t i = 0; i < n; ++i) {
    xb[i] = to_bf16(x[i]);
    x[i] = to_float(xb[i]);
  }
  for_each_isa([&](Isa isa) {
    SCOPED_TRACE(isa_name(isa));
    EXPECT_EQ(bits(sum_of_squares(xb.data(), n)), bits(sum_of_squares(x.data(), n)));
    const double ref = torch_sum_of_squares(x);
    EXPECT_NEAR(sum_of_squares(xb.data(), n), ref, 1e-12 * ref);
  });
}

TEST(SumOfSquares, SameBitsForEveryThreadCountAndIsa) {
  for (int64_t n : {int64_t{7}, int64_t{1000003}}) {
    const std::vector<float> x = randn(n, 9);
    std::vector<bf16> xb(n);
    for (int64_t i = 0; i < n; ++i) xb[i] = to_bf16(x[i]);
    const double ref = sum_of_squares(x.data(), n, 1);
    const double ref_b = sum_of_squares(xb.data(), n, 1);
    for_each_isa([&](Isa isa) {
      for (int threads : {1, 2, 3, 0}) {
        SCOPED_TRACE(testing::Message() << isa_name(isa) << " n=" << n << " threads=" << threads);
        EXPECT_EQ(bits(sum_of_squares(x.data(), n, threads)), bits(ref));
        EXPECT_EQ(bits(sum_of_squares(xb.data(), n, threads)), bits(ref_b));
      }
    });
  }
}

// What the sharded optimizer relies on: partials computed shard by shard (block-aligned), put
// side by side and summed in block order, are the whole array's sum bit for bit.
TEST(SumOfSquares, BlockAlignedShardsReproduceTheWholeSum) {
  const int64_t n = 5 * kSumOfSquaresBlock + 1234;  // a short last block
  const std::vector<float> x = randn(n, 9);
  const double whole = sum_of_squares(x.data(), n);
  for (int64_t shard_blocks : {1, 2, 4}) {
    std::vector<double> partials;
    for (int64_t begin = 0; begin < n; begin += shard_blocks * kSumOfSquaresBlock) {
      const int64_t len = std::min(n - begin, shard_blocks * kSumOfSquaresBlock);
      std::vector<double> p(static_cast<size_t>(sum_of_squares_blocks(len)));
      sum_of_squares_partials(x.data() + begin, len, p.data(), /*max_threads=*/1);
      partials.insert(partials.end(), p.begin(), p.end());
    }
    ASSERT_EQ(partials.size(), static_cast<size_t>(sum_of_squares_blocks(n)));
    double total = 0;
    for (double p : partials) total += p;
    EXPECT_EQ(total, whole) << shard_blocks << " blocks per shard";
  }
}

TEST(SumOfSquares, EdgeValues) {
  EXPECT_EQ(sum_of_squares(static_cast<const float*>(nullptr), 0), 0.0);
  std::vector<float> x(1000, 0.5f);
  for_each_isa([&](Isa isa) {
    SCOPED_TRACE(isa_name(isa));
    EXPECT_EQ(sum_of_squares(x.data(), 1000), 250.0);
    // fp32 max squared overflows fp32 but not double.
    const float big = std::numeric_limits<float>::max();
    EXPECT_EQ(sum_of_squares(&big, 1), static_cast<double>(big) * big);
    std::vector<float> y = x;
    y[999] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_TRUE(std::isnan(sum_of_squares(y.data(), 1000)));
    y[999] = -std::numeric_limits<float>::infinity();
    EXPECT_TRUE(std::isinf(sum_of_squares(y.data(), 1000)));
  });
  EXPECT_THROW(sum_of_squares(x.data(), -1), std::invalid_argument);
}

}  // namespace
}  // namespace ramstream::kernels
