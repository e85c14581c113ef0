// Hardware profiles: YAML in and out, the probe, its cache.
//
// Modelled figures (no counter on these machines; the profile's notes say which apply):
//   CPU power: max_w = 5 W x cores, idle_w = 30% of it. A server core's share of its package
//   under all-core AVX load: an EPYC 9004 is 360 W for 96 cores (3.75 W) plus uncore and memory
//   controllers; idle packages draw about a third of that. RAPL, where readable, measures what a
//   run costs (planner/energy_meter.h); the model is what the planner predicts with.
//   GPU idle power: NVML's power reading at probe time, when the device is idle.
#include "planner/hardware_profile.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include <ATen/ATen.h>
#include <yaml-cpp/yaml.h>

#include "autograd/block.h"
#include "autograd/ops.h"
#include "autograd/rope.h"
#include "kernels/gemm_rows.h"
#include "memory/log.h"
#include "memory/topology.h"
#include "model/params.h"
#include "model/shapes.h"
#include "pipeline/gemm_probe.h"
#include "planner/cost_model.h"
#include "planner/energy_meter.h"
#include "util/text.h"

namespace ramstream::planner {
namespace {

constexpr double kGB = 1e9;
constexpr double kGiB = double(int64_t{1} << 30);
constexpr double kGflop = 1e9;
constexpr double kCpuWattsPerCore = 5.0;
constexpr double kCpuIdleShare = 0.3;

// A numeric key of the file: where it lives in the struct and its unit.
struct NumberKey {
  const char* key;  // "cpu.read_gbps"
  double unit;      // file value x unit = struct value
  double CpuProfile::*cpu = nullptr;
  double GpuProfile::*gpu = nullptr;
};

const std::vector<NumberKey>& number_keys() {
  static const std::vector<NumberKey> keys = {
      {"cpu.ram_total_gib", kGiB, &CpuProfile::ram_total_bytes},
      {"cpu.ram_available_gib", kGiB, &CpuProfile::ram_available_bytes},
      {"cpu.read_gbps", kGB, &CpuProfile::read_bytes_per_s},
      {"cpu.copy_gbps", kGB, &CpuProfile::copy_bytes_per_s},
      {"cpu.read_gbps_1t", kGB, &CpuProfile::read_bytes_per_s_1t},
      {"cpu.gemm_fp32_gflops", kGflop, &CpuProfile::gemm_fp32_flops},
      {"cpu.gemm_bf16_gflops", kGflop, &CpuProfile::gemm_bf16_flops},
      {"cpu.idle_w", 1, &CpuProfile::idle_w},
      {"cpu.max_w", 1, &CpuProfile::max_w},
      {"cpu.op_overhead_us", 1e-6, &CpuProfile::op_overhead_s},
      {"cpu.elementwise_fp32_gbps", kGB, &CpuProfile::elementwise_fp32_bytes_per_s},
      {"cpu.elementwise_bf16_gbps", kGB, &CpuProfile::elementwise_bf16_bytes_per_s},
      {"cpu.attention_fp32_gflops", kGflop, &CpuProfile::attention_fp32_flops},
      {"cpu.attention_bf16_gflops", kGflop, &CpuProfile::attention_bf16_flops},
      {"cpu.block_gemm_fp32_gflops", kGflop, &CpuProfile::block_gemm_fp32_flops},
      {"cpu.block_gemm_bf16_gflops", kGflop, &CpuProfile::block_gemm_bf16_flops},
      {"gpu.memory_gib", kGiB, nullptr, &GpuProfile::memory_bytes},
      {"gpu.h2d_gbps", kGB, nullptr, &GpuProfile::h2d_bytes_per_s},
      {"gpu.d2h_gbps", kGB, nullptr, &GpuProfile::d2h_bytes_per_s},
      {"gpu.hbm_gbps", kGB, nullptr, &GpuProfile::hbm_bytes_per_s},
      {"gpu.gemm_bf16_gflops", kGflop, nullptr, &GpuProfile::gemm_bf16_flops},
      {"gpu.idle_w", 1, nullptr, &GpuProfile::idle_w},
      {"gpu.max_w", 1, nullptr, &GpuProfile::max_w},
      {"gpu.launch_us", 1e-6, nullptr, &GpuProfile::launch_overhead_s},
  };
  return keys;
}

const std::vector<std::string>& all_keys() {
  static const std::vector<std::string> keys = [] {
    std::vector<std::string> k = {"name",
                                  "measured",
                                  "notes",
                                  "cpu",
                                  "gpu",
                                  "cpu.model",
                                  "cpu.cores",
                                  "cpu.threads",
                                  "cpu.numa_nodes",
                                  "cpu.isa",
                                  "gpu.name",
                                  "cpu.gemm_fp32_rows_gflops",
                                  "cpu.gemm_bf16_rows_gflops"};
    for (const NumberKey& n : number_keys()) k.push_back(n.key);
    return k;
  }();
  return keys;
}

std::string closest_key(const std::string& key) {
  std::string best;
  size_t best_d = 4;  // further than 3 edits is no suggestion
  for (const std::string& k : all_keys()) {
    const size_t d = edit_distance(key, k);
    if (d < best_d) {
      best_d = d;
      best = k;
    }
  }
  return best;
}

std::string where(const std::string& source, const YAML::Node& node, const std::string& key) {
  return source + ":" + std::to_string(node.Mark().line + 1) + ": " + key;
}

Result<double> number_of(const YAML::Node& node, const std::string& at) {
  double v = 0;
  try {
    v = node.as<double>();
  } catch (const YAML::Exception&) {
    return Error{at + ": '" + (node.IsScalar() ? node.Scalar() : std::string("a non-scalar")) +
                 "' is not a number"};
  }
  if (!std::isfinite(v) || v < 0) {
    return Error{at + ": " + node.Scalar() + " is not a non-negative number"};
  }
  return v;
}

Result<int> count_of(const YAML::Node& node, const std::string& at) {
  Result<double> v = number_of(node, at);
  if (!v.ok()) return v.error();
  if (v.value() < 1 || v.value() > 1e6 || v.value() != std::floor(v.value())) {
    return Error{at + ": " + node.Scalar() + " is not a whole number >= 1"};
  }
  return int(v.value());
}

std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

// [[rows, GFLOP/s], ...] with rows ascending.
Result<std::vector<std::pair<double, double>>> rows_table(const YAML::Node& node,
                                                          const std::string& at) {
  const char* expect = ": expected [[rows, GFLOP/s], ...] with rows ascending";
  if (!node.IsSequence()) return Error{at + expect};
  std::vector<std::pair<double, double>> rows;
  for (const YAML::Node& item : node) {
    if (!item.IsSequence() || item.size() != 2) return Error{at + expect};
    Result<double> m = number_of(item[0], at), g = number_of(item[1], at);
    if (!m.ok()) return m.error();
    if (!g.ok()) return g.error();
    if (m.value() < 1 || g.value() <= 0 || (!rows.empty() && m.value() <= rows.back().first)) {
      return Error{at + expect};
    }
    rows.emplace_back(m.value(), g.value() * kGflop);
  }
  return rows;
}

std::string rows_yaml(const std::vector<std::pair<double, double>>& rows) {
  std::string out = "[";
  for (const auto& [m, f] : rows) {
    out += (out.size() > 1 ? ", [" : "[") + fmt(m) + ", " + fmt(f / kGflop) + "]";
  }
  return out + "]";
}

// One section (cpu or gpu) of the file into the profile.
Status parse_section(const YAML::Node& section, const std::string& name, const std::string& source,
                     HardwareProfile* p) {
  if (!section.IsMap()) return Error{where(source, section, name) + ": expected a mapping"};
  for (const auto& kv : section) {
    const std::string key = name + "." + kv.first.as<std::string>();
    const std::string at = where(source, kv.first, key);
    const YAML::Node& v = kv.second;
    if (key == "cpu.model") {
      p->cpu.model = v.as<std::string>("");
    } else if (key == "cpu.isa") {
      p->cpu.isa = v.as<std::string>("");
    } else if (key == "gpu.name") {
      p->gpu.name = v.as<std::string>("");
    } else if (key == "cpu.gemm_fp32_rows_gflops" || key == "cpu.gemm_bf16_rows_gflops") {
      Result<std::vector<std::pair<double, double>>> rows = rows_table(v, at);
      if (!rows.ok()) return rows.error();
      (key == "cpu.gemm_fp32_rows_gflops" ? p->cpu.gemm_fp32_rows : p->cpu.gemm_bf16_rows) =
          rows.value();
    } else if (key == "cpu.cores" || key == "cpu.threads" || key == "cpu.numa_nodes") {
      Result<int> c = count_of(v, at);
      if (!c.ok()) return c.error();
      (key == "cpu.cores"     ? p->cpu.cores
       : key == "cpu.threads" ? p->cpu.threads
                              : p->cpu.numa_nodes) = c.value();
    } else {
      const auto it = std::find_if(number_keys().begin(), number_keys().end(),
                                   [&](const NumberKey& n) { return key == n.key; });
      if (it == number_keys().end()) {
        const std::string near = closest_key(key);
        return Error{at + ": unknown key" + (near.empty() ? "" : " (did you mean " + near + "?)")};
      }
      Result<double> x = number_of(v, at);
      if (!x.ok()) return x.error();
      if (it->cpu) p->cpu.*(it->cpu) = x.value() * it->unit;
      if (it->gpu) p->gpu.*(it->gpu) = x.value() * it->unit;
    }
  }
  return Ok{};
}

std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out + "\"";
}

// ---- the probe ----

std::string cpuinfo_field(const std::string& cpuinfo, const std::string& field) {
  std::istringstream in(cpuinfo);
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, field.size(), field) != 0) continue;
    const size_t colon = line.find(':');
    if (colon != std::string::npos) return trim(line.substr(colon + 1));
  }
  return "";
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Best of `reps` runs of `threads` threads, each doing work(thread, threads); bytes per second.
template <class Work>
double best_rate(int threads, int reps, double bytes, Work work) {
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    std::vector<std::thread> pool;
    const auto t0 = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { work(t, threads); });
    for (std::thread& th : pool) th.join();
    best = std::max(best, bytes / std::max(1e-9, seconds_since(t0)));
  }
  return best;
}

