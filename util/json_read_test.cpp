#include "util/json_read.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

namespace ramstream {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string error_of(std::string_view text, const JsonLimits& limits = {}) {
  Result<json> r = parse_json(text, "x.json", limits);
  EXPECT_FALSE(r.ok()) << text.substr(0, 80);
  return r.ok() ? "<ok>" : r.error().message;
}

TEST(JsonRead, ParsesWhatNlohmannParses) {
  const std::string text =
      R"({"a": [1, 2.5, "s", null, true, {"b": []}], "u": 18446744073709551615})";
  Result<json> r = parse_json(text, "x.json");
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r.value(), json::parse(text));
}

TEST(JsonRead, SyntaxErrorsGiveLineAndColumn) {
  EXPECT_EQ(error_of("{\n  \"a\": 1,\n  oops\n}").rfind("x.json:3:3: invalid JSON: ", 0), 0u)
      << error_of("{\n  \"a\": 1,\n  oops\n}");
  // A JSONL row: lines count from the row's line in its file.
  Result<json> row = parse_json("{\"a\": }", "d.jsonl", {}, 42);
  ASSERT_FALSE(row.ok());
  EXPECT_EQ(row.error().message.rfind("d.jsonl:42:7: invalid JSON", 0), 0u) << row.error().message;
}

TEST(JsonRead, NestingBeyondTheLimitIsRefusedWherever) {
  // Generated: arrays, objects and a mix, just past and far past the limit; each names where.
  JsonLimits limits;
  limits.max_depth = 16;
  for (int depth : {17, 1000, 100000}) {
    for (const std::string& open :
         {std::string("["), std::string("{\"k\":"), std::string("[{\"k\":")}) {
      const std::string close = open == "[" ? "]" : open == "{\"k\":" ? "}" : "}]";
      std::string text;
      for (int i = 0; i < depth; ++i) text += open;
      text += "0";
      for (int i = 0; i < depth; ++i) text += close;
      const std::string e = error_of(text, limits);
      EXPECT_NE(e.find("nest deeper than 16"), std::string::npos) << e;
      EXPECT_EQ(e.rfind("x.json:1:", 0), 0u) << e;
      EXPECT_LT(e.size(), 200u) << e;
    }
  }
  // Exactly at the limit is fine.
  std::string ok = std::string(16, '[') + std::string(16, ']');
  EXPECT_TRUE(parse_json(ok, "x.json", limits).ok());
  // Brackets inside strings do not count.
  EXPECT_TRUE(parse_json("[\"" + std::string(1000, '[') + "\"]", "x.json", limits).ok());
}

TEST(JsonRead, TooManyValuesAndHugeNumbersAndDuplicates) {
  JsonLimits limits;
  limits.max_values = 1000;
  std::string many = "[";
  for (int i = 0; i < 2000; ++i) many += i ? ",[]" : "[]";
  many += "]";
  EXPECT_NE(error_of(many, limits).find("more than 1000 values"), std::string::npos);
  for (const char* n : {"1e999", "-1e400", "[1, 2e308]"}) {
    EXPECT_NE(error_of(n).find("number overflow"), std::string::npos) << error_of(n);
  }
  EXPECT_TRUE(parse_json(R"({"a": 1, "a": 2})", "x.json").ok());  // the last wins, as in Python
  JsonLimits unique;
  unique.unique_keys = true;
  EXPECT_NE(error_of(R"({"a": {"b": 1, "b": 2}})", unique).find("'b' appears twice"),
            std::string::npos);
  EXPECT_TRUE(parse_json(R"({"a": {"b": 1}, "c": {"b": 2}})", "x.json", unique).ok());
}

TEST(JsonRead, ErrorsQuoteAtMostAFewBytes) {
  // A long invalid token: nlohmann's message quotes it whole; ours cuts it.
  for (size_t n : {size_t{100}, size_t{1} << 20}) {
    const std::string text = "[\"" + std::string(n, 'x') + "\x01\"]";
    const std::string e = error_of(text);
    EXPECT_LT(e.size(), 400u) << e.substr(0, 400);
    EXPECT_NE(e.find("invalid JSON"), std::string::npos) << e;
  }
}

TEST(JsonRead, FilesMustBeRegularAndSmall) {
  const fs::path dir =
      fs::temp_directory_path() / ("ramstream_json_read_" + std::to_string(::getpid()));
  fs::create_directories(dir / "folder.json");
  std::ofstream(dir / "big.json") << "[" << std::string(2000, ' ') << "]";
  ASSERT_EQ(::mkfifo((dir / "fifo.json").c_str(), 0600), 0);
  JsonLimits limits;
  limits.max_bytes = 1000;
  struct Case {
    std::string file, expect;
  };
  for (const Case& c : {Case{"folder.json", "is a folder"}, Case{"fifo.json", "not a regular file"},
                        Case{"missing.json", "No such file"}, Case{"big.json", "too large"}}) {
    const std::string path = (dir / c.file).string();
    Result<json> r = read_json_file(path, "the test file", limits);
    ASSERT_FALSE(r.ok()) << c.file;
    EXPECT_NE(r.error().message.find(path), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find(c.expect), std::string::npos) << r.error().message;
  }
  if (fs::exists("/dev/zero")) {
    Result<json> r = read_json_file("/dev/zero", "the test file");
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message.find("not a regular file"), std::string::npos);
  }
  fs::remove_all(dir);
}

TEST(JsonRead, DescribeIsFlatAndShort) {
  EXPECT_EQ(describe_json(json("abc")), "a string 'abc'");
  EXPECT_EQ(describe_json(json(1.5)), "the number 1.5");
  EXPECT_EQ(describe_json(json(nullptr)), "null");
  EXPECT_EQ(describe_json(json::array({1, 2, 3})), "an array of 3 values");
  EXPECT_EQ(describe_json(json{{"a", 1}, {"b", 2}}), "an object with 2 keys");
  EXPECT_LT(describe_json(json(std::string(10000, 'y'))).size(), 100u);
  // A deep value is described without recursing into it.
  json deep = json::array();
  for (int i = 0; i < 1000; ++i) deep = json::array({deep});
  EXPECT_EQ(describe_json(deep), "an array of 1 value");
}

}  // namespace
}  // namespace ramstream
