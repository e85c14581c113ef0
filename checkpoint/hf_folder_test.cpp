#include "checkpoint/hf_folder.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <tuple>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "checkpoint/atomic_file.h"
#include "checkpoint/hf_loader.h"
#include "checkpoint/safetensors.h"
#include "checkpoint/safetensors_test_util.h"
#include "model/hf_names.h"
#include "model/testing.h"

namespace ramstream::checkpoint {
namespace {

namespace fs = std::filesystem;
using model::ModelConfig;
using model::ModelParams;
using nlohmann::json;
using testing::write_file;

const fs::path kFixtures = "tests/fixtures/hf";

std::string read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> listing(const fs::path& d) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(d)) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

struct Loaded {
  ModelConfig cfg;
  ModelParams params;
};

Loaded load_folder(const fs::path& dir) {
  Loaded l;
  l.cfg = model::load_model_config((dir / "config.json").string()).value_or_throw();
  l.params = model::allocate_model_params(l.cfg, at::kFloat);
  Status st = load_hf_weights(dir.string(), l.cfg, l.params);
  if (!st.ok()) throw std::runtime_error(st.error().message);
  return l;
}

ModelParams random_params(const ModelConfig& c) {
  ModelParams p = model::allocate_model_params(c, at::kFloat);
  for_each_param(p, [](const std::string&, at::Tensor& t) { t.copy_(at::randn(t.sizes())); });
  return p;
}

class HfFolderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(3);
    dir_ = fs::temp_directory_path() / ("ramstream_hf_folder_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(HfFolderTest, FixturesRoundTripBitwiseInFp32) {
  if (!fs::is_directory(kFixtures)) GTEST_SKIP() << "no fixtures at " << kFixtures;
  for (const char* name : {"llama_gqa", "qwen2_bias", "llama3_rope_scaling"}) {
    SCOPED_TRACE(name);
    const fs::path src = kFixtures / name;
    Loaded a = load_folder(src);
    HfSaveOptions opts;
    opts.dtype = at::kFloat;
    opts.copy_from_dir = src.string();
    const fs::path out = dir_ / name;
    Status st = save_hf_folder(out.string(), a.cfg, a.params, opts);
    ASSERT_TRUE(st.ok()) << st.error().message;

    Loaded b = load_folder(out);
    EXPECT_EQ(model::model_config_to_json(a.cfg), model::model_config_to_json(b.cfg));
    model::testing::expect_equal_params(a.params, b.params);

    // Each tensor's bytes equal the transformers-written file's, and the names are the same set
    // (so a tied model has no lm_head.weight, exactly like the fixture).
    SafetensorsFile ref = SafetensorsFile::open((src / "model.safetensors").string()).value();
    SafetensorsFile ours = SafetensorsFile::open((out / "model.safetensors").string()).value();
    std::vector<std::string> ref_names = ref.names(), our_names = ours.names();
    std::sort(ref_names.begin(), ref_names.end());
    std::sort(our_names.begin(), our_names.end());
    EXPECT_EQ(ref_names, our_names);
    EXPECT_EQ(ours.metadata(), ref.metadata());  // {"format": "pt"}
    for (const std::string& n : ref_names) {
      const SafetensorInfo& ri = *ref.info(n).value();
      const SafetensorInfo& oi = *ours.info(n).value();
      ASSERT_EQ(ri.dtype, oi.dtype) << n;
      ASSERT_EQ(ri.shape, oi.shape) << n;
      EXPECT_EQ(std::memcmp(ref.data(ri), ours.data(oi), ri.end - ri.begin), 0) << n;
    }
    const json cfg = json::parse(read_all(out / "config.json"));
    EXPECT_EQ(cfg["dtype"], "float32");
    EXPECT_EQ(cfg["torch_dtype"], "float32");
    // reference.safetensors is a weight file by name and is not copied; versions.json is.
    EXPECT_EQ(listing(out), (std::vector<std::string>{"config.json", "model.safetensors",
                                                      kHfOutputMarker, "versions.json"}));
  }
}

TEST_F(HfFolderTest, Bf16IsRoundedLikeTorch) {
  const ModelConfig c = model::testing::tiny_config({"qwen2", 61, 32, 48, 2, 4, 2, 8, true});
  ModelParams p = random_params(c);
  const fs::path out = dir_ / "bf16";
  ASSERT_TRUE(save_hf_folder(out.string(), c, p).ok());  // bf16 is the default
  EXPECT_EQ(json::parse(read_all(out / "config.json"))["torch_dtype"], "bfloat16");
  SafetensorsFile f = SafetensorsFile::open((out / "model.safetensors").string()).value();
  EXPECT_FALSE(f.contains("lm_head.weight"));  // tied
  for (const std::string& n : model::hf_param_names(c)) {
    at::Tensor want = model::hf_param_view(p, c, n).value().to(at::kBFloat16);
    at::Tensor got = f.tensor(n).value();
    ASSERT_EQ(got.scalar_type(), at::kBFloat16) << n;
    EXPECT_TRUE(at::equal(got, want)) << n;
  }
  Loaded back = load_folder(out);
  EXPECT_TRUE(at::equal(back.params.embedding, p.embedding.to(at::kBFloat16).to(at::kFloat)));
}

TEST_F(HfFolderTest, ShardsWithIndexAndReloads) {
  const ModelConfig c = model::testing::tiny_config({"llama", 61, 32, 48, 3, 4, 2, 8, false, true});
  ModelParams p = random_params(c);
  HfSaveOptions opts;
  opts.dtype = at::kFloat;
  opts.max_shard_bytes = 8 * 1024;  // embedding alone is 61*32*4 = 7.8 KiB
  const fs::path out = dir_ / "sharded";
  ASSERT_TRUE(save_hf_folder(out.string(), c, p, opts).ok());
  const json index = json::parse(read_all(out / "model.safetensors.index.json"));
  std::set<std::string> shards;
  for (const auto& [name, file] : index["weight_map"].items()) {
    shards.insert(file.get<std::string>());
  }
  EXPECT_GT(shards.size(), 3u);
  uint64_t total = 0;
  for (const std::string& s : shards) {
    EXPECT_TRUE(fs::exists(out / s)) << s;
    SafetensorsFile f = SafetensorsFile::open((out / s).string()).value();
    for (const std::string& n : f.names()) {
      const SafetensorInfo& i = *f.info(n).value();
      total += i.end - i.begin;
    }
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
  EXPECT_EQ(index["metadata"]["total_parameters"].get<int64_t>(), p.numel());
  EXPECT_EQ(index["weight_map"].size(), model::hf_param_names(c).size());
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));
  Loaded back = load_folder(out);
  model::testing::expect_equal_params(p, back.params);
}

