#include "trainer/recipe.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <sstream>
#include <unordered_map>

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include "util/text.h"
#include "util/user_file.h"

namespace ramstream::trainer {
namespace {

// Limits that keep a hostile recipe bounded; real recipes nest 3 levels and hold about 60 keys.
constexpr uint64_t kMaxRecipeBytes = uint64_t(16) << 20;
constexpr int kMaxDepth = 32;                           // mappings and lists inside each other
constexpr size_t kMaxEntries = size_t(1) << 21;         // keys, after aliases are expanded
constexpr size_t kMaxAliasEntries = size_t(1) << 16;    // of them copied by aliases
constexpr size_t kMaxExpandedBytes = size_t(64) << 20;  // their text
constexpr size_t kMaxAnchors = size_t(1) << 16;
constexpr size_t kMaxPathBytes = 4096;
// A micro-batch and an optimizer step in tokens: beyond these no machine has the memory, and the
// products stay far from overflowing int64 in the trainer's arithmetic.
constexpr int64_t kMaxMicroBatchTokens = int64_t(1) << 24;
constexpr int64_t kMaxStepTokens = int64_t(1) << 40;
constexpr int64_t kMaxSteps = 1'000'000'000;

constexpr const char* kDefaultModelFile = "SmolLM2-135M-Instruct.Q4_1.gguf";
constexpr const char* kBundledSuffix = " (bundled)";

// One recipe key: its meaning, what it accepts, how to read it from text and write it back.
struct KeySpec {
  std::string key;
  std::string doc;      // what it does
  std::string allowed;  // what values it takes, for `show` and messages
  RecipeKeyInfo::Kind kind;
  double min, max;  // kInteger, kNumber
  std::function<Status(Recipe&, const std::string&)> set;
  std::function<std::string(const Recipe&)> get;
};

Status bad_value(const std::string& key, const std::string& value, const std::string& expected) {
  return Error{"'" + key + "': " + quote_bounded(value) + " is not " + expected};
}

std::string join(const std::vector<std::string>& items, const char* sep) {
  std::string out;
  for (const std::string& s : items) out += (out.empty() ? "" : sep) + s;
  return out;
}

// The shortest text that reads back as the same double.
std::string format_double(double x) {
  char buf[40];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, x);
    if (std::strtod(buf, nullptr) == x) break;
  }
  return buf;
}

KeySpec text_key(std::string key, std::string Recipe::*field, std::string allowed,
                 std::string doc) {
  KeySpec s{key,     std::move(doc), std::move(allowed), RecipeKeyInfo::Kind::kText, 0, 0,
            nullptr, nullptr};
  s.set = [field](Recipe& r, const std::string& v) -> Status {
    r.*field = v;
    return Ok{};
  };
  s.get = [field](const Recipe& r) { return r.*field; };
  return s;
}

KeySpec choice_key(std::string key, std::string Recipe::*field, std::vector<std::string> choices,
                   std::string doc) {
  const std::string list = "one of " + join(choices, " | ");
  KeySpec s{key, std::move(doc), list, RecipeKeyInfo::Kind::kChoice, 0, 0, nullptr, nullptr};
  s.set = [key, field, choices, list](Recipe& r, const std::string& v) -> Status {
    if (std::find(choices.begin(), choices.end(), v) == choices.end()) {
      return bad_value(key, v, list);
    }
    r.*field = v;
    return Ok{};
  };
  s.get = [field](const Recipe& r) { return r.*field; };
  return s;
}

template <class Int>
KeySpec int_key(std::string key, Int Recipe::*field, int64_t lo, int64_t hi, std::string doc) {
  const std::string range = "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  KeySpec s{key,
            std::move(doc),
            "an integer in " + range,
            RecipeKeyInfo::Kind::kInteger,
            double(lo),
            double(hi),
            nullptr,
            nullptr};
  s.set = [key, field, lo, hi, range](Recipe& r, const std::string& v) -> Status {
    errno = 0;
    char* end = nullptr;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || (errno != 0 && errno != ERANGE)) {
      return bad_value(key, v, "an integer");
    }
    if (errno == ERANGE || x < lo || x > hi) return bad_value(key, v, "in " + range);
    r.*field = static_cast<Int>(x);
    return Ok{};
  };
  s.get = [field](const Recipe& r) { return std::to_string(r.*field); };
  return s;
}

// A closed or half-open interval of finite numbers.
struct Interval {
  double lo, hi;
  bool hi_open = false;
  bool lo_open = false;
  bool contains(double x) const {
    return (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi);
  }
  std::string text() const {
    return std::string(lo_open ? "(" : "[") + format_double(lo) + ", " + format_double(hi) +
           (hi_open ? ")" : "]");
  }
};

KeySpec number_key(std::string key, double Recipe::*field, Interval range, std::string doc) {
  KeySpec s{key,
            std::move(doc),
            "a number in " + range.text(),
            RecipeKeyInfo::Kind::kNumber,
            range.lo,
            range.hi,
            nullptr,
            nullptr};
  s.set = [key, field, range](Recipe& r, const std::string& v) -> Status {
    errno = 0;
    char* end = nullptr;
    const double x = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0') return bad_value(key, v, "a number");
    if (!std::isfinite(x) || errno == ERANGE) return bad_value(key, v, "a finite number");
    if (!range.contains(x)) return bad_value(key, v, "in " + range.text());
    r.*field = x;
    return Ok{};
  };
  s.get = [field](const Recipe& r) { return format_double(r.*field); };
  return s;
}