struct Bandwidth {
  double read = 0, copy = 0, read_1t = 0;
};

// Streaming reads (a sum the compiler cannot drop) and memcpy over a buffer much larger than
// the caches, split between the threads.
Bandwidth measure_bandwidth(int threads) {
  const uint64_t avail = memory::host_memory_available_bytes();
  size_t bytes = size_t(256) << 20;
  while (bytes > (size_t(16) << 20) && bytes * 3 > avail / 4) bytes /= 2;
  const size_t n = bytes / sizeof(double);
  std::vector<double> src(n, 1.0), dst(n, 0.0);
  std::atomic<uint64_t> sink{0};
  auto read = [&](int t, int nt) {
    const size_t b = n * size_t(t) / size_t(nt), e = n * size_t(t + 1) / size_t(nt);
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = b;
    for (; i + 4 <= e; i += 4) {
      s0 += src[i];
      s1 += src[i + 1];
      s2 += src[i + 2];
      s3 += src[i + 3];
    }
    for (; i < e; ++i) s0 += src[i];
    sink += uint64_t(s0 + s1 + s2 + s3);
  };
  auto copy = [&](int t, int nt) {
    const size_t b = n * size_t(t) / size_t(nt), e = n * size_t(t + 1) / size_t(nt);
    std::memcpy(dst.data() + b, src.data() + b, (e - b) * sizeof(double));
  };
  Bandwidth bw;
  bw.read = best_rate(threads, 3, double(bytes), read);
  bw.copy = best_rate(threads, 3, double(bytes), copy);
  bw.read_1t = best_rate(1, 3, double(bytes), read);
  if (sink.load() == 42) std::fprintf(stderr, " ");  // keeps the sums alive
  return bw;
}

