#include "pipeline/gemm_probe.h"

#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include "memory/log.h"
#include "util/text.h"
#include "util/torch_compat.h"

#ifdef RAMSTREAM_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#endif

namespace ramstream::pipeline {

namespace {

using Clock = std::chrono::steady_clock;
constexpr int kCacheFormat = 1;

void synchronize(at::Device device) {
#ifdef RAMSTREAM_WITH_CUDA
  if (device.is_cuda()) c10::cuda::getCurrentCUDAStream(device.index()).synchronize();
#else
  (void)device;
#endif
}

// Seconds of one product in the fastest of `reps` repetitions of `inner` back-to-back products.
double time_mm(at::Tensor& c, const at::Tensor& a, const at::Tensor& b, int reps, int inner,
               at::Device device) {
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r < reps; ++r) {
    synchronize(device);
    const Clock::time_point t0 = Clock::now();
    for (int i = 0; i < inner; ++i) at::mm_out(c, a, b);
    synchronize(device);
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count() / inner);
  }
  return std::max(best, 1e-9);
}

// N(0, 1) entries from a private generator: the global RNG state is left alone, and products of
// these stay far from fp16's range and from denormals.
at::Tensor operand(int64_t n, at::ScalarType dtype, at::Device device, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return at::randn({n, n}, gen, at::TensorOptions().dtype(at::kFloat)).to(device, dtype);
}

double flops_of(int64_t n) {
  return 2.0 * double(n) * double(n) * double(n);
}

