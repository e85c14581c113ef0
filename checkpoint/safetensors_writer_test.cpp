#include "checkpoint/safetensors_writer.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "checkpoint/hf_loader.h"
#include "checkpoint/safetensors.h"
#include "checkpoint/safetensors_test_util.h"

namespace ramstream::checkpoint {
namespace {

namespace fs = std::filesystem;

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Same bytes, NaN payloads included (at::equal would call NaN != NaN).
void expect_same_bytes(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
  ASSERT_EQ(a.scalar_type(), b.scalar_type()) << what;
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  const at::Tensor ca = a.contiguous(), cb = b.contiguous();
  EXPECT_EQ(std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.numel() * ca.element_size()), 0) << what;
}

class SafetensorsWriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(11);
    dir_ = fs::temp_directory_path() / ("ramstream_st_writer_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) { return (dir_ / name).string(); }
  std::vector<std::string> listing(const std::string& sub = "") {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_ / sub)) names.push_back(e.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }
  fs::path dir_;
};

TEST_F(SafetensorsWriterTest, RoundTripsEveryDtypeBitwise) {
  at::Tensor f32 = at::randn({3, 5});
  f32[0][0] = std::numeric_limits<float>::quiet_NaN();
  f32[0][1] = -0.0f;
  f32[0][2] = std::numeric_limits<float>::infinity();
  f32[0][3] = 1e-40f;  // subnormal
  const std::vector<std::pair<std::string, at::Tensor>> cases = {
      {"f32", f32},
      {"f16", at::randn({4, 3}).to(at::kHalf)},
      {"bf16", at::randn({7}).to(at::kBFloat16)},
      {"i64", at::randint(-(1ll << 60), 1ll << 60, {2, 3}, at::kLong)},
      {"f64", at::randn({2, 2}, at::kDouble)},
      {"i32", at::arange(-3, 3, at::kInt)},
      {"i16", at::arange(-2, 5, at::kShort)},
      {"i8", at::arange(-4, 4, at::kChar)},
      {"u8", at::arange(250, 256, at::kInt).to(at::kByte)},
      {"bool", at::tensor({1, 0, 1}, at::kInt).to(at::kBool)},
      {"scalar", at::scalar_tensor(2.5, at::kFloat)},
      {"empty", at::empty({0, 4})},
  };
  std::vector<TensorSource> src;
  for (const auto& [n, t] : cases) src.push_back(TensorSource::from_tensor(n, t));
  SafetensorsWriteOptions opts;
  opts.metadata = {{"step", "500"}};
  opts.chunk_bytes = 8;  // many chunks per tensor
  const Status st = write_safetensors(path("all.safetensors"), src, opts);
  ASSERT_TRUE(st.ok()) << st.error().message;

  SafetensorsFile f = SafetensorsFile::open(path("all.safetensors")).value_or_throw();
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("step"), "500");
  ASSERT_EQ(f.names().size(), cases.size());
  for (const auto& [n, t] : cases) {
    const SafetensorInfo& info = *f.info(n).value();
    // Every tensor starts aligned to its element size (data start is 8-aligned too).
    EXPECT_EQ(info.begin % safetensors_dtype_size(info.dtype), 0u) << n;
    expect_same_bytes(f.tensor(n).value(), t, n);
  }
  // The data section starts 8-aligned.
  const std::string bytes = read_all(path("all.safetensors"));
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
}

TEST_F(SafetensorsWriterTest, SameBytesAsTheReferenceLayout) {
  // The hand-written reference layout in safetensors_test_util.h (metadata first, compact JSON,
  // space padding) and the writer agree byte for byte.
  const std::vector<std::pair<std::string, at::Tensor>> t = {{"b", at::randn({3, 2})},
                                                             {"a", at::randn({5})}};
  std::vector<TensorSource> src;
  for (const auto& [n, x] : t) src.push_back(TensorSource::from_tensor(n, x));
  ASSERT_TRUE(write_safetensors(path("w.safetensors"), src).ok());
  EXPECT_EQ(read_all(path("w.safetensors")), testing::safetensors_bytes(t, {{"format", "pt"}}));
}

