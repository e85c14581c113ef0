// Recipes: the YAML files that describe a training run, with torchtune-style dotted overrides
// from the command line. Every key is declared once in a schema (recipe.cpp) with its type,
// default and meaning; unknown keys are errors that suggest the closest valid key.
//
//   # recipes/my-run.yaml
//   model:
//     path: ~/.cache/ramstream/models/SmolLM2-135M-Instruct.Q4_1.gguf
//   train:
//     lr: 1e-4
//
//   Result<Recipe> r = load_recipe("recipes/my-run.yaml", {"train.lr=2e-4", "output_dir=out/x"});
//   if (!r.ok()) { std::cerr << r.error().message << "\n"; return 1; }   // file:line: unknown key
//   std::cout << recipe_to_yaml(r.value());                                // fully resolved
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "util/result.h"

namespace ramstream::trainer {

struct Recipe {
  std::string source;  // file or bundled name it came from
  std::string output_dir = "out/run";

  // model
  std::string model_path;              // HF folder or .gguf file; "~" expands to $HOME
  std::string model_compute = "auto";  // auto (fp32 on CPU, bf16 on CUDA) | fp32 | bf16

  // data
  std::string data_path;
  std::string data_format = "auto";
  std::map<std::string, std::string> data_columns;
  std::string chat_format = "auto";  // auto (from the model's template) | chatml | llama3
  std::string system_prompt;
  bool train_on_prompt = false;
  bool skip_malformed = false;
  int64_t max_seq_len = 512;
  bool pack = true;
  std::string val_path;  // a separate validation file; else a split of data_path
  int64_t val_size = 0;
  double val_fraction = 0.0;
  std::string cache_dir = "auto";  // auto: <output_dir>/.data_cache; "" disables

  // train
  uint64_t seed = 42;
  int64_t max_steps = 100;
  int64_t batch_size = 1;  // rows per micro-batch
  int64_t grad_accum = 1;  // micro-batches per optimizer step
  double lr = 1e-4;
  std::string lr_schedule = "cosine";  // constant | linear | cosine
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.0;  // final lr / peak lr for linear and cosine
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double max_grad_norm = 1.0;       // 0 disables clipping
  std::string nan_policy = "stop";  // stop | skip (skip needs clipping: the update is dropped)

  // engine
  std::string device = "auto";  // auto | cpu | cuda
  int64_t num_slots = 2;
  std::string activations = "recompute";  // recompute | keep
  bool host_checkpoints = false;
  // CUDA: run on even if the parameter store cannot be page-locked (every copy synchronous).
  bool allow_pageable = false;

  // eval
  int64_t eval_every = 0;  // steps; 0: only before/after
  bool eval_before = true;
  bool eval_at_end = true;
  int64_t eval_max_rows = 64;  // validation-loss rows per evaluation
  bool eval_accuracy = false;  // exact-match accuracy by greedy generation (task data)
  int64_t eval_max_examples = 200;
  int64_t max_new_tokens = 16;

  // checkpoint
  int64_t save_every = 0;  // steps; 0: only at the end
  bool save_at_end = true;
  int64_t keep_last_n = 2;
  std::string save_dtype = "bf16";  // model folder weights: bf16 | fp16 | fp32
  bool async_save = true;           // save while the next step runs
  std::string resume = "auto";      // auto (newest valid in output_dir) | never | PATH

  // log
  int64_t log_every = 1;
  std::string progress = "auto";  // auto (bar on a TTY) | bar | lines
};

// A recipe file path, or the name of a bundled recipe (`ramstream ls`), plus "key=value"
// overrides applied in order. Errors: YAML syntax (file:line), unknown keys (file:line and the
// closest valid key), values of the wrong type or outside their choices (key and value).
Result<Recipe> load_recipe(const std::string& file_or_name,
                           const std::vector<std::string>& overrides);
Result<Recipe> parse_recipe(const std::string& yaml_text, const std::string& source,
                            const std::vector<std::string>& overrides);
// Every problem of a recipe file, not just the first (for `ramstream validate`).
std::vector<std::string> validate_recipe(const std::string& file_or_name);

// The fully resolved recipe as YAML (saved as <output_dir>/recipe.yaml).
std::string recipe_to_yaml(const Recipe& recipe);
// All valid dotted keys, in schema order.
std::vector<std::string> recipe_keys();
// The valid key closest to `key` (edit distance), "" when nothing is close.
std::string closest_recipe_key(const std::string& key);

struct BundledRecipe {
  std::string name;  // file name without .yaml
  std::string text;
};
// The recipes of recipes/ compiled into the binary.
const std::vector<BundledRecipe>& bundled_recipes();

// "~/x" -> "$HOME/x"; other paths unchanged.
std::string expand_user(const std::string& path);

}  // namespace ramstream::trainer
