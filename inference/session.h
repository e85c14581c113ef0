// Everything `generate`, `chat` and `eval` need from a model path: config, tokenizer, chat
// format, weights in a weights-only ParamStore, the device, and a Generator on them; plus
// encoding a prompt (chat template, bos) and the ids that end a reply.
//
//   SessionOptions o;  o.kv = KvCacheConfig::parse("kivi2", 32, 128, 0.2).value();
//   Result<std::unique_ptr<Session>> s = open_session("out/run/step_000110", o);
//   std::vector<int32_t> ids = s.value()->encode_chat({{"user", "Hi"}});
//   GenerateResult r = s.value()->generator().generate({ids}, go);
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "data/chat.h"
#include "inference/generator.h"
#include "inference/model_files.h"

namespace ramstream::inference {

struct SessionOptions {
  KvCacheConfig kv;
  std::string device = "auto";  // auto (CUDA when built and present), cpu, cuda
  int64_t micro_batch = 32;
  int64_t kv_max_bytes = 0;          // GeneratorOptions::kv_max_bytes
  int64_t kv_device_bytes = -1;      // GeneratorOptions::kv_device_bytes
  int64_t weight_device_bytes = -1;  // GeneratorOptions::weight_device_bytes
};

class Session {
 public:
  const model::ModelConfig& config() const { return files_.cfg; }
  const data::Tokenizer& tokenizer() const { return *files_.tokenizer; }
  Generator& generator() { return *generator_; }
  pipeline::Device& device() { return *device_; }
  // Whether the model has a chat template we render (instruct models).
  bool has_chat_format() const { return has_chat_; }
  const data::ChatFormat& chat_format() const { return chat_; }
  // Raw text -> ids (bos first when the tokenizer adds it).
  std::vector<int32_t> encode(const std::string& text) const;
  // The conversation followed by the assistant header, encoded; throws without a chat format.
  std::vector<int32_t> encode_chat(const std::vector<data::ChatMessage>& messages) const;
  // eos and the end-of-turn tokens of the chat formats we know that this vocabulary has.
  const std::vector<int32_t>& stop_ids() const { return stop_ids_; }
  std::string describe() const;

 private:
  friend Result<std::unique_ptr<Session>> open_session(const std::string&, const SessionOptions&);
  ModelFiles files_;
  bool has_chat_ = false;
  data::ChatFormat chat_;
  std::vector<int32_t> stop_ids_;
  std::unique_ptr<pipeline::Device> device_;
  std::unique_ptr<pipeline::ParamStore> store_;
  std::unique_ptr<Generator> generator_;
};

Result<std::unique_ptr<Session>> open_session(const std::string& model_path,
                                              const SessionOptions& options);

}  // namespace ramstream::inference
