// The cost model on synthetic hardware: each term moves the prediction the way the engine's
// schedule says it must (copy-bound and compute-bound steps, slots, resident stages, clipping's
// overlap, the 1/batch weight traffic of decode), memory follows the real layouts, energy the
// documented formula.
#include "planner/cost_model.h"

#include <cmath>

#include <gtest/gtest.h>

#include "inference/kv_cache.h"
#include "pipeline/engine_memory.h"
#include "pipeline/param_store.h"
#include "pipeline/stages.h"
#include "planner/testing.h"

namespace ramstream::planner {
namespace {

TEST(CostModel, CpuTrainStepScalesWithTokensAndRecomputeCostsAForward) {
  const HardwareProfile hw = testing::cpu_machine();
  TrainWorkload w = testing::train_workload(testing::small_model(), 128, 4);
  TrainSettings s;
  s.micro_batch = 4;
  s.keep_activations = true;
  const Prediction keep = predict_train(hw, w, s);
  s.keep_activations = false;
  const Prediction recompute = predict_train(hw, w, s);
  EXPECT_GT(recompute.step_s, keep.step_s);
  // A forward is about a third of forward + backward: recompute adds between 15% and 45%.
  EXPECT_GT(recompute.step_s / keep.step_s, 1.15);
  EXPECT_LT(recompute.step_s / keep.step_s, 1.45);
  EXPECT_GT(keep.host_bytes, recompute.host_bytes);  // kept activations
  // Twice the rows per step in the same micro-batch size: about twice the compute, the same
  // optimizer: between 1.5x and 2x.
  TrainWorkload w2 = w;
  w2.rows_per_step = 8;
  s.grad_accum = 2;
  const Prediction twice = predict_train(hw, w2, s);
  EXPECT_GT(twice.step_s / recompute.step_s, 1.5);
  EXPECT_LE(twice.step_s / recompute.step_s, 2.0);
  EXPECT_DOUBLE_EQ(twice.tokens, 2 * recompute.tokens);
}

TEST(CostModel, CpuStepIsComputePlusOptimizer) {
  // The CPU backend shares the cores: the simulated step equals the sum of the phases.
  const HardwareProfile hw = testing::cpu_machine();
  const TrainWorkload w = testing::train_workload(testing::small_model(), 64, 2);
  TrainSettings s;
  s.micro_batch = 2;
  const Prediction p = predict_train(hw, w, s);
  double sum = 0;
  for (const PhaseCost& ph : p.phases) sum += ph.seconds;
  EXPECT_NEAR(p.step_s, sum, 1e-9 * sum);
  EXPECT_EQ(p.gpu_bytes, 0);
}

TEST(CostModel, CpuMemoryIsTheStorePlusTheEngine) {
  const HardwareProfile hw = testing::cpu_machine();
  const TrainWorkload w = testing::train_workload(testing::small_model(), 64, 2);
  TrainSettings s;
  s.micro_batch = 1;
  s.grad_accum = 2;
  const Prediction p = predict_train(hw, w, s);
  pipeline::ParamStoreOptions so;
  so.grad_regions = true;  // fp32 layout with clipping
  pipeline::EngineShape shape;
  shape.batch = 1;
  shape.seq_len = 64;
  shape.micro_batches = 2;
  const pipeline::EngineMemory em = pipeline::estimate_engine_memory(w.model, shape, 4, false);
  const double expect =
      double(pipeline::ParamStore::bytes_needed(pipeline::plan_stages(w.model), so)) +
      em.host_bytes + em.device_bytes;
  EXPECT_DOUBLE_EQ(p.host_bytes, expect);
}

TEST(CostModel, GpuStepIsCopyBoundOnASlowLinkAndResidentStagesHelp) {
  HardwareProfile hw = testing::gpu_machine();
  hw.gpu.h2d_bytes_per_s = 1e8;  // 0.1 GB/s: weight loads dominate
  TrainWorkload w = testing::train_workload(testing::small_model(), 64, 2);
  w.use_gpu = true;
  TrainSettings s;
  s.micro_batch = 2;
  const Prediction streamed = predict_train(hw, w, s);
  double h2d = 0, d2h = 0;
  for (const PhaseCost& ph : streamed.phases) {
    if (ph.name == "h2d") h2d = ph.seconds;
    if (ph.name == "d2h") d2h = ph.seconds;
  }
  ASSERT_GT(h2d, 0);
  // The load stream is the bottleneck: the step is at least the loads, at most all copies and
  // compute serialised.
  EXPECT_GE(streamed.step_s, h2d * 0.99);
  EXPECT_LE(streamed.step_s, (h2d + d2h) * 1.5);
  // Resident stages are loaded once per step (after their update), not twice: about half.
  s.resident_stages = pipeline::plan_stages(w.model).num_stages();
  const Prediction resident = predict_train(hw, w, s);
  EXPECT_LT(resident.step_s, 0.65 * streamed.step_s);
  EXPECT_GT(resident.gpu_bytes, streamed.gpu_bytes);
}

TEST(CostModel, GpuMoreSlotsNeverSlower) {
  HardwareProfile hw = testing::gpu_machine();
  TrainWorkload w = testing::train_workload(testing::small_model(), 128, 4);
  w.use_gpu = true;
  TrainSettings s;
  s.micro_batch = 4;
  double prev = 1e30;
  for (int k = 2; k <= 5; ++k) {
    s.num_slots = k;
    const Prediction p = predict_train(hw, w, s);
    EXPECT_LE(p.step_s, prev * (1 + 1e-12)) << "slots " << k;
    prev = p.step_s;
  }
}

TEST(CostModel, GpuClippingOverlapsTheOptimizerWithTheNextForward) {
  // A slow optimizer (1 GB/s host) next to a fast device: the step is bound by the optimizer,
  // and with clipping the updates run while the next forward waits stage by stage, so the step
  // is less than the sum of compute and optimizer.
  HardwareProfile hw = testing::gpu_machine();
  hw.cpu.read_bytes_per_s = hw.cpu.copy_bytes_per_s = hw.cpu.read_bytes_per_s_1t = 1e9;
  TrainWorkload w = testing::train_workload(testing::small_model(), 256, 8);
  w.use_gpu = true;
  TrainSettings s;
  s.micro_batch = 8;
  const Prediction p = predict_train(hw, w, s);
  double opt = 0, compute = 0;
  for (const PhaseCost& ph : p.phases) {
    if (ph.name == "optimizer") opt = ph.seconds;
    if (ph.name == "forward" || ph.name == "recompute" || ph.name == "backward" ||
        ph.name == "head") {
      compute += ph.seconds;
    }
  }
  EXPECT_GE(p.step_s, opt * 0.99);
  EXPECT_LT(p.step_s, opt + compute);
}

TEST(CostModel, EnergyFollowsTheFormula) {
  const HardwareProfile hw = testing::cpu_machine();
  const TrainWorkload w = testing::train_workload(testing::small_model(), 64, 2);
  TrainSettings s;
  s.micro_batch = 2;
  const Prediction p = predict_train(hw, w, s);
  // The CPU backend is busy the whole step: u = 1.
  EXPECT_NEAR(p.cpu.utilisation, 1.0, 1e-9);
  EXPECT_NEAR(p.energy_j, hw.cpu.max_w * p.step_s * (1 + kLeakageAtFullLoad), 1e-9 * p.energy_j);
  EXPECT_NEAR(p.joules_per_token(), p.energy_j / p.tokens, 1e-12);
}

TEST(CostModel, TooLittleRamIsInfeasibleAndNamesHostRam) {
  HardwareProfile hw = testing::cpu_machine();
  hw.cpu.ram_available_bytes = 64e6;
  const TrainWorkload w = testing::train_workload(testing::small_model(), 64, 2);
  TrainSettings s;
  s.micro_batch = 2;
  const Prediction p = predict_train(hw, w, s);
  EXPECT_FALSE(p.feasible);
  EXPECT_GT(p.violation, 0);
  EXPECT_NE(p.binding.find("host RAM"), std::string::npos) << p.binding;
}

TEST(CostModel, KvBytesPerTokenByCacheKind) {
  const model::ModelConfig cfg = testing::small_model();
  InferSettings s;
  const double full = kv_bytes_per_token_layer(cfg, s, 1000, false);
  EXPECT_DOUBLE_EQ(full, 2.0 * double(cfg.kv_dim()) * 4);
  s.kv = KvKind::kKivi4;
  s.kv_residual = 128;
  // Within the window everything is full precision; far beyond it the quantised rate dominates.
  EXPECT_DOUBLE_EQ(kv_bytes_per_token_layer(cfg, s, 100, false), full);
  const double quant = 2.0 * double(cfg.kv_dim()) * inference::kivi_bits_per_element(4, 32) / 8;
  const double at_4k = kv_bytes_per_token_layer(cfg, s, 4096, false);
  EXPECT_NEAR(at_4k, (128 * full + (4096 - 128) * quant) / 4096, 1e-9);
  s.kv = KvKind::kKivi2;
  EXPECT_LT(kv_bytes_per_token_layer(cfg, s, 4096, false), at_4k);
}

TEST(CostModel, DecodeWeightTrafficIsSharedByTheBatch) {
  const HardwareProfile hw = testing::cpu_machine();
  InferWorkload w;
  w.model = testing::small_model();
  w.prompt_tokens = 32;
  w.new_tokens = 16;
  InferSettings s;
  w.batch = 1;
  const Prediction one = predict_infer(hw, w, s);
  w.batch = 8;
  s.micro_batch = 8;
  const Prediction eight = predict_infer(hw, w, s);
  // Decode at batch 1 reads every weight per token; batch 8 shares the read.
  EXPECT_GT(eight.tokens / eight.decode_s, 3 * one.tokens / one.decode_s);
  // Micro-batches of 1 row lose the sharing again.
  s.micro_batch = 1;
  const Prediction split = predict_infer(hw, w, s);
  EXPECT_GT(split.decode_s, 3 * eight.decode_s);
  EXPECT_NEAR(one.step_s, one.prefill_s + one.decode_s, 1e-12);
}

TEST(CostModel, GpuDecodeStreamsWhatIsNotResident) {
  HardwareProfile hw = testing::gpu_machine();
  InferWorkload w;
  w.model = testing::small_model();
  w.prompt_tokens = 32;
  w.new_tokens = 8;
  w.batch = 4;
  w.use_gpu = true;
  InferSettings s;
  s.micro_batch = 4;
  s.resident_stages = 0;
  const Prediction streamed = predict_infer(hw, w, s);
  s.resident_stages = -1;  // all fit on this GPU
  const Prediction resident = predict_infer(hw, w, s);
  EXPECT_LT(resident.decode_s, streamed.decode_s);
  EXPECT_GT(resident.gpu_bytes, streamed.gpu_bytes);
}

}  // namespace
}  // namespace ramstream::planner
