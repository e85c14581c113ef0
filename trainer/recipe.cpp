#include "trainer/recipe.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>

#include <yaml-cpp/yaml.h>

namespace ramstream::trainer {
namespace {

// One recipe key: how to read it from text and write it back.
struct KeySpec {
  std::string key;
  std::function<Status(Recipe&, const std::string&)> set;
  std::function<std::string(const Recipe&)> get;
};

Status bad_value(const std::string& key, const std::string& value, const std::string& expected) {
  return Error{"'" + key + "': '" + value + "' is not " + expected};
}

KeySpec string_key(std::string key, std::string Recipe::*field,
                   std::vector<std::string> choices = {}) {
  KeySpec s;
  s.key = key;
  s.set = [key, field, choices](Recipe& r, const std::string& v) -> Status {
    if (!choices.empty() && std::find(choices.begin(), choices.end(), v) == choices.end()) {
      std::string list;
      for (const std::string& c : choices) list += (list.empty() ? "" : " | ") + c;
      return bad_value(key, v, "one of " + list);
    }
    r.*field = v;
    return Ok{};
  };
  s.get = [field](const Recipe& r) { return r.*field; };
  return s;
}

template <class Int>
KeySpec int_key(std::string key, Int Recipe::*field, int64_t min_value) {
  KeySpec s;
  s.key = key;
  s.set = [key, field, min_value](Recipe& r, const std::string& v) -> Status {
    errno = 0;
    char* end = nullptr;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || errno != 0) return bad_value(key, v, "an integer");
    if (x < min_value) return bad_value(key, v, ">= " + std::to_string(min_value));
    r.*field = static_cast<Int>(x);
    return Ok{};
  };
  s.get = [field](const Recipe& r) { return std::to_string(r.*field); };
  return s;
}

KeySpec double_key(std::string key, double Recipe::*field, double min_value) {
  KeySpec s;
  s.key = key;
  s.set = [key, field, min_value](Recipe& r, const std::string& v) -> Status {
    errno = 0;
    char* end = nullptr;
    const double x = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0' || errno != 0) return bad_value(key, v, "a number");
    if (!(x >= min_value)) return bad_value(key, v, ">= " + std::to_string(min_value));
    r.*field = x;
    return Ok{};
  };
  s.get = [field](const Recipe& r) {
    std::ostringstream o;
    o << r.*field;
    return o.str();
  };
  return s;
}

KeySpec bool_key(std::string key, bool Recipe::*field) {
  KeySpec s;
  s.key = key;
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

const std::vector<KeySpec>& schema() {
  static const std::vector<KeySpec> keys = [] {
    using R = Recipe;
    std::vector<KeySpec> k;
    k.push_back(string_key("output_dir", &R::output_dir));
    k.push_back(string_key("model.path", &R::model_path));
    k.push_back(string_key("model.compute", &R::model_compute, {"auto", "fp32", "bf16"}));
    k.push_back(string_key("data.path", &R::data_path));
    k.push_back(string_key("data.format", &R::data_format,
                           {"auto", "text", "jsonl", "alpaca", "sharegpt", "messages"}));
    k.push_back(string_key("data.chat_format", &R::chat_format, {"auto", "chatml", "llama3"}));
    k.push_back(string_key("data.system_prompt", &R::system_prompt));
    k.push_back(bool_key("data.train_on_prompt", &R::train_on_prompt));
    k.push_back(bool_key("data.skip_malformed", &R::skip_malformed));
    k.push_back(int_key("data.max_seq_len", &R::max_seq_len, 2));
    k.push_back(bool_key("data.pack", &R::pack));
    k.push_back(string_key("data.val_path", &R::val_path));
    k.push_back(int_key("data.val_size", &R::val_size, 0));
    k.push_back(double_key("data.val_fraction", &R::val_fraction, 0.0));
    k.push_back(string_key("data.cache_dir", &R::cache_dir));
    k.push_back(int_key("train.seed", &R::seed, 0));
    k.push_back(int_key("train.max_steps", &R::max_steps, 0));
    k.push_back(int_key("train.batch_size", &R::batch_size, 1));
    k.push_back(int_key("train.grad_accum", &R::grad_accum, 1));
    k.push_back(double_key("train.lr", &R::lr, 0.0));
    k.push_back(string_key("train.lr_schedule", &R::lr_schedule, {"constant", "linear", "cosine"}));
    k.push_back(int_key("train.warmup_steps", &R::warmup_steps, 0));
    k.push_back(double_key("train.min_lr_ratio", &R::min_lr_ratio, 0.0));
    k.push_back(double_key("train.weight_decay", &R::weight_decay, 0.0));
    k.push_back(double_key("train.beta1", &R::beta1, 0.0));
    k.push_back(double_key("train.beta2", &R::beta2, 0.0));
    k.push_back(double_key("train.eps", &R::eps, 0.0));
    k.push_back(double_key("train.max_grad_norm", &R::max_grad_norm, 0.0));
    k.push_back(string_key("train.nan_policy", &R::nan_policy, {"stop", "skip"}));
    k.push_back(string_key("engine.device", &R::device, {"auto", "cpu", "cuda"}));
    k.push_back(int_key("engine.num_slots", &R::num_slots, 2));
    k.push_back(string_key("engine.activations", &R::activations, {"recompute", "keep"}));
    k.push_back(bool_key("engine.host_checkpoints", &R::host_checkpoints));
    k.push_back(bool_key("engine.allow_pageable", &R::allow_pageable));
    k.push_back(int_key("eval.every", &R::eval_every, 0));
    k.push_back(bool_key("eval.before", &R::eval_before));
    k.push_back(bool_key("eval.at_end", &R::eval_at_end));
    k.push_back(int_key("eval.max_rows", &R::eval_max_rows, 0));
    k.push_back(bool_key("eval.accuracy", &R::eval_accuracy));
    k.push_back(int_key("eval.max_examples", &R::eval_max_examples, 0));
    k.push_back(int_key("eval.max_new_tokens", &R::max_new_tokens, 1));
    k.push_back(int_key("checkpoint.every", &R::save_every, 0));
    k.push_back(bool_key("checkpoint.at_end", &R::save_at_end));
    k.push_back(int_key("checkpoint.keep_last_n", &R::keep_last_n, 0));
    k.push_back(string_key("checkpoint.dtype", &R::save_dtype, {"bf16", "fp16", "fp32"}));
    k.push_back(bool_key("checkpoint.async", &R::async_save));
    k.push_back(string_key("checkpoint.resume", &R::resume));
    k.push_back(int_key("log.every", &R::log_every, 1));
    k.push_back(string_key("log.progress", &R::progress, {"auto", "bar", "lines"}));
    return k;
  }();
  return keys;
}

// data.columns.<field> maps a dataset field to the file's column name.
constexpr const char* kColumnsPrefix = "data.columns.";

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string unknown_key_message(const std::string& key) {
  std::string msg = "unknown key '" + key + "'";
  const std::string near = closest_recipe_key(key);
  if (!near.empty()) msg += " (did you mean '" + near + "'?)";
  return msg;
}

Status set_key(Recipe& r, const std::string& key, const std::string& value) {
  if (key.rfind(kColumnsPrefix, 0) == 0 && key.size() > std::string(kColumnsPrefix).size()) {
    r.data_columns[key.substr(std::string(kColumnsPrefix).size())] = value;
    return Ok{};
  }
  for (const KeySpec& s : schema()) {
    if (s.key == key) return s.set(r, value);
  }
  return Error{unknown_key_message(key)};
}

// Flattens a YAML mapping into (dotted key, scalar, line) triples.
struct FlatEntry {
  std::string key, value;
  int line = 0;
};

Status flatten(const YAML::Node& node, const std::string& prefix, std::vector<FlatEntry>& out,
               const std::string& source) {
  for (const auto& kv : node) {
    const std::string name = kv.first.Scalar();
    const std::string key = prefix.empty() ? name : prefix + "." + name;
    const YAML::Node& v = kv.second;
    const int line = v.Mark().line + 1;
    if (v.IsMap()) {
      Status st = flatten(v, key, out, source);
      if (!st.ok()) return st;
    } else if (v.IsScalar()) {
      out.push_back({key, v.Scalar(), line});
    } else if (v.IsNull()) {
      out.push_back({key, "", line});
    } else {
      return Error{source + ":" + std::to_string(line) + ": '" + key +
                   "' must be a single value, not a list"};
    }
  }
  return Ok{};
}

Result<std::string> read_text(const std::string& file_or_name, std::string* source) {
  for (const BundledRecipe& b : bundled_recipes()) {
    if (b.name == file_or_name) {
      *source = "recipes/" + b.name + ".yaml (bundled)";
      return b.text;
    }
  }
  std::ifstream in(file_or_name, std::ios::binary);
  if (!in) {
    std::string msg = "recipe '" + file_or_name + "': no such file and no bundled recipe of that " +
                      "name (see `ramstream ls`)";
    return Error{msg};
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  *source = file_or_name;
  return ss.str();
}

// Parses and applies; collects every problem in `problems` when given, else stops at the first.
Result<Recipe> parse_all(const std::string& text, const std::string& source,
                         const std::vector<std::string>& overrides,
                         std::vector<std::string>* problems) {
  Recipe r;
  r.source = source;
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return Error{source + ":" + std::to_string(e.mark.line + 1) + ": YAML syntax error: " + e.msg};
  }
  std::vector<FlatEntry> entries;
  if (root.IsMap()) {
    Status st = flatten(root, "", entries, source);
    if (!st.ok()) return st.error();
  } else if (!root.IsNull()) {
    return Error{source + ": a recipe must be a YAML mapping of keys to values"};
  }
  for (const FlatEntry& e : entries) {
    Status st = set_key(r, e.key, e.value);
    if (!st.ok()) {
      std::string msg = source + ":" + std::to_string(e.line) + ": " + st.error().message;
      if (!problems) return Error{msg};
      problems->push_back(msg);
    }
  }
  for (const std::string& o : overrides) {
    const size_t eq = o.find('=');
    if (eq == std::string::npos || eq == 0) {
      return Error{"override '" + o + "': expected key.sub=value"};
    }
    std::string value = o.substr(eq + 1);
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') &&
        value.back() == value.front()) {
      value = value.substr(1, value.size() - 2);
    }
    Status st = set_key(r, o.substr(0, eq), value);
    if (!st.ok()) {
      std::string msg = "override '" + o + "': " + st.error().message;
      if (!problems) return Error{msg};
      problems->push_back(msg);
    }
  }
  std::vector<std::string> semantic;
  if (r.model_path.empty()) semantic.push_back("'model.path' is required");
  if (r.data_path.empty()) semantic.push_back("'data.path' is required");
  if (r.output_dir.empty()) semantic.push_back("'output_dir' must not be empty");
  if (r.nan_policy == "skip" && r.max_grad_norm <= 0) {
    semantic.push_back("'train.nan_policy: skip' needs clipping ('train.max_grad_norm' > 0)");
  }
  if (r.val_fraction >= 1.0) semantic.push_back("'data.val_fraction' must be below 1");
  if (r.min_lr_ratio > 1.0) semantic.push_back("'train.min_lr_ratio' must be at most 1");
  for (const std::string& s : semantic) {
    if (!problems) return Error{source + ": " + s};
    problems->push_back(source + ": " + s);
  }
  r.model_path = expand_user(r.model_path);
  r.data_path = expand_user(r.data_path);
  r.val_path = expand_user(r.val_path);
  r.output_dir = expand_user(r.output_dir);
  return r;
}

}  // namespace

std::string expand_user(const std::string& path) {
  if (path.rfind("~/", 0) != 0 && path != "~") return path;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + path.substr(1);
}

std::vector<std::string> recipe_keys() {
  std::vector<std::string> keys;
  for (const KeySpec& s : schema()) keys.push_back(s.key);
  return keys;
}

std::string closest_recipe_key(const std::string& key) {
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
  return parse_all(yaml_text, source, overrides, nullptr);
}

Result<Recipe> load_recipe(const std::string& file_or_name,
                           const std::vector<std::string>& overrides) {
  std::string source;
  Result<std::string> text = read_text(file_or_name, &source);
  if (!text.ok()) return text.error();
  return parse_all(text.value(), source, overrides, nullptr);
}

std::vector<std::string> validate_recipe(const std::string& file_or_name) {
  std::string source;
  Result<std::string> text = read_text(file_or_name, &source);
  if (!text.ok()) return {text.error().message};
  std::vector<std::string> problems;
  Result<Recipe> r = parse_all(text.value(), source, {}, &problems);
  if (!r.ok()) problems.push_back(r.error().message);
  return problems;
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

}  // namespace ramstream::trainer
