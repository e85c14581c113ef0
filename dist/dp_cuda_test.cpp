// The engine's data-parallel path on a CUDA device (label gpu; skips without one): two ranks as
// threads sharing one GPU through dist::ThreadGroup (NCCL puts at most one rank on a GPU), each a
// CUDA Engine with its own pinned bf16 store. The ranks must agree bitwise, the sharded optimizer
// must equal the replicated one bitwise, and the run must track one CUDA engine accumulating both
// micro-batches (bf16 compute: within 2e-2 relative in the loss).
#include <cmath>
#include <cstdio>

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "dist/dp_testing.h"

namespace ramstream::dist {
namespace {

TEST(DataParallelCuda, TwoThreadRanksOnOneGpu) {
  if (!pipeline::cuda_device_available()) GTEST_SKIP() << "no CUDA device";
  auto cuda = [](int) { return pipeline::make_cuda_device(0); };
  auto copy = [](void* d, const void* s, size_t n) {
    ASSERT_EQ(cudaMemcpy(d, s, n, cudaMemcpyDefault), cudaSuccess);
  };
  testing::DpOptions o;
  o.clip = true;
  o.bf16 = true;
  o.pin = true;
  const std::vector<testing::DpRun> whole = testing::run_thread_ranks(2, o, cuda, copy);
  o.shard = true;
  const std::vector<testing::DpRun> sharded = testing::run_thread_ranks(2, o, cuda, copy);
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(whole[size_t(r)].error, "");
    ASSERT_EQ(sharded[size_t(r)].error, "");
    EXPECT_EQ(whole[size_t(r)].loss, whole[0].loss);
    EXPECT_EQ(sharded[size_t(r)].loss, whole[0].loss);
    for (size_t st = 0; st < whole[0].working.size(); ++st) {
      EXPECT_TRUE(
          pipeline::testing::same_bits(sharded[size_t(r)].working[st], whole[0].working[st]))
          << "rank " << r << " stage " << st;
    }
  }
  // One CUDA engine over both micro-batches.
  const model::ModelConfig cfg = testing::dp_test_config();
  const model::ModelParams init = autograd::testing::random_params(cfg, at::kFloat, 61);
  auto dev = pipeline::make_cuda_device(0);
  o.shard = false;
  pipeline::ParamStore store(pipeline::plan_stages(cfg), cfg, testing::dp_store_options(o, 0, 1));
  store.load(init);
  pipeline::Engine e(*dev, store, testing::dp_engine_options(o, nullptr), 2, 7);
  for (int step = 0; step < o.steps; ++step) {
    const pipeline::testing::Batches b = pipeline::testing::make_batches(cfg, 2, 2, 7, 100 + step);
    const double loss = e.train_step(b.ids, b.targets).loss();
    std::printf("step %d: one engine %.6f, two ranks %.6f\n", step, loss,
                whole[0].loss[size_t(step)]);
    EXPECT_NEAR(whole[0].loss[size_t(step)], loss, 2e-2 * std::abs(loss));
  }
}

}  // namespace
}  // namespace ramstream::dist
