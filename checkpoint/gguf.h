// Read-only access to GGUF files (llama.cpp / ggml's model format) through mmap, with every
// field bounds- and overflow-checked, dequantisation to fp32, and import of Llama models
// (config, weights, tokenizer metadata) into our types.
//
// File format, GGUF v2 and v3 (all integers little-endian; v3 added big-endian files, which are
// refused; v1 used u32 counts and lengths and is refused):
//   bytes [0, 4)    magic "GGUF" (0x47 0x47 0x55 0x46)
//   bytes [4, 8)    u32 version: 2 or 3
//   bytes [8, 16)   u64 tensor_count
//   bytes [16, 24)  u64 kv_count
//   then kv_count metadata pairs:
//     string key                       string = u64 byte length, then UTF-8 bytes (no NUL)
//     u32 value_type                   GgufValueType below
//     value                            u8/i8 (1 byte), u16/i16 (2), u32/i32/f32 (4), bool (1
//                                      byte, 0 or 1), u64/i64/f64 (8), string, or array =
//                                      u32 element type, u64 count, then count values of that
//                                      type without their type words (arrays may nest)
//   then tensor_count tensor infos:
//     string name
//     u32 n_dims                       1..4
//     i64 ne[n_dims]                   ne[0] is the fastest-varying dim: ne = [cols, rows] is a
//                                      row-major torch tensor of shape [rows, cols]
//     u32 ggml_type                    GgmlType below; ne[0] is a multiple of its block size
//     u64 offset                       from the start of the data section; a multiple of the
//                                      alignment
//   padding to a multiple of the alignment (key "general.alignment", u32 power of two, default
//   32) from the start of the file
//   the data section: each tensor is ne[1]*ne[2]*ne[3] rows of ne[0] / block_size blocks of
//   type_size bytes, rows back to back.
// A file is refused (Error naming the file, and the key or tensor) when: it is truncated anywhere;
// the magic or version is wrong; a count cannot fit in the bytes left; a value type or ggml type
// is unknown; arrays nest deeper than kMaxArrayDepth; a key or tensor name repeats;
// general.alignment is not a power of two; n_dims is outside 1..4; a dim is < 1 or the element or
// byte count overflows; ne[0] is not a multiple of the type's block size; an offset is misaligned
// or its tensor runs past end of file; two tensors overlap.
//
//   Result<GgufFile> f = GgufFile::open(path);
//   if (!f.ok()) return f.error();
//   Result<std::string> arch = f.value().get_string("general.architecture");
//   for (const std::string& name : f.value().tensor_names()) {
//     const GgufTensorInfo& info = *f.value().info(name).value();
//     at::Tensor w = f.value().dequantize(name).value();  // fp32, torch order (ne reversed)
//   }
//
//   model::ModelConfig cfg = gguf_model_config(f.value()).value_or_throw();
//   model::ModelParams params = model::allocate_model_params(cfg, at::kFloat);
//   Status st = gguf_load_weights(f.value(), cfg, params);
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <ATen/ATen.h>

#include "checkpoint/mapped_file.h"
#include "model/config.h"
#include "model/params.h"
#include "util/result.h"

