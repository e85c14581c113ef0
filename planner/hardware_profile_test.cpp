// Hardware profiles: the YAML layout (good files, every error naming file:line and key), the
// round trip, the bundled profiles, and the probe with its cache.
#include "planner/hardware_profile.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

namespace ramstream::planner {
namespace {

const char* kGood = R"(name: test-box
measured: true
notes: "made by hand"
cpu:
  model: Test CPU
  cores: 4
  threads: 8
  numa_nodes: 1
  isa: avx2 fma
  ram_total_gib: 32
  ram_available_gib: 30
  read_gbps: 40
  copy_gbps: 15
  read_gbps_1t: 12
  gemm_fp32_gflops: 300
  gemm_bf16_gflops: 600
  idle_w: 6
  max_w: 20
  op_overhead_us: 4
  gemm_fp32_rows_gflops: [[1, 10], [8, 50], [64, 250]]
gpu:
  name: Test GPU
  memory_gib: 24
  h2d_gbps: 25
  hbm_gbps: 900
  gemm_bf16_gflops: 150000
  idle_w: 30
  max_w: 350
)";

TEST(HardwareProfile, ParsesEveryFieldInItsUnit) {
  Result<HardwareProfile> r = parse_hardware_profile(kGood, "box.yaml");
  ASSERT_TRUE(r.ok()) << r.error().message;
  const HardwareProfile& p = r.value();
  EXPECT_EQ(p.name, "test-box");
  EXPECT_TRUE(p.measured);
  EXPECT_EQ(p.cpu.model, "Test CPU");
  EXPECT_EQ(p.cpu.cores, 4);
  EXPECT_EQ(p.cpu.threads, 8);
  EXPECT_DOUBLE_EQ(p.cpu.ram_available_bytes, 30.0 * (1 << 30));
  EXPECT_DOUBLE_EQ(p.cpu.read_bytes_per_s, 40e9);
  EXPECT_DOUBLE_EQ(p.cpu.gemm_bf16_flops, 600e9);
  EXPECT_DOUBLE_EQ(p.cpu.op_overhead_s, 4e-6);
  ASSERT_EQ(p.cpu.gemm_fp32_rows.size(), 3u);
  EXPECT_DOUBLE_EQ(p.cpu.gemm_fp32_rows[1].first, 8);
  EXPECT_DOUBLE_EQ(p.cpu.gemm_fp32_rows[1].second, 50e9);
  EXPECT_TRUE(p.gpu.present);
  EXPECT_DOUBLE_EQ(p.gpu.h2d_bytes_per_s, 25e9);
  EXPECT_DOUBLE_EQ(p.gpu.d2h_bytes_per_s, 25e9);  // defaults to H2D's
  EXPECT_DOUBLE_EQ(p.gpu.memory_bytes, 24.0 * (1 << 30));
  EXPECT_EQ(p.source, "box.yaml");
}

TEST(HardwareProfile, RoundTripsThroughYaml) {
  const HardwareProfile a = parse_hardware_profile(kGood, "a.yaml").value();
  Result<HardwareProfile> b = parse_hardware_profile(hardware_profile_to_yaml(a), "b.yaml");
  ASSERT_TRUE(b.ok()) << b.error().message;
  EXPECT_EQ(b.value().name, a.name);
  EXPECT_EQ(b.value().notes, a.notes);
  EXPECT_EQ(b.value().cpu.isa, a.cpu.isa);
  EXPECT_NEAR(b.value().cpu.read_bytes_per_s, a.cpu.read_bytes_per_s,
              1e-5 * a.cpu.read_bytes_per_s);
  EXPECT_NEAR(b.value().cpu.idle_w, a.cpu.idle_w, 1e-9);
  EXPECT_EQ(b.value().cpu.gemm_fp32_rows, a.cpu.gemm_fp32_rows);
  EXPECT_NEAR(b.value().gpu.gemm_bf16_flops, a.gpu.gemm_bf16_flops, 1e-5 * a.gpu.gemm_bf16_flops);
}

std::string error_of(const std::string& text) {
  Result<HardwareProfile> r = parse_hardware_profile(text, "bad.yaml");
  return r.ok() ? std::string("(no error)") : r.error().message;
}

std::string replaced(std::string text, const std::string& from, const std::string& to) {
  text.replace(text.find(from), from.size(), to);
  return text;
}

TEST(HardwareProfile, ErrorsNameTheFileLineAndKey) {
  std::string m = error_of(replaced(kGood, "  read_gbps: 40", "  raed_gbps: 40"));
  EXPECT_NE(m.find("bad.yaml:12: cpu.raed_gbps: unknown key (did you mean cpu.read_gbps?)"),
            std::string::npos)
      << m;
  m = error_of(replaced(kGood, "  copy_gbps: 15", "  copy_gbps: -15"));
  EXPECT_NE(m.find("bad.yaml:13: cpu.copy_gbps: -15 is not a non-negative number"),
            std::string::npos)
      << m;
  m = error_of(replaced(kGood, "  copy_gbps: 15", "  copy_gbps: fast"));
  EXPECT_NE(m.find("bad.yaml:13: cpu.copy_gbps: 'fast' is not a number"), std::string::npos) << m;
  m = error_of(replaced(kGood, "  cores: 4", "  cores: 2.5"));
  EXPECT_NE(m.find("cpu.cores: 2.5 is not a whole number"), std::string::npos) << m;
  m = error_of(replaced(kGood, "name: test-box\n", ""));
  EXPECT_NE(m.find("bad.yaml: name is missing"), std::string::npos) << m;
  m = error_of(replaced(kGood, "  gemm_fp32_gflops: 300\n", ""));
  EXPECT_NE(m.find("cpu.gemm_fp32_gflops is missing"), std::string::npos) << m;
  m = error_of(replaced(kGood, "  h2d_gbps: 25\n", ""));
  EXPECT_NE(m.find("gpu.h2d_gbps is missing"), std::string::npos) << m;
  m = error_of(replaced(kGood, "[[1, 10], [8, 50], [64, 250]]", "[[8, 50], [1, 10]]"));
  EXPECT_NE(
      m.find("cpu.gemm_fp32_rows_gflops: expected [[rows, GFLOP/s], ...] with rows ascending"),
      std::string::npos)
      << m;
  m = error_of("name: x\ncpu: [1, 2\n");
  EXPECT_NE(m.find("bad.yaml:"), std::string::npos) << m;
  EXPECT_NE(m.find("invalid YAML"), std::string::npos) << m;
  EXPECT_NE(error_of("- a\n- b\n").find("expected a mapping"), std::string::npos);
  m = error_of(replaced(kGood, "measured: true", "measured: maybe"));
  EXPECT_NE(m.find("bad.yaml:2: measured: expected true or false"), std::string::npos) << m;
}

TEST(HardwareProfile, BundledProfilesLoadAndAreSane) {
  ASSERT_GE(bundled_hardware_profiles().size(), 2u);
  for (const BundledProfile& b : bundled_hardware_profiles()) {
    Result<HardwareProfile> p = load_hardware_profile(b.name);
    ASSERT_TRUE(p.ok()) << b.name << ": " << p.error().message;
    EXPECT_EQ(p.value().name, b.name);
    EXPECT_GT(p.value().cpu.read_bytes_per_s, 1e9);
    EXPECT_GT(p.value().cpu.gemm_fp32_flops, 1e9);
    EXPECT_GT(p.value().cpu.ram_available_bytes, 1e9);
    EXPECT_GT(p.value().cpu.max_w, p.value().cpu.idle_w);
    if (p.value().gpu.present) {
      EXPECT_GT(p.value().gpu.gemm_bf16_flops, 1e12);
    }
  }
  const HardwareProfile h200 = load_hardware_profile("h200-16core-128g").value();
  EXPECT_FALSE(h200.measured);
  EXPECT_TRUE(h200.gpu.present);
  EXPECT_EQ(h200.cpu.cores, 16);
}

TEST(HardwareProfile, MissingFilesAndFoldersAreNamed) {
  Result<HardwareProfile> r = load_hardware_profile("/nonexistent/box.yaml");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("/nonexistent/box.yaml: no such file"), std::string::npos);
  EXPECT_NE(r.error().message.find("h200-16core-128g"), std::string::npos);  // lists bundled
  r = load_hardware_profile("/tmp");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("a folder"), std::string::npos);
}