KeySpec bool_key(std::string key, bool Recipe::*field, std::string doc) {
  KeySpec s{key, std::move(doc), "true or false", RecipeKeyInfo::Kind::kBool, 0,
            0,   nullptr,        nullptr};
  s.set = [key, field](Recipe& r, const std::string& v) -> Status {
    if (v == "true" || v == "True" || v == "yes" || v == "on" || v == "1") {
      r.*field = true;
    } else if (v == "false" || v == "False" || v == "no" || v == "off" || v == "0") {
      r.*field = false;
    } else {
      return bad_value(key, v, "true or false");
    }
    return Ok{};
  };
  s.get = [field](const Recipe& r) { return std::string(r.*field ? "true" : "false"); };
  return s;
}

// Every key, in the order `show` and recipe.yaml list them. A new key is a field of Recipe and
// one line here: its type, range or choices, and what it does.
const std::vector<KeySpec>& schema() {
  static const std::vector<KeySpec> keys = [] {
    using R = Recipe;
    const Interval unit{0, 1};
    std::vector<KeySpec> k;
    k.push_back(text_key("output_dir", &R::output_dir, "a folder",
                         "Where checkpoints, metrics.jsonl, recipe.yaml and the model go."));
    k.push_back(choice_key("plan", &R::plan, {"none", "auto", "time", "energy", "balanced"},
                           "Let the planner choose train.batch_size and grad_accum (same rows "
                           "per step), the engine's slots, activations, checkpoints, resident "
                           "layers and optimizer threads for this objective (auto: time); none "
                           "runs the recipe's settings. Either way the log shows the predicted "
                           "step time next to the measured one."));
    k.push_back(text_key("plan_hardware", &R::plan_hardware, "auto, a file or a bundled profile",
                         "The hardware profile the planner predicts with: auto probes this "
                         "machine (cached), else a profile YAML or a bundled profile name."));
    k.push_back(text_key("model.path", &R::model_path, "a folder or a .gguf file",
                         "The model: a Hugging Face folder (config.json, safetensors, tokenizer) "
                         "or a llama.cpp .gguf file."));
    k.push_back(
        choice_key("model.compute", &R::model_compute, {"auto", "fp32", "bf16"},
                   "Compute dtype (masters and optimizer stay fp32). auto: bf16 on CUDA; on the "
                   "CPU bf16 where a GEMM probe shows it >= 1.5x fp32 (AMX, AVX512-BF16), "
                   "else fp32."));
    k.push_back(text_key("data.path", &R::data_path, "a file",
                         "The training data: a text file, or .jsonl / .json records."));
    k.push_back(choice_key("data.format", &R::data_format,
                           {"auto", "text", "jsonl", "alpaca", "sharegpt", "messages"},
                           "How to read data.path; auto goes by the extension and first record."));
    k.push_back(choice_key("data.chat_format", &R::chat_format, {"auto", "chatml", "llama3"},
                           "Chat template of conversations; auto takes the model's."));
    k.push_back(text_key("data.system_prompt", &R::system_prompt, "text",
                         "System message of every conversation; empty keeps the template's."));
    k.push_back(bool_key("data.train_on_prompt", &R::train_on_prompt,
                         "Train on every token, prompts too (else only on assistant replies)."));
    k.push_back(bool_key("data.skip_malformed", &R::skip_malformed,
                         "Skip malformed records and count them (else the first is an error)."));
    k.push_back(int_key("data.max_seq_len", &R::max_seq_len, 2, int64_t(1) << 20,
                        "Tokens per row; longer conversations are cut (and counted)."));
    k.push_back(bool_key("data.pack", &R::pack,
                         "Pack several examples into each row, each seeing only itself (its "
                         "positions start at 0; no attention across examples); else one per row."));
    k.push_back(text_key("data.val_path", &R::val_path, "a file, or empty",
                         "A separate validation file; empty splits validation off data.path."));
    k.push_back(int_key("data.val_size", &R::val_size, 0, int64_t(1) << 30,
                        "Validation examples split off data.path; 0 uses data.val_fraction."));
    k.push_back(number_key("data.val_fraction", &R::val_fraction, Interval{0, 1, true},
                           "Fraction of data.path held out for validation (data.val_size 0)."));
    k.push_back(text_key("data.cache_dir", &R::cache_dir, "auto, a folder, or empty",
                         "Cache of the tokenised data; auto is <output_dir>/.data_cache, empty "
                         "turns it off."));
    k.push_back(int_key("train.seed", &R::seed, 0, std::numeric_limits<int64_t>::max(),
                        "Seed of the shuffle, the validation split and the evaluation sample."));
    k.push_back(int_key("train.max_steps", &R::max_steps, 0, kMaxSteps,
                        "Optimizer steps to train for; a resumed run continues up to it."));
    k.push_back(
        int_key("train.batch_size", &R::batch_size, 1, int64_t(1) << 20, "Rows per micro-batch."));
    k.push_back(int_key("train.grad_accum", &R::grad_accum, 1, int64_t(1) << 20,
                        "Micro-batches per optimizer step."));
    k.push_back(number_key("train.lr", &R::lr, unit, "Peak learning rate of AdamW."));
    k.push_back(choice_key("train.lr_schedule", &R::lr_schedule, {"constant", "linear", "cosine"},
                           "Learning-rate schedule after the warm-up."));
    k.push_back(int_key("train.warmup_steps", &R::warmup_steps, 0, kMaxSteps,
                        "Steps of linear warm-up from 0 to train.lr."));
    k.push_back(number_key("train.min_lr_ratio", &R::min_lr_ratio, unit,
                           "Final learning rate over train.lr (linear and cosine)."));
    k.push_back(number_key("train.weight_decay", &R::weight_decay, Interval{0, 10},
                           "AdamW decoupled weight decay."));
    k.push_back(number_key("train.beta1", &R::beta1, Interval{0, 1, true},
                           "AdamW decay of the first moment."));
    k.push_back(number_key("train.beta2", &R::beta2, Interval{0, 1, true},
                           "AdamW decay of the second moment."));
    k.push_back(number_key("train.eps", &R::eps, Interval{0, 1, false, true},
                           "AdamW epsilon, added to the root of the second moment."));
    k.push_back(number_key("train.max_grad_norm", &R::max_grad_norm, Interval{0, 1e9},
                           "Clip the global gradient norm to this; 0 turns clipping off."));
    k.push_back(choice_key("train.nan_policy", &R::nan_policy, {"stop", "skip"},
                           "On a non-finite loss or gradient: stop, or skip the update (skip "
                           "needs clipping)."));
    k.push_back(choice_key("engine.device", &R::device, {"auto", "cpu", "cuda"},
                           "Where to compute; auto takes CUDA when there is a GPU."));
    k.push_back(int_key("engine.num_slots", &R::num_slots, 2, 64,
                        "Layers on the device at once (each streamed through one of K slots)."));
    k.push_back(choice_key("engine.activations", &R::activations, {"recompute", "keep"},
                           "Recompute each layer's forward in the backward, or keep its "
                           "activations (faster, more memory)."));
    k.push_back(bool_key("engine.host_checkpoints", &R::host_checkpoints,
                         "Keep activation checkpoints in host memory instead of on the device."));
    k.push_back(bool_key("engine.allow_pageable", &R::allow_pageable,
                         "CUDA: run on if the parameter store cannot be page-locked (every copy "
                         "synchronous)."));
    k.push_back(bool_key("dist.shard_optimizer", &R::shard_optimizer,
                         "Data parallel (ramstream launch): each rank keeps Adam m, v and the "
                         "grads of 1/N of every stage (ZeRO-2, CPU backend): 4 + 12/N B/param "
                         "(fp32 compute), 2 + 12/N (bf16)."));
    k.push_back(int_key("eval.every", &R::eval_every, 0, kMaxSteps,
                        "Evaluate every N steps; 0: only before and after training."));
    k.push_back(bool_key("eval.before", &R::eval_before, "Evaluate before the first step."));
    k.push_back(bool_key("eval.at_end", &R::eval_at_end, "Evaluate after the last step."));
    k.push_back(bool_key("eval.force", &R::eval_force,
                         "A run already finished (checkpoint at train.max_steps) evaluates its "
                         "final model instead of doing nothing."));
    k.push_back(int_key("eval.max_rows", &R::eval_max_rows, 0, int64_t(1) << 20,
                        "Validation rows per validation-loss evaluation."));
    k.push_back(bool_key("eval.accuracy", &R::eval_accuracy,
                         "Also measure exact-match accuracy by greedy generation (task data)."));
    k.push_back(int_key("eval.max_examples", &R::eval_max_examples, 0, int64_t(1) << 20,
                        "Validation examples per accuracy evaluation."));
    k.push_back(int_key("eval.max_new_tokens", &R::max_new_tokens, 1, int64_t(1) << 16,
                        "Tokens generated per example for the accuracy."));
    k.push_back(int_key("checkpoint.every", &R::save_every, 0, kMaxSteps,
                        "Save a checkpoint every N steps; 0: only at the end."));
    k.push_back(
        bool_key("checkpoint.at_end", &R::save_at_end, "Save a checkpoint after the last step."));
    k.push_back(int_key("checkpoint.keep_last_n", &R::keep_last_n, 0, 1'000'000,
                        "Checkpoints kept in output_dir, older ones deleted; 0 keeps all."));
    k.push_back(choice_key("checkpoint.dtype", &R::save_dtype, {"bf16", "fp16", "fp32"},
                           "Dtype of the weights in saved model folders."));
    k.push_back(bool_key("checkpoint.async", &R::async_save, "Save while the next step runs."));
    k.push_back(text_key("checkpoint.resume", &R::resume, "auto, never, or a checkpoint folder",
                         "auto: from the newest valid checkpoint in output_dir; never: start "
                         "over; or from the given checkpoint."));
    k.push_back(int_key("log.every", &R::log_every, 1, kMaxSteps,
                        "Log a line and a metrics.jsonl row every N steps."));
    k.push_back(choice_key("log.progress", &R::progress, {"auto", "bar", "lines"},
                           "Progress display; auto is a bar on a terminal, else lines."));
    return k;
  }();
  return keys;
}

