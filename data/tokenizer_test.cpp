// Tokenizer parity with Hugging Face `tokenizers` on tests/fixtures/tokenizer/ (written by
// tests/fixtures/make_tokenizer_reference.py), GGUF construction, save/reload, hostile inputs.
#include "data/tokenizer.h"

#include <sys/stat.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkpoint/gguf.h"
#include "data/tokenizer_regex.h"
#include "data/unicode_utf8.h"

namespace ramstream::data {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const std::string kFixtures = "tests/fixtures/tokenizer/";
const char* const kNames[] = {"smollm2", "gpt2", "llama3", "qwen2"};

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << "missing fixture " << path;
  std::vector<json> rows;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) rows.push_back(json::parse(line));
  }
  return rows;
}

const std::vector<std::string>& corpus() {
  static const std::vector<std::string> texts = [] {
    std::vector<std::string> t;
    for (const json& row : read_jsonl(kFixtures + "corpus.jsonl")) t.push_back(row["text"]);
    return t;
  }();
  return texts;
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << "missing " << path;
  return json::parse(in);
}

std::string default_model_path() {
  const char* cache = std::getenv("RAMSTREAM_CACHE");
  const char* home = std::getenv("HOME");
  const std::string root = cache ? cache : std::string(home ? home : "") + "/.cache/ramstream";
  return root + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

std::string show(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s + "]";
}

// A fresh folder under the system temp dir, removed at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("tokenizer_test-" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
            "-" + std::to_string(reinterpret_cast<uintptr_t>(this)));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string file(const std::string& name, const std::string& text) const {
    std::ofstream(path / name, std::ios::binary) << text;
    return (path / name).string();
  }
};

struct Counts {
  int encoded = 0, ordinary = 0, round_trips = 0, decoded = 0;
};

// Compares `tok` with the reference ids of fixture `name` on the whole corpus.
Counts expect_corpus_parity(const Tokenizer& tok, const std::string& name) {
  const std::vector<json> refs = read_jsonl(kFixtures + name + "/reference.jsonl");
  const std::vector<std::string>& texts = corpus();
  EXPECT_EQ(refs.size(), texts.size());
  Counts c;
  int failures = 0;
  for (size_t i = 0; i < texts.size() && i < refs.size(); ++i) {
    const std::string& text = texts[i];
    const json& ref = refs[i];
    const std::vector<int32_t> want = ref["ids"].get<std::vector<int32_t>>();
    const std::vector<int32_t> got = tok.encode(text);
    if (got == want) {
      ++c.encoded;
    } else if (++failures <= 10) {
      ADD_FAILURE() << name << " string " << i << " " << json(text).dump() << "\n  ours "
                    << show(got) << "\n  hf   " << show(want);
    }
    const std::vector<int32_t> want_ordinary =
        ref.contains("ordinary") ? ref["ordinary"].get<std::vector<int32_t>>() : want;
    const std::vector<int32_t> got_ordinary = tok.encode_ordinary(text);
    if (got_ordinary == want_ordinary) {
      ++c.ordinary;
    } else if (++failures <= 10) {
      ADD_FAILURE() << name << " encode_ordinary, string " << i << " " << json(text).dump()
                    << "\n  ours " << show(got_ordinary) << "\n  hf   " << show(want_ordinary);
    }
    const std::string want_text =
        ref.contains("decoded") ? ref["decoded"].get<std::string>() : text;
    const std::string want_skip =
        ref.contains("decoded_skip") ? ref["decoded_skip"].get<std::string>() : want_text;
    const std::string decoded = tok.decode(want);
    const std::string decoded_skip = tok.decode(want, /*skip_special=*/true);
    if (decoded == want_text && decoded_skip == want_skip) {
      ++c.decoded;
    } else if (++failures <= 10) {
      ADD_FAILURE() << name << " decode, string " << i << "\n  ours " << json(decoded).dump()
                    << " / " << json(decoded_skip).dump() << "\n  hf   " << json(want_text).dump()
                    << " / " << json(want_skip).dump();
    }
    if (!ref.contains("decoded")) {
      EXPECT_EQ(tok.decode(got), text) << name << " round trip, string " << i;
      ++c.round_trips;
    }
  }
  return c;
}

// ---- parity with Hugging Face tokenizers
// ----------------------------------------------------------

class TokenizerParity : public ::testing::TestWithParam<const char*> {};

