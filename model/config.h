// Architecture of a decoder-only model, read from a Hugging Face `config.json`.
//
// Supported `model_type`s: llama (Llama 2, 3, 3.1, 3.2 incl. `rope_scaling` types "llama3" and
// "linear"; SmolLM2 is a llama), mistral, qwen2 (q/k/v bias). Anything else, a missing required
// key, or a size outside ModelLimits is an Error naming the file and the key, so that a hostile
// or corrupt config is refused before anything is allocated from it.
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

// The largest sizes a config may ask for: several times the largest open models (Llama 3.1
// 405B has 126 layers, hidden 16384, MLP 53248, 128 heads; vocabularies reach 262144, contexts
// 10M), and small enough that no element or byte count derived from them overflows int64.
struct ModelLimits {
  static constexpr int64_t kMaxLayers = 1024;
  static constexpr int64_t kMaxHidden = int64_t{1} << 17;
  static constexpr int64_t kMaxIntermediate = int64_t{1} << 20;
  static constexpr int64_t kMaxVocab = int64_t{1} << 24;
  static constexpr int64_t kMaxHeads = 1024;
  static constexpr int64_t kMaxHeadDim = 1024;
  static constexpr int64_t kMaxPositions = int64_t{1} << 28;
  // 4.4 T parameters: 53 TB of training state at 12 B/param.
  static constexpr int64_t kMaxParams = int64_t{1} << 42;
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
// config.json through the bounded JSON reader (util/json_read.h): a regular file of at most
// 16 MiB; errors name the path and, for syntax errors, line:column.
Result<ModelConfig> load_model_config(const std::string& path);
// Checks invariants (sizes positive and within ModelLimits, NH % NKV, even head_dim, finite
// positive eps / theta / RoPE factors, parameter count); used by every loader (JSON, GGUF).
Status validate_model_config(const ModelConfig& cfg, const std::string& source);
nlohmann::json model_config_to_json(const ModelConfig& cfg);

}  // namespace ramstream::model