std::string cpu_model_name() {
  std::istringstream in(read_small_file("/proc/cpuinfo").value_or(""));
  std::string line;
  while (std::getline(in, line)) {
    // x86: "model name"; some ARM kernels: "Hardware" / "CPU part" only.
    if (line.rfind("model name", 0) == 0 || line.rfind("Hardware", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return trim(line.substr(colon + 1));
    }
  }
  return "unknown CPU";
}

// The BLAS libraries mapped into this process (Debian's libtorch links the generic libblas.so.3,
// which update-alternatives points at the reference BLAS or OpenBLAS: 3 vs 130 GFLOP/s).
std::string blas_libraries() {
  std::istringstream in(read_small_file("/proc/self/maps").value_or(""));
  std::set<std::string> libs;
  std::string line;
  while (std::getline(in, line)) {
    const size_t slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string path = line.substr(slash);
    const std::string base = path.substr(path.rfind('/') + 1);
    if (base.find("blas") != std::string::npos || base.find("mkl") != std::string::npos)
      libs.insert(path);
  }
  std::string s;
  for (const std::string& l : libs) s += (s.empty() ? "" : ",") + l;
  return s.empty() ? "none mapped" : s;
}

// CPU seconds: every CPU's busy time from /proc/stat (user, nice, system, irq, softirq, steal),
// and this process's own (getrusage); nullopt when /proc/stat cannot be read.
struct CpuTimes {
  double machine_busy_s = 0, self_s = 0;
  Clock::time_point at;
};

std::optional<CpuTimes> cpu_times() {
  std::ifstream in("/proc/stat");
  std::string label;
  unsigned long long v[8] = {};  // user nice system idle iowait irq softirq steal
  if (!(in >> label) || label != "cpu") return std::nullopt;
  for (unsigned long long& x : v)
    if (!(in >> x)) return std::nullopt;
  const long tick = sysconf(_SC_CLK_TCK);
  struct rusage ru {};
  if (tick <= 0 || getrusage(RUSAGE_SELF, &ru) != 0) return std::nullopt;
  auto secs = [](const timeval& t) { return double(t.tv_sec) + double(t.tv_usec) * 1e-6; };
  CpuTimes t;
  t.machine_busy_s = double(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / double(tick);
  t.self_s = secs(ru.ru_utime) + secs(ru.ru_stime);
  t.at = Clock::now();
  return t;
}

// Share of all online CPUs' time between `a` and `b` that was not this process's.
double busy_elsewhere(const std::optional<CpuTimes>& a, const std::optional<CpuTimes>& b) {
  if (!a || !b) return 0;
  const double wall = std::chrono::duration<double>(b->at - a->at).count();
  const double cpus = double(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
  if (wall <= 0) return 0;
  const double others = (b->machine_busy_s - a->machine_busy_s) - (b->self_s - a->self_s);
  return std::clamp(others / (wall * cpus), 0.0, 1.0);
}

int allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  return sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 0;
}

std::string device_name(at::Device device) {
  return device.is_cuda() ? "cuda:" + std::to_string(std::max<int>(0, device.index())) : "cpu";
}

std::string home_relative(const std::string& path) {
  const char* home = std::getenv("HOME");
  if (!home || !*home) return path;
  const std::string h = home;
  if (path.size() > h.size() && path.compare(0, h.size(), h) == 0 && path[h.size()] == '/')
    return "~" + path.substr(h.size());
  return path;
}

std::string format_rate(double flops_per_s) {
  char buf[64];
  if (flops_per_s >= 1e12) {
    std::snprintf(buf, sizeof buf, "%.1f TFLOP/s", flops_per_s / 1e12);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f GFLOP/s", flops_per_s / 1e9);
  }
  return buf;
}

Result<GemmRate> read_cache(const std::string& path, const std::string& key, at::Device device,
                            at::ScalarType dtype) {
  std::ifstream in(path);
  if (!in) return Error{path + ": cannot be read"};
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Error{path + ": not a JSON object"};
  auto field = [&](const char* name) -> const nlohmann::json* {
    auto it = j.find(name);
    return it == j.end() ? nullptr : &*it;
  };
  const nlohmann::json* format = field("format");
  if (!format || !format->is_number_integer() || format->get<int>() != kCacheFormat)
    return Error{path + ": key 'format' is not " + std::to_string(kCacheFormat)};
  const nlohmann::json* k = field("key");
  if (!k || !k->is_string()) return Error{path + ": key 'key' missing or not a string"};
  if (k->get<std::string>() != key) return Error{path + ": written for another machine key"};
  const nlohmann::json* dt = field("dtype");
  if (!dt || !dt->is_string() || dt->get<std::string>() != dtype_short_name(dtype))
    return Error{path + ": key 'dtype' is not '" + dtype_short_name(dtype) + "'"};
  GemmRate r;
  r.dtype = dtype;
  r.device = device_name(device);
  const nlohmann::json* rate = field("flops_per_s");
  const nlohmann::json* size = field("size");
  const nlohmann::json* reps = field("reps");
  const nlohmann::json* best = field("best_s");
  if (!rate || !rate->is_number() || !size || !size->is_number_integer() || !reps ||
      !reps->is_number_integer() || !best || !best->is_number())
    return Error{path + ": keys 'flops_per_s', 'size', 'reps', 'best_s' missing or not numbers"};
  r.flops_per_s = rate->get<double>();
  r.size = size->get<int64_t>();
  r.reps = reps->get<int>();
  r.best_s = best->get<double>();
  if (!std::isfinite(r.flops_per_s) || r.flops_per_s <= 0 || r.size <= 0 || r.reps <= 0 ||
      !(r.best_s > 0))
    return Error{path + ": 'flops_per_s', 'size', 'reps' or 'best_s' out of range"};
  if (const nlohmann::json* busy = field("busy_elsewhere")) {
    if (!busy->is_number() || !(busy->get<double>() >= 0 && busy->get<double>() <= 1))
      return Error{path + ": 'busy_elsewhere' is not a number in [0, 1]"};
    r.busy_elsewhere = busy->get<double>();
  }
  r.from_cache = true;
  r.cache_path = path;
  return r;
}

Status write_cache(const std::string& path, const std::string& key, const GemmRate& r) {
  std::error_code ec;
  const std::filesystem::path p(path);
  std::filesystem::create_directories(p.parent_path(), ec);
  if (ec) return Error{p.parent_path().string() + ": cannot create: " + ec.message()};
  const nlohmann::json j = {{"format", kCacheFormat},
                            {"key", key},
                            {"device", r.device},
                            {"dtype", dtype_short_name(r.dtype)},
                            {"flops_per_s", r.flops_per_s},
                            {"size", r.size},
                            {"reps", r.reps},
                            {"best_s", r.best_s},
                            {"busy_elsewhere", r.busy_elsewhere}};
  // Written beside and renamed over: a reader never sees half a file.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) return Error{tmp + ": cannot create"};
    out << j.dump(2) << "\n";
    out.flush();
    if (!out) {
      std::filesystem::remove(tmp, ec);
      return Error{tmp + ": write failed"};
    }
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    return Error{path + ": cannot rename into place: " + ec.message()};
  }
  return Ok{};
}

}  // namespace

std::string dtype_short_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return "fp32";
    case at::kBFloat16:
      return "bf16";
    case at::kHalf:
      return "fp16";
    case at::kDouble:
      return "fp64";
    default:
      return c10::toString(dtype);
  }
}