TEST_P(TokenizerParity, MatchesHuggingFaceOnCorpus) {
  const std::string name = GetParam();
  Result<Tokenizer> loaded = Tokenizer::from_model(kFixtures + name);
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  const Tokenizer& tok = loaded.value();
  const json meta = read_json(kFixtures + name + "/meta.json");
  EXPECT_EQ(tok.vocab_size(), meta["vocab_size"].get<int64_t>());
  EXPECT_EQ(tok.bos_id(), meta["bos_id"].get<int32_t>());
  EXPECT_EQ(tok.eos_id(), meta["eos_id"].get<int32_t>());
  EXPECT_EQ(tok.pad_id(), meta["pad_id"].get<int32_t>());
  EXPECT_EQ(tok.add_bos(), meta["add_bos"].get<bool>());
  std::vector<int32_t> special;
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    if (tok.is_special(id)) special.push_back(id);
  }
  EXPECT_EQ(special, meta["special_ids"].get<std::vector<int32_t>>());

  const Counts c = expect_corpus_parity(tok, name);
  const int n = static_cast<int>(corpus().size());
  std::printf(
      "  %s: %d/%d strings encode identically, %d/%d with specials as text, %d/%d "
      "decode identically, %d round trips checked\n",
      name.c_str(), c.encoded, n, c.ordinary, n, c.decoded, n, c.round_trips);
  EXPECT_GE(n, 1000);
  EXPECT_EQ(c.encoded, n);

  int decodes = 0;
  for (const json& row : read_jsonl(kFixtures + name + "/random_decode.jsonl")) {
    const std::vector<int32_t> ids = row["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok.decode(ids), row["decoded"].get<std::string>()) << show(ids);
    EXPECT_EQ(tok.decode(ids, true), row["decoded_skip"].get<std::string>()) << show(ids);
    ++decodes;
  }
  std::printf("  %s: %d random id sequences decoded\n", name.c_str(), decodes);
  EXPECT_GT(decodes, 0);
}

TEST_P(TokenizerParity, SaveThenReloadEncodesIdentically) {
  const std::string name = GetParam();
  const Tokenizer tok = Tokenizer::from_model(kFixtures + name).value_or_throw();
  TempDir dir;
  const Status st = tok.save(dir.path.string());
  ASSERT_TRUE(st.ok()) << st.error().message;
  Result<Tokenizer> again = Tokenizer::from_model(dir.path.string());
  ASSERT_TRUE(again.ok()) << again.error().message;
  const Tokenizer& t2 = again.value();
  EXPECT_EQ(t2.vocab_size(), tok.vocab_size());
  EXPECT_EQ(t2.bos_id(), tok.bos_id());
  EXPECT_EQ(t2.eos_id(), tok.eos_id());
  EXPECT_EQ(t2.pad_id(), tok.pad_id());
  EXPECT_EQ(t2.add_bos(), tok.add_bos());
  EXPECT_EQ(t2.chat_template(), tok.chat_template());
  EXPECT_EQ(t2.fingerprint(), tok.fingerprint());
  const Counts c = expect_corpus_parity(t2, name);
  EXPECT_EQ(c.encoded, static_cast<int>(corpus().size()));
  std::printf("  %s: saved + reloaded: %d strings encode identically\n", name.c_str(), c.encoded);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TokenizerParity, ::testing::ValuesIn(kNames),
                         [](const auto& info) { return std::string(info.param); });

TEST(Tokenizer, ChatTemplatesAndLookups) {
  const Tokenizer smol = Tokenizer::from_model(kFixtures + "smollm2").value_or_throw();
  // transformers 5 keeps the template in chat_template.jinja beside tokenizer_config.json.
  EXPECT_NE(smol.chat_template().find("<|im_start|>"), std::string::npos);
  EXPECT_EQ(smol.token_to_id("<|im_end|>"), 2);
  EXPECT_EQ(smol.id_to_token(2), "<|im_end|>");
  EXPECT_EQ(smol.token_to_id("no such token"), -1);
  EXPECT_THROW(smol.id_to_token(-1), std::out_of_range);
  EXPECT_THROW(smol.id_to_token(static_cast<int32_t>(smol.vocab_size())), std::out_of_range);
  EXPECT_EQ(smol.encode("<|im_end|>"), std::vector<int32_t>{2});
  EXPECT_GT(smol.encode_ordinary("<|im_end|>").size(), 1u);
  const Tokenizer llama = Tokenizer::from_model(kFixtures + "llama3").value_or_throw();
  EXPECT_NE(llama.chat_template().find("<|start_header_id|>"), std::string::npos);
  EXPECT_NE(llama.fingerprint(), smol.fingerprint());
  EXPECT_EQ(llama.fingerprint().size(), 32u);
}

// ---- GGUF --------------------------------------------------------------------------------------

