// One training step of a ~50M-parameter Llama-style model on the CPU: the streaming engine
// (CPU backend: slots, copy threads, CPU AdamW overlapped) against a plain libtorch step (autograd
// keeping every activation + torch::optim::AdamW), same weights and batch, in one run.
//
//   build/bin/train_step_bench --json [--batch 4] [--seq 256] [--iters 2]
//
// Each configuration runs in a child process (fork) so that its peak RSS (VmHWM) is its own.
// Keys of the last stdout line (with --json): time_ratio (streamed recompute / plain),
// keep_time_ratio (streamed with kept activations / plain), peak_rss_ratio (streamed recompute /
// plain), host_bytes_per_param (streamed: persistent store + grad staging ring per parameter).
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/optim/adamw.h>

#include "autograd/reference.h"
#include "bench/bench_model.h"
#include "pipeline/engine.h"
#include "util/bench_flags.h"
#include "util/runtime_defaults.h"

namespace rs = ramstream;

namespace {

struct Args {
  int64_t batch, seq, iters;
};

rs::model::ModelParams init_params(const rs::model::ModelConfig& cfg) {
  rs::model::ModelParams p = rs::model::allocate_model_params(cfg, at::kFloat);
  rs::model::init_params_normal(p, 0.02, 0);
  return p;
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t vm_hwm_kib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atoll(line.c_str() + 6);
  }
  return -1;
}

struct PhaseResult {
  double ms = 0;  // median step time
  double peak_rss_mib = 0;
  double loss = 0;
  double bytes_per_param = 0;
  int64_t params = 0;
};

enum class Phase { kPlain, kStreamedRecompute, kStreamedKeep };

PhaseResult run_phase(Phase phase, const Args& a) {
  const rs::model::ModelConfig cfg = rs::bench::model_50m_config();
  const rs::model::ModelParams init = init_params(cfg);
  at::manual_seed(1);
  const at::Tensor ids = at::randint(0, cfg.vocab_size, {a.batch, a.seq}, at::kLong);
  const at::Tensor targets = rs::autograd::next_token_targets(ids);
  const double scale = 1.0 / double(rs::autograd::count_targets(targets));
  std::vector<double> times;
  PhaseResult r;
  r.params = init.numel();
  if (phase == Phase::kPlain) {
    rs::model::ModelParams leaves =
        rs::autograd::reference::make_leaf_params(init, at::kFloat, cfg);
    std::vector<at::Tensor> list = {leaves.embedding, leaves.final_norm};
    for (const at::Tensor& f : leaves.block_flat) list.push_back(f);
    torch::optim::AdamW opt(list, torch::optim::AdamWOptions(1e-4));
    const rs::autograd::RopeTables rope = rs::autograd::make_rope_tables(cfg, a.seq, at::kFloat);
    for (int64_t i = 0; i <= a.iters; ++i) {
      const double t0 = now_ms();
      opt.zero_grad();
      at::Tensor loss =
          rs::autograd::reference::model_loss_sum(leaves, ids, targets, rope, cfg) * scale;
      loss.backward();
      opt.step();
      r.loss = loss.item<double>();
      if (i > 0) times.push_back(now_ms() - t0);  // the first step also allocates Adam state
    }
  } else {
    auto dev = rs::pipeline::make_cpu_device({});
    rs::pipeline::ParamStore store(rs::pipeline::plan_stages(cfg), cfg,
                                   {/*working_copy_bf16=*/false, /*grad_regions=*/false});
    store.load(init);
    rs::pipeline::EngineOptions o;
    o.adamw.lr = 1e-4f;
    o.activations = phase == Phase::kStreamedKeep ? rs::autograd::ActivationMode::kSaved
                                                  : rs::autograd::ActivationMode::kRecompute;
    rs::pipeline::Engine engine(*dev, store, o, a.batch, a.seq);
    for (int64_t i = 0; i <= a.iters; ++i) {
      const double t0 = now_ms();
      r.loss = engine.train_step({ids}, {targets}).loss();
      engine.synchronize();
      if (i > 0) times.push_back(now_ms() - t0);
    }
    r.bytes_per_param =
        double(store.persistent_bytes() + engine.host_bytes()) / double(store.num_params());
  }
  std::sort(times.begin(), times.end());
  r.ms = times[times.size() / 2];
  r.peak_rss_mib = double(vm_hwm_kib()) / 1024.0;
  return r;
}