// The skinny-GEMM curve: rows [m, 2048] times weights [2048, 2048]^T (a decode step's shape:
// activations times a weight matrix stored [out, in]) for m = 1..128, best of 5 after a warm-up.
// Measured with what the Generator runs for that many rows (kernels/gemm_rows.h up to
// kGemmRowsMax fp32 rows, ATen's BLAS above and for bf16) and over four weight matrices (64 MiB
// in fp32) taken in turn, so that each product reads its weights from RAM as decode does, not
// from a warm cache.
std::vector<std::pair<double, double>> measure_gemm_rows(at::ScalarType dtype) {
  const int64_t k = 2048, n = 2048;
  std::vector<at::Tensor> weights;
  for (int i = 0; i < 4; ++i) weights.push_back(at::randn({n, k}).to(dtype));
  std::vector<std::pair<double, double>> rows;
  for (int64_t m = 1; m <= 128; m *= 2) {
    at::Tensor a = at::randn({m, k}).to(dtype);
    at::Tensor c = at::empty({m, n}, a.options());
    const bool own_kernel = dtype == at::kFloat && m <= kernels::kGemmRowsMax;
    auto product = [&](const at::Tensor& w) {
      if (own_kernel) {
        kernels::gemm_rows_nt(a.data_ptr<float>(), m, k, w.data_ptr<float>(), n, nullptr,
                              c.data_ptr<float>());
      } else {
        at::mm_out(c, a, w.t());
      }
    };
    for (const at::Tensor& w : weights) product(w);
    double best = 1e30;
    for (int r = 0; r < 5; ++r) {
      const at::Tensor& w = weights[size_t(r) % weights.size()];
      const auto t0 = std::chrono::steady_clock::now();
      product(w);
      best = std::min(best, seconds_since(t0));
    }
    rows.emplace_back(double(m), 2.0 * double(m * k * n) / best);
  }
  return rows;
}

