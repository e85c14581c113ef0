// What the planner knows about a machine: the rates and capacities its cost model divides by.
// Either probed here (`--hardware auto`; cached per machine) or read from a YAML file (bundled
// profiles under planner/profiles/, or one a user wrote or saved from a probe).
//
//   Result<HardwareProfile> hw = probe_hardware({});          // or load_hardware_profile(path)
//   if (!hw.ok()) die(hw.error().message);
//   std::printf("%s", hardware_profile_to_yaml(hw.value()).c_str());
//   double t = flops / hw.value().cpu.gemm_flops(at::kBFloat16);
//
// Every figure says where it came from: `measured` ones by the probe (how, in `notes`), the rest
// (the power figures on machines where RAPL is unreadable, a GPU profile written from the
// datasheet) are modelled and the profile says so in `notes`, and the planner's output repeats it.
//
// YAML layout (every key optional except name; unknown keys are an error naming file:line):
//   name: epyc-2core-avx512            # free text
//   measured: true                     # false: datasheet/modelled figures
//   notes: "probe 2026-12-02 ..."      # how the figures were obtained
//   cpu:
//     model: AMD EPYC 9R14             # /proc/cpuinfo "model name"
//     cores: 2                         # physical cores this process may use
//     threads: 2                       # logical CPUs this process may use
//     numa_nodes: 1
//     isa: avx2 avx512f avx512_bf16    # the flags the kernels dispatch on
//     ram_total_gib: 23.4
//     ram_available_gib: 21.0          # MemAvailable at probe time
//     read_gbps: 30.1                  # all cores streaming reads, GB/s (1e9 B/s)
//     copy_gbps: 12.3                  # all cores memcpy, GB/s of bytes copied (not read+write)
//     read_gbps_1t: 15.0               # one thread streaming reads
//     gemm_fp32_gflops: 263            # ATen GEMM, square probe (pipeline/gemm_probe.h)
//     gemm_bf16_gflops: 507
//     idle_w: 10                       # package power idle / at full load, W
//     max_w: 35
//   gpu:                               # absent: no GPU
//     name: NVIDIA H200
//     memory_gib: 139.8
//     h2d_gbps: 53                     # pinned host -> device, GB/s
//     d2h_gbps: 53
//     hbm_gbps: 4000                   # device memory bandwidth
//     gemm_bf16_gflops: 700000
//     idle_w: 75
//     max_w: 700                       # enforced power limit
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "util/result.h"

