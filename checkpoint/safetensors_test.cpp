#include "checkpoint/safetensors.h"

#include <unistd.h>

#include <filesystem>
#include <random>

#include <gtest/gtest.h>

#include "checkpoint/safetensors_test_util.h"

namespace ramstream::checkpoint {
namespace {

using testing::raw_safetensors;
using testing::safetensors_bytes;
using testing::u64_le;
using testing::write_file;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("ramstream_st_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string write(const std::string& bytes, const std::string& name = "t.safetensors") {
    const std::string path = (dir_ / name).string();
    write_file(path, bytes);
    return path;
  }
  // Opens `bytes` and expects an error containing every one of `needles`.
  void expect_error(const std::string& bytes, std::initializer_list<const char*> needles) {
    const std::string path = write(bytes, "bad.safetensors");
    Result<SafetensorsFile> r = SafetensorsFile::open(path);
    ASSERT_FALSE(r.ok()) << "opened a bad file";
    const std::string& m = r.error().message;
    EXPECT_EQ(m.rfind(path, 0), 0u) << m;
    for (const char* n : needles)
      EXPECT_NE(m.find(n), std::string::npos) << "'" << n << "' in " << m;
  }

  std::filesystem::path dir_;
};

TEST_F(SafetensorsTest, RoundTripsEveryDtype) {
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"f64", at::randn({2, 3}, at::kDouble)},
      {"f32", at::randn({4}, at::kFloat)},
      {"f16", at::randn({3, 1, 2}).to(at::kHalf)},
      {"bf16", at::randn({5}).to(at::kBFloat16)},
      {"i64", at::arange(6, at::kLong).view({2, 3})},
      {"i32", at::arange(-3, 3, at::kInt)},
      {"i16", at::arange(-2, 5, at::kShort)},
      {"i8", at::arange(-4, 4, at::kChar)},
      {"u8", at::arange(250, 256, at::kInt).to(at::kByte)},
      {"bool", at::tensor({1, 0, 1}, at::kInt).to(at::kBool)},
      {"scalar", at::scalar_tensor(3.5, at::kFloat)},
      {"empty", at::zeros({0, 4}, at::kFloat)},
  };
  const std::string path = write(safetensors_bytes(tensors, {{"format", "pt"}}));
  Result<SafetensorsFile> r = SafetensorsFile::open(path);
  ASSERT_TRUE(r.ok()) << r.error().message;
  const SafetensorsFile& f = r.value();
  EXPECT_EQ(f.names().size(), tensors.size());
  EXPECT_EQ(f.metadata().at("format"), "pt");
  for (const auto& [name, t] : tensors) {
    Result<at::Tensor> got = f.tensor(name);
    ASSERT_TRUE(got.ok()) << got.error().message;
    EXPECT_EQ(got.value().scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(got.value().sizes(), t.sizes()) << name;
    EXPECT_TRUE(at::equal(got.value(), t)) << name;
    const SafetensorInfo& info = *f.info(name).value();
    EXPECT_EQ(info.end - info.begin, static_cast<uint64_t>(t.numel() * t.element_size()));
  }
  EXPECT_EQ(f.info("f16").value()->dtype, SafetensorsDtype::kF16);
  EXPECT_EQ(f.info("f64").value()->shape, (std::vector<int64_t>{2, 3}));
  // File order: ascending offsets.
  EXPECT_EQ(f.names().front(), "f64");
  EXPECT_FALSE(f.info("nope").ok());
  EXPECT_NE(f.tensor("nope").error().message.find("'nope'"), std::string::npos);
}

TEST_F(SafetensorsTest, ReadIntoConvertsAndChecksShape) {
  const at::Tensor w = at::randn({3, 4}).to(at::kBFloat16);
  const std::string path = write(safetensors_bytes({{"w", w}}));
  SafetensorsFile f = SafetensorsFile::open(path).value_or_throw();
  at::Tensor dst = at::zeros({3, 4}, at::kFloat);
  ASSERT_TRUE(f.read_into("w", dst).ok());
  EXPECT_TRUE(at::equal(dst, w.to(at::kFloat)));
  at::Tensor wrong = at::zeros({4, 3});
  Status st = f.read_into("w", wrong);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("[3, 4]"), std::string::npos) << st.error().message;
  EXPECT_NE(st.error().message.find("[4, 3]"), std::string::npos) << st.error().message;
}

