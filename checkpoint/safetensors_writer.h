// Streaming .safetensors writer: the file is never built in memory.
//
// The header is computed from names, dtypes and shapes alone, written first (u64 length, then
// JSON padded with spaces to a multiple of 8 so the data starts 8-aligned; the byte format is
// documented in checkpoint/safetensors.h), and then each tensor's bytes follow in order through
// one bounded staging buffer (chunk_bytes, 16 MiB by default). A TensorSource gives the bytes
// either as a tensor (any dtype, strides or device; converted to the on-disk dtype chunk by chunk
// with copy_, so fp32 -> bf16 rounds to nearest-even exactly like torch's .to()) or as a fill
// callback producing on-disk bytes. Peak extra memory is one chunk, whatever the model size.
//
// Tensors are laid out in the caller's order, stably sorted by element size (largest first) as
// the reference writer does, so every tensor starts aligned to its element size. The header's
// "__metadata__" is {"format": "pt"} plus the caller's entries.
//
//   std::vector<TensorSource> src;
//   src.push_back(TensorSource::from_tensor("model.norm.weight", master_fp32, at::kBFloat16));
//   Status st = write_safetensors("out/model.safetensors", src);
//
//   // A folder as transformers writes it: model.safetensors, or model-0000i-of-0000N.safetensors
//   // shards plus model.safetensors.index.json when the data exceeds max_shard_bytes.
//   Result<SafetensorsFolder> r = write_safetensors_folder("out", src, 5ull << 30);
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "util/result.h"

namespace ramstream::checkpoint {

struct TensorSource {
  std::string name;
  at::ScalarType dtype = at::kFloat;  // on disk: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL
  std::vector<int64_t> shape;
  // Exactly one of the two below. `tensor` must have `shape`; it is only read.
  at::Tensor tensor;
  // Writes on-disk bytes [offset, offset + bytes) of this tensor into dst. Called with
  // increasing, adjacent ranges. An Error (or an exception) aborts the write.
  std::function<Status(uint64_t offset, void* dst, size_t bytes)> fill;

  static TensorSource from_tensor(std::string name, const at::Tensor& t, at::ScalarType dtype);
  static TensorSource from_tensor(std::string name, const at::Tensor& t) {
    return from_tensor(std::move(name), t, t.scalar_type());
  }
  uint64_t nbytes() const;  // on-disk size; 0 for an invalid dtype
};

struct SafetensorsWriteOptions {
  std::map<std::string, std::string> metadata;  // "format" defaults to "pt"; caller's wins
  size_t chunk_bytes = 16u << 20;               // staging buffer (rounded to a multiple of 8)
  // Called after each tensor's bytes are written; an Error aborts the save (progress reporting,
  // and tests that fail a save part way).
  std::function<Status(const std::string& name)> after_tensor;
};

// The header of a file holding `tensors`, and the order their bytes follow it.
struct SafetensorsLayout {
  std::string header;         // 8-byte length + JSON padded to a multiple of 8
  std::vector<size_t> order;  // indices into `tensors`, in data order
  uint64_t data_bytes = 0;
};
// Errors: duplicate or "__metadata__" names, names that are not valid UTF-8, unsupported
// dtypes, negative dims, a tensor whose shape differs from `shape`, not exactly one of
// tensor/fill.
Result<SafetensorsLayout> plan_safetensors(const std::vector<TensorSource>& tensors,
                                           const std::map<std::string, std::string>& metadata);

// One file, written atomically (checkpoint/atomic_file.h): on error `path` is untouched.
Status write_safetensors(const std::string& path, const std::vector<TensorSource>& tensors,
                         const SafetensorsWriteOptions& opts = {});

// Groups tensors (by index) into shards of at most max_shard_bytes of data, exactly like
// huggingface_hub's split_state_dict_into_shards: greedy in order, and a tensor bigger than the
// limit gets a shard of its own (placed before the shard being filled).
std::vector<std::vector<size_t>> plan_shards(const std::vector<TensorSource>& tensors,
                                             uint64_t max_shard_bytes);

struct SafetensorsFolder {
  std::vector<std::string> files;  // file names written, in order (index last when sharded)
  bool sharded = false;
  uint64_t total_size = 0;  // data bytes over all shards, as in the index
};

// Writes `tensors` into the existing folder `dir` as model.safetensors or as shards plus
// model.safetensors.index.json ({"metadata": {"total_parameters", "total_size"}, "weight_map"},
// keys sorted, indent 2, as transformers writes it). Each file is atomic, the set is not: use
// StagedDir (or save_hf_folder) for that. Weight files of an earlier save that the new set does
// not overwrite (shards, a single file, an index) are removed afterwards, so loaders never mix
// the two.
Result<SafetensorsFolder> write_safetensors_folder(const std::string& dir,
                                                   const std::vector<TensorSource>& tensors,
                                                   uint64_t max_shard_bytes,
                                                   const SafetensorsWriteOptions& opts = {});

}  // namespace ramstream::checkpoint
