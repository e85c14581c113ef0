// Datasets: every format on small fixtures (tests/fixtures/data/) with the loss mask checked token
// by token, malformed records, packing, splitting, shuffling, the loader's cursor and the cache.
// A byte-level test encoder stands in for the real tokenizer: one id per byte plus ids for the
// ChatML / Llama-3 special tokens.
#include "data/dataset.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace ramstream::data {
namespace {

namespace fs = std::filesystem;

constexpr int32_t kImStart = 256, kImEnd = 257, kBeginOfText = 258, kStartHeader = 259,
                  kEndHeader = 260, kEotId = 261, kS = 262;
constexpr int32_t I = kIgnoreLabel;

class TestEncoder : public TextEncoder {
 public:
  std::vector<int32_t> encode(std::string_view text) const override {
    static const std::vector<std::pair<std::string, int32_t>> specials = {
        {"<|im_start|>", kImStart},
        {"<|im_end|>", kImEnd},
        {"<|begin_of_text|>", kBeginOfText},
        {"<|start_header_id|>", kStartHeader},
        {"<|end_header_id|>", kEndHeader},
        {"<|eot_id|>", kEotId},
        {"<s>", kS}};
    ++calls;
    std::vector<int32_t> ids;
    for (size_t i = 0; i < text.size();) {
      bool special = false;
      for (const auto& [s, id] : specials) {
        if (text.compare(i, s.size(), s) == 0) {
          ids.push_back(id);
          i += s.size();
          special = true;
          break;
        }
      }
      if (!special) ids.push_back(static_cast<unsigned char>(text[i++]));
    }
    return ids;
  }
  int32_t bos_id() const override { return bos; }
  int32_t eos_id() const override { return eos; }
  bool add_bos() const override { return add_bos_token; }
  std::string fingerprint() const override { return fp; }

  int32_t bos = -1, eos = kImEnd;
  bool add_bos_token = false;
  std::string fp = "test-bytes-v1";
  mutable int64_t calls = 0;
};

std::vector<int32_t> B(const std::string& s) {
  std::vector<int32_t> ids;
  for (unsigned char c : s) ids.push_back(c);
  return ids;
}

std::vector<int32_t> cat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// Labels for pieces of (ids, trained): labels[i] = ids[i+1] when token i+1 is trained.
std::vector<int32_t> labels_for(const std::vector<std::pair<std::vector<int32_t>, bool>>& pieces) {
  std::vector<int32_t> ids;
  std::vector<bool> trained;
  for (const auto& [p, t] : pieces) {
    ids.insert(ids.end(), p.begin(), p.end());
    trained.insert(trained.end(), p.size(), t);
  }
  std::vector<int32_t> labels(ids.size(), I);
  for (size_t k = 0; k + 1 < ids.size(); ++k) {
    if (trained[k + 1]) labels[k] = ids[k + 1];
  }
  return labels;
}

std::string decode(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) {
    if (id < 256)
      s += static_cast<char>(id);
    else
      s += "<" + std::to_string(id) + ">";
  }
  return s;
}

const std::string kFixtures = "tests/fixtures/data/";

ChatFormat chatml() {
  return chat_format_from_name("chatml").value();
}

DatasetOptions opts_for(const std::string& file) {
  DatasetOptions o;
  o.path = kFixtures + file;
  o.max_seq_len = 128;
  return o;
}

// labels[i] is ids[i+1] of the same row or ignored; rows are exactly max_seq_len long.
void expect_row_invariants(const std::vector<TokenRow>& rows, int64_t max_seq_len) {
  for (size_t r = 0; r < rows.size(); ++r) {
    const TokenRow& row = rows[r];
    ASSERT_EQ(static_cast<int64_t>(row.ids.size()), max_seq_len) << "row " << r;
    ASSERT_EQ(row.labels.size(), row.ids.size()) << "row " << r;
    for (size_t k = 0; k + 1 < row.ids.size(); ++k) {
      if (row.labels[k] != I) {
        ASSERT_EQ(row.labels[k], row.ids[k + 1]) << "row " << r << " pos " << k;
      }
    }
    EXPECT_EQ(row.labels.back(), I) << "row " << r;
  }
}

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("ramstream_dataset_test_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name, const std::string& content) const {
    const std::string p = (path_ / name).string();
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }
  std::string path() const { return path_.string(); }

 private:
  fs::path path_;
};

std::string qa_line(const std::string& q, const std::string& a) {
  return "{\"messages\": [{\"role\": \"user\", \"content\": \"" + q +
         "\"}, {\"role\": \"assistant\", \"content\": \"" + a + "\"}]}\n";
}

// n conversations "q<i>" -> "a<i>" with i zero-padded so all have the same length.
std::string numbered_conversations(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) {
    char q[16], a[16];
    std::snprintf(q, sizeof(q), "q%03d", i);
    std::snprintf(a, sizeof(a), "a%03d", i);
    s += qa_line(q, a);
  }
  return s;
}

// ---- formats and masks -------------------------------------------------------------------------

TEST(Dataset, MessagesMaskedTokenByToken) {
  Result<std::vector<RawExample>> ex = read_examples(opts_for("messages.jsonl"));
  ASSERT_TRUE(ex.ok()) << ex.error().message;
  ASSERT_EQ(ex.value().size(), 2u);
  EXPECT_EQ(ex.value()[0].line, 1);
  EXPECT_EQ(ex.value()[1].line, 3);  // line 2 is blank

  TestEncoder enc;
  const TokenRow a = tokenize_example(ex.value()[0], enc, chatml(), false);
  const std::vector<int32_t> ids = cat({{kImStart},
                                        B("user\n2+2?"),
                                        {kImEnd},
                                        B("\n"),
                                        {kImStart},
                                        B("assistant\n4"),
                                        {kImEnd},
                                        B("\n")});
  ASSERT_EQ(a.ids, ids);
  std::vector<int32_t> labels(ids.size(), I);
  const size_t four = ids.size() - 3;  // ... '\n' '4' <|im_end|> '\n'
  ASSERT_EQ(ids[four], '4');
  labels[four - 1] = '4';       // the header's "\n" predicts the reply
  labels[four] = kImEnd;        // the reply predicts its end of turn
  EXPECT_EQ(a.labels, labels);  // the trailing "\n" is not trained

  // Two assistant turns, system message first: both replies with their <|im_end|> trained.
  const TokenRow b = tokenize_example(ex.value()[1], enc, chatml(), false);
  const std::vector<std::pair<std::vector<int32_t>, bool>> pieces = {
      {cat({{kImStart},
            B("system\nBe terse."),
            {kImEnd},
            B("\n"),
            {kImStart},
            B("user\nHi"),
            {kImEnd},
            B("\n"),
            {kImStart},
            B("assistant\n")}),
       false},
      {cat({B("Hey"), {kImEnd}}), true},
      {cat({B("\n"), {kImStart}, B("user\nBye"), {kImEnd}, B("\n"), {kImStart}, B("assistant\n")}),
       false},
      {cat({B("Ok"), {kImEnd}}), true},
      {B("\n"), false}};
  EXPECT_EQ(b.labels, labels_for(pieces));
  EXPECT_EQ(std::count_if(b.labels.begin(), b.labels.end(), [](int32_t l) { return l != I; }), 7);

  // train_on_prompt: every next token.
  const TokenRow all = tokenize_example(ex.value()[0], enc, chatml(), true);
  for (size_t k = 0; k + 1 < all.ids.size(); ++k) EXPECT_EQ(all.labels[k], all.ids[k + 1]);
  EXPECT_EQ(all.labels.back(), I);
}

