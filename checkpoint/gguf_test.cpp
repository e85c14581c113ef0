// GGUF reader tests: dequantisation of every supported type against gguf-py (llama.cpp's Python
// port of ggml-quants.c), metadata of every value type, hostile files (each must fail with an
// error naming the file and the problem, never crash), Llama import incl. the RoPE row
// un-permutation, and, when scripts/fetch_default_model.sh has cached it, SmolLM2-135M-Instruct
// Q4_1 against transformers' forward of the same GGUF (tests/fixtures/gguf/, written by
// tests/fixtures/make_gguf_reference.py).
#include "checkpoint/gguf.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "autograd/model.h"
#include "checkpoint/safetensors.h"
#include "model/hf_names.h"

namespace ramstream::checkpoint {
namespace {

namespace fs = std::filesystem;

const std::string kFixtures = "tests/fixtures/gguf/";
const std::string kSeeds = "tests/fixtures/fuzz/gguf/";

// ---- a byte-level GGUF writer for hostile files ------------------------------------------------

struct Bytes {
  std::string s;
  template <class T>
  Bytes& put(T v) {
    s.append(reinterpret_cast<const char*>(&v), sizeof v);
    return *this;
  }
  Bytes& u32(uint32_t v) { return put(v); }
  Bytes& u64(uint64_t v) { return put(v); }
  Bytes& i64(int64_t v) { return put(v); }
  Bytes& str(const std::string& v) {
    u64(v.size());
    s += v;
    return *this;
  }
  Bytes& raw(const std::string& v) {
    s += v;
    return *this;
  }
  Bytes& pad(uint64_t align) {
    s.append((align - s.size() % align) % align, '\0');
    return *this;
  }
};

constexpr uint32_t kU32 = 4, kStr = 8, kArr = 9, kU8 = 0;
constexpr uint32_t kF32 = 0, kQ8_0 = 8;

Bytes header(uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
  Bytes b;
  b.raw("GGUF").u32(version).u64(n_tensors).u64(n_kv);
  return b;
}

struct TensorSpec {
  std::string name;
  std::vector<int64_t> ne;
  uint32_t type = kF32;
  std::string data;
};

// A valid v3 file: the given kv bytes (already encoded, n_kv pairs), then the tensors packed at
// 32-byte aligned offsets. The last tensor ends exactly at EOF, so every shorter prefix is
// truncated.
std::string valid_file(const std::vector<TensorSpec>& tensors, const std::string& kv = "",
                       uint64_t n_kv = 0) {
  Bytes b = header(3, tensors.size(), n_kv);
  b.raw(kv);
  uint64_t offset = 0;
  std::string data;
  for (const TensorSpec& t : tensors) {
    b.str(t.name).u32(static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) b.i64(d);
    b.u32(t.type).u64(offset);
    data.append((offset - data.size()), '\0');
    data += t.data;
    offset = (data.size() + 31) / 32 * 32;
  }
  b.pad(32).raw(data);
  return b.s;
}

std::string floats(std::vector<float> v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

// One tensor info with free fields, for broken infos.
Bytes tensor_info(const std::string& name, uint32_t n_dims, std::vector<int64_t> ne, uint32_t type,
                  uint64_t offset) {
  Bytes b;
  b.str(name).u32(n_dims);
  for (int64_t d : ne) b.i64(d);
  b.u32(type).u64(offset);
  return b;
}

Result<GgufFile> open_hostile(const std::string& bytes) {
  return GgufFile::open_bytes(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                              "hostile.gguf");
}

// The file must be refused with a message naming it and containing `needle`.
void expect_refused(const std::string& bytes, const std::string& needle) {
  Result<GgufFile> r = open_hostile(bytes);
  ASSERT_FALSE(r.ok()) << "accepted; expected an error containing '" << needle << "'";
  const std::string& m = r.error().message;
  EXPECT_EQ(m.rfind("hostile.gguf: ", 0), 0u) << m;
  EXPECT_NE(m.find(needle), std::string::npos) << "message: " << m << "\nwanted: " << needle;
  std::printf("  refused: %s\n", m.c_str());
}

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("gguf_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name, const std::string& bytes) const {
    const std::string p = (path_ / name).string();
    std::ofstream(p, std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return p;
  }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

// ---- dequantisation and metadata against gguf-py -----------------------------------------------

TEST(Gguf, DequantiseEveryTypeBitExactAgainstGgufPy) {
  const GgufFile f = GgufFile::open(kFixtures + "quants.gguf").value_or_throw();
  EXPECT_EQ(f.version(), 3u);
  int checked = 0;
  for (const std::string& name : f.tensor_names()) {
    if (name.rfind("q.", 0) != 0) continue;
    const std::string type = name.substr(2);
    const GgufTensorInfo& info = *f.info(name).value();
    EXPECT_EQ(info.ne, (std::vector<int64_t>{512, 2})) << name;
    Result<at::Tensor> ours = f.dequantize(name);
    ASSERT_TRUE(ours.ok()) << ours.error().message;
    const at::Tensor ref = f.dequantize("ref." + type).value_or_throw();
    ASSERT_EQ(ours.value().sizes(), at::IntArrayRef({2, 512})) << name;
    const double err = (ours.value() - ref).abs().max().item<double>();
    std::printf("  %-6s (%-5s) max abs diff vs gguf-py %.3g, |ref| max %.3g\n", type.c_str(),
                ggml_type_name(info.type_id).c_str(), err, ref.abs().max().item<double>());
    // Same float operations in the same order: bit-exact.
    EXPECT_TRUE(at::equal(ours.value(), ref)) << name << ": max abs diff " << err;
    ++checked;
  }
  EXPECT_EQ(checked, 13);  // F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K
}

TEST(Gguf, Fp16Conversion) {
  EXPECT_EQ(ggml::fp16_to_fp32(0x3c00), 1.0f);
  EXPECT_EQ(ggml::fp16_to_fp32(0xc000), -2.0f);
  EXPECT_EQ(ggml::fp16_to_fp32(0x7bff), 65504.0f);
  EXPECT_EQ(ggml::fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(ggml::fp16_to_fp32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_TRUE(std::isinf(ggml::fp16_to_fp32(0x7c00)));
  EXPECT_TRUE(std::isnan(ggml::fp16_to_fp32(0x7e00)));
  EXPECT_TRUE(std::signbit(ggml::fp16_to_fp32(0x8000)));
  // Every half against c10's conversion.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float ref =
        static_cast<float>(c10::Half(static_cast<uint16_t>(h), c10::Half::from_bits()));
    const float ours = ggml::fp16_to_fp32(static_cast<uint16_t>(h));
    if (std::isnan(ref)) {
      ASSERT_TRUE(std::isnan(ours)) << h;
    } else {
      ASSERT_EQ(ours, ref) << h;
    }
  }
}

TEST(Gguf, MetadataOfEveryValueType) {
  const GgufFile f = GgufFile::open(kFixtures + "quants.gguf").value_or_throw();
  EXPECT_EQ(f.get_string("general.architecture").value(), "test");
  EXPECT_EQ(f.get_int("test.u8").value(), 200);
  EXPECT_EQ(f.get_int("test.i8").value(), -100);
  EXPECT_EQ(f.get_int("test.u16").value(), 60000);
  EXPECT_EQ(f.get_int("test.i16").value(), -30000);
  EXPECT_EQ(f.get_int("test.u32").value(), 4000000000ll);
  EXPECT_EQ(f.get_int("test.i32").value(), -2000000000ll);
  EXPECT_EQ(f.get_int("test.i64").value(), -9000000000000000000ll);
  // 1.8e19 does not fit int64: an error naming the key, while the raw value is there.
  Result<int64_t> big = f.get_int("test.u64");
  ASSERT_FALSE(big.ok());
  EXPECT_NE(big.error().message.find("key 'test.u64'"), std::string::npos);
  EXPECT_EQ(f.find("test.u64")->u, 18000000000000000000ull);
  EXPECT_EQ(f.get_float("test.f32").value(), 0.25);
  EXPECT_EQ(f.get_float("test.f64").value(), -1.0e300);
  EXPECT_EQ(f.get_bool("test.bool").value(), true);
  EXPECT_EQ(f.get_string("test.str").value(), "h\xc3\xa9llo");
  EXPECT_EQ(f.get_int_array("test.arr_i32").value(), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(f.get_float_array("test.arr_f32").value(), (std::vector<double>{0.5, -1.5}));
  EXPECT_EQ(f.get_string_array("test.arr_str").value(), (std::vector<std::string>{"a", "", "ccc"}));
  const GgufValue* bools = f.find("test.arr_bool");
  ASSERT_NE(bools, nullptr);
  EXPECT_EQ(bools->describe(), "array[bool; 2]");
  EXPECT_EQ(bools->scalar_at(0)->u, 1u);
  EXPECT_EQ(bools->scalar_at(1)->u, 0u);
  EXPECT_FALSE(bools->scalar_at(2).has_value());
  const GgufValue* nested = f.find("test.nested");
  ASSERT_NE(nested, nullptr);
  EXPECT_EQ(nested->describe(), "array[array; 2]");
  ASSERT_EQ(nested->arrays.size(), 2u);
  EXPECT_EQ(nested->arrays[0].count, 2u);
  EXPECT_EQ(nested->arrays[1].scalar_at(0)->as_int(), 3);
  // Wrong types and missing keys name the key and what was found.
  Result<std::string> wrong = f.get_string("test.u8");
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.error().message.find("key 'test.u8': expected a string, got u8"),
            std::string::npos)
      << wrong.error().message;
  Result<std::vector<int64_t>> wrong_arr = f.get_int_array("test.arr_str");
  ASSERT_FALSE(wrong_arr.ok());
  EXPECT_NE(wrong_arr.error().message.find("array[string; 3]"), std::string::npos);
  Result<double> missing = f.get_float("no.such.key");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("quants.gguf: key 'no.such.key': missing"),
            std::string::npos);
}

TEST(Gguf, V2AndV3Seeds) {
  const GgufFile v3 = GgufFile::open(kSeeds + "tensors.gguf").value_or_throw();
  const GgufFile v2 = GgufFile::open(kSeeds + "tensors_v2.gguf").value_or_throw();
  EXPECT_EQ(v3.version(), 3u);
  EXPECT_EQ(v2.version(), 2u);
  EXPECT_EQ(v2.tensor_names(), v3.tensor_names());
  for (const std::string& n : v3.tensor_names()) {
    EXPECT_TRUE(at::equal(v2.dequantize(n).value(), v3.dequantize(n).value())) << n;
  }
  EXPECT_EQ(v3.alignment(), 32u);
  EXPECT_EQ(v3.data_offset() % 32, 0u);
}

TEST(Gguf, TorchShapeReversesNe) {
  // ne = [3, 2]: 2 rows of 3 -> torch [2, 3], row-major.
  const std::string bytes = valid_file({{"w", {3, 2}, kF32, floats({1, 2, 3, 4, 5, 6})}});
  const GgufFile f = open_hostile(bytes).value_or_throw();
  const at::Tensor t = f.dequantize("w").value();
  ASSERT_EQ(t.sizes(), at::IntArrayRef({2, 3}));
  EXPECT_EQ(t[1][0].item<float>(), 4.0f);
  EXPECT_EQ(f.info("w").value()->torch_shape(), (std::vector<int64_t>{2, 3}));
  EXPECT_FALSE(f.info("nope").ok());
}

// ---- hostile files ------------------------------------------------------------------------------

TEST(GgufHostile, EveryTruncationIsAnError) {
  std::string kv;
  kv += Bytes().str("general.architecture").u32(kStr).str("llama").s;
  kv += Bytes().str("a.list").u32(kArr).u32(kU32).u64(2).u32(7).u32(8).s;
  const std::string good =
      valid_file({{"a", {4}, kF32, floats({1, 2, 3, 4})}, {"b", {2}, kF32, floats({5, 6})}}, kv, 2);
  ASSERT_TRUE(open_hostile(good).ok()) << open_hostile(good).error().message;
  for (size_t n = 0; n < good.size(); ++n) {
    Result<GgufFile> r = open_hostile(good.substr(0, n));
    ASSERT_FALSE(r.ok()) << "prefix of " << n << " bytes accepted";
    ASSERT_EQ(r.error().message.rfind("hostile.gguf: ", 0), 0u) << r.error().message;
  }
  // Through the mmap path too, including an empty file.
  TempDir dir;
  Result<GgufFile> empty = GgufFile::open(dir.file("empty.gguf", ""));
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.error().message.find("empty.gguf: truncated"), std::string::npos)
      << empty.error().message;
  Result<GgufFile> cut = GgufFile::open(dir.file("cut.gguf", good.substr(0, good.size() - 1)));
  ASSERT_FALSE(cut.ok());
  EXPECT_NE(cut.error().message.find("cut.gguf: tensor 'b'"), std::string::npos)
      << cut.error().message;
  Result<GgufFile> ok = GgufFile::open(dir.file("ok.gguf", good));
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  EXPECT_EQ(ok.value().get_int_array("a.list").value(), (std::vector<int64_t>{7, 8}));
  const std::string missing = dir.file("x", "") + ".missing";
  Result<GgufFile> none = GgufFile::open(missing);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().message.rfind(missing + ": ", 0), 0u) << none.error().message;
  EXPECT_NE(none.error().message.find("GGUF file"), std::string::npos) << none.error().message;
}

TEST(GgufHostile, HeaderFields) {
  expect_refused("GGU", "no room for the GGUF magic");
  expect_refused(Bytes().raw("GGUX").u32(3).u64(0).u64(0).s, "bad magic 'GGUX'");
  expect_refused(Bytes().raw("GGUF").u32(1).u32(0).u32(0).s, "GGUF version 1 is not supported");
  expect_refused(Bytes().raw("GGUF").u32(0x03000000).u64(0).u64(0).s, "big-endian");
  expect_refused(Bytes().raw("GGUF").u32(7).u64(0).u64(0).s, "unsupported GGUF version 7");
  expect_refused(Bytes().raw("GGUF").u32(3).u64(0).s, "metadata kv count: needs 8 bytes");
  expect_refused(header(3, uint64_t(1) << 60, 0).s, "tensor count 1152921504606846976");
  expect_refused(header(3, 0, ~uint64_t(0)).s, "metadata kv count 18446744073709551615");
  // No tensors, no kvs: a valid (empty) file.
  Result<GgufFile> empty = open_hostile(header(3, 0, 0).s);
  ASSERT_TRUE(empty.ok()) << empty.error().message;
  EXPECT_TRUE(empty.value().tensor_names().empty());
}

TEST(GgufHostile, Metadata) {
  auto with_kv = [](const Bytes& kv, uint64_t n = 1) { return header(3, 0, n).raw(kv.s).s; };
  // String length past EOF, in a key and in a value.
  expect_refused(header(3, 0, 1).u64(1000).raw("abcdefghijklm").s,
                 "metadata kv 0 key: string length 1000");
  expect_refused(header(3, 0, 1).u64(1000).raw("abcdefghijklm").s, "runs past end of file");
  expect_refused(with_kv(Bytes().str("k").u32(kStr).u64(uint64_t(1) << 62).raw("xyz")),
                 "key 'k': string length 4611686018427387904");
  // Unknown value type.
  expect_refused(with_kv(Bytes().str("k").u32(13).u32(0)), "key 'k': unknown value type 13");
  // Arrays of absurd length: element type u8, string, array.
  expect_refused(with_kv(Bytes().str("k").u32(kArr).u32(kU8).u64(uint64_t(1) << 62)),
                 "key 'k': array of 4611686018427387904 u8 elements cannot fit");
  expect_refused(with_kv(Bytes().str("k").u32(kArr).u32(kStr).u64(~uint64_t(0))),
                 "string elements cannot fit");
  expect_refused(with_kv(Bytes().str("k").u32(kArr).u32(kArr).u64(uint64_t(1) << 40)),
                 "array elements cannot fit");
  expect_refused(with_kv(Bytes().str("k").u32(kArr).u32(99).u64(1)),
                 "key 'k' (array element type): unknown value type 99");
  // Nested arrays: fine up to the depth limit, refused past it.
  auto nested = [](int depth) {
    Bytes b;
    b.str("k").u32(kArr);
    for (int d = 1; d < depth; ++d) b.u32(kArr).u64(1);
    b.u32(kU32).u64(1).u32(42);
    return b;
  };
  Result<GgufFile> ok = open_hostile(with_kv(nested(GgufFile::kMaxArrayDepth)));
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  const GgufValue* v = ok.value().find("k");
  for (int d = 1; d < GgufFile::kMaxArrayDepth; ++d) v = &v->arrays.at(0);
  EXPECT_EQ(v->scalar_at(0)->as_int(), 42);
  expect_refused(with_kv(nested(GgufFile::kMaxArrayDepth + 1)), "nested deeper than 8");
  // A string element past EOF inside an array names the element.
  expect_refused(with_kv(Bytes().str("k").u32(kArr).u32(kStr).u64(2).str("a").u64(50)),
                 "key 'k'[1]");
  // Duplicate keys; alignment that is not a power of two or not a u32.
  const Bytes a = Bytes().str("x").u32(kU32).u32(1);
  expect_refused(with_kv(Bytes().raw(a.s).raw(a.s), 2), "key 'x' appears twice");
  expect_refused(with_kv(Bytes().str("general.alignment").u32(kU32).u32(24)),
                 "key 'general.alignment': must be a u32 power of two, got u32 24");
  expect_refused(with_kv(Bytes().str("general.alignment").u32(kU32).u32(0)), "power of two");
  expect_refused(with_kv(Bytes().str("general.alignment").u32(kStr).str("32")), "got string");
}

TEST(GgufHostile, TensorInfos) {
  auto file = [](const Bytes& infos, uint64_t n, const std::string& data) {
    return header(3, n, 0).raw(infos.s).pad(32).raw(data).s;
  };
  const std::string data64(64, '\0');
  // Baseline: the helper makes valid files.
  ASSERT_TRUE(open_hostile(file(tensor_info("t", 1, {16}, kF32, 0), 1, data64)).ok());
  expect_refused(file(tensor_info("t", 1, {0}, kF32, 0), 1, data64),
                 "tensor 't': ne[0] = 0 (dims must be >= 1)");
  expect_refused(file(tensor_info("t", 2, {4, -3}, kF32, 0), 1, data64), "tensor 't': ne[1] = -3");
  expect_refused(
      file(tensor_info("t", 3, {int64_t(1) << 40, int64_t(1) << 40, 2}, kF32, 0), 1, data64),
      "overflow the element count");
  // Elements fit int64 but bytes do not.
  expect_refused(
      file(tensor_info("t", 2, {int64_t(1) << 31, int64_t(1) << 31}, kF32, 0), 1, data64),
      "overflow the byte count");
  expect_refused(
      file(tensor_info("t", 2, {int64_t(1) << 30, int64_t(1) << 20}, kF32, 0), 1, data64),
      "run past the 64-byte data section");
  expect_refused(file(tensor_info("t", 5, {1, 1, 1, 1, 1}, kF32, 0), 1, data64),
                 "tensor 't': n_dims 5 outside 1..4");
  expect_refused(file(tensor_info("t", 0, {}, kF32, 0), 1, data64), "n_dims 0 outside 1..4");
  expect_refused(file(tensor_info("t", 1, {16}, kF32, 1 << 20), 1, data64),
                 "tensor 't': bytes [1048576, 1048576 + 64) run past");
  expect_refused(file(tensor_info("t", 1, {16}, kF32, ~uint64_t(0) - 31), 1, data64), "run past");
  expect_refused(file(tensor_info("t", 1, {16}, kF32, 4), 1, data64),
                 "tensor 't': offset 4 is not a multiple of the 32-byte alignment");
  expect_refused(file(tensor_info("t", 1, {16}, 99, 0), 1, data64),
                 "tensor 't': unknown ggml type id 99");
  expect_refused(file(tensor_info("t", 1, {16}, 4, 0), 1, data64), "unknown ggml type id 4");
  expect_refused(file(tensor_info("t", 1, {33}, kQ8_0, 0), 1, data64),
                 "tensor 't': ne[0] = 33 is not a multiple of q8_0's block size 32");
  expect_refused(file(Bytes()
                          .raw(tensor_info("a", 1, {16}, kF32, 0).s)
                          .raw(tensor_info("b", 1, {8}, kF32, 32).s),
                      2, data64),
                 "tensors 'a' and 'b' overlap");
  expect_refused(file(Bytes()
                          .raw(tensor_info("a", 1, {8}, kF32, 0).s)
                          .raw(tensor_info("a", 1, {8}, kF32, 32).s),
                      2, data64),
                 "tensor 'a' appears twice");
  expect_refused(header(3, 1, 0).raw(tensor_info("t", 1, {16}, kF32, 0).s).s,
                 "data section would start at");
  // A tensor info cut inside its dims (the long name gets it past the tensor-count check).
  const std::string name(40, 't');
  expect_refused(header(3, 1, 0).str(name).u32(2).i64(4).s,
                 "tensor '" + name + "' ne[1]: needs 8 bytes");
}

TEST(GgufHostile, UndequantisableTypeNamesTensorAndType) {
  // IQ2_XXS (16): its size is known, so the file opens, but there is no dequantiser.
  const std::string bytes = header(3, 1, 0)
                                .raw(tensor_info("blk.0.attn_q.weight", 1, {256}, 16, 0).s)
                                .pad(32)
                                .raw(std::string(66, '\0'))
                                .s;
  const GgufFile f = open_hostile(bytes).value_or_throw();
  Result<at::Tensor> t = f.dequantize("blk.0.attn_q.weight");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.error().message.find(
                "hostile.gguf: tensor 'blk.0.attn_q.weight': no dequantiser for ggml type "
                "iq2_xxs (id 16)"),
            std::string::npos)
      << t.error().message;
}

TEST(GgufHostile, SeedMutationsNeverCrash) {
  // A cheap in-test fuzz: flip bytes of the seed files at every position (one at a time) and
  // parse everything. The libFuzzer target (gguf_fuzz) does this properly.
  for (const char* seed : {"kv_only.gguf", "tensors.gguf", "tiny_llama.gguf"}) {
    std::ifstream in(kSeeds + seed, std::ios::binary);
    const std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ASSERT_FALSE(good.empty()) << seed;
    int opened = 0;
    for (size_t k = 0; k < good.size(); k += (k < 1024 ? 1 : 97)) {
      for (uint8_t x : {0x01, 0x80, 0xff}) {
        std::string bad = good;
        bad[k] = static_cast<char>(bad[k] ^ x);
        Result<GgufFile> r = open_hostile(bad);
        if (!r.ok()) continue;
        ++opened;
        for (const std::string& n : r.value().tensor_names()) (void)r.value().dequantize(n);
        (void)gguf_tokenizer(r.value());
        (void)gguf_model_config(r.value());
      }
    }
    std::printf("  %s: %d of the mutants still open\n", seed, opened);
  }
}

// ---- Llama import -------------------------------------------------------------------------------

TEST(GgufImport, NameMap) {
  EXPECT_EQ(gguf_name_to_hf("token_embd.weight"), "model.embed_tokens.weight");
  EXPECT_EQ(gguf_name_to_hf("blk.12.attn_q.weight"), "model.layers.12.self_attn.q_proj.weight");
  EXPECT_EQ(gguf_name_to_hf("blk.0.ffn_norm.weight"),
            "model.layers.0.post_attention_layernorm.weight");
  EXPECT_EQ(gguf_name_to_hf("output.weight"), "lm_head.weight");
  EXPECT_EQ(gguf_name_to_hf("blk.01.attn_q.weight"), "");
  EXPECT_EQ(gguf_name_to_hf("blk..attn_q.weight"), "");
  EXPECT_EQ(gguf_name_to_hf("blk.1.attn_qq.weight"), "");
  EXPECT_EQ(gguf_name_to_hf("rope_freqs.weight"), "");
  // Every HF name of a config with biases has a llama.cpp name that maps back to it.
  model::ModelConfig cfg;
  cfg.model_type = "llama";
  cfg.vocab_size = 8, cfg.hidden_size = 8, cfg.intermediate_size = 16, cfg.num_layers = 2;
  cfg.num_heads = 2, cfg.num_kv_heads = 1, cfg.head_dim = 4, cfg.max_position_embeddings = 16;
  cfg.qkv_bias = cfg.o_bias = true;
  int mapped = 0;
  for (const std::string& hf : model::hf_param_names(cfg)) {
    bool found = false;
    for (const char* g : {"token_embd.weight", "output_norm.weight", "output.weight"}) {
      found |= gguf_name_to_hf(g) == hf;
    }
    for (int l = 0; l < 2; ++l) {
      for (const char* s :
           {"attn_norm.weight", "attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias",
            "attn_v.weight", "attn_v.bias", "attn_output.weight", "attn_output.bias",
            "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"}) {
        found |= gguf_name_to_hf("blk." + std::to_string(l) + "." + s) == hf;
      }
    }
    EXPECT_TRUE(found) << hf;
    mapped += found;
  }
  EXPECT_GT(mapped, 20);
}

// llama.cpp's convert_hf_to_gguf.py permute(): HF rotate-half rows -> interleaved rows.
at::Tensor llamacpp_permute(const at::Tensor& w, int64_t n_head) {
  std::vector<int64_t> shape = {n_head, 2, w.size(0) / n_head / 2};
  for (int64_t d = 1; d < w.dim(); ++d) shape.push_back(w.size(d));
  return w.reshape(shape).transpose(1, 2).reshape(w.sizes()).contiguous();
}

std::string f32_bytes(const at::Tensor& t) {
  const at::Tensor c = t.contiguous().to(at::kFloat);
  return std::string(static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.numel()) * 4);
}

