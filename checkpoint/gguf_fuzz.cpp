// libFuzzer target for the GGUF reader: parses the input as a GGUF file and, when it opens,
// walks every metadata value and tensor info, imports it as a model config and tokenizer, and
// dequantises the small tensors. Any crash, sanitizer report or leak is a bug; errors are fine.
// Build and run (see checkpoint/CMakeLists.txt):
//   CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
//   cmake --build build-fuzz --target gguf_fuzz
//   mkdir -p /tmp/gguf_corpus
//   build-fuzz/bin/gguf_fuzz -max_total_time=60 /tmp/gguf_corpus tests/fixtures/fuzz/gguf
#include <cstddef>
#include <cstdint>

#include "checkpoint/gguf.h"

namespace {

using ramstream::checkpoint::GgufFile;
using ramstream::checkpoint::GgufValue;

// Touches every element so the sanitizers see every byte the parser stored.
size_t walk(const GgufValue& v) {
  size_t n = v.str.size() + v.describe().size();
  if (v.is_array()) {
    for (uint64_t k = 0; k < v.count; ++k) {
      if (std::optional<GgufValue> s = v.scalar_at(k)) n += s->as_int().value_or(0) != 0;
    }
    for (const std::string& s : v.strings) n += s.size();
    for (const GgufValue& a : v.arrays) n += walk(a);
  } else {
    n += v.as_double().has_value();
  }
  return n;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace ck = ramstream::checkpoint;
  ramstream::Result<GgufFile> r = GgufFile::open_bytes(data, size, "<fuzz>");
  if (!r.ok()) return 0;
  const GgufFile& f = r.value();
  volatile size_t sink = 0;
  for (const std::string& key : f.keys()) {
    sink = sink + walk(*f.find(key));
    (void)f.get_int(key);
    (void)f.get_float(key);
    (void)f.get_int_array(key);
    (void)f.get_float_array(key);
    (void)f.get_string_array(key);
  }
  for (const std::string& name : f.tensor_names()) {
    const ck::GgufTensorInfo& info = *f.info(name).value();
    // Bounded so one input cannot allocate gigabytes; the parse already checked every range.
    if (info.numel() <= (1 << 16)) {
      ramstream::Result<at::Tensor> t = f.dequantize(name);
      if (t.ok()) sink = sink + static_cast<size_t>(t.value().numel());
    }
  }
  (void)ck::gguf_tokenizer(f);
  ramstream::Result<ramstream::model::ModelConfig> cfg = ck::gguf_model_config(f);
  // Tiny models only: the load allocates the whole model.
  if (cfg.ok() && cfg.value().vocab_size * cfg.value().hidden_size <= (1 << 16) &&
      cfg.value().num_layers <= 4 && cfg.value().hidden_size <= 256 &&
      cfg.value().intermediate_size <= 1024 && cfg.value().qkv_dim() <= 1024) {
    ramstream::model::ModelParams p =
        ramstream::model::allocate_model_params(cfg.value(), at::kFloat);
    (void)ck::gguf_load_weights(f, cfg.value(), p);
  }
  return 0;
}
