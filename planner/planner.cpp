#include "planner/planner.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>

#include <nlohmann/json.hpp>

#include "pipeline/stages.h"

namespace ramstream::planner {
namespace {

constexpr double kGiB = double(int64_t{1} << 30);

std::vector<int64_t> divisors(int64_t n) {
  std::vector<int64_t> d;
  for (int64_t i = 1; i * i <= n; ++i) {
    if (n % i == 0) {
      d.push_back(i);
      if (i != n / i) d.push_back(n / i);
    }
  }
  std::sort(d.begin(), d.end());
  return d;
}

// 0, 1, 2, 4, ... below n, then n.
std::vector<int64_t> doubling_up_to(int64_t n, int64_t first) {
  std::vector<int64_t> v;
  if (first == 0) v.push_back(0);
  for (int64_t x = 1; x < n; x *= 2) v.push_back(x);
  v.push_back(n);
  return v;
}

Objectives objectives_of(const Prediction& p) {
  return {p.step_s, p.energy_j, p.host_bytes + p.gpu_bytes};
}

Evaluation evaluation_of(const Prediction& p) {
  Evaluation e;
  e.feasible = p.feasible;
  e.obj = objectives_of(p);
  e.violation = p.violation;
  e.binding = p.binding;
  return e;
}

// "forward 0.152 s (101 GFLOP, 3.1 GB), ..." of a prediction: where the time goes.
std::string phases_line(const Prediction& p) {
  std::string out;
  char buf[160];
  for (const PhaseCost& ph : p.phases) {
    std::snprintf(buf, sizeof buf, "%s%s %.3f s (%.1f GFLOP, %.2f GB)", out.empty() ? "" : ", ",
                  ph.name.c_str(), ph.seconds, ph.flops / 1e9, ph.bytes / 1e9);
    out += buf;
  }
  return out;
}

std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / kGiB);
  return buf;
}

std::string no_plan_error(const char* what, const SearchResult& r, const Prediction& closest,
                          const std::string& closest_settings) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "no %s plan fits this machine: %s", what, closest.binding.c_str());
  return std::string(buf) + " for the closest plan (" + closest_settings + ", " +
         std::to_string(int64_t(std::round(r.closest_violation * 100))) +
         "% over); lower the batch, the sequence length or the context";
}

// Searches `space` and fills the plan's search fields, Pareto front and choice: `settings_of`
// maps a point to the engine's settings, `predict` those to a prediction. The exhaustive search
// when asked or when the space is small, else PGSAM. No feasible point: the error names the
// closest plan's binding limit.
template <class Plan, class SettingsOf, class Predict>
Result<Plan> search_plan(Plan plan, const char* what, const SearchSpace& space,
                         const SettingsOf& settings_of, const Predict& predict,
                         const SearchChoice& search, bool gpu) {
  const EvalFn eval = [&](const Point& p) { return evaluation_of(predict(settings_of(p))); };
  const bool exhaustive_search =
      search.method == "exhaustive" ||
      (search.method != "pgsam" && space.num_points() <= kExhaustiveLimit);
  plan.method = exhaustive_search ? "exhaustive" : "pgsam";
  plan.space_points = space.num_points();
  const SearchResult r = exhaustive_search ? exhaustive(space, eval, plan.objective)
                                           : pgsam(space, eval, plan.objective, search.pgsam);
  plan.evaluations = r.evaluations;
  if (!r.found) {
    const auto closest = settings_of(r.closest_infeasible);
    return Error{no_plan_error(what, r, predict(closest), describe(closest, gpu))};
  }
  for (const ArchiveEntry& e : r.pareto) {
    const auto settings = settings_of(e.point);
    plan.pareto.push_back({settings, predict(settings)});
  }
  const auto best = settings_of(r.best);
  plan.chosen = {best, predict(best)};
  return plan;
}

const char* energy_note(const HardwareProfile& hw) {
  return hw.measured ? "modelled from the profile's power figures (idle + (max - idle) x "
                       "utilisation); see the notes for which are measured"
                     : "modelled from datasheet power figures (profile not measured)";
}

