// Linked into autograd_composite_test: every test of the binary runs the ATen compositions that
// non-CPU devices use, instead of the hand-fused CPU loops.
#include <gtest/gtest.h>

#include "autograd/ops.h"

namespace {

class CompositeOps : public ::testing::Environment {
 public:
  void SetUp() override { ramstream::autograd::set_composite_ops_for_testing(true); }
  void TearDown() override { ramstream::autograd::set_composite_ops_for_testing(false); }
};

const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new CompositeOps);

}  // namespace
