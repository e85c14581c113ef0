#include "model/config.h"

#include <unistd.h>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace ramstream::model {
namespace {

using nlohmann::json;

// A Llama-3.2-1B-shaped config as transformers 4.x writes it.
json llama32_v4() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "attention_bias": false, "hidden_act": "silu",
    "hidden_size": 2048, "intermediate_size": 8192, "max_position_embeddings": 131072,
    "mlp_bias": false, "model_type": "llama", "num_attention_heads": 32,
    "num_hidden_layers": 16, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": true, "vocab_size": 128256,
    "head_dim": 64, "torch_dtype": "bfloat16"})");
}

// What transformers 5.24 writes for LlamaConfig(rope_scaling={llama3...}).
json llama_v5() {
  return json::parse(R"({
    "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
    "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 11008, "max_position_embeddings": 2048, "mlp_bias": false,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 32, "pad_token_id": null, "pretraining_tp": 1, "rms_norm_eps": 1e-06,
    "rope_parameters": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                        "original_max_position_embeddings": 32, "rope_theta": 10000.0,
                        "rope_type": "llama3"},
    "tie_word_embeddings": false, "transformers_version": "5.24.0", "use_cache": true,
    "vocab_size": 32000})");
}

json minimal(const std::string& type) {
  return {{"model_type", type},
          {"vocab_size", 64},
          {"hidden_size", 32},
          {"intermediate_size", 48},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 4},
          {"max_position_embeddings", 128},
          {"rms_norm_eps", 1e-5}};
}

ModelConfig parse_ok(const json& j) {
  Result<ModelConfig> r = model_config_from_json(j, "cfg.json");
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message);
  return r.ok() ? r.value() : ModelConfig{};
}

std::string parse_err(const json& j) {
  Result<ModelConfig> r = model_config_from_json(j, "cfg.json");
  EXPECT_FALSE(r.ok());
  return r.ok() ? "" : r.error().message;
}

TEST(ModelConfig, Llama32OldRopeForm) {
  ModelConfig c = parse_ok(llama32_v4());
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.intermediate_size, 8192);
  EXPECT_EQ(c.num_layers, 16);
  EXPECT_EQ(c.num_heads, 32);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.q_dim(), 2048);
  EXPECT_EQ(c.kv_dim(), 512);
  EXPECT_EQ(c.qkv_dim(), 3072);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_EQ(c.sliding_window, 0);
}

TEST(ModelConfig, LlamaNewRopeParametersForm) {
  ModelConfig c = parse_ok(llama_v5());
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 32);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.num_kv_heads, 32);
}

TEST(ModelConfig, RopeParametersDefaultAndLinear) {
  json j = minimal("llama");
  j["rope_parameters"] = {{"rope_theta", 123.0}, {"rope_type", "default"}};
  ModelConfig c = parse_ok(j);
  EXPECT_DOUBLE_EQ(c.rope_theta, 123.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::kNone);

  j["rope_parameters"] = {{"rope_theta", 5.0}, {"rope_type", "linear"}, {"factor", 2.0}};
  c = parse_ok(j);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::kLinear);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 2.0);

  // 4.x early form used "type".
  j.erase("rope_parameters");
  j["rope_theta"] = 7.0;
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  c = parse_ok(j);
  EXPECT_DOUBLE_EQ(c.rope_theta, 7.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::kLinear);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 4.0);
}

TEST(ModelConfig, DefaultsWhenOptionalKeysAbsentOrNull) {
  json j = minimal("llama");
  j["head_dim"] = nullptr;
  j["rope_scaling"] = nullptr;
  ModelConfig c = parse_ok(j);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::kNone);
  EXPECT_FALSE(c.tie_word_embeddings);
}

TEST(ModelConfig, LlamaAttentionBias) {
  json j = minimal("llama");
  j["attention_bias"] = true;
  ModelConfig c = parse_ok(j);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_TRUE(c.o_bias);
}

TEST(ModelConfig, Qwen2AlwaysHasQkvBias) {
  json j = minimal("qwen2");
  j["num_key_value_heads"] = 2;
  j["tie_word_embeddings"] = true;
  j["use_sliding_window"] = false;
  j["sliding_window"] = 4096;
  j["max_window_layers"] = 21;
  ModelConfig c = parse_ok(j);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.sliding_window, 0);  // use_sliding_window false: window ignored
}

