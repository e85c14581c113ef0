#include "checkpoint/gguf_writer.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>

#include <ATen/core/grad_mode.h>
#include <c10/util/Half.h>

#include "model/hf_names.h"
#include "util/user_file.h"

namespace ramstream::checkpoint {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "GGUF writer assumes little-endian");

namespace {

namespace fs = std::filesystem;
using VT = GgufValueType;

constexpr uint64_t kAlignment = GgufFile::kDefaultAlignment;
constexpr uint32_t kVersion = 3;
// Rows converted per write: bounds the staging memory whatever the tensor's size.
constexpr int64_t kChunkValues = 1 << 20;

// llama.cpp's llama_ftype values for general.file_type.
constexpr uint32_t kFileTypeAllF32 = 0, kFileTypeMostlyF16 = 1, kFileTypeMostlyQ8_0 = 7,
                   kFileTypeMostlyBF16 = 32;
constexpr uint32_t kQuantizationVersion = 2;  // GGML_QNT_VERSION
constexpr float kF16Max = 65504.0f;

template <class T>
void put(std::string* out, T v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof v);
}

void put_string(std::string* out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out->append(s);
}

// A scalar value's bytes from the widened fields of GgufValue.
void put_scalar(std::string* out, const GgufValue& v) {
  switch (v.type) {
    case VT::kUint8:
      return put(out, static_cast<uint8_t>(v.u));
    case VT::kInt8:
      return put(out, static_cast<int8_t>(v.i));
    case VT::kUint16:
      return put(out, static_cast<uint16_t>(v.u));
    case VT::kInt16:
      return put(out, static_cast<int16_t>(v.i));
    case VT::kUint32:
      return put(out, static_cast<uint32_t>(v.u));
    case VT::kInt32:
      return put(out, static_cast<int32_t>(v.i));
    case VT::kFloat32:
      return put(out, static_cast<float>(v.f));
    case VT::kBool:
      return put(out, static_cast<uint8_t>(v.u != 0));
    case VT::kUint64:
      return put(out, static_cast<uint64_t>(v.u));
    case VT::kInt64:
      return put(out, static_cast<int64_t>(v.i));
    case VT::kFloat64:
      return put(out, v.f);
    default:
      return;
  }
}

// The value without its type word (an array element, or after the type of a kv pair).
Status put_value(std::string* out, const GgufValue& v, int depth, const std::string& what) {
  if (static_cast<uint32_t>(v.type) > static_cast<uint32_t>(VT::kFloat64)) {
    return Error{what + ": unknown value type " + std::to_string(static_cast<uint32_t>(v.type))};
  }
  if (v.type == VT::kString) {
    put_string(out, v.str);
    return Ok{};
  }
  if (v.type != VT::kArray) {
    put_scalar(out, v);
    return Ok{};
  }
  if (depth >= GgufFile::kMaxArrayDepth) return Error{what + ": arrays nested too deep"};
  if (static_cast<uint32_t>(v.elem_type) > static_cast<uint32_t>(VT::kFloat64)) {
    return Error{what + ": unknown array element type"};
  }
  put<uint32_t>(out, static_cast<uint32_t>(v.elem_type));
  put<uint64_t>(out, v.count);
  if (v.elem_type == VT::kString) {
    if (v.strings.size() != v.count) return Error{what + ": string count differs from count"};
    for (const std::string& s : v.strings) put_string(out, s);
  } else if (v.elem_type == VT::kArray) {
    if (v.arrays.size() != v.count) return Error{what + ": array count differs from count"};
    for (size_t k = 0; k < v.arrays.size(); ++k) {
      Status s = put_value(out, v.arrays[k], depth + 1, what + "[" + std::to_string(k) + "]");
      if (!s.ok()) return s;
    }
  } else {
    if (v.raw.size() != v.count * gguf_scalar_size(v.elem_type)) {
      return Error{what + ": " + std::to_string(v.raw.size()) + " element bytes for " +
                   std::to_string(v.count) + " elements"};
    }
    out->append(reinterpret_cast<const char*>(v.raw.data()), v.raw.size());
  }
  return Ok{};
}

