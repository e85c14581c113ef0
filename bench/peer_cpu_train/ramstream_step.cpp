// ramstream's side of bench/peer_cpu_train: training steps of a real model through the same
// Trainer::create that `ramstream run` uses (recipe, store layout, compute dtype, slots,
// clipping, AdamW), on a fixed token batch that the transformers side reads too.
//
//   build/bin/peer_train_step --model DIR --tokens FILE|random:SEED --batch 2 --seq 256
//       [--activations keep|recompute] [--compute auto|fp32|bf16] [--warmup 2] [--steps 6]
//       [--recipe NAME] [key.sub=value ...]
//
// FILE holds batch x seq little-endian int64 token ids (row-major), as written by
// peer_cpu_train.py; random:SEED draws them uniformly from the vocabulary (the CI smoke test).
// Targets are the next token (the last position of each row has none), the
// same as Hugging Face's `labels=ids`. The last stdout line is one JSON object: tokens_per_s
// (over the timed steps, the loss of each read as the trainer reads it), step_ms, losses,
// peak_rss_mib (VmHWM of this process; peak_rss_after_create_mib before the first step),
// compute, matmul_params, flops_per_token, gemm_flops_per_s (the probed rate of the compute dtype).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include "autograd/model.h"
#include "model/flops.h"
#include "pipeline/gemm_probe.h"
#include "trainer/recipe.h"
#include "trainer/trainer.h"
#include "util/runtime_defaults.h"

namespace rs = ramstream;

namespace {

struct Args {
  std::string model, tokens, recipe = "smollm2-135m-full-sft";
  std::string activations = "keep", compute = "auto";
  int64_t batch = 2, seq = 256, warmup = 2, steps = 6;
  std::vector<std::string> overrides;
};

int usage(const char* why) {
  std::fprintf(stderr,
               "peer_train_step: %s\nusage: peer_train_step --model DIR --tokens FILE [--batch B] "
               "[--seq T] [--activations keep|recompute] [--compute auto|fp32|bf16] [--warmup N] "
               "[--steps N] [--recipe NAME] [key.sub=value ...]\n",
               why);
  return 2;
}

double vm_hwm_mib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atof(line.c_str() + 6) / 1024.0;
  }
  return -1;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int main(int argc, char** argv) {
  ramstream::apply_runtime_defaults(argv);  // may re-execute with OMP_* / OPENBLAS_* defaults
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (k == "--model")
      a.model = next();
    else if (k == "--tokens")
      a.tokens = next();
    else if (k == "--recipe")
      a.recipe = next();
    else if (k == "--activations")
      a.activations = next();
    else if (k == "--compute")
      a.compute = next();
    else if (k == "--batch")
      a.batch = std::atoll(next().c_str());
    else if (k == "--seq")
      a.seq = std::atoll(next().c_str());
    else if (k == "--warmup")
      a.warmup = std::atoll(next().c_str());
    else if (k == "--steps")
      a.steps = std::atoll(next().c_str());
    else if (k.find('=') != std::string::npos && k[0] != '-')
      a.overrides.push_back(k);
    else
      return usage(("unknown argument " + k).c_str());
  }
  if (a.model.empty() || a.tokens.empty()) return usage("--model and --tokens are required");
  if (a.batch < 1 || a.seq < 2 || a.steps < 1 || a.warmup < 0) return usage("bad sizes");

  std::vector<int64_t> tokens(static_cast<size_t>(a.batch * a.seq));
  const bool random_tokens = a.tokens.rfind("random:", 0) == 0;
  if (!random_tokens) {
    std::ifstream f(a.tokens, std::ios::binary);
    f.read(reinterpret_cast<char*>(tokens.data()),
           static_cast<std::streamsize>(tokens.size() * sizeof(int64_t)));
    if (!f) {
      std::fprintf(stderr, "peer_train_step: %s: cannot read %lld int64 token ids\n",
                   a.tokens.c_str(), static_cast<long long>(tokens.size()));
      return 1;
    }
  }

  // The trainer writes recipe.yaml and metrics.jsonl there; nothing else is kept.
  const std::string out_dir =
      (std::filesystem::temp_directory_path() / ("peer_train_step_" + std::to_string(getpid())))
          .string();
  std::vector<std::string> overrides = {
      "model.path=" + a.model,
      "model.compute=" + a.compute,
      "engine.activations=" + a.activations,
      "train.batch_size=" + std::to_string(a.batch),
      "train.grad_accum=1",
      "data.max_seq_len=" + std::to_string(a.seq),
      "output_dir=" + out_dir,
      "checkpoint.resume=never",
  };
  overrides.insert(overrides.end(), a.overrides.begin(), a.overrides.end());
  rs::Result<rs::trainer::Recipe> recipe = rs::trainer::load_recipe(a.recipe, overrides);
  if (!recipe.ok()) {
    std::fprintf(stderr, "peer_train_step: %s\n", recipe.error().message.c_str());
    return 1;
  }
  rs::Result<std::unique_ptr<rs::trainer::Trainer>> trainer =
      rs::trainer::Trainer::create(recipe.value(), stderr);
  if (!trainer.ok()) {
    std::fprintf(stderr, "peer_train_step: %s\n", trainer.error().message.c_str());
    return 1;
  }
  rs::pipeline::Engine& engine = trainer.value()->engine();
  at::Tensor ids = at::from_blob(tokens.data(), {a.batch, a.seq}, at::kLong).clone();
  if (random_tokens) {
    at::manual_seed(std::atoll(a.tokens.c_str() + 7));
    ids = at::randint(0, trainer.value()->model_config().vocab_size, {a.batch, a.seq}, at::kLong);
  }
  const at::Tensor targets = rs::autograd::next_token_targets(ids);
  const double rss_after_create = vm_hwm_mib();

  std::vector<double> step_ms, losses;
  double t_begin = 0;
  for (int64_t s = 0; s < a.warmup + a.steps; ++s) {
    if (s == a.warmup) {
      engine.synchronize();
      t_begin = now_s();
    }
    const double t0 = now_s();
    rs::pipeline::StepResult r = engine.train_step({ids}, {targets});
    losses.push_back(r.loss());  // the trainer reads every step's loss too
    step_ms.push_back(1e3 * (now_s() - t0));
  }
  engine.synchronize();
  const double elapsed = now_s() - t_begin;

  nlohmann::json out;
  out["tokens_per_s"] = double(a.batch * a.seq * a.steps) / elapsed;
  out["step_ms"] = step_ms;
  out["losses"] = losses;
  out["peak_rss_mib"] = vm_hwm_mib();
  out["peak_rss_after_create_mib"] = rss_after_create;
  out["compute"] = engine.device().compute_dtype() == at::kBFloat16 ? "bf16" : "fp32";
  out["threads"] = at::get_num_threads();
  // The GEMM bound of the issue: tokens/s at which 6 x matmul weights x tokens take exactly as
  // long as the probed GEMM rate of the compute dtype (the trainer's cached probe).
  const rs::model::ModelConfig& cfg = trainer.value()->model_config();
  out["matmul_params"] = rs::model::matmul_param_count(cfg);
  out["flops_per_token"] = rs::model::training_flops_per_token(cfg, a.seq);
  rs::Result<rs::pipeline::GemmRate> rate =
      rs::pipeline::cached_gemm_rate(at::Device(at::kCPU), engine.device().compute_dtype());
  if (rate.ok()) out["gemm_flops_per_s"] = rate.value().flops_per_s;
  std::printf("%s\n", out.dump().c_str());
  trainer.value().reset();
  std::error_code ec;
  std::filesystem::remove_all(out_dir, ec);
  return 0;
}