TEST(Dataset, Llama3MaskedTokenByTokenWithOneBos) {
  TestEncoder enc;
  enc.bos = kBeginOfText;
  enc.add_bos_token = true;
  enc.eos = kEotId;
  RawExample ex;
  ex.messages = {{"user", " 2+2? "}, {"assistant", "4\n"}};
  const TokenRow row = tokenize_example(ex, enc, chat_format_from_name("llama3").value(), false);
  const std::vector<std::pair<std::vector<int32_t>, bool>> pieces = {
      {cat({{kBeginOfText, kStartHeader},
            B("user"),
            {kEndHeader},
            B("\n\n2+2?"),
            {kEotId},
            {kStartHeader},
            B("assistant"),
            {kEndHeader},
            B("\n\n")}),
       false},
      {cat({B("4"), {kEotId}}), true}};
  std::vector<int32_t> ids;
  for (const auto& p : pieces) ids.insert(ids.end(), p.first.begin(), p.first.end());
  EXPECT_EQ(row.ids, ids);  // contents trimmed, <|begin_of_text|> once
  EXPECT_EQ(row.labels, labels_for(pieces));
}

TEST(Dataset, BosOnlyWhereTheTokenizerAddsIt) {
  RawExample conv;
  conv.messages = {{"user", "u"}, {"assistant", "a"}};
  RawExample doc;
  doc.text = "xy";
  TestEncoder enc;  // Qwen2-like: no bos
  EXPECT_EQ(tokenize_example(conv, enc, chatml(), false).ids.front(), kImStart);
  EXPECT_EQ(tokenize_example(doc, enc, chatml(), false).ids, cat({B("xy"), {kImEnd}}));

  enc.bos = kImStart;  // SmolLM2: bos is <|im_start|>, add_bos_token false
  EXPECT_EQ(tokenize_example(doc, enc, chatml(), false).ids, cat({B("xy"), {kImEnd}}));
  enc.add_bos_token = true;  // even with add_bos the conversation already starts with bos
  const TokenRow c = tokenize_example(conv, enc, chatml(), false);
  EXPECT_EQ(c.ids[0], kImStart);
  EXPECT_NE(c.ids[1], kImStart);

  enc.bos = kS;  // a distinct bos with add_bos: prepended to both, never trained
  const TokenRow c2 = tokenize_example(conv, enc, chatml(), false);
  EXPECT_EQ(c2.ids[0], kS);
  EXPECT_EQ(c2.ids[1], kImStart);
  EXPECT_EQ(c2.labels[0], I);
  const TokenRow d = tokenize_example(doc, enc, chatml(), false);
  EXPECT_EQ(d.ids, cat({{kS}, B("xy"), {kImEnd}}));
  EXPECT_EQ(d.labels, (std::vector<int32_t>{'x', 'y', kImEnd, I}));
}

TEST(Dataset, AlpacaJsonlAndJsonArray) {
  Result<std::vector<RawExample>> ex = read_examples(opts_for("alpaca.jsonl"));
  ASSERT_TRUE(ex.ok()) << ex.error().message;
  ASSERT_EQ(ex.value().size(), 3u);
  ASSERT_EQ(ex.value()[0].messages.size(), 2u);
  EXPECT_EQ(ex.value()[0].messages[0].role, "user");
  EXPECT_EQ(ex.value()[0].messages[0].content, "Add\n\n1 2");
  EXPECT_EQ(ex.value()[0].messages[1].role, "assistant");
  EXPECT_EQ(ex.value()[0].messages[1].content, "3");
  EXPECT_EQ(ex.value()[1].messages[0].content, "Say hi");  // no input
  EXPECT_EQ(ex.value()[2].messages[0].content, "Echo");    // empty input

  TestEncoder enc;
  const TokenRow row = tokenize_example(ex.value()[0], enc, chatml(), false);
  const std::vector<std::pair<std::vector<int32_t>, bool>> pieces = {
      {cat({{kImStart}, B("user\nAdd\n\n1 2"), {kImEnd}, B("\n"), {kImStart}, B("assistant\n")}),
       false},
      {cat({B("3"), {kImEnd}}), true},
      {B("\n"), false}};
  EXPECT_EQ(row.labels, labels_for(pieces));

  Result<std::vector<RawExample>> arr = read_examples(opts_for("alpaca.json"));
  ASSERT_TRUE(arr.ok()) << arr.error().message;
  ASSERT_EQ(arr.value().size(), 2u);
  EXPECT_EQ(arr.value()[1].line, 2);  // record index
  EXPECT_EQ(arr.value()[0].messages[0].content, "Add\n\n1 2");
}

TEST(Dataset, ShareGptRolesMapped) {
  Result<std::vector<RawExample>> ex = read_examples(opts_for("sharegpt.jsonl"));
  ASSERT_TRUE(ex.ok()) << ex.error().message;
  ASSERT_EQ(ex.value().size(), 2u);
  const std::vector<ChatMessage>& m = ex.value()[0].messages;
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[0].role, "system");
  EXPECT_EQ(m[1].role, "user");
  EXPECT_EQ(m[1].content, "Q");
  EXPECT_EQ(m[2].role, "assistant");
  EXPECT_EQ(ex.value()[1].messages[0].role, "user");
  EXPECT_EQ(ex.value()[1].messages[1].role, "assistant");
  TestEncoder enc;
  const TokenRow row = tokenize_example(ex.value()[0], enc, chatml(), false);
  const std::vector<std::pair<std::vector<int32_t>, bool>> pieces = {
      {cat({{kImStart},
            B("system\nS"),
            {kImEnd},
            B("\n"),
            {kImStart},
            B("user\nQ"),
            {kImEnd},
            B("\n"),
            {kImStart},
            B("assistant\n")}),
       false},
      {cat({B("A"), {kImEnd}}), true},
      {B("\n"), false}};
  EXPECT_EQ(row.labels, labels_for(pieces));
}

TEST(Dataset, TextDocumentsSplitOnBlankLines) {
  Result<std::vector<RawExample>> ex = read_examples(opts_for("text.txt"));
  ASSERT_TRUE(ex.ok()) << ex.error().message;
  ASSERT_EQ(ex.value().size(), 3u);
  EXPECT_EQ(ex.value()[0].text, "first doc\nline two");
  EXPECT_EQ(ex.value()[0].line, 1);
  EXPECT_EQ(ex.value()[1].text, "second doc");
  EXPECT_EQ(ex.value()[1].line, 5);
  EXPECT_EQ(ex.value()[2].text, "third");  // CRLF's "\r" dropped
  EXPECT_EQ(ex.value()[2].line, 7);
  EXPECT_TRUE(ex.value()[0].messages.empty());

  TestEncoder enc;
  const TokenRow row = tokenize_example(ex.value()[1], enc, chatml(), false);
  EXPECT_EQ(row.ids, cat({B("second doc"), {kImEnd}}));  // eos appended, every token trained
  std::vector<int32_t> labels(row.ids.begin() + 1, row.ids.end());
  labels.push_back(I);
  EXPECT_EQ(row.labels, labels);

  Result<std::vector<RawExample>> jl = read_examples(opts_for("text.jsonl"));
  ASSERT_TRUE(jl.ok()) << jl.error().message;
  ASSERT_EQ(jl.value().size(), 2u);
  EXPECT_EQ(jl.value()[0].text, "abc");
  EXPECT_TRUE(jl.value()[0].messages.empty());
}

TEST(Dataset, ExplicitFormatMustMatchRecords) {
  DatasetOptions o = opts_for("alpaca.jsonl");
  o.format = "messages";
  Result<std::vector<RawExample>> ex = read_examples(o);
  ASSERT_FALSE(ex.ok());
  EXPECT_NE(ex.error().message.find("alpaca.jsonl:1: missing key 'messages'"), std::string::npos)
      << ex.error().message;
  o.format = "csv";
  ASSERT_FALSE(read_examples(o).ok());
  EXPECT_NE(read_examples(o).error().message.find("unknown dataset format 'csv'"),
            std::string::npos);
}

