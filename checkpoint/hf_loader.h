// Loads Hugging Face safetensors weights into our ModelParams.
//
// Accepts a single .safetensors file or a model folder holding either model.safetensors or the
// shards listed in model.safetensors.index.json ("weight_map": {tensor name: shard file}).
// Everything is checked before any parameter is written: every tensor hf_param_names(cfg) lists
// must be present with the right shape, and any other tensor is an error (except a tied model's
// lm_head.weight and rotary_emb.inv_freq buffers, which HF itself ignores). Dtypes convert on
// copy (bf16 file -> fp32 params is fine).
//
//   ModelConfig cfg = load_model_config(dir + "/config.json").value_or_throw();
//   ModelParams params = allocate_model_params(cfg, at::kFloat);
//   Status st = load_hf_weights(dir, cfg, params);
//   if (!st.ok()) std::cerr << st.error().message << "\n";
#pragma once

#include <string>
#include <vector>

#include "model/config.h"
#include "model/params.h"
#include "util/result.h"

namespace ramstream::checkpoint {

// The safetensors files that make up `path` (a file, or a folder as described above).
Result<std::vector<std::string>> hf_safetensors_files(const std::string& path);

Status load_hf_weights(const std::string& path, const model::ModelConfig& cfg,
                       model::ModelParams& params);

}  // namespace ramstream::checkpoint
