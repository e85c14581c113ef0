// Writes GGUF files (llama.cpp / ggml's model format), and exports our models to it so that a
// model trained or fine-tuned here runs in llama.cpp again: the llama or qwen2 architecture keys
// llama.cpp's loader reads, tokenizer metadata, Q/K rows in llama.cpp's order, weights as f32,
// f16, bf16 or q8_0. checkpoint/gguf.h reads what this writes (tests round-trip through it), and
// tests/fixtures/check_gguf_export.py checks it with gguf-py, the reader llama.cpp ships.
//
// File layout written (GGUF version 3, every integer little-endian, ggml's grammar):
//   bytes [0, 4)    magic "GGUF"
//   bytes [4, 8)    u32 version = 3
//   bytes [8, 16)   u64 tensor_count
//   bytes [16, 24)  u64 kv_count
//   kv_count metadata pairs, in the order added:
//     u64 key length, key bytes (UTF-8, no NUL)
//     u32 value type               GgufValueType (u8 0, i8 1, u16 2, i16 3, u32 4, i32 5, f32 6,
//                                  bool 7, string 8, array 9, u64 10, i64 11, f64 12)
//     value                        scalar: its 1/2/4/8 bytes (bool: one byte 0 or 1);
//                                  string: u64 length, bytes; array: u32 element type, u64 count,
//                                  then count elements without type words
//   tensor_count tensor infos, in the order added:
//     u64 name length, name bytes
//     u32 n_dims                   1 or 2 here
//     i64 ne[n_dims]               ne[0] = row length: torch shape [rows, cols] is ne [cols, rows]
//     u32 ggml type                f32 0, f16 1, q8_0 8, bf16 30
//     u64 offset                   from the start of the data section, a multiple of 32
//   zero bytes up to the next multiple of 32 from the start of the file (general.alignment is not
//   written: 32 is GGUF's default)
//   the data section: each tensor's bytes at its offset, rows back to back, each tensor followed
//   by zero bytes up to the next multiple of 32 (the last one too, as gguf-py writes):
//     f32   4 bytes per value
//     f16   2 bytes: IEEE binary16, round to nearest even
//     bf16  2 bytes: the high half of the f32, round to nearest even
//     q8_0  ne[0] / 32 blocks of 34 bytes per row (ggml::BlockQ8_0): fp16 d = max|x| / 127, then
//           32 int8 q = round(x / d), halves away from zero; x ~ d * q (ggml-quants.c's
//           quantize_row_q8_0_ref, which gguf-py's Q8_0 matches bit for bit)
// The file is written atomically (write_file_atomic: `<path>.tmp-<pid>`, fsync, rename): a
// failed or interrupted export never leaves a partial file under the final name.
//
// write_gguf_model's metadata (ARCH = "llama" for llama and mistral, "qwen2" for qwen2):
//   general.architecture string ARCH; general.type string "model"; general.name string (if
//   given); general.file_type u32 (0 all f32, 1 mostly f16, 7 mostly q8_0, 32 mostly bf16);
//   general.quantization_version u32 2;
//   ARCH.vocab_size, .context_length, .embedding_length, .block_count, .feed_forward_length,
//   .attention.head_count, .attention.head_count_kv, .attention.key_length,
//   .attention.value_length, .rope.dimension_count: u32; .rope.freq_base,
//   .attention.layer_norm_rms_epsilon: f32; linear RoPE scaling: .rope.scaling.type string
//   "linear" and .rope.scaling.factor f32;
//   with a tokenizer: tokenizer.ggml.model string, .pre string, .tokens array[string],
//   .token_type array[i32], .scores array[f32] (when it has them), .merges array[string],
//   .bos_token_id / .eos_token_id / .padding_token_id / .unknown_token_id u32 (those it has),
//   .add_bos_token / .add_eos_token bool (when known), tokenizer.chat_template string (if any).
// Tensors, in this order: token_embd.weight [C, V]; rope_freqs.weight [D/2] (llama3 RoPE scaling:
// the per-frequency divisors llama.cpp's converter computes); per layer N blk.N.attn_norm.weight
// [C], attn_q.weight [C, NH*D], attn_k.weight [C, NKV*D], attn_v.weight [C, NKV*D], their biases
// when the model has them, attn_output.weight [NH*D, C] (+ bias), ffn_norm.weight [C],
// ffn_gate.weight [C, F], ffn_up.weight [C, F], ffn_down.weight [F, C]; output_norm.weight [C];
// output.weight [C, V] unless the embeddings are tied. 1-D tensors are f32 whatever the type
// asked for, and q8_0 falls back to f16 for a tensor whose rows are not a multiple of 32 (both as
// llama.cpp's converter does). For "llama", attn_q / attn_k rows (and biases) are permuted per
// head into llama.cpp's interleaved RoPE order (gguf_permute_rope_rows); qwen2 keeps HF's order.
//
//   GgufExportOptions opts;
//   opts.type = GgmlType::kQ8_0;
//   opts.tokenizer = tokenizer.to_gguf(cfg.vocab_size).value_or_throw();
//   Result<GgufExportSummary> r = write_gguf_model("out/model-q8_0.gguf", cfg, params, opts);
//   if (!r.ok()) std::cerr << r.error().message << "\n";
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/atomic_file.h"
#include "checkpoint/gguf.h"
#include "model/config.h"
#include "model/params.h"
#include "util/result.h"

