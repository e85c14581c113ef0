// The model on a CUDA device (ctest label "gpu"; skipped where there is none): bf16 compute with
// libtorch's flash attention against the CPU fp32 reference, and fp32 on the GPU (the ATen
// compositions) against the same reference; the same on a packed batch (flash attention's
// variable-length form, and the block-causal mask of the compositions).
#include <string>
#include <tuple>

#include <gtest/gtest.h>

#include "autograd/model.h"
#include "autograd/test_util.h"

namespace ramstream::autograd {
namespace {

struct StepResult {
  double loss;
  model::ModelParams grads;  // on the CPU, fp32
};

StepResult run_step(const model::ModelConfig& cfg, const model::ModelParams& params_cpu,
                    const at::Tensor& ids, const at::Tensor& targets, at::ScalarType dtype,
                    at::Device device, const at::Tensor& positions = {}) {
  const model::ModelParams p = model::clone_model_params(params_cpu, dtype, device);
  model::ModelParams g = model::clone_model_params(params_cpu, acc_dtype(dtype), device);
  model::for_each_param(g, [](const std::string&, at::Tensor& t) { t.zero_(); });
  ModelWorkspace ws(cfg, ids.size(0), ids.size(1), dtype, ActivationMode::kRecompute, device);
  const double scale = 1.0 / double(count_targets(targets));
  const CrossEntropyResult r =
      model_forward_backward(p, g, ids.to(device), targets.to(device), scale, ws, positions);
  return {r.loss_sum * scale, model::clone_model_params(g, at::kFloat, at::kCPU)};
}

TEST(CudaModel, StepsTrackCpuFp32) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  testing::TinyOptions o;
  o.hidden = 128;
  o.heads = 4;
  o.kv_heads = 2;
  o.head_dim = 32;  // a head dim the flash kernel takes
  o.ffn = 256;
  o.vocab = 1000;
  o.tied = true;
  const model::ModelConfig cfg = testing::tiny_config(o);
  const model::ModelParams params = testing::random_params(cfg, at::kFloat, 51);
  at::manual_seed(52);
  const at::Tensor ids = at::randint(0, cfg.vocab_size, {2, 64}, at::kLong);
  const at::Tensor targets = next_token_targets(ids);

  StepResult cpu = run_step(cfg, params, ids, targets, at::kFloat, at::kCPU);
  StepResult gpu32 = run_step(cfg, params, ids, targets, at::kFloat, at::Device(at::kCUDA, 0));
  StepResult gpu16 = run_step(cfg, params, ids, targets, at::kBFloat16, at::Device(at::kCUDA, 0));

