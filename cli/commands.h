// The subcommands of the `ramstream` binary that are more than a few lines, one file each, so that
// each can grow (and be tested) on its own; cli/main.cpp parses the command line and dispatches.
//
//   return ramstream::cli::inspect_command(model_dir);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ramstream::cli {

// `ramstream inspect --model DIR|FILE.gguf`: architecture, parameter counts, memory per mode, and
// the checks `run` makes on the weights and the tokenizer; non-zero exit on any problem.
int inspect_command(const std::string& path);
// `ramstream convert --from FILE.gguf --to DIR [--dtype bf16|fp16|fp32] [--force]`: GGUF ->
// Hugging Face folder; `ramstream convert --from DIR --to FILE.gguf [--type f32|f16|bf16|q8_0]
// [--force]`: Hugging Face folder -> GGUF. The direction follows --from (a folder or a file).
struct ConvertArgs {
  std::string from, to;
  std::string dtype;   // GGUF -> HF weights; "" = bf16
  std::string type;    // HF -> GGUF weights; "" = f16
  bool force = false;  // replace a --to that is not a previous output of ours
};
int convert_command(const ConvertArgs& args);

// What generate, chat and eval share: the model, the device and the KV cache.
struct InferenceArgs {
  std::string model;
  std::string device = "auto";
  std::string kv_cache = "bf16";
  int kv_group = 32, kv_residual = 128, kv_sink = 0;
  int kv_key_outliers = 0;              // KIVI: exact values per key channel and group
  std::string kv_value_fit = "minmax";  // minmax | mse (KIVI values)
  double kv_budget = 0.2;
  double kv_memory_gib = 0;               // cap on the KV pages; 0 = what host RAM allows
  std::string kv_device_memory = "auto";  // the pages' device twin: auto | off | GiB
  double weights_device_gib = -1;         // CUDA: device memory for the weights; -1 = no limit
  int64_t batch_size = 32;                // sequences (or eval windows) run together
  bool json = false;  // the last stdout line is one JSON object with the figures
  // none | auto | time | energy | balanced: the planner picks the decode micro-batch for the
  // batch and predicts the run's time next to the measured one (planner/planner.h).
  std::string plan = "none";
  std::string plan_hardware = "auto";
};
struct SamplingArgs {
  int64_t max_new_tokens = 256;
  double temperature = 0, top_p = 1, repetition_penalty = 1;
  int64_t top_k = 0;
  uint64_t seed = 0;
  std::vector<std::string> stop;  // stop strings
  bool ignore_eos = false;
};
// `ramstream generate --model M (--prompt T | --prompt-file F | --batch-file F.jsonl) ...`
struct GenerateArgs {
  InferenceArgs inf;
  SamplingArgs sampling;
  std::string prompt, prompt_file, batch_file, output;
  bool raw = false;  // no chat template
};
int generate_command(const GenerateArgs& args);
// `ramstream chat --model M ...`: an interactive session (reads a pipe too).
struct ChatArgs {
  InferenceArgs inf;
  SamplingArgs sampling;
  std::string system;
};
int chat_command(const ChatArgs& args);
// `ramstream eval --model M --data FILE | --tasks FILE ...`: perplexity through the decode path,
// or exact match on chat tasks.
struct EvalArgs {
  InferenceArgs inf;
  std::string data, tasks;
  int64_t context = 512, stride = 0, max_windows = 0, max_examples = 0, max_new_tokens = 32;
};
int eval_command(const EvalArgs& args);

// `ramstream plan --model M --mode train|infer --hardware auto|FILE --objective time|energy|
// balanced [--tokens-per-step N] [--json]`: the planner's Pareto front and chosen plan
// (planner/planner.h).
struct PlanArgs {
  std::string model;
  std::string mode = "train";
  std::string hardware = "auto";  // probe this machine, or a profile file / bundled name
  std::string objective = "time";
  std::string device = "auto";  // auto: the GPU when the profile has one
  std::string search = "auto";  // auto | exhaustive | pgsam
  uint64_t seed = 1;
  std::string save_hardware;  // write the profile used here as YAML
  bool json = false;
  // train
  int64_t seq_len = 256, tokens_per_step = 512;
  std::string compute = "auto";  // CPU: auto | fp32 | bf16
  bool clip = true;
  // infer
  int64_t batch = 1, prompt_tokens = 128, new_tokens = 128;
  std::string kv_cache = "bf16";  // a kind, a comma list, or auto
  int kv_group = 32, kv_residual = 128;
};
int plan_command(const PlanArgs& args);

}  // namespace ramstream::cli