TEST_F(SafetensorsTest, UnalignedDataIsCopied) {
  // A 1-byte tensor first leaves the F32 tensor at an odd address.
  const std::string header = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})";
  const float vals[2] = {1.5f, -2.0f};
  std::string data(1, '\x07');
  data.append(reinterpret_cast<const char*>(vals), sizeof(vals));
  SafetensorsFile f = SafetensorsFile::open(write(raw_safetensors(header, data))).value_or_throw();
  at::Tensor dst = at::zeros({2}, at::kDouble);
  ASSERT_TRUE(f.read_into("b", dst).ok());
  EXPECT_DOUBLE_EQ(dst[0].item<double>(), 1.5);
  EXPECT_DOUBLE_EQ(dst[1].item<double>(), -2.0);
  EXPECT_EQ(f.tensor("a").value()[0].item<uint8_t>(), 7);
}

TEST_F(SafetensorsTest, HostileFiles) {
  const std::string ok = safetensors_bytes({{"w", at::ones({2, 2})}});
  auto entry = [](const std::string& dtype, const std::string& shape, const std::string& offs) {
    return R"({"w":{"dtype":")" + dtype + R"(","shape":)" + shape + R"(,"data_offsets":)" + offs +
           "}}";
  };
  const std::string data16(16, '\0');

  expect_error("", {"truncated"});
  expect_error("abc", {"truncated"});
  expect_error(ok.substr(0, ok.size() - 1), {"'w'", "past"});
  expect_error(ok.substr(0, 20), {"header length", "past end of file"});
  expect_error(u64_le(1000) + "{}", {"past end of file"});
  expect_error(u64_le(~0ull) + "{}", {"exceeds"});
  expect_error(u64_le(SafetensorsFile::kMaxHeaderBytes + 1) + "{}", {"exceeds"});
  expect_error(raw_safetensors("{\"w\": [", ""), {"invalid JSON"});
  expect_error(raw_safetensors("[1,2]", ""), {"array", "expected an object"});
  expect_error(raw_safetensors("\"x\"", ""), {"expected an object"});
  expect_error(raw_safetensors(R"({"w": 5})", ""), {"'w'", "must be an object"});
  expect_error(raw_safetensors(R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", data16),
               {"'w'", "dtype"});
  expect_error(raw_safetensors(entry("F8_E4M3", "[4]", "[0,4]"), data16),
               {"'w'", "unsupported dtype 'F8_E4M3'", "BF16"});
  expect_error(raw_safetensors(entry("F32", "[-1,4]", "[0,16]"), data16), {"'w'", "negative"});
  expect_error(raw_safetensors(entry("F32", "[2.5]", "[0,16]"), data16), {"'w'", "integer"});
  expect_error(raw_safetensors(entry("F32", "4", "[0,16]"), data16), {"'w'", "shape"});
  expect_error(raw_safetensors(entry("F32", "[4294967296,4294967296]", "[0,16]"), data16),
               {"'w'", "overflow"});
  expect_error(raw_safetensors(entry("F64", "[2305843009213693952]", "[0,16]"), data16),
               {"'w'", "overflow"});
  expect_error(raw_safetensors(entry("F32", "[99999999999999999999]", "[0,16]"), data16),
               {"'w'", "integer"});
  expect_error(raw_safetensors(entry("F32", "[4]", "[0,12]"), data16),
               {"'w'", "needs 16 bytes", "span 12"});
  expect_error(raw_safetensors(entry("F16", "[4]", "[0,16]"), data16), {"'w'", "needs 8 bytes"});
  expect_error(raw_safetensors(entry("F32", "[4]", "[8,24]"), data16), {"'w'", "past"});
  expect_error(raw_safetensors(entry("F32", "[0]", "[16,8]"), data16), {"'w'", "end before begin"});
  expect_error(raw_safetensors(entry("F32", "[4]", "[-4,12]"), data16), {"'w'", "data_offsets"});
  expect_error(raw_safetensors(entry("F32", "[4]", "[0]"), data16), {"'w'", "data_offsets"});
  expect_error(raw_safetensors(entry("F32", "[4]", "[0,18446744073709551615]"), data16),
               {"'w'", "past"});
  expect_error(raw_safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                               data16),
               {"'a'", "'b'", "overlap"});
  expect_error(raw_safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                               data16),
               {"'a'", "twice"});
  expect_error(raw_safetensors(R"({"__metadata__": {"k": 1}})", ""), {"__metadata__", "'k'"});
  expect_error(raw_safetensors(R"({"__metadata__": []})", ""), {"__metadata__"});
  // Deep or dense headers are refused while parsing, before the tree grows.
  expect_error(raw_safetensors(std::string(100000, '[') + std::string(100000, ']'), ""),
               {"header:1:9:", "nest deeper"});
  {
    std::string dense = "{\"__metadata__\": {}, \"x\": [";
    for (int i = 0; i < (1 << 22); ++i) dense += i ? ",0" : "0";
    expect_error(raw_safetensors(dense + "]}", ""), {"more than", "values"});
  }
  expect_error(raw_safetensors("{\"w\xff\": 1}", ""), {"invalid JSON"});
  // A directory is not a file.
  Result<SafetensorsFile> d = SafetensorsFile::open(dir_.string());
  ASSERT_FALSE(d.ok());
  EXPECT_FALSE(SafetensorsFile::open((dir_ / "missing").string()).ok());
}

