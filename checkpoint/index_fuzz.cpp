// libFuzzer target for model.safetensors.index.json: the input becomes the index of a temp model
// folder that also holds two valid shards of a tiny Llama, then hf_safetensors_files() and
// load_hf_weights() run on it. Every file the index resolves to must lie inside the folder (a
// shard name never escapes it); anything else may be an error but never a crash, a sanitizer
// report or a leak.
// Build and run (see checkpoint/CMakeLists.txt):
//   CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
//   cmake --build build-fuzz --target index_fuzz
//   mkdir -p /tmp/index_corpus
//   build-fuzz/bin/index_fuzz -max_total_time=60 /tmp/index_corpus tests/fixtures/fuzz/index
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "checkpoint/hf_loader.h"
#include "checkpoint/safetensors_writer.h"
#include "model/hf_names.h"

namespace {

namespace ck = ramstream::checkpoint;
namespace fs = std::filesystem;
using ramstream::model::ModelConfig;

ModelConfig tiny_config() {
  ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = 5;
  c.hidden_size = 4;
  c.intermediate_size = 6;
  c.num_layers = 1;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.head_dim = 2;
  c.max_position_embeddings = 16;
  return c;
}

// The folder, created once per process: the tiny model's tensors split over two shards named as
// transformers names them, so seeds can reference real shards.
const std::string& model_dir() {
  static const std::string dir = [] {
    const char* root = fs::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
    const std::string d = std::string(root) + "/ramstream_index_fuzz_" + std::to_string(::getpid());
    fs::remove_all(d);
    fs::create_directories(d);
    const ModelConfig c = tiny_config();
    const std::vector<std::string> names = ramstream::model::hf_param_names(c);
    ramstream::model::ModelParams p = ramstream::model::allocate_model_params(c, at::kFloat);
    std::vector<ck::TensorSource> a, b;
    for (size_t i = 0; i < names.size(); ++i) {
      at::Tensor v = ramstream::model::hf_param_view(p, c, names[i]).value_or_throw();
      (i < names.size() / 2 ? a : b).push_back(ck::TensorSource::from_tensor(names[i], v));
    }
    ck::write_safetensors(d + "/model-00001-of-00002.safetensors", a).value_or_throw();
    ck::write_safetensors(d + "/model-00002-of-00002.safetensors", b).value_or_throw();
    return d;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const ModelConfig cfg = tiny_config();
  const std::string& dir = model_dir();
  {
    std::ofstream out(dir + "/model.safetensors.index.json", std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  ramstream::Result<std::vector<std::string>> files = ck::hf_safetensors_files(dir);
  if (files.ok()) {
    for (const std::string& f : files.value()) {
      if (fs::path(f).parent_path() != fs::path(dir)) __builtin_trap();  // escaped the folder
    }
  }
  ramstream::model::ModelParams p = ramstream::model::allocate_model_params(cfg, at::kFloat);
  (void)ck::load_hf_weights(dir, cfg, p).ok();
  return 0;
}