const KeySpec* find_key(const std::string& key) {
  static const std::unordered_map<std::string, const KeySpec*> index = [] {
    std::unordered_map<std::string, const KeySpec*> m;
    for (const KeySpec& s : schema()) m.emplace(s.key, &s);
    return m;
  }();
  const auto it = index.find(key);
  return it == index.end() ? nullptr : it->second;
}

// data.columns.<field> maps a dataset field to the file's column name.
constexpr const char* kColumnsPrefix = "data.columns.";
constexpr size_t kColumnsPrefixSize = 13;

bool is_columns_key(const std::string& key) {
  return key.size() > kColumnsPrefixSize && key.compare(0, kColumnsPrefixSize, kColumnsPrefix) == 0;
}

std::string unknown_key_message(const std::string& key) {
  std::string msg = "unknown key " + quote_bounded(key);
  const std::string near = closest_recipe_key(key);
  if (!near.empty()) msg += " (did you mean '" + near + "'?)";
  return msg;
}

// Every problem of a recipe counted; messages kept only for the first `max_shown`, so a recipe
// with a million bad keys costs a million counts, not a million messages (or suggestions).
class Problems {
 public:
  Problems(size_t max_shown, bool stop_at_first)
      : max_shown_(max_shown), stop_at_first_(stop_at_first) {}
  // Compose a message only when this is true (suggestions cost an edit distance per key).
  bool keeps_next() const { return shown_.size() < max_shown_; }
  void add(std::string message) {
    ++total_;
    if (keeps_next()) shown_.push_back(std::move(message));
  }
  void count() { ++total_; }
  bool stop() const { return stop_at_first_ && total_ > 0; }
  size_t total() const { return total_; }
  std::vector<std::string>& shown() { return shown_; }

