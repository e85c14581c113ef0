// The cost model's formulas. Notation: C hidden, Q = NH x D query width, KV = NKV x D, F MLP width,
// V vocabulary, L layers, T tokens per row, b rows per micro-batch, n = b T tokens per
// micro-batch, M micro-batches per step, E bytes of the compute dtype (2 bf16, 4 fp32), A = 4
// (fp32 accumulation: grads, logits).
//
// Roofline. An operation with f FLOPs moving x bytes takes
//     t = max(f / P, x / W) + k x overhead
// with P the GEMM peak of the dtype (the probe's square GEMM), W the memory bandwidth (CPU: the
// probe's all-core read rate for operations that mostly read (GEMM operands, KV), 2 x its copy
// rate for read-and-write passes, since a copy moves each byte twice; GPU: HBM), k the number of
// ATen operations / kernel launches it takes. Below the ridge point P / W the attained rate is
// (f / x) W: this is what makes a decode GEMM of a few rows cost a full read of its weights.
//
// GEMM [m, k] x [k, n]: f = 2 m k n, x = E (m k + k n + m n); a weight-grad GEMM accumulates
// into fp32: x = E (m k + m n) + 2 A k n.
//
// One block, per micro-batch (forward):
//   GEMMs qkv [n, C] x [C, Q + 2 KV], wo [n, Q] x [Q, C], gate-up [n, C] x [C, 2F], down
//   [n, F] x [F, C];
//   attention (causal, probabilities materialised per row and head): f = 2 n T Q (scores and the
//   weighted sum, each 2 Q per query and key, T/2 keys on average), x = 4 passes over
//   b NH T^2 / 2 fp32 probabilities plus E n (Q + 2 KV + Q);
//   elementwise (two RMSNorms, RoPE, SwiGLU, two residual adds, the head transposes):
//   x = E n (10 C + 4 Q + 6 KV + 3 F), read-and-write bandwidth;
//   about 25 operations.
// Backward: every GEMM twice (the input grad [n, out] x [out, in] and the weight grad
// [in, n] x [n, out] into fp32), attention twice (dP, dS, dQ, dK, dV), elementwise twice; about
// 50 operations. Recompute (engine.activations recompute): one more forward before the backward.
// Head (per micro-batch): final norm, the LM head GEMM forward, input grad and weight grad, and the
// cross-entropy passes over fp32 logits, x = 20 n V bytes (write, max, exp-sum, grad, the bf16
// copy for the backward GEMMs); about 15 operations per cross-entropy chunk.
// Embedding: a gather forward and a scatter-add backward, E n C and 2 A n C bytes.
//
// Optimizer (AdamW, per parameter): fp32 layout reads master, m, v, grad and writes master, m, v
// and the zeroed grad (32 B); bf16 layout reads master, m, v and the bf16 grad and writes master,
// m, v and the bf16 working copy (28 B); clipping adds one read of the grads for the norm.
// Bandwidth: the CPU's read-and-write rate with the optimizer's threads (t threads reach
// min(all-core, t x one-thread)).
//
// Copies (CUDA): a stage's load moves its bf16 working copy (E x numel; the head also its tied LM
// head from the embedding region), its grads go back as bf16 (2 x numel), over the profile's
// pinned H2D / D2H rates.
//
// Streams (simulate_steps): h2d, compute, d2h, optimizer; each runs its tasks in the engine's
// issue order, a task starting when its stream is free and its dependencies have ended. The
// forward acquires embedding, blocks 0..L-1; the head is acquired once for its forward and
// backward; the backward acquires blocks L-1..0 and the embedding. A non-resident stage's j-th
// acquisition of the step sequence uses slot j mod K and waits for the compute of acquisition j-K
// (slot reuse); a resident stage is loaded once per step, in the forward (the engine reloads it
// after every update), into its own buffer. Each stage's load waits for its update of the
// previous step. Without clipping a stage's update follows its grad copy (update order head,
// blocks in reverse, embedding); with clipping every update waits for all grads of the step (the
// norm) and they run in forward order, overlapping the next step's forward. The step time is the
// steady-state difference between the ends of simulated steps 2 and 3. On the CPU backend the
// stages bind to the store (no copies) and the optimizer runs on the cores that compute, so its
// tasks go on the compute stream: their times add.
//
// Inference (Generator): prefill runs every prompt through each stage (n = prompt tokens per
// prompt, b = 1), the head on the last position only; a decode step applies each stage to the
// batch in micro-batches of `micro_batch` rows: the GEMMs with m = rows read the weights once per
// micro-batch, attention reads every row's cache (kv_bytes_per_token_layer x context bytes per
// layer and row; f = 4 Q x context) at the read bandwidth, on the host CPU also on CUDA (the
// KV pages are pinned host memory and the query comes to the CPU). Decode time = new_tokens x
// the step at the mean context prompt + new / 2 (attention is linear in the context). On CUDA
// the stages that are not resident stream over H2D once per decode step, overlapped with the
// previous stage's compute (the same stream simulation, one "step" per decode step).
//
// Energy: each device draws idle + (max - idle) u over the step, u its busy share (compute or
// optimizer on the CPU backend: all cores; on a GPU machine the host counts the launcher thread
// always busy and the optimizer's threads while it runs), times 1 + kLeakageAtFullLoad x u.
#include "planner/cost_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "inference/kv_cache.h"
#include "pipeline/engine_memory.h"
#include "pipeline/param_store.h"
#include "pipeline/stages.h"