nlohmann::json predicted_json(const Prediction& p) {
  return {{"step_s", p.step_s},
          {"energy_j", p.energy_j},
          {"gpu_bytes", p.gpu_bytes},
          {"host_bytes", p.host_bytes},
          {"tokens_per_s", p.tokens_per_s()},
          {"joules_per_token", p.joules_per_token()},
          {"tokens_per_joule", p.energy_j > 0 ? p.tokens / p.energy_j : 0.0},
          {"prefill_s", p.prefill_s},
          {"decode_s", p.decode_s},
          {"feasible", p.feasible},
          {"binding", p.binding}};
}

nlohmann::json settings_json(const TrainSettings& s) {
  return {{"micro_batch", s.micro_batch},
          {"grad_accum", s.grad_accum},
          {"num_slots", s.num_slots},
          {"resident_stages", s.resident_stages},
          {"activations", s.keep_activations ? "keep" : "recompute"},
          {"host_checkpoints", s.host_checkpoints},
          {"optimizer_threads", s.optimizer_threads}};
}

nlohmann::json settings_json(const InferSettings& s) {
  return {{"micro_batch", s.micro_batch}, {"kv_cache", kv_kind_name(s.kv)},
          {"kv_group", s.kv_group},       {"kv_residual", s.kv_residual},
          {"num_slots", s.num_slots},     {"resident_stages", s.resident_stages}};
}

template <class Candidate>
std::string plan_json(const char* mode, const std::vector<Candidate>& pareto,
                      const Candidate& chosen, Objective objective, const std::string& method,
                      int64_t points, int64_t evaluations, const HardwareProfile& hw) {
  nlohmann::json front = nlohmann::json::array();
  for (const Candidate& c : pareto) {
    front.push_back(
        {{"settings", settings_json(c.settings)}, {"predicted", predicted_json(c.predicted)}});
  }
  nlohmann::json j = {{"mode", mode},
                      {"objective", objective_name(objective)},
                      {"hardware", hw.name},
                      {"hardware_measured", hw.measured},
                      {"energy", "modelled"},
                      {"pareto", front},
                      {"chosen",
                       {{"settings", settings_json(chosen.settings)},
                        {"predicted", predicted_json(chosen.predicted)}}},
                      {"binding", chosen.predicted.binding},
                      {"method", method},
                      {"space_points", points},
                      {"evaluations", evaluations}};
  return j.dump();
}

template <class Candidate>
std::string plan_table(const std::vector<Candidate>& pareto, const Candidate& chosen, bool gpu,
                       const char* unit) {
  std::string out;
  char buf[512];
  std::snprintf(buf, sizeof buf, "  %-62s %10s %10s %9s %9s %10s %10s\n", "plan", "time s", unit,
                "energy J", "J/token", "host", "GPU");
  out += buf;
  for (const Candidate& c : pareto) {
    const Prediction& p = c.predicted;
    const bool is_chosen = describe(c.settings, gpu) == describe(chosen.settings, gpu);
    std::snprintf(buf, sizeof buf, "%s %-62s %10.3f %10.1f %9.2f %9.4f %10s %10s\n",
                  is_chosen ? "*" : " ", describe(c.settings, gpu).c_str(), p.step_s,
                  p.tokens_per_s(), p.energy_j, p.joules_per_token(), gib(p.host_bytes).c_str(),
                  gpu ? gib(p.gpu_bytes).c_str() : "-");
    out += buf;
  }
  return out;
}

}  // namespace

std::string describe(const TrainSettings& s, bool gpu) {
  char buf[200];
  if (!gpu) {
    std::snprintf(buf, sizeof buf, "micro_batch %lld x accum %lld, %s", (long long)s.micro_batch,
                  (long long)s.grad_accum, s.keep_activations ? "keep" : "recompute");
  } else {
    std::snprintf(
        buf, sizeof buf,
        "micro_batch %lld x accum %lld, %s, slots %d, resident %lld, %s ckpt, opt %s",
        (long long)s.micro_batch, (long long)s.grad_accum,
        s.keep_activations ? "keep" : "recompute", s.num_slots, (long long)s.resident_stages,
        s.host_checkpoints ? "host" : "device",
        s.optimizer_threads > 0 ? (std::to_string(s.optimizer_threads) + "t").c_str() : "all");
  }
  return buf;
}

