// The CPU backend's streams and events: ordering, waits across streams, fault injection.
#include "pipeline/device.h"

#include <atomic>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace ramstream::pipeline {
namespace {

TEST(CpuDevice, CopiesRunInStreamOrderAndEventsOrderStreams) {
  for (bool faults : {false, true}) {
    SCOPED_TRACE(faults ? "fault injection" : "plain");
    auto dev = make_cpu_device(CpuDeviceOptions::faults(faults, 7, 200));
    auto a = dev->new_stream("a");
    auto b = dev->new_stream("b");
    auto ev = dev->new_event();
    std::vector<int> src(1 << 16), mid(1 << 16, 0), dst(1 << 16, 0);
    for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<int>(i);
    const size_t bytes = src.size() * sizeof(int);
    a->copy(mid.data(), src.data(), bytes);
    ev->record(*a);
    b->wait(*ev);  // without this wait b could copy mid before a filled it
    b->copy(dst.data(), mid.data(), bytes);
    b->synchronize();
    EXPECT_EQ(dst, src);
  }
}

TEST(CpuDevice, HostTasksKeepOrderAndSynchronizeWaitsForAll) {
  auto w = make_host_worker("w", CpuDeviceOptions::faults(true, 3, 100));
  std::vector<int> seen;
  for (int i = 0; i < 50; ++i) w->host_task([&seen, i] { seen.push_back(i); });
  w->synchronize();
  ASSERT_EQ(seen.size(), 50u);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(seen[static_cast<size_t>(i)], i);
}

TEST(CpuDevice, EventSynchronizeWaitsForTheLastRecord) {
  auto w = make_host_worker("w", CpuDeviceOptions::faults(true, 5, 2000));
  auto ev = make_host_event();
  ev->synchronize();  // never recorded: returns at once
  std::atomic<int> done{0};
  w->host_task([&] { done = 1; });
  ev->record(*w);
  ev->synchronize();
  EXPECT_EQ(done.load(), 1);
}

TEST(CpuDevice, ComputeStreamIsInline) {
  auto dev = make_cpu_device({});
  auto compute = dev->new_compute_stream();
  int x = 0;
  compute->host_task([&] { x = 42; });
  EXPECT_EQ(x, 42);
  EXPECT_EQ(dev->compute_dtype(), at::kFloat);
  CpuDeviceOptions bf16;
  bf16.compute_dtype = at::kBFloat16;
  EXPECT_EQ(make_cpu_device(bf16)->compute_dtype(), at::kBFloat16);
  CpuDeviceOptions half;
  half.compute_dtype = at::kHalf;
  EXPECT_THROW(make_cpu_device(half), std::invalid_argument);
}

// The host-sync counter counts the launching thread's waits, not the workers'.
TEST(CpuDevice, HostWaitCounterCountsCallerWaitsOnly) {
  auto w = make_host_worker("w", {});
  auto inner = make_host_event();
  auto outer = make_host_event();
  inner->record(*w);
  w->host_task([&] { inner->synchronize(); });  // a worker's wait: not counted
  outer->record(*w);
  const int64_t before = host_wait_count();
  outer->synchronize();
  EXPECT_EQ(host_wait_count() - before, 1);
  w->synchronize();
  EXPECT_EQ(host_wait_count() - before, 2);
  // A stream waiting for an event is not a host wait either.
  auto dev = make_cpu_device({});
  auto compute = dev->new_compute_stream();
  compute->wait(*outer);
  EXPECT_EQ(host_wait_count() - before, 2);
}

TEST(CpuDevice, EventQueryAndElapsed) {
  auto w = make_host_worker("w", {});
  auto a = make_host_event(), b = make_host_event();
  EXPECT_TRUE(a->query());  // never recorded
  std::atomic<bool> go{false};
  a->record(*w);
  w->host_task([&] {
    while (!go.load()) std::this_thread::yield();
  });
  b->record(*w);
  EXPECT_FALSE(b->query());
  go = true;
  b->synchronize();
  EXPECT_TRUE(b->query());
  EXPECT_GE(b->elapsed_us(*a), 0.0);
}

}  // namespace
}  // namespace ramstream::pipeline