Status put_zeros(OutFile& f, uint64_t n) {
  static const char kZeros[kAlignment] = {};
  return f.write(kZeros, static_cast<size_t>(n));
}

uint64_t padding_after(uint64_t size) {
  return (kAlignment - size % kAlignment) % kAlignment;
}

}  // namespace

// ---- values ----------------------------------------------------------------------------------

GgufValue gguf_string(std::string s) {
  GgufValue v;
  v.type = VT::kString;
  v.str = std::move(s);
  return v;
}

GgufValue gguf_u32(uint32_t x) {
  GgufValue v;
  v.type = VT::kUint32;
  v.u = x;
  return v;
}

GgufValue gguf_f32(float x) {
  GgufValue v;
  v.type = VT::kFloat32;
  v.f = x;
  return v;
}

GgufValue gguf_bool(bool x) {
  GgufValue v;
  v.type = VT::kBool;
  v.u = x ? 1 : 0;
  return v;
}

GgufValue gguf_string_array(std::vector<std::string> s) {
  GgufValue v;
  v.type = VT::kArray;
  v.elem_type = VT::kString;
  v.count = s.size();
  v.strings = std::move(s);
  return v;
}

namespace {

template <class T>
GgufValue scalar_array(VT elem, const std::vector<T>& xs) {
  GgufValue v;
  v.type = VT::kArray;
  v.elem_type = elem;
  v.count = xs.size();
  v.raw.resize(xs.size() * sizeof(T));
  if (!xs.empty()) std::memcpy(v.raw.data(), xs.data(), v.raw.size());
  return v;
}

}  // namespace

GgufValue gguf_i32_array(const std::vector<int32_t>& xs) {
  return scalar_array(VT::kInt32, xs);
}
GgufValue gguf_f32_array(const std::vector<float>& xs) {
  return scalar_array(VT::kFloat32, xs);
}

// ---- the writer ------------------------------------------------------------------------------

void GgufWriter::add(const std::string& key, GgufValue value) {
  kv_.emplace_back(key, std::move(value));
}

void GgufWriter::add_tensor(const std::string& name, uint32_t type_id, std::vector<int64_t> ne,
                            DataWriter write_data) {
  tensors_.push_back({name, type_id, std::move(ne), std::move(write_data)});
}

Status GgufWriter::write(const std::string& path) const {
  auto fail = [&](const std::string& what) -> Error { return Error{path + ": " + what}; };
  std::error_code ec;
  if (fs::is_directory(path, ec)) return fail("is a folder, expected a .gguf file to write");

  // Header, metadata and tensor infos go into one buffer (a vocabulary is ~10^5 small strings).
  std::string head;
  head.append("GGUF", 4);
  put<uint32_t>(&head, kVersion);
  put<uint64_t>(&head, tensors_.size());
  put<uint64_t>(&head, kv_.size());
  std::set<std::string> keys;
  for (const auto& [key, value] : kv_) {
    if (!keys.insert(key).second) return fail("metadata key '" + key + "' added twice");
    put_string(&head, key);
    put<uint32_t>(&head, static_cast<uint32_t>(value.type));
    Status s = put_value(&head, value, 0, "metadata key '" + key + "'");
    if (!s.ok()) return fail(s.error().message);
  }
  std::vector<uint64_t> sizes;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    const std::string what = "tensor '" + t.name + "'";
    if (!names.insert(t.name).second) return fail(what + " added twice");
    const GgmlTypeTraits* traits = ggml_type_traits(t.type_id);
    if (traits == nullptr) return fail(what + ": unknown ggml type " + std::to_string(t.type_id));
    if (t.ne.empty() || t.ne.size() > GgufFile::kMaxDims) return fail(what + ": 1..4 dims");
    uint64_t numel = 1;
    for (int64_t d : t.ne) {
      if (d < 1) return fail(what + ": dims must be >= 1");
      numel *= static_cast<uint64_t>(d);
    }
    if (t.ne[0] % traits->block_size != 0) {
      return fail(what + ": ne[0] = " + std::to_string(t.ne[0]) + " is not a multiple of " +
                  traits->name + "'s block size " + std::to_string(traits->block_size));
    }
    const uint64_t bytes = numel / static_cast<uint64_t>(traits->block_size) *
                           static_cast<uint64_t>(traits->type_size);
    put_string(&head, t.name);
    put<uint32_t>(&head, static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) put<int64_t>(&head, d);
    put<uint32_t>(&head, t.type_id);
    put<uint64_t>(&head, offset);
    sizes.push_back(bytes);
    offset += bytes + padding_after(bytes);
  }
  head.append(padding_after(head.size()), '\0');

  return write_file_atomic(path, [&](OutFile& f) -> Status {
    Status s = f.write(head.data(), head.size());
    for (size_t k = 0; s.ok() && k < tensors_.size(); ++k) {
      const uint64_t before = f.size();
      s = tensors_[k].write_data(f);
      if (!s.ok()) break;
      const uint64_t written = f.size() - before;
      if (written != sizes[k]) {
        return Error{path + ": tensor '" + tensors_[k].name + "': wrote " +
                     std::to_string(written) + " bytes, its type and dims need " +
                     std::to_string(sizes[k])};
      }
      s = put_zeros(f, padding_after(sizes[k]));
    }
    return s;
  });
}