TEST(Dataset, ColumnMapping) {
  DatasetOptions o = opts_for("alpaca_columns.jsonl");
  o.columns = {{"instruction", "question"}, {"input", "context"}, {"output", "answer"}};
  Result<std::vector<RawExample>> ex = read_examples(o);  // auto-detected through the mapping
  ASSERT_TRUE(ex.ok()) << ex.error().message;
  ASSERT_EQ(ex.value().size(), 2u);
  EXPECT_EQ(ex.value()[0].messages[0].content, "Add\n\n1 2");
  EXPECT_EQ(ex.value()[0].messages[1].content, "3");
  EXPECT_EQ(ex.value()[1].messages[0].content, "Say hi");

  o.columns = {{"instruction", "question"}};  // output still called "output": missing
  o.format = "alpaca";
  Result<std::vector<RawExample>> missing = read_examples(o);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find(":1: missing key 'output'"), std::string::npos);

  o.columns = {{"answer", "x"}};
  Result<std::vector<RawExample>> bad = read_examples(o);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("data.columns: unknown field 'answer'"), std::string::npos);

  TempDir dir;
  DatasetOptions m;
  m.path = dir.file("m.jsonl",
                    "{\"chat\": [{\"speaker\": \"user\", \"text\": \"q\"}, {\"speaker\": "
                    "\"assistant\", \"text\": \"a\"}]}\n");
  m.columns = {{"messages", "chat"}, {"role", "speaker"}, {"content", "text"}};
  Result<std::vector<RawExample>> mm = read_examples(m);
  ASSERT_TRUE(mm.ok()) << mm.error().message;
  EXPECT_EQ(mm.value()[0].messages[1].content, "a");
}

TEST(Dataset, AutoDetection) {
  Result<std::vector<RawExample>> unknown = read_examples(opts_for("unknown_keys.jsonl"));
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.error().message.find("unknown_keys.jsonl:1: cannot tell the dataset format"),
            std::string::npos)
      << unknown.error().message;
  EXPECT_NE(unknown.error().message.find("'completion', 'prompt'"), std::string::npos);

  TempDir dir;
  DatasetOptions o;  // no recognised extension, text content: text
  o.path = dir.file("notes", "hello\n\nworld\n");
  Result<std::vector<RawExample>> t = read_examples(o);
  ASSERT_TRUE(t.ok()) << t.error().message;
  EXPECT_EQ(t.value().size(), 2u);
  o.path = dir.file("data.dat", qa_line("q", "a"));  // no extension, JSON content: messages
  Result<std::vector<RawExample>> j = read_examples(o);
  ASSERT_TRUE(j.ok()) << j.error().message;
  EXPECT_EQ(j.value()[0].messages.size(), 2u);
}

// ---- malformed records
// ---------------------------------------------------------------------------

TEST(Dataset, MalformedRecordsNameFileAndLine) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"bad_json.jsonl", "bad_json.jsonl:3: invalid JSON: "},
      {"missing_key.jsonl", "missing_key.jsonl:2: missing key 'output'"},
      {"wrong_type.jsonl",
       "wrong_type.jsonl:2: messages[1]: 'content' must be a string, got number"},
      {"empty_conversation.jsonl", "empty_conversation.jsonl:2: empty conversation"},
      {"unknown_role.jsonl", "unknown_role.jsonl:2: messages[1]: unknown role 'bot'"},
      {"unknown_role_sharegpt.jsonl",
       "unknown_role_sharegpt.jsonl:1: conversations[1]: unknown role 'robot'"},
      {"no_assistant.jsonl",
       "no_assistant.jsonl:2: messages[0]: the conversation ends with a user message"},
      {"not_object.jsonl", "not_object.jsonl:2: expected a JSON object, got array"},
      {"all_bad.jsonl", "all_bad.jsonl:1: invalid JSON: "},
  };
  TestEncoder enc;
  for (const auto& [file, want] : cases) {
    Result<Dataset> ds = load_dataset(opts_for(file), enc, chatml());
    ASSERT_FALSE(ds.ok()) << file;
    EXPECT_NE(ds.error().message.find(kFixtures + want), std::string::npos)
        << file << ": " << ds.error().message;
  }
  DatasetOptions wrong = opts_for("wrong_type.jsonl");
  wrong.format = "messages";
  wrong.skip_malformed = true;
  Result<Dataset> ds = load_dataset(wrong, enc, chatml());
  ASSERT_TRUE(ds.ok()) << ds.error().message;
  EXPECT_EQ(ds.value().num_examples, 1);
  EXPECT_EQ(ds.value().num_skipped, 2);  // line 2 (content 7) and line 3 ("messages": "hello")
  ASSERT_EQ(ds.value().warnings.size(), 1u);
  EXPECT_NE(ds.value().warnings[0].find("skipped 2 malformed"), std::string::npos);
  EXPECT_NE(ds.value().warnings[0].find("wrong_type.jsonl:2:"), std::string::npos);
}

TEST(Dataset, SkipMalformedCounts) {
  TestEncoder enc;
  const std::vector<std::pair<std::string, int64_t>> cases = {
      {"bad_json.jsonl", 1},     {"missing_key.jsonl", 1},  {"empty_conversation.jsonl", 1},
      {"unknown_role.jsonl", 1}, {"no_assistant.jsonl", 1}, {"not_object.jsonl", 1}};
  for (const auto& [file, skipped] : cases) {
    DatasetOptions o = opts_for(file);
    o.skip_malformed = true;
    Result<Dataset> ds = load_dataset(o, enc, chatml());
    ASSERT_TRUE(ds.ok()) << file << ": " << ds.error().message;
    EXPECT_EQ(ds.value().num_skipped, skipped) << file;
    EXPECT_GE(ds.value().num_examples, 1) << file;
    expect_row_invariants(ds.value().train_rows, o.max_seq_len);
  }
  DatasetOptions o = opts_for("bad_json.jsonl");
  o.skip_malformed = true;
  EXPECT_EQ(load_dataset(o, enc, chatml()).value().num_examples, 2);
}

TEST(Dataset, EmptyAndMissingFilesAreErrors) {
  TestEncoder enc;
  for (const std::string file : {"empty.jsonl", "empty.txt"}) {
    Result<Dataset> ds = load_dataset(opts_for(file), enc, chatml());
    ASSERT_FALSE(ds.ok()) << file;
    EXPECT_NE(ds.error().message.find("empty dataset"), std::string::npos) << ds.error().message;
  }
  DatasetOptions all_bad = opts_for("all_bad.jsonl");
  all_bad.skip_malformed = true;
  Result<Dataset> ds = load_dataset(all_bad, enc, chatml());
  ASSERT_FALSE(ds.ok());
  EXPECT_NE(ds.error().message.find("empty dataset: all 2 records are malformed"),
            std::string::npos)
      << ds.error().message;

  Result<Dataset> missing = load_dataset(opts_for("nope.jsonl"), enc, chatml());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("nope.jsonl: No such file"), std::string::npos)
      << missing.error().message;
}

// One JSONL record of a conversation given as (role, content) pairs, in the messages format or
// in ShareGPT's (roles human/gpt/system, other roles written as they are).
std::string conversation_line(const std::vector<std::pair<std::string, std::string>>& turns,
                              bool sharegpt) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& [role, content] : turns) {
    if (!sharegpt) {
      list.push_back({{"role", role}, {"content", content}});
      continue;
    }
    const std::string from = role == "user" ? "human" : role == "assistant" ? "gpt" : role;
    list.push_back({{"from", from}, {"value", content}});
  }
  return nlohmann::json{{sharegpt ? "conversations" : "messages", list}}.dump() + "\n";
}