// A llama GGUF of `cfg` whose tensors are the HF tensors of `hf` (permuted as llama.cpp does).
std::string llama_gguf(const model::ModelConfig& cfg, model::ModelParams& hf,
                       const std::vector<std::string>& drop = {},
                       const std::vector<TensorSpec>& extra = {}) {
  Bytes kv;
  uint64_t n_kv = 0;
  auto kv_u32 = [&](const std::string& k, uint32_t v) { kv.str(k).u32(kU32).u32(v), ++n_kv; };
  kv.str("general.architecture").u32(kStr).str("llama"), ++n_kv;
  kv_u32("llama.block_count", static_cast<uint32_t>(cfg.num_layers));
  kv_u32("llama.context_length", static_cast<uint32_t>(cfg.max_position_embeddings));
  kv_u32("llama.embedding_length", static_cast<uint32_t>(cfg.hidden_size));
  kv_u32("llama.feed_forward_length", static_cast<uint32_t>(cfg.intermediate_size));
  kv_u32("llama.attention.head_count", static_cast<uint32_t>(cfg.num_heads));
  kv_u32("llama.attention.head_count_kv", static_cast<uint32_t>(cfg.num_kv_heads));
  kv_u32("llama.rope.dimension_count", static_cast<uint32_t>(cfg.head_dim));
  kv.str("llama.attention.layer_norm_rms_epsilon").u32(6).put(float(1e-5)), ++n_kv;
  kv.str("llama.rope.freq_base").u32(6).put(float(10000)), ++n_kv;
  kv.str("tokenizer.ggml.model").u32(kStr).str("gpt2"), ++n_kv;
  kv.str("tokenizer.ggml.tokens").u32(kArr).u32(kStr).u64(static_cast<uint64_t>(cfg.vocab_size));
  for (int64_t t = 0; t < cfg.vocab_size; ++t) kv.str("t" + std::to_string(t));
  ++n_kv;
  std::vector<TensorSpec> tensors;
  auto add = [&](const std::string& gname) {
    if (std::find(drop.begin(), drop.end(), gname) != drop.end()) return;
    const std::string hname = gguf_name_to_hf(gname);
    at::Tensor t = model::hf_param_view(hf, cfg, hname).value_or_throw();
    if (gname.find("attn_q.") != std::string::npos) t = llamacpp_permute(t, cfg.num_heads);
    if (gname.find("attn_k.") != std::string::npos) t = llamacpp_permute(t, cfg.num_kv_heads);
    std::vector<int64_t> ne(t.sizes().rbegin(), t.sizes().rend());
    tensors.push_back({gname, ne, kF32, f32_bytes(t)});
  };
  add("token_embd.weight");
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    for (const char* s : {"attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
                          "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight",
                          "ffn_up.weight", "ffn_down.weight"}) {
      add(b + s);
    }
    if (cfg.qkv_bias) {
      for (const char* s : {"attn_q.bias", "attn_k.bias", "attn_v.bias"}) add(b + s);
    }
  }
  add("output_norm.weight");
  if (!cfg.tie_word_embeddings) add("output.weight");
  for (const TensorSpec& t : extra) tensors.push_back(t);
  return valid_file(tensors, kv.s, n_kv);
}