// ---- model export ----------------------------------------------------------------------------

std::optional<GgmlType> gguf_export_type(const std::string& name) {
  if (name == "f32") return GgmlType::kF32;
  if (name == "f16") return GgmlType::kF16;
  if (name == "bf16") return GgmlType::kBF16;
  if (name == "q8_0") return GgmlType::kQ8_0;
  return std::nullopt;
}

std::vector<float> llama3_rope_freq_factors(const model::ModelConfig& cfg) {
  // Float arithmetic in convert_hf_to_gguf.py's order (it computes on float32 tensors).
  const model::RopeScaling& s = cfg.rope_scaling;
  const float factor = static_cast<float>(s.factor);
  const float low = static_cast<float>(s.low_freq_factor);
  const float high = static_cast<float>(s.high_freq_factor);
  const float old_context = static_cast<float>(s.original_max_position_embeddings);
  const float low_freq_wavelen = old_context / low;
  const float high_freq_wavelen = old_context / high;
  const float base = static_cast<float>(cfg.rope_theta);
  const float pi = static_cast<float>(M_PI);
  std::vector<float> out;
  for (int64_t i = 0; i < cfg.head_dim; i += 2) {
    const float freq =
        1.0f / std::pow(base, static_cast<float>(i) / static_cast<float>(cfg.head_dim));
    const float wavelen = 2.0f * pi / freq;
    if (wavelen < high_freq_wavelen) {
      out.push_back(1.0f);
    } else if (wavelen > low_freq_wavelen) {
      out.push_back(factor);
    } else {
      const float smooth = (old_context / wavelen - low) / (high - low);
      out.push_back(1.0f / ((1.0f - smooth) / factor + smooth));
    }
  }
  return out;
}