// Conversations whose roles are out of order, empty or unknown, each placed among good ones at a
// generated line of a messages or ShareGPT file: refused naming file:line and the message, or
// with skip_malformed skipped and counted.
TEST(Dataset, MalformedConversationsRefusedAtTheirLineOrSkippedAndCounted) {
  using Turns = std::vector<std::pair<std::string, std::string>>;
  const std::vector<std::pair<Turns, std::string>> bad = {
      {{{"assistant", "a"}, {"user", "q"}, {"assistant", "a"}},
       "[0]: the conversation starts with an assistant message"},
      {{{"system", "s"}, {"assistant", "a"}}, "[1]: the conversation starts with an assistant"},
      {{{"user", "q"}, {"system", "s"}, {"assistant", "a"}}, "[1]: a system message after"},
      {{{"user", "q"}, {"assistant", "a"}, {"system", "s"}}, "[2]: a system message after"},
      {{{"user", "q"}, {"user", "q2"}, {"assistant", "a"}}, "[1]: two user messages in a row"},
      {{{"user", "q"}, {"assistant", "a"}, {"assistant", "b"}},
       "[2]: two assistant messages in a row"},
      {{{"user", "q"}, {"assistant", ""}}, "[1]: empty assistant message"},
      {{{"user", " \t "}, {"assistant", "a"}}, "[0]: empty user message"},
      {{{"user", "q"}, {"assistant", "a"}, {"user", "q2"}},
       "[2]: the conversation ends with a user message"},
      {{{"user", "q"}, {"tool", "x"}, {"assistant", "a"}}, "[1]: unknown role 'tool'"},
  };
  const Turns good = {{"system", "Be brief."}, {"user", "2+2?"}, {"assistant", "4"}};
  TempDir dir;
  TestEncoder enc;
  uint64_t rng = 99;
  for (bool sharegpt : {false, true}) {
    const std::string list = sharegpt ? "conversations" : "messages";
    std::string all_bad_file;  // every bad kind once, among good lines
    int64_t good_lines = 0;
    for (size_t k = 0; k < bad.size(); ++k) {
      rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
      const int before = static_cast<int>((rng >> 33) % 5);  // good lines before the bad one
      std::string text;
      for (int i = 0; i < before; ++i) text += conversation_line(good, sharegpt);
      text += conversation_line(bad[k].first, sharegpt);
      text += conversation_line(good, sharegpt);
      all_bad_file += text;
      good_lines += before + 1;
      const std::string name = "bad" + std::to_string(k) + (sharegpt ? "_sg" : "") + ".jsonl";
      DatasetOptions o;
      o.path = dir.file(name, text);
      Result<Dataset> ds = load_dataset(o, enc, chatml());
      ASSERT_FALSE(ds.ok()) << name;
      const std::string want =
          o.path + ":" + std::to_string(before + 1) + ": " + list + bad[k].second;
      EXPECT_NE(ds.error().message.find(want), std::string::npos)
          << "want " << want << "\n got " << ds.error().message;
    }
    DatasetOptions o;
    o.path = dir.file(std::string("all") + (sharegpt ? "_sg" : "") + ".jsonl", all_bad_file);
    o.skip_malformed = true;
    Result<Dataset> ds = load_dataset(o, enc, chatml());
    ASSERT_TRUE(ds.ok()) << ds.error().message;
    EXPECT_EQ(ds.value().num_skipped, static_cast<int64_t>(bad.size()));
    EXPECT_EQ(ds.value().num_examples, good_lines);
    ASSERT_FALSE(ds.value().warnings.empty());
    EXPECT_NE(ds.value().warnings[0].find("skipped " + std::to_string(bad.size()) + " malformed"),
              std::string::npos)
        << ds.value().warnings[0];
  }
}

TEST(Dataset, AlpacaWithAnEmptyOutputOrInstructionIsMalformed) {
  TempDir dir;
  DatasetOptions o;
  o.path = dir.file("a.jsonl",
                    "{\"instruction\": \"Add\", \"output\": \"3\"}\n"
                    "{\"instruction\": \"Say\", \"output\": \"  \"}\n");
  Result<std::vector<RawExample>> out = read_examples(o);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.error().message.find("a.jsonl:2: 'output' is empty"), std::string::npos)
      << out.error().message;
  o.path = dir.file("b.jsonl", "{\"instruction\": \"\", \"input\": \"\", \"output\": \"3\"}\n");
  out = read_examples(o);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.error().message.find("b.jsonl:1: 'instruction' and 'input' are both empty"),
            std::string::npos)
      << out.error().message;
}

TEST(Dataset, AFolderOrADeviceIsNotADataFile) {
  TempDir dir;
  TestEncoder enc;
  DatasetOptions o;
  o.path = dir.path();
  Result<Dataset> folder = load_dataset(o, enc, chatml());
  ASSERT_FALSE(folder.ok());
  EXPECT_NE(folder.error().message.find(dir.path() + ": is a folder"), std::string::npos)
      << folder.error().message;
  for (const char* device : {"/dev/zero", "/dev/null"}) {
    o.path = device;
    Result<std::vector<RawExample>> dev = read_examples(o);
    ASSERT_FALSE(dev.ok()) << device;
    EXPECT_NE(dev.error().message.find(std::string(device) + ": is not a regular file"),
              std::string::npos)
        << dev.error().message;
  }
}

// The token length of each conversation of `text` (one JSONL record a line) as the dataset
// counts it.
std::vector<size_t> conversation_lengths(const std::string& path, const TestEncoder& enc) {
  DatasetOptions o;
  o.path = path;
  std::vector<size_t> lengths;
  for (const RawExample& ex : read_examples(o).value()) {
    lengths.push_back(tokenize_example(ex, enc, chatml(), false).ids.size());
  }
  std::sort(lengths.begin(), lengths.end());
  return lengths;
}

// The number after `prefix` in `text`, -1 when absent.
int64_t number_after(const std::string& text, const std::string& prefix) {
  const size_t at = text.find(prefix);
  if (at == std::string::npos) return -1;
  return std::stoll(text.substr(at + prefix.size()));
}

// Data whose every reply lies beyond max_seq_len, for several max_seq_len: refused at load,
// saying how many conversations were cut and which max_seq_len keeps 95% / all of them; those
// values then work.
TEST(Dataset, RepliesCutAwayByMaxSeqLenAreRefusedWithTheLengthThatKeepsThem) {
  TempDir dir;
  TestEncoder enc;
  std::string text;
  for (int i = 0; i < 40; ++i) text += qa_line(std::string(40 + (i * 7) % 53, 'p'), "ok");
  const std::string path = dir.file("long_prompts.jsonl", text);
  const std::vector<size_t> lengths = conversation_lengths(path, enc);
  for (int64_t max_seq_len : {4, 16, 33, 50}) {
    DatasetOptions o;
    o.path = path;
    o.max_seq_len = max_seq_len;
    Result<Dataset> ds = load_dataset(o, enc, chatml());
    ASSERT_FALSE(ds.ok()) << max_seq_len;
    const std::string& msg = ds.error().message;
    const int64_t cut = static_cast<int64_t>(
        lengths.end() - std::upper_bound(lengths.begin(), lengths.end(), size_t(max_seq_len)));
    EXPECT_NE(msg.find(path + ": data.max_seq_len " + std::to_string(max_seq_len) + " cuts " +
                       std::to_string(cut) + " of 40 conversations"),
              std::string::npos)
        << msg;
    EXPECT_EQ(number_after(msg, "keeps 95% of them whole, "), int64_t(lengths.back())) << msg;
    const int64_t p95 = number_after(msg, "tokens long: max_seq_len ");
    ASSERT_GT(p95, max_seq_len) << msg;

    o.max_seq_len = int64_t(lengths.back());  // keeps all
    Result<Dataset> all = load_dataset(o, enc, chatml());
    ASSERT_TRUE(all.ok()) << all.error().message;
    EXPECT_EQ(all.value().num_truncated, 0);
    o.max_seq_len = p95;  // keeps 95%: at most 2 of the 40 cut, with a warning
    Result<Dataset> most = load_dataset(o, enc, chatml());
    ASSERT_TRUE(most.ok()) << most.error().message;
    EXPECT_LE(most.value().num_truncated, 2);
    EXPECT_GE(most.value().num_truncated, 1);
    EXPECT_NE(most.value().warnings.back().find("cuts"), std::string::npos);
  }
}

