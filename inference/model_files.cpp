#include "inference/model_files.h"

#include <filesystem>
#include <system_error>

#include "checkpoint/gguf.h"
#include "checkpoint/hf_loader.h"

namespace ramstream::inference {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

Result<ModelFiles> open_model_files(const std::string& path) {
  ModelFiles m;
  m.path = path;
  m.gguf = ends_with(path, ".gguf");
  std::error_code ec;
  if (m.gguf) {
    Result<checkpoint::GgufFile> f = checkpoint::GgufFile::open(path);
    if (!f.ok()) return f.error();
    Result<model::ModelConfig> cfg = checkpoint::gguf_model_config(f.value());
    if (!cfg.ok()) return cfg.error();
    m.cfg = cfg.value();
    Result<checkpoint::GgufTokenizer> meta = checkpoint::gguf_tokenizer(f.value());
    if (!meta.ok()) return meta.error();
    Result<data::Tokenizer> tok = data::Tokenizer::from_gguf(meta.value(), path);
    if (!tok.ok()) return tok.error();
    m.tokenizer = std::make_unique<data::Tokenizer>(std::move(tok).value());
    return m;
  }
  if (!std::filesystem::is_directory(path, ec)) {
    return Error{"model '" + path + "': neither a model folder nor a .gguf file"};
  }
  Result<model::ModelConfig> cfg = model::load_model_config(path + "/config.json");
  if (!cfg.ok()) return cfg.error();
  m.cfg = cfg.value();
  Result<data::Tokenizer> tok = data::Tokenizer::from_model(path);
  if (!tok.ok()) return tok.error();
  m.tokenizer = std::make_unique<data::Tokenizer>(std::move(tok).value());
  return m;
}

Status load_model_weights(const std::string& path, const model::ModelConfig& cfg,
                          model::ModelParams& masters) {
  if (ends_with(path, ".gguf")) {
    Result<checkpoint::GgufFile> f = checkpoint::GgufFile::open(path);
    if (!f.ok()) return f.error();
    return checkpoint::gguf_load_weights(f.value(), cfg, masters);
  }
  return checkpoint::load_hf_weights(path, cfg, masters);
}

}  // namespace ramstream::inference