TEST(ModelConfig, Qwen2SlidingWindowAllOrNothing) {
  json j = minimal("qwen2");
  j["use_sliding_window"] = true;
  j["sliding_window"] = 16;
  j["max_window_layers"] = 0;  // every layer slides
  EXPECT_EQ(parse_ok(j).sliding_window, 16);
  j["max_window_layers"] = 28;  // >= num layers: none slides
  EXPECT_EQ(parse_ok(j).sliding_window, 0);
  j["max_window_layers"] = 1;  // a mix
  EXPECT_NE(parse_err(j).find("unsupported"), std::string::npos);
  // 5.x: layer_types decides.
  j["layer_types"] = {"sliding_attention", "sliding_attention"};
  EXPECT_EQ(parse_ok(j).sliding_window, 16);
}

TEST(ModelConfig, MistralSlidingWindow) {
  json j = minimal("mistral");
  j["num_key_value_heads"] = 2;
  j["sliding_window"] = 4096;
  ModelConfig c = parse_ok(j);
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_FALSE(c.qkv_bias);
  j["sliding_window"] = nullptr;
  EXPECT_EQ(parse_ok(j).sliding_window, 0);
}

TEST(ModelConfig, UnsupportedModelTypeListsSupported) {
  json j = minimal("gpt2");
  const std::string e = parse_err(j);
  EXPECT_NE(e.find("cfg.json"), std::string::npos) << e;
  EXPECT_NE(e.find("gpt2"), std::string::npos) << e;
  EXPECT_NE(e.find("llama, mistral, qwen2"), std::string::npos) << e;
}

TEST(ModelConfig, MissingKeyIsNamed) {
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "model_type", "max_position_embeddings"}) {
    json j = minimal("llama");
    j.erase(key);
    const std::string e = parse_err(j);
    EXPECT_NE(e.find(std::string("'") + key + "'"), std::string::npos) << e;
    EXPECT_NE(e.find("missing"), std::string::npos) << e;
    EXPECT_EQ(e.rfind("cfg.json", 0), 0u) << e;
  }
}

TEST(ModelConfig, WrongTypeIsNamed) {
  json j = minimal("llama");
  j["hidden_size"] = "2048";
  std::string e = parse_err(j);
  EXPECT_NE(e.find("'hidden_size'"), std::string::npos) << e;
  EXPECT_NE(e.find("expected an integer"), std::string::npos) << e;

  j = minimal("llama");
  j["tie_word_embeddings"] = 1;
  e = parse_err(j);
  EXPECT_NE(e.find("'tie_word_embeddings'"), std::string::npos) << e;

  j = minimal("llama");
  j["rope_parameters"] = {{"rope_type", "llama3"}, {"factor", "8"}};
  e = parse_err(j);
  EXPECT_NE(e.find("'rope_parameters.factor'"), std::string::npos) << e;

  j = minimal("llama");
  j["num_hidden_layers"] = 2.5;
  e = parse_err(j);
  EXPECT_NE(e.find("'num_hidden_layers'"), std::string::npos) << e;
}

TEST(ModelConfig, UnsupportedFeatures) {
  json j = minimal("llama");
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  std::string e = parse_err(j);
  EXPECT_NE(e.find("'yarn'"), std::string::npos) << e;
  EXPECT_NE(e.find("rope_scaling.rope_type"), std::string::npos) << e;

  j = minimal("llama");
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  e = parse_err(j);
  EXPECT_NE(e.find("'rope_scaling.low_freq_factor'"), std::string::npos) << e;

  j = minimal("llama");
  j["mlp_bias"] = true;
  EXPECT_NE(parse_err(j).find("'mlp_bias'"), std::string::npos);

  j = minimal("llama");
  j["hidden_act"] = "gelu";
  EXPECT_NE(parse_err(j).find("'hidden_act'"), std::string::npos);
}

