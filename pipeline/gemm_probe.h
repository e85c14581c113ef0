// The measured dense-GEMM rate of a device, the peak that MFU divides by.
//
// probe_gemm_rate() times square products C = A B with ATen (at::mm_out into a preallocated C):
// a warm-up, then the best of a few repetitions. On the CPU the size (1024..4096) is picked from a
// small calibration product so that one probe takes ~0.3 s whatever the machine (the CPU differs
// between machines of one kind, and bf16 may run 50x slower than fp32 there: DESIGN.md section
// 7); on CUDA it is 8192. The figure is what ATen's GEMM reaches, not a datasheet number, so MFU
// can reach but not pass 100% on work that is all GEMM.
//
// cached_gemm_rate() keeps one result per machine and dtype in
// ${RAMSTREAM_CACHE:-$HOME/.cache/ramstream}/probe/gemm-<device>-<dtype>-<key hash>.json and
// probes again when the machine key (CPU model, online and allowed CPUs, ATen threads, BLAS
// library, torch version; or the CUDA device name and torch version) differs or the file is
// unreadable or malformed. Cache problems are never fatal: a failed write is one warning.
// A CPU probe during which other processes (or the hypervisor: steal time) used more than
// kBusyElsewhereLimit of the machine is marked contended: it is used, and the next call probes
// again and keeps the higher figure until an uncontended probe replaces it. (On a 2-core VM one
// compile job halves the measured rate, which would otherwise stay cached and double MFU.)
//
//   Result<GemmRate> r = pipeline::cached_gemm_rate(at::Device(at::kCPU), at::kFloat);
//   if (r.ok()) std::printf("%s\n", r.value().describe().c_str());
//   // fp32 GEMM peak 131.2 GFLOP/s (probe 1536^3, best of 4; saved to ~/.cache/ramstream/...)
#pragma once

#include <cstdint>
#include <string>

#include <ATen/ATen.h>

#include "util/result.h"

namespace ramstream::pipeline {

struct GemmProbeOptions {
  int64_t size = 0;       // n of the n x n x n product; 0 picks (CPU: 1024..4096, CUDA: 8192)
  int reps = 0;           // timed repetitions; 0 picks (CPU: to fit budget_s, 1..5; CUDA: 5 x 4)
  double budget_s = 0.3;  // CPU: target time of the timed repetitions when size/reps are picked
};

// Share of the machine's CPU time used by others during a probe above which it is contended.
constexpr double kBusyElsewhereLimit = 0.15;

struct GemmRate {
  double flops_per_s = 0;  // 2 n^3 / best repetition
  at::ScalarType dtype = at::kFloat;
  std::string device;  // "cpu", "cuda:0"
  int64_t size = 0;    // n
  int reps = 0;        // timed repetitions; the fastest counts
  double best_s = 0;   // seconds of one product in the fastest repetition
  // CPU: share (0..1) of all CPUs' time that other processes and steal took during the probe,
  // from /proc/stat minus this process's own CPU time; 0 on CUDA or when unknown.
  double busy_elsewhere = 0;
  bool contended() const { return busy_elsewhere > kBusyElsewhereLimit; }
  bool from_cache = false;
  std::string cache_path;  // the file read or written; empty when the cache was not used

  // "fp32 GEMM peak 131.2 GFLOP/s (probe 1536^3, best of 4; saved to ~/.cache/...)", or
  // "(probe 1536^3, cached in ~/.cache/...)" when read back; says so when contended.
  std::string describe() const;
};

// Errors (an unsupported dtype on that device, no such device) name the dtype and the device.
Result<GemmRate> probe_gemm_rate(at::Device device, at::ScalarType dtype,
                                 const GemmProbeOptions& opts = {});

struct GemmCacheOptions {
  std::string cache_dir;    // "" = default_probe_cache_dir()
  std::string machine_key;  // "" = gemm_machine_key(device)
  GemmProbeOptions probe;   // used when probing
  bool refresh = false;     // probe (and rewrite the file) even when a valid entry exists
  // busy_elsewhere above which an entry or a probe counts as contended (tests: 1 = never, -1 =
  // always).
  double busy_limit = kBusyElsewhereLimit;
};

// The probe's result from the cache when the key matches, else a fresh probe written there.
Result<GemmRate> cached_gemm_rate(at::Device device, at::ScalarType dtype,
                                  const GemmCacheOptions& opts = {});

// The CPU compute dtype for `model.compute: auto`: bf16 (bf16 GEMMs with fp32 accumulation, fp32
// master weights and optimizer) where the probed bf16 GEMM rate is at least kBf16Advantage times
// the fp32 rate (AMX or AVX512-BF16 through oneDNN: 2-3x), fp32 elsewhere (AVX2-only CPUs run
// bf16 GEMMs ~25x slower than fp32). The margin covers what bf16 adds around the GEMMs (the
// weight-grad widening, conversions) and its rounding: a bf16 step has to win clearly to be
// chosen. A failed probe picks fp32 and says why.
//
//   ComputeChoice c = choose_cpu_compute(cached_gemm_rate(cpu, at::kFloat),
//                                        cached_gemm_rate(cpu, at::kBFloat16));
//   // c.dtype == at::kBFloat16, c.reason == "bf16 GEMM 424.0 GFLOP/s is 1.99x fp32's 213.4"
constexpr double kBf16Advantage = 1.5;
struct ComputeChoice {
  at::ScalarType dtype = at::kFloat;
  std::string reason;  // one line for the start-up table
};
ComputeChoice choose_cpu_compute(const Result<GemmRate>& fp32, const Result<GemmRate>& bf16);

// What the rate depends on, as one line (see the top of this file).
std::string gemm_machine_key(at::Device device);
// ${RAMSTREAM_CACHE:-$HOME/.cache/ramstream}/probe; "" when neither variable is set.
std::string default_probe_cache_dir();
// The cache file for a key: <dir>/gemm-<cpu|cuda>-<dtype>-<16 hex digits of the key's hash>.json.
std::string gemm_cache_path(const std::string& dir, const std::string& machine_key,
                            at::Device device, at::ScalarType dtype);
// "fp32", "bf16", "fp16", "fp64", else c10's name.
std::string dtype_short_name(at::ScalarType dtype);

}  // namespace ramstream::pipeline