model::ModelConfig small_llama(bool tied, bool bias) {
  model::ModelConfig cfg;
  cfg.model_type = "llama";
  cfg.vocab_size = 11, cfg.hidden_size = 16, cfg.intermediate_size = 24, cfg.num_layers = 2;
  cfg.num_heads = 4, cfg.num_kv_heads = 2, cfg.head_dim = 4, cfg.max_position_embeddings = 32;
  cfg.rms_norm_eps = 1e-5, cfg.rope_theta = 10000, cfg.tie_word_embeddings = tied;
  cfg.qkv_bias = bias;
  return cfg;
}

model::ModelParams random_params(const model::ModelConfig& cfg) {
  at::manual_seed(7);
  model::ModelParams p = model::allocate_model_params(cfg, at::kFloat);
  model::for_each_param(p, [](const std::string&, at::Tensor& t) { t.normal_(); });
  return p;
}

TEST(GgufImport, RoundTripUndoesRopePermutation) {
  for (bool tied : {true, false}) {
    for (bool bias : {false, true}) {
      const model::ModelConfig cfg = small_llama(tied, bias);
      model::ModelParams hf = random_params(cfg);
      const std::string bytes = llama_gguf(cfg, hf);
      const GgufFile f = open_hostile(bytes).value_or_throw();
      const model::ModelConfig got = gguf_model_config(f).value_or_throw();
      EXPECT_EQ(got.num_layers, 2);
      EXPECT_EQ(got.num_kv_heads, 2);
      EXPECT_EQ(got.head_dim, 4);
      EXPECT_EQ(got.vocab_size, 11);
      EXPECT_EQ(got.tie_word_embeddings, tied);
      EXPECT_EQ(got.qkv_bias, bias);
      EXPECT_NEAR(got.rms_norm_eps, 1e-5, 1e-12);
      model::ModelParams ours = model::allocate_model_params(got, at::kFloat);
      const Status st = gguf_load_weights(f, got, ours);
      ASSERT_TRUE(st.ok()) << st.error().message;
      for (const std::string& name : model::hf_param_names(cfg)) {
        EXPECT_TRUE(at::equal(model::hf_param_view(ours, got, name).value(),
                              model::hf_param_view(hf, cfg, name).value()))
            << name << " tied=" << tied << " bias=" << bias;
      }
    }
  }
}