 private:
  size_t max_shown_;
  bool stop_at_first_;
  size_t total_ = 0;
  std::vector<std::string> shown_;
};

// Applies key=value; an unknown key is reported through `problems` (with a suggestion only when
// its message is kept), a bad value likewise. `where()` gives the message's prefix ("r.yaml:12"),
// made only when needed: a huge recipe has a million keys.
template <class Where>
void set_key(Recipe& r, const std::string& key, const std::string& value, const Where& where,
             Problems& problems) {
  if (is_columns_key(key)) {
    r.data_columns[key.substr(kColumnsPrefixSize)] = value;
    return;
  }
  const KeySpec* spec = find_key(key);
  if (spec == nullptr) {
    if (problems.keeps_next()) {
      problems.add(where() + ": " + unknown_key_message(key));
    } else {
      problems.count();
    }
    return;
  }
  Status st = spec->set(r, value);
  if (!st.ok()) problems.add(where() + ": " + st.error().message);
}

// ---- YAML: a recipe is a mapping of mappings of scalars, flattened to dotted keys ----

enum class EntryProblem { kNone, kList, kDuplicate, kBadKey, kUnusableAlias };

struct FlatEntry {
  std::string key, value;
  int line = 0;  // of the key
  EntryProblem problem = EntryProblem::kNone;
  int first_line = 0;  // kDuplicate: where the key was first
};

// Thrown from the event handler to stop yaml-cpp's parser at a limit or a structure no recipe has.
struct YamlStop {
  int line;
  std::string message;
};

// Flattens yaml-cpp's parse events straight into dotted keys, so that nothing recurses over the
// document: nesting is counted as it happens, an alias of a mapping copies the mapping's keys
// (within the key budget), an alias inside the mapping it names is refused, and duplicate keys
// are caught per mapping with both lines.
class RecipeFlattener : public YAML::EventHandler {
 public:
  explicit RecipeFlattener(std::vector<FlatEntry>& out) : out_(out) {}

  void OnDocumentStart(const YAML::Mark& mark) override {
    if (++documents_ > 1) {
      throw YamlStop{line_of(mark), "a second YAML document ('---'); a recipe is one mapping"};
    }
  }
  void OnDocumentEnd() override {}

