// What host memory this process can use and where it sits: NUMA nodes (hwloc), the node nearest
// GPU 0, and how much RAM is actually available (/proc/meminfo).
//
// Capacity comes from MemAvailable, never from the per-node sizes: on the development VMs hwloc
// and numactl report node 0 with ~5.8 GB while MemAvailable says 24 GB, and binding 8 GB to node 0
// works (DESIGN.md section 7). Node sizes are shown for information only.
//
//   const memory::Topology topo = memory::Topology::probe();
//   std::fprintf(stderr, "%s\n", topo.describe().c_str());
//   memory::ArenaOptions opts;
//   opts.numa_node = topo.gpu_node;  // -1 (no binding) without a GPU
//   uint64_t avail = memory::host_memory_available_bytes();
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ramstream::memory {

struct NumaNode {
  int os_index = 0;
  std::vector<int> cpus;  // OS indices of the CPUs of this node that this process may run on
  // The same CPUs grouped by physical core (SMT siblings together), cores in the order of their
  // first CPU; empty when hwloc did not report cores (then treat every CPU as its own core).
  std::vector<std::vector<int>> cores;
  uint64_t local_memory_bytes = 0;  // as the firmware reports it; see the note at the top
};

struct Topology {
  std::vector<NumaNode> nodes;  // never empty after probe(): at worst one node 0 with every cpu
  // NUMA node nearest GPU 0; -1 without CUDA compiled in, without a device, or when the platform
  // does not say (several nodes and no PCI affinity).
  int gpu_node = -1;

  // Never fails: when hwloc cannot load a topology it logs a warning and returns one node 0 with
  // the CPUs of this process's affinity mask.
  static Topology probe();

  // nullptr when no node has that OS index.
  const NumaNode* node(int os_index) const;
  // One line per node plus the GPU node and MemAvailable, for logs and `ramstream plan`.
  std::string describe() const;
};

// MemAvailable from /proc/meminfo; when that line is missing (kernels before 3.14 or no /proc)
// the free physical pages reported by sysconf.
uint64_t host_memory_available_bytes();

// The MemAvailable value (in bytes) of a /proc/meminfo text; nullopt when the line is absent or
// malformed.
std::optional<uint64_t> parse_mem_available(const std::string& meminfo);

// A Linux cpulist ("0-3,8,10-11") as OS indices; nullopt when malformed.
std::optional<std::vector<int>> parse_cpulist(const std::string& text);

// The inverse of parse_cpulist: "0-3,8,10-11" (sorted, duplicates dropped); "none" when empty.
std::string format_cpulist(const std::vector<int>& cpus);

// "18.3 GiB", "512.0 MiB", "4.0 KiB", "17 B": binary units, one decimal.
std::string format_bytes(uint64_t bytes);

}  // namespace ramstream::memory
