#include "memory/host_binding.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <numeric>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <tbb/parallel_for.h>

#include "memory/log.h"

namespace ramstream::memory {
namespace {

std::vector<int> range(int begin, int end) {
  std::vector<int> v(static_cast<size_t>(end - begin));
  std::iota(v.begin(), v.end(), begin);
  return v;
}

NumaNode make_node(int os_index, std::vector<int> cpus) {
  NumaNode n;
  n.os_index = os_index;
  n.cpus = std::move(cpus);
  return n;
}

TEST(HostBinding, OneNodeTwoCpusShares) {
  Topology topo;
  topo.nodes = {make_node(0, {0, 1})};
  const HostBinding b = plan_host_binding(topo);
  EXPECT_EQ(b.store_node, 0);
  EXPECT_TRUE(b.shared);
  EXPECT_EQ(b.optimizer_cpus, (std::vector<int>{0, 1}));
  EXPECT_EQ(b.launcher_cpus, (std::vector<int>{0, 1}));
  EXPECT_EQ(b.describe(),
            "store on node 0 (the only NUMA node), optimizer and launcher share cpus 0-1 (2: too "
            "few to keep one free)");
}

TEST(HostBinding, OneNodeSixteenCpusKeepsTwo) {
  Topology topo;
  topo.nodes = {make_node(0, range(0, 16))};
  const HostBinding b = plan_host_binding(topo);
  EXPECT_EQ(b.store_node, 0);
  EXPECT_FALSE(b.shared);
  EXPECT_EQ(b.launcher_cpus, (std::vector<int>{0, 1}));
  EXPECT_EQ(b.optimizer_cpus, range(2, 16));
  EXPECT_EQ(b.describe(),
            "store on node 0 (the only NUMA node), optimizer on cpus 2-15 (14), launcher on cpus "
            "0-1");
  // With a GPU on that node the reason says so.
  topo.gpu_node = 0;
  EXPECT_EQ(plan_host_binding(topo).describe(),
            "store on node 0 (GPU 0's node), optimizer on cpus 2-15 (14), launcher on cpus 0-1");
}

TEST(HostBinding, ReservationFollowsCpuCount) {
  for (int n = 1; n <= 12; ++n) {
    Topology topo;
    topo.nodes = {make_node(0, range(0, n))};
    const HostBinding b = plan_host_binding(topo);
    const size_t kept = n >= 8 ? 2 : n >= 3 ? 1 : 0;
    SCOPED_TRACE(n);
    EXPECT_EQ(b.shared, kept == 0);
    if (kept == 0) {
      EXPECT_EQ(b.launcher_cpus, range(0, n));
      EXPECT_EQ(b.optimizer_cpus, range(0, n));
    } else {
      EXPECT_EQ(b.launcher_cpus, range(0, static_cast<int>(kept)));
      EXPECT_EQ(b.optimizer_cpus, range(static_cast<int>(kept), n));
    }
  }
}

TEST(HostBinding, ExplicitReservation) {
  Topology topo;
  topo.nodes = {make_node(0, range(0, 8))};
  HostBinding b = plan_host_binding(topo, 3);
  EXPECT_EQ(b.launcher_cpus, range(0, 3));
  EXPECT_EQ(b.optimizer_cpus, range(3, 8));
  b = plan_host_binding(topo, 0);
  EXPECT_TRUE(b.shared);
  EXPECT_EQ(b.optimizer_cpus, range(0, 8));
  EXPECT_NE(b.describe().find("(8: none kept free)"), std::string::npos) << b.describe();
  b = plan_host_binding(topo, 8);  // would leave the optimizer nothing
  EXPECT_TRUE(b.shared);
}

TEST(HostBinding, TwoNodesGpuOnNodeOne) {
  Topology topo;
  topo.nodes = {make_node(0, range(0, 16)), make_node(1, range(16, 32))};
  topo.gpu_node = 1;
  const HostBinding b = plan_host_binding(topo);
  EXPECT_EQ(b.store_node, 1);
  EXPECT_EQ(b.launcher_cpus, (std::vector<int>{16, 17}));
  EXPECT_EQ(b.optimizer_cpus, range(18, 32));
  EXPECT_EQ(b.describe(),
            "store on node 1 (GPU 0's node), optimizer on cpus 18-31 (14), launcher on cpus 16-17");
}

TEST(HostBinding, NoGpuTwoNodesLeavesStoreUnbound) {
  Topology topo;
  topo.nodes = {make_node(0, range(0, 4)), make_node(1, range(4, 8))};
  const HostBinding b = plan_host_binding(topo);
  EXPECT_EQ(b.store_node, -1);
  // Threads may use every CPU of the process; 8 of them keep 2 for the launcher.
  EXPECT_EQ(b.launcher_cpus, (std::vector<int>{0, 1}));
  EXPECT_EQ(b.optimizer_cpus, range(2, 8));
  EXPECT_EQ(b.describe(),
            "store unbound (2 NUMA nodes, none known nearest a GPU), optimizer on cpus 2-7 (6), "
            "launcher on cpus 0-1");
}

TEST(HostBinding, ProcessOnOneOfTwoNodes) {
  // numactl --cpunodebind=1: hwloc reports node 0 without CPUs of this process.
  Topology topo;
  topo.nodes = {make_node(0, {}), make_node(1, range(4, 8))};
  const HostBinding b = plan_host_binding(topo);
  EXPECT_EQ(b.store_node, 1);
  EXPECT_EQ(b.store_reason, "the only node with this process's CPUs");
  EXPECT_EQ(b.launcher_cpus, (std::vector<int>{4}));
  EXPECT_EQ(b.optimizer_cpus, range(5, 8));
}

TEST(HostBinding, GpuOnCpuLessNodeUsesAllCpus) {
  Topology topo;
  topo.nodes = {make_node(0, range(0, 4)), make_node(2, {})};
  topo.gpu_node = 2;
  const HostBinding b = plan_host_binding(topo);
  EXPECT_EQ(b.store_node, 2);
  EXPECT_EQ(b.launcher_cpus, (std::vector<int>{0}));
  EXPECT_EQ(b.optimizer_cpus, range(1, 4));
}

TEST(HostBinding, SmtSiblingsStayTogether) {
  // 8 cores x 2 threads, Linux numbering: core i has CPUs i and i + 8.
  Topology topo;
  NumaNode n = make_node(0, range(0, 16));
  for (int c = 0; c < 8; ++c) n.cores.push_back({c, c + 8});
  topo.nodes = {n};
  HostBinding b = plan_host_binding(topo);
  // 2 CPUs kept = one whole core, both its threads.
  EXPECT_EQ(b.launcher_cpus, (std::vector<int>{0, 8}));
  std::vector<int> opt = range(1, 8);
  for (int c = 9; c < 16; ++c) opt.push_back(c);
  EXPECT_EQ(b.optimizer_cpus, opt);
  EXPECT_EQ(b.describe(),
            "store on node 0 (the only NUMA node), optimizer on cpus 1-7,9-15 (14), launcher on "
            "cpus 0,8");
  // 3 CPUs kept round up to two cores.
  b = plan_host_binding(topo, 3);
  EXPECT_EQ(b.launcher_cpus, (std::vector<int>{0, 1, 8, 9}));
  EXPECT_EQ(b.optimizer_cpus.size(), 12u);

  // 2 cores x 2 threads: 4 CPUs keep 1, rounded up to a core; the optimizer keeps the other.
  Topology small;
  NumaNode m = make_node(0, range(0, 4));
  m.cores = {{0, 2}, {1, 3}};
  small.nodes = {m};
  b = plan_host_binding(small);
  EXPECT_EQ(b.launcher_cpus, (std::vector<int>{0, 2}));
  EXPECT_EQ(b.optimizer_cpus, (std::vector<int>{1, 3}));

  // One core of 4 threads: whole cores would leave the optimizer nothing, so split per CPU.
  Topology one;
  NumaNode k = make_node(0, range(0, 4));
  k.cores = {range(0, 4)};
  one.nodes = {k};
  b = plan_host_binding(one);
  EXPECT_EQ(b.launcher_cpus, (std::vector<int>{0}));
  EXPECT_EQ(b.optimizer_cpus, range(1, 4));

  // Cores that do not cover the node's CPUs are ignored.
  Topology bad;
  NumaNode q = make_node(0, range(0, 8));
  q.cores = {{0, 4}};
  bad.nodes = {q};
  b = plan_host_binding(bad);
  EXPECT_EQ(b.launcher_cpus, range(0, 2));
}

TEST(HostBinding, ProbedTopologyGivesAPlan) {
  const Topology topo = Topology::probe();
  const HostBinding b = plan_host_binding(topo);
  EXPECT_FALSE(b.optimizer_cpus.empty());
  EXPECT_FALSE(b.launcher_cpus.empty());
  if (topo.nodes.size() == 1) {
    EXPECT_EQ(b.store_node, topo.nodes.front().os_index);
  }
  EXPECT_FALSE(b.describe().empty());
}

// Restores the thread's mask at scope exit.
class MaskGuard {
 public:
  MaskGuard() : saved_(current_thread_cpus()) {}
  ~MaskGuard() { (void)bind_current_thread(saved_); }
  const std::vector<int>& saved() const { return saved_; }

