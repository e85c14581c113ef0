// A whole file as read-only bytes, for the checkpoint readers: mmap'd from disk, or a copy of an
// in-memory buffer (fuzzers, tests). Shared by the tensors and views that point into it.
//
//   Result<std::shared_ptr<const MappedFile>> f = MappedFile::open("model.safetensors");
//   if (!f.ok()) return f.error();          // "model.safetensors: cannot open: No such file..."
//   const uint8_t* p = f.value()->data();   // f.value()->size() bytes
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "util/result.h"

namespace ramstream::checkpoint {

class MappedFile {
 public:
  // Errors name the path: missing, a folder or another non-regular file (a FIFO would block, a
  // device read forever; see check_regular_file), cannot open, mmap failure. `what` says what
  // the file should be ("a safetensors file"). An empty file opens with size() == 0 (the format
  // parser reports the truncation).
  static Result<std::shared_ptr<const MappedFile>> open(const std::string& path,
                                                        const char* what = "a model file");
  static std::shared_ptr<const MappedFile> copy_of(const uint8_t* bytes, size_t size);

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  MappedFile() = default;

  void* map_ = nullptr;  // mmap'd region, or null
  std::vector<uint8_t> owned_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace ramstream::checkpoint