namespace ramstream::checkpoint {

// ---- ggml quantised blocks -------------------------------------------------------------------
// Byte layouts as in ggml's ggml-common.h. Scales are IEEE fp16 bit patterns (ggml_half). A
// block of block_size values dequantises to block_size consecutive floats of one row.
namespace ggml {

using half = uint16_t;
constexpr int kQK4_0 = 32, kQK4_1 = 32, kQK5_0 = 32, kQK5_1 = 32, kQK8_0 = 32;
constexpr int kQK_K = 256;       // K-quant super-block
constexpr int kKScaleSize = 12;  // packed 6-bit scales and mins of Q4_K / Q5_K

// x = d * (q - 8), q in 0..15; qs[j] holds value j (low nibble) and j + 16 (high nibble).
struct BlockQ4_0 {
  half d;
  uint8_t qs[kQK4_0 / 2];
};
static_assert(sizeof(BlockQ4_0) == sizeof(half) + kQK4_0 / 2, "wrong q4_0 block size");

// x = d * q + m, q in 0..15, nibbles as in Q4_0.
struct BlockQ4_1 {
  half d;
  half m;
  uint8_t qs[kQK4_1 / 2];
};
static_assert(sizeof(BlockQ4_1) == 2 * sizeof(half) + kQK4_1 / 2, "wrong q4_1 block size");

// x = d * (q - 16), q = nibble | (bit j of qh) << 4.
struct BlockQ5_0 {
  half d;
  uint8_t qh[4];
  uint8_t qs[kQK5_0 / 2];
};
static_assert(sizeof(BlockQ5_0) == sizeof(half) + 4 + kQK5_0 / 2, "wrong q5_0 block size");

// x = d * q + m, q as in Q5_0.
struct BlockQ5_1 {
  half d;
  half m;
  uint8_t qh[4];
  uint8_t qs[kQK5_1 / 2];
};
static_assert(sizeof(BlockQ5_1) == 2 * sizeof(half) + 4 + kQK5_1 / 2, "wrong q5_1 block size");

// x = d * q.
struct BlockQ8_0 {
  half d;
  int8_t qs[kQK8_0];
};
static_assert(sizeof(BlockQ8_0) == sizeof(half) + kQK8_0, "wrong q8_0 block size");

// 16 sub-blocks of 16: x = d * (scales & 0xF) * q - dmin * (scales >> 4), q 2-bit.
struct BlockQ2_K {
  uint8_t scales[kQK_K / 16];
  uint8_t qs[kQK_K / 4];
  half d;
  half dmin;
};
static_assert(sizeof(BlockQ2_K) == 2 * sizeof(half) + kQK_K / 16 + kQK_K / 4,
              "wrong q2_K block size");

// 16 sub-blocks of 16: x = d * (scale - 32) * (q - 4 * !hbit), scales 6-bit packed, q 2-bit.
struct BlockQ3_K {
  uint8_t hmask[kQK_K / 8];
  uint8_t qs[kQK_K / 4];
  uint8_t scales[12];
  half d;
};
static_assert(sizeof(BlockQ3_K) == sizeof(half) + kQK_K / 4 + kQK_K / 8 + 12,
              "wrong q3_K block size");

// 8 sub-blocks of 32: x = d * sc * q - dmin * m, sc/m 6-bit packed in scales, q 4-bit.
struct BlockQ4_K {
  half d;
  half dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ4_K) == 2 * sizeof(half) + kKScaleSize + kQK_K / 2,
              "wrong q4_K block size");

// As Q4_K with a fifth bit per value in qh.
struct BlockQ5_K {
  half d;
  half dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qh[kQK_K / 8];
  uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ5_K) == 2 * sizeof(half) + kKScaleSize + kQK_K / 8 + kQK_K / 2,
              "wrong q5_K block size");

// 16 sub-blocks of 16: x = d * scales[i] * (q - 32), q = 4 low bits in ql | 2 high bits in qh.
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  half d;
};
static_assert(sizeof(BlockQ6_K) == sizeof(half) + kQK_K / 16 + 3 * kQK_K / 4,
              "wrong q6_K block size");

float fp16_to_fp32(half h);
float bf16_to_fp32(uint16_t b);

}  // namespace ggml

// ---- types -----------------------------------------------------------------------------------

// ggml tensor types (ggml.h enum ggml_type). Ids 4, 5 and 31..33, 36..38 were removed upstream.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
};

struct GgmlTypeTraits {
  GgmlType type;
  const char* name;    // as ggml prints it: "q4_1"
  int64_t block_size;  // values per block
  int64_t type_size;   // bytes per block
  bool dequantize;     // GgufFile::dequantize supports it
};

// nullptr for an id this reader does not know.
const GgmlTypeTraits* ggml_type_traits(uint32_t id);
inline const GgmlTypeTraits* ggml_type_traits(GgmlType t) {
  return ggml_type_traits(static_cast<uint32_t>(t));
}
// "q4_1", or "unknown type 99".
std::string ggml_type_name(uint32_t id);

// Decodes `nblocks` blocks of type `id` at `src` into nblocks * block_size floats. Errors for
// types without a dequantiser. The caller guarantees the byte count.
Status ggml_dequantize(uint32_t id, const uint8_t* src, int64_t nblocks, float* dst);

enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};
// "u32", "string", "array" ...
const char* gguf_value_type_name(GgufValueType t);
// Bytes of one value of a scalar type; 0 for string and array.
uint64_t gguf_scalar_size(GgufValueType t);

// One metadata value. Scalars are widened into u (unsigned ints, bool), i (signed ints) or f
// (floats); arrays keep their elements compactly: scalars as the file's packed little-endian
// bytes (a hostile million-element u8 array costs a million bytes, not a million objects).
struct GgufValue {
  GgufValueType type = GgufValueType::kUint8;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0.0;
  std::string str;  // kString