// Below half of the conversations cut away: loads, warns, and no training row is left without a
// trained token; above half: refused.
TEST(Dataset, AMinorityOfRepliesCutAwayIsAWarningAndTheirRowsAreDropped) {
  TempDir dir;
  TestEncoder enc;
  for (int long_ones : {1, 4, 6, 9}) {
    std::string text;
    for (int i = 0; i < 10; ++i) {
      text += qa_line(i < long_ones ? std::string(80, 'p') : "q" + std::to_string(i), "ok");
    }
    DatasetOptions o;
    o.path = dir.file("mixed" + std::to_string(long_ones) + ".jsonl", text);
    o.max_seq_len = 48;
    Result<Dataset> ds = load_dataset(o, enc, chatml());
    if (2 * long_ones > 10) {
      ASSERT_FALSE(ds.ok()) << long_ones;
      EXPECT_NE(
          ds.error().message.find(std::to_string(long_ones) + " of them losing their whole reply"),
          std::string::npos)
          << ds.error().message;
      continue;
    }
    ASSERT_TRUE(ds.ok()) << ds.error().message;
    EXPECT_EQ(ds.value().num_truncated, long_ones);
    EXPECT_NE(ds.value().warnings.back().find("cuts " + std::to_string(long_ones) + " of 10"),
              std::string::npos)
        << ds.value().warnings.back();
    for (const TokenRow& row : ds.value().train_rows) {
      EXPECT_TRUE(
          std::any_of(row.labels.begin(), row.labels.end(), [](int32_t l) { return l != I; }));
    }
  }
}

// An encoder that produces nothing: the error blames the tokenizer, not the data.
TEST(Dataset, ATokenizerThatProducesNoTokensIsNotBlamedOnTheData) {
  class Silent : public TestEncoder {
   public:
    std::vector<int32_t> encode(std::string_view) const override { return {}; }
  } silent;
  silent.eos = -1;
  DatasetOptions o = opts_for("messages.jsonl");
  Result<Dataset> ds = load_dataset(o, silent, chatml());
  ASSERT_FALSE(ds.ok());
  EXPECT_NE(ds.error().message.find("the tokenizer"), std::string::npos) << ds.error().message;
  EXPECT_NE(ds.error().message.find("not the data"), std::string::npos) << ds.error().message;
}

// ---- packing
// -------------------------------------------------------------------------------------

TEST(Dataset, PackedTextCrossesRowsButLabelsDoNot) {
  TestEncoder enc;  // no bos, eos <|im_end|>: "abc" -> a b c E, "de" -> d e E
  DatasetOptions o = opts_for("text.jsonl");
  o.max_seq_len = 5;
  Result<Dataset> ds = load_dataset(o, enc, chatml());
  ASSERT_TRUE(ds.ok()) << ds.error().message;
  const std::vector<TokenRow>& rows = ds.value().train_rows;
  ASSERT_EQ(rows.size(), 2u);
  const int32_t E = kImEnd, P = kImEnd;  // pad is eos
  // Positions: each piece starts a document of its row; padding continues the last one.
  std::vector<TokenRow> want;
  if (rows[0].ids[0] == 'a') {
    want = {{{'a', 'b', 'c', E, 'd'}, {'b', 'c', E, I, I}, {0, 1, 2, 3, 0}},  // cut at 'd'
            {{'e', E, P, P, P}, {E, I, I, I, I}, {0, 1, 2, 3, 4}}};
  } else {
    want = {{{'d', 'e', E, 'a', 'b'}, {'e', E, I, 'b', I}, {0, 1, 2, 0, 1}},
            {{'c', E, P, P, P}, {E, I, I, I, I}, {0, 1, 2, 3, 4}}};
  }
  for (size_t r = 0; r < 2; ++r) {
    EXPECT_EQ(rows[r].ids, want[r].ids) << r;
    EXPECT_EQ(rows[r].labels, want[r].labels) << r;  // E does not predict 'd'
    EXPECT_EQ(rows[r].positions, want[r].positions) << r;
  }
  EXPECT_EQ(ds.value().train_tokens, 7);
  EXPECT_EQ(ds.value().trained_tokens, 4);
  EXPECT_EQ(ds.value().num_truncated, 0);
}

TEST(Dataset, PackedConversationsNeverStraddleRows) {
  TempDir dir;
  TestEncoder enc;
  DatasetOptions o;
  o.path = dir.file("c.jsonl", numbered_conversations(3));
  Result<std::vector<RawExample>> raw = read_examples(o);
  ASSERT_TRUE(raw.ok());
  std::vector<TokenRow> ex;
  for (const RawExample& r : raw.value()) ex.push_back(tokenize_example(r, enc, chatml(), false));
  const int64_t len = static_cast<int64_t>(ex[0].ids.size());
  o.max_seq_len = 2 * len + 3;  // two fit, the third goes to the next row
  Result<Dataset> ds = load_dataset(o, enc, chatml());
  ASSERT_TRUE(ds.ok()) << ds.error().message;
  const std::vector<TokenRow>& rows = ds.value().train_rows;
  ASSERT_EQ(rows.size(), 2u);
  expect_row_invariants(rows, o.max_seq_len);
  // Each row is whole examples followed by padding; identify them by their first token run.
  auto find = [&](const std::vector<int32_t>& ids, size_t at) -> int {
    for (size_t e = 0; e < ex.size(); ++e) {
      if (std::equal(ex[e].ids.begin(), ex[e].ids.end(), ids.begin() + static_cast<long>(at))) {
        return static_cast<int>(e);
      }
    }
    return -1;
  };
  std::set<int> seen;
  const int e0 = find(rows[0].ids, 0), e1 = find(rows[0].ids, static_cast<size_t>(len));
  const int e2 = find(rows[1].ids, 0);
  ASSERT_GE(e0, 0);
  ASSERT_GE(e1, 0);
  ASSERT_GE(e2, 0);
  seen = {e0, e1, e2};
  EXPECT_EQ(seen.size(), 3u);
  for (int64_t k = 0; k < len; ++k) {
    EXPECT_EQ(rows[0].labels[static_cast<size_t>(k)], ex[static_cast<size_t>(e0)].labels[k]);
    EXPECT_EQ(rows[0].labels[static_cast<size_t>(len + k)], ex[static_cast<size_t>(e1)].labels[k]);
  }
  for (int64_t k = 2 * len; k < o.max_seq_len; ++k) {
    EXPECT_EQ(rows[0].ids[static_cast<size_t>(k)], kImEnd);  // pad = eos
    EXPECT_EQ(rows[0].labels[static_cast<size_t>(k)], I);
  }
  EXPECT_EQ(ds.value().train_tokens, 3 * len);
  EXPECT_EQ(ds.value().trained_tokens, 3 * 5);  // "a000" + <|im_end|> per example
}

// positions[k] is k's place in its example: 0 at each example's first token, then +1, through
// the padding after the last example of the row.
std::vector<int32_t> positions_of_lengths(const std::vector<int64_t>& lengths, int64_t row_len) {
  std::vector<int32_t> out;
  for (int64_t len : lengths) {
    for (int64_t k = 0; k < len; ++k) out.push_back(static_cast<int32_t>(k));
  }
  while (static_cast<int64_t>(out.size()) < row_len) out.push_back(out.back() + 1);
  return out;
}