TEST(GgufImport, MissingAndExtraTensorsAreListed) {
  const model::ModelConfig cfg = small_llama(false, false);
  model::ModelParams hf = random_params(cfg);
  const std::string bytes =
      llama_gguf(cfg, hf, {"blk.1.ffn_up.weight"},
                 {{"blk.7.attn_q.weight", {16, 16}, kF32, f32_bytes(at::zeros({16, 16}))},
                  {"mystery.weight", {4}, kF32, floats({1, 2, 3, 4})}});
  const GgufFile f = open_hostile(bytes).value_or_throw();
  const model::ModelConfig got = gguf_model_config(f).value_or_throw();
  model::ModelParams ours = model::allocate_model_params(got, at::kFloat);
  const Status st = gguf_load_weights(f, got, ours);
  ASSERT_FALSE(st.ok());
  const std::string& m = st.error().message;
  std::printf("%s\n", m.c_str());
  EXPECT_NE(m.find("1 missing tensors:\n    'model.layers.1.mlp.up_proj.weight'"),
            std::string::npos);
  EXPECT_NE(m.find("2 unexpected tensors"), std::string::npos);
  EXPECT_NE(m.find("'mystery.weight'"), std::string::npos);
  EXPECT_NE(m.find("'blk.7.attn_q.weight'"), std::string::npos);
  // Nothing was written.
  EXPECT_EQ(ours.embedding.abs().sum().item<double>(), 0.0);
}