// The shape the block calibration runs: the bundled default model's block (SmolLM2-135M).
model::ModelConfig calibration_block() {
  model::ModelConfig c = model::smollm2_135m_shape();
  c.num_layers = 1;
  return c;
}

// Seconds of one call of fn.
template <class Fn>
double time_once(Fn&& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  return seconds_since(t0);
}

// The engine's ops on one block of `cfg` over B x T tokens, timed: the whole forward + backward,
// its projections alone (linear_forward, linear_backward with the fp32 weight grads), its
// attention alone (forward + backward).
struct BlockTimes {
  double block = 0, linears = 0, attention = 0;
};

BlockTimes time_block(const model::ModelConfig& cfg, int64_t B, int64_t T, at::ScalarType dtype) {
  const model::BlockLayout layout = model::block_layout(cfg);
  at::Tensor flat = (at::randn({layout.numel}) * 0.02).to(dtype);
  at::Tensor grad_flat = at::zeros({layout.numel});
  model::BlockParams p = model::bind_block_params(flat, layout);
  model::BlockParams g = model::bind_block_params(grad_flat, layout);
  p.attn_norm.fill_(1);
  p.mlp_norm.fill_(1);
  autograd::BlockActs acts = autograd::BlockActs::allocate(cfg, B, T, dtype);
  autograd::BlockScratch scratch = autograd::BlockScratch::allocate(cfg, B, T, dtype);
  const autograd::RopeTables rope = autograd::make_rope_tables(cfg, T, dtype);
  const int64_t N = B * T;
  at::Tensor x = at::randn({N, cfg.hidden_size}).to(dtype);
  at::Tensor y = at::empty_like(x), dres = at::empty_like(x);
  auto block = [&] {
    autograd::block_forward(y, acts, scratch, p, x, rope, cfg);
    dres.fill_(0.01);
    autograd::block_backward(dres, g, acts, scratch, p, rope, cfg);
  };
  // The four projections: (weight, its grad, input width).
  struct Proj {
    at::Tensor w, dw;
  };
  const std::vector<Proj> projs = {{p.wqkv, g.wqkv}, {p.wo, g.wo}, {p.wgu, g.wgu}, {p.wd, g.wd}};
  std::vector<at::Tensor> in, out, din;
  for (const Proj& pr : projs) {
    in.push_back(at::randn({N, pr.w.size(1)}).to(dtype));
    out.push_back(at::empty({N, pr.w.size(0)}, in.back().options()));
    din.push_back(at::empty_like(in.back()));
  }
  at::Tensor undefined;
  auto linears = [&] {
    for (size_t i = 0; i < projs.size(); ++i) {
      autograd::linear_forward(out[i], in[i], projs[i].w, undefined);
      at::Tensor dw = projs[i].dw;
      autograd::linear_backward(din[i], dw, undefined, out[i], in[i], projs[i].w);
    }
  };
  auto attention = [&] {
    autograd::attention_forward(scratch.datt, acts.lse, acts.q, acts.k, acts.v);
    autograd::attention_backward(scratch.dq, scratch.dk, scratch.dv, scratch.datt, acts.q, acts.k,
                                 acts.v, acts.att, acts.lse);
  };
  // The elementwise rate is what is left of the block's time after the other two, a small
  // difference of large timings: the three are timed in interleaved rounds (a slow spell of the
  // machine then hits all of them alike) and each keeps its best of seven.
  block();
  linears();
  attention();
  BlockTimes t{1e30, 1e30, 1e30};
  for (int round = 0; round < 7; ++round) {
    t.block = std::min(t.block, time_once(block));
    t.linears = std::min(t.linears, time_once(linears));
    t.attention = std::min(t.attention, time_once(attention));
  }
  return t;
}