  void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    scalar(mark, anchor, "", true);
  }
  void OnScalar(const YAML::Mark& mark, const std::string& /*tag*/, YAML::anchor_t anchor,
                const std::string& value) override {
    scalar(mark, anchor, value, false);
  }

  void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    if (skip_depth_ > 0 || maps_.empty()) return;
    const Anchor target = anchor < anchors_.size() ? anchors_[anchor] : Anchor{};
    Map& m = maps_.back();
    const int line = line_of(mark);
    if (m.expect_key) {
      if (target.kind == AnchorKind::kScalar) {
        key(m, target.value, line);
      } else {
        bad_key(m, line);
      }
      return;
    }
    m.expect_key = true;
    if (m.skip_value) {
      m.skip_value = false;
      return;
    }
    switch (target.kind) {
      case AnchorKind::kScalar:
        emit({m.key, target.value, m.key_line});
        break;
      case AnchorKind::kOpenMap:
        throw YamlStop{line, "the alias under " + quote_bounded(m.key) +
                                 " refers to a mapping that contains it (an endless recipe)"};
      case AnchorKind::kMap:
        copy_map(target, m.key, m.key_line);
        break;
      case AnchorKind::kList:
        emit({m.key, "", m.key_line, EntryProblem::kList});
        break;
      default:
        emit({m.key, "", m.key_line, EntryProblem::kUnusableAlias});
    }
  }

  void OnSequenceStart(const YAML::Mark& mark, const std::string& /*tag*/, YAML::anchor_t anchor,
                       YAML::EmitterStyle::value /*style*/) override {
    enter(mark);
    if (skip_depth_ > 0) {
      ++skip_depth_;
      name_anchor(anchor, AnchorKind::kUnusable);
      return;
    }
    if (maps_.empty()) {
      throw YamlStop{line_of(mark), "a recipe must be a mapping of keys to values, not a list"};
    }
    Map& m = maps_.back();
    if (m.expect_key) {
      bad_key(m, line_of(mark));
    } else if (!take_skip_value(m)) {
      emit({m.key, "", m.key_line, EntryProblem::kList});
    }
    skip_depth_ = 1;
    name_anchor(anchor, AnchorKind::kList);
  }
  void OnSequenceEnd() override {
    --depth_;
    if (skip_depth_ > 0) --skip_depth_;
  }

  void OnMapStart(const YAML::Mark& mark, const std::string& /*tag*/, YAML::anchor_t anchor,
                  YAML::EmitterStyle::value /*style*/) override {
    enter(mark);
    if (skip_depth_ > 0) {
      ++skip_depth_;
      name_anchor(anchor, AnchorKind::kUnusable);
      return;
    }
    if (maps_.empty()) {
      maps_.push_back(Map{"", anchor, out_.size()});
      name_anchor(anchor, AnchorKind::kOpenMap);
      return;
    }
    Map& m = maps_.back();
    if (m.expect_key) {
      bad_key(m, line_of(mark));
    } else if (!take_skip_value(m)) {
      const std::string prefix = m.key;  // `m` dangles once maps_ grows
      maps_.push_back(Map{prefix, anchor, out_.size()});
      name_anchor(anchor, AnchorKind::kOpenMap);
      return;
    }
    skip_depth_ = 1;
    name_anchor(anchor, AnchorKind::kUnusable);
  }
  void OnMapEnd() override {
    --depth_;
    if (skip_depth_ > 0) {
      --skip_depth_;
      return;
    }
    Map m = std::move(maps_.back());
    maps_.pop_back();
    if (m.anchor != 0 && m.anchor < anchors_.size()) {
      anchors_[m.anchor] = Anchor{AnchorKind::kMap, "", m.begin, out_.size(), m.prefix};
    }
  }

 private:
  enum class AnchorKind { kNone, kScalar, kOpenMap, kMap, kList, kUnusable };
  struct Anchor {
    AnchorKind kind = AnchorKind::kNone;
    std::string value;          // kScalar
    size_t begin = 0, end = 0;  // kMap: its keys in out_
    std::string prefix;         // kMap: the dotted key they start with
  };
  struct Map {
    std::string prefix;  // dotted key of this mapping, "" at the top
    YAML::anchor_t anchor = 0;
    size_t begin = 0;  // its first key in out_
    bool expect_key = true;
    bool skip_value = false;  // the value after a refused key is not read
    std::string key{};        // dotted key awaiting its value
    int key_line = 0;
    std::unordered_map<std::string, int> seen{};  // key -> line
  };

  static int line_of(const YAML::Mark& mark) { return mark.line + 1; }

  void enter(const YAML::Mark& mark) {
    if (++depth_ > kMaxDepth) {
      throw YamlStop{line_of(mark), "nested deeper than " + std::to_string(kMaxDepth) +
                                        " levels (a recipe has 3)"};
    }
  }

  // After a duplicate or refused key its value is passed over; true when this value is that one.
  static bool take_skip_value(Map& m) {
    m.expect_key = true;
    if (!m.skip_value) return false;
    m.skip_value = false;
    return true;
  }

  void scalar(const YAML::Mark& mark, YAML::anchor_t anchor, const std::string& value,
              bool is_null) {
    if (skip_depth_ > 0) {
      name_anchor(anchor, AnchorKind::kUnusable);
      return;
    }
    if (maps_.empty()) {
      if (is_null) return;  // an empty document: a recipe without keys
      throw YamlStop{line_of(mark),
                     "a recipe must be a mapping of keys to values, not a single value"};
    }
    Map& m = maps_.back();
    if (m.expect_key) {
      if (is_null) {
        bad_key(m, line_of(mark));
      } else {
        key(m, value, line_of(mark));
      }
      name_anchor(anchor, AnchorKind::kScalar, value);
      return;
    }
    if (take_skip_value(m)) {
      name_anchor(anchor, AnchorKind::kUnusable);
      return;
    }
    emit({std::move(m.key), value, m.key_line});
    name_anchor(anchor, AnchorKind::kScalar, value);
  }

  void key(Map& m, const std::string& name, int line) {
    std::string dotted = m.prefix.empty() ? name : m.prefix + "." + name;
    const auto [it, inserted] = m.seen.try_emplace(name, line);
    m.expect_key = false;
    if (!inserted) {
      emit({std::move(dotted), "", line, EntryProblem::kDuplicate, it->second});
      m.skip_value = true;
      return;
    }
    m.key = std::move(dotted);
    m.key_line = line;
  }

  void bad_key(Map& m, int line) {
    emit({m.prefix, "", line, EntryProblem::kBadKey});
    m.expect_key = false;
    m.skip_value = true;
  }

  void emit(FlatEntry e) {
    expanded_bytes_ += e.key.size() + e.value.size();
    if (out_.size() >= kMaxEntries || expanded_bytes_ > kMaxExpandedBytes) {
      throw YamlStop{e.line, "more than " + std::to_string(kMaxEntries) + " keys or " +
                                 std::to_string(kMaxExpandedBytes >> 20) + " MiB of them"};
    }
    out_.push_back(std::move(e));
  }

  // An alias of a whole mapping: its keys again under `prefix`.
  void copy_map(const Anchor& target, const std::string& prefix, int line) {
    alias_entries_ += target.end - target.begin;
    if (alias_entries_ > kMaxAliasEntries) {
      throw YamlStop{line, "aliases expand to more than " + std::to_string(kMaxAliasEntries) +
                               " keys (an alias bomb?)"};
    }
    for (size_t i = target.begin; i < target.end; ++i) {
      FlatEntry e = out_[i];  // a copy: emit() may reallocate out_
      e.key = prefix + e.key.substr(target.prefix.size());
      e.line = line;
      emit(std::move(e));
    }
  }

  void name_anchor(YAML::anchor_t anchor, AnchorKind kind, const std::string& value = "") {
    if (anchor == 0) return;
    if (anchor >= kMaxAnchors) {
      throw YamlStop{0, "more than " + std::to_string(kMaxAnchors) + " anchors"};
    }
    if (anchor >= anchors_.size()) anchors_.resize(anchor + 1);
    anchors_[anchor] = Anchor{kind, value, 0, 0, ""};
  }

  std::vector<FlatEntry>& out_;
  std::vector<Map> maps_;
  std::vector<Anchor> anchors_;  // by yaml-cpp's anchor id
  int depth_ = 0;
  int skip_depth_ = 0;  // > 0 inside a list or a refused value
  int documents_ = 0;
  size_t expanded_bytes_ = 0;
  size_t alias_entries_ = 0;  // keys copied by aliases of mappings
};

