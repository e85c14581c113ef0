// GGUF export tests: the written layout byte by byte, q8_0 blocks as ggml makes them, and round
// trips through our reader (checkpoint/gguf.h): Hugging Face fixtures -> GGUF -> weights, config
// and tokenizer equal (f32/f16/bf16 exactly as representable, q8_0 within its error bound);
// GGUF -> HF folder -> GGUF with identical metadata and tensor bytes; every refusal before a file
// exists. gguf-py's view of the same files is tests/fixtures/check_gguf_export.py.
#include "checkpoint/gguf_writer.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "checkpoint/gguf_test_util.h"
#include "checkpoint/hf_folder.h"
#include "checkpoint/hf_loader.h"
#include "data/tokenizer.h"
#include "model/hf_names.h"
#include "model/testing.h"

namespace ramstream::checkpoint {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using model::ModelConfig;
using model::ModelParams;

const fs::path kHf = "tests/fixtures/hf";
const fs::path kChatModel = "tests/fixtures/tiny_chat_model";
const fs::path kTokenizers = "tests/fixtures/tokenizer";
using testing::kTinyLlamaGguf;

class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = fs::temp_directory_path() /
            ("gguf_writer_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(path_)) names.push_back(e.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  fs::path path_;
};

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Model {
  ModelConfig cfg;
  ModelParams params;
};

Model load_folder(const fs::path& dir) {
  Model m;
  m.cfg = model::load_model_config((dir / "config.json").string()).value_or_throw();
  m.params = model::allocate_model_params(m.cfg, at::kFloat);
  Status st = load_hf_weights(dir.string(), m.cfg, m.params);
  if (!st.ok()) throw std::runtime_error(st.error().message);
  return m;
}

Model load_gguf(const GgufFile& f) {
  Model m;
  m.cfg = gguf_model_config(f).value_or_throw();
  m.params = model::allocate_model_params(m.cfg, at::kFloat);
  Status st = gguf_load_weights(f, m.cfg, m.params);
  if (!st.ok()) throw std::runtime_error(st.error().message);
  return m;
}

void expect_same_config(const ModelConfig& want, const ModelConfig& got) {
  EXPECT_EQ(got.model_type, want.model_type == "mistral" ? "llama" : want.model_type);
  EXPECT_EQ(got.vocab_size, want.vocab_size);
  EXPECT_EQ(got.hidden_size, want.hidden_size);
  EXPECT_EQ(got.intermediate_size, want.intermediate_size);
  EXPECT_EQ(got.num_layers, want.num_layers);
  EXPECT_EQ(got.num_heads, want.num_heads);
  EXPECT_EQ(got.num_kv_heads, want.num_kv_heads);
  EXPECT_EQ(got.head_dim, want.head_dim);
  EXPECT_EQ(got.max_position_embeddings, want.max_position_embeddings);
  // f32 in the file, read back as the shortest decimal: the config's own value.
  EXPECT_EQ(got.rms_norm_eps, want.rms_norm_eps);
  EXPECT_EQ(got.rope_theta, want.rope_theta);
  EXPECT_EQ(got.rope_scaling.type, want.rope_scaling.type);
  EXPECT_EQ(got.tie_word_embeddings, want.tie_word_embeddings);
  EXPECT_EQ(got.qkv_bias, want.qkv_bias);
  EXPECT_EQ(got.o_bias, want.o_bias);
}

// The q8_0 error bound per element, for a block whose largest |x| is `amax`. ggml computes in
// float: d = fl(amax / 127), id = fl(1 / d), q = round(fl(x * id)), stored scale d16 = fp16(d),
// value read back fl(q * d16). With u = 2^-24 (float rounding):
//   x * id = (x / d)(1 + e), |e| <= 3u, and |x / d| <= 127 (1 + u), so |x / d - q| <= 1/2 + 381u
//     and |x - q d| <= d (1/2 + 381u);
//   |q| <= 127 and fp16 rounding (10-bit mantissa) gives |d - d16| <= max(d 2^-11, 2^-25) (the
//     second for subnormal halves), so |q d - q d16| <= 127 max(d 2^-11, 2^-25);
//   the final product adds |q d16| u <= amax (1 + 2^-10) u <= 2 amax u.
double q8_0_bound(double amax) {
  const double u = std::ldexp(1.0, -24);
  const double d = amax / 127.0;
  return d * (0.5 + 381 * u) + 127 * std::max(d * std::ldexp(1.0, -11), std::ldexp(1.0, -25)) +
         2 * amax * u;
}

// |got - want| within the bound of each 32-value block of each row; returns the largest
// error / bound ratio seen (so a caller can check the bound is not vacuous).
double expect_q8_0_close(const at::Tensor& want, const at::Tensor& got, const std::string& name) {
  const at::Tensor w = want.reshape({-1, 32}).to(at::kDouble);
  const at::Tensor g = got.reshape({-1, 32}).to(at::kDouble);
  const at::Tensor amax = w.abs().amax(1);
  const at::Tensor err = (w - g).abs().amax(1);
  double worst = 0;
  for (int64_t b = 0; b < w.size(0); ++b) {
    const double bound = q8_0_bound(amax[b].item<double>());
    const double e = err[b].item<double>();
    EXPECT_LE(e, bound) << name << " block " << b;
    if (bound > 0) worst = std::max(worst, e / bound);
  }
  return worst;
}

// What our reader must give back for an exported tensor of ggml type `type`.
at::Tensor representable(const at::Tensor& t, uint32_t type) {
  if (type == static_cast<uint32_t>(GgmlType::kF16)) return t.to(at::kHalf).to(at::kFloat);
  if (type == static_cast<uint32_t>(GgmlType::kBF16)) return t.to(at::kBFloat16).to(at::kFloat);
  return t.to(at::kFloat);
}

// llama.cpp's convert_hf_to_gguf.py permute(), written out independently of the code under test.
at::Tensor llamacpp_permute(const at::Tensor& w, int64_t n_head) {
  std::vector<int64_t> shape = {n_head, 2, w.size(0) / n_head / 2};
  for (int64_t d = 1; d < w.dim(); ++d) shape.push_back(w.size(d));
  return w.reshape(shape).transpose(1, 2).reshape(w.sizes()).contiguous();
}

// ---- the file layout -------------------------------------------------------------------------

template <class T>
T at_offset(const std::string& b, size_t off) {
  T v;
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}

TEST(GgufWriter, LayoutByteByByte) {
  TempDir tmp;
  GgufWriter w;
  w.add("a.n", gguf_u32(7));
  w.add("a.names", gguf_string_array({"x", "yz"}));
  const std::vector<float> values = {1.5f, -2.0f, 3.25f};
  w.add_tensor("t", 0, {3}, [&](OutFile& f) { return f.write(values.data(), 12); });
  ASSERT_TRUE(w.write(tmp / "x.gguf").ok());
  const std::string b = read_all(tmp / "x.gguf");
  size_t o = 0;
  EXPECT_EQ(b.substr(0, 4), "GGUF");
  EXPECT_EQ(at_offset<uint32_t>(b, 4), 3u);
  EXPECT_EQ(at_offset<uint64_t>(b, 8), 1u);   // tensors
  EXPECT_EQ(at_offset<uint64_t>(b, 16), 2u);  // kv pairs
  o = 24;
  EXPECT_EQ(at_offset<uint64_t>(b, o), 3u);  // key length
  EXPECT_EQ(b.substr(o + 8, 3), "a.n");
  o += 11;
  EXPECT_EQ(at_offset<uint32_t>(b, o), 4u);  // u32
  EXPECT_EQ(at_offset<uint32_t>(b, o + 4), 7u);
  o += 8;
  EXPECT_EQ(at_offset<uint64_t>(b, o), 7u);
  EXPECT_EQ(b.substr(o + 8, 7), "a.names");
  o += 15;
  EXPECT_EQ(at_offset<uint32_t>(b, o), 9u);      // array
  EXPECT_EQ(at_offset<uint32_t>(b, o + 4), 8u);  // of strings
  EXPECT_EQ(at_offset<uint64_t>(b, o + 8), 2u);
  EXPECT_EQ(at_offset<uint64_t>(b, o + 16), 1u);
  EXPECT_EQ(b.substr(o + 24, 1), "x");
  EXPECT_EQ(at_offset<uint64_t>(b, o + 25), 2u);
  EXPECT_EQ(b.substr(o + 33, 2), "yz");
  o += 35;
  EXPECT_EQ(at_offset<uint64_t>(b, o), 1u);  // tensor name
  EXPECT_EQ(b.substr(o + 8, 1), "t");
  EXPECT_EQ(at_offset<uint32_t>(b, o + 9), 1u);   // n_dims
  EXPECT_EQ(at_offset<int64_t>(b, o + 13), 3);    // ne[0]
  EXPECT_EQ(at_offset<uint32_t>(b, o + 21), 0u);  // f32
  EXPECT_EQ(at_offset<uint64_t>(b, o + 25), 0u);  // offset
  o += 33;
  const size_t data = (o + 31) / 32 * 32;
  for (size_t k = o; k < data; ++k) EXPECT_EQ(b[k], '\0') << k;
  EXPECT_EQ(std::memcmp(b.data() + data, values.data(), 12), 0);
  EXPECT_EQ(b.size(), data + 32);  // the tensor padded to 32 bytes too
  for (size_t k = data + 12; k < b.size(); ++k) EXPECT_EQ(b[k], '\0') << k;

  const GgufFile f = GgufFile::open(tmp / "x.gguf").value_or_throw();
  EXPECT_EQ(f.get_int("a.n").value(), 7);
  EXPECT_EQ(f.get_string_array("a.names").value(), (std::vector<std::string>{"x", "yz"}));
  EXPECT_TRUE(at::equal(f.dequantize("t").value(), at::tensor({1.5f, -2.0f, 3.25f})));
  EXPECT_EQ(tmp.listing(), std::vector<std::string>{"x.gguf"});
}

TEST(GgufWriter, RefusesMalformedInputAndLeavesNothing) {
  TempDir tmp;
  auto writes = [](int64_t n) {
    return [n](OutFile& f) { return f.write(std::string(static_cast<size_t>(n), '\0').data(), n); };
  };
  struct Case {
    const char* what;
    std::function<void(GgufWriter&)> build;
  };
  const Case cases[] = {
      {"added twice", [](GgufWriter& w) { w.add("k", gguf_u32(1)), w.add("k", gguf_u32(2)); }},
      {"tensor 't' added twice",
       [&](GgufWriter& w) {
         w.add_tensor("t", 0, {1}, writes(4)), w.add_tensor("t", 0, {1}, writes(4));
       }},
      {"wrote 3 bytes", [&](GgufWriter& w) { w.add_tensor("t", 0, {1}, writes(3)); }},
      {"block size 32", [&](GgufWriter& w) { w.add_tensor("t", 8, {16}, writes(17)); }},
      {"unknown ggml type", [&](GgufWriter& w) { w.add_tensor("t", 99, {1}, writes(1)); }},
      {"dims must be >= 1", [&](GgufWriter& w) { w.add_tensor("t", 0, {0}, writes(0)); }},
  };
  for (const Case& c : cases) {
    GgufWriter w;
    c.build(w);
    Status st = w.write(tmp / "bad.gguf");
    ASSERT_FALSE(st.ok()) << c.what;
    EXPECT_NE(st.error().message.find(c.what), std::string::npos) << st.error().message;
    EXPECT_NE(st.error().message.find("bad.gguf"), std::string::npos) << st.error().message;
    EXPECT_TRUE(tmp.listing().empty()) << c.what;  // no file, no temp file
  }
}

TEST(GgufWriter, Q8_0BlocksAsGgmlMakesThem) {
  // amax 127 gives d = 1 exactly: q = round(x), halves away from zero.
  std::vector<float> x(32, 0.0f);
  const float head[] = {127.0f, 2.5f, -2.5f, 0.5f, -0.5f, 1.49f, -126.6f, 0.0f};
  std::copy(std::begin(head), std::end(head), x.begin());
  const int8_t want_q[] = {127, 3, -3, 1, -1, 1, -127, 0};
  // And a block with amax 8: d = 8/127, fp16(d) = 0x2c08.
  for (int j = 0; j < 32; ++j) x.push_back(static_cast<float>(j - 16) * 0.5f);
  ModelConfig cfg = model::testing::tiny_config({"llama", 2, 32, 32, 1, 1, 1, 32});
  ModelParams p = model::allocate_model_params(cfg, at::kFloat);
  p.embedding.copy_(at::tensor(x).reshape({2, 32}));
  TempDir tmp;
  GgufExportOptions opts;
  opts.type = GgmlType::kQ8_0;
  ASSERT_TRUE(write_gguf_model(tmp / "q.gguf", cfg, p, opts).ok());
  const GgufFile f = GgufFile::open(tmp / "q.gguf").value_or_throw();
  const GgufTensorInfo& info = *f.info("token_embd.weight").value();
  ASSERT_EQ(info.type_id, static_cast<uint32_t>(GgmlType::kQ8_0));
  ASSERT_EQ(info.nbytes, 2 * sizeof(ggml::BlockQ8_0));
  ggml::BlockQ8_0 b[2];
  std::memcpy(b, f.data(info), sizeof b);
  EXPECT_EQ(b[0].d, 0x3c00);  // 1.0
  for (int j = 0; j < 8; ++j) EXPECT_EQ(b[0].qs[j], want_q[j]) << j;
  EXPECT_EQ(b[1].d, c10::Half(8.0f / 127.0f).x);
  for (int j = 0; j < 32; ++j) {
    EXPECT_EQ(b[1].qs[j], static_cast<int8_t>(std::round((j - 16) * 0.5f * (127.0f / 8.0f))));
  }
  const at::Tensor back = f.dequantize("token_embd.weight").value();
  expect_q8_0_close(at::tensor(x), back, "token_embd.weight");
}

// ---- model export round trips ----------------------------------------------------------------

// Exports `m` as `type`, reads it back and checks config, tensor types and weights.
void expect_round_trip(Model& m, GgmlType type, const std::string& path, const std::string& what) {
  SCOPED_TRACE(what);
  GgufExportOptions opts;
  opts.type = type;
  Result<GgufExportSummary> sum = write_gguf_model(path, m.cfg, m.params, opts);
  ASSERT_TRUE(sum.ok()) << sum.error().message;
  EXPECT_TRUE(sum.value().notes.empty());
  const GgufFile f = GgufFile::open(path).value_or_throw();
  EXPECT_EQ(f.get_string("general.architecture").value(), gguf_arch_of(m.cfg));
  Model back = load_gguf(f);
  expect_same_config(m.cfg, back.cfg);
  EXPECT_EQ(f.contains("output.weight"), !m.cfg.tie_word_embeddings);
  double worst = 0;
  for (const std::string& hf : model::hf_param_names(m.cfg)) {
    const at::Tensor want = model::hf_param_view(m.params, m.cfg, hf).value();
    const at::Tensor got = model::hf_param_view(back.params, back.cfg, hf).value();
    const GgufTensorInfo& info = *f.info(hf_name_to_gguf(hf)).value();
    const uint32_t want_type = want.dim() == 1 ? 0u : static_cast<uint32_t>(type);
    EXPECT_EQ(info.type_id, want_type) << hf;
    if (type == GgmlType::kQ8_0 && want.dim() == 2) {
      worst = std::max(worst, expect_q8_0_close(want, got, hf));
    } else {
      EXPECT_TRUE(at::equal(got, representable(want, info.type_id))) << hf;
    }
    // The file holds llama.cpp's row order (llama) or HF's (qwen2), checked apart from the
    // reader, which would undo a wrong permutation as well as a right one.
    const model::RowPart part = model::resolve_hf_name(m.cfg, hf).value().row->part;
    if ((part == model::RowPart::kQ || part == model::RowPart::kK) && type == GgmlType::kF32) {
      const at::Tensor raw = f.dequantize(hf_name_to_gguf(hf)).value();
      const int64_t heads = part == model::RowPart::kQ ? m.cfg.num_heads : m.cfg.num_kv_heads;
      const at::Tensor order = m.cfg.model_type == "qwen2" ? want : llamacpp_permute(want, heads);
      EXPECT_TRUE(at::equal(raw, order)) << hf << " row order";
    }
  }
  // The bound is tight enough to mean something: some block uses a good part of it.
  if (type == GgmlType::kQ8_0) {
    EXPECT_GT(worst, 0.5);
  }
}

TEST(GgufExport, HfFixturesRoundTripInEveryType) {
  TempDir tmp;
  for (const fs::path& dir : {kHf / "llama_gqa", kHf / "qwen2_bias", kChatModel}) {
    Model m = load_folder(dir);
    for (auto [name, type] : {std::pair{"f32", GgmlType::kF32},
                              {"f16", GgmlType::kF16},
                              {"bf16", GgmlType::kBF16},
                              {"q8_0", GgmlType::kQ8_0}}) {
      const std::string path = tmp / (dir.filename().string() + "-" + name + ".gguf");
      expect_round_trip(m, type, path, dir.string() + " " + name);
    }
  }
}

TEST(GgufExport, LlamaWithBiasesAndLinearRopeScaling) {
  TempDir tmp;
  Model m;
  m.cfg = model::testing::tiny_config(
      {"llama", 61, 32, 64, 2, 4, 2, 8, false, true, model::RopeScalingType::kLinear});
  m.params = model::allocate_model_params(m.cfg, at::kFloat);
  model::init_params_normal(m.params, 0.5, 11);
  expect_round_trip(m, GgmlType::kF32, tmp / "bias.gguf", "llama bias linear");
  const GgufFile f = GgufFile::open(tmp / "bias.gguf").value_or_throw();
  EXPECT_EQ(f.get_string("llama.rope.scaling.type").value(), "linear");
  EXPECT_EQ(f.get_float("llama.rope.scaling.factor").value(), 4.0);
  EXPECT_TRUE(f.contains("blk.1.attn_output.bias"));
}

TEST(GgufExport, Q8_0FallsBackToF16ForRowsNotAMultipleOf32) {
  TempDir tmp;
  ModelConfig cfg = model::testing::tiny_config({"llama", 61, 48, 64, 1, 4, 2, 12});
  ModelParams p = model::allocate_model_params(cfg, at::kFloat);
  model::init_params_normal(p, 0.5, 3);
  GgufExportOptions opts;
  opts.type = GgmlType::kQ8_0;
  Result<GgufExportSummary> sum = write_gguf_model(tmp / "m.gguf", cfg, p, opts);
  ASSERT_TRUE(sum.ok()) << sum.error().message;
  const GgufFile f = GgufFile::open(tmp / "m.gguf").value_or_throw();
  const uint32_t q8 = static_cast<uint32_t>(GgmlType::kQ8_0), f16 = 1;
  EXPECT_EQ(f.info("token_embd.weight").value()->type_id, f16);     // rows of 48
  EXPECT_EQ(f.info("blk.0.ffn_down.weight").value()->type_id, q8);  // rows of 64
  EXPECT_EQ(f.info("blk.0.attn_norm.weight").value()->type_id, 0u);
  EXPECT_FALSE(sum.value().notes.empty());
  EXPECT_NE(sum.value().notes[0].find("not a multiple of 32, written as f16"), std::string::npos);
  EXPECT_EQ(sum.value().tensors_by_type.at("q8_0"), 1);
}

TEST(GgufExport, Llama3RopeScalingWritesLlamaCppsFreqFactors) {
  TempDir tmp;
  Model m = load_folder(kHf / "llama3_rope_scaling");
  ASSERT_TRUE(write_gguf_model(tmp / "l3.gguf", m.cfg, m.params, {}).ok());
  const GgufFile f = GgufFile::open(tmp / "l3.gguf").value_or_throw();
  const at::Tensor factors = f.dequantize("rope_freqs.weight").value();
  ASSERT_EQ(factors.numel(), m.cfg.head_dim / 2);
  // The fixture's 8 frequencies cover the three branches (tests/fixtures/README.md): i = 0 kept,
  // i = 1 divided by ~2.44, i >= 2 by the factor 8.
  EXPECT_EQ(factors[0].item<float>(), 1.0f);
  EXPECT_NEAR(factors[1].item<float>(), 2.44, 0.01);
  for (int64_t i = 2; i < factors.numel(); ++i) EXPECT_EQ(factors[i].item<float>(), 8.0f);
  // Our importer does not take the factors back (it refuses rather than guess the parameters).
  Result<ModelConfig> back = gguf_model_config(f);
  ASSERT_FALSE(back.ok());
  EXPECT_NE(back.error().message.find("rope_freqs.weight"), std::string::npos);
}

// ---- refusals --------------------------------------------------------------------------------

TEST(GgufExport, RefusesBeforeCreatingAnything) {
  TempDir tmp;
  Model m = load_folder(kHf / "llama_gqa");
  const std::string path = tmp / "m.gguf";
  auto expect_refused = [&](const Result<GgufExportSummary>& r, const std::string& needle) {
    ASSERT_FALSE(r.ok()) << needle;
    EXPECT_NE(r.error().message.find(needle), std::string::npos) << r.error().message;
  };
  GgufExportOptions opts;
  opts.type = GgmlType::kQ4_0;
  expect_refused(write_gguf_model(path, m.cfg, m.params, opts), "f32, f16, bf16 or q8_0");
  opts.type = GgmlType::kF16;

  at::Tensor w = model::hf_param_view(m.params, m.cfg, "model.layers.1.mlp.up_proj.weight").value();
  const float saved = w[3][5].item<float>();
  w[3][5] = std::nanf("");
  expect_refused(write_gguf_model(path, m.cfg, m.params, opts),
                 "'model.layers.1.mlp.up_proj.weight' has non-finite values");
  w[3][5] = 1e5f;  // beyond f16
  expect_refused(write_gguf_model(path, m.cfg, m.params, opts), "export as bf16 or f32");
  opts.type = GgmlType::kBF16;
  EXPECT_TRUE(write_gguf_model(tmp / "bf16.gguf", m.cfg, m.params, opts).ok());
  w[3][5] = saved;
  opts.type = GgmlType::kF16;

  GgufTokenizer tok;
  tok.model = "gpt2";
  tok.tokens = {"a", "b"};
  opts.tokenizer = tok;
  expect_refused(write_gguf_model(path, m.cfg, m.params, opts), "2 tokens for the model's 151");
  opts.tokenizer.reset();
  ModelConfig other = m.cfg;
  other.model_type = "gemma";
  expect_refused(write_gguf_model(path, other, m.params, opts), "no llama.cpp architecture");
  EXPECT_EQ(tmp.listing(), std::vector<std::string>{"bf16.gguf"});

  // An existing file stays unless overwrite; a folder always.
  { std::ofstream(path) << "keep me"; }
  expect_refused(write_gguf_model(path, m.cfg, m.params, opts), "exists; not overwriting");
  EXPECT_EQ(read_all(path), "keep me");
  fs::create_directory(tmp / "folder.gguf");
  opts.overwrite = true;
  expect_refused(write_gguf_model(tmp / "folder.gguf", m.cfg, m.params, opts), "is a folder");
  ASSERT_TRUE(write_gguf_model(path, m.cfg, m.params, opts).ok());
  EXPECT_TRUE(GgufFile::open(path).ok());

  // Missing parents are created; a parent that cannot be is named.
  ASSERT_TRUE(write_gguf_model(tmp / "a/b/c/m.gguf", m.cfg, m.params, opts).ok());
  EXPECT_TRUE(GgufFile::open(tmp / "a/b/c/m.gguf").ok());
  const Result<GgufExportSummary> r = write_gguf_model(path + "/sub/m.gguf", m.cfg, m.params, opts);
  expect_refused(r, path + "/sub: cannot create the parent folder");
  EXPECT_EQ(r.error().message.find(".tmp-"), std::string::npos) << r.error().message;
}

// ---- tokenizers ------------------------------------------------------------------------------

std::vector<std::string> corpus(size_t max_lines) {
  std::vector<std::string> texts;
  std::ifstream in(kTokenizers / "corpus.jsonl");
  std::string line;
  while (texts.size() < max_lines && std::getline(in, line)) {
    texts.push_back(json::parse(line)["text"].get<std::string>());
  }
  return texts;
}

// Added tokens whose lstrip / rstrip / single_word / normalized flags GGUF cannot carry.
std::vector<std::string> flagged_added_tokens(const fs::path& tokenizer_json) {
  std::vector<std::string> out;
  const json j = json::parse(read_all(tokenizer_json.string()));
  for (const json& a : j["added_tokens"]) {
    if (a.value("lstrip", false) || a.value("rstrip", false) || a.value("single_word", false) ||
        a.value("normalized", false)) {
      out.push_back(a["content"]);
    }
  }
  return out;
}

// `tok` written into a GGUF beside a model of its vocabulary, and read back by our reader.
data::Tokenizer through_gguf(const data::Tokenizer& tok, const std::string& path) {
  const ModelConfig cfg = model::testing::tiny_config({"llama", tok.vocab_size(), 32, 32, 1});
  ModelParams p = model::allocate_model_params(cfg, at::kFloat);
  GgufExportOptions opts;
  opts.type = GgmlType::kF32;
  opts.overwrite = true;
  opts.tokenizer = tok.to_gguf(cfg.vocab_size).value_or_throw();
  Result<GgufExportSummary> r = write_gguf_model(path, cfg, p, opts);
  if (!r.ok()) throw std::runtime_error(r.error().message);
  const GgufFile f = GgufFile::open(path).value_or_throw();
  return data::Tokenizer::from_gguf(gguf_tokenizer(f).value_or_throw(), path).value_or_throw();
}

void expect_same_tokenizer(const data::Tokenizer& a, const data::Tokenizer& b,
                           const std::vector<std::string>& flagged_tokens) {
  ASSERT_EQ(a.vocab_size(), b.vocab_size());
  for (int32_t id = 0; id < a.vocab_size(); ++id) {
    EXPECT_EQ(a.id_to_token(id), b.id_to_token(id)) << id;
    EXPECT_EQ(a.is_special(id), b.is_special(id)) << id;
  }
  EXPECT_EQ(a.bos_id(), b.bos_id());
  EXPECT_EQ(a.eos_id(), b.eos_id());
  EXPECT_EQ(a.pad_id(), b.pad_id());
  EXPECT_EQ(a.add_bos(), b.add_bos());
  EXPECT_EQ(a.chat_template(), b.chat_template());
  // Texts where either side matched a token whose flags GGUF drops are not comparable.
  std::set<int32_t> flagged;
  for (const std::string& t : flagged_tokens) flagged.insert(a.token_to_id(t));
  int compared = 0;
  for (const std::string& text : corpus(400)) {
    const std::vector<int32_t> ia = a.encode(text), ib = b.encode(text);
    bool skip = false;
    for (int32_t id : ia) skip |= flagged.count(id) != 0;
    for (int32_t id : ib) skip |= flagged.count(id) != 0;
    if (skip) continue;
    ++compared;
    EXPECT_EQ(ia, ib) << text;
  }
  EXPECT_GT(compared, 300);
}

TEST(GgufExport, TokenizersRoundTripThroughGguf) {
  TempDir tmp;
  struct Case {
    fs::path json;
    const char* pre;
  };
  for (const Case& c : {Case{kTokenizers / "smollm2/tokenizer.json", "smollm"},
                        Case{kTokenizers / "llama3/tokenizer.json", "llama-bpe"},
                        Case{kTokenizers / "qwen2/tokenizer.json", "qwen2"},
                        Case{kChatModel / "tokenizer.json", "gpt-2"}}) {
    SCOPED_TRACE(c.json.string());
    const data::Tokenizer tok =
        data::Tokenizer::from_tokenizer_json(c.json.string()).value_or_throw();
    const GgufTokenizer meta = tok.to_gguf(tok.vocab_size()).value_or_throw();
    EXPECT_EQ(meta.pre, c.pre);
    EXPECT_EQ(meta.model, "gpt2");
    const data::Tokenizer back = through_gguf(tok, tmp / "tok.gguf");
    expect_same_tokenizer(tok, back, flagged_added_tokens(c.json));
  }
  // GPT-2 with add_prefix_space has no llama.cpp pre-tokenizer name: refused, naming the key.
  const data::Tokenizer gpt2 =
      data::Tokenizer::from_tokenizer_json((kTokenizers / "gpt2/tokenizer.json").string())
          .value_or_throw();
  Result<GgufTokenizer> r = gpt2.to_gguf(gpt2.vocab_size());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("gpt2/tokenizer.json: key 'pre_tokenizer'"), std::string::npos)
      << r.error().message;
  // A vocabulary larger than the model's; padding up to a larger one.
  const data::Tokenizer chat =
      data::Tokenizer::from_tokenizer_json((kChatModel / "tokenizer.json").string())
          .value_or_throw();
  EXPECT_FALSE(chat.to_gguf(chat.vocab_size() - 1).ok());
  const GgufTokenizer padded = chat.to_gguf(chat.vocab_size() + 2).value_or_throw();
  ASSERT_EQ(static_cast<int64_t>(padded.tokens.size()), chat.vocab_size() + 2);
  EXPECT_EQ(padded.tokens.back(), "[PAD" + std::to_string(chat.vocab_size() + 1) + "]");
  EXPECT_EQ(padded.token_type.back(), kGgufTokenUnused);
}