namespace ramstream::planner {
namespace {

using pipeline::StageKind;

constexpr double kGiB = double(int64_t{1} << 30);
constexpr double kAccBytes = 4;

// The rates one backend computes at.
struct Rates {
  double peak = 0;         // GEMM FLOP/s of the compute dtype (the square probe)
  double read_bw = 0;      // bytes/s of mostly-read operations
  double rw_bw = 0;        // bytes/s (read + written) of plain elementwise passes
  double block_ew_bw = 0;  // bytes/s of a block's elementwise passes (calibrated), else rw_bw
  double attn_flops = 0;   // FLOP/s of the causal attention loops (calibrated), else 0: roofline
  const std::vector<std::pair<double, double>>* rows = nullptr;  // skinny GEMM rate by rows
  double op_overhead = 0;                                        // s per operation
};

Rates cpu_rates(const CpuProfile& cpu, bool bf16) {
  Rates r;
  r.peak = bf16 && cpu.gemm_bf16_flops > 0 ? cpu.gemm_bf16_flops : cpu.gemm_fp32_flops;
  // The projections' rate through the engine's ops where measured: it differs from a square
  // product's by up to 1.5x here (bf16 weight grads run widened to fp32).
  const double block = bf16 ? cpu.block_gemm_bf16_flops : cpu.block_gemm_fp32_flops;
  if (block > 0) r.peak = block;
  r.read_bw = cpu.read_bytes_per_s;
  r.rw_bw = cpu.copy_bytes_per_s > 0 ? 2 * cpu.copy_bytes_per_s : cpu.read_bytes_per_s;
  const double ew = bf16 ? cpu.elementwise_bf16_bytes_per_s : cpu.elementwise_fp32_bytes_per_s;
  r.block_ew_bw = ew > 0 ? ew : r.rw_bw;
  r.attn_flops = bf16 ? cpu.attention_bf16_flops : cpu.attention_fp32_flops;
  r.rows = bf16 ? &cpu.gemm_bf16_rows : &cpu.gemm_fp32_rows;
  r.op_overhead = cpu.op_overhead_s;
  return r;
}

Rates gpu_rates(const GpuProfile& gpu) {
  Rates r;
  r.peak = gpu.gemm_bf16_flops;
  r.read_bw = gpu.hbm_bytes_per_s;
  r.rw_bw = r.block_ew_bw = gpu.hbm_bytes_per_s;
  r.op_overhead = gpu.launch_overhead_s;
  return r;
}

// FLOPs, bytes and seconds of a group of operations.
struct Work {
  double flops = 0, bytes = 0, seconds = 0;
  Work& operator+=(const Work& o) {
    flops += o.flops;
    bytes += o.bytes;
    seconds += o.seconds;
    return *this;
  }
  Work times(double k) const { return {flops * k, bytes * k, seconds * k}; }
};

Work roofline(double flops, double bytes, double bw, double peak, const Rates& r, double ops) {
  const double t = std::max(peak > 0 ? flops / peak : 0.0, bw > 0 ? bytes / bw : 0.0);
  return {flops, bytes, t + ops * r.op_overhead};
}

// The attained GEMM rate for m rows: the measured skinny-GEMM curve (log-linear between its
// points) below its last point, the square probe's above.
double gemm_peak(double m, const Rates& r) {
  if (!r.rows || r.rows->empty() || m >= r.rows->back().first) return r.peak;
  const auto& t = *r.rows;
  if (m <= t.front().first) return std::min(r.peak, t.front().second);
  for (size_t i = 1; i < t.size(); ++i) {
    if (m <= t[i].first) {
      const double f = std::log(m / t[i - 1].first) / std::log(t[i].first / t[i - 1].first);
      return std::min(r.peak, std::exp(std::log(t[i - 1].second) +
                                       f * (std::log(t[i].second) - std::log(t[i - 1].second))));
    }
  }
  return r.peak;
}

Work gemm(double m, double k, double n, double E, const Rates& r) {
  return roofline(2 * m * k * n, E * (m * k + k * n + m * n), r.read_bw, gemm_peak(m, r), r, 1);
}

// The weight grad [k, m] x [m, n] accumulated into fp32 (m, the tokens, is its depth).
Work gemm_weight_grad(double m, double k, double n, double E, const Rates& r) {
  return roofline(2 * m * k * n, E * (m * k + m * n) + 2 * kAccBytes * k * n, r.read_bw, r.peak, r,
                  1);
}

struct BlockDims {
  double C, Q, KV, F, NH;
};

BlockDims dims_of(const model::ModelConfig& c) {
  return {double(c.hidden_size), double(c.q_dim()), double(c.kv_dim()), double(c.intermediate_size),
          double(c.num_heads)};
}

// (in, out) of the block's four GEMMs.
std::vector<std::pair<double, double>> block_gemms(const BlockDims& d) {
  return {{d.C, d.Q + 2 * d.KV}, {d.Q, d.C}, {d.C, 2 * d.F}, {d.F, d.C}};
}

// A block's causal attention over b rows of T tokens: forward 2 n T Q FLOPs, backward twice that.
// With a calibrated rate that rate; else a roofline over its fp32 probabilities (4 passes).
Work block_attention(const BlockDims& d, double b, double T, double E, const Rates& r,
                     bool backward) {
  const double n = b * T, k = backward ? 2 : 1;
  const double flops = k * 2 * n * T * d.Q;
  const double bytes = k * (4 * b * d.NH * T * T / 2 * kAccBytes + E * n * (2 * d.Q + 2 * d.KV));
  if (r.attn_flops > 0) return {flops, bytes, flops / r.attn_flops + k * 6 * r.op_overhead};
  return roofline(flops, bytes, r.rw_bw, r.peak, r, k * 6);
}

// A block's elementwise passes (two RMSNorms, RoPE, SwiGLU, two residual adds, the head
// transposes): E n (10 C + 4 Q + 6 KV + 3 F) bytes forward, twice that backward.
Work block_elementwise(const BlockDims& d, double b, double T, double E, const Rates& r,
                       bool backward) {
  const double k = backward ? 2 : 1;
  const double bytes = k * E * b * T * (10 * d.C + 4 * d.Q + 6 * d.KV + 3 * d.F);
  return roofline(0, bytes, r.block_ew_bw, r.peak, r, k * 19);
}

Work block_gemms_forward(const BlockDims& d, double n, double E, const Rates& r) {
  Work w;
  for (auto [in, out] : block_gemms(d)) w += gemm(n, in, out, E, r);
  return w;
}

Work block_gemms_backward(const BlockDims& d, double n, double E, const Rates& r) {
  Work w;
  for (auto [in, out] : block_gemms(d)) {
    w += gemm(n, out, in, E, r);
    w += gemm_weight_grad(n, in, out, E, r);
  }
  return w;
}

// One block's forward over b rows of T tokens.
Work block_forward(const BlockDims& d, double b, double T, double E, const Rates& r) {
  Work w = block_gemms_forward(d, b * T, E, r);
  w += block_attention(d, b, T, E, r, false);
  w += block_elementwise(d, b, T, E, r, false);
  return w;
}

Work block_backward(const BlockDims& d, double b, double T, double E, const Rates& r) {
  Work w = block_gemms_backward(d, b * T, E, r);
  w += block_attention(d, b, T, E, r, true);
  w += block_elementwise(d, b, T, E, r, true);
  return w;
}

// Final norm, LM head forward and backward, cross-entropy, for n tokens with grads.
Work head_train(const model::ModelConfig& c, double n, double E, const Rates& r, bool cuda) {
  const double C = double(c.hidden_size), V = double(c.vocab_size);
  Work w;
  w += gemm(n, C, V, E, r);
  w += gemm(n, V, C, E, r);
  w += gemm_weight_grad(n, C, V, E, r);
  const double chunk_rows =
      std::max(1.0, double(pipeline::default_ce_chunk_bytes(cuda)) / (kAccBytes * V));
  const double chunks = std::ceil(n / chunk_rows);
  w += roofline(0, 20 * n * V + 6 * E * n * C, r.block_ew_bw, r.peak, r, 15 * chunks);
  return w;
}

// ---- the stream simulation ----

enum Stream { kH2d, kCompute, kD2h, kOptimizer, kNumStreams };

struct Task {
  Stream stream;
  double seconds;
  std::vector<int> deps;
  double end = 0;
};

class StreamSim {
 public:
  int add(Stream s, double seconds, std::vector<int> deps) {
    double start = free_[s];
    for (int d : deps) {
      if (d >= 0) start = std::max(start, tasks_[size_t(d)].end);
    }
    Task t{s, seconds, std::move(deps), start + seconds};
    free_[s] = t.end;
    busy_[s] += seconds;
    tasks_.push_back(std::move(t));
    return int(tasks_.size()) - 1;
  }
  double end(int task) const { return task < 0 ? 0.0 : tasks_[size_t(task)].end; }
  double now() const { return *std::max_element(free_, free_ + kNumStreams); }