namespace {

// One tensor as it goes into the file.
struct ExportTensor {
  std::string gguf_name;
  std::string source;  // HF name, for messages
  at::Tensor data;     // torch shape, already in llama.cpp's row order
  GgmlType type;
};

// Writes rows of `t` (fp32 or any float dtype, 1-D or 2-D) as `type`, a chunk of rows at a time.
Status write_tensor_data(OutFile& f, const at::Tensor& t, GgmlType type) {
  const at::Tensor rows2d = t.dim() == 1 ? t.reshape({1, t.size(0)}) : t;
  const int64_t n_rows = rows2d.size(0), n_cols = rows2d.size(1);
  const int64_t chunk_rows = std::max<int64_t>(1, kChunkValues / n_cols);
  std::vector<ggml::BlockQ8_0> blocks;
  for (int64_t r = 0; r < n_rows; r += chunk_rows) {
    const int64_t n = std::min(chunk_rows, n_rows - r);
    const at::Tensor chunk = rows2d.narrow(0, r, n).to(at::kFloat).contiguous();
    Status s = Ok{};
    switch (type) {
      case GgmlType::kF32:
        s = f.write(chunk.data_ptr<float>(), static_cast<size_t>(chunk.numel()) * 4);
        break;
      case GgmlType::kF16:
      case GgmlType::kBF16: {
        const at::Tensor half = chunk.to(type == GgmlType::kF16 ? at::kHalf : at::kBFloat16);
        s = f.write(half.data_ptr(), static_cast<size_t>(half.numel()) * 2);
        break;
      }
      case GgmlType::kQ8_0: {
        // ggml-quants.c quantize_row_q8_0_ref, block by block.
        const float* x = chunk.data_ptr<float>();
        const int64_t n_blocks = chunk.numel() / ggml::kQK8_0;
        blocks.resize(static_cast<size_t>(n_blocks));
        for (int64_t b = 0; b < n_blocks; ++b) {
          const float* xb = x + b * ggml::kQK8_0;
          float amax = 0.0f;
          for (int j = 0; j < ggml::kQK8_0; ++j) amax = std::max(amax, std::fabs(xb[j]));
          const float d = amax / 127.0f;
          const float id = d != 0.0f ? 1.0f / d : 0.0f;
          ggml::BlockQ8_0& out = blocks[static_cast<size_t>(b)];
          out.d = c10::Half(d).x;
          for (int j = 0; j < ggml::kQK8_0; ++j) {
            out.qs[j] = static_cast<int8_t>(std::round(xb[j] * id));
          }
        }
        s = f.write(blocks.data(), blocks.size() * sizeof(ggml::BlockQ8_0));
        break;
      }
      default:
        return Error{f.path() + ": no writer for ggml type " +
                     ggml_type_name(static_cast<uint32_t>(type))};
    }
    if (!s.ok()) return s;
  }
  return Ok{};
}

uint32_t file_type_of(GgmlType t) {
  switch (t) {
    case GgmlType::kF16:
      return kFileTypeMostlyF16;
    case GgmlType::kBF16:
      return kFileTypeMostlyBF16;
    case GgmlType::kQ8_0:
      return kFileTypeMostlyQ8_0;
    default:
      return kFileTypeAllF32;
  }
}

Status add_tokenizer(GgufWriter& w, const GgufTokenizer& tok, const model::ModelConfig& cfg,
                     const std::string& path) {
  auto fail = [&](const std::string& key, const std::string& what) -> Error {
    return Error{path + ": tokenizer metadata '" + key + "': " + what};
  };
  const int64_t n = static_cast<int64_t>(tok.tokens.size());
  if (n != cfg.vocab_size) {
    return fail("tokenizer.ggml.tokens", std::to_string(n) + " tokens for the model's " +
                                             std::to_string(cfg.vocab_size) + "-row embedding");
  }
  if (!tok.token_type.empty() && static_cast<int64_t>(tok.token_type.size()) != n) {
    return fail("tokenizer.ggml.token_type", "length differs from the tokens'");
  }
  if (!tok.scores.empty() && static_cast<int64_t>(tok.scores.size()) != n) {
    return fail("tokenizer.ggml.scores", "length differs from the tokens'");
  }
  w.add("tokenizer.ggml.model", gguf_string(tok.model));
  w.add("tokenizer.ggml.pre", gguf_string(tok.pre));
  w.add("tokenizer.ggml.tokens", gguf_string_array(tok.tokens));
  if (!tok.token_type.empty()) w.add("tokenizer.ggml.token_type", gguf_i32_array(tok.token_type));
  if (!tok.scores.empty()) w.add("tokenizer.ggml.scores", gguf_f32_array(tok.scores));
  w.add("tokenizer.ggml.merges", gguf_string_array(tok.merges));
  for (const auto& [key, id] :
       {std::pair<const char*, int64_t>{"tokenizer.ggml.bos_token_id", tok.bos_id},
        {"tokenizer.ggml.eos_token_id", tok.eos_id},
        {"tokenizer.ggml.padding_token_id", tok.pad_id},
        {"tokenizer.ggml.unknown_token_id", tok.unk_id}}) {
    if (id < 0) continue;
    if (id >= n) return fail(key, "token id " + std::to_string(id) + " outside the vocabulary");
    w.add(key, gguf_u32(static_cast<uint32_t>(id)));
  }
  if (tok.add_bos) w.add("tokenizer.ggml.add_bos_token", gguf_bool(*tok.add_bos));
  if (tok.add_eos) w.add("tokenizer.ggml.add_eos_token", gguf_bool(*tok.add_eos));
  if (!tok.chat_template.empty()) w.add("tokenizer.chat_template", gguf_string(tok.chat_template));
  return Ok{};
}

}  // namespace

