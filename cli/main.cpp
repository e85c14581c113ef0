// The `ramstream` command line: thin parsing over the library.
//
//   ramstream inspect --model DIR      # architecture, parameter counts, host memory per mode
//   ramstream --version
//
// Training (`ramstream run RECIPE`), generation and planning subcommands attach here as their
// libraries land.
#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>

#include "checkpoint/hf_loader.h"
#include "checkpoint/safetensors.h"
#include "model/config.h"
#include "model/params.h"
#include "util/torch_compat.h"

namespace rs = ramstream;

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

struct ParamCounts {
  int64_t embedding = 0, per_block = 0, blocks = 0, final_norm = 0, lm_head = 0;
  int64_t total() const { return embedding + blocks + final_norm + lm_head; }
};

ParamCounts count_params(const rs::model::ModelConfig& cfg) {
  ParamCounts c;
  c.embedding = cfg.vocab_size * cfg.hidden_size;
  const rs::model::BlockLayout layout = rs::model::block_layout(cfg);
  for (const rs::model::TensorSlot& s : layout.slots) c.per_block += s.numel;
  c.blocks = c.per_block * cfg.num_layers;
  c.final_norm = cfg.hidden_size;
  c.lm_head = cfg.tie_word_embeddings ? 0 : cfg.vocab_size * cfg.hidden_size;
  return c;
}

int inspect(const std::string& dir) {
  const std::string config_path = dir + "/config.json";
  rs::Result<rs::model::ModelConfig> cfg_or = rs::model::load_model_config(config_path);
  if (!cfg_or.ok()) {
    std::fprintf(stderr, "ramstream inspect: %s\n", cfg_or.error().message.c_str());
    return 1;
  }
  const rs::model::ModelConfig& cfg = cfg_or.value();
  const ParamCounts n = count_params(cfg);
  std::printf("model          %s (%s)\n", dir.c_str(), cfg.model_type.c_str());
  std::printf("layers         %lld\n", static_cast<long long>(cfg.num_layers));
  std::printf(
      "hidden         %lld, MLP %lld, vocab %lld\n", static_cast<long long>(cfg.hidden_size),
      static_cast<long long>(cfg.intermediate_size), static_cast<long long>(cfg.vocab_size));
  std::printf("heads          %lld query, %lld key/value, head dim %lld\n",
              static_cast<long long>(cfg.num_heads), static_cast<long long>(cfg.num_kv_heads),
              static_cast<long long>(cfg.head_dim));
  std::printf("embeddings     %s\n", cfg.tie_word_embeddings ? "tied" : "untied");
  std::printf("parameters     %.3f M (embedding %.3f M, %lld blocks x %.3f M, head %.3f M)\n",
              n.total() / 1e6, n.embedding / 1e6, static_cast<long long>(cfg.num_layers),
              n.per_block / 1e6, n.lm_head / 1e6);
  // Persistent host bytes per parameter: full fine-tune keeps fp32 master, Adam m and v, and the
  // bf16 working copy streamed to the GPU (4+4+4+2); inference keeps bf16 weights only.
  std::printf("host memory    full fine-tune %.2f GiB (14 B/param), inference %.2f GiB (bf16)\n",
              n.total() * 14.0 / kGiB, n.total() * 2.0 / kGiB);

  rs::Result<std::vector<std::string>> files = rs::checkpoint::hf_safetensors_files(dir);
  if (!files.ok()) {
    std::printf("weights        none usable: %s\n", files.error().message.c_str());
    return 0;
  }
  uint64_t bytes = 0;
  for (const std::string& f : files.value()) {
    rs::Result<rs::checkpoint::SafetensorsFile> st = rs::checkpoint::SafetensorsFile::open(f);
    if (!st.ok()) {
      std::fprintf(stderr, "ramstream inspect: %s\n", st.error().message.c_str());
      return 1;
    }
    for (const std::string& name : st.value().names()) {
      const rs::checkpoint::SafetensorInfo* info = st.value().info(name).value();
      bytes += info->end - info->begin;
    }
  }
  std::printf("weights        %zu safetensors file(s), %.3f GiB\n", files.value().size(),
              bytes / kGiB);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ramstream: RAM-centric LLM training and inference"};
  app.set_version_flag("--version", std::string("ramstream 0.1 (libtorch ") +
                                        std::to_string(TORCH_VERSION_MAJOR) + "." +
                                        std::to_string(TORCH_VERSION_MINOR) + ")");
  app.require_subcommand(1);
  std::string model_dir;
  CLI::App* inspect_cmd =
      app.add_subcommand("inspect", "architecture, parameter counts and memory needs of a model");
  inspect_cmd->add_option("--model", model_dir, "Hugging Face model folder (config.json, weights)")
      ->required();
  CLI11_PARSE(app, argc, argv);
  if (*inspect_cmd) return inspect(model_dir);
  return 0;
}