TEST_F(HfFolderTest, CopiesNonWeightFilesAndMergesConfig) {
  const fs::path src = dir_ / "src";
  fs::create_directories(src / "subdir");
  const std::map<std::string, std::string> kept = {
      {"tokenizer.json", R"({"model": {"type": "BPE"}})"},
      {"tokenizer_config.json", R"({"chat_template": "{{ messages }}", "add_bos_token": true})"},
      {"special_tokens_map.json", R"({"eos_token": "<|im_end|>"})"},
      {"generation_config.json", R"({"eos_token_id": [2, 7], "temperature": 0.6})"},
      {"chat_template.jinja", "{% for m in messages %}{{ m.content }}{% endfor %}"},
      {"tokenizer.model", std::string("\x00\x01sp", 4)},
      {"README.md", "# model card"},
  };
  for (const auto& [n, text] : kept) write_file((src / n).string(), text);
  for (const char* weight :
       {"model.safetensors", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
        "pytorch_model.bin", "pytorch_model.bin.index.json", "model.gguf", "x.tmp-123"}) {
    write_file((src / weight).string(), "weights");
  }
  write_file((src / "subdir" / "nested.json").string(), "{}");
  write_file((src / "config.json").string(),
             R"({"model_type": "llama", "bos_token_id": 1, "eos_token_id": 2,
                 "pad_token_id": null, "hidden_size": 999})");
  fs::create_symlink(src / "README.md", src / "linked.txt");  // HF cache snapshots are symlinks

  const ModelConfig c = model::testing::tiny_config({});
  ModelParams p = random_params(c);
  HfSaveOptions opts;
  opts.copy_from_dir = src.string();
  opts.extra_config = {{"use_cache", false}, {"pad_token_id", 0}, {"rope_scaling", nullptr}};
  const fs::path out = dir_ / "out";
  Status st = save_hf_folder(out.string(), c, p, opts);
  ASSERT_TRUE(st.ok()) << st.error().message;

  std::vector<std::string> want = {"config.json", "linked.txt", "model.safetensors",
                                   kHfOutputMarker};
  for (const auto& [n, text] : kept) want.push_back(n);
  std::sort(want.begin(), want.end());
  EXPECT_EQ(listing(out), want);
  for (const auto& [n, text] : kept) EXPECT_EQ(read_all(out / n), text) << n;
  EXPECT_EQ(read_all(out / "linked.txt"), "# model card");
  EXPECT_FALSE(fs::is_symlink(out / "linked.txt"));

  const json cfg = json::parse(read_all(out / "config.json"));
  EXPECT_EQ(cfg["hidden_size"], c.hidden_size);  // ours, not the source's
  EXPECT_EQ(cfg["bos_token_id"], 1);
  EXPECT_EQ(cfg["eos_token_id"], 2);
  EXPECT_EQ(cfg["pad_token_id"], 0);  // extra_config wins
  EXPECT_EQ(cfg["use_cache"], false);
  EXPECT_FALSE(cfg.contains("rope_scaling"));  // null in a merge patch deletes
  EXPECT_EQ(cfg["dtype"], "bfloat16");

  // Saving over the source folder itself (copy_from_dir == dir) keeps every non-weight file.
  opts.copy_from_dir = out.string();
  opts.extra_config = json::object();
  st = save_hf_folder(out.string(), c, p, opts);
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_EQ(listing(out), want);
  for (const auto& [n, text] : kept) EXPECT_EQ(read_all(out / n), text) << n;
  EXPECT_EQ(json::parse(read_all(out / "config.json"))["pad_token_id"], 0);
}

