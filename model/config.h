// Architecture of a decoder-only model, read from a Hugging Face `config.json`.
//
// Supported `model_type`s: llama (Llama 2, 3, 3.1, 3.2 incl. `rope_scaling` types "llama3" and
// "linear"; SmolLM2 is a llama), mistral, qwen2 (q/k/v bias). Anything else, or a missing required
// key, is an Error naming the file and the key.
//
//   Result<ModelConfig> cfg = load_model_config("/models/smollm2/config.json");
//   int64_t kv_dim = cfg.value().kv_dim();
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "util/result.h"

namespace ramstream::model {

enum class RopeScalingType { kNone, kLinear, kLlama3 };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  double factor = 1.0;
  // llama3 only.
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string model_type;  // "llama", "mistral", "qwen2"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;        // C
  int64_t intermediate_size = 0;  // F
  int64_t num_layers = 0;
  int64_t num_heads = 0;     // NH
  int64_t num_kv_heads = 0;  // NKV; NH % NKV == 0
  int64_t head_dim = 0;      // D; defaults to C / NH
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;       // qwen2 always; llama when attention_bias
  bool o_bias = false;         // llama when attention_bias
  int64_t sliding_window = 0;  // 0: none. Mistral/Qwen2 when enabled.

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  int64_t qkv_dim() const { return q_dim() + 2 * kv_dim(); }
};

// `source` names the origin in error messages (a path, or "<string>").
Result<ModelConfig> model_config_from_json(const nlohmann::json& j, const std::string& source);
Result<ModelConfig> load_model_config(const std::string& path);
// A whole JSON file; errors name the path and, for syntax errors, line:column.
Result<nlohmann::json> read_json_file(const std::string& path);
// Checks invariants (positive sizes, NH % NKV, even head_dim); used by both loaders.
Status validate_model_config(const ModelConfig& cfg, const std::string& source);
nlohmann::json model_config_to_json(const ModelConfig& cfg);

}  // namespace ramstream::model