 private:
  std::vector<Task> tasks_;
  double free_[kNumStreams] = {0, 0, 0, 0};
  double busy_[kNumStreams] = {0, 0, 0, 0};
};

// Per-stage durations of one training step.
struct StageTimes {
  std::vector<double> load, forward, backward, grads, update;  // by stage index
  double head = 0;                                             // forward + backward, all M
};

// Steady-state step time of the engine's schedule (see the top of the file).
double simulate_train_step(const StageTimes& st, int64_t num_stages, int num_slots,
                           int64_t resident, bool clip, bool cpu_backend) {
  StreamSim sim;
  const int64_t head = num_stages - 1;
  const Stream opt_stream = cpu_backend ? kCompute : kOptimizer;
  std::vector<int> last_update(size_t(num_stages), -1);
  double end_prev = 0, step_s = 0;
  for (int step = 0; step < 3; ++step) {
    std::vector<int> slot_user;  // compute task of each acquisition, in order
    auto acquire = [&](int64_t s, bool forward) {
      const bool is_resident = s < resident;
      if (cpu_backend || (is_resident && !forward)) return -1;
      std::vector<int> deps = {last_update[size_t(s)]};
      if (!is_resident && int(slot_user.size()) >= num_slots) {
        deps.push_back(slot_user[slot_user.size() - size_t(num_slots)]);
      }
      return sim.add(kH2d, st.load[size_t(s)], deps);
    };
    auto compute = [&](int64_t s, double seconds, int load) {
      const int c = sim.add(kCompute, seconds, {load, cpu_backend ? last_update[size_t(s)] : -1});
      if (s >= resident || cpu_backend) slot_user.push_back(c);
      return c;
    };
    std::vector<int> grads(size_t(num_stages), -1);
    for (int64_t s = 0; s < head; ++s) compute(s, st.forward[size_t(s)], acquire(s, true));
    const int head_c = compute(head, st.head, acquire(head, true));
    grads[size_t(head)] = cpu_backend ? head_c : sim.add(kD2h, st.grads[size_t(head)], {head_c});
    if (!clip) {
      last_update[size_t(head)] =
          sim.add(opt_stream, st.update[size_t(head)], {grads[size_t(head)]});
    }
    for (int64_t s = head - 1; s >= 0; --s) {
      const int c = compute(s, st.backward[size_t(s)], acquire(s, false));
      grads[size_t(s)] = cpu_backend ? c : sim.add(kD2h, st.grads[size_t(s)], {c});
      if (!clip)
        last_update[size_t(s)] = sim.add(opt_stream, st.update[size_t(s)], {grads[size_t(s)]});
    }
    if (clip) {
      for (int64_t s = 0; s < num_stages; ++s) {
        last_update[size_t(s)] = sim.add(opt_stream, st.update[size_t(s)], grads);
      }
    }
    const double end = sim.now();
    if (step == 2) step_s = end - end_prev;
    end_prev = end;
  }
  return step_s;
}

// One pass over the stages in order (a decode step, the prefill): stage i loads unless resident
// (i < resident) into slot j mod K of the j-th streamed stage, after that slot's last compute,
// and computes after its load.
double simulate_layer_pass(const std::vector<double>& load, const std::vector<double>& compute,
                           int64_t resident, int num_slots) {
  StreamSim sim;
  std::vector<int> slot_user;
  for (size_t i = 0; i < load.size(); ++i) {
    int l = -1;
    if (int64_t(i) >= resident) {
      std::vector<int> deps;
      if (slot_user.size() >= size_t(num_slots))
        deps.push_back(slot_user[slot_user.size() - size_t(num_slots)]);
      l = sim.add(kH2d, load[i], deps);
    }
    const int c = sim.add(kCompute, compute[i], {l});
    if (int64_t(i) >= resident) slot_user.push_back(c);
  }
  return sim.now();
}

double optimizer_bandwidth(const CpuProfile& cpu, int threads) {
  const double all = cpu.copy_bytes_per_s > 0 ? 2 * cpu.copy_bytes_per_s : cpu.read_bytes_per_s;
  if (threads <= 0 || threads >= cpu.cores || cpu.read_bytes_per_s_1t <= 0) return all;
  // The one-thread read rate scaled by the read-and-write to read ratio of all cores.
  const double per_thread = cpu.read_bytes_per_s_1t * all / std::max(1.0, cpu.read_bytes_per_s);
  return std::min(all, threads * per_thread);
}

DeviceCost device_cost(double busy_s, double step_s, double idle_w, double max_w) {
  DeviceCost d;
  d.busy_s = busy_s;
  d.utilisation = step_s > 0 ? std::clamp(busy_s / step_s, 0.0, 1.0) : 0;
  const double u = d.utilisation;
  d.energy_j = (idle_w + (max_w - idle_w) * u) * step_s * (1 + kLeakageAtFullLoad * u);
  return d;
}

std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", bytes / kGiB);
  return buf;
}

// Sets feasible/binding/violation from the two memory limits.
void check_memory(const HardwareProfile& hw, Prediction* p) {
  const double host_limit = kHostMemoryUsable * hw.cpu.ram_available_bytes;
  const double host_ratio = host_limit > 0 ? p->host_bytes / host_limit : 0;
  double gpu_ratio = 0, gpu_limit = 0;
  if (p->gpu_bytes > 0) {
    gpu_limit = kDeviceMemoryUsable * hw.gpu.memory_bytes;
    gpu_ratio = gpu_limit > 0 ? p->gpu_bytes / gpu_limit : 1e9;
  }
  if (gpu_ratio > host_ratio) {
    p->binding = "GPU memory: " + gib(p->gpu_bytes) + " of " + gib(gpu_limit) + " GiB";
  } else {
    p->binding = "host RAM: " + gib(p->host_bytes) + " of " + gib(host_limit) + " GiB";
  }
  const double worst = std::max(host_ratio, gpu_ratio);
  p->feasible = worst <= 1.0;
  p->violation = p->feasible ? 0.0 : worst - 1.0;
}

void add_phase(Prediction* p, const std::string& name, const Work& w) {
  p->phases.push_back({name, w.flops, w.bytes, w.seconds});
}

}  // namespace