  std::printf("loss cpu fp32 %.6f, cuda fp32 %.6f, cuda bf16 %.6f\n", cpu.loss, gpu32.loss,
              gpu16.loss);
  // fp32 on both sides: only summation order differs (cuBLAS vs OpenBLAS), ~1e-6 relative.
  EXPECT_LE(std::abs(gpu32.loss - cpu.loss) / cpu.loss, 1e-5);
  EXPECT_LE(testing::compare_grads(gpu32.grads, cpu.grads), 1e-4);
  // bf16: the same bounds and reasoning as Model.Bf16ComputeTracksFp32 (model_grad_test.cpp).
  EXPECT_LE(std::abs(gpu16.loss - cpu.loss) / cpu.loss, 1e-2);
  EXPECT_LE(testing::compare_grads(gpu16.grads, cpu.grads), 0.1);
}

TEST(CudaModel, PackedBatchTracksCpuFp32) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  testing::TinyOptions o;
  o.hidden = 128;
  o.heads = 4;
  o.kv_heads = 2;
  o.head_dim = 32;
  o.ffn = 256;
  o.vocab = 1000;
  const model::ModelConfig cfg = testing::tiny_config(o);
  const model::ModelParams params = testing::random_params(cfg, at::kFloat, 54);
  // Documents of 1..40 tokens, a row that is one document, and padding continuing a document.
  const at::Tensor positions = testing::packed_positions({{13, 1, 40, 10}, {64}, {7, 7, 25, 25}});
  at::manual_seed(55);
  const at::Tensor ids = at::randint(0, cfg.vocab_size, {3, 64}, at::kLong);
  at::Tensor targets = at::full_like(ids, kIgnoreIndex);
  for (int64_t b = 0; b < 3; ++b) {
    for (int64_t t = 0; t + 1 < 64; ++t) {
      if (positions[b][t + 1].item<int64_t>() != 0) targets[b][t] = ids[b][t + 1];
    }
  }
  const at::Device cuda(at::kCUDA, 0);
  StepResult cpu = run_step(cfg, params, ids, targets, at::kFloat, at::kCPU, positions);
  StepResult gpu32 = run_step(cfg, params, ids, targets, at::kFloat, cuda, positions);
  StepResult gpu16 = run_step(cfg, params, ids, targets, at::kBFloat16, cuda, positions);
  StepResult leaky = run_step(cfg, params, ids, targets, at::kFloat, at::kCPU);  // no positions
  std::printf("packed loss cpu fp32 %.6f, cuda fp32 %.6f, cuda bf16 %.6f (leaking: %.6f)\n",
              cpu.loss, gpu32.loss, gpu16.loss, leaky.loss);
  EXPECT_LE(std::abs(gpu32.loss - cpu.loss) / cpu.loss, 1e-5);
  EXPECT_LE(testing::compare_grads(gpu32.grads, cpu.grads), 1e-4);
  EXPECT_LE(std::abs(gpu16.loss - cpu.loss) / cpu.loss, 1e-2);
  EXPECT_LE(testing::compare_grads(gpu16.grads, cpu.grads), 0.1);
  // Closer to the masked reference than attention across documents would be.
  EXPECT_LT(std::abs(gpu16.loss - cpu.loss), std::abs(leaky.loss - cpu.loss));
}

#if RAMSTREAM_WITH_CUDA
// The weight-grad GEMM with an fp32 accumulator (cuBLAS, kernels/gemm_cuda.h) against its CPU
// reference (the bf16 inputs widened to fp32): the same products, summed in another order.
TEST(CudaModel, WeightGradGemmMatchesCpuReference) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  at::manual_seed(53);
  const at::Device cuda(at::kCUDA, 0);
  for (const auto& [N, OC, IC] :
       {std::tuple<int64_t, int64_t, int64_t>{64, 48, 80}, {1000, 256, 512}, {3, 1, 7}}) {
    SCOPED_TRACE("N=" + std::to_string(N) + " OC=" + std::to_string(OC) +
                 " IC=" + std::to_string(IC));
    const at::Tensor dout = at::randn({N, OC}).to(at::kBFloat16);
    // x as a column slice of a wider matrix: a row stride longer than its rows.
    const at::Tensor wide = at::randn({N, IC + 16}).to(at::kBFloat16);
    const at::Tensor x = wide.narrow(1, 8, IC);
    const at::Tensor start = at::randn({OC, IC});
    at::Tensor cpu = start.clone();
    accumulate_weight_grad(cpu, dout, x);
    at::Tensor gpu = start.to(cuda);
    const at::Tensor xg = wide.to(cuda).narrow(1, 8, IC);
    ASSERT_TRUE(cuda_accumulate_weight_grad(gpu, dout.to(cuda), xg));
    const double err = (gpu.cpu() - cpu).abs().max().item<double>();
    const double scale = cpu.abs().max().item<double>();
    std::printf("weight-grad GEMM N=%lld: max abs diff %.3e (scale %.3e)\n", (long long)N, err,
                scale);
    // fp32 sums of N exact products in two orders: ~N * 2^-24 relative at worst.
    EXPECT_LE(err, 1e-5 * scale * std::max<double>(1.0, double(N) / 64));
  }
}
#endif  // RAMSTREAM_WITH_CUDA

}  // namespace
}  // namespace ramstream::autograd