  // kArray only.
  GgufValueType elem_type = GgufValueType::kUint8;
  uint64_t count = 0;
  std::vector<uint8_t> raw;          // scalar elements: count * size bytes as in the file
  std::vector<std::string> strings;  // string elements
  std::vector<GgufValue> arrays;     // nested array elements

  bool is_array() const { return type == GgufValueType::kArray; }
  // Any integer type (not bool) whose value fits int64.
  std::optional<int64_t> as_int() const;
  // f32/f64, or an integer.
  std::optional<double> as_double() const;
  // Element `k` of a scalar array as a scalar value; nullopt out of range or for string/array
  // elements.
  std::optional<GgufValue> scalar_at(uint64_t k) const;
  // "u32", "array[string; 49152]", "array[array; 2]".
  std::string describe() const;
};

struct GgufTensorInfo {
  std::string name;
  uint32_t type_id = 0;     // raw id; known to ggml_type_traits (checked on open)
  std::vector<int64_t> ne;  // ggml order, ne[0] fastest
  uint64_t offset = 0;      // from the start of the data section
  uint64_t nbytes = 0;

  GgmlType type() const { return static_cast<GgmlType>(type_id); }
  int64_t numel() const;
  std::vector<int64_t> torch_shape() const;  // ne reversed
};

class GgufFile {
 public:
  static constexpr uint32_t kDefaultAlignment = 32;
  static constexpr int kMaxArrayDepth = 8;  // arrays of arrays ... deeper files are refused
  static constexpr uint32_t kMaxDims = 4;   // GGML_MAX_DIMS

  static Result<GgufFile> open(const std::string& path);
  // Parses a copy of `bytes`; `name` stands for the path in messages (fuzzing, tests).
  static Result<GgufFile> open_bytes(const uint8_t* bytes, size_t size,
                                     const std::string& name = "<memory>");

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_start_; }  // from the start of the file

  // Metadata in file order.
  const std::vector<std::string>& keys() const { return keys_; }
  const GgufValue* find(const std::string& key) const;
  // Typed getters; errors name the file and key (missing, or the type found).
  Result<std::string> get_string(const std::string& key) const;
  Result<int64_t> get_int(const std::string& key) const;   // any integer type that fits
  Result<double> get_float(const std::string& key) const;  // f32, f64 or an integer
  Result<bool> get_bool(const std::string& key) const;
  Result<std::vector<std::string>> get_string_array(const std::string& key) const;
  Result<std::vector<int64_t>> get_int_array(const std::string& key) const;
  Result<std::vector<double>> get_float_array(const std::string& key) const;

  // In file (tensor info) order.
  const std::vector<std::string>& tensor_names() const { return names_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  Result<const GgufTensorInfo*> info(const std::string& name) const;
  // The tensor's raw bytes (info.nbytes of them), valid while this object lives.
  const uint8_t* data(const GgufTensorInfo& info) const;
  // A fresh fp32 CPU tensor of shape info.torch_shape(). Errors name the tensor and its type
  // when that type has no dequantiser.
  Result<at::Tensor> dequantize(const std::string& name) const;

 private:
  GgufFile() = default;
  static Result<GgufFile> parse(std::shared_ptr<const MappedFile> storage, const std::string& path);
  Error key_error(const std::string& key, const std::string& what) const;

  std::string path_;
  std::shared_ptr<const MappedFile> storage_;
  uint32_t version_ = 0;
  uint64_t alignment_ = kDefaultAlignment;
  uint64_t data_start_ = 0;
  std::vector<std::string> keys_;
  std::unordered_map<std::string, GgufValue> metadata_;
  std::vector<GgufTensorInfo> infos_;  // file order
  std::vector<std::string> names_;
  std::unordered_map<std::string, size_t> index_;
};

// ---- model import ----------------------------------------------------------------------------

// A ModelConfig from llama.cpp metadata: general.architecture must be "llama" or "qwen2" (the
// model_type it gets; qwen2 must have q/k/v biases); reads ARCH.{block_count, context_length,
// embedding_length, feed_forward_length, attention.head_count, attention.head_count_kv,
// attention.key_length, attention.layer_norm_rms_epsilon, rope.freq_base, rope.dimension_count,
// rope.scaling.*}, f32 values as the shortest decimal that gives the same float (1e-5, not
// 9.99999974737875e-06); the vocabulary size is the length of tokenizer.ggml.tokens (checked
// against ARCH.vocab_size when present), else ARCH.vocab_size, else the rows of token_embd.weight
// (a file without tokenizer metadata); embeddings are tied when there is no output.weight; q/k/v
// (o) biases when blk.0.attn_q.bias (attn_output.bias) exist. Refuses what the model cannot
// represent (partial rotary, yarn scaling, llama3-style rope_freqs.weight factors), and metadata
// the tensors contradict (token_embd / blk.0 q, k, ffn_up shapes, one attn_norm per layer), so a
// hostile header cannot make allocate_model_params ask for far more memory than the file holds.
Result<model::ModelConfig> gguf_model_config(const GgufFile& f);

