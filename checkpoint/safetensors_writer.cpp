#include "checkpoint/safetensors_writer.h"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <optional>
#include <regex>
#include <set>

#include <ATen/core/grad_mode.h>
#include <nlohmann/json.hpp>

#include "checkpoint/atomic_file.h"
#include "checkpoint/safetensors.h"

namespace ramstream::checkpoint {

// Tensor bytes are written as they sit in memory; a big-endian host would need byte swapping.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors writer assumes little-endian");

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

std::optional<SafetensorsDtype> dtype_from_torch(at::ScalarType t) {
  for (int i = 0; i <= static_cast<int>(SafetensorsDtype::kBool); ++i) {
    const auto d = static_cast<SafetensorsDtype>(i);
    if (safetensors_dtype_to_torch(d) == t) return d;
  }
  return std::nullopt;
}

std::string shape_str(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string shard_name(size_t i, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return buf;
}

// One reusable, 8-byte-aligned staging buffer per file.
class Staging {
 public:
  explicit Staging(size_t bytes) : words_(std::max<size_t>(bytes / 8, 1)) {}
  void* data() { return words_.data(); }
  size_t bytes() const { return words_.size() * 8; }

 private:
  std::vector<uint64_t> words_;
};

Status write_from_tensor(OutFile& out, const TensorSource& s, Staging& staging) {
  const at::Tensor& t = s.tensor;
  const size_t esize = at::elementSize(s.dtype);
  const int64_t numel = t.numel();
  if (numel == 0) return Ok{};
  auto convert_and_write = [&](const at::Tensor& part, void* buf) -> Status {
    at::Tensor dst = at::from_blob(buf, part.sizes(), at::TensorOptions().dtype(s.dtype));
    dst.copy_(part);
    return out.write(buf, static_cast<size_t>(part.numel()) * esize);
  };
  const int64_t chunk_elems = std::max<int64_t>(1, static_cast<int64_t>(staging.bytes() / esize));
  if (t.dim() <= 1 || t.is_contiguous()) {
    // Flat element ranges: a view for contiguous tensors, narrow() for strided 1-D ones.
    const at::Tensor flat = t.dim() == 0 ? t.reshape({1}) : (t.dim() == 1 ? t : t.view({-1}));
    for (int64_t off = 0; off < numel; off += chunk_elems) {
      Status st = convert_and_write(flat.narrow(0, off, std::min(chunk_elems, numel - off)),
                                    staging.data());
      if (!st.ok()) return st;
    }
    return Ok{};
  }
  // Strided N-D: whole rows of dim 0 per chunk. A single row larger than the staging buffer gets
  // a temporary buffer of one row.
  const int64_t rows = t.size(0);
  const int64_t row_elems = numel / rows;
  const int64_t rows_per_chunk = std::max<int64_t>(1, chunk_elems / row_elems);
  std::vector<uint64_t> big_row;
  void* buf = staging.data();
  if (row_elems > chunk_elems) {
    big_row.resize((static_cast<size_t>(row_elems) * esize + 7) / 8);
    buf = big_row.data();
  }
  for (int64_t r = 0; r < rows; r += rows_per_chunk) {
    Status st = convert_and_write(t.narrow(0, r, std::min(rows_per_chunk, rows - r)), buf);
    if (!st.ok()) return st;
  }
  return Ok{};
}

Status write_from_fill(OutFile& out, const TensorSource& s, Staging& staging) {
  const uint64_t total = s.nbytes();
  for (uint64_t off = 0; off < total;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(staging.bytes(), total - off));
    Status st = s.fill(off, staging.data(), n);
    if (!st.ok()) return st;
    st = out.write(staging.data(), n);
    if (!st.ok()) return st;
    off += n;
  }
  return Ok{};
}

// The body of one file: header, then each tensor in layout order.
Status write_body(OutFile& out, const std::vector<TensorSource>& tensors,
                  const SafetensorsLayout& layout, const SafetensorsWriteOptions& opts) {
  Status st = out.write(layout.header.data(), layout.header.size());
  if (!st.ok()) return st;
  Staging staging(std::max<size_t>(opts.chunk_bytes, 8));
  at::NoGradGuard no_grad;
  for (size_t i : layout.order) {
    const TensorSource& s = tensors[i];
    try {
      st = s.tensor.defined() ? write_from_tensor(out, s, staging)
                              : write_from_fill(out, s, staging);
    } catch (const std::exception& e) {
      st = Error{e.what()};
    }
    if (!st.ok()) return Error{out.path() + ": tensor '" + s.name + "': " + st.error().message};
    if (opts.after_tensor) {
      st = opts.after_tensor(s.name);
      if (!st.ok()) return st;
    }
  }
  return Ok{};
}

}  // namespace