TEST_F(HfFolderTest, GenerationConfigIsWrittenOnlyWhenTokenIdsAreKnown) {
  const ModelConfig c = model::testing::tiny_config({});
  ModelParams p = random_params(c);
  HfSaveOptions opts;
  ASSERT_TRUE(save_hf_folder((dir_ / "none").string(), c, p, opts).ok());
  EXPECT_EQ(listing(dir_ / "none"),
            (std::vector<std::string>{"config.json", "model.safetensors", kHfOutputMarker}));

  opts.extra_config = {{"bos_token_id", 1}, {"eos_token_id", json::array({2, 3})}};
  ASSERT_TRUE(save_hf_folder((dir_ / "ids").string(), c, p, opts).ok());
  const json gen = json::parse(read_all(dir_ / "ids" / "generation_config.json"));
  EXPECT_EQ(gen["bos_token_id"], 1);
  EXPECT_EQ(gen["eos_token_id"], json::array({2, 3}));
  EXPECT_FALSE(gen.contains("pad_token_id"));
}

TEST_F(HfFolderTest, FailedSaveLeavesTargetUntouched) {
  const ModelConfig c = model::testing::tiny_config({});
  ModelParams p = random_params(c);
  const fs::path out = dir_ / "ckpt";
  HfSaveOptions opts;
  opts.dtype = at::kFloat;
  opts.max_shard_bytes = 4096;  // several shards, so the failure lands between files too

  // No previous content: a failure leaves nothing under the name.
  for (int fail_after : {1, 5, 12}) {
    int written = 0;
    opts.after_tensor = [&](const std::string& n) -> Status {
      if (++written == fail_after) return Error{"injected failure after " + n};
      return Ok{};
    };
    Status st = save_hf_folder(out.string(), c, p, opts);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.error().message.find("injected failure"), std::string::npos);
    EXPECT_TRUE(listing(dir_).empty()) << fail_after;
  }

  // Previous content survives byte for byte, whether the hook returns an Error or throws (a
  // file of the user's in it, so replacing needs replace_foreign).
  opts.after_tensor = nullptr;
  ASSERT_TRUE(save_hf_folder(out.string(), c, p, opts).ok());
  write_file((out / "marker.txt").string(), "previous save");
  opts.replace_foreign = true;
  std::map<std::string, std::string> before;
  for (const std::string& f : listing(out)) before[f] = read_all(out / f);
  ModelParams changed = random_params(c);
  int written = 0;
  opts.after_tensor = [&](const std::string&) -> Status {
    if (++written == 7) throw std::runtime_error("injected exception");
    return Ok{};
  };
  Status st = save_hf_folder(out.string(), c, changed, opts);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("injected exception"), std::string::npos);
  std::map<std::string, std::string> after;
  for (const std::string& f : listing(out)) after[f] = read_all(out / f);
  EXPECT_EQ(before, after);
  EXPECT_EQ(listing(dir_), std::vector<std::string>{"ckpt"});  // no staging folder left

  // A successful save replaces the folder as a whole (marker gone, new weights in).
  opts.after_tensor = nullptr;
  ASSERT_TRUE(save_hf_folder(out.string(), c, changed, opts).ok());
  EXPECT_FALSE(fs::exists(out / "marker.txt"));
  EXPECT_EQ(listing(dir_), std::vector<std::string>{"ckpt"});
  Loaded back = load_folder(out);
  model::testing::expect_equal_params(changed, back.params);
}

