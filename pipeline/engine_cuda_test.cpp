// The engine on a CUDA device (ctest label "gpu"; skipped where there is none): bf16 compute,
// bf16 working copies that also receive the grads, pinned arena, against the CPU fp32 engine on
// the same model and batches. Also prints the load/compute overlap from the timeline.
#include <cmath>

#include <gtest/gtest.h>

#include "autograd/test_util.h"
#include "pipeline/engine.h"

namespace ramstream::pipeline {
namespace {

TEST(EngineCuda, Bf16StreamedStepsTrackCpuFp32) {
  if (!cuda_device_available()) GTEST_SKIP() << "no CUDA device";
  autograd::testing::TinyOptions to;
  to.hidden = 128;
  to.head_dim = 32;
  to.ffn = 256;
  to.vocab = 1000;
  to.layers = 4;
  to.tied = true;
  const model::ModelConfig cfg = autograd::testing::tiny_config(to);
  model::ModelParams init = model::allocate_model_params(cfg, at::kFloat);
  model::init_params_normal(init, 0.02, 71);
  const int64_t B = 2, T = 64, steps = 3;
  EngineOptions opts;
  opts.max_grad_norm = 1.0;
  opts.record_timeline = true;

  auto cpu = make_cpu_device({});
  ParamStore cpu_store(plan_stages(cfg), cfg, {});
  cpu_store.load(init);
  Engine cpu_engine(*cpu, cpu_store, opts, B, T);

  auto gpu = make_cuda_device(0);
  ParamStoreOptions so;
  so.working_copy_bf16 = true;
  so.pin = true;
  ParamStore gpu_store(plan_stages(cfg), cfg, so);
  gpu_store.load(init);
  Engine gpu_engine(*gpu, gpu_store, opts, B, T);
  std::printf("device: %s, store %s\n", gpu->describe().c_str(),
              gpu_store.arena().describe().c_str());

  at::manual_seed(72);
  for (int64_t s = 0; s < steps; ++s) {
    at::Tensor ids = at::randint(0, cfg.vocab_size, {B, T}, at::kLong);
    at::Tensor targets = autograd::next_token_targets(ids);
    const StepStats a = cpu_engine.train_step({ids}, {targets});
    const StepStats b = gpu_engine.train_step({ids}, {targets});
    std::printf("step %lld: loss cpu fp32 %.5f cuda bf16 %.5f, grad norm %.4f vs %.4f\n",
                static_cast<long long>(s), a.loss(), b.loss(), a.grad_norm, b.grad_norm);
    // bf16 activations and grads: see Model.Bf16ComputeTracksFp32 for the bounds' reasoning.
    EXPECT_LE(std::abs(a.loss() - b.loss()) / a.loss(), 1e-2);
    EXPECT_LE(std::abs(a.grad_norm - b.grad_norm) / a.grad_norm, 5e-2);
  }
  cpu_engine.synchronize();
  gpu_engine.synchronize();
  // Adam moves every weight by at most ~lr per step whatever the grad, so weights that started
  // equal differ by at most 2*lr*steps (plus bf16 rounding of nothing: masters stay fp32).
  double worst = 0;
  for (int64_t i = 0; i < cpu_store.plan().num_stages(); ++i) {
    worst = std::max(
        worst,
        (cpu_store.region(i).master - gpu_store.region(i).master).abs().max().item<double>());
  }
  std::printf("max weight difference after %lld steps: %.3e (lr %.0e)\n",
              static_cast<long long>(steps), worst, double(opts.adamw.lr));
  EXPECT_LE(worst, 2.0 * opts.adamw.lr * steps * 1.01);
  std::printf("load/compute overlap on CUDA: %.2f\n", load_compute_overlap(gpu_engine.timeline()));
}

}  // namespace
}  // namespace ramstream::pipeline