const char* kv_kind_name(KvKind kind) {
  switch (kind) {
    case KvKind::kKivi4:
      return "kivi4";
    case KvKind::kKivi2:
      return "kivi2";
    case KvKind::kFull:
      break;
  }
  return "bf16";
}

BlockWork cpu_block_work(const HardwareProfile& hw, const model::ModelConfig& cfg, int64_t rows,
                         int64_t seq_len, bool bf16) {
  const Rates r = cpu_rates(hw.cpu, bf16);
  const BlockDims d = dims_of(cfg);
  const double E = bf16 ? 2 : 4, b = double(rows), T = double(seq_len);
  BlockWork w;
  w.gemm_s =
      block_gemms_forward(d, b * T, E, r).seconds + block_gemms_backward(d, b * T, E, r).seconds;
  w.elementwise_bytes =
      block_elementwise(d, b, T, E, r, false).bytes + block_elementwise(d, b, T, E, r, true).bytes;
  w.attention_flops =
      block_attention(d, b, T, E, r, false).flops + block_attention(d, b, T, E, r, true).flops;
  return w;
}

Prediction predict_train(const HardwareProfile& hw, const TrainWorkload& w,
                         const TrainSettings& s) {
  const model::ModelConfig& c = w.model;
  const bool gpu = w.use_gpu && hw.gpu.present;
  const bool bf16 = gpu || w.bf16;
  const double E = bf16 ? 2 : 4;
  const double b = double(s.micro_batch), T = double(w.seq_len), M = double(s.grad_accum);
  const pipeline::StagePlan plan = pipeline::plan_stages(c);
  const int64_t num_stages = plan.num_stages();
  const Rates r = gpu ? gpu_rates(hw.gpu) : cpu_rates(hw.cpu, bf16);
  const BlockDims d = dims_of(c);

  Prediction p;
  p.tokens = b * T * M;
  const Work fwd = block_forward(d, b, T, E, r).times(M);
  const Work bwd = block_backward(d, b, T, E, r).times(M);
  const Work recompute = s.keep_activations ? Work{} : fwd;
  const double n = b * T;
  const Work emb_fwd = roofline(0, E * n * double(c.hidden_size), r.rw_bw, r.peak, r, 2).times(M);
  const Work emb_bwd =
      roofline(0, 2 * kAccBytes * n * double(c.hidden_size), r.rw_bw, r.peak, r, 3).times(M);
  const Work head = head_train(c, n, E, r, gpu).times(M);

  // The optimizer, per stage.
  const bool bf16_layout = bf16;
  const double opt_bytes_per_param = (bf16_layout ? 28.0 : 32.0) + (w.clip ? (bf16 ? 2 : 4) : 0);
  const double opt_bw = optimizer_bandwidth(hw.cpu, gpu ? s.optimizer_threads : 0);
  StageTimes st;
  Work opt_total, h2d_total, d2h_total;
  for (int64_t i = 0; i < num_stages; ++i) {
    const double numel = double(plan.stages[size_t(i)].numel);
    const Work opt{0, opt_bytes_per_param * numel,
                   opt_bytes_per_param * numel / opt_bw + 2 * hw.cpu.op_overhead_s};
    opt_total += opt;
    st.update.push_back(opt.seconds);
    double load_bytes = E * numel;
    if (i == plan.head_index() && plan.tied) load_bytes += E * double(c.vocab_size * c.hidden_size);
    const double load_s = gpu ? load_bytes / hw.gpu.h2d_bytes_per_s : 0;
    const double grad_s = gpu ? 2 * numel / hw.gpu.d2h_bytes_per_s : 0;
    st.load.push_back(load_s);
    st.grads.push_back(grad_s);
    if (gpu) {
      // Non-resident blocks and the embedding are loaded twice (forward and backward).
      const double loads = (i == plan.head_index() || i < s.resident_stages) ? 1 : 2;
      h2d_total += Work{0, loads * load_bytes, loads * load_s};
      d2h_total += Work{0, 2 * numel, grad_s};
    }
    const StageKind kind = plan.stages[size_t(i)].kind;
    if (kind == StageKind::kEmbedding) {
      st.forward.push_back(emb_fwd.seconds);
      st.backward.push_back(emb_bwd.seconds);
    } else if (kind == StageKind::kBlock) {
      st.forward.push_back(fwd.seconds);
      st.backward.push_back(recompute.seconds + bwd.seconds);
    } else {
      st.forward.push_back(0);
      st.backward.push_back(0);
    }
  }
  st.head = head.seconds;
  const double L = double(c.num_layers);
  add_phase(&p, "forward", fwd.times(L) += emb_fwd);
  if (!s.keep_activations) add_phase(&p, "recompute", recompute.times(L));
  add_phase(&p, "backward", bwd.times(L) += emb_bwd);
  add_phase(&p, "head", head);
  add_phase(&p, "optimizer", opt_total);
  if (gpu) {
    add_phase(&p, "h2d", h2d_total);
    add_phase(&p, "d2h", d2h_total);
  }
  p.step_s = simulate_train_step(st, num_stages, std::max(2, s.num_slots), s.resident_stages,
                                 w.clip, !gpu);

  // Memory.
  pipeline::ParamStoreOptions so;
  so.working_copy_bf16 = bf16_layout;
  so.grad_regions = !bf16_layout && w.clip;
  pipeline::EngineShape shape;
  shape.batch = s.micro_batch;
  shape.seq_len = w.seq_len;
  shape.micro_batches = s.grad_accum;
  shape.num_slots = s.num_slots;
  shape.keep_activations = s.keep_activations;
  shape.host_checkpoints = s.host_checkpoints;
  const pipeline::EngineMemory em = pipeline::estimate_engine_memory(c, shape, int64_t(E), gpu);
  p.host_bytes = double(pipeline::ParamStore::bytes_needed(plan, so)) + em.host_bytes;
  if (gpu) {
    p.gpu_bytes = em.device_bytes;
    for (int64_t i = 0; i < std::min(s.resident_stages, num_stages); ++i) {
      p.gpu_bytes += E * double(plan.stages[size_t(i)].numel);
    }
  } else {
    p.host_bytes += em.device_bytes;
  }
  check_memory(hw, &p);

  // Energy.
  const double compute_busy = fwd.seconds * L + recompute.seconds * L + bwd.seconds * L +
                              head.seconds + emb_fwd.seconds + emb_bwd.seconds;
  if (gpu) {
    p.gpu = device_cost(compute_busy, p.step_s, hw.gpu.idle_w, hw.gpu.max_w);
    // The launching thread is always busy; the optimizer's threads while it runs.
    const int threads = s.optimizer_threads > 0 ? s.optimizer_threads : hw.cpu.cores;
    const double core_s = p.step_s + opt_total.seconds * threads;
    p.cpu = device_cost(core_s / std::max(1, hw.cpu.cores), p.step_s, hw.cpu.idle_w, hw.cpu.max_w);
  } else {
    p.cpu = device_cost(compute_busy + opt_total.seconds, p.step_s, hw.cpu.idle_w, hw.cpu.max_w);
  }
  p.energy_j = p.cpu.energy_j + p.gpu.energy_j;
  return p;
}

