// Recipes: the YAML files that describe a training run, with torchtune-style dotted overrides
// from the command line. Every key is declared once in a schema (recipe.cpp) with its type,
// allowed values, default and meaning; unknown keys are errors that suggest the closest valid key.
//
//   # recipes/my-run.yaml
//   model:
//     path: ~/.cache/ramstream/models/SmolLM2-135M-Instruct.Q4_1.gguf
//   train:
//     lr: 1e-4
//
//   Result<Recipe> r = load_recipe("recipes/my-run.yaml", {"train.lr=2e-4", "output_dir=out/x"});
//   if (!r.ok()) { std::cerr << r.error().message << "\n"; return 1; }   // file:line: unknown key
//   std::cout << describe_recipe(r.value());   // every key: value, default, meaning
//
// Where relative paths point (model.path, data.path, data.val_path):
//   * in a recipe file of the user's, and in every override, they are relative to the working
//     directory, as in torchtune; "~/" is the home folder;
//   * in a bundled recipe (`ramstream ls`) they name the data that ships with ramstream
//     (data/bundled/..., tests/fixtures/...) and resolve against the data folder, the first of:
//     $RAMSTREAM_DATA_DIR; a folder holding data/bundled at or up to three levels above the
//     running binary (build/bin/ramstream -> the source tree it was built in); the source tree
//     baked in at build time. With none found they stay relative to the working directory.
//   output_dir is always relative to the working directory.
//
// Hostile input stays bounded: a recipe file must be a regular file of at most 16 MiB; YAML
// nesting, aliases (a mapping that contains itself, "billion laughs") and the number of keys are
// limited with an error naming the line; duplicate keys are errors naming both lines; numbers
// must be finite and inside each key's range; no message echoes more than a short cut of input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "util/result.h"

namespace ramstream::trainer {

struct Recipe {
  std::string source;  // file or bundled name it came from
  std::string output_dir = "out/run";
  std::string plan = "none";           // none | auto | time | energy | balanced (planner/)
  std::string plan_hardware = "auto";  // auto (probe) | a profile file | a bundled profile

  // model
  std::string model_path;              // HF folder or .gguf file; "~" expands to $HOME
  std::string model_compute = "auto";  // auto | fp32 | bf16 (pipeline::choose_cpu_compute)

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

  // dist (data parallel; the processes come from `ramstream launch` or another launcher)
  bool shard_optimizer = false;

  // eval
  int64_t eval_every = 0;  // steps; 0: only before/after
  bool eval_before = true;
  bool eval_at_end = true;
  bool eval_force = false;  // a finished run asked to run again evaluates instead of doing nothing
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
// overrides applied in order. Errors: the file (missing, a folder or device, too large), YAML
// syntax and structure (file:line), unknown keys (file:line and the closest valid key), values of
// the wrong type or outside their range or choices (file:line, key and value). Paths are not
// checked here (see recipe_path_problems).
Result<Recipe> load_recipe(const std::string& file_or_name,
                           const std::vector<std::string>& overrides);
// The same from YAML text; `source` names it in messages. Relative paths stay as written.
Result<Recipe> parse_recipe(const std::string& yaml_text, const std::string& source,
                            const std::vector<std::string>& overrides);

// What `ramstream validate` reports: every problem of a recipe, not just the first; the first
// `max_shown` as messages, all of them counted.
struct RecipeCheck {
  std::vector<std::string> problems;  // at most max_shown, in file order, then overrides
  size_t total = 0;                   // problems found; > problems.size() when some are not shown
  bool ok() const { return total == 0; }
};
// Schema, values and the paths (recipe_path_problems) of a recipe file or bundled name. Runs in
// time linear in the file, with closest-key suggestions only for the problems shown.
RecipeCheck validate_recipe(const std::string& file_or_name,
                            const std::vector<std::string>& overrides = {}, size_t max_shown = 50);

// Problems with the files a recipe names: model.path must be a model folder (with config.json) or
// a .gguf file, data.path and data.val_path regular files. The message for a missing default
// model (the bundled recipes' SmolLM2 GGUF) says to run scripts/fetch_default_model.sh.
std::vector<std::string> recipe_path_problems(const Recipe& recipe);

// The fully resolved recipe as YAML (saved as <output_dir>/recipe.yaml).
std::string recipe_to_yaml(const Recipe& recipe);
// The same YAML with a comment above every key giving its meaning, default and allowed values
// (`ramstream show`); it parses back to the same recipe.
std::string describe_recipe(const Recipe& recipe);
// All valid dotted keys, in schema order (data.columns.<field>, a mapping, is not among them).
std::vector<std::string> recipe_keys();
// One key of the schema: what `show` prints, and what tests generate bad values from.
struct RecipeKeyInfo {
  enum class Kind { kText, kChoice, kBool, kInteger, kNumber };
  std::string key;  // dotted
  Kind kind = Kind::kText;
  double min = 0, max = 0;    // kInteger and kNumber: the range (see `allowed` for open ends)
  std::string allowed;        // e.g. "an integer in [2, 64]", "one of stop | skip"
  std::string default_value;  // as text
  std::string doc;            // what it does
};
std::vector<RecipeKeyInfo> recipe_schema();
// The valid key closest to `key` (edit distance), "" when nothing is close.
std::string closest_recipe_key(const std::string& key);

struct BundledRecipe {
  std::string name;  // file name without .yaml
  std::string text;
};
// The recipes of recipes/ compiled into the binary.
const std::vector<BundledRecipe>& bundled_recipes();
// What a bundled recipe is for: its first line, "# name: description", after the name.
std::string recipe_description(const BundledRecipe& recipe);
// The folder bundled recipes' relative paths resolve against (see the top of this file), "" when
// none is found.
std::string bundled_data_dir();

// "~/x" -> "$HOME/x"; other paths unchanged.
std::string expand_user(const std::string& path);

}  // namespace ramstream::trainer