 private:
  std::vector<int> saved_;
};

TEST(BindCurrentThread, BindsToCpuZeroAndReadsBack) {
  MaskGuard guard;
  ASSERT_FALSE(guard.saved().empty());
  if (std::find(guard.saved().begin(), guard.saved().end(), 0) == guard.saved().end())
    GTEST_SKIP() << "cpu 0 is not in this process's cpuset";
  // A thread that already runs is not affected (new threads inherit their creator's mask).
  std::vector<int> other;
  std::atomic<bool> go{false};
  std::thread t([&] {
    while (!go.load()) std::this_thread::yield();
    other = current_thread_cpus();
  });
  Status st = bind_current_thread({0});
  go = true;
  t.join();
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_EQ(current_thread_cpus(), (std::vector<int>{0}));
  EXPECT_EQ(sched_getcpu(), 0);
  EXPECT_EQ(other, guard.saved());
}

TEST(BindCurrentThread, ErrorsNameTheCpus) {
  MaskGuard guard;
  Status st = bind_current_thread({});
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("no CPUs"), std::string::npos);
  st = bind_current_thread({-1});
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("cpu -1 is outside"), std::string::npos) << st.error().message;
  // A CPU that exists in no cpuset: the kernel refuses it (EINVAL).
  st = bind_current_thread({CPU_SETSIZE - 2, CPU_SETSIZE - 1});
  ASSERT_FALSE(st.ok());
  const std::string cpus = std::to_string(CPU_SETSIZE - 2) + "-" + std::to_string(CPU_SETSIZE - 1);
  EXPECT_NE(st.error().message.find("cpus " + cpus + ": "), std::string::npos)
      << st.error().message;
  EXPECT_NE(st.error().message.find("nvalid argument"), std::string::npos) << st.error().message;
  EXPECT_EQ(current_thread_cpus(), guard.saved());  // unchanged after the failures
}