std::string entry_message(const FlatEntry& e) {
  switch (e.problem) {
    case EntryProblem::kList:
      return quote_bounded(e.key) + " must be a single value, not a list";
    case EntryProblem::kDuplicate:
      return "duplicate key " + quote_bounded(e.key) + " (first at line " +
             std::to_string(e.first_line) + ")";
    case EntryProblem::kBadKey:
      return std::string("a key must be a plain name, not a list, mapping or null") +
             (e.key.empty() ? "" : " (in " + quote_bounded(e.key) + ")");
    case EntryProblem::kUnusableAlias:
      return "the alias under " + quote_bounded(e.key) +
             " refers to a value inside a list or a refused key";
    case EntryProblem::kNone:
      break;
  }
  return "";
}

std::string at_line(const std::string& source, int line) {
  return line > 0 ? source + ":" + std::to_string(line) : source;
}

// Parses the YAML into flat entries; structural limits and syntax errors are reported through
// `problems` and end the parse (false).
bool flatten_yaml(const std::string& text, const std::string& source,
                  std::vector<FlatEntry>& entries, Problems& problems) {
  std::istringstream in(text);
  try {
    YAML::Parser parser(in);
    RecipeFlattener flattener(entries);
    while (parser.HandleNextDocument(flattener)) {
    }
  } catch (const YamlStop& e) {
    problems.add(at_line(source, e.line) + ": " + e.message);
    return false;
  } catch (const YAML::Exception& e) {
    problems.add(at_line(source, e.mark.line + 1) + ": YAML syntax error: " + e.msg.substr(0, 200));
    return false;
  }
  return true;
}

struct RecipeText {
  std::string text, source;
  bool bundled = false;
};

Result<RecipeText> read_text(const std::string& file_or_name) {
  for (const BundledRecipe& b : bundled_recipes()) {
    if (b.name == file_or_name)
      return RecipeText{b.text, "recipes/" + b.name + ".yaml" + kBundledSuffix, true};
  }
  struct stat st {};
  if (::stat(file_or_name.c_str(), &st) != 0 && errno == ENOENT) {
    return Error{"recipe " + quote_bounded(file_or_name, 300) +
                 ": no such file and no bundled recipe of that name (see `ramstream ls`)"};
  }
  Result<std::string> text = read_user_file(file_or_name, "the recipe", kMaxRecipeBytes);
  if (!text.ok()) return text.error();
  return RecipeText{std::move(text).value(), file_or_name, false};
}

bool is_relative(const std::string& path) {
  return !path.empty() && path[0] != '/';
}

// The input paths of a bundled recipe name files that ship with ramstream.
void resolve_bundled_paths(Recipe& r) {
  const std::string dir = bundled_data_dir();
  if (dir.empty()) return;
  for (std::string* p : {&r.model_path, &r.data_path, &r.val_path}) {
    *p = expand_user(*p);
    if (is_relative(*p)) *p = dir + "/" + *p;
  }
}

