// The planner over the cost model on synthetic hardware: PGSAM against the exhaustive optimum on
// the real decision spaces, memory limits never violated by a chosen plan, infeasible requests a
// clear error naming the binding limit and the closest plan, the JSON `ramstream plan` prints.
#include "planner/planner.h"

#include <algorithm>
#include <cstdio>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "planner/testing.h"

namespace ramstream::planner {
namespace {

model::ModelConfig gpu_sized_model() {
  // 24 layers of hidden 2048: big enough that streaming and resident stages matter.
  model::ModelConfig c = testing::small_model();
  c.hidden_size = 2048;
  c.intermediate_size = 5632;
  c.num_layers = 24;
  c.num_heads = 16;
  c.num_kv_heads = 4;
  c.head_dim = 128;
  c.vocab_size = 32000;
  return c;
}

TEST(Planner, PgsamReachesTheExhaustiveOptimumOnTheGpuTrainSpace) {
  HardwareProfile hw = testing::gpu_machine();
  hw.gpu.memory_bytes = 40e9;  // some resident/keep plans do not fit
  TrainWorkload w = testing::train_workload(gpu_sized_model(), 1024, 64);
  w.use_gpu = true;
  for (Objective objective : {Objective::kTime, Objective::kEnergy, Objective::kBalanced}) {
    SearchChoice ex;
    ex.method = "exhaustive";
    Result<TrainPlan> best = plan_train(hw, w, objective, ex);
    ASSERT_TRUE(best.ok()) << best.error().message;
    const TrainPlan& b = best.value();
    ASSERT_GT(b.space_points, 1000);
    ASSERT_LE(b.space_points, 10000);
    // Balanced scores are relative to a reference: compare both against the exhaustive front's.
    Objectives ref{1e30, 1e30, 0};
    for (const TrainCandidate& c : b.pareto) {
      ref.time_s = std::min(ref.time_s, c.predicted.step_s);
      ref.energy_j = std::min(ref.energy_j, c.predicted.energy_j);
    }
    auto score = [&](const Prediction& p) {
      return scalar_score({p.step_s, p.energy_j, p.host_bytes + p.gpu_bytes}, objective, ref);
    };
    const double optimum = score(b.chosen.predicted);
    double worst_gap = 0, evaluations = 0;
    for (uint64_t seed = 1; seed <= 20; ++seed) {
      SearchChoice sa;
      sa.method = "pgsam";
      sa.pgsam.seed = seed;
      Result<TrainPlan> found = plan_train(hw, w, objective, sa);
      ASSERT_TRUE(found.ok()) << found.error().message;
      EXPECT_TRUE(found.value().chosen.predicted.feasible);
      const double gap = score(found.value().chosen.predicted) / optimum - 1;
      worst_gap = std::max(worst_gap, gap);
      evaluations += double(found.value().evaluations);
      EXPECT_LE(gap, 0.02) << objective_name(objective) << " seed " << seed << ": "
                           << describe(found.value().chosen.settings, true);
    }
    std::printf("%s: %lld plans, PGSAM worst gap over 20 seeds %.3f%%, mean %.0f evaluations\n",
                objective_name(objective), (long long)b.space_points, 100 * worst_gap,
                evaluations / 20);
  }
}

TEST(Planner, ChosenPlansRespectTheMemoryLimits) {
  const TrainWorkload base = testing::train_workload(gpu_sized_model(), 1024, 16);
  for (double ram_gb : {40.0, 60.0, 200.0}) {
    for (double gpu_gb : {8.0, 24.0, 80.0}) {
      HardwareProfile hw = testing::gpu_machine();
      hw.cpu.ram_available_bytes = ram_gb * 1e9;
      hw.gpu.memory_bytes = gpu_gb * 1e9;
      TrainWorkload w = base;
      w.use_gpu = true;
      Result<TrainPlan> plan = plan_train(hw, w, Objective::kTime);
      if (!plan.ok()) continue;  // a clear error is fine; a violating plan is not
      for (const TrainCandidate& c : plan.value().pareto) {
        EXPECT_LE(c.predicted.host_bytes, kHostMemoryUsable * hw.cpu.ram_available_bytes);
        EXPECT_LE(c.predicted.gpu_bytes, kDeviceMemoryUsable * hw.gpu.memory_bytes);
      }
    }
  }
}

TEST(Planner, KeepWhenItFitsRecomputeWhenItDoesNot) {
  HardwareProfile hw = testing::cpu_machine();
  const TrainWorkload w = testing::train_workload(testing::small_model(), 512, 8);
  Result<TrainPlan> roomy = plan_train(hw, w, Objective::kTime);
  ASSERT_TRUE(roomy.ok()) << roomy.error().message;
  EXPECT_TRUE(roomy.value().chosen.settings.keep_activations);
  // Just under what keeping needs for the fastest micro-batch: the planner gives something up.
  const double keep_bytes = roomy.value().chosen.predicted.host_bytes;
  hw.cpu.ram_available_bytes = 0.97 * keep_bytes / kHostMemoryUsable;
  Result<TrainPlan> tight = plan_train(hw, w, Objective::kTime);
  ASSERT_TRUE(tight.ok()) << tight.error().message;
  EXPECT_LE(tight.value().chosen.predicted.host_bytes,
            kHostMemoryUsable * hw.cpu.ram_available_bytes);
  EXPECT_NE(describe(tight.value().chosen.settings, false),
            describe(roomy.value().chosen.settings, false));
}

TEST(Planner, NoPlanFitsIsAnErrorNamingTheLimitAndTheClosestPlan) {
  HardwareProfile hw = testing::cpu_machine();
  hw.cpu.ram_available_bytes = 10e6;
  Result<TrainPlan> plan =
      plan_train(hw, testing::train_workload(testing::small_model(), 256, 4), Objective::kTime);
  ASSERT_FALSE(plan.ok());
  const std::string& m = plan.error().message;
  EXPECT_NE(m.find("no training plan fits"), std::string::npos) << m;
  EXPECT_NE(m.find("host RAM"), std::string::npos) << m;
  EXPECT_NE(m.find("closest plan (micro_batch 1 x accum 4, recompute"), std::string::npos) << m;

  InferWorkload iw;
  iw.model = testing::small_model();
  iw.batch = 4;
  iw.prompt_tokens = 64;
  iw.new_tokens = 8;
  Result<InferPlan> ip = plan_infer(hw, iw, Objective::kTime, {KvKind::kFull}, {});
  ASSERT_FALSE(ip.ok());
  EXPECT_NE(ip.error().message.find("no inference plan fits"), std::string::npos);
}

TEST(Planner, AskingForAGpuThatIsNotThereIsAnError) {
  TrainWorkload w = testing::train_workload(testing::small_model(), 64, 2);
  w.use_gpu = true;
  Result<TrainPlan> plan = plan_train(testing::cpu_machine(), w, Objective::kTime);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.error().message.find("has no gpu section"), std::string::npos);
}

TEST(Planner, InferencePicksTheCacheAndMicroBatch) {
  const HardwareProfile hw = testing::cpu_machine();
  InferWorkload w;
  w.model = testing::small_model();
  w.batch = 16;
  w.prompt_tokens = 2048;
  w.new_tokens = 64;
  Result<InferPlan> plan = plan_infer(hw, w, Objective::kTime, {KvKind::kFull, KvKind::kKivi4}, {});
  ASSERT_TRUE(plan.ok()) << plan.error().message;
  // A long context makes attention over the cache the larger part: the 4-bit cache wins, and
  // one micro-batch of the whole batch shares the weight reads.
  EXPECT_EQ(plan.value().chosen.settings.kv, KvKind::kKivi4);
  EXPECT_EQ(plan.value().chosen.settings.micro_batch, 16);
  EXPECT_EQ(plan.value().method, "exhaustive");
}

TEST(Planner, JsonCarriesTheFrontAndTheChosenPlan) {
  const HardwareProfile hw = testing::cpu_machine();
  Result<TrainPlan> plan =
      plan_train(hw, testing::train_workload(testing::small_model(), 128, 8), Objective::kEnergy);
  ASSERT_TRUE(plan.ok());
  const nlohmann::json j = nlohmann::json::parse(train_plan_json(plan.value(), hw));
  ASSERT_TRUE(j.at("pareto").is_array());
  ASSERT_FALSE(j.at("pareto").empty());
  for (const auto& e : j.at("pareto")) {
    for (const char* key : {"step_s", "energy_j", "gpu_bytes", "host_bytes"}) {
      EXPECT_TRUE(e.at("predicted").at(key).is_number()) << key;
    }
  }
  EXPECT_EQ(j.at("objective"), "energy");
  EXPECT_DOUBLE_EQ(j.at("chosen").at("predicted").at("energy_j").get<double>(),
                   plan.value().chosen.predicted.energy_j);
  // The chosen plan is the front's least energy.
  for (const auto& e : j.at("pareto")) {
    EXPECT_GE(e.at("predicted").at("energy_j").get<double>(),
              plan.value().chosen.predicted.energy_j * (1 - 1e-12));
  }
  const std::string table = format_train_plan(plan.value(), hw);
  EXPECT_NE(table.find("chosen: "), std::string::npos);
  EXPECT_NE(table.find("binds: host RAM"), std::string::npos);
  EXPECT_NE(table.find("energy: modelled from"), std::string::npos);
}

TEST(Planner, SameSeedSamePlan) {
  HardwareProfile hw = testing::gpu_machine();
  TrainWorkload w = testing::train_workload(gpu_sized_model(), 1024, 64);
  w.use_gpu = true;
  SearchChoice sa;
  sa.method = "pgsam";
  sa.pgsam.seed = 5;
  Result<TrainPlan> a = plan_train(hw, w, Objective::kBalanced, sa);
  Result<TrainPlan> b = plan_train(hw, w, Objective::kBalanced, sa);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(train_plan_json(a.value(), hw), train_plan_json(b.value(), hw));
}

}  // namespace
}  // namespace ramstream::planner