std::string GemmRate::describe() const {
  std::string s = dtype_short_name(dtype) + " GEMM peak " + format_rate(flops_per_s) + " (";
  const std::string shape = std::to_string(size) + "^3";
  if (from_cache) {
    s += "probe " + shape + ", cached in " + home_relative(cache_path);
  } else {
    s += "probe " + shape + ", best of " + std::to_string(reps) + "; ";
    s += cache_path.empty() ? "not cached" : "saved to " + home_relative(cache_path);
  }
  if (contended()) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "; other processes used %.0f%% of the CPUs meanwhile",
                  100 * busy_elsewhere);
    s += buf;
  }
  return s + ")";
}

Result<GemmRate> probe_gemm_rate(at::Device device, at::ScalarType dtype,
                                 const GemmProbeOptions& opts) {
  if (device.is_cuda() && device.index() < 0) device = at::Device(at::kCUDA, 0);
  GemmRate r;
  r.dtype = dtype;
  r.device = device_name(device);
  const std::string what = "GEMM probe (" + dtype_short_name(dtype) + " on " + r.device + ")";
  try {
#ifdef RAMSTREAM_WITH_CUDA
    std::optional<c10::cuda::CUDAGuard> guard;
    if (device.is_cuda()) guard.emplace(device.index());
#else
    if (device.is_cuda()) return Error{what + ": this build has no CUDA"};
#endif
    const bool cuda = device.is_cuda();
    const std::optional<CpuTimes> before = cuda ? std::nullopt : cpu_times();
    int64_t n = opts.size;
    int reps = opts.reps;
    const int inner = cuda ? 4 : 1;  // CUDA: several launches per sync, so the sync is noise
    if (cuda) {
      if (n <= 0) n = 8192;
      if (reps <= 0) reps = 5;
    } else if (n <= 0 || reps <= 0) {
      // Calibrate on a small product (its first run also wakes the BLAS threads), then take the
      // largest size whose repetitions fit the budget.
      constexpr int64_t kCal = 512;
      at::Tensor a = operand(kCal, dtype, device, 1), b = operand(kCal, dtype, device, 2);
      at::Tensor c = at::empty({kCal, kCal}, a.options());
      at::mm_out(c, a, b);
      const double rate0 = flops_of(kCal) / time_mm(c, a, b, 1, 1, device);
      auto fit = [&](int64_t size) {
        return static_cast<int>(std::min(5.0, opts.budget_s * rate0 / flops_of(size)));
      };
      if (n <= 0) {
        n = 1024;
        for (int64_t cand : {4096, 3072, 2048, 1536}) {
          if (fit(cand) >= 3) {
            n = cand;
            break;
          }
        }
      }
      if (reps <= 0) reps = std::max(1, fit(n));
    }
    at::Tensor a = operand(n, dtype, device, 3), b = operand(n, dtype, device, 4);
    at::Tensor c = at::empty({n, n}, a.options());
    // Warm-up (cuBLAS handles and kernel selection; on the CPU the calibration already woke the
    // BLAS threads, so a product there is repeated only when it is cheap).
    const int warmup = cuda ? 3 : (opts.size > 0 || reps >= 2 ? 1 : 0);
    for (int i = 0; i < warmup; ++i) at::mm_out(c, a, b);
    synchronize(device);
    r.size = n;
    r.reps = reps;
    r.best_s = time_mm(c, a, b, reps, inner, device);
    r.flops_per_s = flops_of(n) / r.best_s;
    if (!cuda) r.busy_elsewhere = busy_elsewhere(before, cpu_times());
#ifdef RAMSTREAM_WITH_CUDA
    if (cuda) {
      a = b = c = at::Tensor();
      c10::cuda::CUDACachingAllocator::emptyCache();  // give the operands back to the driver
    }
#endif
  } catch (const c10::Error& e) {
    return Error{what + ": " + e.what_without_backtrace()};
  } catch (const std::exception& e) {
    return Error{what + ": " + e.what()};
  }
  if (!std::isfinite(r.flops_per_s) || r.flops_per_s <= 0)
    return Error{what + ": measured a rate of " + std::to_string(r.flops_per_s)};
  return r;
}

std::string gemm_machine_key(at::Device device) {
  std::string key;
  if (device.is_cuda()) {
    const int index = std::max<int>(0, device.index());
#ifdef RAMSTREAM_WITH_CUDA
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, index) == cudaSuccess) {
      key = std::string("cuda: ") + prop.name + ", sm_" + std::to_string(prop.major) +
            std::to_string(prop.minor) + ", " + std::to_string(prop.multiProcessorCount) +
            " SMs; CUDA runtime " + std::to_string(CUDART_VERSION);
    } else {
      (void)cudaGetLastError();
      key = "cuda: device " + std::to_string(index) + " (no properties)";
    }