TEST(ModelConfig, Validation) {
  json j = minimal("llama");
  j["num_key_value_heads"] = 3;
  EXPECT_NE(parse_err(j).find("multiple of num_key_value_heads"), std::string::npos);

  j = minimal("llama");
  j["head_dim"] = 7;
  EXPECT_NE(parse_err(j).find("head_dim"), std::string::npos);

  j = minimal("llama");
  j["vocab_size"] = 0;
  EXPECT_NE(parse_err(j).find("'vocab_size'"), std::string::npos);

  j = minimal("llama");
  j["num_attention_heads"] = -4;
  EXPECT_NE(parse_err(j).find("num_attention_heads"), std::string::npos);

  j = minimal("llama");
  j["vocab_size"] = int64_t{1} << 40;
  j["hidden_size"] = int64_t{1} << 40;
  EXPECT_NE(parse_err(j).find("supported maximum"), std::string::npos);

  ModelConfig c = parse_ok(minimal("llama"));
  EXPECT_TRUE(validate_model_config(c, "x").ok());
  c.model_type = "bert";
  EXPECT_FALSE(validate_model_config(c, "x").ok());
}

// Generated: every size key with values that are not a size, or far beyond any model, is refused
// naming the key, before anything could be allocated from it.
TEST(ModelConfig, HostileSizesAreRefusedNamingTheKey) {
  const char* keys[] = {
      "vocab_size",          "hidden_size",         "intermediate_size", "num_hidden_layers",
      "num_attention_heads", "num_key_value_heads", "head_dim",          "max_position_embeddings"};
  const json values[] = {0,
                         -1,
                         int64_t{1} << 31,
                         int64_t{1} << 62,
                         std::numeric_limits<int64_t>::max(),
                         std::numeric_limits<int64_t>::min(),
                         uint64_t{1} << 63,
                         1e18,
                         -1e18};
  for (const char* key : keys) {
    for (const json& v : values) {
      json j = minimal("llama");
      j[key] = v;
      const std::string e = parse_err(j);
      EXPECT_EQ(e.rfind("cfg.json: key '", 0), 0u) << key << "=" << v << ": " << e;
      EXPECT_NE(e.find(std::string("'") + key + "'"), std::string::npos)
          << key << "=" << v << ": " << e;
    }
  }
  // Each size just within its limit on its own passes; together they make too many parameters.
  json j = minimal("llama");
  j["num_hidden_layers"] = ModelLimits::kMaxLayers;
  j["hidden_size"] = ModelLimits::kMaxHidden;
  j["intermediate_size"] = ModelLimits::kMaxIntermediate;
  j["num_attention_heads"] = 128;
  EXPECT_NE(parse_err(j).find("billion parameters"), std::string::npos) << parse_err(j);
  j = minimal("llama");
  j["num_hidden_layers"] = ModelLimits::kMaxLayers;
  EXPECT_EQ(parse_ok(j).num_layers, ModelLimits::kMaxLayers);
}

TEST(ModelConfig, HeadsMustSplitHiddenUnlessHeadDimIsGiven) {
  json j = minimal("llama");  // hidden 32
  j["num_attention_heads"] = 3;
  j["num_key_value_heads"] = 1;
  const std::string e = parse_err(j);
  EXPECT_NE(e.find("key 'hidden_size'"), std::string::npos) << e;
  EXPECT_NE(e.find("not divisible by num_attention_heads (3)"), std::string::npos) << e;
  j["head_dim"] = 8;  // Explicit: q_dim need not equal hidden (as in Qwen3 or Gemma).
  EXPECT_EQ(parse_ok(j).head_dim, 8);

  j = minimal("llama");
  j["num_key_value_heads"] = 8;  // more kv heads than query heads
  EXPECT_NE(parse_err(j).find("key 'num_key_value_heads'"), std::string::npos);
}

TEST(ModelConfig, NonFiniteOrAbsurdNumbersAreRefused) {
  struct Case {
    const char* key;
    json value;
  };
  for (const Case& c :
       {Case{"rms_norm_eps", 0.0}, Case{"rms_norm_eps", -1e-5}, Case{"rms_norm_eps", 2.0},
        Case{"rope_theta", 0.0}, Case{"rope_theta", -5.0}, Case{"rms_norm_eps", "x"}}) {
    json j = minimal("llama");
    j[c.key] = c.value;
    EXPECT_NE(parse_err(j).find(std::string("'") + c.key + "'"), std::string::npos)
        << c.key << "=" << c.value;
  }
  json j = minimal("llama");
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", -2.0}};
  EXPECT_NE(parse_err(j).find("factor"), std::string::npos);
  j = minimal("llama");
  j["model_type"] = std::string(100000, 'x');
  EXPECT_LT(parse_err(j).size(), 300u);
}