TEST(Dataset, PositionsRestartAtEveryPackedExample) {
  TempDir dir;
  TestEncoder enc;
  for (int n : {3, 5, 8}) {
    for (int per_row : {1, 2, 3}) {
      DatasetOptions o;
      o.path = dir.file("c.jsonl", numbered_conversations(n));
      Result<std::vector<RawExample>> raw = read_examples(o);
      ASSERT_TRUE(raw.ok());
      const int64_t len =
          static_cast<int64_t>(tokenize_example(raw.value()[0], enc, chatml(), false).ids.size());
      o.max_seq_len = per_row * len + 2;  // per_row examples, then two pads
      Result<Dataset> ds = load_dataset(o, enc, chatml());
      ASSERT_TRUE(ds.ok()) << ds.error().message;
      const std::vector<TokenRow>& rows = ds.value().train_rows;
      ASSERT_EQ(static_cast<int>(rows.size()), (n + per_row - 1) / per_row);
      int left = n;
      for (size_t r = 0; r < rows.size(); ++r) {
        const int here = std::min(left, per_row);
        left -= here;
        EXPECT_EQ(rows[r].positions,
                  positions_of_lengths(std::vector<int64_t>(static_cast<size_t>(here), len),
                                       o.max_seq_len))
            << "n " << n << " per row " << per_row << " row " << r;
      }
      // Unpacked: every row is one example and its padding, positions 0..T-1.
      o.pack = false;
      Result<Dataset> unpacked = load_dataset(o, enc, chatml());
      ASSERT_TRUE(unpacked.ok()) << unpacked.error().message;
      for (const TokenRow& row : unpacked.value().train_rows) {
        EXPECT_EQ(row.positions, positions_of_lengths({o.max_seq_len}, o.max_seq_len));
      }
    }
  }
}

TEST(Dataset, WithoutPackingOneExamplePerRow) {
  TempDir dir;
  TestEncoder enc;
  DatasetOptions o;
  o.path = dir.file("c.jsonl", numbered_conversations(4));
  o.max_seq_len = 64;
  o.pack = false;
  Result<Dataset> ds = load_dataset(o, enc, chatml());
  ASSERT_TRUE(ds.ok()) << ds.error().message;
  ASSERT_EQ(ds.value().train_rows.size(), 4u);
  expect_row_invariants(ds.value().train_rows, 64);
  for (const TokenRow& row : ds.value().train_rows) {
    EXPECT_EQ(row.ids[0], kImStart);
    EXPECT_EQ(row.ids.back(), kImEnd);                                   // padded
    EXPECT_EQ(std::count(row.ids.begin(), row.ids.end(), kImStart), 2);  // one conversation
  }
}

TEST(Dataset, LongConversationsTruncatedLongTextSplit) {
  TempDir dir;
  TestEncoder enc;
  DatasetOptions o;
  o.path = dir.file("long.jsonl", qa_line("q", std::string(100, 'z')) + qa_line("q", "short"));
  o.max_seq_len = 32;
  Result<Dataset> ds = load_dataset(o, enc, chatml());
  ASSERT_TRUE(ds.ok()) << ds.error().message;
  EXPECT_EQ(ds.value().num_truncated, 1);
  expect_row_invariants(ds.value().train_rows, 32);
  bool found = false;
  for (const TokenRow& row : ds.value().train_rows) {
    if (row.ids[31] != 'z') continue;  // the truncated one fills its row with its first 32 tokens
    found = true;
    EXPECT_EQ(row.labels[30], 'z');
    EXPECT_EQ(row.labels[31], I);
  }
  EXPECT_TRUE(found);

  o.path = dir.file("long.txt", std::string(70, 'x'));
  o.pack = false;
  Result<Dataset> text = load_dataset(o, enc, chatml());
  ASSERT_TRUE(text.ok()) << text.error().message;
  EXPECT_EQ(text.value().num_truncated, 0);
  ASSERT_EQ(text.value().train_rows.size(), 3u);  // 71 tokens: 32 + 32 + 7
  expect_row_invariants(text.value().train_rows, 32);
  EXPECT_EQ(text.value().train_tokens, 71);
  EXPECT_EQ(text.value().trained_tokens, 70 - 2);  // the two cuts lose their labels
}

// ---- split, shuffle, permutation ----------------------------------------------------------------

std::vector<std::string> user_contents(const std::vector<RawExample>& ex) {
  std::vector<std::string> out;
  for (const RawExample& e : ex) out.push_back(e.messages.at(0).content);
  return out;
}

// The "q<i>" of each unpacked row.
std::vector<std::string> row_questions(const std::vector<TokenRow>& rows) {
  std::vector<std::string> out;
  for (const TokenRow& r : rows) {
    const std::string text = decode(r.ids);
    const size_t at = text.find("user\n");
    out.push_back(text.substr(at + 5, 4));
  }
  return out;
}

TEST(Dataset, ValidationSplitSizesAndDeterminism) {
  TempDir dir;
  TestEncoder enc;
  DatasetOptions o;
  o.path = dir.file("c.jsonl", numbered_conversations(20));
  o.max_seq_len = 64;
  o.pack = false;
  o.seed = 7;
  o.val_size = 5;
  Result<Dataset> a = load_dataset(o, enc, chatml());
  ASSERT_TRUE(a.ok()) << a.error().message;
  EXPECT_EQ(a.value().num_examples, 20);
  ASSERT_EQ(a.value().val_examples.size(), 5u);
  EXPECT_EQ(a.value().val_rows.size(), 5u);
  EXPECT_EQ(a.value().train_rows.size(), 15u);
  expect_row_invariants(a.value().val_rows, 64);
  // val_examples in file order; the reference answer is the last message.
  for (size_t k = 1; k < 5; ++k) {
    EXPECT_LT(a.value().val_examples[k - 1].line, a.value().val_examples[k].line);
  }
  EXPECT_EQ(a.value().val_examples[0].messages.back().role, "assistant");
  // Train and validation partition the examples.
  std::vector<std::string> all = row_questions(a.value().train_rows);
  const std::vector<std::string> val_q = user_contents(a.value().val_examples);
  EXPECT_EQ(row_questions(a.value().val_rows), val_q);
  all.insert(all.end(), val_q.begin(), val_q.end());
  std::sort(all.begin(), all.end());
  EXPECT_EQ(std::unique(all.begin(), all.end()), all.end());
  EXPECT_EQ(all.size(), 20u);

  Result<Dataset> again = load_dataset(o, enc, chatml());
  EXPECT_EQ(user_contents(again.value().val_examples), val_q);
  o.seed = 8;
  Result<Dataset> other = load_dataset(o, enc, chatml());
  EXPECT_NE(user_contents(other.value().val_examples), val_q);

  o.val_size = 0;
  o.val_fraction = 0.26;  // floor(5.2)
  EXPECT_EQ(load_dataset(o, enc, chatml()).value().val_examples.size(), 5u);
  o.val_fraction = 0.0;
  EXPECT_EQ(load_dataset(o, enc, chatml()).value().val_examples.size(), 0u);

  o.val_size = 20;
  Result<Dataset> none = load_dataset(o, enc, chatml());
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.error().message.find("takes 20 of 20 examples and leaves none"),
            std::string::npos);
  o.val_size = 0;
  o.val_fraction = 1.0;
  EXPECT_FALSE(load_dataset(o, enc, chatml()).ok());
}