TEST(GgufImport, ShapeMismatchAndConfigErrors) {
  const model::ModelConfig cfg = small_llama(true, false);
  model::ModelParams hf = random_params(cfg);
  // ffn_down stored transposed: ne [16, 24] (torch [24, 16]) where the model has [16, 24].
  const std::string bytes =
      llama_gguf(cfg, hf, {"blk.1.ffn_down.weight"},
                 {{"blk.1.ffn_down.weight", {16, 24}, kF32, f32_bytes(at::zeros({24, 16}))}});
  const GgufFile f = open_hostile(bytes).value_or_throw();
  const model::ModelConfig got = gguf_model_config(f).value_or_throw();
  model::ModelParams ours = model::allocate_model_params(got, at::kFloat);
  const Status st = gguf_load_weights(f, got, ours);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("'blk.1.ffn_down.weight': file has [24, 16] (ggml ne [16, "
                                    "24]), model expects [16, 24]"),
            std::string::npos)
      << st.error().message;

  // The config is checked against the tensors before anyone allocates a model from it.
  const std::string bad_embd =
      llama_gguf(cfg, hf, {"token_embd.weight"},
                 {{"token_embd.weight", {11, 16}, kF32, f32_bytes(at::zeros({16, 11}))}});
  Result<model::ModelConfig> r = gguf_model_config(open_hostile(bad_embd).value_or_throw());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("hostile.gguf: tensor 'token_embd.weight': ggml ne [11, 16], "
                                   "the metadata implies [16, 11]"),
            std::string::npos)
      << r.error().message;
  const std::string no_layer1 = llama_gguf(cfg, hf, {"blk.1.attn_norm.weight"});
  r = gguf_model_config(open_hostile(no_layer1).value_or_throw());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("no tensor 'blk.1.attn_norm.weight' (the metadata implies it)"),
            std::string::npos)
      << r.error().message;

  // Not a llama or qwen2; missing required key.
  const std::string gemma =
      valid_file({}, Bytes().str("general.architecture").u32(kStr).str("gemma").s, 1);
  r = gguf_model_config(open_hostile(gemma).value_or_throw());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("key 'general.architecture': 'gemma' is not supported"),
            std::string::npos)
      << r.error().message;
  const std::string bare =
      valid_file({}, Bytes().str("general.architecture").u32(kStr).str("llama").s, 1);
  r = gguf_model_config(open_hostile(bare).value_or_throw());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("hostile.gguf: key 'llama.block_count': missing"),
            std::string::npos)
      << r.error().message;
}