TensorSource TensorSource::from_tensor(std::string name, const at::Tensor& t,
                                       at::ScalarType dtype) {
  TensorSource s;
  s.name = std::move(name);
  s.dtype = dtype;
  s.shape = t.sizes().vec();
  s.tensor = t;
  return s;
}

uint64_t TensorSource::nbytes() const {
  const std::optional<SafetensorsDtype> d = dtype_from_torch(dtype);
  if (!d) return 0;
  uint64_t n = safetensors_dtype_size(*d);
  for (int64_t dim : shape) n *= static_cast<uint64_t>(std::max<int64_t>(dim, 0));
  return n;
}

Result<SafetensorsLayout> plan_safetensors(const std::vector<TensorSource>& tensors,
                                           const std::map<std::string, std::string>& metadata) {
  std::set<std::string> names;
  std::vector<size_t> elem_size(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorSource& s = tensors[i];
    auto bad = [&](const std::string& what) { return Error{"tensor '" + s.name + "': " + what}; };
    if (s.name == "__metadata__") return bad("reserved name");
    if (!names.insert(s.name).second) return bad("appears twice");
    const std::optional<SafetensorsDtype> d = dtype_from_torch(s.dtype);
    if (!d) return bad(std::string("dtype ") + c10::toString(s.dtype) + " has no safetensors tag");
    elem_size[i] = safetensors_dtype_size(*d);
    uint64_t bytes = elem_size[i];
    for (int64_t dim : s.shape) {
      if (dim < 0) return bad("negative dim in shape " + shape_str(s.shape));
      if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(dim), &bytes)) {
        return bad("shape " + shape_str(s.shape) + ": byte size overflows");
      }
    }
    if (s.tensor.defined() == static_cast<bool>(s.fill)) {
      return bad("needs exactly one of a tensor or a fill callback");
    }
    if (s.tensor.defined() && s.tensor.sizes() != at::IntArrayRef(s.shape)) {
      return bad("tensor has shape " + shape_str(s.tensor.sizes()) + ", declared " +
                 shape_str(s.shape));
    }
  }

  SafetensorsLayout layout;
  layout.order.resize(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) layout.order[i] = i;
  std::stable_sort(layout.order.begin(), layout.order.end(),
                   [&](size_t a, size_t b) { return elem_size[a] > elem_size[b]; });

  ordered_json header = ordered_json::object();
  ordered_json meta = {{"format", "pt"}};
  for (const auto& [k, v] : metadata) meta[k] = v;
  header["__metadata__"] = meta;
  for (size_t i : layout.order) {
    const uint64_t n = tensors[i].nbytes();
    header[tensors[i].name] = {
        {"dtype", safetensors_dtype_name(*dtype_from_torch(tensors[i].dtype))},
        {"shape", tensors[i].shape},
        {"data_offsets", {layout.data_bytes, layout.data_bytes + n}}};
    layout.data_bytes += n;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {  // invalid UTF-8 in a name or metadata
    return Error{std::string("header cannot be encoded as JSON: ") + e.what()};
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  if (text.size() > SafetensorsFile::kMaxHeaderBytes) {
    return Error{"header of " + std::to_string(text.size()) + " bytes exceeds the " +
                 std::to_string(SafetensorsFile::kMaxHeaderBytes) + "-byte limit readers accept"};
  }
  layout.header.resize(8);
  for (int i = 0; i < 8; ++i) {
    layout.header[i] = static_cast<char>((static_cast<uint64_t>(text.size()) >> (8 * i)) & 0xff);
  }
  layout.header += text;
  return layout;
}

Status write_safetensors(const std::string& path, const std::vector<TensorSource>& tensors,
                         const SafetensorsWriteOptions& opts) {
  Result<SafetensorsLayout> layout = plan_safetensors(tensors, opts.metadata);
  if (!layout.ok()) return Error{path + ": " + layout.error().message};
  return write_file_atomic(
      path, [&](OutFile& out) { return write_body(out, tensors, layout.value(), opts); });
}

std::vector<std::vector<size_t>> plan_shards(const std::vector<TensorSource>& tensors,
                                             uint64_t max_shard_bytes) {
  std::vector<std::vector<size_t>> shards;
  std::vector<size_t> current;
  uint64_t current_bytes = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t n = tensors[i].nbytes();
    if (n > max_shard_bytes) {
      shards.push_back({i});
      continue;
    }
    if (current_bytes + n > max_shard_bytes && !current.empty()) {
      shards.push_back(std::move(current));
      current.clear();
      current_bytes = 0;
    }
    current.push_back(i);
    current_bytes += n;
  }
  if (!current.empty()) shards.push_back(std::move(current));
  return shards;
}