// The rates of a block's work in `dtype` as the engine's ops reach them here, from timings of
// the bundled default model's block (calibration_block) over 512 tokens:
//   - projections: the model FLOPs of its four linears (forward, input grad, fp32 weight grad)
//     over their time at 4 x 128 tokens: cpu.block_gemm_{fp32,bf16}_gflops;
//   - attention: its causal FLOPs (forward 2 n T Q, backward twice) over the attention ops' time
//     at 1 x 512 tokens (T = 512: the FLOPs dominate its per-token work);
//   - elementwise: what is left of the whole block's time at 4 x 128 (norms, RoPE, SwiGLU,
//     residual adds, copies) against the cost model's bytes for those passes.
void calibrate_block(HardwareProfile* p, bool bf16) {
  const at::ScalarType dtype = bf16 ? at::kBFloat16 : at::kFloat;
  const model::ModelConfig cfg = calibration_block();
  const BlockTimes t1 = time_block(cfg, 4, 128, dtype);
  const BlockTimes t2 = time_block(cfg, 1, 512, dtype);
  const BlockWork w1 = cpu_block_work(*p, cfg, 4, 128, bf16);
  const BlockWork w2 = cpu_block_work(*p, cfg, 1, 512, bf16);
  const double n = 512, C = double(cfg.hidden_size), F = double(cfg.intermediate_size);
  const double Q = double(cfg.q_dim()), KV = double(cfg.kv_dim());
  const double gemm_flops = 3 * 2 * n * (C * (Q + 2 * KV) + Q * C + 2 * F * C + F * C);
  double& gemm = bf16 ? p->cpu.block_gemm_bf16_flops : p->cpu.block_gemm_fp32_flops;
  double& attn = bf16 ? p->cpu.attention_bf16_flops : p->cpu.attention_fp32_flops;
  double& ew = bf16 ? p->cpu.elementwise_bf16_bytes_per_s : p->cpu.elementwise_fp32_bytes_per_s;
  gemm = gemm_flops / t1.linears;
  attn = w2.attention_flops / t2.attention;
  const double rest = t1.block - t1.linears - t1.attention;
  ew = rest > 0 ? w1.elementwise_bytes / rest : 0;
}

// Seconds of one small ATen operation: dispatch, output allocation, thread-pool wake-up.
double measure_op_overhead() {
  at::Tensor a = at::ones({256}), b = at::ones({256});
  for (int i = 0; i < 200; ++i) a = at::add(a, b);
  const int n = 4000;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) a = at::add(a, b);
  return seconds_since(t0) / n;
}

std::string today() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", std::gmtime(&t));
  return buf;
}

// Measures the GPU (CUDA compiled in and a device present); false when there is none.
bool probe_gpu(GpuProfile* gpu, std::string* notes) {
  if (!at::hasCUDA()) return false;
  gpu->present = true;
  Result<std::unique_ptr<Nvml>> nvml = Nvml::open();
  if (nvml.ok() && nvml.value()->device_count() > 0) {
    Result<NvmlGpuInfo> info = nvml.value()->device_info(0);
    if (info.ok()) {
      gpu->name = info.value().name;
      gpu->memory_bytes = double(info.value().memory_total_bytes);
      gpu->max_w = info.value().power_limit_w;
      gpu->idle_w = info.value().power_now_w;
    }
  } else {
    *notes += "; NVML not available (" +
              (nvml.ok() ? std::string("no device") : nvml.error().message) +
              "): GPU power figures 0";
  }
  const int64_t n = int64_t{256} << 20;  // bytes
  at::Tensor host = at::empty({n}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  host.fill_(1);
  at::Tensor dev = at::empty({n}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA, 0));
  at::Tensor dev2 = at::empty_like(dev);
  auto best = [&](const std::function<void()>& op) {
    op();
    double t = 1e30;
    for (int r = 0; r < 5; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      op();
      (void)dev2[0].item<uint8_t>();  // waits for the stream
      t = std::min(t, seconds_since(t0));
    }
    return double(n) / t;
  };
  gpu->h2d_bytes_per_s = best([&] { dev.copy_(host); });
  gpu->d2h_bytes_per_s = best([&] { host.copy_(dev); });
  gpu->hbm_bytes_per_s = 2 * best([&] { dev2.copy_(dev); });  // read + write
  Result<pipeline::GemmRate> gemm =
      pipeline::cached_gemm_rate(at::Device(at::kCUDA, 0), at::kBFloat16);
  if (gemm.ok()) gpu->gemm_bf16_flops = gemm.value().flops_per_s;
  if (gpu->name.empty()) gpu->name = "CUDA device 0";
  if (gpu->memory_bytes <= 0) gpu->memory_bytes = 80 * kGiB;
  return true;
}