TEST_F(SafetensorsTest, EmptyHeaderAndGapsAreFine) {
  Result<SafetensorsFile> r = SafetensorsFile::open(write(raw_safetensors("{}", "")));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE(r.value().names().empty());
  // Trailing spaces (the reference writer's padding) and an unused gap in the blob.
  r = SafetensorsFile::open(
      write(raw_safetensors(R"({"w":{"dtype":"I8","shape":[2],"data_offsets":[4,6]}}   )",
                            std::string("\0\0\0\0\x05\x06", 6))));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r.value().tensor("w").value()[1].item<int8_t>(), 6);
}

// Random corruptions of a valid file either open cleanly (and every tensor reads) or give an
// error; nothing crashes or reads out of bounds (run under ASan to make the latter visible).
TEST_F(SafetensorsTest, FuzzedMutationsNeverCrash) {
  const std::string ok = safetensors_bytes(
      {{"a", at::randn({3, 5})}, {"b", at::arange(7, at::kLong)}, {"c", at::ones({2}, at::kBool)}},
      {{"format", "pt"}});
  std::mt19937 rng(1234);
  int opened = 0;
  for (int iter = 0; iter < 1500; ++iter) {
    std::string bytes = ok;
    const int kind = iter % 3;
    if (kind == 0) {
      bytes.resize(rng() % bytes.size());
    } else {
      const int flips = 1 + rng() % 4;
      for (int k = 0; k < flips; ++k) {
        // Mostly hit the length and the header, where parsing happens.
        const size_t pos = rng() % std::min<size_t>(bytes.size(), kind == 1 ? 8 : 260);
        bytes[pos] = static_cast<char>(kind == 1 ? bytes[pos] ^ (1 << (rng() % 8)) : rng());
      }
    }
    const std::string path = write(bytes, "fuzz.safetensors");
    Result<SafetensorsFile> r = SafetensorsFile::open(path);
    if (!r.ok()) {
      EXPECT_EQ(r.error().message.rfind(path, 0), 0u);
      continue;
    }
    ++opened;
    for (const std::string& n : r.value().names()) {
      EXPECT_TRUE(r.value().tensor(n).ok());
    }
  }
  EXPECT_GT(opened, 0);
}

}  // namespace
}  // namespace ramstream::checkpoint
