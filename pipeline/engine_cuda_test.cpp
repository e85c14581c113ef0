// The engine on a CUDA device (ctest label "gpu"; skipped where there is none): bf16 compute,
// bf16 working copies that also receive the grads, pinned arena, against the CPU fp32 engine on
// the same model and batches, also on packed rows. Also prints the load/compute overlap from the
// timeline.
#include <cmath>

#include <gtest/gtest.h>
#if RAMSTREAM_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Sleep.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include "autograd/test_util.h"
#include "pipeline/engine.h"
#include "pipeline/engine_testing.h"

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
    StepResult a = cpu_engine.train_step({ids}, {targets});
    StepResult b = gpu_engine.train_step({ids}, {targets});
    std::printf("step %lld: loss cpu fp32 %.5f cuda bf16 %.5f, grad norm %.4f vs %.4f\n",
                static_cast<long long>(s), a.loss(), b.loss(), a.grad_norm(), b.grad_norm());
    // bf16 activations and grads: see Model.Bf16ComputeTracksFp32 for the bounds' reasoning.
    EXPECT_LE(std::abs(a.loss() - b.loss()) / a.loss(), 1e-2);
    EXPECT_LE(std::abs(a.grad_norm() - b.grad_norm()) / a.grad_norm(), 5e-2);
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

// Packed rows on the device: positions and document bounds staged like the ids, flash
// attention's variable-length form; against the CPU fp32 engine on the same packed batches.
TEST(EngineCuda, PackedStepsTrackCpuFp32) {
  if (!cuda_device_available()) GTEST_SKIP() << "no CUDA device";
  autograd::testing::TinyOptions to;
  to.hidden = 128;
  to.head_dim = 32;
  to.ffn = 256;
  to.vocab = 1000;
  to.layers = 3;
  const model::ModelConfig cfg = autograd::testing::tiny_config(to);
  model::ModelParams init = model::allocate_model_params(cfg, at::kFloat);
  model::init_params_normal(init, 0.02, 75);
  const int64_t B = 2, T = 64;
  EngineOptions opts;
  opts.max_grad_norm = 1.0;
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
  const std::vector<at::Tensor> positions = {
      autograd::testing::packed_positions({{20, 3, 41}, {64}}),
      autograd::testing::packed_positions({{1, 30, 33}, {32, 32}})};
  at::manual_seed(76);
  for (int64_t s = 0; s < 2; ++s) {
    std::vector<at::Tensor> ids, targets;
    for (const at::Tensor& p : positions) {
      ids.push_back(at::randint(0, cfg.vocab_size, {B, T}, at::kLong));
      targets.push_back(testing::document_targets(ids.back(), p));
    }
    StepResult a = cpu_engine.train_step(ids, targets, positions);
    StepResult b = gpu_engine.train_step(ids, targets, positions);
    std::printf("packed step %lld: loss cpu fp32 %.5f cuda bf16 %.5f, grad norm %.4f vs %.4f\n",
                static_cast<long long>(s), a.loss(), b.loss(), a.grad_norm(), b.grad_norm());
    EXPECT_LE(std::abs(a.loss() - b.loss()) / a.loss(), 1e-2);
    EXPECT_LE(std::abs(a.grad_norm() - b.grad_norm()) / a.grad_norm(), 5e-2);
  }
}

#if RAMSTREAM_WITH_CUDA
// The engine runs on streams of its own: not the caller's current stream and not the legacy
// default stream. Both are kept busy by a spinning kernel (~seconds) while a step runs and its
// loss is read; a step issued to either would wait behind it. The caller's current stream is
// left as it was.
TEST(EngineCuda, RunsOnItsOwnStreams) {
  if (!cuda_device_available()) GTEST_SKIP() << "no CUDA device";
  const model::ModelConfig cfg = autograd::testing::tiny_config({});
  auto gpu = make_cuda_device(0);
  ParamStoreOptions so;
  so.working_copy_bf16 = true;
  so.pin = true;
  ParamStore store(plan_stages(cfg), cfg, so);
  store.load(autograd::testing::random_params(cfg, at::kFloat, 73));
  EngineOptions opts;
  opts.max_grad_norm = 1.0;
  Engine engine(*gpu, store, opts, 2, 8);
  at::manual_seed(74);
  const at::Tensor ids = at::randint(0, cfg.vocab_size, {2, 8}, at::kLong);
  const at::Tensor targets = autograd::next_token_targets(ids);
  engine.train_step({ids}, {targets}).loss();  // warm-up: allocations, cuBLAS handles
  engine.synchronize();

  const c10::cuda::CUDAStream caller = c10::cuda::getStreamFromPool(false, 0);
  c10::cuda::CUDAStreamGuard guard(caller);
  const int64_t cycles = int64_t{4} << 30;  // ~2 s at the H200's ~2 GHz
  at::cuda::sleep(cycles);                  // on the caller's stream
  {
    c10::cuda::CUDAStreamGuard legacy(c10::cuda::getDefaultCUDAStream(0));
    at::cuda::sleep(cycles);
  }
  StepResult s = engine.train_step({ids}, {targets});
  EXPECT_TRUE(std::isfinite(s.loss()));
  EXPECT_TRUE(std::isfinite(s.grad_norm()));
  EXPECT_EQ(cudaStreamQuery(caller.stream()), cudaErrorNotReady)
      << "the step waited for the caller's stream";
  EXPECT_EQ(cudaStreamQuery(c10::cuda::getDefaultCUDAStream(0).stream()), cudaErrorNotReady)
      << "the step waited for the legacy default stream";
  (void)cudaGetLastError();
  EXPECT_EQ(c10::cuda::getCurrentCUDAStream(0), caller);
  cudaDeviceSynchronize();
  engine.synchronize();
}
#endif  // RAMSTREAM_WITH_CUDA

}  // namespace
}  // namespace ramstream::pipeline