// Runs a phase in a child process and reads its result back through a pipe.
PhaseResult run_isolated(Phase phase, const Args& a) {
  int fd[2];
  if (pipe(fd) != 0) {
    std::perror("pipe");
    std::exit(1);
  }
  const pid_t pid = fork();
  if (pid == 0) {
    close(fd[0]);
    const PhaseResult r = run_phase(phase, a);
    if (write(fd[1], &r, sizeof r) != static_cast<ssize_t>(sizeof r)) _exit(1);
    _exit(0);
  }
  close(fd[1]);
  PhaseResult r;
  const ssize_t got = read(fd[0], &r, sizeof r);
  close(fd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (got != static_cast<ssize_t>(sizeof r) || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "train_step_bench: phase %d failed\n", static_cast<int>(phase));
    std::exit(1);
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  ramstream::apply_runtime_defaults(argv);  // may re-execute with OMP_* / OPENBLAS_* defaults
  const ramstream::BenchFlags flags = ramstream::parse_bench_flags(
      argc, argv, "train_step_bench", {{"batch", 4}, {"seq", 256}, {"iters", 2}});
  const Args a{flags.value("batch"), flags.value("seq"), flags.value("iters")};
  // Nothing touches libtorch, OpenBLAS or TBB in the parent before the children fork.
  const PhaseResult plain = run_isolated(Phase::kPlain, a);
  const PhaseResult streamed = run_isolated(Phase::kStreamedRecompute, a);
  const PhaseResult keep = run_isolated(Phase::kStreamedKeep, a);
  const int64_t params = plain.params;
  std::printf("train_step_bench: %.1fM params, B=%lld T=%lld, fp32 CPU, median of %lld steps\n",
              double(params) / 1e6, static_cast<long long>(a.batch), static_cast<long long>(a.seq),
              static_cast<long long>(a.iters));
  std::printf("%-34s %10s %14s %10s\n", "configuration", "ms/step", "peak RSS MiB", "loss");
  std::printf("%-34s %10.1f %14.1f %10.5f\n", "plain libtorch (autograd + AdamW)", plain.ms,
              plain.peak_rss_mib, plain.loss);
  std::printf("%-34s %10.1f %14.1f %10.5f\n", "streamed, recompute", streamed.ms,
              streamed.peak_rss_mib, streamed.loss);
  std::printf("%-34s %10.1f %14.1f %10.5f\n", "streamed, activations kept", keep.ms,
              keep.peak_rss_mib, keep.loss);
  const double time_ratio = streamed.ms / plain.ms;
  const double keep_ratio = keep.ms / plain.ms;
  const double rss_ratio = streamed.peak_rss_mib / plain.peak_rss_mib;
  std::printf("time ratio %.3f, keep time ratio %.3f, peak RSS ratio %.3f, host bytes/param %.2f\n",
              time_ratio, keep_ratio, rss_ratio, streamed.bytes_per_param);
  if (flags.json) {
    std::printf(
        "{\"bench\":\"train_step\",\"params\":%lld,\"batch\":%lld,\"seq\":%lld,\"iters\":%lld,"
        "\"plain_ms\":%.1f,\"streamed_ms\":%.1f,\"keep_ms\":%.1f,\"plain_peak_rss_mib\":%.1f,"
        "\"streamed_peak_rss_mib\":%.1f,\"keep_peak_rss_mib\":%.1f,\"time_ratio\":%.4f,"
        "\"keep_time_ratio\":%.4f,\"peak_rss_ratio\":%.4f,\"host_bytes_per_param\":%.3f}\n",
        static_cast<long long>(params), static_cast<long long>(a.batch),
        static_cast<long long>(a.seq), static_cast<long long>(a.iters), plain.ms, streamed.ms,
        keep.ms, plain.peak_rss_mib, streamed.peak_rss_mib, keep.peak_rss_mib, time_ratio,
        keep_ratio, rss_ratio, streamed.bytes_per_param);
  }
  return 0;
}
