#include "memory/index_stack.h"

#include <vector>

#include <gtest/gtest.h>

namespace ramstream::memory {
namespace {

std::vector<uint32_t> pop_all(TaggedIndexStack& s) {
  std::vector<uint32_t> got;
  uint32_t i;
  while (s.pop(&i, 1)) got.push_back(i);
  return got;
}

TEST(TaggedIndexStack, FillPopPushOrder) {
  TaggedIndexStack s(5);
  uint32_t i;
  EXPECT_EQ(s.pop(&i, 1), 0u);
  s.fill();
  EXPECT_EQ(s.size_approx(), 5u);
  uint32_t batch[3];
  ASSERT_EQ(s.pop(batch, 3), 3u);
  EXPECT_EQ(batch[0], 0u);
  EXPECT_EQ(batch[1], 1u);
  EXPECT_EQ(batch[2], 2u);
  EXPECT_EQ(s.size_approx(), 2u);
  const uint32_t back[2] = {2, 0};
  s.push(back, 2);
  EXPECT_EQ(pop_all(s), (std::vector<uint32_t>{2, 0, 3, 4}));
  EXPECT_EQ(s.size_approx(), 0u);
  uint32_t big[8];
  s.push(batch + 1, 1);
  EXPECT_EQ(s.pop(big, 8), 1u);  // a batch stops at the bottom
  EXPECT_EQ(big[0], 1u);
}

// The ABA interleaving, forced: between this pop's read of {top 0, next 1} and its CAS, the
// stack loses 0 and 1 and gets 0 back. The top index is the same again, only the version tells.
// An untagged stack would install 1 (now held elsewhere) as the new top.
TEST(TaggedIndexStack, PopSurvivesAbaOnTheTop) {
  TaggedIndexStack s(4);
  s.fill();  // 0 1 2 3
  uint32_t held0 = 0, held1 = 0, got = 0;
  int attempts = 0;
  const uint32_t n = s.pop(&got, 1, [&] {
    if (++attempts > 1) return;
    ASSERT_EQ(s.pop(&held0, 1), 1u);
    ASSERT_EQ(s.pop(&held1, 1), 1u);
    s.push(&held0, 1);  // 0 2 3, head index 0 again
  });
  ASSERT_EQ(n, 1u);
  EXPECT_EQ(attempts, 2);  // the first CAS failed
  EXPECT_EQ(got, 0u);
  EXPECT_EQ(held1, 1u);
  EXPECT_EQ(pop_all(s), (std::vector<uint32_t>{2, 3}));  // 1 is held, so it must not show up
}

TEST(TaggedIndexStack, BatchPopSurvivesAba) {
  TaggedIndexStack s(6);
  s.fill();  // 0 1 2 3 4 5
  uint32_t got[3] = {};
  uint32_t taken[3] = {};
  int attempts = 0;
  const uint32_t n = s.pop(got, 3, [&] {
    if (++attempts > 1) return;
    ASSERT_EQ(s.pop(taken, 3), 3u);  // takes 0 1 2
    s.push(taken, 1);                // 0 3 4 5
  });
  ASSERT_EQ(n, 3u);
  EXPECT_EQ(attempts, 2);
  EXPECT_EQ(got[0], 0u);
  EXPECT_EQ(got[1], 3u);
  EXPECT_EQ(got[2], 4u);
  EXPECT_EQ(pop_all(s), (std::vector<uint32_t>{5}));
}

}  // namespace
}  // namespace ramstream::memory