TEST(ModelConfig, ToJsonRoundTrips) {
  for (const json& src : {llama32_v4(), llama_v5()}) {
    ModelConfig a = parse_ok(src);
    json out = model_config_to_json(a);
    EXPECT_EQ(out["architectures"][0], "LlamaForCausalLM");
    EXPECT_TRUE(out.contains("rope_theta"));
    EXPECT_TRUE(out.contains("rope_scaling"));
    ModelConfig b = parse_ok(out);
    EXPECT_EQ(model_config_to_json(b), out);
    EXPECT_EQ(b.rope_scaling.type, a.rope_scaling.type);
    EXPECT_EQ(b.tie_word_embeddings, a.tie_word_embeddings);
  }
  json q = minimal("qwen2");
  q["use_sliding_window"] = true;
  q["sliding_window"] = 8;
  q["max_window_layers"] = 0;
  ModelConfig a = parse_ok(q);
  json out = model_config_to_json(a);
  EXPECT_EQ(out["architectures"][0], "Qwen2ForCausalLM");
  ModelConfig b = parse_ok(out);
  EXPECT_EQ(b.sliding_window, 8);
  EXPECT_TRUE(b.qkv_bias);

  json m = minimal("mistral");
  m["sliding_window"] = 32;
  out = model_config_to_json(parse_ok(m));
  EXPECT_EQ(out["architectures"][0], "MistralForCausalLM");
  EXPECT_EQ(parse_ok(out).sliding_window, 32);
}

class ConfigFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("ramstream_config_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path) << text;
    return path;
  }
  std::filesystem::path dir_;
};

TEST_F(ConfigFileTest, LoadsFile) {
  const std::string path = write("config.json", llama32_v4().dump(2));
  Result<ModelConfig> r = load_model_config(path);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r.value().num_layers, 16);
}

TEST_F(ConfigFileTest, BadJsonNamesFileAndPosition) {
  const std::string path = write("config.json", "{\n  \"model_type\": \"llama\",\n  oops\n}");
  Result<ModelConfig> r = load_model_config(path);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find(path + ":3:"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("invalid JSON"), std::string::npos) << r.error().message;
}

// Generated: a folder, a FIFO, a character device and a dangling symlink where config.json
// should be, and JSON nested far too deep; each is an error naming the file, in no time.
TEST_F(ConfigFileTest, NonFilesAndDeepJsonAreRefused) {
  const std::string path = (dir_ / "config.json").string();
  struct Case {
    std::string what, expect;
    std::function<void()> make;
  };
  const std::vector<Case> cases = {
      {"folder", "is a folder", [&] { std::filesystem::create_directory(path); }},
      {"fifo", "not a regular file", [&] { ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0); }},
      {"device", "not a regular file", [&] { std::filesystem::create_symlink("/dev/zero", path); }},
      {"dangling", "No such file",
       [&] { std::filesystem::create_symlink((dir_ / "gone").string(), path); }},
      {"deep arrays", "nest deeper",
       [&] { write("config.json", std::string(100000, '[') + std::string(100000, ']')); }},
      {"deep objects", "nest deeper", [&] {
         std::string t;
         for (int i = 0; i < 100000; ++i) t += "{\"a\":";
         write("config.json", t + "1" + std::string(100000, '}'));
       }}};
  for (const Case& c : cases) {
    std::filesystem::remove_all(path);
    c.make();
    Result<ModelConfig> r = load_model_config(path);
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(r.error().message.rfind(path, 0), 0u) << c.what << ": " << r.error().message;
    EXPECT_NE(r.error().message.find(c.expect), std::string::npos)
        << c.what << ": " << r.error().message;
    EXPECT_LT(r.error().message.size(), 400u) << c.what;
  }
}

TEST_F(ConfigFileTest, MissingFileAndNonObject) {
  Result<ModelConfig> r = load_model_config((dir_ / "nope.json").string());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("nope.json"), std::string::npos);

  const std::string path = write("array.json", "[1, 2]");
  r = load_model_config(path);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("JSON object"), std::string::npos) << r.error().message;
}

}  // namespace
}  // namespace ramstream::model