double kv_bytes_per_token_layer(const model::ModelConfig& cfg, const InferSettings& s,
                                int64_t context, bool gpu) {
  (void)gpu;  // the KV pages are fp32 on both backends today (inference/kv_cache.h)
  const double elems = 2.0 * double(cfg.kv_dim());  // K and V
  const double full = elems * 4;
  if (s.kv == KvKind::kFull) return full;
  const int bits = s.kv == KvKind::kKivi4 ? 4 : 2;
  const double window = std::min<double>(double(context), double(s.kv_residual));
  const double packed = std::max(0.0, double(context) - window);
  const double quant =
      elems * inference::kivi_bits_per_element(bits, s.kv_group, s.kv_key_outliers) / 8;
  return context > 0 ? (window * full + packed * quant) / double(context) : full;
}

Prediction predict_infer(const HardwareProfile& hw, const InferWorkload& w,
                         const InferSettings& s) {
  const model::ModelConfig& c = w.model;
  const bool gpu = w.use_gpu && hw.gpu.present;
  const double E = gpu ? 2 : 4;  // the weights-only store: fp32 masters on the CPU
  const Rates r = gpu ? gpu_rates(hw.gpu) : cpu_rates(hw.cpu, false);
  const Rates host = cpu_rates(hw.cpu, false);
  const BlockDims d = dims_of(c);
  const pipeline::StagePlan plan = pipeline::plan_stages(c);
  const double B = double(w.batch), P = double(w.prompt_tokens), N = double(w.new_tokens);
  const double L = double(c.num_layers), C = double(c.hidden_size), V = double(c.vocab_size);
  const double mb = double(std::max<int64_t>(1, std::min(s.micro_batch, w.batch)));
  const double micro = std::ceil(B / mb);
  Prediction p;
  p.tokens = B * N;

  // Prefill: each prompt through each block (forward only), the head on its last position.
  Work prefill = block_forward(d, 1, P, E, r).times(B * L);
  prefill += roofline(0, 2 * 4 * B * P * L * 2 * d.KV, host.rw_bw, host.peak, host,
                      2 * B * L);  // KV writes
  prefill += gemm(1, C, V, E, r).times(B);
  add_phase(&p, "prefill", prefill);

  // One decode step at the mean context.
  const double ctx = P + std::max(0.0, N - 1) / 2;  // the mean over the decode steps
  Work step_gemm;
  for (auto [in, out] : block_gemms(d)) step_gemm += gemm(mb, in, out, E, r);
  step_gemm +=
      roofline(0, E * mb * (10 * C + 4 * d.Q + 6 * d.KV + 3 * d.F), r.block_ew_bw, r.peak, r, 14);
  step_gemm = step_gemm.times(micro * L);
  const double kv_bytes = kv_bytes_per_token_layer(c, s, int64_t(ctx), gpu) * ctx;
  // Unpacking codes costs about as much as reading them twice more (shift, mask, scale per code).
  const double unpack = s.kv == KvKind::kFull ? 1.0 : 1.5;
  const Work step_attn = roofline(4 * d.Q * ctx * B * L, unpack * kv_bytes * B * L, host.read_bw,
                                  host.peak, host, 3 * micro * L);
  Work step_head = gemm(mb, C, V, E, r).times(micro);
  step_head +=
      roofline(0, 3 * 4 * B * V, host.rw_bw, host.peak, host, 4 * B);  // sampling over the logits
  // The first new token comes from the prefill's logits: N - 1 decode steps.
  const double decode_steps = std::max(0.0, N - 1);
  add_phase(&p, "decode gemm", step_gemm.times(decode_steps));
  add_phase(&p, "decode attention", step_attn.times(decode_steps));
  add_phase(&p, "decode head", step_head.times(decode_steps));

  const double prefill_compute_s = prefill.seconds;
  // Stages on the device: resident_stages (-1: all that fit next to the slots).
  const double per_block = E * double(plan.stages[1].numel);
  const double head_bytes =
      E * double(plan.stages.back().numel + (plan.tied ? c.vocab_size * c.hidden_size : 0));
  double step_s = 0;
  if (gpu) {
    const double slots = std::max(2, s.num_slots) * E * double(plan.slot_numel);
    const double acts = mb * (4 * C + 2 * d.F + V) * 4 * 4;
    const double room = kDeviceMemoryUsable * hw.gpu.memory_bytes - slots - acts;
    int64_t resident = s.resident_stages;
    if (resident < 0) {
      resident = 0;
      double used = 0;
      for (const auto& stage : plan.stages) {
        if (used + E * double(stage.numel) > room) break;
        used += E * double(stage.numel);
        ++resident;
      }
    }
    resident = std::min<int64_t>(resident, plan.num_stages());
    double resident_bytes = 0;
    for (int64_t i = 0; i < resident; ++i)
      resident_bytes += E * double(plan.stages[size_t(i)].numel);
    p.gpu_bytes = slots + acts + resident_bytes;
    // Per decode step (and for the prefill): stream the others while the previous stage
    // computes.
    std::vector<double> load, decode_compute, prefill_compute;
    const double block_s = (step_gemm.seconds + step_attn.seconds) / L;
    for (const auto& stage : plan.stages) {
      const bool block = stage.kind == StageKind::kBlock, is_head = stage.kind == StageKind::kHead;
      load.push_back(block     ? per_block / hw.gpu.h2d_bytes_per_s
                     : is_head ? head_bytes / hw.gpu.h2d_bytes_per_s
                               : 0);
      decode_compute.push_back(block ? block_s : is_head ? step_head.seconds : 0);
      prefill_compute.push_back(block ? prefill.seconds / L : 0);
    }
    step_s = simulate_layer_pass(load, decode_compute, resident, s.num_slots);
    prefill.seconds = simulate_layer_pass(load, prefill_compute, resident, s.num_slots);
    double h2d_s = 0;
    for (size_t i = size_t(resident); i < load.size(); ++i) h2d_s += load[i];
    add_phase(&p, "h2d", Work{0, h2d_s * hw.gpu.h2d_bytes_per_s, h2d_s}.times(decode_steps));
  } else {
    step_s = step_gemm.seconds + step_attn.seconds + step_head.seconds;
  }
  p.prefill_s = prefill.seconds;
  p.decode_s = decode_steps * step_s;
  p.step_s = p.prefill_s + p.decode_s;

  // Memory: the weights-only store and the caches at their final length.
  pipeline::ParamStoreOptions so;
  so.optimizer_state = false;
  so.working_copy_bf16 = gpu;
  const double kv_final = kv_bytes_per_token_layer(c, s, int64_t(P + N), gpu) * (P + N) * L * B;
  p.host_bytes = double(pipeline::ParamStore::bytes_needed(plan, so)) + kv_final +
                 mb * (V + 8 * C + 4 * d.F) * 4 + B * V * 4;
  check_memory(hw, &p);

  const double compute_busy =
      prefill_compute_s + decode_steps * (step_gemm.seconds + step_head.seconds);
  if (gpu) {
    p.gpu = device_cost(compute_busy, p.step_s, hw.gpu.idle_w, hw.gpu.max_w);
    p.cpu = device_cost(
        (p.step_s + decode_steps * step_attn.seconds * (hw.cpu.cores - 1)) / hw.cpu.cores, p.step_s,
        hw.cpu.idle_w, hw.cpu.max_w);
  } else {
    p.cpu = device_cost(p.step_s, p.step_s, hw.cpu.idle_w, hw.cpu.max_w);
  }
  p.energy_j = p.cpu.energy_j + p.gpu.energy_j;
  return p;
}

}  // namespace ramstream::planner
