// Softmax row pieces: the vector path bit for bit against the scalar one (fp32 and bf16, lengths
// with and without a tail), and the sums against double.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/bf16.h"
#include "kernels/cpu_isa.h"
#include "kernels/softmax_rows.h"
#include "kernels/test_values.h"

namespace ramstream::kernels {
namespace {

double val(float x) {
  return x;
}
double val(bf16 x) {
  return to_float(x);
}

struct Out {
  float max = 0, sum = 0, dot = 0;
  std::vector<uint8_t> x, p, dp;
};

template <class T>
Out run(Isa isa, int64_t n) {
  set_kernel_isa(isa);
  std::vector<T> x = normal_values<T>(n, 1, 2.f), p = normal_values<T>(n, 2, 2.f),
                 dp = normal_values<T>(n, 3, 2.f);
  Out o;
  o.max = row_max(x.data(), n);
  o.sum = exp_sum(x.data(), n, 0.125f, o.max * 0.125f, 0.5f, /*store=*/true);
  scale_row(x.data(), n, 1.0f / o.sum);
  o.dot = exp_dot(p.data(), dp.data(), n, 0.125f, 0.3f);
  softmax_grad(p.data(), dp.data(), n, o.dot, 0.125f);
  auto bytes = [](const std::vector<T>& v) {
    std::vector<uint8_t> b(v.size() * sizeof(T));
    std::memcpy(b.data(), v.data(), b.size());
    return b;
  };
  o.x = bytes(x);
  o.p = bytes(p);
  o.dp = bytes(dp);
  set_kernel_isa(best_isa());
  return o;
}

template <class T>
void check(int64_t n) {
  const Out s = run<T>(Isa::kScalar, n);
  if (best_isa() == Isa::kAvx2Fma) {
    const Out v = run<T>(Isa::kAvx2Fma, n);
    EXPECT_EQ(std::memcmp(&v.sum, &s.sum, sizeof(float)), 0) << n;
    EXPECT_EQ(std::memcmp(&v.dot, &s.dot, sizeof(float)), 0) << n;
    EXPECT_EQ(v.max, s.max);
    EXPECT_EQ(v.x, s.x) << n;
    EXPECT_EQ(v.p, s.p) << n;
    EXPECT_EQ(v.dp, s.dp) << n;
  }
  const std::vector<T> x = normal_values<T>(n, 1, 2.f), p = normal_values<T>(n, 2, 2.f),
                       dp = normal_values<T>(n, 3, 2.f);
  double mx = -INFINITY, sum = 0, dot = 0;
  for (const T& e : x) mx = std::max(mx, val(e));
  for (const T& e : x) sum += std::exp(val(e) * 0.125 - double(float(mx) * 0.125f));
  for (int64_t j = 0; j < n; ++j)
    dot += std::exp(val(p[size_t(j)]) * 0.125 - 0.3) * val(dp[size_t(j)]);
  EXPECT_EQ(double(s.max), mx);
  EXPECT_NEAR(s.sum, sum, 1e-5 * sum) << n;
  double mag = 0;
  for (int64_t j = 0; j < n; ++j)
    mag += std::fabs(std::exp(val(p[size_t(j)]) * 0.125 - 0.3) * val(dp[size_t(j)]));
  EXPECT_NEAR(s.dot, dot, 1e-5 * mag + 1e-7) << n;
}

TEST(SoftmaxRows, VectorEqualsScalarAndSumsMatchDouble) {
  for (int64_t n : {1, 7, 8, 37, 256, 4099}) {
    check<float>(n);
    check<bf16>(n);
  }
}

}  // namespace
}  // namespace ramstream::kernels
