#include "inference/session.h"

#include <algorithm>
#include <stdexcept>

#include "pipeline/stages.h"

namespace ramstream::inference {

std::vector<int32_t> Session::encode(const std::string& text) const {
  std::vector<int32_t> ids = files_.tokenizer->encode(text);
  const data::Tokenizer& tok = *files_.tokenizer;
  if (tok.add_bos() && tok.bos_id() >= 0 && (ids.empty() || ids.front() != tok.bos_id())) {
    ids.insert(ids.begin(), tok.bos_id());
  }
  return ids;
}

std::vector<int32_t> Session::encode_chat(const std::vector<data::ChatMessage>& messages) const {
  if (!has_chat_) {
    throw std::invalid_argument(files_.path +
                                ": the model has no chat template (a base model?); use "
                                "`ramstream generate --raw` to send text as it is");
  }
  return encode(data::render_generation_prompt(chat_, messages));
}

std::string Session::describe() const {
  return files_.path + " (" + files_.cfg.model_type + ", " + std::to_string(files_.cfg.num_layers) +
         " layers), " + generator_->describe();
}

Result<std::unique_ptr<Session>> open_session(const std::string& model_path,
                                              const SessionOptions& options) {
  auto s = std::make_unique<Session>();
  Result<ModelFiles> files = open_model_files(model_path);
  if (!files.ok()) return files.error();
  s->files_ = std::move(files).value();
  const model::ModelConfig& cfg = s->files_.cfg;
  const std::string bad = options.kv.validate(cfg.head_dim, cfg.max_position_embeddings > 0
                                                                ? cfg.max_position_embeddings
                                                                : int64_t{1} << 20);
  // Context-dependent budgets are checked again per run; the shape checks cannot wait.
  if (!bad.empty() && bad.find("--kv-budget") == std::string::npos) return Error{bad};

  const std::string& tmpl = s->files_.tokenizer->chat_template();
  if (!tmpl.empty()) {
    Result<data::ChatFormat> fmt = data::detect_chat_format(tmpl);
    if (fmt.ok()) {
      s->chat_ = fmt.value();
      s->has_chat_ = true;
    }
  }
  const data::Tokenizer& tok = *s->files_.tokenizer;
  if (tok.eos_id() >= 0) s->stop_ids_.push_back(tok.eos_id());
  for (const char* end : {"<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>"}) {
    const int32_t id = tok.token_to_id(end);
    if (id >= 0 && std::find(s->stop_ids_.begin(), s->stop_ids_.end(), id) == s->stop_ids_.end()) {
      s->stop_ids_.push_back(id);
    }
  }

  const bool want_cuda =
      options.device == "cuda" || (options.device == "auto" && pipeline::cuda_device_available());
  if (options.device != "auto" && options.device != "cpu" && options.device != "cuda") {
    return Error{"--device '" + options.device + "': choose auto, cpu or cuda"};
  }
  pipeline::ParamStoreOptions so;
  so.optimizer_state = false;
  try {
    if (want_cuda) {
      s->device_ = pipeline::make_cuda_device(0);
      so.working_copy_bf16 = true;
      so.pin = true;
      so.allow_pageable = true;
    } else {
      s->device_ = pipeline::make_cpu_device({});
    }
    s->store_ = std::make_unique<pipeline::ParamStore>(pipeline::plan_stages(cfg), cfg, so);
  } catch (const std::exception& e) {
    return Error{model_path + ": " + e.what()};
  }
  model::ModelParams masters = s->store_->master_params();
  const Status st = load_model_weights(model_path, cfg, masters);
  if (!st.ok()) return st.error();
  s->store_->refresh_working_copies();
  GeneratorOptions go;
  go.kv = options.kv;
  go.micro_batch = options.micro_batch;
  go.kv_max_bytes = options.kv_max_bytes;
  go.kv_device_bytes = options.kv_device_bytes;
  go.weight_device_bytes = options.weight_device_bytes;
  s->generator_ = std::make_unique<Generator>(*s->device_, *s->store_, go);
  return s;
}

}  // namespace ramstream::inference
