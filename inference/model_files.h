// Opening a model for inference or training: an HF folder (config.json, tokenizer.json,
// safetensors; also a training output such as out/<run>/step_000110) or a GGUF file. The config
// and tokenizer come first; the weights go straight into the fp32 masters of a ParamStore.
//
//   Result<ModelFiles> m = open_model_files("out/run/step_000110");
//   pipeline::ParamStore store(pipeline::plan_stages(m.value().cfg), m.value().cfg, opts);
//   model::ModelParams masters = store.master_params();
//   Status st = load_model_weights(m.value().path, m.value().cfg, masters);
#pragma once

#include <memory>
#include <string>

#include "data/tokenizer.h"
#include "model/config.h"
#include "model/params.h"
#include "util/result.h"

namespace ramstream::inference {

struct ModelFiles {
  std::string path;
  bool gguf = false;
  model::ModelConfig cfg;
  std::unique_ptr<data::Tokenizer> tokenizer;
};

// Errors name the path and what is missing ("neither a model folder nor a .gguf file", a
// config.json problem with its key, a tokenizer problem).
Result<ModelFiles> open_model_files(const std::string& path);
// The weights of `path` into `masters` (views of the right shapes), dequantised or converted.
Status load_model_weights(const std::string& path, const model::ModelConfig& cfg,
                          model::ModelParams& masters);

}  // namespace ramstream::inference