std::string describe(const InferSettings& s, bool gpu) {
  char buf[200];
  if (!gpu) {
    std::snprintf(buf, sizeof buf, "micro_batch %lld, kv %s", (long long)s.micro_batch,
                  kv_kind_name(s.kv));
  } else {
    std::snprintf(
        buf, sizeof buf, "micro_batch %lld, kv %s, slots %d, resident %s", (long long)s.micro_batch,
        kv_kind_name(s.kv), s.num_slots,
        s.resident_stages < 0 ? "all that fit" : std::to_string(s.resident_stages).c_str());
  }
  return buf;
}

Result<TrainPlan> plan_train(const HardwareProfile& hw, const TrainWorkload& workload,
                             Objective objective, const SearchChoice& search) {
  if (workload.rows_per_step < 1 || workload.seq_len < 1) {
    return Error{"plan: rows per step and the sequence length must be >= 1"};
  }
  if (workload.use_gpu && !hw.gpu.present) {
    return Error{"plan: the GPU backend was asked for, but the hardware profile '" + hw.name +
                 "' has no gpu section"};
  }
  const bool gpu = workload.use_gpu;
  const int64_t num_stages = pipeline::plan_stages(workload.model).num_stages();
  const std::vector<int64_t> micro = divisors(workload.rows_per_step);
  const std::vector<int> slots = gpu ? std::vector<int>{2, 3, 4} : std::vector<int>{2};
  const std::vector<int64_t> resident =
      gpu ? doubling_up_to(num_stages, 0) : std::vector<int64_t>{0};
  const std::vector<int> ckpt = gpu ? std::vector<int>{0, 1} : std::vector<int>{0};
  std::vector<int> threads = {0};
  if (gpu) {
    for (int t = hw.cpu.cores / 2; t >= 1; t /= 2) threads.push_back(t);
  }
  const SearchSpace space{{int(micro.size()), 2, int(slots.size()), int(resident.size()),
                           int(ckpt.size()), int(threads.size())}};
  auto settings_of = [&](const Point& p) {
    TrainSettings s;
    s.micro_batch = micro[size_t(p[0])];
    s.grad_accum = workload.rows_per_step / s.micro_batch;
    s.keep_activations = p[1] == 1;
    s.num_slots = slots[size_t(p[2])];
    s.resident_stages = resident[size_t(p[3])];
    s.host_checkpoints = ckpt[size_t(p[4])] == 1;
    s.optimizer_threads = threads[size_t(p[5])];
    return s;
  };
  auto predict = [&](const TrainSettings& s) { return predict_train(hw, workload, s); };
  TrainPlan plan;
  plan.workload = workload;
  plan.objective = objective;
  return search_plan(std::move(plan), "training", space, settings_of, predict, search, gpu);
}

Result<InferPlan> plan_infer(const HardwareProfile& hw, const InferWorkload& workload,
                             Objective objective, const std::vector<KvKind>& kinds,
                             const InferSettings& base, const SearchChoice& search) {
  if (workload.batch < 1 || workload.prompt_tokens < 1 || workload.new_tokens < 0) {
    return Error{"plan: the batch and the prompt length must be >= 1"};
  }
  if (kinds.empty()) return Error{"plan: no KV cache kind to choose from"};
  if (workload.use_gpu && !hw.gpu.present) {
    return Error{"plan: the GPU backend was asked for, but the hardware profile '" + hw.name +
                 "' has no gpu section"};
  }
  const bool gpu = workload.use_gpu;
  const int64_t num_stages = pipeline::plan_stages(workload.model).num_stages();
  std::vector<int64_t> micro = doubling_up_to(workload.batch, 1);
  const std::vector<int> slots = gpu ? std::vector<int>{2, 3, 4} : std::vector<int>{2};
  std::vector<int64_t> resident = {-1};
  if (gpu) {
    for (int64_t v : doubling_up_to(num_stages, 0)) resident.push_back(v);
  }
  const SearchSpace space{
      {int(micro.size()), int(kinds.size()), int(slots.size()), int(resident.size())}};
  auto settings_of = [&](const Point& p) {
    InferSettings s = base;
    s.micro_batch = micro[size_t(p[0])];
    s.kv = kinds[size_t(p[1])];
    s.num_slots = slots[size_t(p[2])];
    s.resident_stages = resident[size_t(p[3])];
    return s;
  };
  auto predict = [&](const InferSettings& s) { return predict_infer(hw, workload, s); };
  InferPlan plan;
  plan.workload = workload;
  plan.objective = objective;
  return search_plan(std::move(plan), "inference", space, settings_of, predict, search, gpu);
}