namespace ramstream::checkpoint {

// Metadata values for GgufWriter::add.
GgufValue gguf_string(std::string s);
GgufValue gguf_u32(uint32_t v);
GgufValue gguf_f32(float v);
GgufValue gguf_bool(bool v);
GgufValue gguf_string_array(std::vector<std::string> v);
GgufValue gguf_i32_array(const std::vector<int32_t>& v);
GgufValue gguf_f32_array(const std::vector<float>& v);

// A GGUF file assembled in memory (metadata and tensor infos) whose tensor bytes are produced
// while writing, one tensor at a time.
class GgufWriter {
 public:
  // Writes a tensor's bytes, exactly its size (ggml_type_traits: ne[0] / block_size blocks of
  // type_size bytes per row; checked).
  using DataWriter = std::function<Status(OutFile&)>;

  // In the order written. A repeated key or name, an unknown type, bad dims or a malformed value
  // make write() fail naming it.
  void add(const std::string& key, GgufValue value);
  void add_tensor(const std::string& name, uint32_t type_id, std::vector<int64_t> ne,
                  DataWriter write_data);

  // Writes `path` atomically (see the top of this file). Refuses a `path` that is a folder.
  Status write(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    uint32_t type_id;
    std::vector<int64_t> ne;
    DataWriter write_data;
  };
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<Tensor> tensors_;
};

struct GgufExportOptions {
  GgmlType type = GgmlType::kF16;          // 2-D tensors: kF32, kF16, kBF16 or kQ8_0
  std::optional<GgufTokenizer> tokenizer;  // none: no tokenizer.* keys (llama.cpp needs them)
  std::string name;                        // general.name; "" leaves it out
  bool overwrite = false;                  // replace an existing file at the path
};

struct GgufExportSummary {
  std::string arch;                                // "llama", "qwen2"
  std::map<std::string, int64_t> tensors_by_type;  // "f32" -> 9, "q8_0" -> 14
  uint64_t bytes = 0;                              // the file's size
  // What llama.cpp's format cannot carry and was dropped or changed (a sliding window, ...).
  std::vector<std::string> notes;
};

// The ggml types write_gguf_model writes for "f32", "f16", "bf16", "q8_0" (nullopt for others).
std::optional<GgmlType> gguf_export_type(const std::string& name);

// Writes `params` (any dtype; read, never changed) as a GGUF file at `path`, laid out as above.
// Everything is checked before the file is created: the architecture (llama, mistral, qwen2),
// sizes that must fit u32, every weight finite (and within f16's range for f16 or q8_0), the
// tokenizer's token count equal to the vocabulary and its ids inside it. An existing `path` is
// refused unless opts.overwrite; a folder always. Missing parent folders are created; errors
// about the parent name it.
Result<GgufExportSummary> write_gguf_model(const std::string& path, const model::ModelConfig& cfg,
                                           model::ModelParams& params,
                                           const GgufExportOptions& opts);

// llama.cpp's rope_freqs.weight for llama3 RoPE scaling: per rotary frequency i (D/2 of them) the
// factor its frequency is divided by (1 above the high-frequency wavelength, `factor` below the
// low one, smoothly interpolated between), as convert_hf_to_gguf.py computes it.
std::vector<float> llama3_rope_freq_factors(const model::ModelConfig& cfg);

}  // namespace ramstream::checkpoint
