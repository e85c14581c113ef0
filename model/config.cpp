// Hugging Face config.json -> ModelConfig, and back.
//
// Two on-disk forms of the RoPE settings exist: transformers <= 4.x writes top-level `rope_theta`
// and `rope_scaling`; transformers 5.x writes one `rope_parameters` object holding `rope_theta`,
// `rope_type` and the scaling keys. Both are read; the writer emits the 4.x form, which 5.x
// still reads.
#include "model/config.h"

#include <cmath>
#include <vector>

#include <nlohmann/json.hpp>

#include "util/json_read.h"
#include "util/user_file.h"

namespace ramstream::model {
namespace {

using nlohmann::json;

const char* const kSupportedTypes = "llama, mistral, qwen2";
// config.json files are a few KB; anything near this is not a config.
constexpr uint64_t kMaxConfigBytes = 16ull << 20;

std::string json_type_name(const json& v) {
  if (v.is_number_integer()) return "integer";
  if (v.is_number_float()) return "number";
  return v.type_name();
}

// Reads config keys, building error messages that name the source and the key path.
class Reader {
 public:
  Reader(const json& obj, std::string source, std::string prefix = "")
      : obj_(obj), source_(std::move(source)), prefix_(std::move(prefix)) {}

  // Null counts as absent: HF writes `"head_dim": null`, `"sliding_window": null`.
  bool has(const char* key) const {
    auto it = obj_.find(key);
    return it != obj_.end() && !it->is_null();
  }

  Error error(const char* key, const std::string& problem) const {
    return Error{source_ + ": key '" + prefix_ + key + "': " + problem};
  }

  Result<int64_t> int_required(const char* key) const {
    if (!has(key)) return missing(key);
    return as_int(key, obj_.at(key));
  }
  Result<int64_t> int_or(const char* key, int64_t fallback) const {
    if (!has(key)) return fallback;
    return as_int(key, obj_.at(key));
  }
  Result<double> number_required(const char* key) const {
    if (!has(key)) return missing(key);
    return as_number(key, obj_.at(key));
  }
  Result<double> number_or(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    return as_number(key, obj_.at(key));
  }
  Result<bool> bool_or(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = obj_.at(key);
    if (!v.is_boolean()) return wrong_type(key, "a boolean", v);
    return v.get<bool>();
  }
  Result<std::string> string_required(const char* key) const {
    if (!has(key)) return missing(key);
    const json& v = obj_.at(key);
    if (!v.is_string()) return wrong_type(key, "a string", v);
    return v.get<std::string>();
  }

  Error missing(const char* key) const { return error(key, "missing (required)"); }
  Error wrong_type(const char* key, const char* want, const json& v) const {
    return error(key, std::string("expected ") + want + ", got " + json_type_name(v));
  }

 private:
  Result<int64_t> as_int(const char* key, const json& v) const {
    if (v.is_number_integer()) {
      // Unsigned values above INT64_MAX would wrap; no real size comes near.
      if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
        return error(key, "value out of range");
      }
      return v.get<int64_t>();
    }
    // Some exporters write sizes as 2048.0; accept whole numbers only.
    if (v.is_number_float()) {
      const double d = v.get<double>();
      if (d == static_cast<double>(static_cast<int64_t>(d)) && d >= -9.0e15 && d <= 9.0e15) {
        return static_cast<int64_t>(d);
      }
      return error(key, "expected an integer, got " + describe_json(v));
    }
    return wrong_type(key, "an integer", v);
  }
  Result<double> as_number(const char* key, const json& v) const {
    if (!v.is_number()) return wrong_type(key, "a number", v);
    return v.get<double>();  // finite: JSON has no inf or nan (validate checks the ranges)
  }