TEST(GgufImport, TinyLlamaSeedAndTokenizer) {
  const GgufFile f = GgufFile::open(kSeeds + "tiny_llama.gguf").value_or_throw();
  const model::ModelConfig cfg = gguf_model_config(f).value_or_throw();
  EXPECT_EQ(cfg.hidden_size, 8);
  EXPECT_EQ(cfg.vocab_size, 4);
  EXPECT_TRUE(cfg.tie_word_embeddings);
  model::ModelParams p = model::allocate_model_params(cfg, at::kFloat);
  const Status st = gguf_load_weights(f, cfg, p);
  ASSERT_TRUE(st.ok()) << st.error().message;
  const GgufTokenizer tok = gguf_tokenizer(f).value_or_throw();
  EXPECT_EQ(tok.model, "gpt2");
  EXPECT_EQ(tok.pre, "smollm");
  EXPECT_EQ(tok.tokens, (std::vector<std::string>{"a", "b", "ab", "<s>"}));
  EXPECT_EQ(tok.token_type, (std::vector<int32_t>{1, 1, 1, 3}));
  EXPECT_EQ(tok.merges, (std::vector<std::string>{"a b"}));
  EXPECT_EQ(tok.bos_id, 3);
  EXPECT_EQ(tok.eos_id, 3);
  EXPECT_EQ(tok.pad_id, -1);
}

