// fp32 <-> bf16 conversion against c10::BFloat16 (scalar) and at::Tensor::to (bulk), on both
// dispatch paths, with NaN, infinities, denormals and exact rounding ties.
#include "kernels/bf16.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <gtest/gtest.h>

#include "kernels/test_isa.h"

namespace ramstream::kernels {
namespace {

// Random bit patterns cover every exponent (denormals, inf, NaN included) and every rounding
// case; the specials and hand-made ties make sure the rare cases appear in every size.
std::vector<float> tricky_floats(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> x(static_cast<size_t>(n));
  const float specials[] = {0.0f,
                            -0.0f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(),
                            bits_float(0xffc12345u),  // negative NaN with a payload
                            bits_float(0x7f800001u),  // signalling NaN: rounding would carry to inf
                            std::numeric_limits<float>::denorm_min(),
                            -std::numeric_limits<float>::denorm_min(),
                            std::numeric_limits<float>::min(),
                            std::numeric_limits<float>::max(),  // rounds up to inf
                            -std::numeric_limits<float>::max(),
                            bits_float(0x3f808000u),   // tie, kept part even: rounds down
                            bits_float(0x3f818000u),   // tie, kept part odd: rounds up
                            bits_float(0x00008000u),   // denormal tie, even
                            bits_float(0x00018000u),   // denormal tie, odd
                            bits_float(0x3f807fffu),   // just below a tie
                            bits_float(0x3f808001u),   // just above a tie
                            bits_float(0x7f7f8000u)};  // tie just below the largest finite
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t r = rng();
    switch (r % 4) {
      case 0:  // any bit pattern
        x[i] = bits_float(rng());
        break;
      case 1:  // an exact tie at a random value
        x[i] = bits_float((rng() & 0xffff0000u) | 0x8000u);
        break;
      case 2:  // ordinary values
        x[i] = std::ldexp(static_cast<float>(rng()) / 4294967296.0f - 0.5f,
                          static_cast<int>(rng() % 40) - 20);
        break;
      default:
        x[i] = specials[rng() % (sizeof(specials) / sizeof(specials[0]))];
    }
  }
  for (size_t k = 0; k < sizeof(specials) / sizeof(specials[0]) && k < x.size(); ++k) {
    x[k] = specials[k];
  }
  return x;
}

TEST(Bf16, ScalarConversionMatchesC10BitForBit) {
  for (float f : tricky_floats(200000, 1)) {
    ASSERT_EQ(to_bf16(f).bits, c10::BFloat16(f).x) << "input bits 0x" << std::hex << float_bits(f);
  }
}

TEST(Bf16, HandPickedRoundingCases) {
  EXPECT_EQ(to_bf16(0.1f).bits, 0x3dcd);
  EXPECT_EQ(to_bf16(bits_float(0x3f808000u)).bits, 0x3f80);  // tie to even: down
  EXPECT_EQ(to_bf16(bits_float(0x3f818000u)).bits, 0x3f82);  // tie to even: up
  EXPECT_EQ(to_bf16(bits_float(0x3f808001u)).bits, 0x3f81);
  EXPECT_EQ(to_bf16(std::numeric_limits<float>::max()).bits, 0x7f80);  // overflows to inf
  EXPECT_EQ(to_bf16(bits_float(0x7f800001u)).bits, 0x7fc0);            // NaN stays NaN
  EXPECT_EQ(to_bf16(bits_float(0xffc12345u)).bits, 0x7fc0);
  EXPECT_EQ(to_bf16(-0.0f).bits, 0x8000);
  EXPECT_EQ(float_bits(to_float(bf16{0x3dcd})), 0x3dcd0000u);
}

TEST(Bf16, BulkFp32ToBf16MatchesTensorTo) {
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{8}, int64_t{33}, int64_t{1000003}}) {
    const std::vector<float> x = tricky_floats(n, static_cast<uint32_t>(n));
    const at::Tensor ref =
        at::from_blob(const_cast<float*>(x.data()), {n}, at::kFloat).to(at::kBFloat16);
    const auto* ref_bits = reinterpret_cast<const uint16_t*>(ref.data_ptr());
    for_each_isa([&](Isa isa) {
      for (int threads : {1, 2, 0}) {
        SCOPED_TRACE(testing::Message() << isa_name(isa) << " n=" << n << " threads=" << threads);
        std::vector<bf16> out(static_cast<size_t>(n), bf16{0x1234});
        fp32_to_bf16(x.data(), out.data(), n, threads);
        for (int64_t i = 0; i < n; ++i) {
          if (std::isnan(x[i])) {
            // c10::BFloat16 gives 0x7fc0; ATen 1.13's vectorised copy gives 0xffff. Both NaN.
            ASSERT_EQ(out[i].bits, 0x7fc0) << "i=" << i;
            ASSERT_TRUE(std::isnan(to_float(bf16{ref_bits[i]}))) << "i=" << i;
          } else {
            ASSERT_EQ(out[i].bits, ref_bits[i])
                << "i=" << i << " input bits 0x" << std::hex << float_bits(x[i]);
          }
        }
      }
    });
  }
}

TEST(Bf16, EveryBf16PatternWidensLikeTensorTo) {
  const int64_t n = 65536 + 7;  // every pattern, plus a tail that is not a multiple of 8
  std::vector<bf16> x(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) x[i] = bf16{static_cast<uint16_t>(i)};
  const at::Tensor ref =
      at::from_blob(x.data(), {n}, at::kBFloat16).to(at::kFloat);  // a shift, NaN payloads kept
  const float* ref_f = ref.data_ptr<float>();
  for_each_isa([&](Isa isa) {
    for (int threads : {1, 0}) {
      SCOPED_TRACE(testing::Message() << isa_name(isa) << " threads=" << threads);
      std::vector<float> out(static_cast<size_t>(n));
      bf16_to_fp32(x.data(), out.data(), n, threads);
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(float_bits(out[i]), float_bits(ref_f[i])) << "pattern 0x" << std::hex << i;
        ASSERT_EQ(float_bits(out[i]), float_bits(to_float(x[i])));
      }
    }
  });
}

TEST(Bf16, RoundTripIsIdentityOnNonNaNPatterns) {
  const int64_t n = 65536;
  std::vector<bf16> x(n), back(n);
  std::vector<float> wide(n);
  for (int64_t i = 0; i < n; ++i) x[i] = bf16{static_cast<uint16_t>(i)};
  bf16_to_fp32(x.data(), wide.data(), n);
  fp32_to_bf16(wide.data(), back.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(wide[i])) continue;
    ASSERT_EQ(back[i].bits, x[i].bits);
  }
}

TEST(Bf16, ZeroLengthTouchesNothingAndNegativeThrows) {
  fp32_to_bf16(nullptr, nullptr, 0);
  bf16_to_fp32(nullptr, nullptr, 0);
  EXPECT_THROW(fp32_to_bf16(nullptr, nullptr, -1), std::invalid_argument);
}

}  // namespace
}  // namespace ramstream::kernels