TEST(TokenizerGguf, SmolLM2MatchesItsTokenizerJson) {
  const std::string path = default_model_path();
  if (!fs::exists(path)) {
    GTEST_SKIP() << path << " not cached; run: bash scripts/fetch_default_model.sh";
  }
  Result<Tokenizer> from_gguf = Tokenizer::from_model(path);
  ASSERT_TRUE(from_gguf.ok()) << from_gguf.error().message;
  const Tokenizer& g = from_gguf.value();
  const Tokenizer j = Tokenizer::from_model(kFixtures + "smollm2").value_or_throw();
  EXPECT_EQ(g.vocab_size(), j.vocab_size());
  EXPECT_EQ(g.bos_id(), j.bos_id());
  EXPECT_EQ(g.eos_id(), j.eos_id());
  EXPECT_EQ(g.pad_id(), j.pad_id());
  EXPECT_EQ(g.add_bos(), j.add_bos());
  EXPECT_EQ(g.chat_template(), j.chat_template());
  for (int32_t id = 0; id < g.vocab_size(); ++id) {
    ASSERT_EQ(g.id_to_token(id), j.id_to_token(id)) << id;
    ASSERT_EQ(g.is_special(id), j.is_special(id)) << id;
  }
  const Counts c = expect_corpus_parity(g, "smollm2");
  EXPECT_EQ(c.encoded, static_cast<int>(corpus().size()));
  std::printf("  GGUF: %d/%zu strings encode as the reference\n", c.encoded, corpus().size());

  TempDir dir;
  ASSERT_TRUE(g.save(dir.path.string()).ok());
  const Tokenizer saved = Tokenizer::from_model(dir.path.string()).value_or_throw();
  EXPECT_EQ(saved.chat_template(), g.chat_template());
  EXPECT_EQ(expect_corpus_parity(saved, "smollm2").encoded, static_cast<int>(corpus().size()));
}

checkpoint::GgufTokenizer tiny_gguf() {
  checkpoint::GgufTokenizer t;
  t.model = "gpt2";
  t.pre = "gpt-2";
  // byte symbols for "a", "b", " " (Ġ), then merges.
  t.tokens = {"a",
              "b",
              "\xC4\xA0",
              "ab",
              "\xC4\xA0"
              "ab",
              "<eos>",
              "<think>"};
  t.token_type = {1, 1, 1, 1, 1, 3, 4};
  t.merges = {"a b", "\xC4\xA0 ab"};
  t.eos_id = 5;
  return t;
}

TEST(TokenizerGguf, HandMadeVocabulary) {
  Result<Tokenizer> r = Tokenizer::from_gguf(tiny_gguf(), "tiny.gguf");
  ASSERT_TRUE(r.ok()) << r.error().message;
  const Tokenizer& t = r.value();
  EXPECT_EQ(t.encode("ab ab"), (std::vector<int32_t>{3, 4}));
  EXPECT_EQ(t.encode("ab<eos><think>a"), (std::vector<int32_t>{3, 5, 6, 0}));
  EXPECT_EQ(t.encode_ordinary("<eos>"), (std::vector<int32_t>{}));     // no '<', 'e', ...: dropped
  EXPECT_EQ(t.encode_ordinary("<think>"), (std::vector<int32_t>{6}));  // not special
  EXPECT_TRUE(t.is_special(5));
  EXPECT_FALSE(t.is_special(6));
  EXPECT_EQ(t.eos_id(), 5);
  EXPECT_EQ(t.bos_id(), -1);
  EXPECT_FALSE(t.add_bos());
  EXPECT_EQ(t.decode({3, 4, 5}), "ab ab<eos>");
  EXPECT_EQ(t.decode({3, 4, 5}, true), "ab ab");
}

TEST(TokenizerGguf, AddBosSurvivesSave) {
  checkpoint::GgufTokenizer meta = tiny_gguf();
  meta.pre = "llama-bpe";
  meta.bos_id = 5;
  meta.add_bos = true;
  meta.chat_template = "{{ bos_token }}";
  const Tokenizer t = Tokenizer::from_gguf(meta, "tiny.gguf").value_or_throw();
  EXPECT_TRUE(t.add_bos());
  EXPECT_EQ(t.bos_id(), 5);
  TempDir dir;
  ASSERT_TRUE(t.save(dir.path.string()).ok());
  const Tokenizer again = Tokenizer::from_model(dir.path.string()).value_or_throw();
  EXPECT_TRUE(again.add_bos());
  EXPECT_EQ(again.bos_id(), 5);
  EXPECT_EQ(again.chat_template(), "{{ bos_token }}");
  EXPECT_EQ(again.encode("ab ab<eos>"), t.encode("ab ab<eos>"));
  // The post-processor alone (no add_bos_token in the config) also says add_bos.
  fs::remove(dir.path / "tokenizer_config.json");
  const Tokenizer bare = Tokenizer::from_model(dir.path.string()).value_or_throw();
  EXPECT_TRUE(bare.add_bos());
  EXPECT_EQ(bare.bos_id(), 5);
}