TEST_F(HfFolderTest, ReplacesOnlyEmptyFoldersAndItsOwnOutputs) {
  const ModelConfig c = model::testing::tiny_config({});
  ModelParams p = random_params(c);
  HfSaveOptions opts;
  const fs::path out = dir_ / "out";
  EXPECT_TRUE(check_replaceable_output(out.string()).ok());  // absent
  fs::create_directories(out);
  EXPECT_TRUE(check_replaceable_output(out.string()).ok());  // empty
  ASSERT_TRUE(save_hf_folder(out.string(), c, p, opts).ok());
  const json marker = json::parse(read_all(out / kHfOutputMarker));
  EXPECT_EQ(marker["written_by"], "ramstream");
  EXPECT_EQ(marker["files"], json::array({"config.json", "model.safetensors"}));
  EXPECT_TRUE(check_replaceable_output(out.string()).ok());  // ours
  ASSERT_TRUE(save_hf_folder(out.string(), c, p, opts).ok());

  // Whatever it did not write blocks a replace, and is named; replace_foreign overrides.
  write_file((out / "eval.json").string(), "{}");
  fs::create_directories(out / "plots");
  Status st = save_hf_folder(out.string(), c, p, opts);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find(out.string() + ": not empty"), std::string::npos)
      << st.error().message;
  EXPECT_NE(st.error().message.find("'eval.json', 'plots'"), std::string::npos)
      << st.error().message;
  EXPECT_TRUE(fs::exists(out / "eval.json"));
  opts.replace_foreign = true;
  ASSERT_TRUE(save_hf_folder(out.string(), c, p, opts).ok());
  EXPECT_FALSE(fs::exists(out / "eval.json"));
  opts.replace_foreign = false;

  // Someone else's folder, with or without a marker that is not ours.
  const std::vector<std::pair<std::string, std::string>> markers = {
      {"", ""},
      {kHfOutputMarker, R"({"written_by": "other", "files": ["a.txt"]})"},
      {kHfOutputMarker, "not json"},
      {kHfOutputMarker, R"({"written_by": "ramstream", "files": "a.txt"})"},
  };
  for (size_t k = 0; k < markers.size(); ++k) {
    const fs::path theirs = dir_ / ("theirs" + std::to_string(k));
    fs::create_directories(theirs);
    write_file((theirs / "a.txt").string(), "keep");
    if (!markers[k].first.empty())
      write_file((theirs / markers[k].first).string(), markers[k].second);
    st = save_hf_folder(theirs.string(), c, p, opts);
    ASSERT_FALSE(st.ok()) << k;
    EXPECT_NE(st.error().message.find("'a.txt'"), std::string::npos) << st.error().message;
    EXPECT_EQ(read_all(theirs / "a.txt"), "keep");
  }
  write_file((dir_ / "file").string(), "x");
  EXPECT_FALSE(check_replaceable_output((dir_ / "file").string()).ok());
  // No staging folder left by any of it.
  for (const std::string& n : listing(dir_)) EXPECT_EQ(n.find(".tmp-"), std::string::npos) << n;
}

