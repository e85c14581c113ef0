#include "pipeline/gemm_probe.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "memory/log.h"

namespace ramstream::pipeline {
namespace {

namespace fs = std::filesystem;

GemmProbeOptions small() {
  GemmProbeOptions o;
  o.size = 128;
  o.reps = 2;
  return o;
}

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("gemm_probe_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::remove_all(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string str() const { return path_.string(); }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

// Collects memory::log_warning() messages for the scope.
class Warnings {
 public:
  Warnings() {
    memory::set_warning_sink_for_testing([this](const std::string& m) { seen.push_back(m); });
  }
  ~Warnings() { memory::set_warning_sink_for_testing({}); }
  std::vector<std::string> seen;
};

TEST(GemmProbe, CpuFp32RateIsPositiveAndFinite) {
  Result<GemmRate> r = probe_gemm_rate(at::Device(at::kCPU), at::kFloat, small());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE(std::isfinite(r.value().flops_per_s));
  EXPECT_GT(r.value().flops_per_s, 0);
  EXPECT_EQ(r.value().size, 128);
  EXPECT_EQ(r.value().reps, 2);
  EXPECT_GT(r.value().best_s, 0);
  EXPECT_EQ(r.value().device, "cpu");
  EXPECT_FALSE(r.value().from_cache);
  const std::string d = r.value().describe();
  EXPECT_EQ(d.rfind("fp32 GEMM peak ", 0), 0u) << d;
  EXPECT_NE(d.find("FLOP/s (probe 128^3, best of 2; not cached"), std::string::npos) << d;
}

TEST(GemmProbe, PicksASizeWhenAskedTo) {
  GemmProbeOptions o;
  o.budget_s = 0.01;  // the smallest size, few repetitions
  Result<GemmRate> r = probe_gemm_rate(at::Device(at::kCPU), at::kFloat, o);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_GE(r.value().size, 1024);
  EXPECT_LE(r.value().size, 4096);
  EXPECT_GE(r.value().reps, 1);
  EXPECT_LE(r.value().reps, 5);
  EXPECT_GT(r.value().flops_per_s, 0);
}

TEST(GemmProbe, ErrorsNameDtypeAndDevice) {
  // Integer matmul is not a GEMM ATen runs on the CPU ("addmm_impl_cpu_" not implemented for
  // Bool); either way the result must be an error or a valid rate, never a crash.
  Result<GemmRate> r = probe_gemm_rate(at::Device(at::kCPU), at::kBool, small());
  if (!r.ok()) {
    EXPECT_NE(r.error().message.find("GEMM probe (Bool on cpu)"), std::string::npos)
        << r.error().message;
  }
}

TEST(GemmProbe, MachineKeyNamesWhatTheRateDependsOn) {
  const std::string key = gemm_machine_key(at::Device(at::kCPU));
  EXPECT_EQ(key.rfind("cpu: ", 0), 0u) << key;
  EXPECT_NE(key.find("cpus online"), std::string::npos) << key;
  EXPECT_NE(key.find("ATen threads"), std::string::npos) << key;
  EXPECT_NE(key.find("; torch "), std::string::npos) << key;
  EXPECT_EQ(key, gemm_machine_key(at::Device(at::kCPU)));  // stable
  EXPECT_NE(gemm_cache_path("/c", key, at::Device(at::kCPU), at::kFloat),
            gemm_cache_path("/c", key + "x", at::Device(at::kCPU), at::kFloat));
  EXPECT_NE(gemm_cache_path("/c", key, at::Device(at::kCPU), at::kFloat),
            gemm_cache_path("/c", key, at::Device(at::kCPU), at::kBFloat16));
  EXPECT_EQ(
      gemm_cache_path("/c", key, at::Device(at::kCPU), at::kBFloat16).rfind("/c/gemm-cpu-bf16-", 0),
      0u);
}

TEST(GemmProbe, DefaultCacheDirFollowsEnvironment) {
  const char* old = std::getenv("RAMSTREAM_CACHE");
  const std::string saved = old ? old : "";
  setenv("RAMSTREAM_CACHE", "/tmp/rs-cache", 1);
  EXPECT_EQ(default_probe_cache_dir(), "/tmp/rs-cache/probe");
  unsetenv("RAMSTREAM_CACHE");
  if (const char* home = std::getenv("HOME"); home && *home) {
    EXPECT_EQ(default_probe_cache_dir(), std::string(home) + "/.cache/ramstream/probe");
  }
  if (old) setenv("RAMSTREAM_CACHE", saved.c_str(), 1);
}

TEST(GemmProbeCache, RoundTrips) {
  TempDir dir;
  GemmCacheOptions o;
  o.cache_dir = dir.str() + "/probe";  // created on first write
  o.probe = small();
  o.busy_limit = 1;  // however loaded the machine, an entry is final
  Warnings w;
  Result<GemmRate> first = cached_gemm_rate(at::Device(at::kCPU), at::kFloat, o);
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_FALSE(first.value().from_cache);
  const std::string path = first.value().cache_path;
  EXPECT_EQ(path, gemm_cache_path(o.cache_dir, gemm_machine_key(at::Device(at::kCPU)),
                                  at::Device(at::kCPU), at::kFloat));
  ASSERT_TRUE(fs::exists(path));
  EXPECT_NE(first.value().describe().find("saved to "), std::string::npos);

  Result<GemmRate> second = cached_gemm_rate(at::Device(at::kCPU), at::kFloat, o);
  ASSERT_TRUE(second.ok()) << second.error().message;
  EXPECT_TRUE(second.value().from_cache);
  EXPECT_EQ(second.value().cache_path, path);
  EXPECT_DOUBLE_EQ(second.value().flops_per_s, first.value().flops_per_s);
  EXPECT_EQ(second.value().size, first.value().size);
  EXPECT_EQ(second.value().reps, first.value().reps);
  EXPECT_DOUBLE_EQ(second.value().best_s, first.value().best_s);
  EXPECT_NE(second.value().describe().find("cached in "), std::string::npos);
  EXPECT_TRUE(w.seen.empty());

  // Another dtype and another machine key are other entries: probed, not read.
  Result<GemmRate> bf16 = cached_gemm_rate(at::Device(at::kCPU), at::kBFloat16, o);
  ASSERT_TRUE(bf16.ok()) << bf16.error().message;
  EXPECT_FALSE(bf16.value().from_cache);
  EXPECT_NE(bf16.value().cache_path, path);
  o.machine_key = "another machine";
  Result<GemmRate> other = cached_gemm_rate(at::Device(at::kCPU), at::kFloat, o);
  ASSERT_TRUE(other.ok()) << other.error().message;
  EXPECT_FALSE(other.value().from_cache);
  EXPECT_NE(other.value().cache_path, path);

  // refresh probes again and rewrites the entry.
  o.machine_key.clear();
  o.refresh = true;
  Result<GemmRate> fresh = cached_gemm_rate(at::Device(at::kCPU), at::kFloat, o);
  ASSERT_TRUE(fresh.ok()) << fresh.error().message;
  EXPECT_FALSE(fresh.value().from_cache);
  EXPECT_EQ(fresh.value().cache_path, path);
  o.refresh = false;
  Result<GemmRate> reread = cached_gemm_rate(at::Device(at::kCPU), at::kFloat, o);
  ASSERT_TRUE(reread.ok()) << reread.error().message;
  EXPECT_TRUE(reread.value().from_cache);
  EXPECT_DOUBLE_EQ(reread.value().flops_per_s, fresh.value().flops_per_s);
}

TEST(GemmProbeCache, CorruptOrForeignFileIsReplaced) {
  TempDir dir;
  GemmCacheOptions o;
  o.cache_dir = dir.str();
  o.machine_key = "test key";
  o.probe = small();
  o.busy_limit = 1;
  const std::string path =
      gemm_cache_path(o.cache_dir, o.machine_key, at::Device(at::kCPU), at::kFloat);
  fs::create_directories(o.cache_dir);
  const std::vector<std::string> bad = {
      "{not json",
      "[1, 2]",
      R"({"format": 1, "key": "test key", "dtype": "fp32", "flops_per_s": -1, "size": 128,
          "reps": 2, "best_s": 0.1})",
      R"({"format": 1, "key": "test key", "dtype": "fp32", "flops_per_s": "fast", "size": 128,
          "reps": 2, "best_s": 0.1})",
      R"({"format": 1, "key": "other key", "dtype": "fp32", "flops_per_s": 1e9, "size": 128,
          "reps": 2, "best_s": 0.1})",
      R"({"format": 99, "key": "test key", "dtype": "fp32", "flops_per_s": 1e9, "size": 128,
          "reps": 2, "best_s": 0.1})",
      ""};
  for (const std::string& text : bad) {
    SCOPED_TRACE(text);
    std::ofstream(path, std::ios::trunc) << text;
    Warnings w;
    Result<GemmRate> r = cached_gemm_rate(at::Device(at::kCPU), at::kFloat, o);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_FALSE(r.value().from_cache);
    ASSERT_EQ(w.seen.size(), 1u);
    EXPECT_NE(w.seen[0].find(path), std::string::npos) << w.seen[0];
    EXPECT_NE(w.seen[0].find("probing again"), std::string::npos) << w.seen[0];
    // The file now holds the new probe and is read back.
    Result<GemmRate> again = cached_gemm_rate(at::Device(at::kCPU), at::kFloat, o);
    ASSERT_TRUE(again.ok()) << again.error().message;
    EXPECT_TRUE(again.value().from_cache);
    EXPECT_DOUBLE_EQ(again.value().flops_per_s, r.value().flops_per_s);
  }
  // A well-formed file written by hand is believed as it is.
  std::ofstream(path, std::ios::trunc) << R"({"format": 1, "key": "test key", "dtype": "fp32",
      "flops_per_s": 1.5e11, "size": 2048, "reps": 3, "best_s": 0.1145})";
  Result<GemmRate> r = cached_gemm_rate(at::Device(at::kCPU), at::kFloat, o);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r.value().from_cache);
  EXPECT_DOUBLE_EQ(r.value().flops_per_s, 1.5e11);
  EXPECT_EQ(r.value().describe().rfind("fp32 GEMM peak 150.0 GFLOP/s (probe 2048^3, cached in ", 0),
            0u)
      << r.value().describe();
}

