// libFuzzer target for the safetensors reader and writer: the input is written to a temp file and
// opened with SafetensorsFile::open; when it opens, every tensor is read (tensor() and read_into()
// an fp32 destination), written back with the streaming writer and reopened, and the tensors must
// come back byte for byte. Any crash, sanitizer report, leak or trap is a bug; errors are fine.
// Build and run (see checkpoint/CMakeLists.txt):
//   CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
//   cmake --build build-fuzz --target safetensors_fuzz
//   mkdir -p /tmp/st_corpus
//   build-fuzz/bin/safetensors_fuzz -max_total_time=60 /tmp/st_corpus \
//     tests/fixtures/fuzz/safetensors
// The temp files live in /dev/shm when it exists: the writer fsyncs, which is free on tmpfs.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "checkpoint/safetensors.h"
#include "checkpoint/safetensors_writer.h"

namespace {

namespace ck = ramstream::checkpoint;

std::string temp_path(const char* tag) {
  const char* root = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
  return std::string(root) + "/ramstream_st_fuzz_" + std::to_string(::getpid()) + tag;
}

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  if (a.numel() == 0) return true;  // data_ptr() may be null
  return std::memcmp(a.data_ptr(), b.data_ptr(), a.numel() * a.element_size()) == 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string in_path = temp_path(".in.safetensors");
  static const std::string out_path = temp_path(".out.safetensors");
  {
    std::ofstream out(in_path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  ramstream::Result<ck::SafetensorsFile> r = ck::SafetensorsFile::open(in_path);
  if (!r.ok()) return 0;
  const ck::SafetensorsFile& f = r.value();

  std::vector<ck::TensorSource> sources;
  std::vector<at::Tensor> originals;
  for (const std::string& name : f.names()) {
    at::Tensor t = f.tensor(name).value_or_throw();
    at::Tensor as_float = at::empty(t.sizes(), at::kFloat);
    if (!f.read_into(name, as_float).ok()) __builtin_trap();  // shape matches by construction
    originals.push_back(t);
    sources.push_back(ck::TensorSource::from_tensor(name, t));
  }
  ck::SafetensorsWriteOptions opts;
  opts.metadata = f.metadata();
  opts.chunk_bytes = 64;  // many chunks even for small inputs
  if (!ck::write_safetensors(out_path, sources, opts).ok()) __builtin_trap();
  ramstream::Result<ck::SafetensorsFile> back = ck::SafetensorsFile::open(out_path);
  if (!back.ok()) __builtin_trap();
  if (back.value().names().size() != originals.size()) __builtin_trap();
  for (size_t i = 0; i < originals.size(); ++i) {
    if (!same_bytes(back.value().tensor(sources[i].name).value_or_throw(), originals[i])) {
      __builtin_trap();
    }
  }
  for (const auto& [k, v] : f.metadata()) {
    if (back.value().metadata().at(k) != v) __builtin_trap();
  }
  return 0;
}