TEST_F(HfFolderTest, ExtraFilesAndMissingParents) {
  const ModelConfig c = model::testing::tiny_config({});
  ModelParams p = random_params(c);
  HfSaveOptions opts;
  opts.write_extra_files = [](const std::string& dir) {
    return write_file_atomic(dir + "/tokenizer.json", "{}");
  };
  const fs::path out = dir_ / "a" / "b" / "out";
  ASSERT_TRUE(save_hf_folder(out.string(), c, p, opts).ok());
  EXPECT_EQ(read_all(out / "tokenizer.json"), "{}");
  const json marker = json::parse(read_all(out / kHfOutputMarker));
  EXPECT_EQ(marker["files"], json::array({"config.json", "model.safetensors", "tokenizer.json"}));
  // A failing extra file aborts the save and leaves nothing.
  opts.write_extra_files = [](const std::string&) -> Status { return Error{"no tokenizer"}; };
  Status st = save_hf_folder((dir_ / "x").string(), c, p, opts);
  ASSERT_FALSE(st.ok());
  EXPECT_FALSE(fs::exists(dir_ / "x"));
  // A parent that cannot be created is named, not a staging path.
  write_file((dir_ / "plain").string(), "x");
  opts.write_extra_files = nullptr;
  st = save_hf_folder((dir_ / "plain" / "sub" / "out").string(), c, p, opts);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find((dir_ / "plain" / "sub").string() + ": cannot create"),
            std::string::npos)
      << st.error().message;
  EXPECT_EQ(st.error().message.find(".tmp-"), std::string::npos) << st.error().message;
}

TEST_F(HfFolderTest, RefusesBadOptionsBeforeCreatingAnything) {
  const ModelConfig c = model::testing::tiny_config({});
  ModelParams p = random_params(c);
  HfSaveOptions opts;
  opts.dtype = at::kLong;
  Status st = save_hf_folder((dir_ / "x").string(), c, p, opts);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("Long"), std::string::npos) << st.error().message;
  opts.dtype = at::kBFloat16;
  opts.copy_from_dir = (dir_ / "missing").string();
  st = save_hf_folder((dir_ / "x").string(), c, p, opts);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("missing"), std::string::npos) << st.error().message;
  opts.copy_from_dir.clear();
  opts.extra_config = json::array();
  EXPECT_FALSE(save_hf_folder((dir_ / "x").string(), c, p, opts).ok());
  // Params that do not match the config.
  ModelParams other = random_params(model::testing::tiny_config({"llama", 61, 32, 48, 1}));
  EXPECT_FALSE(save_hf_folder((dir_ / "x").string(), c, other, {}).ok());
  EXPECT_TRUE(listing(dir_).empty());
}

TEST(HfNonWeightFiles, Classification) {
  for (const char* keep :
       {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "generation_config.json", "chat_template.jinja", "chat_template.json", "tokenizer.model",
        "vocab.json", "merges.txt", "README.md", "added_tokens.json", ".gitattributes"}) {
    EXPECT_TRUE(is_hf_non_weight_file(keep)) << keep;
  }
  for (const char* skip :
       {"config.json", "model.safetensors", "model-00001-of-00002.safetensors",
        "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
        "consolidated.pth", "model.gguf", "tf_model.h5", "flax_model.msgpack", "model.onnx",
        "training_args.bin", "tokenizer.json.tmp-42", ""}) {
    EXPECT_FALSE(is_hf_non_weight_file(skip)) << skip;
  }
}