Result<SafetensorsFolder> write_safetensors_folder(const std::string& dir,
                                                   const std::vector<TensorSource>& tensors,
                                                   uint64_t max_shard_bytes,
                                                   const SafetensorsWriteOptions& opts) {
  // Validate everything up front so no shard is written for a set that cannot be.
  Result<SafetensorsLayout> whole = plan_safetensors(tensors, opts.metadata);
  if (!whole.ok()) return Error{dir + ": " + whole.error().message};

  const std::vector<std::vector<size_t>> shards = plan_shards(tensors, max_shard_bytes);
  SafetensorsFolder result;
  result.sharded = shards.size() > 1;
  result.total_size = whole.value().data_bytes;
  json weight_map = json::object();
  uint64_t total_parameters = 0;
  for (size_t k = 0; k < shards.size() || (k == 0 && shards.empty()); ++k) {
    std::vector<TensorSource> part;
    if (!shards.empty()) {
      for (size_t i : shards[k]) part.push_back(tensors[i]);
    }
    const std::string name = result.sharded ? shard_name(k, shards.size()) : kSingleFile;
    for (const TensorSource& s : part) {
      weight_map[s.name] = name;
      int64_t numel = 1;
      for (int64_t d : s.shape) numel *= d;
      total_parameters += static_cast<uint64_t>(numel);
    }
    Status st = write_safetensors((fs::path(dir) / name).string(), part, opts);
    if (!st.ok()) return st.error();
    result.files.push_back(name);
  }
  if (result.sharded) {
    // json (std::map) sorts keys like Python's sort_keys=True; dump(2) matches indent=2.
    const json index = {
        {"metadata", {{"total_parameters", total_parameters}, {"total_size", result.total_size}}},
        {"weight_map", weight_map}};
    Status st = write_file_atomic((fs::path(dir) / kIndexFile).string(), index.dump(2) + "\n");
    if (!st.ok()) return st.error();
    result.files.push_back(kIndexFile);
  }

  // Weight files of an earlier save into the same folder would confuse loaders (an index wins
  // over model.safetensors); the same rule as transformers' save_pretrained, plus the index and
  // the single file.
  static const std::regex kShard(R"(model-\d{5}-of-\d{5}\.safetensors)");
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const std::string f = e.path().filename().string();
    const bool ours = std::find(result.files.begin(), result.files.end(), f) != result.files.end();
    const bool weight = std::regex_match(f, kShard) || f == kSingleFile || f == kIndexFile;
    if (weight && !ours && e.is_regular_file(ec)) fs::remove(e.path(), ec);
  }
  return result;
}

}  // namespace ramstream::checkpoint