// What `ramstream convert` does with a GGUF's tokenizer: none without any tokenizer metadata,
// else gguf_tokenizer + Tokenizer::from_gguf, whose error must name the file and the key. Every
// kind of breakage (cli/robust_convert_test runs some of them through the binary).
TEST(GgufTokenizerImport, EveryKindOfBrokenMetadataIsRefusedNamingFileAndKey) {
  TempDir tmp;
  const std::vector<testing::GgufTokenizerBreakage> breakages = testing::gguf_tokenizer_breakages();
  for (size_t k = 0; k < breakages.size(); ++k) {
    const testing::GgufTokenizerBreakage& b = breakages[k];
    SCOPED_TRACE(b.what);
    const std::string path = tmp / ("broken_" + std::to_string(k) + ".gguf");
    ASSERT_TRUE(testing::rewrite_gguf(kTinyLlamaGguf, path, b.edit).ok());
    const GgufFile f = GgufFile::open(path).value_or_throw();
    ASSERT_TRUE(gguf_model_config(f).ok()) << "the model itself must still import";
    ASSERT_TRUE(gguf_has_tokenizer(f));
    Result<GgufTokenizer> meta = gguf_tokenizer(f);
    std::string message;
    if (!meta.ok()) {
      message = meta.error().message;
    } else {
      Result<data::Tokenizer> tok = data::Tokenizer::from_gguf(meta.value(), path);
      ASSERT_FALSE(tok.ok()) << "accepted";
      message = tok.error().message;
    }
    EXPECT_EQ(message.rfind(path + ": ", 0), 0u) << message;
    EXPECT_NE(message.find("key '" + std::string(b.key) + "'"), std::string::npos) << message;
  }
  // Without any tokenizer metadata: a model, and no tokenizer.
  const std::string bare = tmp / "bare.gguf";
  ASSERT_TRUE(testing::rewrite_gguf(kTinyLlamaGguf, bare, [](testing::GgufMetadata& m) {
                testing::erase_keys(
                    m, [](const std::string& k) { return k.rfind("tokenizer.", 0) == 0; });
              }).ok());
  const GgufFile f = GgufFile::open(bare).value_or_throw();
  EXPECT_FALSE(gguf_has_tokenizer(f));
  Result<ModelConfig> cfg = gguf_model_config(f);
  ASSERT_TRUE(cfg.ok()) << cfg.error().message;
  EXPECT_EQ(cfg.value().vocab_size, 4);  // from token_embd.weight
}

