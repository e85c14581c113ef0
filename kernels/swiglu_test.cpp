// SwiGLU kernels: the exp against libm in double, the vector path bit for bit against the scalar
// one (fp32 and bf16, widths that leave a scalar tail), and both against the formula in double.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/bf16.h"
#include "kernels/cpu_isa.h"
#include "kernels/swiglu.h"
#include "kernels/test_values.h"

namespace ramstream::kernels {
namespace {

TEST(SwigluExp, WithinFourUlpOfTheTrueValue) {
  double worst = 0;
  for (double x = -87.0; x <= 88.0; x += 0.001) {
    const float xf = static_cast<float>(x);
    const double want = std::exp(double(xf));
    const double rel = std::fabs(double(exp_approx(xf)) - want) / want;
    worst = std::max(worst, rel);
  }
  std::printf("max relative error %.3g (%.2f ulp of 2^-23)\n", worst, worst / 0x1p-23);
  EXPECT_LT(worst, 4 * 0x1p-23);
  EXPECT_EQ(exp_approx(-1000.f), exp_approx(-87.3365447504f));  // clamped, finite
  EXPECT_TRUE(std::isfinite(exp_approx(1000.f)));
}

float as_float(float x) {
  return x;
}
float as_float(bf16 x) {
  return to_float(x);
}

template <class T>
void check(int64_t rows, int64_t F) {
  const std::vector<T> gu = normal_values<T>(rows * 2 * F, 1, 3.f),
                       dy = normal_values<T>(rows * F, 2, 3.f);
  auto run = [&](Isa isa, std::vector<T>& out, std::vector<T>& dgu) {
    set_kernel_isa(isa);
    out.resize(size_t(rows * F));
    dgu.resize(size_t(rows * 2 * F));
    swiglu_forward_rows(gu.data(), out.data(), rows, F);
    swiglu_backward_rows(dy.data(), gu.data(), dgu.data(), rows, F);
    set_kernel_isa(best_isa());
  };
  std::vector<T> out_s, dgu_s;
  run(Isa::kScalar, out_s, dgu_s);
  if (best_isa() == Isa::kAvx2Fma) {
    std::vector<T> out_v, dgu_v;
    run(Isa::kAvx2Fma, out_v, dgu_v);
    EXPECT_EQ(std::memcmp(out_v.data(), out_s.data(), out_s.size() * sizeof(T)), 0);
    EXPECT_EQ(std::memcmp(dgu_v.data(), dgu_s.data(), dgu_s.size() * sizeof(T)), 0);
  }
  // Against the formula in double; the bound is the output's rounding plus a few fp32 ulps.
  const double tol = std::is_same_v<T, bf16> ? 0x1p-8 : 1e-5;
  double worst = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < F; ++i) {
      const double g = as_float(gu[size_t(r * 2 * F + i)]);
      const double u = as_float(gu[size_t(r * 2 * F + F + i)]);
      const double d = as_float(dy[size_t(r * F + i)]);
      const double sig = 1 / (1 + std::exp(-g));
      const double want[3] = {g * sig * u, d * u * sig * (1 + g * (1 - sig)), d * g * sig};
      const double got[3] = {as_float(out_s[size_t(r * F + i)]),
                             as_float(dgu_s[size_t(r * 2 * F + i)]),
                             as_float(dgu_s[size_t(r * 2 * F + F + i)])};
      for (int k = 0; k < 3; ++k) {
        const double err = std::fabs(got[k] - want[k]) / (std::fabs(want[k]) + 1e-3);
        worst = std::max(worst, err);
        ASSERT_LE(err, tol) << "row " << r << " i " << i << " output " << k;
      }
    }
  }
  std::printf("%s rows %lld F %lld: max relative error %.3g\n",
              std::is_same_v<T, bf16> ? "bf16" : "fp32", (long long)rows, (long long)F, worst);
}

TEST(Swiglu, VectorEqualsScalarAndBothMatchTheFormulaFp32) {
  check<float>(5, 64);
  check<float>(3, 37);
}

TEST(Swiglu, VectorEqualsScalarAndBothMatchTheFormulaBf16) {
  check<bf16>(5, 64);
  check<bf16>(3, 37);
}

}  // namespace
}  // namespace ramstream::kernels