TEST(Dataset, ShuffleIsDeterministicBySeed) {
  TempDir dir;
  TestEncoder enc;
  DatasetOptions o;
  o.path = dir.file("c.jsonl", numbered_conversations(12));
  o.max_seq_len = 64;
  o.pack = false;
  o.seed = 1;
  const std::vector<std::string> a =
      row_questions(load_dataset(o, enc, chatml()).value().train_rows);
  const std::vector<std::string> a2 =
      row_questions(load_dataset(o, enc, chatml()).value().train_rows);
  o.seed = 2;
  const std::vector<std::string> b =
      row_questions(load_dataset(o, enc, chatml()).value().train_rows);
  EXPECT_EQ(a, a2);
  EXPECT_NE(a, b);
  std::vector<std::string> sa = a, sb = b;
  std::sort(sa.begin(), sa.end());
  std::sort(sb.begin(), sb.end());
  EXPECT_EQ(sa, sb);
  EXPECT_NE(a, sa);  // actually shuffled, not file order
}

TEST(Dataset, SeededPermutationIsFixedAcrossPlatforms) {
  const std::vector<int64_t> p = seeded_permutation(10, 42);
  std::vector<int64_t> sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t k = 0; k < 10; ++k) EXPECT_EQ(sorted[static_cast<size_t>(k)], k);
  // Golden values: splitmix64 + Fisher-Yates must not change, or resumed runs and caches break.
  EXPECT_EQ(p, (std::vector<int64_t>{8, 3, 6, 5, 4, 0, 9, 2, 1, 7}));
  EXPECT_NE(seeded_permutation(10, 43), p);
  EXPECT_TRUE(seeded_permutation(0, 1).empty());
  EXPECT_EQ(seeded_permutation(1, 1), (std::vector<int64_t>{0}));
}

// ---- loader
// ---------------------------------------------------------------------------------------

std::vector<TokenRow> distinct_rows(int n, int len) {
  std::vector<TokenRow> rows;
  for (int r = 0; r < n; ++r) {
    TokenRow row;
    for (int k = 0; k < len; ++k) {
      row.ids.push_back(100 * r + k);
      row.labels.push_back(k + 1 < len ? 100 * r + k + 1 : I);
    }
    rows.push_back(row);
  }
  return rows;
}

TEST(DataLoader, EpochsArePermutationsAndBatchesAreRowMajor) {
  const std::vector<TokenRow> rows = distinct_rows(7, 4);
  DataLoader loader(rows, 1, 5);
  EXPECT_EQ(loader.rows_per_epoch(), 7);
  std::vector<std::vector<int64_t>> epochs(3);
  for (auto& epoch : epochs) {
    EXPECT_EQ(loader.cursor().index, 0);
    for (int k = 0; k < 7; ++k) {
      const Batch b = loader.next();
      ASSERT_EQ(b.batch, 1);
      ASSERT_EQ(b.seq_len, 4);
      const int64_t r = b.ids[0] / 100;
      epoch.push_back(r);
      for (size_t t = 0; t < 4; ++t) {
        EXPECT_EQ(b.ids[t], rows[static_cast<size_t>(r)].ids[t]);
        EXPECT_EQ(b.targets[t], rows[static_cast<size_t>(r)].labels[t]);
      }
    }
    std::vector<int64_t> sorted = epoch;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6}));
  }
  EXPECT_EQ(loader.cursor().epoch, 3);
  EXPECT_FALSE(epochs[0] == epochs[1] && epochs[1] == epochs[2]);

  DataLoader batched(rows, 3, 5);  // same seed: same order, three rows per batch
  const Batch b = batched.next();
  ASSERT_EQ(b.ids.size(), 12u);
  for (size_t k = 0; k < 3; ++k) EXPECT_EQ(b.ids[4 * k] / 100, epochs[0][k]);
  // Rows without positions are one document each: 0..T-1.
  EXPECT_EQ(b.positions, (std::vector<int64_t>{0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3}));
}

TEST(DataLoader, BatchesCarryTheRowsPositions) {
  std::vector<TokenRow> rows = distinct_rows(5, 6);
  for (size_t r = 0; r < rows.size(); ++r) {
    rows[r].positions = positions_of_lengths({static_cast<int64_t>(r % 3 + 1), 2}, 6);
  }
  DataLoader loader(rows, 2, 9);
  for (int k = 0; k < 6; ++k) {
    const Batch b = loader.next();
    ASSERT_EQ(b.positions.size(), 12u);
    for (size_t j = 0; j < 2; ++j) {
      const TokenRow& row = rows[static_cast<size_t>(b.ids[6 * j] / 100)];
      for (size_t t = 0; t < 6; ++t) EXPECT_EQ(b.positions[6 * j + t], row.positions[t]);
    }
  }
  rows[3].positions.pop_back();
  EXPECT_THROW(DataLoader(rows, 1, 0), std::invalid_argument);
}

TEST(DataLoader, SeekResumesAtTheSameSample) {
  const std::vector<TokenRow> rows = distinct_rows(7, 3);
  DataLoader a(rows, 3, 11);
  for (int k = 0; k < 4; ++k) a.next();  // 12 rows: into the second epoch
  const DataCursor saved = a.cursor();
  EXPECT_EQ(saved.epoch, 1);
  EXPECT_EQ(saved.index, 5);
  std::vector<Batch> continued;
  for (int k = 0; k < 6; ++k) continued.push_back(a.next());

  DataLoader b(rows, 3, 11);
  b.seek(saved);
  for (int k = 0; k < 6; ++k) {
    const Batch got = b.next();
    EXPECT_EQ(got.ids, continued[static_cast<size_t>(k)].ids) << k;
    EXPECT_EQ(got.targets, continued[static_cast<size_t>(k)].targets) << k;
  }
  DataLoader c(rows, 3, 12);  // another seed gives another stream
  c.seek(saved);
  EXPECT_NE(c.next().ids, continued[0].ids);

  EXPECT_THROW(b.seek(DataCursor{0, 8}), std::invalid_argument);
  EXPECT_THROW(b.seek(DataCursor{-1, 0}), std::invalid_argument);
  EXPECT_THROW(DataLoader({}, 1, 0), std::invalid_argument);
}

// ---- cache
// ----------------------------------------------------------------------------------------

void expect_same(const Dataset& a, const Dataset& b) {
  ASSERT_EQ(a.train_rows.size(), b.train_rows.size());
  for (size_t r = 0; r < a.train_rows.size(); ++r) {
    EXPECT_EQ(a.train_rows[r].ids, b.train_rows[r].ids);
    EXPECT_EQ(a.train_rows[r].labels, b.train_rows[r].labels);
    EXPECT_EQ(a.train_rows[r].positions, b.train_rows[r].positions);
  }
  ASSERT_EQ(a.val_rows.size(), b.val_rows.size());
  for (size_t r = 0; r < a.val_rows.size(); ++r) {
    EXPECT_EQ(a.val_rows[r].ids, b.val_rows[r].ids);
    EXPECT_EQ(a.val_rows[r].positions, b.val_rows[r].positions);
  }
  ASSERT_EQ(a.val_examples.size(), b.val_examples.size());
  for (size_t k = 0; k < a.val_examples.size(); ++k) {
    EXPECT_EQ(a.val_examples[k].line, b.val_examples[k].line);
    EXPECT_EQ(user_contents({a.val_examples[k]}), user_contents({b.val_examples[k]}));
    EXPECT_EQ(a.val_examples[k].messages.back().content, b.val_examples[k].messages.back().content);
  }
  EXPECT_EQ(a.num_examples, b.num_examples);
  EXPECT_EQ(a.num_skipped, b.num_skipped);
  EXPECT_EQ(a.num_truncated, b.num_truncated);
  EXPECT_EQ(a.train_tokens, b.train_tokens);
  EXPECT_EQ(a.trained_tokens, b.trained_tokens);
}

