// `ramstream plan`: the planner's Pareto front and chosen plan for a model on a machine.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "inference/model_files.h"
#include "pipeline/gemm_probe.h"
#include "planner/planner.h"

namespace ramstream::cli {
namespace {

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

}  // namespace

Result<model::ModelConfig> plan_model_config(const std::string& path) {
  if (ends_with(path, ".json")) return model::load_model_config(path);
  Result<inference::ModelFiles> files = inference::open_model_files(path);
  if (!files.ok()) return files.error();
  return files.value().cfg;
}

Result<std::vector<planner::KvKind>> parse_kv_kinds(const std::string& text) {
  std::vector<planner::KvKind> kinds;
  std::stringstream in(text == "auto" ? std::string("bf16,kivi4") : text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (item == "bf16") {
      kinds.push_back(planner::KvKind::kFull);
    } else if (item == "kivi4") {
      kinds.push_back(planner::KvKind::kKivi4);
    } else if (item == "kivi2") {
      kinds.push_back(planner::KvKind::kKivi2);
    } else {
      return Error{"--kv-cache '" + item +
                   "': the planner chooses among bf16, kivi4 and kivi2 (a comma list, or auto "
                   "= bf16,kivi4: the kinds within 1% of bf16's perplexity)"};
    }
  }
  if (kinds.empty()) return Error{"--kv-cache: empty list"};
  return kinds;
}

// The CPU compute dtype `model.compute: auto` would pick on this profile.
bool profile_prefers_bf16(const planner::HardwareProfile& hw) {
  return hw.cpu.gemm_bf16_flops >= pipeline::kBf16Advantage * hw.cpu.gemm_fp32_flops;
}

int plan_command(const PlanArgs& a) {
  const char* who = "ramstream plan";
  planner::Objective objective;
  if (!planner::parse_objective(a.objective, &objective)) {
    std::fprintf(stderr, "%s: --objective '%s': expected time, energy or balanced\n", who,
                 a.objective.c_str());
    return 2;
  }
  if (a.mode != "train" && a.mode != "infer") {
    std::fprintf(stderr, "%s: --mode '%s': expected train or infer\n", who, a.mode.c_str());
    return 2;
  }
  if (a.device != "auto" && a.device != "cpu" && a.device != "cuda") {
    std::fprintf(stderr, "%s: --device '%s': expected auto, cpu or cuda\n", who, a.device.c_str());
    return 2;
  }
  Result<model::ModelConfig> cfg = plan_model_config(a.model);
  if (!cfg.ok()) {
    std::fprintf(stderr, "%s: %s\n", who, cfg.error().message.c_str());
    return 1;
  }
  Result<planner::HardwareProfile> hw = planner::hardware_profile_for(a.hardware, {});
  if (!hw.ok()) {
    std::fprintf(stderr, "%s: --hardware %s: %s\n", who, a.hardware.c_str(),
                 hw.error().message.c_str());
    return 1;
  }
  if (!a.save_hardware.empty()) {
    std::ofstream out(a.save_hardware);
    out << planner::hardware_profile_to_yaml(hw.value());
    if (!out) {
      std::fprintf(stderr, "%s: --save-hardware %s: cannot write\n", who, a.save_hardware.c_str());
      return 1;
    }
  }
  if (a.device == "cuda" && !hw.value().gpu.present) {
    std::fprintf(stderr, "%s: --device cuda, but the hardware profile '%s' has no GPU\n", who,
                 hw.value().name.c_str());
    return 1;
  }
  const bool gpu = a.device != "cpu" && hw.value().gpu.present;
  planner::SearchChoice search;
  search.method = a.search;
  search.pgsam.seed = a.seed;
  if (a.search != "auto" && a.search != "exhaustive" && a.search != "pgsam") {
    std::fprintf(stderr, "%s: --search '%s': expected auto, exhaustive or pgsam\n", who,
                 a.search.c_str());
    return 2;
  }
  std::string table, json;
  if (a.mode == "train") {
    if (a.seq_len < 1 || a.tokens_per_step < a.seq_len || a.tokens_per_step % a.seq_len != 0) {
      std::fprintf(stderr,
                   "%s: --tokens-per-step %lld must be a positive multiple of --seq-len %lld "
                   "(whole rows per step)\n",
                   who, (long long)a.tokens_per_step, (long long)a.seq_len);
      return 2;
    }
    planner::TrainWorkload w;
    w.model = cfg.value();
    w.seq_len = a.seq_len;
    w.rows_per_step = a.tokens_per_step / a.seq_len;
    w.clip = a.clip;
    w.use_gpu = gpu;
    w.bf16 =
        gpu || a.compute == "bf16" || (a.compute == "auto" && profile_prefers_bf16(hw.value()));
    Result<planner::TrainPlan> plan = planner::plan_train(hw.value(), w, objective, search);
    if (!plan.ok()) {
      std::fprintf(stderr, "%s: %s\n", who, plan.error().message.c_str());
      return 1;
    }
    table = planner::format_train_plan(plan.value(), hw.value());
    json = planner::train_plan_json(plan.value(), hw.value());
  } else {
    Result<std::vector<planner::KvKind>> kinds = parse_kv_kinds(a.kv_cache);
    if (!kinds.ok()) {
      std::fprintf(stderr, "%s: %s\n", who, kinds.error().message.c_str());
      return 2;
    }
    planner::InferWorkload w;
    w.model = cfg.value();
    w.batch = a.batch;
    w.prompt_tokens = a.prompt_tokens;
    w.new_tokens = a.new_tokens;
    w.use_gpu = gpu;
    planner::InferSettings base;
    base.kv_group = a.kv_group;
    base.kv_residual = a.kv_residual;
    Result<planner::InferPlan> plan =
        planner::plan_infer(hw.value(), w, objective, kinds.value(), base, search);
    if (!plan.ok()) {
      std::fprintf(stderr, "%s: %s\n", who, plan.error().message.c_str());
      return 1;
    }
    table = planner::format_infer_plan(plan.value(), hw.value());
    json = planner::infer_plan_json(plan.value(), hw.value());
  }
  std::fputs(table.c_str(), stdout);
  if (a.json) std::printf("%s\n", json.c_str());
  return 0;
}

}  // namespace ramstream::cli