TEST_F(SafetensorsWriterTest, ConvertsChunkWiseLikeTorch) {
  // fp32 master -> bf16/f16 on disk equals torch's .to() bit for bit, for contiguous, strided
  // 1-D, strided N-D (incl. a row bigger than the staging buffer) and scalar sources.
  const at::Tensor base = at::randn({37, 11}) * 100;
  const std::vector<std::pair<std::string, at::Tensor>> cases = {
      {"contiguous", base},     {"rows", base.narrow(0, 3, 20)},
      {"transposed", base.t()}, {"strided1d", base.select(1, 4)},
      {"scalar", base[2][2]},
  };
  for (at::ScalarType dtype : {at::kBFloat16, at::kHalf, at::kFloat, at::kDouble}) {
    for (size_t chunk : {size_t{8}, size_t{40}, size_t{16u << 20}}) {
      std::vector<TensorSource> src;
      for (const auto& [n, t] : cases) src.push_back(TensorSource::from_tensor(n, t, dtype));
      SafetensorsWriteOptions opts;
      opts.chunk_bytes = chunk;
      ASSERT_TRUE(write_safetensors(path("c.safetensors"), src, opts).ok());
      SafetensorsFile f = SafetensorsFile::open(path("c.safetensors")).value_or_throw();
      for (const auto& [n, t] : cases) {
        expect_same_bytes(f.tensor(n).value(), t.to(dtype),
                          n + " " + c10::toString(dtype) + " chunk " + std::to_string(chunk));
      }
    }
  }
}

TEST_F(SafetensorsWriterTest, FillCallbackGetsAdjacentRanges) {
  TensorSource s;
  s.name = "counter";
  s.dtype = at::kByte;
  s.shape = {5, 7};
  std::vector<std::pair<uint64_t, size_t>> calls;
  s.fill = [&](uint64_t off, void* dst, size_t n) -> Status {
    calls.emplace_back(off, n);
    for (size_t i = 0; i < n; ++i) static_cast<uint8_t*>(dst)[i] = static_cast<uint8_t>(off + i);
    return Ok{};
  };
  SafetensorsWriteOptions opts;
  opts.chunk_bytes = 16;
  ASSERT_TRUE(write_safetensors(path("f.safetensors"), {s}, opts).ok());
  EXPECT_EQ(calls, (std::vector<std::pair<uint64_t, size_t>>{{0, 16}, {16, 16}, {32, 3}}));
  at::Tensor t = SafetensorsFile::open(path("f.safetensors")).value().tensor("counter").value();
  EXPECT_TRUE(at::equal(t, at::arange(35, at::kInt).to(at::kByte).view({5, 7})));
}

TEST_F(SafetensorsWriterTest, RefusesBadSourcesBeforeWriting) {
  auto error_of = [&](std::vector<TensorSource> src) {
    Status st = write_safetensors(path("bad.safetensors"), src);
    EXPECT_FALSE(st.ok());
    EXPECT_FALSE(fs::exists(path("bad.safetensors")));
    return st.ok() ? std::string() : st.error().message;
  };
  const at::Tensor x = at::ones({2, 3});
  auto has = [](const std::string& m, const char* needle) {
    return m.find(needle) != std::string::npos;
  };
  std::string m = error_of({TensorSource::from_tensor("a", x), TensorSource::from_tensor("a", x)});
  EXPECT_TRUE(has(m, "'a'") && has(m, "twice") && has(m, "bad.safetensors")) << m;
  EXPECT_TRUE(has(error_of({TensorSource::from_tensor("__metadata__", x)}), "reserved"));
  EXPECT_TRUE(has(error_of({TensorSource::from_tensor("c", x, at::kComplexFloat)}), "no safet"));
  TensorSource wrong = TensorSource::from_tensor("w", x);
  wrong.shape = {3, 2};
  m = error_of({wrong});
  EXPECT_TRUE(has(m, "[2, 3]") && has(m, "[3, 2]")) << m;
  TensorSource neither;
  neither.name = "n";
  EXPECT_TRUE(has(error_of({neither}), "exactly one"));
  TensorSource negative = neither;
  negative.shape = {-1};
  negative.fill = [](uint64_t, void*, size_t) -> Status { return Ok{}; };
  EXPECT_TRUE(has(error_of({negative}), "negative"));
  EXPECT_TRUE(has(error_of({TensorSource::from_tensor("\xff\xfe", x)}), "JSON"));
}

