// The `ramstream` command line: thin parsing over the library.
//
//   ramstream inspect --model DIR                     # architecture, parameters, host memory
//   ramstream convert --from FILE.gguf --to DIR [--dtype bf16|fp16|fp32]   # GGUF -> HF folder
//   ramstream --version
//
// Training (`ramstream run RECIPE`), generation and planning subcommands attach here as their
// libraries land.
#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>

#include "checkpoint/gguf.h"
#include "checkpoint/hf_folder.h"
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

// GGUF (llama.cpp) -> Hugging Face folder: dequantised weights, Q/K rows back in HF order.
int convert(const std::string& from, const std::string& to, const std::string& dtype_name) {
  at::ScalarType dtype;
  if (dtype_name == "bf16") {
    dtype = at::kBFloat16;
  } else if (dtype_name == "fp16") {
    dtype = at::kHalf;
  } else if (dtype_name == "fp32") {
    dtype = at::kFloat;
  } else {
    std::fprintf(stderr, "ramstream convert: --dtype must be bf16, fp16 or fp32, got '%s'\n",
                 dtype_name.c_str());
    return 2;
  }
  rs::Result<rs::checkpoint::GgufFile> file = rs::checkpoint::GgufFile::open(from);
  if (!file.ok()) {
    std::fprintf(stderr, "ramstream convert: %s\n", file.error().message.c_str());
    return 1;
  }
  rs::Result<rs::model::ModelConfig> cfg = rs::checkpoint::gguf_model_config(file.value());
  if (!cfg.ok()) {
    std::fprintf(stderr, "ramstream convert: %s\n", cfg.error().message.c_str());
    return 1;
  }
  rs::model::ModelParams params = rs::model::allocate_model_params(cfg.value(), at::kFloat);
  rs::Status st = rs::checkpoint::gguf_load_weights(file.value(), cfg.value(), params);
  if (!st.ok()) {
    std::fprintf(stderr, "ramstream convert: %s\n", st.error().message.c_str());
    return 1;
  }
  rs::checkpoint::HfSaveOptions opts;
  opts.dtype = dtype;
  st = rs::checkpoint::save_hf_folder(to, cfg.value(), params, opts);
  if (!st.ok()) {
    std::fprintf(stderr, "ramstream convert: %s\n", st.error().message.c_str());
    return 1;
  }
  std::printf("wrote %s: %s, %.3f M parameters as %s (tokenizer files are not written yet)\n",
              to.c_str(), cfg.value().model_type.c_str(), params.numel() / 1e6, dtype_name.c_str());
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
  std::string from, to, dtype = "bf16";
  CLI::App* convert_cmd =
      app.add_subcommand("convert", "convert a GGUF (llama.cpp) model to a Hugging Face folder");
  convert_cmd->add_option("--from", from, "the .gguf file")->required();
  convert_cmd->add_option("--to", to, "the folder to write (replaced atomically)")->required();
  convert_cmd->add_option("--dtype", dtype, "weights on disk: bf16 (default), fp16 or fp32");
  CLI11_PARSE(app, argc, argv);
  if (*inspect_cmd) return inspect(model_dir);
  if (*convert_cmd) return convert(from, to, dtype);
  return 0;
}
