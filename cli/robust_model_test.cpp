// `ramstream inspect` (and `run`, as far as loading a model) on generated broken models: configs
// with hostile sizes, JSON nested far too deep, devices, FIFOs and folders where files should be,
// broken model.safetensors.index.json files, broken tokenizers and GGUF files. Every variant is a
// copy of the committed tiny model (tests/fixtures/tiny_chat_model) with one thing broken; each
// must end in a clean failure (exit != 0, no signal, in time, under the address-space limit) whose
// message names the file and the key at fault. The runs of a class go in parallel: the binary's
// start-up (libtorch) is most of each run's time.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli/cli_testing.h"

namespace ramstream::cli::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const char* const kTinyModel = "tests/fixtures/tiny_chat_model";
const char* const kTinyGguf = "tests/fixtures/fuzz/gguf/tiny_llama.gguf";

fs::path temp_root(const std::string& name) {
  // Per process: the suite may run in several build trees at once.
  const fs::path p = fs::path(::testing::TempDir()) /
                     ("ramstream_robust_model_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

json read_json(const fs::path& p) {
  std::ifstream in(p);
  return json::parse(in);
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
}

void write_json(const fs::path& p, const json& j) {
  write_text(p, j.dump());
}

void replace_with_fifo(const fs::path& p) {
  fs::remove_all(p);
  ASSERT_EQ(::mkfifo(p.c_str(), 0600), 0) << p;
}

// The tiny model split into one shard plus an index, as transformers writes sharded models.
json shard_tiny_model(const fs::path& model) {
  const std::string shard = "model-00001-of-00001.safetensors";
  fs::rename(model / "model.safetensors", model / shard);
  // The tensor names, from the safetensors header (8-byte length, then JSON).
  std::ifstream in(model / shard, std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  std::string header(n, '\0');
  in.read(header.data(), static_cast<std::streamsize>(n));
  json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", json::object()}};
  const json tensors = json::parse(header);
  for (auto it = tensors.begin(); it != tensors.end(); ++it) {
    if (it.key() != "__metadata__") index["weight_map"][it.key()] = shard;
  }
  write_json(model / "model.safetensors.index.json", index);
  return index;
}

// One broken variant: `make` breaks the fresh copy `model` and returns the command line; every
// string of `expect` must appear in stderr.
struct Invocation {
  std::vector<std::string> args;
  std::vector<std::string> expect;
};
struct Variant {
  std::string name;
  std::function<Invocation(const fs::path& model)> make;
};

std::vector<std::string> inspect(const fs::path& p) {
  return {"inspect", "--model", p.string()};
}

// `run tiny-debug` on `model`, with a tiny text corpus, quick settings and outputs beside it.
std::vector<std::string> train(const fs::path& model) {
  const fs::path data = model.parent_path() / (model.filename().string() + "_data.txt");
  write_text(data, "a few words of text to train on\nand a second line\n");
  return {"run",
          "tiny-debug",
          "model.path=" + model.string(),
          "data.path=" + data.string(),
          "data.format=text",
          "data.val_size=0",
          "output_dir=" + (model.parent_path() / (model.filename().string() + "_out")).string(),
          "eval.accuracy=false",
          "eval.every=0",
          "checkpoint.every=0",
          "train.max_steps=1"};
}

// Builds every variant in its own copy of the tiny model, runs them a few at a time and checks
// each.
void expect_clean_failures(const std::string& suite, const std::vector<Variant>& variants) {
  const fs::path root = temp_root(suite);
  std::vector<Invocation> runs;
  for (const Variant& v : variants) {
    const fs::path model = root / v.name;
    fs::copy(fs::absolute(kTinyModel), model, fs::copy_options::recursive);
    runs.push_back(v.make(model));
  }
  constexpr size_t kParallel = 4;
  for (size_t begin = 0; begin < runs.size(); begin += kParallel) {
    std::vector<std::future<CliRun>> batch;
    for (size_t i = begin; i < std::min(runs.size(), begin + kParallel); ++i) {
      batch.push_back(std::async(std::launch::async, [&runs, i] { return run_cli(runs[i].args); }));
    }
    for (size_t i = begin; i < std::min(runs.size(), begin + kParallel); ++i) {
      const CliRun r = batch[i - begin].get();
      SCOPED_TRACE(variants[i].name);
      EXPECT_TRUE(r.clean_failure()) << r.describe();
      for (const std::string& e : runs[i].expect) {
        EXPECT_NE(r.err.find(e), std::string::npos) << "expected '" << e << "' in\n"
                                                    << r.describe();
      }
      EXPECT_LT(r.err_bytes, 4000u) << r.describe();  // one short message, never a dump
    }
  }
  fs::remove_all(root);
}

// The unbroken inputs pass, so every failure below is the broken part's doing.
TEST(CliRobustModel, TheTinyModelAndGgufInspectCleanly) {
  for (const char* path : {kTinyModel, kTinyGguf}) {
    const CliRun r = run_cli(inspect(fs::absolute(path)));
    EXPECT_TRUE(r.exited() && r.exit_code == 0) << r.describe();
    EXPECT_NE(r.out.find("tokenizer"), std::string::npos) << r.describe();
  }
}

// Generated: each size key of config.json set to a value that is not a size, overflows, or asks
// for far more than any model (2^31 layers), and heads that do not split hidden_size.
TEST(CliRobustModel, HostileConfigSizesAreRefusedNamingTheKey) {
  struct Bad {
    const char* key;
    json value;
  };
  // (Every key with every kind of bad value is in model/config_test.cpp; here one of each kind
  // goes through the binary.)
  const Bad bad[] = {{"num_hidden_layers", int64_t{1} << 31}, {"vocab_size", -1e300}};
  std::vector<Variant> variants;
  for (const Bad& b : bad) {
    variants.push_back({std::string(b.key), [b](const fs::path& m) {
                          json cfg = read_json(m / "config.json");
                          cfg[b.key] = b.value;
                          write_json(m / "config.json", cfg);
                          return Invocation{
                              inspect(m),
                              {(m / "config.json").string(), "key '" + std::string(b.key) + "'"}};
                        }});
  }
  variants.push_back({"heads_do_not_split_hidden", [](const fs::path& m) {
                        json cfg = read_json(m / "config.json");
                        cfg.erase("head_dim");
                        cfg["num_attention_heads"] = 3;
                        cfg["num_key_value_heads"] = 1;
                        write_json(m / "config.json", cfg);
                        return Invocation{inspect(m),
                                          {(m / "config.json").string(), "key 'hidden_size'",
                                           "not divisible by num_attention_heads"}};
                      }});
  // Every size plausible, together far beyond this machine: `run` refuses before allocating the
  // store, saying how much it needs.
  variants.push_back({"does_not_fit_in_ram", [](const fs::path& m) {
                        json cfg = read_json(m / "config.json");
                        cfg["num_hidden_layers"] = 256;
                        cfg["hidden_size"] = 16384;
                        cfg["intermediate_size"] = 65536;
                        cfg["num_attention_heads"] = 128;
                        cfg["num_key_value_heads"] = 8;
                        cfg["head_dim"] = 128;
                        write_json(m / "config.json", cfg);
                        return Invocation{train(m), {"of host RAM"}};
                      }});
  expect_clean_failures("sizes", variants);
}

// Generated: a character device, a FIFO and a folder where config.json or the weights should be,
// and a file or folder where the other is expected. None may hang or read
// forever; each message says what the path is and what was expected.
TEST(CliRobustModel, NonFilesAndWrongKindsOfPathAreNamed) {
  std::vector<Variant> variants;
  // /dev/zero behind config.json and the weights, a FIFO as config.json (the tokenizer's files:
  // data/tokenizer_test.cpp, a FIFO as weights: checkpoint/hf_loader_test.cpp).
  for (const std::string f : {"config.json", "model.safetensors"}) {
    variants.push_back({"dev_zero_" + f, [f](const fs::path& m) {
                          fs::remove(m / f);
                          fs::create_symlink("/dev/zero", m / f);
                          return Invocation{inspect(m), {(m / f).string(), "not a regular file"}};
                        }});
  }
  variants.push_back(
      {"fifo_config", [](const fs::path& m) {
         replace_with_fifo(m / "config.json");
         return Invocation{inspect(m), {(m / "config.json").string(), "not a regular file"}};
       }});
  variants.push_back(
      {"folder_config", [](const fs::path& m) {
         fs::remove(m / "config.json");
         fs::create_directory(m / "config.json");
         return Invocation{inspect(m), {(m / "config.json").string(), "is a folder"}};
       }});
  variants.push_back({"file_for_folder", [](const fs::path& m) {
                        return Invocation{inspect(m / "config.json"),
                                          {(m / "config.json").string(), "not a GGUF file",
                                           "expected a model folder"}};
                      }});
  variants.push_back({"folder_for_gguf", [](const fs::path& m) {
                        fs::create_directory(m / "x.gguf");
                        return Invocation{
                            inspect(m / "x.gguf"),
                            {(m / "x.gguf").string(), "is a folder", "expected a .gguf file"}};
                      }});
  variants.push_back(
      {"fifo_gguf", [](const fs::path& m) {
         replace_with_fifo(m / "y.gguf");
         return Invocation{inspect(m / "y.gguf"), {(m / "y.gguf").string(), "not a regular file"}};
       }});
  expect_clean_failures("files", variants);
}

// Generated: JSON nested 10^5 deep in config.json and tokenizer.json (refused while parsing, at
// its line and column), and tokenizer Sequences nested past their own limit.
TEST(CliRobustModel, DeeplyNestedJsonIsRefused) {
  std::vector<Variant> variants;
  variants.push_back(
      {"deep_config", [](const fs::path& m) {
         write_text(m / "config.json", std::string(100000, '[') + std::string(100000, ']'));
         return Invocation{inspect(m), {(m / "config.json").string() + ":1:", "nest deeper"}};
       }});
  variants.push_back(
      {"deep_pre_tokenizer", [](const fs::path& m) {
         json tok = read_json(m / "tokenizer.json");
         std::string deep;
         for (int i = 0; i < 100000; ++i) {
           deep += "{\"type\": \"Sequence\", \"pretokenizers\": [";
         }
         deep += "null";
         for (int i = 0; i < 100000; ++i) deep += "]}";
         tok["pre_tokenizer"] = "@@";
         std::string text = tok.dump();
         text.replace(text.find("\"@@\""), 4, deep);
         write_text(m / "tokenizer.json", text);
         return Invocation{inspect(m), {(m / "tokenizer.json").string() + ":1:", "nest deeper"}};
       }});
  variants.push_back({"nested_normalizer", [](const fs::path& m) {
                        json tok = read_json(m / "tokenizer.json");
                        json v = {{"type", "NFC"}};
                        for (int i = 0; i < 20; ++i) {
                          v = {{"type", "Sequence"}, {"normalizers", json::array({v})}};
                        }
                        tok["normalizer"] = v;
                        write_json(m / "tokenizer.json", tok);
                        return Invocation{inspect(m),
                                          {(m / "tokenizer.json").string(), "key 'normalizer",
                                           "Sequences nest deeper"}};
                      }});
  expect_clean_failures("deep", variants);
}

// Generated: broken model.safetensors.index.json files. `inspect` refuses each, as `run` does
// (one run checks that both give the same message).
TEST(CliRobustModel, BrokenIndexIsRefusedByInspectAsByRun) {
  struct Bad {
    const char* name;
    std::function<std::string(json& index)> edit;  // returns the text to write ("" = the JSON)
    const char* expect;
  };
  const std::vector<Bad> bad = {
      {"syntax", [](json&) { return std::string("{\"weight_map\": {"); }, "invalid JSON"},
      {"absolute",
       [](json& j) {
         j["weight_map"].begin().value() = "/etc/passwd";
         return std::string();
       },
       "absolute path"},
      {"traversal",
       [](json& j) {
         j["weight_map"].begin().value() = "../x/model.safetensors";
         return std::string();
       },
       "invalid shard name"},
      {"missing_shard",
       [](json& j) {
         j["weight_map"].begin().value() = "model-00002-of-00002.safetensors";
         return std::string();
       },
       "does not exist"},
  };
  std::vector<Variant> variants;
  for (const Bad& b : bad) {
    variants.push_back({b.name, [b](const fs::path& m) {
                          json index = shard_tiny_model(m);
                          const std::string text = b.edit(index);
                          write_text(m / "model.safetensors.index.json",
                                     text.empty() ? index.dump() : text);
                          return Invocation{inspect(m), {m.string(), b.expect}};
                        }});
  }
  variants.push_back({"traversal_run", [](const fs::path& m) {
                        json index = shard_tiny_model(m);
                        index["weight_map"].begin().value() = "../x/model.safetensors";
                        write_json(m / "model.safetensors.index.json", index);
                        return Invocation{
                            train(m),
                            {(m / "model.safetensors.index.json").string(), "invalid shard name"}};
                      }});
  expect_clean_failures("index", variants);
}

// Broken tokenizers: an empty vocabulary is the tokenizer's fault (not the data's), a tokenizer
// larger than the model's vocabulary is refused, and a regex whose backtracking explodes on the
// data stops at PCRE2's match limit with a message naming tokenizer.json.
TEST(CliRobustModel, BrokenTokenizersAreNamed) {
  std::vector<Variant> variants;
  variants.push_back(
      {"empty_vocab", [](const fs::path& m) {
         json tok = read_json(m / "tokenizer.json");
         tok["model"]["vocab"] = json::object();
         tok["model"]["merges"] = json::array();
         tok["added_tokens"] = json::array();
         write_json(m / "tokenizer.json", tok);
         return Invocation{train(m), {(m / "tokenizer.json").string(), "model.vocab", "empty"}};
       }});
  variants.push_back(
      {"vocab_beyond_config", [](const fs::path& m) {
         json cfg = read_json(m / "config.json");
         cfg["vocab_size"] = 100;
         write_json(m / "config.json", cfg);
         return Invocation{inspect(m), {"tokenizer has 384 tokens but the model only 100"}};
       }});
  for (const char* pattern : {"(a|aa)+$"}) {
    const std::string p = pattern;
    variants.push_back({"regex_" + std::to_string(variants.size()), [p](const fs::path& m) {
                          json tok = read_json(m / "tokenizer.json");
                          tok["pre_tokenizer"] = {
                              {"type", "Sequence"},
                              {"pretokenizers", json::array({{{"type", "Split"},
                                                              {"pattern", {{"Regex", p}}},
                                                              {"behavior", "Isolated"},
                                                              {"invert", false}},
                                                             {{"type", "ByteLevel"},
                                                              {"add_prefix_space", false},
                                                              {"use_regex", false}}})}};
                          write_json(m / "tokenizer.json", tok);
                          std::vector<std::string> args = train(m);
                          write_text(m.parent_path() / (m.filename().string() + "_data.txt"),
                                     std::string(64, 'a') + "!\n");
                          return Invocation{args, {(m / "tokenizer.json").string(), "match limit"}};
                        }});
  }
  expect_clean_failures("tokenizer", variants);
}

// Generated: the committed tiny GGUF cut at several points; each is refused naming the file.
TEST(CliRobustModel, TruncatedGgufIsRefused) {
  std::ifstream in(fs::absolute(kTinyGguf), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(bytes.size(), 1000u);
  std::vector<Variant> variants;
  for (size_t cut : {size_t{40}, bytes.size() - 1}) {
    variants.push_back({"cut_" + std::to_string(cut), [bytes, cut](const fs::path& m) {
                          write_text(m / "t.gguf", bytes.substr(0, cut));
                          return Invocation{inspect(m / "t.gguf"), {(m / "t.gguf").string()}};
                        }});
  }
  expect_clean_failures("gguf", variants);
}

}  // namespace
}  // namespace ramstream::cli::testing
