// Loads Hugging Face safetensors weights into our ModelParams, and checks any checkpoint's
// tensors against a model config.
//
// Accepts a single .safetensors file or a model folder holding either model.safetensors or the
// shards listed in model.safetensors.index.json ("weight_map": {tensor name: shard file}). A
// shard is a file name beside the index: absolute paths, '..', separators and control bytes are
// refused, as are a weight_map that is not an object of strings, a shard that does not exist, and
// an index that disagrees with what the shards hold. Everything is checked before any parameter
// is written: every tensor hf_param_names(cfg) lists must be present with the right shape and a
// floating-point dtype, and any other tensor is an error (except a tied model's lm_head.weight
// and rotary_emb.inv_freq buffers, which HF itself ignores). Dtypes convert on copy (bf16 file
// -> fp32 params is fine). `ramstream inspect` runs the same checks (open_hf_checkpoint) as
// loading does.
//
//   ModelConfig cfg = load_model_config(dir + "/config.json").value_or_throw();
//   ModelParams params = allocate_model_params(cfg, at::kFloat);
//   Status st = load_hf_weights(dir, cfg, params);
//   if (!st.ok()) std::cerr << st.error().message << "\n";
//
//   Result<HfCheckpoint> ck = open_hf_checkpoint(dir, cfg);  // checks only, reads no tensor data
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "checkpoint/safetensors.h"
#include "model/config.h"
#include "model/params.h"
#include "util/result.h"

namespace ramstream::checkpoint {

// One tensor of a checkpoint as the weight check sees it, whatever the format.
struct CheckpointTensor {
  std::string name;            // Hugging Face name; "" when the stored name maps to none
  std::string stored;          // the name in the file when it differs from `name` (GGUF), else ""
  std::string file;            // where it is, for messages
  std::vector<int64_t> shape;  // torch order
  std::string dtype;           // as the format spells it: "BF16", "q4_1"
  bool convertible = true;     // loads as floating point (a float dtype, or a dequantisable one)
};

// Every tensor `cfg` needs is there once with its shape and a convertible dtype, and nothing
// else is. The error heads with `source` and lists missing, unexpected and mismatched tensors (at
// most 8 of each kind, the rest counted).
Status check_checkpoint_tensors(const std::vector<CheckpointTensor>& tensors,
                                const model::ModelConfig& cfg, const std::string& source);

// A Hugging Face checkpoint, opened and checked against a config; no tensor data read yet.
struct HfCheckpoint {
  std::string index_path;               // "" without an index
  std::vector<SafetensorsFile> files;   // sorted by path
  std::map<std::string, size_t> where;  // tensor name -> index into `files`
  uint64_t tensor_bytes = 0;            // all tensors' bytes
};
Result<HfCheckpoint> open_hf_checkpoint(const std::string& path, const model::ModelConfig& cfg);

// The safetensors files that make up `path` (a file, or a folder as described above), after
// checking the index; the files themselves are not opened.
Result<std::vector<std::string>> hf_safetensors_files(const std::string& path);

// Whether folder `dir` holds HF weights at all (model.safetensors or the index).
bool has_hf_weights(const std::string& dir);

Status load_hf_weights(const std::string& path, const model::ModelConfig& cfg,
                       model::ModelParams& params);

}  // namespace ramstream::checkpoint