  const json& obj_;
  std::string source_;
  std::string prefix_;
};

// Evaluates a Result-returning expression into `lhs`, returning its Error from the caller.
#define RS_ASSIGN(lhs, expr)                   \
  do {                                         \
    auto rs_tmp_ = (expr);                     \
    if (!rs_tmp_.ok()) return rs_tmp_.error(); \
    lhs = std::move(rs_tmp_).value();          \
  } while (0)

// `obj` is either the 4.x `rope_scaling` object or the 5.x `rope_parameters` object; both use the
// same keys for the scaling parameters.
Result<RopeScaling> parse_rope_scaling(const json& obj, const std::string& source,
                                       const std::string& prefix) {
  Reader r(obj, source, prefix);
  // 4.x wrote "type" before it settled on "rope_type"; 5.x writes "rope_type".
  const char* type_key = r.has("rope_type") ? "rope_type" : "type";
  std::string type = "default";
  if (r.has(type_key)) RS_ASSIGN(type, r.string_required(type_key));
  RopeScaling s;
  if (type == "default") return s;
  if (type == "linear") {
    s.type = RopeScalingType::kLinear;
    RS_ASSIGN(s.factor, r.number_required("factor"));
    return s;
  }
  if (type == "llama3") {
    s.type = RopeScalingType::kLlama3;
    RS_ASSIGN(s.factor, r.number_required("factor"));
    RS_ASSIGN(s.low_freq_factor, r.number_required("low_freq_factor"));
    RS_ASSIGN(s.high_freq_factor, r.number_required("high_freq_factor"));
    RS_ASSIGN(s.original_max_position_embeddings,
              r.int_required("original_max_position_embeddings"));
    return s;
  }
  return r.error(type_key, "unsupported RoPE scaling type " + quote_bounded(type) +
                               " (supported: default, linear, llama3)");
}

const char* architecture_of(const std::string& model_type) {
  if (model_type == "llama") return "LlamaForCausalLM";
  if (model_type == "mistral") return "MistralForCausalLM";
  if (model_type == "qwen2") return "Qwen2ForCausalLM";
  return "";
}

// Qwen2 decides per layer: `layer_types` (5.x) or, before it, sliding from layer
// `max_window_layers` on when `use_sliding_window`. One window for every layer is all we model,
// so a mix is refused rather than silently run as full attention.
Result<int64_t> qwen2_sliding_window(const json& j, const Reader& r, int64_t num_layers) {
  bool use = false;
  RS_ASSIGN(use, r.bool_or("use_sliding_window", false));
  if (!use) return int64_t{0};
  int64_t num_sliding = 0;
  if (r.has("layer_types")) {
    const json& types = j.at("layer_types");
    if (!types.is_array()) return r.wrong_type("layer_types", "an array", types);
    for (const json& t : types) {
      if (t == "sliding_attention") ++num_sliding;
    }
  } else {
    int64_t max_window_layers = 28;  // HF Qwen2Config default
    RS_ASSIGN(max_window_layers, r.int_or("max_window_layers", 28));
    num_sliding = std::max<int64_t>(0, num_layers - std::max<int64_t>(0, max_window_layers));
  }
  if (num_sliding == 0) return int64_t{0};
  if (num_sliding != num_layers) {
    return r.error("use_sliding_window", "sliding-window attention on " +
                                             std::to_string(num_sliding) + " of " +
                                             std::to_string(num_layers) +
                                             " layers is unsupported (only all layers or none)");
  }
  int64_t window = 0;
  RS_ASSIGN(window, r.int_required("sliding_window"));
  return window;
}

}  // namespace