// Parses, applies and checks; every problem goes to `problems` (which may stop at the first).
Recipe parse_all(const RecipeText& in, const std::vector<std::string>& overrides,
                 Problems& problems) {
  Recipe r;
  r.source = in.source;
  std::vector<FlatEntry> entries;
  if (!flatten_yaml(in.text, in.source, entries, problems)) return r;
  std::unordered_map<std::string, int> line_of;  // schema keys set from the file
  for (const FlatEntry& e : entries) {
    if (problems.stop()) return r;
    const auto where = [&] { return at_line(in.source, e.line); };
    if (e.problem != EntryProblem::kNone) {
      if (problems.keeps_next()) {
        problems.add(where() + ": " + entry_message(e));
      } else {
        problems.count();
      }
      continue;
    }
    set_key(r, e.key, e.value, where, problems);
    if (find_key(e.key) != nullptr) line_of[e.key] = e.line;
  }
  if (in.bundled) resolve_bundled_paths(r);
  for (const std::string& o : overrides) {
    if (problems.stop()) return r;
    const size_t eq = o.find('=');
    if (eq == std::string::npos || eq == 0) {
      problems.add("override " + quote_bounded(o) + ": expected key.sub=value");
      continue;
    }
    std::string value = o.substr(eq + 1);
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') &&
        value.back() == value.front()) {
      value = value.substr(1, value.size() - 2);
    }
    const std::string key = o.substr(0, eq);
    set_key(
        r, key, value, [&] { return "override " + quote_bounded(o); }, problems);
    line_of.erase(key);
  }
  if (problems.stop()) return r;
  // Checks across keys name the line of the key that the fix most likely belongs to.
  auto where = [&](const std::string& key) {
    const auto it = line_of.find(key);
    return at_line(in.source, it == line_of.end() ? 0 : it->second) + ": ";
  };
  if (r.model_path.empty()) problems.add(where("model.path") + "'model.path' is required");
  if (r.data_path.empty()) problems.add(where("data.path") + "'data.path' is required");
  if (r.output_dir.empty()) problems.add(where("output_dir") + "'output_dir' must not be empty");
  if (r.nan_policy == "skip" && r.max_grad_norm <= 0) {
    problems.add(where("train.nan_policy") +
                 "'train.nan_policy: skip' needs clipping ('train.max_grad_norm' > 0)");
  }
  // Each factor is bounded by its key, so these products cannot overflow.
  const int64_t micro_tokens = r.batch_size * r.max_seq_len;
  if (micro_tokens > kMaxMicroBatchTokens) {
    problems.add(where("train.batch_size") +
                 "'train.batch_size' x 'data.max_seq_len' = " + std::to_string(micro_tokens) +
                 " tokens per micro-batch, more than " + std::to_string(kMaxMicroBatchTokens));
  } else if (micro_tokens * r.grad_accum > kMaxStepTokens) {
    problems.add(where("train.grad_accum") +
                 "'train.batch_size' x 'data.max_seq_len' x 'train.grad_accum' = " +
                 std::to_string(micro_tokens * r.grad_accum) + " tokens per step, more than " +
                 std::to_string(kMaxStepTokens));
  }
  r.model_path = expand_user(r.model_path);
  r.data_path = expand_user(r.data_path);
  r.val_path = expand_user(r.val_path);
  r.output_dir = expand_user(r.output_dir);
  return r;
}

Result<Recipe> parse_one(const RecipeText& in, const std::vector<std::string>& overrides) {
  Problems problems(1, true);
  Recipe r = parse_all(in, overrides, problems);
  if (problems.total() > 0) return Error{problems.shown().front()};
  return r;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The YAML text of one scalar: plain when that reads back the same, else quoted.
std::string yaml_scalar(const std::string& value) {
  YAML::Emitter e;
  const bool control = std::any_of(value.begin(), value.end(),
                                   [](char c) { return static_cast<unsigned char>(c) < 0x20; });
  if (control) e << YAML::DoubleQuoted;
  e << value;
  return e.c_str();
}

}  // namespace

std::string expand_user(const std::string& path) {
  if (path.rfind("~/", 0) != 0 && path != "~") return path;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + path.substr(1);
}

std::string bundled_data_dir() {
  if (const char* env = std::getenv("RAMSTREAM_DATA_DIR"); env != nullptr && *env != '\0') {
    return env;
  }
  static const std::string found = [] {
    namespace fs = std::filesystem;
    const auto holds_data = [](const fs::path& dir) {
      std::error_code ec;
      return fs::is_directory(dir / "data" / "bundled", ec);
    };
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) {
      fs::path dir = exe.parent_path();
      for (int up = 0; up <= 3 && !dir.empty(); ++up, dir = dir.parent_path()) {
        if (holds_data(dir)) return dir.string();
      }
    }
#ifdef RAMSTREAM_SOURCE_DIR
    if (holds_data(RAMSTREAM_SOURCE_DIR)) return std::string(RAMSTREAM_SOURCE_DIR);
#endif
    return std::string();
  }();
  return found;
}

std::vector<std::string> recipe_keys() {
  std::vector<std::string> keys;
  for (const KeySpec& s : schema()) keys.push_back(s.key);
  return keys;
}

std::vector<RecipeKeyInfo> recipe_schema() {
  const Recipe defaults;
  std::vector<RecipeKeyInfo> out;
  for (const KeySpec& s : schema()) {
    out.push_back(RecipeKeyInfo{s.key, s.kind, s.min, s.max, s.allowed, s.get(defaults), s.doc});
  }
  return out;
}

std::string closest_recipe_key(const std::string& key) {
  if (key.size() > 64) return "";  // no key is that long; and edit distance is quadratic
  std::string best;
  size_t best_d = std::string::npos;
  for (const KeySpec& s : schema()) {
    // Compare both the whole key and its last part, so "lr" suggests "train.lr".
    const std::string last = s.key.substr(s.key.rfind('.') + 1);
    const size_t d = std::min(edit_distance(key, s.key), edit_distance(key, last) + 1);
    if (d < best_d) {
      best_d = d;
      best = s.key;
    }
  }
  // Only suggest when at most about a third of the characters differ.
  return best_d <= std::max<size_t>(2, key.size() / 3) ? best : "";
}

Result<Recipe> parse_recipe(const std::string& yaml_text, const std::string& source,
                            const std::vector<std::string>& overrides) {
  return parse_one(RecipeText{yaml_text, source, false}, overrides);
}

Result<Recipe> load_recipe(const std::string& file_or_name,
                           const std::vector<std::string>& overrides) {
  Result<RecipeText> text = read_text(file_or_name);
  if (!text.ok()) return text.error();
  return parse_one(text.value(), overrides);
}