HardwareProfile probe_now() {
  HardwareProfile p;
  const std::string cpuinfo = read_small_file("/proc/cpuinfo").value_or("");
  p.cpu.model = cpuinfo_field(cpuinfo, "model name");
  if (p.cpu.model.empty()) p.cpu.model = "unknown CPU";
  p.cpu.isa = detail::isa_flags(cpuinfo_field(cpuinfo, "flags"));
  const memory::Topology topo = memory::Topology::probe();
  p.cpu.numa_nodes = int(topo.nodes.size());
  int threads = 0, cores = 0;
  for (const memory::NumaNode& node : topo.nodes) {
    threads += int(node.cpus.size());
    cores += node.cores.empty() ? int(node.cpus.size()) : int(node.cores.size());
  }
  p.cpu.threads = std::max(1, threads);
  p.cpu.cores = std::max(1, cores);
  const std::string meminfo = read_small_file("/proc/meminfo").value_or("");
  p.cpu.ram_total_bytes = double(detail::meminfo_kib(meminfo, "MemTotal")) * 1024;
  p.cpu.ram_available_bytes = double(memory::host_memory_available_bytes());
  const Bandwidth bw = measure_bandwidth(p.cpu.threads);
  p.cpu.read_bytes_per_s = bw.read;
  p.cpu.copy_bytes_per_s = bw.copy;
  p.cpu.read_bytes_per_s_1t = bw.read_1t;
  Result<pipeline::GemmRate> f32 = pipeline::cached_gemm_rate(at::Device(at::kCPU), at::kFloat);
  Result<pipeline::GemmRate> b16 = pipeline::cached_gemm_rate(at::Device(at::kCPU), at::kBFloat16);
  if (f32.ok()) p.cpu.gemm_fp32_flops = f32.value().flops_per_s;
  if (b16.ok()) p.cpu.gemm_bf16_flops = b16.value().flops_per_s;
  p.cpu.op_overhead_s = measure_op_overhead();
  p.cpu.gemm_fp32_rows = measure_gemm_rows(at::kFloat);
  if (b16.ok()) p.cpu.gemm_bf16_rows = measure_gemm_rows(at::kBFloat16);
  calibrate_block(&p, false);
  if (b16.ok()) calibrate_block(&p, true);
  p.cpu.max_w = kCpuWattsPerCore * p.cpu.cores;
  p.cpu.idle_w = kCpuIdleShare * p.cpu.max_w;
  p.measured = true;
  std::string rapl_why;
  const bool rapl = !find_rapl_zones("/sys/class/powercap", &rapl_why).empty();
  p.notes = "probe_hardware() " + today() + ": bandwidth (all " + std::to_string(p.cpu.threads) +
            " CPUs and one thread), GEMM rates (pipeline/gemm_probe.h; by rows 1-128 with the "
            "decode kernels, weights from RAM), a block's "
            "elementwise and attention rates (SmolLM2-135M's block, 4x128 and 1x512 tokens), op "
            "overhead measured; cpu "
            "power modelled (5 W/core, idle 30%)" +
            (rapl ? "; RAPL readable: runs measure CPU energy" : "; RAPL not readable");
  if (!f32.ok()) p.notes += "; fp32 GEMM probe failed: " + f32.error().message;
  if (!b16.ok()) p.notes += "; bf16 GEMM probe failed: " + b16.error().message;
  if (probe_gpu(&p.gpu, &p.notes)) {
    p.notes += "; GPU: pinned H2D/D2H, device copy and bf16 GEMM measured, power from NVML";
  }
  std::string host(64, '\0');
  if (gethostname(host.data(), host.size()) != 0) host = "this-machine";
  host = host.c_str();
  p.name = "probe of " + host;
  return p;
}

// What the figures depend on (as the GEMM probe's key), plus the probe's own version: a probe
// that measures more invalidates the old files.
constexpr int kProbeVersion = 4;

std::string machine_key() {
  std::string key = "hardware probe " + std::to_string(kProbeVersion) + "; " +
                    pipeline::gemm_machine_key(at::Device(at::kCPU));
  if (at::hasCUDA()) key += "; " + pipeline::gemm_machine_key(at::Device(at::kCUDA, 0));
  return key;
}

}  // namespace

namespace detail {

std::string isa_flags(const std::string& flags) {
  std::istringstream in(flags);
  std::vector<std::string> have;
  std::string f;
  while (in >> f) have.push_back(f);
  std::string out;
  for (const char* want : {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                           "amx_tile", "amx_bf16"}) {
    if (std::find(have.begin(), have.end(), want) != have.end()) {
      out += (out.empty() ? "" : " ") + std::string(want);
    }
  }
  return out;
}

uint64_t meminfo_kib(const std::string& meminfo, const std::string& field) {
  std::istringstream in(meminfo);
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, field.size() + 1, field + ":") == 0) {
      return std::strtoull(line.c_str() + field.size() + 1, nullptr, 10);
    }
  }
  return 0;
}

}  // namespace detail

