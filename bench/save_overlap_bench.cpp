// What an async training-state checkpoint costs the step it overlaps: a ~50M-parameter
// Llama-style model (the train_step_bench one) on the CPU backend, median step time without a
// save against the step during which an AsyncCheckpointWriter saves the same state (HF bf16
// weights + fp32 master, m, v) to a temp folder on local disk, and a synchronous save for scale.
//
//   build/bin/save_overlap_bench --json [--batch 4] [--seq 256] [--iters 3]
//
// Two store layouts: the grad ring (no grad regions, 12 B/param: the backward waits for the
// optimizer, so the gate can hold it back) and fp32 grad regions (16 B/param: only the updates
// wait). Keys of the last stdout line (with --json): save_overhead_ratio (step with save / step
// without, grad ring), grad_regions_save_overhead_ratio, save_s (async save, start to commit),
// sync_save_s, bytes_written, save_gbps (bytes_written / save_s), gate_wait_s (time the
// optimizer waited for the writer during the step).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <unistd.h>

#include "bench/bench_model.h"
#include "checkpoint/train_state.h"
#include "util/bench_flags.h"
#include "util/runtime_defaults.h"

namespace rs = ramstream;
namespace fs = std::filesystem;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Result {
  double step_ms = 0, step_with_save_ms = 0, save_s = 0, sync_save_s = 0, gate_wait_s = 0;
  uint64_t bytes = 0;
  int64_t params = 0;
};

void check(const rs::Status& st) {
  if (!st.ok()) {
    std::fprintf(stderr, "save_overlap_bench: %s\n", st.error().message.c_str());
    std::exit(1);
  }
}

Result run(bool grad_regions, int64_t batch, int64_t seq, int64_t iters, const std::string& dir) {
  const rs::model::ModelConfig cfg = rs::bench::model_50m_config();
  rs::model::ModelParams init = rs::model::allocate_model_params(cfg, at::kFloat);
  rs::model::init_params_normal(init, 0.02, 0);
  at::manual_seed(1);
  const at::Tensor ids = at::randint(0, cfg.vocab_size, {batch, seq}, at::kLong);
  const at::Tensor targets = rs::autograd::next_token_targets(ids);

  auto dev = rs::pipeline::make_cpu_device({});
  rs::pipeline::ParamStore store(rs::pipeline::plan_stages(cfg), cfg,
                                 {/*working_copy_bf16=*/false, grad_regions});
  store.load(init);
  rs::pipeline::EngineOptions o;
  o.adamw.lr = 1e-4f;
  rs::pipeline::Engine engine(*dev, store, o, batch, seq);
  rs::checkpoint::AsyncCheckpointWriter writer(engine, store);
  rs::checkpoint::CheckpointOptions opts;
  opts.keep_last_n = 1;  // bounded disk use
  const nlohmann::json trainer = {{"bench", true}};

  Result r;
  r.params = store.num_params();
  engine.train_step({ids}, {targets});  // warm-up: first-touch of buffers
  engine.synchronize();
  std::vector<double> plain, with_save, save, gate;
  for (int64_t i = 0; i < iters; ++i) {
    double t0 = now_s();
    engine.train_step({ids}, {targets});
    engine.synchronize();
    plain.push_back(now_s() - t0);

    t0 = now_s();
    writer.start(dir, engine.step(), trainer, "bench", opts);
    engine.train_step({ids}, {targets});
    engine.synchronize();
    with_save.push_back(now_s() - t0);
    check(writer.wait());
    save.push_back(writer.last_stats().seconds);
    gate.push_back(writer.last_stats().gate_wait_seconds);
    r.bytes = writer.last_stats().bytes;
  }
  // For scale: the same save with training stopped.
  rs::checkpoint::CheckpointStats sync;
  check(rs::checkpoint::save_checkpoint(dir, engine.step(), store, trainer, "bench", opts, &sync));
  r.sync_save_s = sync.seconds;
  r.step_ms = median(plain) * 1e3;
  r.step_with_save_ms = median(with_save) * 1e3;
  r.save_s = median(save);
  r.gate_wait_s = median(gate);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  ramstream::apply_runtime_defaults(argv);  // may re-execute with OMP_* / OPENBLAS_* defaults
  const rs::BenchFlags flags = rs::parse_bench_flags(argc, argv, "save_overlap_bench",
                                                     {{"batch", 4}, {"seq", 256}, {"iters", 3}});
  const int64_t B = flags.value("batch"), T = flags.value("seq"), iters = flags.value("iters");
  const std::string dir =
      (fs::temp_directory_path() / ("save_overlap_bench_" + std::to_string(::getpid()))).string();
  const Result ring = run(/*grad_regions=*/false, B, T, iters, dir);
  fs::remove_all(dir);
  const Result regions = run(/*grad_regions=*/true, B, T, iters, dir);
  fs::remove_all(dir);

  std::printf(
      "save_overlap_bench: %.1fM params, B=%lld T=%lld, fp32 CPU, median of %lld, "
      "checkpoint %.1f MB in %s\n",
      double(ring.params) / 1e6, static_cast<long long>(B), static_cast<long long>(T),
      static_cast<long long>(iters), double(ring.bytes) / 1e6, fs::temp_directory_path().c_str());
  std::printf("%-22s %9s %15s %7s %8s %11s %10s %9s\n", "store", "step ms", "step+save ms", "ratio",
              "save s", "sync save s", "gate wait s", "GB/s");
  for (const auto& [name, r] : {std::make_pair("grad ring (12 B/p)", ring),
                                std::make_pair("grad regions (16 B/p)", regions)}) {
    std::printf("%-22s %9.1f %15.1f %7.3f %8.3f %11.3f %10.3f %9.3f\n", name, r.step_ms,
                r.step_with_save_ms, r.step_with_save_ms / r.step_ms, r.save_s, r.sync_save_s,
                r.gate_wait_s, double(r.bytes) / r.save_s / 1e9);
  }
  if (flags.json) {
    std::printf(
        "{\"bench\":\"save_overlap\",\"params\":%lld,\"batch\":%lld,\"seq\":%lld,\"iters\":%lld,"
        "\"step_ms\":%.1f,\"step_with_save_ms\":%.1f,\"save_overhead_ratio\":%.4f,"
        "\"save_s\":%.3f,\"sync_save_s\":%.3f,\"gate_wait_s\":%.3f,\"bytes_written\":%llu,"
        "\"save_gbps\":%.3f,\"grad_regions_step_ms\":%.1f,"
        "\"grad_regions_step_with_save_ms\":%.1f,\"grad_regions_save_overhead_ratio\":%.4f,"
        "\"grad_regions_save_s\":%.3f}\n",
        static_cast<long long>(ring.params), static_cast<long long>(B), static_cast<long long>(T),
        static_cast<long long>(iters), ring.step_ms, ring.step_with_save_ms,
        ring.step_with_save_ms / ring.step_ms, ring.save_s, ring.sync_save_s, ring.gate_wait_s,
        static_cast<unsigned long long>(ring.bytes), double(ring.bytes) / ring.save_s / 1e9,
        regions.step_ms, regions.step_with_save_ms, regions.step_with_save_ms / regions.step_ms,
        regions.save_s);
  }
  return 0;
}