Result<ModelConfig> model_config_from_json(const json& j, const std::string& source) {
  if (!j.is_object()) {
    return Error{source + ": expected a JSON object at the top level, got " + json_type_name(j)};
  }
  Reader r(j, source);
  ModelConfig c;
  RS_ASSIGN(c.model_type, r.string_required("model_type"));
  const bool llama = c.model_type == "llama", mistral = c.model_type == "mistral",
             qwen2 = c.model_type == "qwen2";
  if (!llama && !mistral && !qwen2) {
    return r.error("model_type", "unsupported model_type " + quote_bounded(c.model_type) +
                                     " (supported: " + kSupportedTypes + ")");
  }
  RS_ASSIGN(c.vocab_size, r.int_required("vocab_size"));
  RS_ASSIGN(c.hidden_size, r.int_required("hidden_size"));
  RS_ASSIGN(c.intermediate_size, r.int_required("intermediate_size"));
  RS_ASSIGN(c.num_layers, r.int_required("num_hidden_layers"));
  RS_ASSIGN(c.num_heads, r.int_required("num_attention_heads"));
  RS_ASSIGN(c.num_kv_heads, r.int_or("num_key_value_heads", c.num_heads));
  if (r.has("head_dim")) {
    RS_ASSIGN(c.head_dim, r.int_required("head_dim"));
  } else if (c.num_heads > 0 && c.num_heads <= ModelLimits::kMaxHeads && c.hidden_size > 0) {
    // Without head_dim the heads split hidden_size evenly; a remainder would be silently lost.
    // (Out-of-range sizes are reported by validate_model_config, naming their key.)
    if (c.hidden_size % c.num_heads != 0) {
      return r.error("hidden_size", std::to_string(c.hidden_size) +
                                        " is not divisible by num_attention_heads (" +
                                        std::to_string(c.num_heads) +
                                        ") and there is no head_dim to say the head size");
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  RS_ASSIGN(c.max_position_embeddings, r.int_required("max_position_embeddings"));
  RS_ASSIGN(c.rms_norm_eps, r.number_required("rms_norm_eps"));
  RS_ASSIGN(c.tie_word_embeddings, r.bool_or("tie_word_embeddings", false));

  // Only SwiGLU MLPs are implemented.
  if (r.has("hidden_act")) {
    std::string act;
    RS_ASSIGN(act, r.string_required("hidden_act"));
    if (act != "silu") {
      return r.error("hidden_act",
                     "unsupported activation " + quote_bounded(act) + " (supported: silu)");
    }
  }

  if (r.has("rope_parameters")) {
    const json& rp = j.at("rope_parameters");
    if (!rp.is_object()) return r.wrong_type("rope_parameters", "an object", rp);
    Reader rr(rp, source, "rope_parameters.");
    RS_ASSIGN(c.rope_theta, rr.number_or("rope_theta", 10000.0));
    RS_ASSIGN(c.rope_scaling, parse_rope_scaling(rp, source, "rope_parameters."));
  } else {
    RS_ASSIGN(c.rope_theta, r.number_or("rope_theta", 10000.0));
    if (r.has("rope_scaling")) {
      const json& rs = j.at("rope_scaling");
      if (!rs.is_object()) return r.wrong_type("rope_scaling", "an object", rs);
      RS_ASSIGN(c.rope_scaling, parse_rope_scaling(rs, source, "rope_scaling."));
    }
  }

  // Bias and window rules follow what each HF modeling file does, not which keys it writes:
  // MistralAttention ignores `attention_bias`, Qwen2 always has q/k/v bias and never o bias.
  if (llama) {
    bool attention_bias = false, mlp_bias = false;
    RS_ASSIGN(attention_bias, r.bool_or("attention_bias", false));
    RS_ASSIGN(mlp_bias, r.bool_or("mlp_bias", false));
    if (mlp_bias) return r.error("mlp_bias", "MLP bias is unsupported");
    c.qkv_bias = c.o_bias = attention_bias;
  } else if (mistral) {
    RS_ASSIGN(c.sliding_window, r.int_or("sliding_window", 0));
  } else {
    c.qkv_bias = true;
    RS_ASSIGN(c.sliding_window, qwen2_sliding_window(j, r, c.num_layers));
  }

  Status st = validate_model_config(c, source);
  if (!st.ok()) return st.error();
  return c;
}

Result<ModelConfig> load_model_config(const std::string& path) {
  JsonLimits limits;
  limits.max_bytes = kMaxConfigBytes;
  Result<json> j = read_json_file(path, "the model config (config.json)", limits);
  if (!j.ok()) return j.error();
  return model_config_from_json(j.value(), path);
}

Status validate_model_config(const ModelConfig& c, const std::string& source) {
  auto fail = [&](const std::string& what) -> Status { return Error{source + ": " + what}; };
  auto key_fail = [&](const char* key, const std::string& what) -> Status {
    return fail("key '" + std::string(key) + "': " + what);
  };
  if (architecture_of(c.model_type)[0] == '\0') {
    return fail("unsupported model_type " + quote_bounded(c.model_type) +
                " (supported: " + kSupportedTypes + ")");
  }
  struct SizeKey {
    const char* key;
    int64_t value, max;
  };
  const SizeKey sizes[] = {
      {"vocab_size", c.vocab_size, ModelLimits::kMaxVocab},
      {"hidden_size", c.hidden_size, ModelLimits::kMaxHidden},
      {"intermediate_size", c.intermediate_size, ModelLimits::kMaxIntermediate},
      {"num_hidden_layers", c.num_layers, ModelLimits::kMaxLayers},
      {"num_attention_heads", c.num_heads, ModelLimits::kMaxHeads},
      {"num_key_value_heads", c.num_kv_heads, ModelLimits::kMaxHeads},
      {"head_dim", c.head_dim, ModelLimits::kMaxHeadDim},
      {"max_position_embeddings", c.max_position_embeddings, ModelLimits::kMaxPositions},
  };
  for (const SizeKey& k : sizes) {
    if (k.value <= 0) return key_fail(k.key, "must be positive, got " + std::to_string(k.value));
    if (k.value > k.max) {
      return key_fail(k.key, std::to_string(k.value) + " is beyond the supported maximum of " +
                                 std::to_string(k.max) + " (corrupt or hostile config?)");
    }
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return key_fail("num_key_value_heads", "num_attention_heads (" + std::to_string(c.num_heads) +
                                               ") must be a multiple of num_key_value_heads (" +
                                               std::to_string(c.num_kv_heads) + ")");
  }
  // RoPE rotates pairs of dimensions.
  if (c.head_dim % 2 != 0) {
    return key_fail("head_dim", "must be even for RoPE, got " + std::to_string(c.head_dim));
  }
  if (!(c.rms_norm_eps > 0 && c.rms_norm_eps < 1)) {
    return key_fail("rms_norm_eps", "must be in (0, 1), got " + std::to_string(c.rms_norm_eps));
  }
  if (!(c.rope_theta > 0 && std::isfinite(c.rope_theta))) {
    return key_fail("rope_theta", "must be a positive finite number");
  }
  if (c.sliding_window < 0 || c.sliding_window > ModelLimits::kMaxPositions) {
    return key_fail("sliding_window", "must be in [0, " +
                                          std::to_string(ModelLimits::kMaxPositions) + "], got " +
                                          std::to_string(c.sliding_window));
  }
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type != RopeScalingType::kNone && !(rs.factor > 0 && std::isfinite(rs.factor))) {
    return fail("RoPE scaling 'factor': must be a positive finite number");
  }
  if (rs.type == RopeScalingType::kLlama3) {
    // The llama3 rule interpolates between the two wavelengths; equal factors divide by zero.
    if (!(rs.low_freq_factor > 0 && std::isfinite(rs.high_freq_factor) &&
          rs.high_freq_factor > rs.low_freq_factor)) {
      return fail("llama3 RoPE scaling: need 0 < low_freq_factor < high_freq_factor (finite)");
    }
    if (rs.original_max_position_embeddings <= 0 ||
        rs.original_max_position_embeddings > ModelLimits::kMaxPositions) {
      return fail("llama3 RoPE scaling: original_max_position_embeddings must be in [1, " +
                  std::to_string(ModelLimits::kMaxPositions) + "]");
    }
  }
  // Within the limits above no count below overflows int64 (the largest, layers x block, is
  // < 2^51), so the sum can be compared with the parameter limit directly.
  const int64_t C = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  const int64_t per_block = 2 * C + c.qkv_dim() * C + (c.qkv_bias ? c.qkv_dim() : 0) +
                            C * c.q_dim() + (c.o_bias ? C : 0) + 3 * F * C;
  const int64_t params = V * C * (c.tie_word_embeddings ? 1 : 2) + C + per_block * c.num_layers;
  if (params > ModelLimits::kMaxParams) {
    return fail("the sizes make " + std::to_string(params / 1000000000) +
                " billion parameters, beyond the supported " +
                std::to_string(ModelLimits::kMaxParams / 1000000000) +
                " billion (corrupt or hostile config?)");
  }
  return Ok{};
}

json model_config_to_json(const ModelConfig& c) {
  json j;
  j["architectures"] = json::array({architecture_of(c.model_type)});
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  const RopeScaling& s = c.rope_scaling;
  if (s.type == RopeScalingType::kNone) {
    j["rope_scaling"] = nullptr;
  } else if (s.type == RopeScalingType::kLinear) {
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", s.factor}};
  } else {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", s.factor},
                         {"low_freq_factor", s.low_freq_factor},
                         {"high_freq_factor", s.high_freq_factor},
                         {"original_max_position_embeddings", s.original_max_position_embeddings}};
  }
  const json window = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
  if (c.model_type == "llama") {
    j["attention_bias"] = c.qkv_bias;
    j["mlp_bias"] = false;
  } else if (c.model_type == "mistral") {
    j["sliding_window"] = window;
  } else if (c.model_type == "qwen2") {
    j["use_sliding_window"] = c.sliding_window > 0;
    j["sliding_window"] = window;
    // Layers from max_window_layers on slide; 0 makes that all of them, as we model it.
    j["max_window_layers"] = c.sliding_window > 0 ? 0 : c.num_layers;
  }
  return j;
}

}  // namespace ramstream::model
