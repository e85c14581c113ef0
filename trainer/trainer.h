// The training loop behind `ramstream run`: loads a model (HF folder or GGUF) and its tokenizer,
// builds the dataset, streams the model through the Engine, and handles the schedule, evaluation,
// logging, checkpoints and resume. Custom loops can drive the Engine directly instead
// (examples/custom_loop.cpp).
//
//   Result<Recipe> recipe = load_recipe("smollm2-135m-full-sft", {"train.max_steps=20"});
//   Result<std::unique_ptr<Trainer>> t = Trainer::create(recipe.value());
//   Result<TrainSummary> s = t.value()->train();   // resumes from output_dir when it can
//   std::printf("accuracy %.1f%% -> %.1f%%\n", 100 * s.value().before.accuracy,
//               100 * s.value().after.accuracy);
//
// What a run leaves in output_dir: recipe.yaml (resolved), metrics.jsonl (one JSON object per
// logged step and per evaluation), step_NNNNNN/ checkpoints (checkpoint/train_state.h).
// The only randomness is the order of the data, a pure function of (train.seed, epoch), so a
// checkpoint's data cursor and step count are all a resumed run needs to continue exactly.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/tokenizer.h"
#include "model/config.h"
#include "pipeline/engine.h"
#include "trainer/recipe.h"
#include "util/result.h"

namespace ramstream::trainer {

struct EvalResult {
  double val_loss = -1;  // mean over target tokens; -1 when there is no validation data
  int64_t val_tokens = 0;
  double accuracy = -1;  // exact match of greedy generations; -1 when not measured
  int64_t correct = 0, total = 0;
  std::vector<std::string> samples;  // a few "prompt -> generated (expected)" lines
};

struct TrainSummary {
  int64_t first_step = 0, last_step = 0;  // steps run in this process: (first, last]
  double first_loss = -1, last_loss = -1;
  EvalResult before, after;
  double tokens_per_s = 0;      // training tokens (padding included) per second, mean
  bool interrupted = false;     // stopped by SIGINT (after saving)
  std::string last_checkpoint;  // "" when none was written
  int64_t nan_steps_skipped = 0;
};

class Trainer {
 public:
  // Loads everything and prints the start-up table to `log`. Errors name the file or key.
  static Result<std::unique_ptr<Trainer>> create(const Recipe& recipe, FILE* log = stdout);
  ~Trainer();

  Result<TrainSummary> train();
  // Validation loss, and exact-match accuracy when the recipe asks for it (synchronizes first).
  EvalResult evaluate();

  pipeline::Engine& engine();
  const data::Tokenizer& tokenizer() const;
  const model::ModelConfig& model_config() const;
  const data::Dataset& dataset() const;

  struct State;  // public so the implementation's helpers can take it

 private:
  explicit Trainer(std::unique_ptr<State> state);
  std::unique_ptr<State> s_;
};

// SIGINT/SIGTERM make the running train() save a checkpoint after the current step and return
// with `interrupted` set; a second signal exits at once. Installed by train().
void install_stop_handlers();
bool stop_requested();
void clear_stop_request();

}  // namespace ramstream::trainer