TEST(HardwareProfile, TextParsingOfTheProbe) {
  EXPECT_EQ(detail::isa_flags("fpu sse avx2 avx512f fma avx512_bf16 amx_tile xyz"),
            "avx2 fma avx512f avx512_bf16 amx_tile");
  EXPECT_EQ(detail::isa_flags("fpu sse"), "");
  EXPECT_EQ(detail::meminfo_kib("MemTotal:       24000000 kB\nMemFree: 5 kB\n", "MemTotal"),
            24000000u);
  EXPECT_EQ(detail::meminfo_kib("MemFree: 5 kB\n", "MemTotal"), 0u);
}

TEST(HardwareProfile, ProbeMeasuresAndCachesPerMachine) {
  const std::string dir = ::testing::TempDir() + "hwprobe-" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  ProbeOptions o;
  o.cache_dir = dir;
  Result<HardwareProfile> a = probe_hardware(o);
  ASSERT_TRUE(a.ok()) << a.error().message;
  const HardwareProfile& p = a.value();
  EXPECT_TRUE(p.measured);
  EXPECT_GE(p.cpu.cores, 1);
  EXPECT_GE(p.cpu.threads, p.cpu.cores);
  EXPECT_GT(p.cpu.read_bytes_per_s, 0);
  EXPECT_GT(p.cpu.copy_bytes_per_s, 0);
  EXPECT_GT(p.cpu.read_bytes_per_s_1t, 0);
  EXPECT_GT(p.cpu.gemm_fp32_flops, 0);
  EXPECT_EQ(p.cpu.gemm_fp32_rows.size(), 8u);
  EXPECT_GT(p.cpu.block_gemm_fp32_flops, 0);
  EXPECT_GT(p.cpu.attention_fp32_flops, 0);
  EXPECT_GT(p.cpu.ram_available_bytes, 0);
  EXPECT_NE(p.notes.find("power modelled"), std::string::npos);
  EXPECT_NE(p.source.find("saved to " + dir), std::string::npos) << p.source;
  Result<HardwareProfile> b = probe_hardware(o);
  ASSERT_TRUE(b.ok());
  EXPECT_NE(b.value().source.find("cached in " + dir), std::string::npos) << b.value().source;
  EXPECT_NEAR(b.value().cpu.read_bytes_per_s, p.cpu.read_bytes_per_s,
              1e-5 * p.cpu.read_bytes_per_s);
  o.refresh = true;
  Result<HardwareProfile> c = probe_hardware(o);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(c.value().source.find("saved to"), std::string::npos);
  // A damaged cache file is probed again, not an error.
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().filename().string().rfind("hardware-", 0) == 0) {
      std::ifstream in(e.path());
      std::string key_line;
      std::getline(in, key_line);
      in.close();
      std::ofstream(e.path()) << key_line << "\nname: [broken\n";
    }
  }
  o.refresh = false;
  Result<HardwareProfile> d = probe_hardware(o);
  ASSERT_TRUE(d.ok());
  EXPECT_NE(d.value().source.find("saved to"), std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST(HardwareProfile, DescribeSaysWhatItIs) {
  const HardwareProfile p = parse_hardware_profile(kGood, "a.yaml").value();
  const std::string d = describe_hardware(p);
  EXPECT_NE(d.find("test-box (measured): Test CPU, 4 cores avx2 fma"), std::string::npos) << d;
  EXPECT_NE(d.find("GPU Test GPU"), std::string::npos) << d;
}

}  // namespace
}  // namespace ramstream::planner
