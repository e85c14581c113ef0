#include "memory/topology.h"
#include "util/text.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <hwloc.h>

#include "memory/log.h"
#include "memory/pin_backend.h"

namespace ramstream::memory {

namespace {

std::vector<int> affinity_cpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  if (cpus.empty()) {
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    for (int c = 0; c < std::max(1L, n); ++c) cpus.push_back(c);
  }
  return cpus;
}

// The CPUs of `numa` grouped by the physical core they belong to; empty when hwloc has no core
// objects (some VMs and containers) or they do not cover the node's CPUs.
std::vector<std::vector<int>> node_cores(hwloc_topology_t t, hwloc_obj_t numa) {
  std::vector<std::vector<int>> cores;
  if (!numa->cpuset) return cores;
  size_t covered = 0;
  const int n = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_CORE);
  for (int i = 0; i < n; ++i) {
    hwloc_obj_t core = hwloc_get_obj_by_type(t, HWLOC_OBJ_CORE, i);
    if (!core->cpuset || !hwloc_bitmap_intersects(core->cpuset, numa->cpuset)) continue;
    std::vector<int> pus;
    unsigned c;
    hwloc_bitmap_foreach_begin(c, core->cpuset) {
      if (hwloc_bitmap_isset(numa->cpuset, c)) pus.push_back(static_cast<int>(c));
    }
    hwloc_bitmap_foreach_end();
    covered += pus.size();
    cores.push_back(std::move(pus));
  }
  if (covered != static_cast<size_t>(hwloc_bitmap_weight(numa->cpuset))) return {};
  std::sort(cores.begin(), cores.end());
  return cores;
}

bool load_hwloc(Topology& topo) {
  hwloc_topology_t t;
  if (hwloc_topology_init(&t) != 0) return false;
  if (hwloc_topology_load(t) != 0) {
    hwloc_topology_destroy(t);
    return false;
  }
  const int n = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_NUMANODE);
  for (int i = 0; i < n; ++i) {
    hwloc_obj_t obj = hwloc_get_obj_by_type(t, HWLOC_OBJ_NUMANODE, i);
    NumaNode node;
    node.os_index = static_cast<int>(obj->os_index);
    node.local_memory_bytes = obj->attr ? obj->attr->numanode.local_memory : 0;
    if (obj->cpuset) {
      unsigned c;
      hwloc_bitmap_foreach_begin(c, obj->cpuset) node.cpus.push_back(static_cast<int>(c));
      hwloc_bitmap_foreach_end();
    }
    node.cores = node_cores(t, obj);
    topo.nodes.push_back(std::move(node));
  }
  hwloc_topology_destroy(t);
  std::sort(topo.nodes.begin(), topo.nodes.end(),
            [](const NumaNode& a, const NumaNode& b) { return a.os_index < b.os_index; });
  return !topo.nodes.empty();
}

// The node the kernel assigns to the PCI device; when it has none (-1, usual on VMs), the node
// whose CPUs overlap the device's local_cpulist most, and on a single-node host that node.
int pci_device_node(const Topology& topo, const std::string& bus_id) {
  const std::string dir = "/sys/bus/pci/devices/" + bus_id;
  if (std::optional<std::string> s = read_small_file(dir + "/numa_node")) {
    const int node = std::atoi(trim(*s).c_str());
    if (node >= 0 && topo.node(node)) return node;
  }
  if (std::optional<std::string> s = read_small_file(dir + "/local_cpulist")) {
    if (std::optional<std::vector<int>> local = parse_cpulist(trim(*s))) {
      int best = -1;
      size_t best_overlap = 0;
      for (const NumaNode& n : topo.nodes) {
        size_t overlap = 0;
        for (int c : n.cpus) overlap += std::count(local->begin(), local->end(), c);
        if (overlap > best_overlap) best = n.os_index, best_overlap = overlap;
      }
      // Every CPU being local says nothing about placement when there are several nodes.
      if (best >= 0 && (topo.nodes.size() == 1 || best_overlap < local->size())) return best;
    }
  }
  return topo.nodes.size() == 1 ? topo.nodes.front().os_index : -1;
}

}  // namespace

Topology Topology::probe() {
  Topology topo;
  if (!load_hwloc(topo)) {
    log_warning("hwloc could not load the machine topology; assuming one NUMA node");
    topo.nodes.clear();
    NumaNode node;
    node.os_index = 0;
    node.cpus = affinity_cpus();
    topo.nodes.push_back(std::move(node));
  }
  const std::string bus_id = cuda_device_pci_bus_id(0);
  if (!bus_id.empty()) topo.gpu_node = pci_device_node(topo, bus_id);
  return topo;
}

const NumaNode* Topology::node(int os_index) const {
  for (const NumaNode& n : nodes)
    if (n.os_index == os_index) return &n;
  return nullptr;
}

std::string Topology::describe() const {
  std::string s = std::to_string(nodes.size()) + (nodes.size() == 1 ? " NUMA node" : " NUMA nodes");
  for (const NumaNode& n : nodes) {
    s += "; node " + std::to_string(n.os_index) + ": " + std::to_string(n.cpus.size()) + " cpus (" +
         format_cpulist(n.cpus) + "), " + format_bytes(n.local_memory_bytes) + " reported local";
  }
  s += "; GPU 0 nearest node: " + (gpu_node >= 0 ? std::to_string(gpu_node) : std::string("none"));
  s += "; host RAM available: " + format_bytes(host_memory_available_bytes()) + " (MemAvailable)";
  return s;
}

std::optional<uint64_t> parse_mem_available(const std::string& meminfo) {
  std::istringstream in(meminfo);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("MemAvailable:", 0) != 0) continue;
    unsigned long long kib = 0;
    char unit[8] = {};
    if (std::sscanf(line.c_str() + 13, "%llu %7s", &kib, unit) != 2) return std::nullopt;
    if (std::string(unit) != "kB") return std::nullopt;
    if (kib > (~0ull >> 10)) return std::nullopt;
    return static_cast<uint64_t>(kib) << 10;  // the kernel's "kB" is KiB
  }
  return std::nullopt;
}

uint64_t host_memory_available_bytes() {
  if (std::optional<std::string> text = read_small_file("/proc/meminfo"))
    if (std::optional<uint64_t> v = parse_mem_available(*text)) return *v;
  const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
}

std::optional<std::vector<int>> parse_cpulist(const std::string& text) {
  std::vector<int> cpus;
  std::istringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) {
    part = trim(part);
    if (part.empty()) return std::nullopt;
    int a = 0, b = 0, used = 0;
    const int got = std::sscanf(part.c_str(), "%d%n-%d%n", &a, &used, &b, &used);
    if (got < 1 || used != static_cast<int>(part.size())) return std::nullopt;
    if (got == 1) b = a;
    if (a < 0 || b < a) return std::nullopt;
    for (int c = a; c <= b; ++c) cpus.push_back(c);
  }
  if (cpus.empty()) return std::nullopt;
  return cpus;
}

std::string format_cpulist(const std::vector<int>& unsorted) {
  std::vector<int> cpus = unsorted;
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  std::string s;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!s.empty()) s += ",";
    s += std::to_string(cpus[i]);
    if (j > i) {
      s += '-';
      s += std::to_string(cpus[j]);
    }
    i = j + 1;
  }
  return s.empty() ? "none" : s;
}

std::string format_bytes(uint64_t bytes) {
  static const char* const kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double v = static_cast<double>(bytes) / 1024.0;
  int u = 0;
  while (v >= 1024.0 && u < 5) v /= 1024.0, ++u;
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f %s", v, kUnits[u]);
  return buf;
}

}  // namespace ramstream::memory
