#include "checkpoint/hf_loader.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "checkpoint/safetensors.h"
#include "checkpoint/safetensors_test_util.h"
#include "model/hf_names.h"
#include "model/testing.h"

namespace ramstream::checkpoint {
namespace {

namespace fs = std::filesystem;
using model::ModelConfig;
using model::ModelParams;
using testing::safetensors_bytes;
using testing::write_file;
using Named = std::vector<std::pair<std::string, at::Tensor>>;

ModelConfig tiny(const std::string& type, bool tied, bool bias) {
  return model::testing::tiny_config({type, /*vocab=*/19, /*hidden=*/8, /*ffn=*/12, /*layers=*/2,
                                      /*heads=*/4, /*kv_heads=*/2, /*head_dim=*/2, tied, bias});
}

// Random parameters and the HF-named tensors (copies) that hold them.
std::pair<ModelParams, Named> random_model(const ModelConfig& c, at::ScalarType file_dtype) {
  ModelParams p = model::allocate_model_params(c, at::kFloat);
  for_each_param(p, [](const std::string&, at::Tensor& t) { t.copy_(at::randn(t.sizes())); });
  Named named;
  for (const std::string& n : model::hf_param_names(c)) {
    named.emplace_back(n, model::hf_param_view(p, c, n).value().to(file_dtype).clone());
  }
  return {std::move(p), std::move(named)};
}

class HfLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(7);
    dir_ = fs::temp_directory_path() / ("ramstream_hf_loader_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) {
    fs::create_directories((dir_ / name).parent_path());
    return (dir_ / name).string();
  }
  std::string load_error(const std::string& p, const ModelConfig& c) {
    ModelParams q = model::allocate_model_params(c, at::kFloat);
    Status st = load_hf_weights(p, c, q);
    EXPECT_FALSE(st.ok());
    if (st.ok()) return "";
    // Nothing was written before the error.
    for_each_param(q, [](const std::string& n, at::Tensor& t) {
      EXPECT_EQ(t.count_nonzero().item<int64_t>(), 0) << n;
    });
    return st.error().message;
  }
  fs::path dir_;
};

TEST_F(HfLoaderTest, RoundTripSingleFile) {
  for (const ModelConfig& c : {tiny("llama", false, false), tiny("llama", false, true),
                               tiny("qwen2", true, true), tiny("mistral", true, false)}) {
    SCOPED_TRACE(c.model_type);
    auto [p, named] = random_model(c, at::kFloat);
    const std::string file = path("single/model.safetensors");
    write_file(file, safetensors_bytes(named));
    for (const std::string& src : {file, path("single")}) {
      ModelParams q = model::allocate_model_params(c, at::kFloat);
      Status st = load_hf_weights(src, c, q);
      ASSERT_TRUE(st.ok()) << st.error().message;
      model::testing::expect_equal_params(p, q);
      EXPECT_EQ(q.lm_head.is_same(q.embedding), c.tie_word_embeddings);
    }
  }
}

TEST_F(HfLoaderTest, Bf16FileIntoFp32Params) {
  const ModelConfig c = tiny("llama", false, false);
  auto [p, named] = random_model(c, at::kBFloat16);
  write_file(path("m.safetensors"), safetensors_bytes(named));
  ModelParams q = model::allocate_model_params(c, at::kFloat);
  ASSERT_TRUE(load_hf_weights(path("m.safetensors"), c, q).ok());
  ModelParams expected =
      model::clone_model_params(model::clone_model_params(p, at::kBFloat16), at::kFloat);
  model::testing::expect_equal_params(expected, q);
}

TEST_F(HfLoaderTest, TiedModelIgnoresStrayLmHeadAndInvFreq) {
  const ModelConfig c = tiny("llama", true, false);
  auto [p, named] = random_model(c, at::kFloat);
  named.emplace_back("lm_head.weight", at::randn({19, 8}));
  named.emplace_back("model.layers.0.self_attn.rotary_emb.inv_freq", at::randn({1}));
  write_file(path("m.safetensors"), safetensors_bytes(named));
  ModelParams q = model::allocate_model_params(c, at::kFloat);
  Status st = load_hf_weights(path("m.safetensors"), c, q);
  ASSERT_TRUE(st.ok()) << st.error().message;
  model::testing::expect_equal_params(p, q);
}

TEST_F(HfLoaderTest, MissingTensorIsNamed) {
  const ModelConfig c = tiny("llama", false, false);
  auto [p, named] = random_model(c, at::kFloat);
  named.erase(named.begin() + 3);  // layer 0 v_proj
  write_file(path("m.safetensors"), safetensors_bytes(named));
  const std::string e = load_error(path("m.safetensors"), c);
  EXPECT_NE(e.find("1 missing"), std::string::npos) << e;
  EXPECT_NE(e.find("'model.layers.0.self_attn.v_proj.weight'"), std::string::npos) << e;
  EXPECT_NE(e.find(path("m.safetensors")), std::string::npos) << e;

  // Untied model without lm_head.
  named = random_model(c, at::kFloat).second;
  named.pop_back();
  write_file(path("m.safetensors"), safetensors_bytes(named));
  EXPECT_NE(load_error(path("m.safetensors"), c).find("'lm_head.weight'"), std::string::npos);
}

TEST_F(HfLoaderTest, UnexpectedAndMismatchedTensorsAreNamed) {
  const ModelConfig c = tiny("llama", false, false);
  Named named = random_model(c, at::kFloat).second;
  named.emplace_back("model.layers.5.mlp.up_proj.weight", at::zeros({12, 8}));
  named.emplace_back("model.layers.0.self_attn.q_proj.bias", at::zeros({8}));
  named.emplace_back("vision_tower.weight", at::zeros({1}));
  named[1].second = at::zeros({9, 8});  // q_proj: expects [8, 8]
  const std::string file = path("m.safetensors");
  write_file(file, safetensors_bytes(named));
  const std::string e = load_error(file, c);
  EXPECT_NE(e.find("3 unexpected"), std::string::npos) << e;
  EXPECT_NE(e.find("model.layers.5.mlp.up_proj.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("q_proj.bias"), std::string::npos) << e;
  EXPECT_NE(e.find("vision_tower.weight"), std::string::npos) << e;
  EXPECT_NE(e.find(file + ": tensor 'model.layers.0.self_attn.q_proj.weight': file has shape "
                          "[9, 8], model expects [8, 8]"),
            std::string::npos)
      << e;

  named = random_model(c, at::kFloat).second;
  named[0].second = at::zeros({19, 8}, at::kInt);
  write_file(file, safetensors_bytes(named));
  EXPECT_NE(load_error(file, c).find("I32"), std::string::npos);
}

TEST_F(HfLoaderTest, ShardedFolderWithIndex) {
  const ModelConfig c = tiny("qwen2", false, true);
  auto [p, named] = random_model(c, at::kFloat);
  const size_t half = named.size() / 2;
  Named a(named.begin(), named.begin() + half), b(named.begin() + half, named.end());
  nlohmann::json index = {{"metadata", {{"total_size", 0}}},
                          {"weight_map", nlohmann::json::object()}};
  for (const auto& [n, t] : a) index["weight_map"][n] = "model-00001-of-00002.safetensors";
  for (const auto& [n, t] : b) index["weight_map"][n] = "model-00002-of-00002.safetensors";
  write_file(path("sharded/model-00001-of-00002.safetensors"), safetensors_bytes(a));
  write_file(path("sharded/model-00002-of-00002.safetensors"), safetensors_bytes(b));
  write_file(path("sharded/model.safetensors.index.json"), index.dump());

  auto files = hf_safetensors_files(path("sharded"));
  ASSERT_TRUE(files.ok()) << files.error().message;
  EXPECT_EQ(files.value().size(), 2u);
  ModelParams q = model::allocate_model_params(c, at::kFloat);
  Status st = load_hf_weights(path("sharded"), c, q);
  ASSERT_TRUE(st.ok()) << st.error().message;
  model::testing::expect_equal_params(p, q);

  // The index points a tensor at the wrong shard.
  index["weight_map"][a[0].first] = "model-00002-of-00002.safetensors";
  write_file(path("sharded/model.safetensors.index.json"), index.dump());
  EXPECT_NE(load_error(path("sharded"), c).find(a[0].first), std::string::npos);

  // A shard that does not exist, and one that escapes the folder.
  index["weight_map"][a[0].first] = "model-00003-of-00002.safetensors";
  write_file(path("sharded/model.safetensors.index.json"), index.dump());
  EXPECT_NE(load_error(path("sharded"), c).find("model-00003-of-00002.safetensors"),
            std::string::npos);
  index["weight_map"][a[0].first] = "../x.safetensors";
  write_file(path("sharded/model.safetensors.index.json"), index.dump());
  EXPECT_NE(load_error(path("sharded"), c).find("invalid shard name"), std::string::npos);

  write_file(path("sharded/model.safetensors.index.json"), "{\"weight_map\": 3}");
  EXPECT_NE(load_error(path("sharded"), c).find("'weight_map'"), std::string::npos);
  write_file(path("sharded/model.safetensors.index.json"), "{");
  EXPECT_NE(load_error(path("sharded"), c).find("invalid JSON"), std::string::npos);
}

// Generated broken model.safetensors.index.json files: each is refused by both the loader and
// open_hf_checkpoint (what `inspect` runs), with the same message naming the index.
TEST_F(HfLoaderTest, BrokenIndexVariantsAreRefusedTheSameWayEverywhere) {
  const ModelConfig c = tiny("llama", true, false);
  auto [p, named] = random_model(c, at::kFloat);
  write_file(path("ix/model-00001-of-00001.safetensors"), safetensors_bytes(named));
  nlohmann::json good = {{"metadata", {{"total_size", 1}}},
                         {"weight_map", nlohmann::json::object()}};
  for (const auto& [n, t] : named) good["weight_map"][n] = "model-00001-of-00001.safetensors";
  const std::string index = path("ix/model.safetensors.index.json");
  write_file(index, good.dump());
  ASSERT_TRUE(open_hf_checkpoint(path("ix"), c).ok());

  const std::string first = named[0].first;
  std::vector<std::pair<std::string, std::string>> variants;  // text, expected substring
  for (const char* text :
       {"{", "", "[1, 2]", "null", "{\"weight_map\": 3}", "{}", "{\"weight_map\": null}",
        "{\"weight_map\": []}", "{\"weight_map\": \"x\"}"}) {
    variants.emplace_back(text, "");
  }
  for (const nlohmann::json& shard :
       {nlohmann::json("/etc/passwd"), nlohmann::json("../x.safetensors"),
        nlohmann::json("a/../../b.safetensors"), nlohmann::json("sub/x.safetensors"),
        nlohmann::json("a\\b"), nlohmann::json(""), nlohmann::json("."), nlohmann::json(".."),
        nlohmann::json("x\x01y"), nlohmann::json(7), nlohmann::json(nullptr),
        nlohmann::json::array({"a"}), nlohmann::json::object()}) {
    nlohmann::json j = good;
    j["weight_map"][first] = shard;
    variants.emplace_back(j.dump(), "key 'weight_map' entry '" + first + "'");
  }
  for (const nlohmann::json& meta :
       {nlohmann::json(3), nlohmann::json("x"), nlohmann::json{{"total_size", "big"}},
        nlohmann::json{{"total_size", -1}}}) {
    nlohmann::json j = good;
    j["metadata"] = meta;
    variants.emplace_back(j.dump(), "metadata");
  }
  variants.emplace_back(std::string(100000, '[') + std::string(100000, ']'), "nest deeper");
  variants.emplace_back("{\"weight_map\": {}}", "missing tensors");  // lists nothing
  {
    nlohmann::json j = good;
    j["weight_map"][first] = "model-00002-of-00002.safetensors";  // missing shard
    variants.emplace_back(j.dump(), "does not exist");
  }
  for (const auto& [text, expect] : variants) {
    write_file(index, text);
    const std::string e = load_error(path("ix"), c);
    EXPECT_NE(e.find(path("ix")), std::string::npos) << text.substr(0, 80) << ": " << e;
    EXPECT_NE(e.find(expect), std::string::npos) << text.substr(0, 80) << ": " << e;
    EXPECT_LT(e.size(), 2000u) << text.substr(0, 80);
    Result<HfCheckpoint> ck = open_hf_checkpoint(path("ix"), c);
    ASSERT_FALSE(ck.ok()) << text.substr(0, 80);
    EXPECT_EQ(ck.error().message, e);
  }
  // The index itself as a folder or a FIFO.
  fs::remove(index);
  fs::create_directories(index);
  EXPECT_NE(load_error(path("ix"), c).find("is a folder"), std::string::npos);
  fs::remove(index);
  ASSERT_EQ(::mkfifo(index.c_str(), 0600), 0);
  EXPECT_NE(load_error(path("ix"), c).find("not a regular file"), std::string::npos);
}

TEST_F(HfLoaderTest, NonRegularWeightFilesAreRefused) {
  const ModelConfig c = tiny("llama", false, false);
  fs::create_directories(dir_ / "dev");
  fs::create_symlink("/dev/zero", dir_ / "dev" / "model.safetensors");
  EXPECT_NE(load_error(path("dev"), c).find("not a regular file"), std::string::npos);
  const std::string fifo = path("fifo.safetensors");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_NE(load_error(fifo, c).find("not a regular file"), std::string::npos);
  fs::create_directories(dir_ / "folder" / "model.safetensors");
  EXPECT_NE(load_error(path("folder"), c).find("is a folder"), std::string::npos);
}

// The format-independent check that `inspect` runs on GGUF files too.
TEST(CheckpointTensors, ListsEveryKindOfProblem) {
  const ModelConfig c = tiny("llama", true, false);
  const model::ModelParams p = model::allocate_model_params(c, at::kFloat);
  std::vector<CheckpointTensor> tensors;
  for (const std::string& n : model::hf_param_names(c)) {
    model::ModelParams q = p;
    tensors.push_back(
        {n, "", "m.gguf", model::hf_param_view(q, c, n).value().sizes().vec(), "f32"});
  }
  ASSERT_TRUE(check_checkpoint_tensors(tensors, c, "m.gguf").ok());
  std::vector<CheckpointTensor> bad = tensors;
  bad[0].convertible = false;
  bad[0].dtype = "iq1_m";
  bad[1].shape = {1, 2, 3};
  bad.push_back({"", "blk.0.weird", "m.gguf", {4}, "f32"});
  bad.push_back({std::string(100000, 'n'), "", "m.gguf", {4}, "f32"});
  bad.push_back(tensors[2]);
  bad.erase(bad.begin() + 3);
  const Status st = check_checkpoint_tensors(bad, c, "m.gguf");
  ASSERT_FALSE(st.ok());
  const std::string& e = st.error().message;
  EXPECT_EQ(e.rfind("m.gguf: weights do not match the llama config:", 0), 0u) << e;
  EXPECT_NE(e.find("iq1_m"), std::string::npos) << e;
  EXPECT_NE(e.find("file has shape [1, 2, 3]"), std::string::npos) << e;
  EXPECT_NE(e.find("'blk.0.weird' (no Hugging Face name)"), std::string::npos) << e;
  EXPECT_NE(e.find("is in both"), std::string::npos) << e;
  EXPECT_NE(e.find("1 missing"), std::string::npos) << e;
  EXPECT_LT(e.size(), 3000u);
}

TEST_F(HfLoaderTest, BadPaths) {
  const ModelConfig c = tiny("llama", false, false);
  fs::create_directories(dir_ / "empty");
  EXPECT_NE(load_error(path("empty"), c).find("neither"), std::string::npos);
  EXPECT_NE(load_error(path("nope"), c).find("no such"), std::string::npos);
  write_file(path("trunc.safetensors"), "abc");
  EXPECT_NE(load_error(path("trunc.safetensors"), c).find("truncated"), std::string::npos);
}

// Real transformers-written models, when present: tests/fixtures/hf/<name>/{config.json,
// model.safetensors}, or the folder named by RAMSTREAM_HF_FIXTURES.
TEST(HfLoaderFixtures, LoadsRealHuggingFaceFolders) {
  const char* env = std::getenv("RAMSTREAM_HF_FIXTURES");
  const fs::path root = env ? fs::path(env) : fs::path("tests/fixtures/hf");
  std::error_code ec;
  if (!fs::is_directory(root, ec)) GTEST_SKIP() << "no fixtures at " << root;
  int loaded = 0;
  for (const fs::directory_entry& d : fs::directory_iterator(root)) {
    if (!fs::exists(d.path() / "config.json")) continue;
    SCOPED_TRACE(d.path().string());
    Result<ModelConfig> cfg = model::load_model_config((d.path() / "config.json").string());
    ASSERT_TRUE(cfg.ok()) << cfg.error().message;
    ModelParams p = model::allocate_model_params(cfg.value(), at::kFloat);
    Status st = load_hf_weights(d.path().string(), cfg.value(), p);
    ASSERT_TRUE(st.ok()) << st.error().message;
    // Every view holds the file's tensor, read independently of the loader's copy path.
    std::vector<SafetensorsFile> files;
    const Result<std::vector<std::string>> paths = hf_safetensors_files(d.path().string());
    ASSERT_TRUE(paths.ok()) << paths.error().message;
    for (const std::string& f : paths.value()) {
      files.push_back(SafetensorsFile::open(f).value_or_throw());
    }
    for (const std::string& name : model::hf_param_names(cfg.value())) {
      at::Tensor view = model::hf_param_view(p, cfg.value(), name).value();
      int found = 0;
      for (const SafetensorsFile& f : files) {
        if (!f.contains(name)) continue;
        ++found;
        EXPECT_TRUE(at::equal(view, f.tensor(name).value().to(at::kFloat))) << name;
      }
      EXPECT_EQ(found, 1) << name;
    }
    EXPECT_GT(p.blocks[0].wqkv.abs().sum().item<double>(), 0.0);
    ++loaded;
  }
  if (loaded == 0) GTEST_SKIP() << "no model folders under " << root;
  std::cout << "loaded " << loaded << " model folders from " << root << "\n";
}

}  // namespace
}  // namespace ramstream::checkpoint