Result<GgufExportSummary> write_gguf_model(const std::string& path, const model::ModelConfig& cfg,
                                           model::ModelParams& params,
                                           const GgufExportOptions& opts) {
  auto fail = [&](const std::string& what) -> Error { return Error{path + ": " + what}; };
  GgufExportSummary summary;
  summary.arch = gguf_arch_of(cfg);
  if (summary.arch.empty()) {
    return fail("model_type " + quote_bounded(cfg.model_type) +
                " has no llama.cpp architecture here (llama, mistral and qwen2 do)");
  }
  if (opts.type != GgmlType::kF32 && opts.type != GgmlType::kF16 && opts.type != GgmlType::kBF16 &&
      opts.type != GgmlType::kQ8_0) {
    return fail("cannot export as " + ggml_type_name(static_cast<uint32_t>(opts.type)) +
                " (f32, f16, bf16 or q8_0)");
  }
  Status valid = model::validate_model_config(cfg, path);
  if (!valid.ok()) return valid.error();
  std::error_code ec;
  const fs::file_status existing = fs::status(path, ec);
  if (fs::is_directory(existing)) return fail("is a folder, expected a .gguf file to write");
  if (fs::exists(existing) && !opts.overwrite) {
    return fail("exists; not overwriting it (ask to overwrite, or choose another name)");
  }
  if (cfg.model_type == "mistral") {
    summary.notes.push_back("mistral is written as llama.cpp's 'llama' architecture");
  }
  if (cfg.sliding_window > 0 && cfg.sliding_window < cfg.max_position_embeddings) {
    summary.notes.push_back("sliding_window " + std::to_string(cfg.sliding_window) +
                            " is dropped: llama.cpp's " + summary.arch +
                            " attends to the whole context");
  }

  // ---- metadata --------------------------------------------------------------------------------
  GgufWriter w;
  const std::string a = summary.arch + ".";
  w.add("general.architecture", gguf_string(summary.arch));
  w.add("general.type", gguf_string("model"));
  if (!opts.name.empty()) w.add("general.name", gguf_string(opts.name));
  w.add("general.file_type", gguf_u32(file_type_of(opts.type)));
  w.add("general.quantization_version", gguf_u32(kQuantizationVersion));
  for (const auto& [key, value] : {std::pair<const char*, int64_t>{"vocab_size", cfg.vocab_size},
                                   {"context_length", cfg.max_position_embeddings},
                                   {"embedding_length", cfg.hidden_size},
                                   {"block_count", cfg.num_layers},
                                   {"feed_forward_length", cfg.intermediate_size},
                                   {"attention.head_count", cfg.num_heads},
                                   {"attention.head_count_kv", cfg.num_kv_heads},
                                   {"attention.key_length", cfg.head_dim},
                                   {"attention.value_length", cfg.head_dim},
                                   {"rope.dimension_count", cfg.head_dim}}) {
    if (value > std::numeric_limits<uint32_t>::max()) {
      return fail(std::string(key) + " = " + std::to_string(value) + " does not fit GGUF's u32");
    }
    w.add(a + key, gguf_u32(static_cast<uint32_t>(value)));
  }
  w.add(a + "rope.freq_base", gguf_f32(static_cast<float>(cfg.rope_theta)));
  w.add(a + "attention.layer_norm_rms_epsilon", gguf_f32(static_cast<float>(cfg.rms_norm_eps)));
  if (cfg.rope_scaling.type == model::RopeScalingType::kLinear) {
    w.add(a + "rope.scaling.type", gguf_string("linear"));
    w.add(a + "rope.scaling.factor", gguf_f32(static_cast<float>(cfg.rope_scaling.factor)));
  }
  if (opts.tokenizer) {
    Status s = add_tokenizer(w, *opts.tokenizer, cfg, path);
    if (!s.ok()) return s.error();
  }

  // ---- tensors: plan and check everything before the file exists ------------------------------
  at::NoGradGuard no_grad;
  std::vector<ExportTensor> tensors;
  const bool permute = gguf_arch_permutes_rope_rows(summary.arch);
  for (const std::string& hf : model::hf_param_names(cfg)) {
    Result<at::Tensor> view = model::hf_param_view(params, cfg, hf);
    if (!view.ok()) return fail(view.error().message);
    const std::string name = hf_name_to_gguf(hf);
    if (name.empty()) return fail("tensor '" + hf + "' has no llama.cpp name");
    at::Tensor t = view.value();
    const model::RowPart part = model::resolve_hf_name(cfg, hf).value().row->part;
    if (permute && part == model::RowPart::kQ) t = gguf_permute_rope_rows(t, cfg.num_heads);
    if (permute && part == model::RowPart::kK) t = gguf_permute_rope_rows(t, cfg.num_kv_heads);
    GgmlType type = t.dim() == 1 ? GgmlType::kF32 : opts.type;
    if (type == GgmlType::kQ8_0 && t.size(-1) % ggml::kQK8_0 != 0) {
      type = GgmlType::kF16;
      summary.notes.push_back("'" + name + "': rows of " + std::to_string(t.size(-1)) +
                              " are not a multiple of 32, written as f16");
    }
    const at::Tensor abs_max = t.abs().max();
    const bool finite = at::isfinite(t).all().item<bool>();
    if (!finite) return fail("tensor '" + hf + "' has non-finite values; nothing written");
    const double m = abs_max.item<double>();
    if ((type == GgmlType::kF16 && m > kF16Max) ||
        (type == GgmlType::kQ8_0 && m / 127.0 > kF16Max)) {
      return fail("tensor '" + hf + "' has |values| up to " + std::to_string(m) + ", beyond " +
                  ggml_type_name(static_cast<uint32_t>(type)) + "'s range (export as bf16 or f32)");
    }
    tensors.push_back({name, hf, t, type});
    if (name == "token_embd.weight" && cfg.rope_scaling.type == model::RopeScalingType::kLlama3) {
      const std::vector<float> factors = llama3_rope_freq_factors(cfg);
      tensors.push_back({"rope_freqs.weight", "rope_scaling (llama3)",
                         at::tensor(at::ArrayRef<float>(factors)), GgmlType::kF32});
    }
  }
  for (ExportTensor& t : tensors) {
    std::vector<int64_t> ne(t.data.sizes().rbegin(), t.data.sizes().rend());
    const uint32_t id = static_cast<uint32_t>(t.type);
    ++summary.tensors_by_type[ggml_type_name(id)];
    const at::Tensor data = t.data;
    const GgmlType type = t.type;
    w.add_tensor(t.gguf_name, id, std::move(ne),
                 [data, type](OutFile& f) { return write_tensor_data(f, data, type); });
  }

  Status parent = prepare_parent_folder(path);
  if (!parent.ok()) return parent.error();
  Status st = w.write(path);
  if (!st.ok()) return st.error();
  struct stat info {};
  if (::stat(path.c_str(), &info) == 0) summary.bytes = static_cast<uint64_t>(info.st_size);
  return summary;
}

}  // namespace ramstream::checkpoint
