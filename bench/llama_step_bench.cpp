// One streamed training step at Llama-3-8B dimensions: a few blocks of hidden 4096 / MLP 14336 /
// 32 query and 8 key-value heads of 128, the real 128256-token embedding and LM head, bf16
// compute, rows of T=4096 tokens, 4 micro-batches (16384 tokens per step), AdamW with clipping
// on the CPU. Prints what the step reaches against ceilings measured in the same run:
//   - tokens/s and model TFLOP/s (model/flops.h: 6 x matmul params + attention; recompute not
//     counted), MFU against the bf16 GEMM rate that pipeline/gemm_probe.h measures on the device;
//   - load/compute overlap and the compute stream's idle share, from the engine's timeline;
//   - H2D GB/s while weights load, against the pinned host->device copy rate measured here.
//
//   build-gpu/bin/llama_step_bench --json [--layers 4] [--seq 4096] [--micro 4] [--steps 3]
//   build/bin/llama_step_bench --device-cpu 1 --hidden 64 ...   (a CPU smoke run, tiny dims)
//
// The last stdout line (with --json) is one JSON object with every figure.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "model/flops.h"
#include "pipeline/engine.h"
#include "pipeline/gemm_probe.h"
#include "util/bench_flags.h"
#include "util/runtime_defaults.h"

namespace rs = ramstream;