// Hostile model.safetensors.index.json cases the loader tests do not already cover.
TEST_F(HfFolderTest, HostileIndexFiles) {
  const ModelConfig c = model::testing::tiny_config({});
  ModelParams p = random_params(c);
  HfSaveOptions opts;
  opts.max_shard_bytes = 4096;
  const fs::path out = dir_ / "idx";
  ASSERT_TRUE(save_hf_folder(out.string(), c, p, opts).ok());
  const std::string index_path = (out / "model.safetensors.index.json").string();
  const json good = json::parse(read_all(index_path));
  const std::string first = good["weight_map"].begin().key();

  // Parse errors name the index file; consistency errors name the folder and the shard.
  auto error_of = [&](const std::string& index_text, bool names_index = true) {
    write_file(index_path, index_text);
    std::string msg;
    Result<std::vector<std::string>> files = hf_safetensors_files(out.string());
    if (!files.ok()) {
      msg = files.error().message;
    } else {
      ModelParams q = model::allocate_model_params(c, at::kFloat);
      Status st = load_hf_weights(out.string(), c, q);
      EXPECT_FALSE(st.ok()) << index_text;
      if (!st.ok()) msg = st.error().message;
    }
    EXPECT_NE(msg.find(names_index ? "model.safetensors.index.json" : out.string()),
              std::string::npos)
        << msg;
    return msg;
  };
  auto with = [&](const json& value) {
    json j = good;
    j["weight_map"][first] = value;
    return j.dump();
  };
  EXPECT_NE(error_of(with("/etc/passwd")).find("invalid shard name"), std::string::npos);
  EXPECT_NE(error_of(with("..")).find("invalid shard name"), std::string::npos);
  EXPECT_NE(error_of(with("sub\\..\\x")).find("invalid shard name"), std::string::npos);
  EXPECT_NE(error_of(with("")).find("invalid shard name"), std::string::npos);
  EXPECT_NE(error_of(with(7)).find("expected a file name"), std::string::npos);
  EXPECT_NE(error_of("[1, 2]").find("weight_map"), std::string::npos);
  EXPECT_NE(error_of("{}").find("weight_map"), std::string::npos);
  EXPECT_NE(error_of(R"({"weight_map": null})").find("weight_map"), std::string::npos);
  EXPECT_NE(error_of(std::string("{\"weight_map\": {\0}}", 19)).find("invalid JSON"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(1 << 16, '[')).find("invalid JSON"), std::string::npos);
  // Listed names that are not in the listed shard, and an empty map (every tensor missing).
  {
    json j = good;
    j["weight_map"]["model.layers.99.mlp.up_proj.weight"] = good["weight_map"][first];
    EXPECT_NE(error_of(j.dump(), false).find("layers.99"), std::string::npos);
  }
  EXPECT_NE(error_of(R"({"weight_map": {}})", false).find("missing tensors"), std::string::npos);
  // A shard listed but deleted.
  write_file(index_path, good.dump());
  fs::remove(out / good["weight_map"][first].get<std::string>());
  ModelParams q = model::allocate_model_params(c, at::kFloat);
  Status st = load_hf_weights(out.string(), c, q);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find(good["weight_map"][first].get<std::string>()),
            std::string::npos);
}

// With RAMSTREAM_SAVE_DIR set, saves every fixture under tests/fixtures/hf/<name> as
// $RAMSTREAM_SAVE_DIR/<name>_fp32, <name>_bf16 and <name>_sharded (fp32, 64 KiB shards) for
// tests/fixtures/check_hf_folder.py (the transformers comparison).
TEST(HfFolderExport, SavesFixturesForTransformersCheck) {
  const char* out = std::getenv("RAMSTREAM_SAVE_DIR");
  if (out == nullptr) GTEST_SKIP() << "RAMSTREAM_SAVE_DIR not set";
  for (const char* name : {"llama_gqa", "qwen2_bias", "llama3_rope_scaling"}) {
    const fs::path src = kFixtures / name;
    Loaded a = load_folder(src);
    for (auto [suffix, dtype, shard] : {std::tuple{"_fp32", at::kFloat, 5ull << 30},
                                        std::tuple{"_bf16", at::kBFloat16, 5ull << 30},
                                        std::tuple{"_sharded", at::kFloat, 64ull << 10}}) {
      HfSaveOptions opts;
      opts.dtype = dtype;
      opts.max_shard_bytes = shard;
      opts.copy_from_dir = src.string();
      const fs::path dst = fs::path(out) / (std::string(name) + suffix);
      Status st = save_hf_folder(dst.string(), a.cfg, a.params, opts);
      ASSERT_TRUE(st.ok()) << st.error().message;
    }
  }
}

}  // namespace
}  // namespace ramstream::checkpoint