Result<HardwareProfile> parse_hardware_profile(const std::string& yaml_text,
                                               const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    return Error{source + ":" + std::to_string(e.mark.line + 1) + ": invalid YAML: " + e.msg};
  }
  if (!root.IsMap()) return Error{source + ": expected a mapping of keys (name:, cpu:, gpu:)"};
  HardwareProfile p;
  p.source = source;
  bool has_name = false;
  try {
    for (const auto& kv : root) {
      const std::string key = kv.first.as<std::string>();
      const std::string at = where(source, kv.first, key);
      if (key == "name") {
        p.name = kv.second.as<std::string>("");
        has_name = !p.name.empty();
      } else if (key == "measured") {
        try {
          p.measured = kv.second.as<bool>();
        } catch (const YAML::Exception&) {
          return Error{at + ": expected true or false"};
        }
      } else if (key == "notes") {
        p.notes = kv.second.as<std::string>("");
      } else if (key == "cpu" || key == "gpu") {
        Status st = parse_section(kv.second, key, source, &p);
        if (!st.ok()) return st.error();
        if (key == "gpu") p.gpu.present = true;
      } else {
        const std::string near = closest_key(key);
        return Error{at + ": unknown key" + (near.empty() ? "" : " (did you mean " + near + "?)")};
      }
    }
  } catch (const YAML::Exception& e) {
    return Error{source + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg};
  }
  if (!has_name) return Error{source + ": name is missing (every profile names its machine)"};
  if (p.cpu.read_bytes_per_s <= 0) return Error{source + ": cpu.read_gbps is missing or 0"};
  if (p.cpu.gemm_fp32_flops <= 0) return Error{source + ": cpu.gemm_fp32_gflops is missing or 0"};
  if (p.gpu.present) {
    if (p.gpu.h2d_bytes_per_s <= 0) return Error{source + ": gpu.h2d_gbps is missing or 0"};
    if (p.gpu.gemm_bf16_flops <= 0) return Error{source + ": gpu.gemm_bf16_gflops is missing or 0"};
    if (p.gpu.d2h_bytes_per_s <= 0) p.gpu.d2h_bytes_per_s = p.gpu.h2d_bytes_per_s;
    if (p.gpu.hbm_bytes_per_s <= 0) return Error{source + ": gpu.hbm_gbps is missing or 0"};
    if (p.gpu.memory_bytes <= 0) return Error{source + ": gpu.memory_gib is missing or 0"};
  }
  if (p.cpu.copy_bytes_per_s <= 0) p.cpu.copy_bytes_per_s = p.cpu.read_bytes_per_s / 2;
  if (p.cpu.read_bytes_per_s_1t <= 0) p.cpu.read_bytes_per_s_1t = p.cpu.read_bytes_per_s;
  if (p.cpu.ram_available_bytes <= 0) p.cpu.ram_available_bytes = p.cpu.ram_total_bytes;
  return p;
}

Result<HardwareProfile> load_hardware_profile(const std::string& file_or_name) {
  for (const BundledProfile& b : bundled_hardware_profiles()) {
    if (b.name == file_or_name) return parse_hardware_profile(b.text, b.name + ".yaml (bundled)");
  }
  std::error_code ec;
  if (std::filesystem::is_directory(file_or_name, ec)) {
    return Error{file_or_name + ": a folder, not a hardware profile file"};
  }
  if (!std::filesystem::exists(file_or_name, ec)) {
    std::string names;
    for (const BundledProfile& b : bundled_hardware_profiles()) names += " " + b.name;
    return Error{file_or_name + ": no such file, nor a bundled profile (bundled:" + names + ")"};
  }
  std::optional<std::string> text = read_small_file(file_or_name);
  if (!text) return Error{file_or_name + ": cannot read"};
  if (text->size() > (size_t(1) << 20)) return Error{file_or_name + ": larger than 1 MiB"};
  return parse_hardware_profile(*text, file_or_name);
}

