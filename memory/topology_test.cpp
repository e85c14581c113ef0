#include "memory/topology.h"

#include <algorithm>

#include <gtest/gtest.h>

#include "memory/pin_backend.h"

namespace ramstream::memory {
namespace {

TEST(Topology, ProbeFindsNodesWithCpus) {
  const Topology topo = Topology::probe();
  ASSERT_FALSE(topo.nodes.empty());
  size_t cpus = 0;
  for (const NumaNode& n : topo.nodes) {
    EXPECT_GE(n.os_index, 0);
    EXPECT_EQ(topo.node(n.os_index), &n);
    cpus += n.cpus.size();
  }
  EXPECT_GT(cpus, 0u);
  EXPECT_EQ(topo.node(100000), nullptr);
  if (cuda_device_pci_bus_id(0).empty()) {
    EXPECT_EQ(topo.gpu_node, -1);
  } else if (topo.nodes.size() == 1) {
    EXPECT_EQ(topo.gpu_node, topo.nodes.front().os_index);
  }
}

TEST(Topology, CoresPartitionTheNodeCpus) {
  for (const NumaNode& n : Topology::probe().nodes) {
    if (n.cores.empty()) continue;  // hwloc reported no cores
    std::vector<int> flat;
    for (const std::vector<int>& core : n.cores) {
      EXPECT_FALSE(core.empty());
      flat.insert(flat.end(), core.begin(), core.end());
    }
    std::vector<int> cpus = n.cpus;
    std::sort(flat.begin(), flat.end());
    std::sort(cpus.begin(), cpus.end());
    EXPECT_EQ(flat, cpus) << "node " << n.os_index;
  }
}

TEST(Topology, FormatCpulist) {
  EXPECT_EQ(format_cpulist({0, 1, 2, 3, 8, 10, 11}), "0-3,8,10-11");
  EXPECT_EQ(format_cpulist({11, 10, 8, 3, 2, 1, 0, 3}), "0-3,8,10-11");  // sorted, deduplicated
  EXPECT_EQ(format_cpulist({5}), "5");
  EXPECT_EQ(format_cpulist({}), "none");
  EXPECT_EQ(parse_cpulist(format_cpulist({0, 2, 3, 4, 9})), (std::vector<int>{0, 2, 3, 4, 9}));
}

TEST(Topology, DescribeNamesNodesAndCapacitySource) {
  const std::string s = Topology::probe().describe();
  EXPECT_NE(s.find("node 0"), std::string::npos) << s;
  EXPECT_NE(s.find("GPU 0 nearest node"), std::string::npos) << s;
  EXPECT_NE(s.find("(MemAvailable)"), std::string::npos) << s;
}

TEST(Topology, AvailableMemoryIsPositive) {
  EXPECT_GT(host_memory_available_bytes(), 0u);
}

TEST(Topology, ParseMemAvailable) {
  const std::string meminfo =
      "MemTotal:       24684096 kB\n"
      "MemFree:         1024000 kB\n"
      "MemAvailable:   24206232 kB\n"
      "Buffers:          123456 kB\n";
  ASSERT_TRUE(parse_mem_available(meminfo).has_value());
  EXPECT_EQ(*parse_mem_available(meminfo), 24206232ull * 1024);
  EXPECT_FALSE(parse_mem_available("MemTotal: 1 kB\nMemFree: 2 kB\n").has_value());
  EXPECT_FALSE(parse_mem_available("MemAvailable: lots kB\n").has_value());
  EXPECT_FALSE(parse_mem_available("MemAvailable: 12 MB\n").has_value());
  EXPECT_FALSE(parse_mem_available("").has_value());
}

TEST(Topology, ParseCpulist) {
  EXPECT_EQ(parse_cpulist("0-3,8,10-11"), (std::vector<int>{0, 1, 2, 3, 8, 10, 11}));
  EXPECT_EQ(parse_cpulist("5"), (std::vector<int>{5}));
  EXPECT_EQ(parse_cpulist(" 0-1 "), (std::vector<int>{0, 1}));
  EXPECT_FALSE(parse_cpulist("").has_value());
  EXPECT_FALSE(parse_cpulist("3-1").has_value());
  EXPECT_FALSE(parse_cpulist("1,,2").has_value());
  EXPECT_FALSE(parse_cpulist("1-").has_value());
  EXPECT_FALSE(parse_cpulist("a").has_value());
}

TEST(Topology, FormatBytes) {
  EXPECT_EQ(format_bytes(0), "0 B");
  EXPECT_EQ(format_bytes(1023), "1023 B");
  EXPECT_EQ(format_bytes(1024), "1.0 KiB");
  EXPECT_EQ(format_bytes(3ull << 19), "1.5 MiB");
  EXPECT_EQ(format_bytes(static_cast<uint64_t>(18.3 * (1ull << 30))), "18.3 GiB");
  EXPECT_EQ(format_bytes(2ull << 40), "2.0 TiB");
}

}  // namespace
}  // namespace ramstream::memory