#else
    key = "cuda: device " + std::to_string(index) + " (CUDA not compiled in)";
#endif
  } else {
    key = "cpu: " + cpu_model_name() + "; " + std::to_string(sysconf(_SC_NPROCESSORS_ONLN)) +
          " cpus online, " + std::to_string(allowed_cpus()) + " allowed; " +
          std::to_string(at::get_num_threads()) + " ATen threads; blas " + blas_libraries();
    for (const char* var : {"OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS",
                            "OPENBLAS_CORETYPE", "MKL_NUM_THREADS"}) {
      if (const char* v = std::getenv(var)) key += std::string("; ") + var + "=" + v;
    }
  }
  return key + "; torch " + TORCH_VERSION;
}

std::string default_probe_cache_dir() {
  const char* root = std::getenv("RAMSTREAM_CACHE");
  if (root && *root) return std::string(root) + "/probe";
  const char* home = std::getenv("HOME");
  if (home && *home) return std::string(home) + "/.cache/ramstream/probe";
  return {};
}

std::string gemm_cache_path(const std::string& dir, const std::string& machine_key,
                            at::Device device, at::ScalarType dtype) {
  return dir + "/gemm-" + (device.is_cuda() ? "cuda" : "cpu") + "-" + dtype_short_name(dtype) +
         "-" + fnv1a_hex(machine_key) + ".json";
}

Result<GemmRate> cached_gemm_rate(at::Device device, at::ScalarType dtype,
                                  const GemmCacheOptions& opts) {
  if (device.is_cuda() && device.index() < 0) device = at::Device(at::kCUDA, 0);
  const std::string dir = opts.cache_dir.empty() ? default_probe_cache_dir() : opts.cache_dir;
  const std::string key = opts.machine_key.empty() ? gemm_machine_key(device) : opts.machine_key;
  const std::string path = dir.empty() ? "" : gemm_cache_path(dir, key, device, dtype);
  // A valid uncontended entry is the answer; a contended one is a floor to improve on.
  std::optional<GemmRate> floor;
  std::error_code ec;
  if (!path.empty() && !opts.refresh && std::filesystem::exists(path, ec)) {
    Result<GemmRate> cached = read_cache(path, key, device, dtype);
    if (cached.ok() && !(cached.value().busy_elsewhere > opts.busy_limit)) return cached;
    if (cached.ok()) {
      floor = cached.value();
    } else {
      memory::log_warning("GEMM probe cache " + cached.error().message + "; probing again");
    }
  }
  Result<GemmRate> r = probe_gemm_rate(device, dtype, opts.probe);
  if (!r.ok()) {
    if (floor) return *floor;
    return r;
  }
  // Contended again and slower than before: keep the earlier figure (and its file).
  if (floor && r.value().busy_elsewhere > opts.busy_limit &&
      floor->flops_per_s >= r.value().flops_per_s)
    return *floor;
  if (path.empty()) {
    memory::log_warning("GEMM probe cache: neither RAMSTREAM_CACHE nor HOME is set; not cached");
    return r;
  }
  Status st = write_cache(path, key, r.value());
  if (!st.ok()) {
    memory::log_warning("GEMM probe cache not written (" + st.error().message +
                        "); the probe runs again next time");
    return r;
  }
  r.value().cache_path = path;
  return r;
}

ComputeChoice choose_cpu_compute(const Result<GemmRate>& fp32, const Result<GemmRate>& bf16) {
  ComputeChoice c;
  char line[200];
  if (!fp32.ok() || !bf16.ok()) {
    c.reason = "fp32: no GEMM rate to compare (" +
               (fp32.ok() ? bf16.error().message : fp32.error().message) + ")";
    return c;
  }
  const double f = fp32.value().flops_per_s / 1e9, b = bf16.value().flops_per_s / 1e9;
  const bool use_bf16 = b >= kBf16Advantage * f;
  std::snprintf(line, sizeof line, "%s: bf16 GEMM %.1f GFLOP/s is %.2fx fp32's %.1f (%s %.1fx)",
                use_bf16 ? "bf16" : "fp32", b, b / f, f, use_bf16 ? ">=" : "<", kBf16Advantage);
  c.reason = line;
  c.dtype = use_bf16 ? at::kBFloat16 : at::kFloat;
  return c;
}

}  // namespace ramstream::pipeline