// "search: pgsam over 2940 plans (368 evaluated), objective time" and the front's heading.
template <class Plan>
std::string search_line(const Plan& plan) {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "search: %s over %lld plans (%lld evaluated), objective %s\nPareto front (time, "
                "energy, memory):\n",
                plan.method.c_str(), (long long)plan.space_points, (long long)plan.evaluations,
                objective_name(plan.objective));
  return buf;
}

// Where the chosen plan's time goes, what binds it and how its energy was found.
std::string chosen_detail_lines(const Prediction& p, const HardwareProfile& hw) {
  return "phases (before overlap): " + phases_line(p) + "\nbinds: " + p.binding +
         "\nenergy: " + energy_note(hw) + "\n";
}

std::string format_train_plan(const TrainPlan& plan, const HardwareProfile& hw) {
  const TrainWorkload& w = plan.workload;
  char buf[512];
  std::string out = "hardware: " + describe_hardware(hw) + "\n";
  std::snprintf(
      buf, sizeof buf, "workload: train, %lld rows x %lld tokens per step, %s on the %s, clip %s\n",
      (long long)w.rows_per_step, (long long)w.seq_len, w.bf16 || w.use_gpu ? "bf16" : "fp32",
      w.use_gpu ? "GPU" : "CPU", w.clip ? "on" : "off");
  out += buf;
  out += search_line(plan);
  out += plan_table(plan.pareto, plan.chosen, w.use_gpu, "tokens/s");
  const Prediction& p = plan.chosen.predicted;
  std::snprintf(buf, sizeof buf,
                "chosen: %s: %.1f ms/step, %.1f tokens/s, %.1f J/step (%.3f J/token, %.2f "
                "tokens/J)\n",
                describe(plan.chosen.settings, w.use_gpu).c_str(), p.step_s * 1e3, p.tokens_per_s(),
                p.energy_j, p.joules_per_token(), p.energy_j > 0 ? p.tokens / p.energy_j : 0.0);
  out += buf;
  out += chosen_detail_lines(p, hw);
  return out;
}

std::string format_infer_plan(const InferPlan& plan, const HardwareProfile& hw) {
  const InferWorkload& w = plan.workload;
  char buf[512];
  std::string out = "hardware: " + describe_hardware(hw) + "\n";
  std::snprintf(buf, sizeof buf,
                "workload: infer, batch %lld, %lld prompt + %lld new tokens each, on the %s\n",
                (long long)w.batch, (long long)w.prompt_tokens, (long long)w.new_tokens,
                w.use_gpu ? "GPU" : "CPU");
  out += buf;
  out += search_line(plan);
  out += plan_table(plan.pareto, plan.chosen, w.use_gpu, "new tok/s");
  const Prediction& p = plan.chosen.predicted;
  std::snprintf(buf, sizeof buf,
                "chosen: %s: %.3f s (prefill %.3f, decode %.3f), %.1f new tokens/s, %.1f J "
                "(%.3f J/token, %.2f tokens/J)\n",
                describe(plan.chosen.settings, w.use_gpu).c_str(), p.step_s, p.prefill_s,
                p.decode_s, p.tokens_per_s(), p.energy_j, p.joules_per_token(),
                p.energy_j > 0 ? p.tokens / p.energy_j : 0.0);
  out += buf;
  out += chosen_detail_lines(p, hw);
  return out;
}

std::string train_plan_json(const TrainPlan& plan, const HardwareProfile& hw) {
  return plan_json("train", plan.pareto, plan.chosen, plan.objective, plan.method,
                   plan.space_points, plan.evaluations, hw);
}

std::string infer_plan_json(const InferPlan& plan, const HardwareProfile& hw) {
  return plan_json("infer", plan.pareto, plan.chosen, plan.objective, plan.method,
                   plan.space_points, plan.evaluations, hw);
}

}  // namespace ramstream::planner