// Dequantises every tensor of `f` into `params` (any dtype; converts on copy), mapping llama.cpp
// names (token_embd.weight, blk.N.attn_q.weight, ...) to Hugging Face names and those to our
// views with model::hf_param_view. Undoes the row permutation llama.cpp's converter applies to
// attn_q/attn_k (weights and biases) of "llama" files for its interleaved RoPE (qwen2 files keep
// HF's row order: llama.cpp runs them with NEOX RoPE). Everything is checked before
// anything is written: missing, unexpected, mis-shaped or undequantisable tensors are listed in
// one error.
Status gguf_load_weights(const GgufFile& f, const model::ModelConfig& cfg,
                         model::ModelParams& params);

// The Hugging Face name of a llama.cpp tensor name ("blk.3.attn_q.weight" ->
// "model.layers.3.self_attn.q_proj.weight"); "" when there is none. Layer ranges are checked
// later, by model::hf_param_view.
std::string gguf_name_to_hf(const std::string& gguf_name);
// The inverse: "model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight"; "" for none.
std::string hf_name_to_gguf(const std::string& hf_name);

// llama.cpp's architecture name for a model_type: "llama" (llama, mistral), "qwen2"; "" for none.
std::string gguf_arch_of(const model::ModelConfig& cfg);
// Whether llama.cpp stores ARCH's q/k rows permuted (true for "llama", whose ggml RoPE pairs
// adjacent dims; false for "qwen2", run with NEOX RoPE on HF's rotate-half order).
bool gguf_arch_permutes_rope_rows(const std::string& arch);
// HF rotate-half rows -> llama.cpp's interleaved rows, per head (convert_hf_to_gguf.py's
// permute(): w.reshape(n_head, 2, D/2, ...).swapaxes(1, 2)), for weights [rows, C] and biases
// [rows]; unpermute is its inverse (transformers' _reverse_permute_weights). k uses the kv heads.
at::Tensor gguf_permute_rope_rows(const at::Tensor& w, int64_t n_head);
at::Tensor gguf_unpermute_rope_rows(const at::Tensor& w, int64_t n_head);

// Tokenizer metadata as stored (tokenizer.ggml.*); plain data for the tokenizer in data/.
struct GgufTokenizer {
  std::string model;  // tokenizer.ggml.model: "gpt2" (byte-level BPE), "llama" (SentencePiece)
  std::string pre;    // tokenizer.ggml.pre: the pre-tokenizer regex set, e.g. "smollm"; may be ""
  std::vector<std::string> tokens;
  std::vector<int32_t> token_type;  // empty when absent; 1 normal, 2 unknown, 3 control, ...
  std::vector<float> scores;        // empty when absent (SentencePiece)
  std::vector<std::string> merges;  // "a b" pairs, empty when absent
  int64_t bos_id = -1, eos_id = -1, pad_id = -1, unk_id = -1;  // -1: absent
  std::optional<bool> add_bos, add_eos;
  std::string chat_template;  // tokenizer.chat_template, "" when absent
};

// llama.cpp's token types (llama_token_type), the values of tokenizer.ggml.token_type.
enum GgufTokenType : int32_t {
  kGgufTokenUndefined = 0,
  kGgufTokenNormal = 1,
  kGgufTokenUnknown = 2,
  kGgufTokenControl = 3,
  kGgufTokenUserDefined = 4,
  kGgufTokenUnused = 5,
  kGgufTokenByte = 6,
};
constexpr int32_t kGgufTokenTypeMax = kGgufTokenByte;

// Whether `f` has any tokenizer metadata (a key starting with "tokenizer."). A file with some
// must have all of it right: gguf_tokenizer() then tells what is wrong.
bool gguf_has_tokenizer(const GgufFile& f);

// Errors name the file and the key: a missing tokenizer.ggml.model or tokens, a mistyped key,
// token_type or scores whose length differs from tokens, a token type outside 0..6, a special
// id outside the vocabulary.
Result<GgufTokenizer> gguf_tokenizer(const GgufFile& f);

}  // namespace ramstream::checkpoint