TEST(GemmProbeCache, ContendedEntryIsAFloorToImproveOn) {
  TempDir dir;
  GemmCacheOptions o;
  o.cache_dir = dir.str();
  o.machine_key = "test key";
  o.probe = small();
  const std::string path =
      gemm_cache_path(o.cache_dir, o.machine_key, at::Device(at::kCPU), at::kFloat);
  fs::create_directories(o.cache_dir);
  auto write_entry = [&](double rate, double busy) {
    std::ofstream(path, std::ios::trunc)
        << nlohmann::json{{"format", 1},         {"key", "test key"},     {"dtype", "fp32"},
                          {"flops_per_s", rate}, {"size", 128},           {"reps", 2},
                          {"best_s", 0.1},       {"busy_elsewhere", busy}}
               .dump();
  };
  auto file_rate = [&] { return nlohmann::json::parse(std::ifstream(path))["flops_per_s"]; };
  Warnings w;
  // busy_limit -1: every probe counts as contended. A faster contended entry stays as it is.
  o.busy_limit = -1;
  write_entry(1e20, 0.5);
  Result<GemmRate> r = cached_gemm_rate(at::Device(at::kCPU), at::kFloat, o);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE(r.value().from_cache);
  EXPECT_DOUBLE_EQ(r.value().flops_per_s, 1e20);
  EXPECT_DOUBLE_EQ(file_rate().get<double>(), 1e20);
  // A slower contended entry gives way to the new (contended) probe.
  write_entry(1.0, 0.5);
  r = cached_gemm_rate(at::Device(at::kCPU), at::kFloat, o);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_FALSE(r.value().from_cache);
  EXPECT_GT(r.value().flops_per_s, 1.0);
  EXPECT_DOUBLE_EQ(file_rate().get<double>(), r.value().flops_per_s);
  EXPECT_TRUE(w.seen.empty());
  // Out of range is malformed.
  write_entry(1e9, 1.5);
  r = cached_gemm_rate(at::Device(at::kCPU), at::kFloat, o);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r.value().from_cache);
  ASSERT_EQ(w.seen.size(), 1u);
  EXPECT_NE(w.seen[0].find("'busy_elsewhere' is not a number in [0, 1]"), std::string::npos)
      << w.seen[0];
}

