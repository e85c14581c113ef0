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
//   return s.value().exit_status();   // 130 after Ctrl-C (a checkpoint was saved first)
//
// Trainer::create refuses, before anything large is allocated and with the keys to change:
// data.max_seq_len beyond the model's max_position_embeddings, a batch whose activations do not
// fit in host memory (estimate_engine_memory), data with nothing to train on (data/dataset.h), a
// tokenizer with an empty vocabulary; engine.num_slots beyond the model's stages is clamped with
// a warning. Log lines (no TTY) carry percent, elapsed time and ETA; long evaluations log
// progress too; a finished run asked again does nothing unless eval.force (evaluates) or a higher
// train.max_steps (trains on).
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
#include "pipeline/engine_memory.h"
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
  double tokens_per_s = 0;  // training tokens (padding included) per second, mean
  // Stopped by SIGINT or SIGTERM (stop_signal) after saving what it had trained.
  bool interrupted = false;
  int stop_signal = 0;
  // The checkpoint it resumed from was already at train.max_steps: nothing was trained, and
  // nothing evaluated unless eval.force.
  bool already_finished = false;
  std::string last_checkpoint;  // "" when none was written (or resumed from, when finished)
  int64_t nan_steps_skipped = 0;
  double wall_seconds = 0;  // from Trainer::create to the end of train()

  // What `ramstream run` exits with: 0, or 128 + the signal when interrupted (130 for Ctrl-C,
  // 143 for SIGTERM), as a shell reports a process that a signal stopped.
  int exit_status() const { return interrupted ? 128 + stop_signal : 0; }
};

// The closing lines of `ramstream run`: "done: steps 0..30, loss 5.9 -> 2.1, 900 tokens/s,
// wall 12.3s", then held-out accuracy and the checkpoint when there are some.
std::string summary_text(const TrainSummary& summary);

// Device and host bytes the Engine allocates for `recipe`'s batch on `cfg`
// (pipeline::estimate_engine_memory of the recipe's shape); `element_bytes` is the compute
// dtype's size. On the CPU backend both live in host memory. An estimate to refuse impossible
// batches up front, not an exact count.
using pipeline::EngineMemory;
EngineMemory estimate_engine_memory(const model::ModelConfig& cfg, const Recipe& recipe,
                                    int64_t element_bytes, bool cuda);

class Trainer {
 public:
  // Loads everything and prints the start-up table to `log`. Errors name the file or key.
  static Result<std::unique_ptr<Trainer>> create(const Recipe& recipe, FILE* log = stdout);
  ~Trainer();

  // Resumes from output_dir per checkpoint.resume and trains to train.max_steps. A run whose
  // checkpoint is already at max_steps says so and returns at once (already_finished). SIGINT or
  // SIGTERM: saves what was trained and returns with `interrupted`.
  Result<TrainSummary> train();
  // Validation loss, and exact-match accuracy when the recipe asks for it (synchronizes first).
  // Long evaluations log progress lines (rows and examples done, ETA) labelled `label`.
  EvalResult evaluate(const std::string& label = "eval");
  // Seconds between progress lines of a long evaluation (10 by default; 0: after every batch).
  void set_progress_interval(double seconds);

  pipeline::Engine& engine();
  const data::Tokenizer& tokenizer() const;
  const model::ModelConfig& model_config() const;
  const data::Dataset& dataset() const;

  struct State;  // public so the implementation's helpers can take it

 private:
  explicit Trainer(std::unique_ptr<State> state);
  // train() less the translation of a failed collective (dist::CommError) into its error.
  Result<TrainSummary> train_unguarded();
  std::unique_ptr<State> s_;
};

// SIGINT/SIGTERM make the running train() save a checkpoint after the current step and return
// with `interrupted` set; a second signal exits at once with 128 + the signal. Installed by
// train().
void install_stop_handlers();
bool stop_requested();
int stop_signal();  // the first signal received, 0 when none
void clear_stop_request();

}  // namespace ramstream::trainer