namespace ramstream::planner {

struct CpuProfile {
  std::string model;
  int cores = 1;
  int threads = 1;
  int numa_nodes = 1;
  std::string isa;
  double ram_total_bytes = 0;
  double ram_available_bytes = 0;
  double read_bytes_per_s = 0;     // all cores
  double copy_bytes_per_s = 0;     // all cores, bytes copied
  double read_bytes_per_s_1t = 0;  // one thread
  double gemm_fp32_flops = 0;
  double gemm_bf16_flops = 0;
  double idle_w = 0;
  double max_w = 0;
  // A transformer block's work as the engine's kernels run it here, per compute dtype (0: not
  // measured; the cost model then uses 2 x copy_bytes_per_s and the GEMM peak): bytes/s of its
  // elementwise passes and FLOP/s of its causal attention (calibrate_block in
  // hardware_profile.cpp). cpu.elementwise_{fp32,bf16}_gbps and cpu.attention_{fp32,bf16}_gflops
  // in the file.
  double elementwise_fp32_bytes_per_s = 0, elementwise_bf16_bytes_per_s = 0;
  double attention_fp32_flops = 0, attention_bf16_flops = 0;
  // The FLOP/s a block's projections reach through the engine's linear ops (forward, input grad
  // and fp32 weight grad at 512 tokens); 0: not measured, the square GEMM rate applies.
  // cpu.block_gemm_{fp32,bf16}_gflops in the file.
  double block_gemm_fp32_flops = 0, block_gemm_bf16_flops = 0;
  // GEMM rate by rows for skinny products ([m, 1024] x [1024, 2048]^T, as a decode step's): the
  // (rows, FLOP/s) pairs measured, rows ascending; above the last the square-probe rate holds.
  // cpu.gemm_{fp32,bf16}_rows_gflops: [[1, 14.4], [2, 20.6], ...] in the file.
  std::vector<std::pair<double, double>> gemm_fp32_rows, gemm_bf16_rows;
  // Host time of one small ATen operation (dispatch, allocation, thread-pool wake-up): what an
  // operation costs beyond its roofline time. cpu.op_overhead_us in the file.
  double op_overhead_s = 10e-6;
};

struct GpuProfile {
  bool present = false;
  std::string name;
  double memory_bytes = 0;
  double h2d_bytes_per_s = 0;
  double d2h_bytes_per_s = 0;
  double hbm_bytes_per_s = 0;
  double gemm_bf16_flops = 0;
  double idle_w = 0;
  double max_w = 0;
  double launch_overhead_s = 6e-6;  // host cost of one kernel launch; gpu.launch_us in the file
};

struct HardwareProfile {
  std::string name;
  bool measured = false;
  std::string notes;
  std::string source;  // the file it was read from, "probe", or "probe (cached in PATH)"
  CpuProfile cpu;
  GpuProfile gpu;
};

// Errors name the source and line: YAML syntax, an unknown key (with the closest valid one), a
// value that is not a number or is negative, a missing `name`, zero rates where the model needs
// them (cpu.read_gbps, cpu.gemm_fp32_gflops; gpu.h2d_gbps and gpu.gemm_bf16_gflops when a gpu
// section is present).
Result<HardwareProfile> parse_hardware_profile(const std::string& yaml_text,
                                               const std::string& source);
// A file path or the name of a bundled profile (bundled_hardware_profiles()).
Result<HardwareProfile> load_hardware_profile(const std::string& file_or_name);
// The YAML above; parse_hardware_profile reads it back to the same figures.
std::string hardware_profile_to_yaml(const HardwareProfile& profile);

struct BundledProfile {
  std::string name;  // file name without .yaml
  std::string text;
};
const std::vector<BundledProfile>& bundled_hardware_profiles();

struct ProbeOptions {
  std::string
      cache_dir;  // "" = pipeline::default_probe_cache_dir(); the file is hardware-<key>.json
  bool refresh = false;   // probe again even when the cache matches this machine
  double budget_s = 0.3;  // per bandwidth measurement
};

// Measures this machine (CPU: /proc/cpuinfo, hwloc via memory::Topology, MemAvailable, streaming
// read and copy bandwidth with all allowed cores and with one, GEMM rates through
// pipeline::cached_gemm_rate; GPU when CUDA is compiled in and a device is present: NVML name,
// memory, power limit and idle power, pinned H2D/D2H bandwidth, bf16 GEMM rate). Power figures
// without a counter (RAPL unreadable) are modelled (see hardware_profile.cpp) and `notes` says so.
// The result is cached per machine key (as the GEMM probe's); RAM available is re-read every call.
Result<HardwareProfile> probe_hardware(const ProbeOptions& options);

// "auto" probes; anything else is load_hardware_profile.
Result<HardwareProfile> hardware_profile_for(const std::string& spec, const ProbeOptions& options);

// One line: "epyc-2core (measured): 2 cores AVX512_BF16, 21.0 GiB free, read 30 GB/s, fp32 263 /
// bf16 507 GFLOP/s; no GPU".
std::string describe_hardware(const HardwareProfile& profile);

// The probe's text parsing, for tests.
namespace detail {
// The ISA flags the kernels dispatch on, in a fixed order, from /proc/cpuinfo's "flags" value.
std::string isa_flags(const std::string& cpuinfo_flags);
// A /proc/meminfo field in KiB ("MemTotal"); 0 when absent.
uint64_t meminfo_kib(const std::string& meminfo, const std::string& field);
}  // namespace detail

}  // namespace ramstream::planner