TEST(GemmProbe, DescribeSaysWhenTheMachineWasBusy) {
  GemmRate r;
  r.flops_per_s = 2.5e12;
  r.dtype = at::kBFloat16;
  r.size = 8192;
  r.reps = 5;
  EXPECT_EQ(r.describe(), "bf16 GEMM peak 2.5 TFLOP/s (probe 8192^3, best of 5; not cached)");
  r.busy_elsewhere = 0.45;
  EXPECT_TRUE(r.contended());
  EXPECT_EQ(r.describe(),
            "bf16 GEMM peak 2.5 TFLOP/s (probe 8192^3, best of 5; not cached; other processes "
            "used 45% of the CPUs meanwhile)");
}

TEST(GemmProbeCache, UnwritableCacheWarnsAndStillReturnsTheRate) {
  TempDir dir;
  fs::create_directories(dir.str());
  std::ofstream(dir.str() + "/file") << "x";
  GemmCacheOptions o;
  o.cache_dir = dir.str() + "/file/probe";  // under a regular file: cannot be created
  o.probe = small();
  Warnings w;
  Result<GemmRate> r = cached_gemm_rate(at::Device(at::kCPU), at::kFloat, o);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_GT(r.value().flops_per_s, 0);
  EXPECT_FALSE(r.value().from_cache);
  EXPECT_TRUE(r.value().cache_path.empty());
  ASSERT_EQ(w.seen.size(), 1u);
  EXPECT_NE(w.seen[0].find("GEMM probe cache not written"), std::string::npos) << w.seen[0];
  EXPECT_NE(r.value().describe().find("not cached"), std::string::npos);
}

