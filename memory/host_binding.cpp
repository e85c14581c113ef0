#include "memory/host_binding.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <system_error>

#include "memory/log.h"

namespace ramstream::memory {

namespace {

using Units = std::vector<std::vector<int>>;  // CPUs grouped by physical core

// A node's CPUs as cores when its `cores` cover exactly its `cpus`, else one unit per CPU.
void append_units(const NumaNode& n, Units& units) {
  if (!n.cores.empty()) {
    std::vector<int> flat;
    for (const std::vector<int>& core : n.cores) flat.insert(flat.end(), core.begin(), core.end());
    std::vector<int> cpus = n.cpus;
    std::sort(flat.begin(), flat.end());
    std::sort(cpus.begin(), cpus.end());
    const bool consistent = flat == cpus && std::none_of(n.cores.begin(), n.cores.end(),
                                                         [](const auto& c) { return c.empty(); });
    if (consistent) {
      for (std::vector<int> core : n.cores) {
        std::sort(core.begin(), core.end());
        units.push_back(std::move(core));
      }
      return;
    }
  }
  for (int c : n.cpus) units.push_back({c});
}

std::vector<int> flatten(Units::const_iterator begin, Units::const_iterator end) {
  std::vector<int> out;
  for (auto it = begin; it != end; ++it) out.insert(out.end(), it->begin(), it->end());
  std::sort(out.begin(), out.end());
  return out;
}

int auto_reserve(size_t cpus) {
  return cpus >= 8 ? 2 : cpus >= 3 ? 1 : 0;
}

std::string errno_str(int err) {
  return std::error_code(err, std::generic_category()).message();
}

}  // namespace

HostBinding plan_host_binding(const Topology& topo, int reserve_cpus) {
  HostBinding b;
  std::vector<const NumaNode*> with_cpus;
  for (const NumaNode& n : topo.nodes)
    if (!n.cpus.empty()) with_cpus.push_back(&n);
  const NumaNode* store = topo.gpu_node >= 0 ? topo.node(topo.gpu_node) : nullptr;
  if (store) {
    b.store_reason = "GPU 0's node";
  } else if (with_cpus.size() == 1) {
    store = with_cpus.front();
    b.store_reason =
        topo.nodes.size() == 1 ? "the only NUMA node" : "the only node with this process's CPUs";
  } else {
    b.store_reason = std::to_string(topo.nodes.size()) + " NUMA nodes, none known nearest a GPU";
  }
  if (store) b.store_node = store->os_index;

  // Threads stay on the store's node; a node without CPUs (memory only) or no store node means
  // every CPU of the process.
  Units units;
  if (store && !store->cpus.empty()) {
    append_units(*store, units);
  } else {
    for (const NumaNode* n : with_cpus) append_units(*n, units);
  }
  std::sort(units.begin(), units.end());
  const std::vector<int> all = flatten(units.begin(), units.end());
  const size_t want =
      static_cast<size_t>(std::max(0, reserve_cpus >= 0 ? reserve_cpus : auto_reserve(all.size())));
  if (want == 0 || want >= all.size()) {
    b.shared = true;
    b.optimizer_cpus = all;
    b.launcher_cpus = all;
    return b;
  }
  // Whole cores from the lowest CPU up until `want` CPUs are kept; per CPU if that takes all.
  size_t taken_units = 0, taken_cpus = 0;
  while (taken_units < units.size() && taken_cpus < want) taken_cpus += units[taken_units++].size();
  if (taken_units == units.size()) {
    b.launcher_cpus.assign(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(want));
    b.optimizer_cpus.assign(all.begin() + static_cast<std::ptrdiff_t>(want), all.end());
    return b;
  }
  const auto split = units.cbegin() + static_cast<std::ptrdiff_t>(taken_units);
  b.launcher_cpus = flatten(units.cbegin(), split);
  b.optimizer_cpus = flatten(split, units.cend());
  return b;
}

std::string HostBinding::describe() const {
  std::string s = store_node >= 0 ? "store on node " + std::to_string(store_node) : "store unbound";
  s += " (" + store_reason + ")";
  if (optimizer_cpus.empty() && launcher_cpus.empty())
    return s + ", no CPUs known: threads unbound";
  if (shared) {
    const size_t n = optimizer_cpus.size();
    return s + ", optimizer and launcher share cpus " + format_cpulist(optimizer_cpus) + " (" +
           std::to_string(n) + (n <= 2 ? ": too few to keep one free)" : ": none kept free)");
  }
  return s + ", optimizer on cpus " + format_cpulist(optimizer_cpus) + " (" +
         std::to_string(optimizer_cpus.size()) + "), launcher on cpus " +
         format_cpulist(launcher_cpus);
}

Status bind_current_thread(const std::vector<int>& cpus) {
  if (cpus.empty()) return Error{"cannot bind the thread: no CPUs given"};
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus) {
    if (c < 0 || c >= CPU_SETSIZE) {
      return Error{"cannot bind the thread to cpus " + format_cpulist(cpus) + ": cpu " +
                   std::to_string(c) + " is outside 0-" + std::to_string(CPU_SETSIZE - 1)};
    }
    CPU_SET(c, &set);
  }
  const int rc = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
  if (rc != 0) {
    return Error{"cannot bind the thread to cpus " + format_cpulist(cpus) + ": " + errno_str(rc)};
  }
  return Ok{};
}

std::vector<int> current_thread_cpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (pthread_getaffinity_np(pthread_self(), sizeof(set), &set) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}

namespace {

// Masks saved when a thread entered an ArenaBinding, innermost last (a thread can be in nested
// arenas: execute() called from inside another arena's task).
struct SavedMask {
  const void* observer;
  cpu_set_t mask;
  bool valid;
};
thread_local std::vector<SavedMask> t_saved;

}  // namespace

void ArenaBinding::Observer::on_scheduler_entry(bool /*is_worker*/) {
  SavedMask saved{this, {}, false};
  CPU_ZERO(&saved.mask);
  saved.valid = pthread_getaffinity_np(pthread_self(), sizeof(saved.mask), &saved.mask) == 0;
  Status st = bind_current_thread(cpus_);
  if (!st.ok()) {
    saved.valid = false;  // nothing changed, nothing to restore
    std::call_once(warned_, [&] {
      log_warning("TBB arena: " + st.error().message + "; its threads run unbound");
    });
  }
  t_saved.push_back(saved);
}

void ArenaBinding::Observer::on_scheduler_exit(bool /*is_worker*/) {
  for (auto it = t_saved.rbegin(); it != t_saved.rend(); ++it) {
    if (it->observer != this) continue;
    if (it->valid) (void)pthread_setaffinity_np(pthread_self(), sizeof(it->mask), &it->mask);
    t_saved.erase(std::next(it).base());
    return;
  }
}

ArenaBinding::ArenaBinding(std::vector<int> cpus)
    : cpus_(std::move(cpus)),
      arena_(cpus_.empty() ? tbb::task_arena::automatic : static_cast<int>(cpus_.size())),
      observer_(arena_, cpus_) {
  if (!cpus_.empty()) observer_.observe(true);
}

ArenaBinding::~ArenaBinding() {
  observer_.observe(false);
}

}  // namespace ramstream::memory
