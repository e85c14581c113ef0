// Whole-model forward+backward: ramstream's hand-written autograd against the same model under
// libtorch autograd (same weights, batch, dtype and thread count), measured in one process.
//
//   build/bin/autograd_bench --json            # B=4, T=256, ~19M-parameter Llama-style model
//   build/bin/autograd_bench --batch 2 --seq 128 --iters 5
//
// Modes: `saved` keeps the activations its backward needs (BlockActs per layer); `recompute`
// keeps only block inputs and recomputes each block before its backward (the engine's mode).
// The peer keeps what autograd saves. Memory is what libtorch allocates during one step beyond
// the parameters and grads (our workspace included), counted by a wrapping CPU allocator.
// With --json the last stdout line is one JSON object.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "autograd/model.h"
#include "autograd/reference.h"
#include "bench/memory_counter.h"
#include "util/bench_flags.h"
#include "util/runtime_defaults.h"

namespace rs = ramstream;
using rs::autograd::ActivationMode;

namespace {

rs::model::ModelConfig bench_config() {
  rs::model::ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = 8192;
  c.hidden_size = 384;
  c.intermediate_size = 1024;
  c.num_layers = 8;
  c.num_heads = 6;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.max_position_embeddings = 4096;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  return c;
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct Measure {
  std::vector<double> ms;
  int64_t peak_bytes = 0;
  double loss = 0;
  double median() const {
    std::vector<double> v = ms;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  }
};

}  // namespace

int main(int argc, char** argv) {
  ramstream::apply_runtime_defaults(argv);  // may re-execute with OMP_* / OPENBLAS_* defaults
  const ramstream::BenchFlags flags = ramstream::parse_bench_flags(
      argc, argv, "autograd_bench", {{"batch", 4}, {"seq", 256}, {"iters", 3}});
  rs::bench::MemoryCounter& mem = rs::bench::MemoryCounter::install();
  const rs::model::ModelConfig cfg = bench_config();
  const int64_t B = flags.value("batch"), T = flags.value("seq");

  // Weights ~ N(0, 0.02^2), norms 1: a freshly initialised model.
  rs::model::ModelParams params = rs::model::allocate_model_params(cfg, at::kFloat);
  rs::model::init_params_normal(params, 0.02, 0);
  const at::Tensor ids = at::randint(0, cfg.vocab_size, {B, T}, at::kLong);
  const at::Tensor targets = rs::autograd::next_token_targets(ids);
  const double scale = 1.0 / double(rs::autograd::count_targets(targets));

  rs::model::ModelParams grads = rs::model::allocate_model_params(cfg, at::kFloat);
  rs::model::ModelParams leaves =
      rs::autograd::reference::make_leaf_params(params, at::kFloat, cfg);
  const rs::autograd::RopeTables rope = rs::autograd::make_rope_tables(cfg, T, at::kFloat);

  auto ours = [&](ActivationMode mode, Measure& m) {
    mem.reset_peak();
    const int64_t base = mem.current();
    const double t0 = now_ms();
    rs::autograd::ModelWorkspace ws(cfg, B, T, at::kFloat, mode);
    m.loss = rs::autograd::model_forward_backward(params, grads, ids, targets, scale, ws).loss_sum *
             scale;
    m.ms.push_back(now_ms() - t0);
    m.peak_bytes = std::max(m.peak_bytes, mem.peak() - base);
  };
  auto peer = [&](Measure& m) {
    rs::autograd::reference::zero_grads(
        leaves);  // grads stay allocated: not counted as step memory
    mem.reset_peak();
    const int64_t base = mem.current();
    const double t0 = now_ms();
    at::Tensor loss =
        rs::autograd::reference::model_loss_sum(leaves, ids, targets, rope, cfg) * scale;
    loss.backward();
    m.loss = loss.item<double>();
    loss = at::Tensor();
    m.ms.push_back(now_ms() - t0);
    m.peak_bytes = std::max(m.peak_bytes, mem.peak() - base);
  };

  Measure warm, m_peer, m_saved, m_recompute;
  // Warm-up: allocates the peer's .grad tensors and faults in every buffer once.
  peer(warm);
  ours(ActivationMode::kSaved, warm);
  ours(ActivationMode::kRecompute, warm);
  // Interleaved so that drift of the machine affects all three alike.
  for (int64_t i = 0; i < flags.value("iters"); ++i) {
    peer(m_peer);
    ours(ActivationMode::kSaved, m_saved);
    ours(ActivationMode::kRecompute, m_recompute);
  }

  const double mib = 1024.0 * 1024.0;
  std::printf("autograd_bench: %lld params, B=%lld T=%lld, fp32, at::get_num_threads()=%d\n",
              static_cast<long long>(params.numel()), static_cast<long long>(B),
              static_cast<long long>(T), at::get_num_threads());
  std::printf("%-26s %10s %14s %10s\n", "implementation", "ms/step", "step MiB", "loss");
  auto row = [&](const char* name, const Measure& m) {
    std::printf("%-26s %10.1f %14.1f %10.5f\n", name, m.median(), double(m.peak_bytes) / mib,
                m.loss);
  };
  row("libtorch autograd", m_peer);
  row("ramstream saved", m_saved);
  row("ramstream recompute", m_recompute);
  const double time_ratio = m_saved.median() / m_peer.median();
  const double mem_ratio = double(m_saved.peak_bytes) / double(m_peer.peak_bytes);
  const double re_time_ratio = m_recompute.median() / m_peer.median();
  const double re_mem_ratio = double(m_recompute.peak_bytes) / double(m_peer.peak_bytes);
  std::printf("saved:     time ratio %.3f, peak mem ratio %.3f\n", time_ratio, mem_ratio);
  std::printf("recompute: time ratio %.3f, peak mem ratio %.3f\n", re_time_ratio, re_mem_ratio);
  if (flags.json) {
    std::printf(
        "{\"bench\":\"autograd\",\"params\":%lld,\"batch\":%lld,\"seq\":%lld,\"iters\":%lld,"
        "\"threads\":%d,\"peer_ms\":%.2f,\"saved_ms\":%.2f,\"recompute_ms\":%.2f,"
        "\"peer_step_mib\":%.2f,\"saved_step_mib\":%.2f,\"recompute_step_mib\":%.2f,"
        "\"time_ratio\":%.4f,\"peak_mem_ratio\":%.4f,\"recompute_time_ratio\":%.4f,"
        "\"recompute_peak_mem_ratio\":%.4f}\n",
        static_cast<long long>(params.numel()), static_cast<long long>(B),
        static_cast<long long>(T), static_cast<long long>(flags.value("iters")),
        at::get_num_threads(), m_peer.median(), m_saved.median(), m_recompute.median(),
        m_peer.peak_bytes / mib, m_saved.peak_bytes / mib, m_recompute.peak_bytes / mib, time_ratio,
        mem_ratio, re_time_ratio, re_mem_ratio);
  }
  return 0;
}