RecipeCheck validate_recipe(const std::string& file_or_name,
                            const std::vector<std::string>& overrides, size_t max_shown) {
  RecipeCheck check;
  Result<RecipeText> text = read_text(file_or_name);
  if (!text.ok()) {
    check.problems.push_back(text.error().message);
    check.total = 1;
    return check;
  }
  Problems problems(max_shown, false);
  const Recipe r = parse_all(text.value(), overrides, problems);
  for (const std::string& p : recipe_path_problems(r)) problems.add(r.source + ": " + p);
  check.total = problems.total();
  check.problems = std::move(problems.shown());
  return check;
}

std::vector<std::string> recipe_path_problems(const Recipe& r) {
  std::vector<std::string> out;
  const bool bundled = ends_with(r.source, kBundledSuffix);
  // Where to look when a bundled recipe's data is missing.
  const auto bundled_note = [&](const std::string& path) -> std::string {
    if (!bundled) return "";
    const std::string dir = bundled_data_dir();
    if (dir.empty()) {
      return " (bundled data: no folder holding data/bundled found next to the binary; set "
             "RAMSTREAM_DATA_DIR)";
    }
    if (path.rfind(dir + "/", 0) == 0) {
      return " (bundled data, looked up in " + dir + "; RAMSTREAM_DATA_DIR overrides it)";
    }
    return "";
  };
  const auto too_long = [&](const char* key, const std::string& path) {
    if (path.size() <= kMaxPathBytes) return false;
    out.push_back(std::string(key) + ": " + quote_bounded(path) + " is too long for a path");
    return true;
  };

  if (!r.model_path.empty() && !too_long("model.path", r.model_path)) {
    const std::string& path = r.model_path;
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      std::string msg = "model.path: " + path + ": " + std::strerror(errno);
      if (errno == ENOENT && std::filesystem::path(path).filename() == kDefaultModelFile) {
        msg += "; this is the default model: run scripts/fetch_default_model.sh to download it";
      } else {
        msg += bundled_note(path);
      }
      out.push_back(msg);
    } else if (S_ISDIR(st.st_mode)) {
      Status config = check_regular_file(path + "/config.json",
                                         "the config of the model folder named by model.path");
      if (!config.ok()) out.push_back("model.path: " + config.error().message);
    } else if (!S_ISREG(st.st_mode) || !ends_with(path, ".gguf")) {
      out.push_back("model.path: " + path + ": neither a model folder nor a .gguf file");
    }
  }
  const std::pair<const char*, const std::string*> files[] = {{"data.path", &r.data_path},
                                                              {"data.val_path", &r.val_path}};
  for (const auto& [key, path] : files) {
    if (path->empty() || too_long(key, *path)) continue;
    Status st = check_regular_file(*path, (std::string("the dataset named by ") + key).c_str());
    if (!st.ok()) out.push_back(std::string(key) + ": " + st.error().message + bundled_note(*path));
  }
  return out;
}

std::string recipe_to_yaml(const Recipe& recipe) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  std::string section;
  bool open = false;
  auto put = [&](const std::string& key, const std::string& value) {
    const size_t dot = key.find('.');
    const std::string sec = dot == std::string::npos ? "" : key.substr(0, dot);
    if (sec != section) {
      if (open) out << YAML::EndMap;
      open = !sec.empty();
      if (open) out << YAML::Key << sec << YAML::Value << YAML::BeginMap;
      section = sec;
    }
    out << YAML::Key << (dot == std::string::npos ? key : key.substr(dot + 1)) << YAML::Value
        << value;
  };
  for (const KeySpec& s : schema()) {
    put(s.key, s.get(recipe));
    if (s.key == "data.format" && !recipe.data_columns.empty()) {
      out << YAML::Key << "columns" << YAML::Value << YAML::BeginMap;
      for (const auto& [field, column] : recipe.data_columns) {
        out << YAML::Key << field << YAML::Value << column;
      }
      out << YAML::EndMap;
    }
  }
  if (open) out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::string describe_recipe(const Recipe& recipe) {
  const Recipe defaults;
  std::string out = "# " + recipe.source +
                    ", resolved: every key with its value; above it, what\n" +
                    "# it does, the values it takes and its default.\n";
  std::string section;
  for (const KeySpec& s : schema()) {
    const size_t dot = s.key.find('.');
    const std::string sec = dot == std::string::npos ? "" : s.key.substr(0, dot);
    const std::string indent = sec.empty() ? "" : "  ";
    if (sec != section) {
      out += "\n" + sec + ":\n";
      section = sec;
    }
    out += indent + "# " + s.doc + "\n";
    out += indent + "# " + s.allowed + "; default " + yaml_scalar(s.get(defaults)) + "\n";
    out += indent + s.key.substr(dot == std::string::npos ? 0 : dot + 1) + ": " +
           yaml_scalar(s.get(recipe)) + "\n";
    if (s.key == "data.format") {
      out += indent + "# Dataset field -> its column in the file, e.g. instruction: question.\n";
      out += indent +
             "# fields: text, instruction, input, output, conversations, from, value, messages, "
             "role, content; default none\n";
      out += indent + "columns:" + (recipe.data_columns.empty() ? " {}" : "") + "\n";
      for (const auto& [field, column] : recipe.data_columns) {
        out += indent + "  " + yaml_scalar(field) + ": " + yaml_scalar(column) + "\n";
      }
    }
  }
  return out;
}

std::string recipe_description(const BundledRecipe& recipe) {
  const std::string first = recipe.text.substr(0, recipe.text.find('\n'));
  const std::string head = "# " + recipe.name + ": ";
  return first.rfind(head, 0) == 0 ? first.substr(head.size()) : "";
}

}  // namespace ramstream::trainer