namespace {

rs::model::ModelConfig llama_config(const rs::BenchFlags& f) {
  rs::model::ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = f.value("vocab");
  c.hidden_size = f.value("hidden");
  c.intermediate_size = f.value("ffn");
  c.num_layers = f.value("layers");
  c.num_heads = f.value("heads");
  c.num_kv_heads = f.value("kv-heads");
  c.head_dim = f.value("head-dim");
  c.max_position_embeddings = std::max<int64_t>(8192, f.value("seq"));
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  c.tie_word_embeddings = false;
  return c;
}

// Fills the masters with N(0, 0.02^2) (norms 1), generated on `device` (fast on a GPU) and
// copied into the store region by region.
void init_store(rs::pipeline::ParamStore& store, const at::Device& device) {
  at::manual_seed(7);
  rs::model::ModelParams p = store.master_params();
  rs::model::for_each_param(p, [&](const std::string& name, at::Tensor& t) {
    if (name.find("norm") != std::string::npos) {
      t.fill_(1.0);
      return;
    }
    t.copy_(at::randn(t.sizes(), at::TensorOptions().dtype(at::kFloat).device(device)) * 0.02);
  });
  store.refresh_working_copies();
}

// Host->device rate of one large copy from pinned memory, best of 5, through the engine's own
// device abstraction.
double pinned_h2d_gbs(rs::pipeline::Device& dev, int64_t bytes) {
  at::Tensor host = dev.alloc_host(bytes, at::kByte);
  at::Tensor dst = dev.alloc(bytes, at::kByte);
  std::unique_ptr<rs::pipeline::Stream> s = dev.new_stream("probe");
  std::unique_ptr<rs::pipeline::Event> a = dev.new_event(true), b = dev.new_event(true);
  double best = 0;
  for (int i = 0; i < 6; ++i) {
    a->record(*s);
    s->copy(dst.data_ptr(), host.data_ptr(), static_cast<size_t>(bytes));
    b->record(*s);
    b->synchronize();
    const double us = b->elapsed_us(*a);
    if (i > 0 && us > 0) best = std::max(best, double(bytes) / us / 1e3);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  ramstream::apply_runtime_defaults(argv);  // may re-execute with OMP_* / OPENBLAS_* defaults
  const rs::BenchFlags f = rs::parse_bench_flags(argc, argv, "llama_step_bench",
                                                 {{"layers", 4},
                                                  {"hidden", 4096},
                                                  {"ffn", 14336},
                                                  {"heads", 32},
                                                  {"kv-heads", 8},
                                                  {"head-dim", 128},
                                                  {"vocab", 128256},
                                                  {"seq", 4096},
                                                  {"batch", 1},
                                                  {"micro", 4},
                                                  {"steps", 3},
                                                  {"slots", 2},
                                                  {"device-cpu", 0},
                                                  {"ce-rows", 1024}});
  const bool cpu = f.value("device-cpu") != 0;
  if (!cpu && !rs::pipeline::cuda_device_available()) {
    std::fprintf(stderr, "llama_step_bench: no CUDA device (pass --device-cpu 1 for a CPU run)\n");
    return 2;
  }
  const rs::model::ModelConfig cfg = llama_config(f);
  const int64_t B = f.value("batch"), T = f.value("seq"), M = f.value("micro");
  const int64_t steps = std::max<int64_t>(2, f.value("steps"));  // one warm-up + timed
  rs::pipeline::CpuDeviceOptions co;
  co.compute_dtype = at::kBFloat16;
  std::unique_ptr<rs::pipeline::Device> dev =
      cpu ? rs::pipeline::make_cpu_device(co) : rs::pipeline::make_cuda_device(0);

  const rs::pipeline::StagePlan plan = rs::pipeline::plan_stages(cfg);
  rs::pipeline::ParamStoreOptions so;
  so.working_copy_bf16 = true;
  so.pin = !cpu;
  const auto t_setup = std::chrono::steady_clock::now();
  rs::pipeline::ParamStore store(plan, cfg, so);
  init_store(store, dev->torch_device());
  rs::pipeline::EngineOptions eo;
  eo.num_slots = static_cast<int>(f.value("slots"));
  eo.max_grad_norm = 1.0;
  eo.adamw.lr = 1e-5f;
  eo.ce_chunk_rows = f.value("ce-rows");
  eo.record_timeline = true;
  rs::pipeline::Engine engine(*dev, store, eo, B, T);
  const double setup_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_setup).count();
  std::printf(
      "llama_step_bench: %s, %lld blocks + %lld-token head, %.2fB params (%.1f GiB store), "
      "B=%lld T=%lld x %lld micro-batches, setup %.1f s\n",
      dev->describe().c_str(), (long long)cfg.num_layers, (long long)cfg.vocab_size,
      double(store.num_params()) / 1e9, double(store.persistent_bytes()) / (1 << 30), (long long)B,
      (long long)T, (long long)M, setup_s);

  at::manual_seed(8);
  std::vector<at::Tensor> ids, targets;
  for (int64_t m = 0; m < M; ++m) {
    ids.push_back(at::randint(0, cfg.vocab_size, {B, T}, at::kLong));
    targets.push_back(rs::autograd::next_token_targets(ids.back()));
  }
  // Warm-up (allocations, cuBLAS plans), then the timed steps from one synchronized point to
  // the next: the optimizer's updates of the last step are inside the time.
  engine.train_step(ids, targets).loss();
  engine.synchronize();
  engine.clear_timeline();
  const int64_t loaded0 = engine.weight_bytes_loaded();
  const auto t0 = std::chrono::steady_clock::now();
  double loss = 0;
  for (int64_t s = 1; s < steps; ++s) loss = engine.train_step(ids, targets).loss();
  engine.synchronize();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
                      double(steps - 1);
  const std::vector<rs::pipeline::TimelineEvent> tl = engine.timeline();

  const double tokens = double(B * T * M);
  const double tok_s = tokens / secs;
  const double flops = rs::model::training_flops_per_token(cfg, T) * tok_s;
  rs::Result<rs::pipeline::GemmRate> peak = rs::pipeline::probe_gemm_rate(
      dev->torch_device(), at::kBFloat16,
      cpu ? rs::pipeline::GemmProbeOptions{512, 2, 0.3} : rs::pipeline::GemmProbeOptions{});
  const double peak_flops = peak.ok() ? peak.value().flops_per_s : 0;
  // Weight loads: bytes over the time the copy stream spent in them.
  double load_us = 0;
  {
    std::vector<double> begin;
    for (const auto& e : tl) {
      if (e.stream != "h2d") continue;
      if (e.what == "load_begin") begin.push_back(e.t_us);
      if (e.what == "load_end" && !begin.empty()) {
        load_us += e.t_us - begin.front();
        begin.erase(begin.begin());
      }
    }
  }
  const double loaded_per_step = double(engine.weight_bytes_loaded() - loaded0) / double(steps - 1);
  const double h2d_gbs = load_us > 0 ? loaded_per_step * double(steps - 1) / load_us / 1e3 : 0;
  const double pinned_gbs = pinned_h2d_gbs(*dev, cpu ? (64 << 20) : (int64_t{1} << 30));
  const double overlap = rs::pipeline::load_compute_overlap(tl);
  const double idle = rs::pipeline::compute_idle_fraction(tl);

  std::printf("  step %.1f ms, %.0f tokens/s, loss %.4f\n", secs * 1e3, tok_s, loss);
  std::printf("  model %.1f TFLOP/s; bf16 GEMM peak %s -> MFU %.1f%%\n", flops / 1e12,
              peak.ok() ? peak.value().describe().c_str() : peak.error().message.c_str(),
              peak_flops > 0 ? 100 * flops / peak_flops : 0.0);
  std::printf("  load/compute overlap %.2f, compute idle %.1f%% of the step\n", overlap,
              100 * idle);
  std::printf("  H2D %.1f GB/s during loads (%.2f GB per step) vs pinned peak %.1f GB/s (%.0f%%)\n",
              h2d_gbs, loaded_per_step / 1e9, pinned_gbs,
              pinned_gbs > 0 ? 100 * h2d_gbs / pinned_gbs : 0.0);
  std::printf("  device memory %.2f GiB (engine buffers)\n",
              double(engine.device_bytes()) / (1 << 30));
  if (f.json) {
    std::printf(
        "{\"bench\":\"llama_step\",\"device\":\"%s\",\"layers\":%lld,\"seq\":%lld,"
        "\"tokens_per_step\":%.0f,\"step_ms\":%.2f,\"tokens_per_s\":%.1f,\"tflops\":%.3f,"
        "\"gemm_peak_tflops\":%.3f,\"mfu\":%.4f,\"load_compute_overlap\":%.4f,"
        "\"compute_idle\":%.4f,\"h2d_gb_s\":%.2f,\"pinned_h2d_gb_s\":%.2f,\"loss\":%.5f}\n",
        dev->describe().c_str(), (long long)cfg.num_layers, (long long)T, tokens, secs * 1e3, tok_s,
        flops / 1e12, peak_flops / 1e12, peak_flops > 0 ? flops / peak_flops : 0.0, overlap, idle,
        h2d_gbs, pinned_gbs, loss);
  }
  return 0;
}
