// Datasets with the real SmolLM2 tokenizer against transformers: ids and loss labels of bundled
// tasks and chat fixture conversations (tests/fixtures/data/smollm2_tokens.json, written by
// tests/fixtures/make_dataset_reference.py). Skips when the default model is absent
// (scripts/fetch_default_model.sh).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/tokenizer.h"

namespace ramstream::data {
namespace {

using nlohmann::json;

// Same lookup as checkpoint/gguf_test.cpp.
std::string default_model_path() {
  const char* cache = std::getenv("RAMSTREAM_CACHE");
  const char* home = std::getenv("HOME");
  const std::string root = cache ? cache : std::string(home ? home : "") + "/.cache/ramstream";
  return root + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

TEST(DatasetTokenizer, SmolLM2IdsAndLabelsMatchTransformers) {
  const std::string model = default_model_path();
  if (!std::filesystem::exists(model)) GTEST_SKIP() << model << " absent";
  Result<Tokenizer> tok = Tokenizer::from_model(model);
  ASSERT_TRUE(tok.ok()) << tok.error().message;
  Result<ChatFormat> format = detect_chat_format(tok.value().chat_template());
  ASSERT_TRUE(format.ok()) << format.error().message;
  EXPECT_EQ(format.value().default_system,
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  EXPECT_FALSE(tok.value().add_bos());  // bos is <|im_start|>; nothing is prepended

  std::ifstream in("tests/fixtures/data/smollm2_tokens.json");
  ASSERT_TRUE(in.good());
  const json cases = json::parse(in);
  ASSERT_GE(cases.size(), 40u);
  for (size_t k = 0; k < cases.size(); ++k) {
    RawExample ex;
    for (const json& m : cases[k].at("messages"))
      ex.messages.push_back({m.at("role"), m.at("content")});
    const TokenRow row = tokenize_example(ex, tok.value(), format.value(), false);
    EXPECT_EQ(row.ids, cases[k].at("ids").get<std::vector<int32_t>>()) << "case " << k;
    EXPECT_EQ(row.labels, cases[k].at("labels").get<std::vector<int32_t>>()) << "case " << k;
  }
}

TEST(DatasetTokenizer, BundledTasksCacheWithTheRealTokenizer) {
  const std::string model = default_model_path();
  if (!std::filesystem::exists(model)) GTEST_SKIP() << model << " absent";
  Result<Tokenizer> tok = Tokenizer::from_model(model);
  ASSERT_TRUE(tok.ok()) << tok.error().message;
  ASSERT_FALSE(tok.value().fingerprint().empty());
  const ChatFormat format = detect_chat_format(tok.value().chat_template()).value();
  const std::filesystem::path cache =
      std::filesystem::temp_directory_path() / "ramstream_dataset_tokenizer_test_cache";
  std::filesystem::remove_all(cache);
  DatasetOptions o;
  o.path = "data/bundled/tasks_train.jsonl";
  o.max_seq_len = 256;
  o.val_size = 100;
  o.cache_dir = cache.string();
  Result<Dataset> first = load_dataset(o, tok.value(), format);
  ASSERT_TRUE(first.ok()) << first.error().message;
  Result<Dataset> second = load_dataset(o, tok.value(), format);
  ASSERT_TRUE(second.ok()) << second.error().message;
  EXPECT_FALSE(first.value().from_cache);
  EXPECT_TRUE(second.value().from_cache);
  ASSERT_EQ(first.value().train_rows.size(), second.value().train_rows.size());
  for (size_t r = 0; r < first.value().train_rows.size(); ++r) {
    EXPECT_EQ(first.value().train_rows[r].ids, second.value().train_rows[r].ids);
    EXPECT_EQ(first.value().train_rows[r].labels, second.value().train_rows[r].labels);
  }
  EXPECT_EQ(first.value().val_examples.size(), 100u);
  std::filesystem::remove_all(cache);
}

}  // namespace
}  // namespace ramstream::data