TEST(TokenizerGguf, UnsupportedOrBrokenMetadataIsAnError) {
  auto error_of = [](const checkpoint::GgufTokenizer& meta) {
    Result<Tokenizer> r = Tokenizer::from_gguf(meta, "m.gguf");
    return r.ok() ? std::string("<ok>") : r.error().message;
  };
  checkpoint::GgufTokenizer t = tiny_gguf();
  t.model = "llama";
  EXPECT_NE(error_of(t).find("SentencePiece ('llama') tokenizers are not supported"),
            std::string::npos)
      << error_of(t);
  t = tiny_gguf();
  t.model = "bert";
  EXPECT_NE(error_of(t).find("tokenizer.ggml.model"), std::string::npos) << error_of(t);
  t = tiny_gguf();
  t.pre = "mystery-bpe";
  EXPECT_NE(error_of(t).find("tokenizer.ggml.pre"), std::string::npos) << error_of(t);
  EXPECT_NE(error_of(t).find("'smollm'"), std::string::npos) << error_of(t);
  t = tiny_gguf();
  t.merges = {"a b", "a zz"};
  EXPECT_NE(error_of(t).find("m.gguf: key 'tokenizer.ggml.merges[1]': token \"zz\""),
            std::string::npos)
      << error_of(t);
  t = tiny_gguf();
  t.merges = {"b a"};  // "ba" is not a token
  EXPECT_NE(error_of(t).find("merged token \"ba\""), std::string::npos) << error_of(t);
  t = tiny_gguf();
  t.merges = {"a  b"};
  EXPECT_NE(error_of(t).find("tokenizer.ggml.merges[0]"), std::string::npos) << error_of(t);
  t = tiny_gguf();
  t.tokens.clear();
  t.token_type.clear();
  t.eos_id = -1;
  EXPECT_NE(error_of(t).find("empty vocabulary"), std::string::npos) << error_of(t);
}

// ---- hostile tokenizer.json --------------------------------------------------------------------

// A minimal valid byte-level tokenizer.json to break in one place at a time.
json tiny_tokenizer_json() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) {
    std::string symbol;
    utf8_append(byte_to_symbol(static_cast<uint8_t>(b)), &symbol);
    vocab[symbol] = b;
  }
  vocab["ab"] = 256;
  return json{
      {"version", "1.0"},
      {"added_tokens", json::array({json{{"id", 257},
                                         {"content", "<|end|>"},
                                         {"single_word", false},
                                         {"lstrip", false},
                                         {"rstrip", false},
                                         {"normalized", false},
                                         {"special", true}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({"a b"})}}}};
}

std::string load_error(const TempDir& dir, const std::string& text) {
  const std::string path = dir.file("tokenizer.json", text);
  Result<Tokenizer> r = Tokenizer::from_tokenizer_json(path);
  return r.ok() ? "<ok>" : r.error().message;
}

TEST(TokenizerHostile, TinyTokenizerJsonLoads) {
  TempDir dir;
  const std::string path = dir.file("tokenizer.json", tiny_tokenizer_json().dump());
  Result<Tokenizer> r = Tokenizer::from_tokenizer_json(path);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r.value().encode("ab<|end|>"), (std::vector<int32_t>{256, 257}));
  EXPECT_EQ(r.value().vocab_size(), 258);
}