std::string hardware_profile_to_yaml(const HardwareProfile& p) {
  std::string y = "name: " + quoted(p.name) + "\n";
  y += std::string("measured: ") + (p.measured ? "true" : "false") + "\n";
  y += "notes: " + quoted(p.notes) + "\n";
  y += "cpu:\n  model: " + quoted(p.cpu.model) + "\n";
  y += "  cores: " + std::to_string(p.cpu.cores) + "\n";
  y += "  threads: " + std::to_string(p.cpu.threads) + "\n";
  y += "  numa_nodes: " + std::to_string(p.cpu.numa_nodes) + "\n";
  y += "  isa: " + quoted(p.cpu.isa) + "\n";
  for (const NumberKey& n : number_keys()) {
    const std::string key = n.key;
    if (n.cpu) y += "  " + key.substr(4) + ": " + fmt(p.cpu.*(n.cpu) / n.unit) + "\n";
  }
  if (!p.cpu.gemm_fp32_rows.empty()) {
    y += "  gemm_fp32_rows_gflops: " + rows_yaml(p.cpu.gemm_fp32_rows) + "\n";
  }
  if (!p.cpu.gemm_bf16_rows.empty()) {
    y += "  gemm_bf16_rows_gflops: " + rows_yaml(p.cpu.gemm_bf16_rows) + "\n";
  }
  if (p.gpu.present) {
    y += "gpu:\n  name: " + quoted(p.gpu.name) + "\n";
    for (const NumberKey& n : number_keys()) {
      const std::string key = n.key;
      if (n.gpu) y += "  " + key.substr(4) + ": " + fmt(p.gpu.*(n.gpu) / n.unit) + "\n";
    }
  }
  return y;
}

Result<HardwareProfile> probe_hardware(const ProbeOptions& options) {
  const std::string dir =
      options.cache_dir.empty() ? pipeline::default_probe_cache_dir() : options.cache_dir;
  const std::string key = machine_key();
  const std::string path = dir.empty() ? "" : dir + "/hardware-" + fnv1a_hex(key) + ".yaml";
  const std::string key_line = "# key: " + key + "\n";
  std::error_code ec;
  if (!path.empty() && !options.refresh && std::filesystem::exists(path, ec)) {
    std::optional<std::string> text = read_small_file(path);
    if (text && text->compare(0, key_line.size(), key_line) == 0) {
      Result<HardwareProfile> cached = parse_hardware_profile(*text, path);
      if (cached.ok()) {
        HardwareProfile p = cached.value();
        p.cpu.ram_available_bytes = double(memory::host_memory_available_bytes());
        p.source = "probe (cached in " + path + ")";
        return p;
      }
      memory::log_warning("hardware probe cache " + cached.error().message + "; probing again");
    }
  }
  HardwareProfile p = probe_now();
  p.source = "probe";
  if (!path.empty()) {
    std::filesystem::create_directories(dir, ec);
    const std::string tmp = path + ".tmp" + std::to_string(getpid());
    {
      std::ofstream out(tmp);
      out << key_line << hardware_profile_to_yaml(p);
    }
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
      memory::log_warning("hardware probe cache " + path + ": cannot write: " + ec.message());
      std::filesystem::remove(tmp, ec);
    } else {
      p.source = "probe (saved to " + path + ")";
    }
  }
  return p;
}

Result<HardwareProfile> hardware_profile_for(const std::string& spec, const ProbeOptions& options) {
  if (spec == "auto") return probe_hardware(options);
  return load_hardware_profile(spec);
}

std::string describe_hardware(const HardwareProfile& p) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "%s (%s): %s, %d cores%s%s, %.1f GiB free, read %.1f GB/s, fp32 %.0f / bf16 %.0f "
                "GFLOP/s",
                p.name.c_str(), p.measured ? "measured" : "not measured", p.cpu.model.c_str(),
                p.cpu.cores, p.cpu.isa.empty() ? "" : " ", p.cpu.isa.c_str(),
                p.cpu.ram_available_bytes / kGiB, p.cpu.read_bytes_per_s / kGB,
                p.cpu.gemm_fp32_flops / kGflop, p.cpu.gemm_bf16_flops / kGflop);
  std::string out = buf;
  if (p.gpu.present) {
    std::snprintf(buf, sizeof buf,
                  "; GPU %s, %.1f GiB, H2D %.1f GB/s, bf16 %.0f TFLOP/s, %.0f-%.0f W",
                  p.gpu.name.c_str(), p.gpu.memory_bytes / kGiB, p.gpu.h2d_bytes_per_s / kGB,
                  p.gpu.gemm_bf16_flops / 1e12, p.gpu.idle_w, p.gpu.max_w);
    out += buf;
  } else {
    out += "; no GPU";
  }
  return out;
}

}  // namespace ramstream::planner