TEST(DatasetCache, HitGivesIdenticalRowsWithoutTokenizing) {
  TempDir dir;
  TestEncoder enc;
  DatasetOptions o;
  o.path = dir.file("c.jsonl", numbered_conversations(20) + "not json\n");
  o.skip_malformed = true;
  o.max_seq_len = 48;
  o.val_size = 4;
  o.seed = 3;
  o.cache_dir = dir.path() + "/cache";
  Result<Dataset> first = load_dataset(o, enc, chatml());
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_FALSE(first.value().from_cache);
  ASSERT_FALSE(first.value().cache_path.empty());
  EXPECT_TRUE(fs::exists(first.value().cache_path));
  EXPECT_GT(enc.calls, 0);

  enc.calls = 0;
  Result<Dataset> second = load_dataset(o, enc, chatml());
  ASSERT_TRUE(second.ok()) << second.error().message;
  EXPECT_TRUE(second.value().from_cache);
  EXPECT_EQ(enc.calls, 0);
  EXPECT_EQ(second.value().cache_path, first.value().cache_path);
  EXPECT_EQ(second.value().warnings, first.value().warnings);  // the skip warning survives
  expect_same(first.value(), second.value());

  // Anything that changes tokens misses: an option, the encoder, the chat format, the file.
  o.max_seq_len = 40;
  EXPECT_FALSE(load_dataset(o, enc, chatml()).value().from_cache);
  o.max_seq_len = 48;
  EXPECT_TRUE(load_dataset(o, enc, chatml()).value().from_cache);
  enc.fp = "test-bytes-v2";
  EXPECT_FALSE(load_dataset(o, enc, chatml()).value().from_cache);
  enc.fp = "test-bytes-v1";
  EXPECT_FALSE(load_dataset(o, enc, chat_format_from_name("llama3").value()).value().from_cache);
  o.system_prompt = "sys";
  EXPECT_FALSE(load_dataset(o, enc, chatml()).value().from_cache);
  o.system_prompt = "";
  dir.file("c.jsonl", numbered_conversations(21));
  EXPECT_FALSE(load_dataset(o, enc, chatml()).value().from_cache);

  // No fingerprint: no cache, and a warning saying so.
  enc.fp = "";
  Result<Dataset> off = load_dataset(o, enc, chatml());
  EXPECT_FALSE(off.value().from_cache);
  EXPECT_TRUE(off.value().cache_path.empty());
  ASSERT_FALSE(off.value().warnings.empty());
  EXPECT_NE(off.value().warnings.back().find("no fingerprint"), std::string::npos);
}

TEST(DatasetCache, CorruptCacheIsRebuiltWithAWarning) {
  TempDir dir;
  TestEncoder enc;
  DatasetOptions o;
  o.path = dir.file("c.jsonl", numbered_conversations(10));
  o.max_seq_len = 48;
  o.cache_dir = dir.path();
  const Dataset reference = load_dataset(o, enc, chatml()).value();
  const std::string path = reference.cache_path;
  const auto size = fs::file_size(path);

  auto corrupt_and_reload = [&](const std::string& what) {
    Result<Dataset> ds = load_dataset(o, enc, chatml());
    ASSERT_TRUE(ds.ok()) << what << ": " << ds.error().message;
    EXPECT_FALSE(ds.value().from_cache) << what;
    ASSERT_FALSE(ds.value().warnings.empty()) << what;
    EXPECT_NE(ds.value().warnings.back().find("corrupt dataset cache"), std::string::npos)
        << what << ": " << ds.value().warnings.back();
    expect_same(ds.value(), reference);
    Result<Dataset> again = load_dataset(o, enc, chatml());  // rewritten
    EXPECT_TRUE(again.value().from_cache) << what;
    EXPECT_TRUE(again.value().warnings.empty()) << what;
  };

  {  // one flipped byte in the rows
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(size / 2));
    char c = 0;
    f.seekg(static_cast<std::streamoff>(size / 2));
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x40);
    f.seekp(static_cast<std::streamoff>(size / 2));
    f.write(&c, 1);
  }
  corrupt_and_reload("flipped byte");
  fs::resize_file(path, size - 9);
  corrupt_and_reload("truncated");
  std::ofstream(path, std::ios::binary | std::ios::trunc) << "junk";
  corrupt_and_reload("junk");
}

// A cache written by the previous version of the format (no positions) is rebuilt and
// overwritten like a miss, without a warning, whatever follows its magic.
TEST(DatasetCache, OlderFormatIsRebuilt) {
  TempDir dir;
  TestEncoder enc;
  DatasetOptions o;
  o.path = dir.file("c.jsonl", numbered_conversations(6));
  o.max_seq_len = 40;
  o.cache_dir = dir.path();
  const Dataset reference = load_dataset(o, enc, chatml()).value();
  const std::string path = reference.cache_path;
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  ASSERT_EQ(bytes.compare(0, 8, "RSDSET02"), 0);
  for (const std::string& old : {bytes, bytes.substr(0, 8), bytes.substr(0, 40)}) {
    std::string v1 = old;
    v1.replace(0, 8, "RSDSET01");
    std::ofstream(path, std::ios::binary | std::ios::trunc) << v1;
    enc.calls = 0;
    Result<Dataset> ds = load_dataset(o, enc, chatml());
    ASSERT_TRUE(ds.ok()) << ds.error().message;
    EXPECT_FALSE(ds.value().from_cache);
    EXPECT_GT(enc.calls, 0);  // tokenised again
    EXPECT_TRUE(ds.value().warnings.empty()) << ds.value().warnings.front();
    expect_same(ds.value(), reference);
    Result<Dataset> again = load_dataset(o, enc, chatml());
    EXPECT_TRUE(again.value().from_cache);  // rewritten in the current format
    expect_same(again.value(), reference);
  }
}

// ---- system prompt and the bundled tasks --------------------------------------------------------

TEST(Dataset, DefaultSystemPromptAndOverride) {
  TempDir dir;
  TestEncoder enc;
  DatasetOptions o;
  o.path = dir.file("c.jsonl", qa_line("q", "a"));
  o.max_seq_len = 128;
  ChatFormat smol = chatml();
  smol.default_system = "You are SmolLM";
  const std::string with_default = decode(load_dataset(o, enc, smol).value().train_rows[0].ids);
  EXPECT_EQ(with_default.rfind("<256>system\nYou are SmolLM<257>\n<256>user\nq", 0), 0u)
      << with_default;
  o.system_prompt = "Answer briefly.";
  const std::string overridden = decode(load_dataset(o, enc, smol).value().train_rows[0].ids);
  EXPECT_EQ(overridden.rfind("<256>system\nAnswer briefly.<257>\n<256>user\nq", 0), 0u)
      << overridden;
}

TEST(Dataset, BundledTasksLoad) {
  const std::string path = "data/bundled/tasks_train.jsonl";
  if (!fs::exists(path)) GTEST_SKIP() << path << " absent";
  TestEncoder enc;
  DatasetOptions o;
  o.path = path;
  o.max_seq_len = 256;
  o.val_size = 50;
  Result<Dataset> ds = load_dataset(o, enc, chatml());
  ASSERT_TRUE(ds.ok()) << ds.error().message;
  EXPECT_GE(ds.value().num_examples, 1000);
  EXPECT_EQ(ds.value().num_skipped, 0);
  EXPECT_EQ(ds.value().num_truncated, 0);
  EXPECT_EQ(ds.value().val_examples.size(), 50u);
  expect_row_invariants(ds.value().train_rows, 256);
  expect_row_invariants(ds.value().val_rows, 256);
  for (const RawExample& ex : ds.value().val_examples) {
    ASSERT_EQ(ex.messages.size(), 2u);
    EXPECT_FALSE(ex.messages[1].content.empty());
  }
}

}  // namespace
}  // namespace ramstream::data