TEST_F(SafetensorsWriterTest, FailureMidWriteLeavesPreviousFileIntact) {
  const std::vector<std::pair<std::string, at::Tensor>> old = {{"old", at::ones({3})}};
  testing::write_file(path("m.safetensors"), testing::safetensors_bytes(old));
  const std::string before = read_all(path("m.safetensors"));

  TensorSource throws;
  throws.name = "boom";
  throws.dtype = at::kFloat;
  throws.shape = {100};
  throws.fill = [](uint64_t off, void*, size_t) -> Status {
    if (off > 0) throw std::runtime_error("disk source vanished");
    return Ok{};
  };
  SafetensorsWriteOptions opts;
  opts.chunk_bytes = 64;
  Status st = write_safetensors(path("m.safetensors"),
                                {TensorSource::from_tensor("a", at::ones({50})), throws}, opts);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("'boom'"), std::string::npos) << st.error().message;
  EXPECT_NE(st.error().message.find("disk source vanished"), std::string::npos);

  // A hook failing after the first tensor.
  opts.after_tensor = [](const std::string& name) -> Status { return Error{"stop after " + name}; };
  st = write_safetensors(path("m.safetensors"), {TensorSource::from_tensor("a", at::ones({50}))},
                         opts);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(read_all(path("m.safetensors")), before);
  EXPECT_EQ(listing(), std::vector<std::string>{"m.safetensors"});  // no temp file left

  // An unwritable destination names the path.
  st = write_safetensors(path("no/such/dir/x.safetensors"), {});
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("no/such/dir/x.safetensors"), std::string::npos);
}

TEST_F(SafetensorsWriterTest, ShardPlanMatchesHuggingFaceHub) {
  // huggingface_hub's docstring example: limit 10, sizes [6, 6, 2, 6, 2, 2] -> [6], [6+2],
  // [6+2+2]; and a tensor over the limit gets its own shard before the one being filled.
  auto sized = [](std::vector<int64_t> sizes) {
    std::vector<TensorSource> v;
    for (size_t i = 0; i < sizes.size(); ++i) {
      v.push_back(
          TensorSource::from_tensor("t" + std::to_string(i), at::zeros({sizes[i]}), at::kByte));
    }
    return v;
  };
  using Plan = std::vector<std::vector<size_t>>;
  EXPECT_EQ(plan_shards(sized({6, 6, 2, 6, 2, 2}), 10), (Plan{{0}, {1, 2}, {3, 4, 5}}));
  EXPECT_EQ(plan_shards(sized({3, 20, 4, 5}), 10), (Plan{{1}, {0, 2}, {3}}));
  EXPECT_EQ(plan_shards(sized({3, 4}), 100), (Plan{{0, 1}}));
  EXPECT_EQ(plan_shards({}, 10), Plan{});
}

TEST_F(SafetensorsWriterTest, FolderShardsWithIndexAndCleansStaleFiles) {
  std::vector<std::pair<std::string, at::Tensor>> t;
  std::vector<TensorSource> src;
  for (int i = 0; i < 5; ++i) {
    t.emplace_back("w" + std::to_string(i), at::randn({4, 4}));  // 64 bytes each
    src.push_back(TensorSource::from_tensor(t.back().first, t.back().second));
  }
  fs::create_directories(dir_ / "out");
  testing::write_file(path("out/model.safetensors"), "stale single file");
  testing::write_file(path("out/model-00007-of-00009.safetensors"), "stale shard");
  testing::write_file(path("out/tokenizer.json"), "{}");

  Result<SafetensorsFolder> r = write_safetensors_folder(path("out"), src, 150);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE(r.value().sharded);
  EXPECT_EQ(r.value().total_size, 5u * 64);
  EXPECT_EQ(r.value().files,
            (std::vector<std::string>{
                "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                "model-00003-of-00003.safetensors", "model.safetensors.index.json"}));
  EXPECT_EQ(
      listing("out"),
      (std::vector<std::string>{
          "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
          "model-00003-of-00003.safetensors", "model.safetensors.index.json", "tokenizer.json"}));
  // The index exactly as transformers writes it: sorted keys, indent 2, trailing newline.
  const std::string index_text = read_all(path("out/model.safetensors.index.json"));
  const nlohmann::json index = nlohmann::json::parse(index_text);
  EXPECT_EQ(index_text, index.dump(2) + "\n");
  EXPECT_EQ(index["metadata"]["total_size"], 320);
  EXPECT_EQ(index["metadata"]["total_parameters"], 80);
  EXPECT_EQ(index["weight_map"]["w0"], "model-00001-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["w2"], "model-00002-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["w4"], "model-00003-of-00003.safetensors");
  const auto files = hf_safetensors_files(path("out"));
  ASSERT_TRUE(files.ok()) << files.error().message;
  ASSERT_EQ(files.value().size(), 3u);
  for (const auto& [n, x] : t) {
    const std::string shard = path("out/" + index["weight_map"][n].get<std::string>());
    expect_same_bytes(SafetensorsFile::open(shard).value().tensor(n).value(), x, n);
  }

  // Everything fits: one model.safetensors, and the old shards and index are gone.
  r = write_safetensors_folder(path("out"), src, 1u << 20);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_FALSE(r.value().sharded);
  EXPECT_EQ(listing("out"), (std::vector<std::string>{"model.safetensors", "tokenizer.json"}));
}

}  // namespace
}  // namespace ramstream::checkpoint