TEST(ArenaBinding, TasksRunOnTheGivenCpus) {
  MaskGuard guard;
  const std::vector<int> all = guard.saved();
  ASSERT_FALSE(all.empty());
  // The last CPU of the process alone, and (when there are several) all but the first.
  std::vector<std::vector<int>> sets = {{all.back()}};
  if (all.size() > 2) sets.emplace_back(all.begin() + 1, all.end());
  for (const std::vector<int>& cpus : sets) {
    ArenaBinding arena(cpus);
    EXPECT_EQ(arena.max_concurrency(), static_cast<int>(cpus.size()));
    std::mutex mu;
    std::set<int> seen;
    std::atomic<int> tasks{0};
    arena.execute([&] {
      tbb::parallel_for(0, 2000, [&](int) {
        const int cpu = sched_getcpu();
        volatile double x = 0;
        for (int k = 0; k < 2000; ++k) x = x + k;  // enough work for workers to join
        std::lock_guard<std::mutex> lock(mu);
        seen.insert(cpu);
        ++tasks;
      });
    });
    EXPECT_EQ(tasks.load(), 2000);
    for (int cpu : seen)
      EXPECT_NE(std::find(cpus.begin(), cpus.end(), cpu), cpus.end()) << "task ran on cpu " << cpu;
    // The caller of execute() is unbound again afterwards.
    EXPECT_EQ(current_thread_cpus(), all);
  }
}

TEST(ArenaBinding, UnbindableCpusWarnOnceAndStillRun) {
  std::vector<std::string> warnings;
  std::mutex mu;
  set_warning_sink_for_testing([&](const std::string& m) {
    std::lock_guard<std::mutex> lock(mu);
    warnings.push_back(m);
  });
  {
    ArenaBinding arena({CPU_SETSIZE - 1});
    int ran = 0;
    arena.execute([&] { ran = 1; });
    arena.execute([&] { ran += 1; });
    EXPECT_EQ(ran, 2);
  }
  set_warning_sink_for_testing({});
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("cannot bind the thread to cpus " + std::to_string(CPU_SETSIZE - 1)),
            std::string::npos)
      << warnings[0];
}

TEST(ArenaBinding, EmptyCpuListBindsNothing) {
  MaskGuard guard;
  ArenaBinding arena({});
  std::vector<int> inside;
  arena.execute([&] { inside = current_thread_cpus(); });
  EXPECT_EQ(inside, guard.saved());
  EXPECT_GE(arena.max_concurrency(), 1);
}

}  // namespace
}  // namespace ramstream::memory
