// The planner: the decision space of the engine's knobs for a workload, searched (exhaustively
// when small, by PGSAM otherwise) over the cost model, giving the Pareto front of (time, energy,
// memory) and the plan of the chosen objective. What `ramstream plan` prints, what
// `ramstream run ... plan=auto` and `generate/eval --plan auto` run.
//
//   TrainWorkload w{cfg, 256, /*rows_per_step=*/2, /*clip=*/true, /*use_gpu=*/false,
//   /*bf16=*/true}; Result<TrainPlan> plan = plan_train(profile, w, Objective::kTime, {}); if
//   (!plan.ok()) die(plan.error().message);  // "no plan fits: host RAM: ... (closest: ...)"
//   TrainSettings s = plan.value().chosen.settings;
//   std::printf("%s", format_train_plan(plan.value()).c_str());
//
// Training dimensions: micro-batch size (the divisors of rows_per_step; accumulation follows),
// activations (recompute | keep); with a GPU also slots K (2..4), resident stages (0, 1, 2, 4, ...,
// all), host checkpoints (off | on) and optimizer threads (all cores, or halves of them).
// Inference: micro-batch (powers of two up to the batch, and the batch), the KV cache kinds the
// caller allows; with a GPU also slots and resident stages (all that fit, or 0, 1, 2, 4, ...).
// KV pages stay in pinned host memory: the Generator has no device-resident pages yet, so the
// planner does not offer them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "planner/cost_model.h"
#include "planner/search.h"
#include "util/result.h"

namespace ramstream::planner {

struct SearchChoice {
  // "auto": exhaustive up to kExhaustiveLimit points, PGSAM above; or "exhaustive" | "pgsam".
  std::string method = "auto";
  PgsamOptions pgsam;
};
constexpr int64_t kExhaustiveLimit = 4096;

struct TrainCandidate {
  TrainSettings settings;
  Prediction predicted;
};

struct TrainPlan {
  TrainWorkload workload;
  Objective objective = Objective::kTime;
  std::vector<TrainCandidate> pareto;  // by step time
  TrainCandidate chosen;
  std::string method;  // "exhaustive" or "pgsam"
  int64_t space_points = 0, evaluations = 0;
};

// Errors: rows_per_step or seq_len < 1; no feasible point ("no training plan fits this machine:
// <binding> for the smallest plan (<its settings>)").
Result<TrainPlan> plan_train(const HardwareProfile& hw, const TrainWorkload& workload,
                             Objective objective, const SearchChoice& search = {});

struct InferCandidate {
  InferSettings settings;
  Prediction predicted;
};

struct InferPlan {
  InferWorkload workload;
  Objective objective = Objective::kTime;
  std::vector<InferCandidate> pareto;
  InferCandidate chosen;
  std::string method;
  int64_t space_points = 0, evaluations = 0;
};

// `kinds`: the cache kinds the planner may pick (the caller's --kv-cache, or several for auto);
// `base` gives the fixed cache parameters (group, residual).
Result<InferPlan> plan_infer(const HardwareProfile& hw, const InferWorkload& workload,
                             Objective objective, const std::vector<KvKind>& kinds,
                             const InferSettings& base, const SearchChoice& search = {});

// "micro_batch 2 x accum 1, keep, slots 2, resident 0, optimizer threads all" and the like.
std::string describe(const TrainSettings& s, bool gpu);
std::string describe(const InferSettings& s, bool gpu);

// The table `ramstream plan` prints: the profile line, the Pareto front (settings, step time,
// tokens/s, energy, J/token, host and GPU memory), the chosen plan marked, what binds, and whether
// energy is modelled only.
std::string format_train_plan(const TrainPlan& plan, const HardwareProfile& hw);
std::string format_infer_plan(const InferPlan& plan, const HardwareProfile& hw);

// One JSON object (one line): {"mode":..., "objective":..., "hardware":..., "pareto":[{settings,
// "predicted":{"step_s","energy_j","gpu_bytes","host_bytes","tokens_per_s","joules_per_token"}}],
// "chosen":{...}, "binding":..., "method":..., "space_points":..., "evaluations":...}.
std::string train_plan_json(const TrainPlan& plan, const HardwareProfile& hw);
std::string infer_plan_json(const InferPlan& plan, const HardwareProfile& hw);

}  // namespace ramstream::planner