// GGUF -> HF folder (with tokenizer) -> GGUF: the same metadata and the same tensor bytes.
TEST(GgufExport, GgufToHfToGgufIsIdentical) {
  TempDir tmp;
  const GgufFile orig = GgufFile::open(kTinyLlamaGguf).value_or_throw();
  Model m = load_gguf(orig);
  const data::Tokenizer tok =
      data::Tokenizer::from_gguf(gguf_tokenizer(orig).value_or_throw(), kTinyLlamaGguf)
          .value_or_throw();
  HfSaveOptions hf;
  hf.dtype = at::kFloat;
  hf.write_extra_files = [&](const std::string& dir) { return tok.save(dir); };
  hf.extra_config = token_ids_config(tok.bos_id(), tok.eos_id(), tok.pad_id());
  ASSERT_TRUE(save_hf_folder(tmp / "hf", m.cfg, m.params, hf).ok());

  Model again = load_folder(tmp / "hf");
  const data::Tokenizer tok2 =
      data::Tokenizer::from_tokenizer_json(tmp / "hf/tokenizer.json").value_or_throw();
  GgufExportOptions opts;
  opts.type = GgmlType::kF32;
  opts.tokenizer = tok2.to_gguf(again.cfg.vocab_size).value_or_throw();
  ASSERT_TRUE(write_gguf_model(tmp / "again.gguf", again.cfg, again.params, opts).ok());
  const GgufFile back = GgufFile::open(tmp / "again.gguf").value_or_throw();

  const GgufTokenizer a = gguf_tokenizer(orig).value_or_throw();
  const GgufTokenizer b = gguf_tokenizer(back).value_or_throw();
  EXPECT_EQ(b.model, a.model);
  EXPECT_EQ(b.pre, a.pre);
  EXPECT_EQ(b.tokens, a.tokens);
  EXPECT_EQ(b.token_type, a.token_type);
  EXPECT_EQ(b.merges, a.merges);
  EXPECT_EQ(b.bos_id, a.bos_id);
  EXPECT_EQ(b.eos_id, a.eos_id);
  EXPECT_EQ(b.pad_id, a.pad_id);
  // Every architecture key of the original, with the same value.
  for (const std::string& key : orig.keys()) {
    if (key.rfind("llama.", 0) != 0) continue;
    ASSERT_NE(back.find(key), nullptr) << key;
    EXPECT_EQ(back.find(key)->describe(), orig.find(key)->describe()) << key;
    EXPECT_EQ(back.get_float(key).value(), orig.get_float(key).value()) << key;
  }
  ASSERT_EQ(back.tensor_names().size(), orig.tensor_names().size());
  for (const std::string& name : orig.tensor_names()) {
    const GgufTensorInfo& x = *orig.info(name).value();
    Result<const GgufTensorInfo*> y = back.info(name);
    ASSERT_TRUE(y.ok()) << name;
    EXPECT_EQ(y.value()->ne, x.ne) << name;
    EXPECT_EQ(y.value()->type_id, x.type_id) << name;
    ASSERT_EQ(y.value()->nbytes, x.nbytes) << name;
    EXPECT_EQ(std::memcmp(back.data(*y.value()), orig.data(x), x.nbytes), 0) << name;
  }
}

// The same for a qwen2 model without a tokenizer: HF -> GGUF -> HF -> GGUF, identical files.
TEST(GgufExport, Qwen2HfToGgufToHfToGgufIsIdentical) {
  TempDir tmp;
  Model m = load_folder(kHf / "qwen2_bias");
  GgufExportOptions opts;
  opts.type = GgmlType::kF32;
  ASSERT_TRUE(write_gguf_model(tmp / "1.gguf", m.cfg, m.params, opts).ok());
  Model mid = load_gguf(GgufFile::open(tmp / "1.gguf").value_or_throw());
  HfSaveOptions hf;
  hf.dtype = at::kFloat;
  ASSERT_TRUE(save_hf_folder(tmp / "hf", mid.cfg, mid.params, hf).ok());
  Model again = load_folder(tmp / "hf");
  expect_same_config(m.cfg, again.cfg);
  ASSERT_TRUE(write_gguf_model(tmp / "2.gguf", again.cfg, again.params, opts).ok());
  EXPECT_EQ(read_all(tmp / "1.gguf"), read_all(tmp / "2.gguf"));
}

}  // namespace
}  // namespace ramstream::checkpoint
