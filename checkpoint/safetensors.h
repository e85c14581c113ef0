// Read-only access to a .safetensors file through mmap, with every header field checked.
//
// File format (all integers little-endian):
//   bytes [0, 8)        u64 N: length of the JSON header in bytes
//   bytes [8, 8 + N)    UTF-8 JSON object; writers may pad it with trailing spaces:
//                         { "<tensor name>": { "dtype": "F32",
//                                              "shape": [d0, d1, ...],          // [] = scalar
//                                              "data_offsets": [begin, end] },  // in the blob
//                           ...,
//                           "__metadata__": { "<key>": "<string value>", ... } }  // optional
//   bytes [8 + N, EOF)  the data blob; tensor bytes are [8 + N + begin, 8 + N + end), row-major,
//                       little-endian, no padding inside a tensor.
// A file is refused (Error naming the file and the tensor or field) when: it is shorter than 8
// bytes; N runs past EOF or exceeds kMaxHeaderBytes; the header is not a JSON object; an entry
// lacks or mistypes dtype/shape/data_offsets; the dtype is unknown; a dim is negative or the
// shape's byte size overflows; end < begin, end runs past EOF, or (end - begin) differs from
// numel * dtype size; two tensors' byte ranges overlap; a name appears twice.
//
//   Result<SafetensorsFile> f = SafetensorsFile::open("model.safetensors");
//   if (!f.ok()) return f.error();
//   for (const std::string& name : f.value().names()) {
//     const SafetensorInfo& info = *f.value().info(name).value();
//     at::Tensor t = f.value().tensor(name).value();  // CPU copy in the file's dtype
//   }
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <ATen/ATen.h>

#include "checkpoint/mapped_file.h"
#include "util/result.h"

namespace ramstream::checkpoint {

enum class SafetensorsDtype { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// "F32" etc. as written in the header.
const char* safetensors_dtype_name(SafetensorsDtype d);
size_t safetensors_dtype_size(SafetensorsDtype d);
at::ScalarType safetensors_dtype_to_torch(SafetensorsDtype d);

struct SafetensorInfo {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte range in the data blob (after the header)
  uint64_t end = 0;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // The spec's limit; bigger headers are corrupt or hostile.
  static constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

  static Result<SafetensorsFile> open(const std::string& path);

  const std::string& path() const { return path_; }
  // In file order (ascending data offset).
  const std::vector<std::string>& names() const { return names_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  Result<const SafetensorInfo*> info(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // A fresh CPU tensor in the file's dtype.
  Result<at::Tensor> tensor(const std::string& name) const;
  // Copies tensor `name` into `dst` (CPU, same shape, any dtype: converts like copy_) without an
  // intermediate copy when the bytes are suitably aligned.
  Status read_into(const std::string& name, at::Tensor& dst) const;
  // The raw little-endian bytes of a tensor, valid while this object lives.
  const uint8_t* data(const SafetensorInfo& info) const;

 private:
  SafetensorsFile() = default;

  std::string path_;
  std::shared_ptr<const MappedFile> mapping_;
  uint64_t data_start_ = 0;
  std::vector<SafetensorInfo> infos_;  // file order
  std::vector<std::string> names_;
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace ramstream::checkpoint