GemmRate rate_of(double gflops, at::ScalarType dtype) {
  GemmRate r;
  r.flops_per_s = gflops * 1e9;
  r.dtype = dtype;
  r.device = "cpu";
  return r;
}

TEST(ChooseCpuCompute, Bf16OnlyWhenItsGemmIsClearlyFaster) {
  const ComputeChoice amx =
      choose_cpu_compute(rate_of(328, at::kFloat), rate_of(970, at::kBFloat16));
  EXPECT_EQ(amx.dtype, at::kBFloat16);
  EXPECT_EQ(amx.reason, "bf16: bf16 GEMM 970.0 GFLOP/s is 2.96x fp32's 328.0 (>= 1.5x)");
  const ComputeChoice avx2 =
      choose_cpu_compute(rate_of(130, at::kFloat), rate_of(5, at::kBFloat16));
  EXPECT_EQ(avx2.dtype, at::kFloat);
  EXPECT_EQ(avx2.reason, "fp32: bf16 GEMM 5.0 GFLOP/s is 0.04x fp32's 130.0 (< 1.5x)");
  // Faster, but not by the margin: fp32.
  EXPECT_EQ(choose_cpu_compute(rate_of(200, at::kFloat), rate_of(280, at::kBFloat16)).dtype,
            at::kFloat);
  EXPECT_EQ(choose_cpu_compute(rate_of(200, at::kFloat), rate_of(300, at::kBFloat16)).dtype,
            at::kBFloat16);
}

TEST(ChooseCpuCompute, AFailedProbeMeansFp32AndSaysWhy) {
  const ComputeChoice c =
      choose_cpu_compute(rate_of(200, at::kFloat), Error{"bf16 matmul failed on cpu"});
  EXPECT_EQ(c.dtype, at::kFloat);
  EXPECT_EQ(c.reason, "fp32: no GEMM rate to compare (bf16 matmul failed on cpu)");
}

}  // namespace
}  // namespace ramstream::pipeline
