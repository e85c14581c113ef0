// Where the host side of training runs: the NUMA node of the parameter store, the CPUs of the
// optimizer threads and the CPUs kept free for the launching thread (the one that enqueues GPU
// work and must never wait behind an optimizer thread for a core).
//
// plan_host_binding() is a pure function of a Topology, so every machine shape is testable with a
// synthetic one; bind_current_thread() and ArenaBinding apply a plan.
//
//   const memory::HostBinding b = memory::plan_host_binding(memory::Topology::probe());
//   std::printf("  numa         %s\n", b.describe().c_str());
//   store_options.numa_node = b.store_node;                  // -1: leave placement alone
//   Status st = memory::bind_current_thread(b.launcher_cpus); // in the launching thread
//   memory::ArenaBinding optimizer(b.optimizer_cpus);        // one TBB thread per CPU, bound
//   optimizer.execute([&] { tbb::parallel_for(...); });
#pragma once

#include <cstddef>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <tbb/task_arena.h>
#include <tbb/task_scheduler_observer.h>

#include "memory/topology.h"
#include "util/result.h"

namespace ramstream::memory {

struct HostBinding {
  int store_node = -1;              // NUMA node of the parameter store; -1: unbound
  std::string store_reason;         // why that node (or why none), for describe()
  std::vector<int> optimizer_cpus;  // CPUs of the optimizer's threads
  std::vector<int> launcher_cpus;   // CPUs kept for the launching thread
  bool shared = false;              // too few CPUs to keep any free: both lists are the same

  // One line for the start-up table, e.g. "store on node 0 (GPU 0's node), optimizer on cpus
  // 2-15 (14), launcher on cpus 0-1".
  std::string describe() const;
};

// The store goes on GPU 0's node; without a GPU or when its locality is unknown, on the node of
// this process's CPUs when they all sit on one node, else nowhere in particular (-1).
// The CPUs considered are the store node's (all of the process's when unbound). From those,
// `reserve_cpus` are kept for the launcher, the lowest-numbered first; -1 picks by the number n
// of CPUs considered: 2 when n >= 8, 1 when 3 <= n <= 7, none when n <= 2 (then optimizer and
// launcher share every CPU and `shared` is set). An explicit count that would leave the
// optimizer no CPU also means sharing. When hwloc reported physical cores (NumaNode::cores) the
// reservation is rounded up to whole cores, so that no optimizer thread runs on an SMT sibling of
// the launcher, unless that would leave the optimizer no core.
HostBinding plan_host_binding(const Topology& topo, int reserve_cpus = -1);

// Restricts the calling thread to `cpus` (pthread_setaffinity_np). The error names the CPUs and
// the errno text (e.g. a CPU outside the process's cpuset).
Status bind_current_thread(const std::vector<int>& cpus);

// The calling thread's affinity mask as OS CPU indices (empty if it cannot be read).
std::vector<int> current_thread_cpus();

// A TBB arena of cpus.size() threads whose every thread, worker or the caller of execute(), is
// bound to `cpus` while it is in the arena; a thread's previous mask is restored when it leaves
// (TBB workers move between arenas, and the caller of execute() is usually the launcher).
// A thread that cannot be bound logs one warning (memory/log.h) and runs unbound. With no CPUs
// given it is a plain arena of the default size that binds nothing.
class ArenaBinding {
 public:
  explicit ArenaBinding(std::vector<int> cpus);
  ~ArenaBinding();
  ArenaBinding(const ArenaBinding&) = delete;
  ArenaBinding& operator=(const ArenaBinding&) = delete;

  // Runs f inside the arena (blocking); parallel algorithms called from f use its threads.
  template <class F>
  decltype(auto) execute(F&& f) {
    return arena_.execute(std::forward<F>(f));
  }

  tbb::task_arena& arena() { return arena_; }
  const std::vector<int>& cpus() const { return cpus_; }
  int max_concurrency() { return arena_.max_concurrency(); }

 private:
  class Observer final : public tbb::task_scheduler_observer {
   public:
    Observer(tbb::task_arena& arena, const std::vector<int>& cpus)
        : tbb::task_scheduler_observer(arena), cpus_(cpus) {}
    void on_scheduler_entry(bool is_worker) override;
    void on_scheduler_exit(bool is_worker) override;

   private:
    const std::vector<int>& cpus_;
    std::once_flag warned_;
  };

  std::vector<int> cpus_;
  tbb::task_arena arena_;  // declared before observer_: destroyed after it
  Observer observer_;
};

}  // namespace ramstream::memory