TEST(TokenizerHostile, BrokenFilesAreErrorsNamingFileAndKey) {
  TempDir dir;
  const std::string file = (dir.path / "tokenizer.json").string();
  struct Case {
    std::string what;
    std::function<void(json&)> edit;
    std::string expect;  // substring of the message (besides the file name)
  };
  const std::vector<Case> cases = {
      {"unknown model", [](json& j) { j["model"]["type"] = "WordPiece"; }, "key 'model.type'"},
      {"no model", [](json& j) { j.erase("model"); }, "key 'model'"},
      {"vocab not an object", [](json& j) { j["model"]["vocab"] = json::array(); },
       "key 'model.vocab'"},
      {"negative id", [](json& j) { j["model"]["vocab"]["ab"] = -4; }, "key 'model.vocab.ab'"},
      {"merge of unknown token", [](json& j) { j["model"]["merges"].push_back("a zz"); },
       "key 'model.merges[1]': token \"zz\" is not in the vocabulary"},
      {"merge result unknown", [](json& j) { j["model"]["merges"].push_back("b a"); },
       "key 'model.merges[1]': merged token \"ba\""},
      {"merge with two spaces", [](json& j) { j["model"]["merges"][0] = "a b c"; },
       "key 'model.merges[0]'"},
      {"merge as number", [](json& j) { j["model"]["merges"][0] = 7; }, "key 'model.merges[0]'"},
      {"merge pair of three",
       [](json& j) {
         j["model"]["merges"][0] = {"a", "b", "c"};
       },
       "key 'model.merges[0]'"},
      {"dropout", [](json& j) { j["model"]["dropout"] = 0.1; }, "key 'model.dropout'"},
      {"byte fallback", [](json& j) { j["model"]["byte_fallback"] = true; },
       "key 'model.byte_fallback'"},
      {"prefix", [](json& j) { j["model"]["continuing_subword_prefix"] = "##"; },
       "key 'model.continuing_subword_prefix'"},
      {"unk not in vocab", [](json& j) { j["model"]["unk_token"] = "<unk>"; },
       "key 'model.unk_token'"},
      {"sparse ids", [](json& j) { j["model"]["vocab"]["ab"] = 1 << 29; }, "dense"},
      {"duplicate id", [](json& j) { j["model"]["vocab"]["ab"] = 3; }, "token id 3 is used by"},
      {"metaspace",
       [](json& j) {
         j["pre_tokenizer"] = {{"type", "Metaspace"}};
       },
       "key 'pre_tokenizer.type': pre-tokenizer 'Metaspace'"},
      {"no byte level",
       [](json& j) {
         j["pre_tokenizer"] = {
             {"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Isolated"}};
       },
       "must end with ByteLevel"},
      {"bad regex",
       [](json& j) {
         j["pre_tokenizer"] = {
             {"type", "Sequence"},
             {"pretokenizers",
              {{{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}},
               {{"type", "ByteLevel"}}}}};
       },
       "key 'pre_tokenizer.pretokenizers[0].pattern': regex '(unclosed'"},
      {"bad behavior",
       [](json& j) {
         j["pre_tokenizer"] = {
             {"type", "Sequence"},
             {"pretokenizers",
              {{{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Sideways"}},
               {{"type", "ByteLevel"}}}}};
       },
       "key 'pre_tokenizer.pretokenizers[0].behavior'"},
      {"lowercase normalizer",
       [](json& j) {
         j["normalizer"] = {{"type", "Lowercase"}};
       },
       "key 'normalizer.type'"},
      {"bert post-processor",
       [](json& j) {
         j["post_processor"] = {{"type", "BertProcessing"}};
       },
       "key 'post_processor.type'"},
      {"wordpiece decoder",
       [](json& j) {
         j["decoder"] = {{"type", "WordPiece"}};
       },
       "key 'decoder'"},
      {"added token without content", [](json& j) { j["added_tokens"][0].erase("content"); },
       "key 'added_tokens[0].content'"},
      {"added token flag not bool", [](json& j) { j["added_tokens"][0]["lstrip"] = "yes"; },
       "key 'added_tokens[0].lstrip'"},
      {"added token flag missing", [](json& j) { j["added_tokens"][0].erase("normalized"); },
       "key 'added_tokens[0].normalized'"},
      {"added token on a model id", [](json& j) { j["added_tokens"][0]["id"] = 5; },
       "key 'added_tokens[0].id'"},
  };
  for (const Case& c : cases) {
    json j = tiny_tokenizer_json();
    c.edit(j);
    const std::string message = load_error(dir, j.dump());
    EXPECT_NE(message.find(file), std::string::npos) << c.what << ": " << message;
    EXPECT_NE(message.find(c.expect), std::string::npos) << c.what << ": " << message;
  }
  // Not JSON at all, truncated, and the wrong top-level type.
  for (const std::string& text : {std::string("{\"model\": "), std::string("\xff\xfe"),
                                  std::string("[1, 2]"), std::string("")}) {
    const std::string message = load_error(dir, text);
    EXPECT_NE(message.find(file), std::string::npos) << message;
  }
  EXPECT_NE(load_error(dir, tiny_tokenizer_json().dump().substr(0, 300)).find("invalid JSON"),
            std::string::npos);
  Result<Tokenizer> missing = Tokenizer::from_model((dir.path / "nowhere").string());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("nowhere"), std::string::npos);
}

// Generated: Sequences of pre-tokenizers, normalizers and post-processors nested past the
// Sequence limit and past the JSON depth limit; each is an error naming the file and the key (or
// line), never a stack overflow.
TEST(TokenizerHostile, DeeplyNestedSequencesAreRefused) {
  TempDir dir;
  const std::string file = (dir.path / "tokenizer.json").string();
  struct Section {
    const char* name;
    const char* list_key;
    json leaf;
  };
  const Section sections[] = {
      {"pre_tokenizer", "pretokenizers", {{"type", "ByteLevel"}}},
      {"normalizer", "normalizers", {{"type", "NFC"}}},
      {"post_processor", "processors", {{"type", "ByteLevel"}}},
  };
  for (const Section& sec : sections) {
    for (int depth : {9, 20, 60}) {
      json value = sec.leaf;
      for (int i = 0; i < depth; ++i) {
        value = json{{"type", "Sequence"}, {sec.list_key, json::array({value})}};
      }
      json j = tiny_tokenizer_json();
      j[sec.name] = value;
      const std::string e = load_error(dir, j.dump());
      EXPECT_EQ(e.rfind(file, 0), 0u) << sec.name << " " << depth << ": " << e;
      EXPECT_NE(e.find("nest deeper"), std::string::npos) << sec.name << " " << depth << ": " << e;
      EXPECT_LT(e.size(), 1000u) << e;
    }
    // Far deeper than the JSON reader allows: refused while parsing, with the line.
    std::string text = "{\"" + std::string(sec.name) + "\": ";
    for (int i = 0; i < 100000; ++i)
      text += "{\"type\": \"Sequence\", \"" + std::string(sec.list_key) + "\": [";
    text += "null";
    for (int i = 0; i < 100000; ++i) text += "]}";
    text += "}";
    const std::string e = load_error(dir, text);
    EXPECT_EQ(e.rfind(file + ":1:", 0), 0u) << e.substr(0, 300);
    EXPECT_NE(e.find("nest deeper"), std::string::npos) << e.substr(0, 300);
  }
  // Too many members.
  json wide = json::array();
  for (int i = 0; i < 200; ++i) {
    wide.push_back({{"type", "Split"}, {"pattern", {{"String", "x"}}}, {"behavior", "Isolated"}});
  }
  wide.push_back({{"type", "ByteLevel"}});
  json j = tiny_tokenizer_json();
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", wide}};
  EXPECT_NE(load_error(dir, j.dump()).find("key 'pre_tokenizer.pretokenizers': 201 members"),
            std::string::npos)
      << load_error(dir, j.dump());
}

TEST(TokenizerHostile, EmptyVocabularyIsTheTokenizersFault) {
  TempDir dir;
  json j = tiny_tokenizer_json();
  j["model"]["vocab"] = json::object();
  j["model"]["merges"] = json::array();
  j["added_tokens"] = json::array();
  const std::string e = load_error(dir, j.dump());
  EXPECT_NE(e.find((dir.path / "tokenizer.json").string() + ": key 'model.vocab': empty"),
            std::string::npos)
      << e;
}

// Untrusted strings (tokens, regexes, types) are quoted short in messages, whatever their size.
TEST(TokenizerHostile, MessagesQuoteLongInputsShort) {
  TempDir dir;
  const std::string huge(1 << 20, 'q');
  const std::vector<std::function<void(json&)>> edits = {
      [&](json& j) { j["model"]["merges"].push_back("a " + huge); },
      [&](json& j) { j["model"]["type"] = huge; },
      [&](json& j) {
        j["pre_tokenizer"] = {{"type", huge}};
      },
      [&](json& j) {
        j["decoder"] = {{"type", huge}};
      },
      [&](json& j) {
        j["pre_tokenizer"] = {
            {"type", "Split"}, {"pattern", {{"Regex", "(" + huge}}}, {"behavior", "Isolated"}};
      },
      [&](json& j) { j["model"]["unk_token"] = huge; },
  };
  for (size_t i = 0; i < edits.size(); ++i) {
    json j = tiny_tokenizer_json();
    edits[i](j);
    const std::string e = load_error(dir, j.dump());
    EXPECT_NE(e.find("tokenizer.json"), std::string::npos) << i;
    EXPECT_LT(e.size(), 600u) << i << ": " << e.substr(0, 600);
  }
}

TEST(TokenizerHostile, NonFilesWhereTokenizerFilesShouldBe) {
  for (const std::string name : {"tokenizer.json", "tokenizer_config.json"}) {
    for (int kind = 0; kind < 3; ++kind) {
      TempDir dir;
      if (name != "tokenizer.json") dir.file("tokenizer.json", tiny_tokenizer_json().dump());
      const fs::path p = dir.path / name;
      if (kind == 0) fs::create_directories(p);
      if (kind == 1) {
        ASSERT_EQ(::mkfifo(p.c_str(), 0600), 0);
      }
      if (kind == 2) fs::create_symlink("/dev/zero", p);
      Result<Tokenizer> r = Tokenizer::from_model(dir.path.string());
      ASSERT_FALSE(r.ok()) << name << " " << kind;
      EXPECT_EQ(r.error().message.rfind(p.string(), 0), 0u) << r.error().message;
      EXPECT_NE(r.error().message.find(kind == 0 ? "is a folder" : "not a regular file"),
                std::string::npos)
          << r.error().message;
    }
  }
  TempDir dir;
  ASSERT_EQ(::mkfifo((dir.path / "t.gguf").c_str(), 0600), 0);
  Result<Tokenizer> r = Tokenizer::from_model((dir.path / "t.gguf").string());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("not a regular file"), std::string::npos) << r.error().message;
}

