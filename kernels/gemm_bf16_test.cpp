// gemm_bf16_f32 against an fp64 product of the same bf16 values: plain and transposed operand
// strides, overwrite and accumulate. The bound is fp32 summation error, not bf16 rounding: a
// result rounded to bf16 anywhere (2^-9 relative) would be ~100x outside it.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/bf16.h"
#include "kernels/cpu_isa.h"
#include "kernels/gemm_bf16.h"

namespace ramstream::kernels {
namespace {

struct Case {
  int64_t M, N, K;
  bool a_transposed;  // A given as its transpose [K,M] row-major (the weight-grad layout)
  bool accumulate;
};

class GemmBf16 : public testing::TestWithParam<Case> {};

TEST_P(GemmBf16, MatchesFp64OfTheSameBf16Values) {
  const Case p = GetParam();
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.f, 1.f);
  auto bf16_values = [&](int64_t n) {
    std::vector<uint16_t> v(static_cast<size_t>(n));
    for (auto& x : v) x = to_bf16(dist(rng)).bits;
    return v;
  };
  const std::vector<uint16_t> a = bf16_values(p.M * p.K), b = bf16_values(p.K * p.N);
  std::vector<float> c(static_cast<size_t>(p.M * p.N));
  for (auto& x : c) x = p.accumulate ? dist(rng) : 12345.f;  // overwrite must ignore the old value
  const std::vector<float> c0 = c;
  const int64_t a_row = p.a_transposed ? 1 : p.K, a_col = p.a_transposed ? p.M : 1;
  const GemmStatus s = gemm_bf16_f32(p.M, p.N, p.K, a.data(), a_row, a_col, b.data(), p.N, 1,
                                     c.data(), p.N, p.accumulate);
  if (s == GemmStatus::kUnavailable) GTEST_SKIP() << "built without oneDNN";
  // AVX2-only CPUs: oneDNN has no bf16 GEMM there; the engine then widens to an fp32 GEMM.
  if (s == GemmStatus::kUnsupported && !bf16_gemm_native()) {
    GTEST_SKIP() << "oneDNN has no bf16 GEMM for this CPU (no AVX512-BF16/AMX)";
  }
  ASSERT_EQ(s, GemmStatus::kOk);
  auto val = [](uint16_t bits) { return double(to_float(bf16{bits})); };
  double worst = 0;
  for (int64_t i = 0; i < p.M; ++i) {
    for (int64_t j = 0; j < p.N; ++j) {
      double sum = p.accumulate ? double(c0[size_t(i * p.N + j)]) : 0.0, mag = std::fabs(sum);
      for (int64_t k = 0; k < p.K; ++k) {
        const double t = val(a[size_t(i * a_row + k * a_col)]) * val(b[size_t(k * p.N + j)]);
        sum += t;
        mag += std::fabs(t);
      }
      const double bound = 2.0 * double(p.K + 1) * 0x1p-24 * mag + 1e-30;
      const double err = std::fabs(double(c[size_t(i * p.N + j)]) - sum);
      worst = std::max(worst, err / bound);
      ASSERT_LE(err, bound) << "at (" << i << "," << j << ")";
    }
  }
  std::printf("M=%lld N=%lld K=%lld: max error %.3f of the fp32 summation bound\n", (long long)p.M,
              (long long)p.N, (long long)p.K, worst);
}

INSTANTIATE_TEST_SUITE_P(Shapes, GemmBf16,
                         testing::Values(Case{64, 48, 96, false, false},
                                         Case{96, 40, 256, true, true}, Case{7, 13, 5, true, false},
                                         Case{33, 65, 300, false, true}));

TEST(CpuIsa, Bf16FeatureBitsAgreeWithTheKernel) {
  // The CPUID reads against the flags Linux lists for this CPU in /proc/cpuinfo.
  std::FILE* f = std::fopen("/proc/cpuinfo", "r");
  if (f == nullptr) GTEST_SKIP() << "no /proc/cpuinfo";
  std::string flags;
  char line[8192];
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::strncmp(line, "flags", 5) == 0) {
      flags = std::string(" ") + (std::strchr(line, ':') + 1);
      break;
    }
  }
  std::fclose(f);
  if (flags.empty()) GTEST_SKIP() << "no flags line (not x86?)";
  for (char& ch : flags) ch = ch == '\n' ? ' ' : ch;
  EXPECT_EQ(cpu_has_avx512_bf16(), flags.find(" avx512_bf16 ") != std::string::npos);
  EXPECT_EQ(cpu_has_amx_bf16(), flags.find(" amx_bf16 ") != std::string::npos);
  EXPECT_EQ(bf16_gemm_native(), cpu_has_avx512_bf16() || cpu_has_amx_bf16());
}

}  // namespace
}  // namespace ramstream::kernels
