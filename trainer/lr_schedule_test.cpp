#include "trainer/lr_schedule.h"

#include <gtest/gtest.h>

namespace ramstream::trainer {
namespace {

TEST(LrSchedule, WarmupThenCosineToMinimum) {
  LrSchedule s{LrSchedule::Kind::kCosine, 1e-3, 10, 110, 0.1};
  EXPECT_DOUBLE_EQ(s.at(1), 1e-4);
  EXPECT_DOUBLE_EQ(s.at(10), 1e-3);
  EXPECT_NEAR(s.at(60), 0.55e-3, 1e-12);  // halfway through the decay
  EXPECT_NEAR(s.at(110), 1e-4, 1e-12);
  EXPECT_NEAR(s.at(500), 1e-4, 1e-12);  // past the end: stays at the minimum
  for (int64_t t = 11; t < 110; ++t) EXPECT_LE(s.at(t + 1), s.at(t)) << t;
}

TEST(LrSchedule, LinearAndConstant) {
  LrSchedule lin{LrSchedule::Kind::kLinear, 2.0, 0, 100, 0.0};
  EXPECT_DOUBLE_EQ(lin.at(0), 2.0);
  EXPECT_DOUBLE_EQ(lin.at(50), 1.0);
  EXPECT_DOUBLE_EQ(lin.at(100), 0.0);
  LrSchedule c{LrSchedule::Kind::kConstant, 3.0, 4, 100, 0.0};
  EXPECT_DOUBLE_EQ(c.at(2), 1.5);
  EXPECT_DOUBLE_EQ(c.at(99), 3.0);
  EXPECT_EQ(LrSchedule::kind_from_name("cosine"), LrSchedule::Kind::kCosine);
  EXPECT_EQ(LrSchedule::kind_from_name("linear"), LrSchedule::Kind::kLinear);
}

}  // namespace
}  // namespace ramstream::trainer