// Generated: patterns with nested quantifiers whose backtracking explodes on a run of 'a's. PCRE2
// gives up at TokenizerRegex::kMatchLimit; encode throws a message naming the tokenizer file.
TEST(TokenizerHostile, RegexMatchLimitIsAnErrorNamingTheFile) {
  TempDir dir;
  for (const char* pattern : {"(a|aa)+$", "(a+)+$", "(?:a*)*b?$", "(a|a)*c?$"}) {
    json j = tiny_tokenizer_json();
    j["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers",
         json::array(
             {{{"type", "Split"}, {"pattern", {{"Regex", pattern}}}, {"behavior", "Isolated"}},
              {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
    const std::string path = dir.file("tokenizer.json", j.dump());
    Result<Tokenizer> tok = Tokenizer::from_tokenizer_json(path);
    ASSERT_TRUE(tok.ok()) << tok.error().message;
    const std::string text = std::string(64, 'a') + "!";
    try {
      tok.value().encode(text);
      ADD_FAILURE() << pattern << ": expected PCRE2 to give up";
    } catch (const std::runtime_error& e) {
      const std::string m = e.what();
      EXPECT_EQ(m.rfind(path + ": regex", 0), 0u) << m;
      EXPECT_NE(m.find("limit"), std::string::npos) << m;
    }
  }
}

TEST(TokenizerHostile, BrokenTokenizerConfigIsAnError) {
  TempDir dir;
  dir.file("tokenizer.json", tiny_tokenizer_json().dump());
  const std::string config = (dir.path / "tokenizer_config.json").string();
  auto error_with = [&](const std::string& text) {
    dir.file("tokenizer_config.json", text);
    Result<Tokenizer> r = Tokenizer::from_model(dir.path.string());
    return r.ok() ? std::string("<ok>") : r.error().message;
  };
  EXPECT_NE(error_with(R"({"bos_token": "<nope>"})").find(config + ": key 'bos_token'"),
            std::string::npos);
  EXPECT_NE(error_with(R"({"eos_token": 5})").find("key 'eos_token'"), std::string::npos);
  EXPECT_NE(error_with(R"({"add_bos_token": "yes"})").find("key 'add_bos_token'"),
            std::string::npos);
  EXPECT_NE(error_with(R"({"chat_template": 3})").find("key 'chat_template'"), std::string::npos);
  EXPECT_NE(error_with("{oops").find(config), std::string::npos);
  EXPECT_EQ(error_with(R"({"eos_token": {"content": "<|end|>"}, "bos_token": null,
                           "chat_template": [{"name": "tool", "template": "T"},
                                             {"name": "default", "template": "D"}]})"),
            "<ok>");
  const Tokenizer t = Tokenizer::from_model(dir.path.string()).value_or_throw();
  EXPECT_EQ(t.eos_id(), 257);
  EXPECT_EQ(t.bos_id(), -1);
  EXPECT_EQ(t.chat_template(), "D");
}

// ---- robustness
// ----------------------------------------------------------------------------------

TEST(TokenizerRobustness, InvalidUtf8AndHugeInputsDoNotCrash) {
  const Tokenizer tok = Tokenizer::from_model(kFixtures + "smollm2").value_or_throw();
  // Invalid UTF-8 is repaired to U+FFFD first (Hugging Face never sees such text).
  const std::string bad = "ok \xff\xfe \xe2\x82 \xf0\x9f\x98 end \xc0\xaf";
  EXPECT_EQ(tok.encode(bad), tok.encode(utf8_lossy(bad)));
  EXPECT_EQ(tok.decode(tok.encode(bad)), utf8_lossy(bad));
  // A megabyte of white space, of one letter, of digits, and of a special token.
  for (const std::string& big :
       {std::string(1 << 20, ' '), std::string(1 << 20, 'a'), std::string(1 << 20, '7'),
        std::string("\n\t ") + std::string(1 << 19, '\n')}) {
    const std::vector<int32_t> ids = tok.encode(big);
    EXPECT_FALSE(ids.empty());
    EXPECT_EQ(tok.decode(ids), big);
  }
  std::string specials;
  for (int i = 0; i < 50000; ++i) specials += "<|im_end|>";
  EXPECT_EQ(tok.encode(specials).size(), 50000u);
  EXPECT_EQ(tok.decode({-5, 1 << 30, 2}), "<|im_end|>");  // unknown ids are skipped
}

TEST(TokenizerRobustness, ConcurrentEncodesAgree) {
  const Tokenizer tok = Tokenizer::from_model(kFixtures + "qwen2").value_or_throw();
  const std::vector<json> refs = read_jsonl(kFixtures + "qwen2/reference.jsonl");
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int pass = 0; pass < 3; ++pass) {
        for (size_t i = t; i < corpus().size(); i += 2) {
          if (tok.encode(corpus()[i]) != refs[i]["ids"].get<std::vector<int32_t>>()) ++mismatches;
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(TokenizerRobustness, ReportsThroughput) {
  const Tokenizer tok = Tokenizer::from_model(kFixtures + "smollm2").value_or_throw();
  size_t bytes = 0;
  for (const std::string& s : corpus()) bytes += s.size();
  for (int cold = 0; cold < 2; ++cold) {
    size_t tokens = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (const std::string& s : corpus()) tokens += tok.encode(s).size();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("  smollm2 %s pass: %zu tokens, %.0f tokens/s, %.1f MB/s (1 thread)\n",
                cold == 0 ? "first" : "second", tokens, tokens / s, bytes / s / 1e6);
    EXPECT_GT(tokens, 0u);
  }
}

// ---- helpers
// ---------------------------------------------------------------------------------------

TEST(TokenizerUnicode, LossyRepairUsesMaximalSubparts) {
  EXPECT_EQ(utf8_lossy("abc"), "abc");
  EXPECT_EQ(utf8_lossy("\xf0\x9f\x98"), "\xEF\xBF\xBD");  // one truncated char
  EXPECT_EQ(utf8_lossy("\xe0\x80\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");    // overlong
  EXPECT_EQ(utf8_lossy("\xed\xa0\x80x"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBDx");  // surrogate
  EXPECT_EQ(utf8_lossy("\xf4\x90\x80\x80"),
            "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // above U+10FFFF
  EXPECT_EQ(utf8_lossy("a\xc3"), "a\xEF\xBF\xBD");
  EXPECT_TRUE(utf8_valid("\xf0\x9f\x98\x80"));
  EXPECT_FALSE(utf8_valid("\xc0\xaf"));
}

TEST(TokenizerUnicode, ByteLevelAlphabetIsABijection) {
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  std::string back;
  ASSERT_TRUE(byte_level_decode(byte_level_encode(all), &back));
  EXPECT_EQ(back, all);
  EXPECT_EQ(byte_level_encode(" \n"), "\xC4\xA0\xC4\x8A");  // "ĠĊ"
  EXPECT_FALSE(byte_level_decode(" ", &back));              // a real space is not a symbol
}

TEST(TokenizerRegexTest, WhiteSpaceMatchesOniguruma) {
  // Oniguruma's \s is White_Space; PCRE2's UCP \s adds U+180E. The rewrite removes it.
  auto re = TokenizerRegex::compile(R"(\s+)").value_or_throw();
  std::vector<std::pair<size_t, size_t>> spans;
  re->find_all("a\u180Eb\u0085c\u3000d", &spans);
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(spans[0],
            (std::pair<size_t, size_t>{5, 7}));  // U+0085 after "a", U+180E (3 bytes), "b"
  auto not_space = TokenizerRegex::compile(R"(\S+)").value_or_throw();
  spans.clear();
  not_space->find_all("a\u180Eb c", &spans);
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(spans[0], (std::pair<size_t, size_t>{0, 5}));
  EXPECT_FALSE(TokenizerRegex::compile(R"([\S])").ok());
  EXPECT_TRUE(TokenizerRegex::compile(R"([^\s\p{L}])").ok());
}

TEST(TokenizerRegexTest, ClassesMatchTokenizersOnEveryCodePoint) {
  const json classes = read_json(kFixtures + "regex_classes.json");
  std::string text;
  std::vector<uint32_t> cps;
  std::vector<size_t> offsets;
  for (uint32_t c = 0; c < 0x110000; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    offsets.push_back(text.size());
    cps.push_back(c);
    utf8_append(c, &text);
  }
  offsets.push_back(text.size());
  int checked = 0;
  for (const auto& [name, ranges] : classes["ranges"].items()) {
    const std::string pattern =
        name == "digits" ? kDigitsPattern : classes["patterns"][name].get<std::string>();
    Result<std::shared_ptr<const TokenizerRegex>> re = TokenizerRegex::compile(pattern);
    ASSERT_TRUE(re.ok()) << re.error().message;
    std::vector<std::pair<size_t, size_t>> spans;
    re.value()->find_all(text, &spans);
    std::vector<uint8_t> ours(cps.size(), 0);
    size_t k = 0;
    for (const auto& [begin, end] : spans) {
      while (offsets[k] < begin) ++k;
      for (size_t j = k; offsets[j] < end; ++j) ours[j] = 1;
    }
    std::vector<uint8_t> theirs(cps.size(), 0);
    for (const json& r : ranges) {
      for (uint32_t c = r[0]; c <= r[1].get<uint32_t>(); ++c) {
        theirs[c < 0xD800 ? c : c - 0x800] = 1;
      }
    }
    int differ = 0;
    for (size_t i = 0; i < cps.size(); ++i) {
      if (ours[i] != theirs[i] && ++differ <= 5) {
        ADD_FAILURE() << name << " " << pattern << ": U+" << std::hex << cps[i] << std::dec
                      << (ours[i] ? " matched only by us" : " matched only by tokenizers");
      }
    }
    EXPECT_EQ(differ, 0) << name;
    ++checked;
  }
  std::printf("  %d classes agree with tokenizers on all %zu code points\n", checked, cps.size());
  EXPECT_GE(checked, 15);
}

}  // namespace
}  // namespace ramstream::data