// ---- SmolLM2-135M-Instruct (Q4_1) against transformers ----------------------------------------

std::string default_model_path() {
  const char* cache = std::getenv("RAMSTREAM_CACHE");
  const char* home = std::getenv("HOME");
  const std::string root = cache ? cache : std::string(home ? home : "") + "/.cache/ramstream";
  return root + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// GPT-2's byte-level BPE spells byte b as one code point: printable Latin-1 bytes as themselves,
// the rest as 256 + k in byte order.
std::string gpt2_decode(const std::string& token) {
  int byte_of[512];
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    byte_of[printable ? b : 256 + extra++] = b;
  }
  std::string out;
  for (size_t k = 0; k < token.size();) {
    const unsigned char c = static_cast<unsigned char>(token[k]);
    int cp = c, len = 1;
    if (c >= 0xc0 && c < 0xe0 && k + 1 < token.size())
      cp = ((c & 0x1f) << 6) | (token[k + 1] & 0x3f), len = 2;
    out += (cp < 512) ? static_cast<char>(byte_of[cp]) : '?';
    k += static_cast<size_t>(len);
  }
  return out;
}

TEST(GgufSmolLM2, MatchesTransformers) {
  const std::string path = default_model_path();
  if (!fs::exists(path)) {
    GTEST_SKIP() << path << " not cached; run: bash scripts/fetch_default_model.sh";
  }
  const GgufFile f = GgufFile::open(path).value_or_throw();
  std::map<std::string, int> types;
  for (const std::string& n : f.tensor_names()) ++types[ggml_type_name(f.info(n).value()->type_id)];
  std::printf("  %zu tensors:", f.tensor_names().size());
  for (const auto& [t, c] : types) std::printf(" %s x%d", t.c_str(), c);
  std::printf("\n");

  const model::ModelConfig cfg = gguf_model_config(f).value_or_throw();
  EXPECT_EQ(cfg.num_layers, 30);
  EXPECT_EQ(cfg.hidden_size, 576);
  EXPECT_EQ(cfg.intermediate_size, 1536);
  EXPECT_EQ(cfg.num_heads, 9);
  EXPECT_EQ(cfg.num_kv_heads, 3);
  EXPECT_EQ(cfg.head_dim, 64);
  EXPECT_EQ(cfg.vocab_size, 49152);
  EXPECT_EQ(cfg.max_position_embeddings, 8192);
  EXPECT_EQ(cfg.rope_theta, 100000.0);
  EXPECT_NEAR(cfg.rms_norm_eps, 1e-5, 1e-11);
  EXPECT_TRUE(cfg.tie_word_embeddings);
  const GgufTokenizer tok = gguf_tokenizer(f).value_or_throw();
  EXPECT_EQ(tok.model, "gpt2");
  EXPECT_EQ(tok.pre, "smollm");
  EXPECT_EQ(tok.merges.size(), 48900u);
  EXPECT_EQ(tok.bos_id, 1);
  EXPECT_EQ(tok.eos_id, 2);
  EXPECT_NE(tok.chat_template.find("<|im_start|>"), std::string::npos);

  model::ModelParams params = model::allocate_model_params(cfg, at::kFloat);
  const Status st = gguf_load_weights(f, cfg, params);
  ASSERT_TRUE(st.ok()) << st.error().message;

  const SafetensorsFile ref =
      SafetensorsFile::open(kFixtures + "smollm2_reference.safetensors").value_or_throw();
  std::printf("  fixture: transformers %s, torch %s, gguf %s\n",
              ref.metadata().at("transformers").c_str(), ref.metadata().at("torch").c_str(),
              ref.metadata().at("gguf").c_str());
  // transformers un-permutes q/k on load: the first head's rows must be identical to ours.
  for (const char* w : {"q_proj", "k_proj"}) {
    const at::Tensor theirs = ref.tensor(std::string("layer0.") + w + ".weight.head0").value();
    const at::Tensor ours =
        model::hf_param_view(params, cfg, std::string("model.layers.0.self_attn.") + w + ".weight")
            .value()
            .slice(0, 0, 64)
            .slice(1, 0, 64);
    EXPECT_TRUE(at::equal(ours, theirs)) << w << " rows differ from transformers' un-permuted ones";
  }

  const at::Tensor ids = ref.tensor("input_ids").value();
  const int64_t T = ids.size(1);
  autograd::ModelWorkspace ws(cfg, 1, T, at::kFloat, autograd::ActivationMode::kRecompute);
  const at::Tensor logits = autograd::model_logits(params, ids, ws);
  const at::Tensor last2 = logits[0].slice(0, T - 2, T);
  const at::Tensor ref_last2 = ref.tensor("logits_last2").value();
  const double max_abs = (last2 - ref_last2).abs().max().item<double>();
  const double scale = ref_last2.abs().max().item<double>();
  std::printf("  logits of the last 2 positions: max abs error %.3e (|logits| max %.2f)\n", max_abs,
              scale);
  // The weights are bit-identical to transformers' (same dequantisation, checked for q/k above
  // and for every type in DequantiseEveryTypeBitExactAgainstGgufPy); what differs is fp32
  // summation order over 30 layers (OpenBLAS under libtorch 1.13 here, MKL/oneDNN in the torch
  // 2.x that wrote the fixture) and RoPE tables (fp64-built here). Measured 6.6e-5 on logits of
  // magnitude ~24 (3e-6 relative). 1e-3 leaves 15x margin for other BLAS builds while any real
  // bug (a wrong RoPE row order, a swapped nibble) moves logits by more than 1.
  EXPECT_LE(max_abs, 1e-3);

  const int64_t first = ref_last2[1].argmax().item<int64_t>();
  ASSERT_EQ(last2[1].argmax().item<int64_t>(), first);

  // Greedy decode by re-running the whole prefix (no KV cache needed for a test).
  const at::Tensor ref_greedy = ref.tensor("greedy_ids").value();
  std::vector<int64_t> seq(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + T);
  std::vector<int64_t> greedy;
  for (int64_t step = 0; step < ref_greedy.numel(); ++step) {
    const int64_t n = static_cast<int64_t>(seq.size());
    autograd::ModelWorkspace w(cfg, 1, n, at::kFloat, autograd::ActivationMode::kRecompute);
    const at::Tensor x = at::tensor(seq, at::kLong).view({1, n});
    const int64_t next = autograd::model_logits(params, x, w)[0][n - 1].argmax().item<int64_t>();
    greedy.push_back(next);
    seq.push_back(next);
  }
  std::string text;
  std::printf("  greedy ids:");
  for (int64_t id : greedy) {
    std::printf(" %lld", static_cast<long long>(id));
    text += gpt2_decode(tok.tokens.at(static_cast<size_t>(id)));
  }
  std::string prompt;
  for (int64_t k = 0; k < T; ++k) prompt += gpt2_decode(tok.tokens.at(ids[0][k].item<int64_t>()));
  std::printf("\n  \"%s\" -> \"%s\"\n", prompt.c_str(), text.c_str());
  EXPECT_EQ(greedy.front(), first);
  EXPECT_EQ(greedy, std::vector<int64_t>(ref_greedy.data_ptr<int64_t>(),
                                         ref_greedy.data_ptr<int64_t>() + ref_greedy.numel()));
}

}  // namespace
}  // namespace ramstream::checkpoint
