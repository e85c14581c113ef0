// `ramstream inspect`: what a model is, what training or serving it needs, and whether its
// weights and tokenizer are what its config says (cli/commands.h). A Hugging Face folder goes
// through the same checks as `run` (open_hf_checkpoint, Tokenizer::from_model); a .gguf file
// through gguf_model_config, the same tensor check and its tokenizer metadata.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "checkpoint/gguf.h"
#include "checkpoint/hf_loader.h"
#include "cli/commands.h"
#include "data/tokenizer.h"
#include "memory/topology.h"
#include "model/config.h"
#include "model/params.h"
#include "pipeline/param_store.h"
#include "pipeline/stages.h"
#include "util/user_file.h"

namespace rs = ramstream;

namespace ramstream::cli {
namespace {

namespace fs = std::filesystem;
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

int fail(const std::string& message) {
  std::fprintf(stderr, "ramstream inspect: %s\n", message.c_str());
  return 1;
}

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

// Architecture, parameter counts and memory per mode, and whether this machine has the RAM.
void print_model(const std::string& source, const rs::model::ModelConfig& cfg) {
  const ParamCounts n = count_params(cfg);
  std::printf("model          %s (%s)\n", source.c_str(), cfg.model_type.c_str());
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
  // Host memory of the parameter store per mode (pipeline/param_store.h): fp32 master + Adam m, v,
  // plus a bf16 working copy (GPU) or fp32 grads (CPU with exact clipping).
  const rs::pipeline::StagePlan plan = rs::pipeline::plan_stages(cfg);
  rs::pipeline::ParamStoreOptions gpu, cpu_clip, cpu_noclip;
  gpu.working_copy_bf16 = true;
  cpu_clip.grad_regions = true;
  cpu_noclip.grad_regions = false;
  const auto bytes = [&](const rs::pipeline::ParamStoreOptions& o) {
    return double(rs::pipeline::ParamStore::bytes_needed(plan, o));
  };
  std::printf(
      "host memory    full fine-tune: GPU or bf16 CPU compute %.2f GiB (14 B/param), fp32 CPU "
      "compute %.2f GiB with clipping (16 B/param), %.2f GiB without (12 B/param)\n",
      bytes(gpu) / kGiB, bytes(cpu_clip) / kGiB, bytes(cpu_noclip) / kGiB);
  // Data parallel with dist.shard_optimizer: per rank the whole fp32 weights plus 1/N of m, v
  // and the clipping grads (fp32 CPU layout).
  std::string sharded;
  for (int ranks : {2, 4, 8}) {
    rs::pipeline::ParamStoreOptions o = cpu_clip;
    o.shard_count = ranks;
    char one[96];
    std::snprintf(one, sizeof one, "%s%d ranks %.2f GiB", sharded.empty() ? "" : ", ", ranks,
                  bytes(o) / kGiB);
    sharded += one;
  }
  std::printf(
      "               data parallel, dist.shard_optimizer (fp32 CPU, 4 + 12/N B/param) "
      "per rank: %s\n",
      sharded.c_str());
  std::printf("               inference: %.2f GiB (bf16 weights)\n", n.total() * 2.0 / kGiB);
  std::printf("device memory  %.3f GiB per streamed layer slot (bf16), 2 slots by default\n",
              double(plan.slot_numel) * 2.0 / kGiB);
  const double available = double(rs::memory::host_memory_available_bytes());
  const char* verdict = bytes(cpu_noclip) <= available ? "fine-tuning fits"
                        : n.total() * 2.0 <= available ? "fine-tuning does NOT fit, inference does"
                                                       : "neither fine-tuning nor inference fits";
  std::printf("this machine   %.2f GiB available: %s\n", available / kGiB, verdict);
}

// The tokenizer beside the weights: the same load as `run`, and the same vocabulary check.
Status check_tokenizer(const rs::Result<rs::data::Tokenizer>& tok, const std::string& source,
                       const rs::model::ModelConfig& cfg) {
  if (!tok.ok()) return tok.error();
  const rs::data::Tokenizer& t = tok.value();
  if (t.vocab_size() > cfg.vocab_size) {
    return Error{source + ": the tokenizer has " + std::to_string(t.vocab_size()) +
                 " tokens but the model only " + std::to_string(cfg.vocab_size) +
                 " (config vocab_size)"};
  }
  auto token = [&](int32_t id) -> std::string {
    try {
      return id < 0 ? "none" : quote_bounded(t.id_to_token(id), 40);
    } catch (const std::out_of_range&) {
      return "id " + std::to_string(id) + " (not in the vocabulary)";
    }
  };
  std::printf("tokenizer      %s: %lld tokens, bos %s, eos %s, chat template %s\n", source.c_str(),
              static_cast<long long>(t.vocab_size()), token(t.bos_id()).c_str(),
              token(t.eos_id()).c_str(), t.chat_template().empty() ? "none" : "yes");
  return Ok{};
}

int inspect_hf_folder(const std::string& dir) {
  std::error_code ec;
  const std::string config_path = (fs::path(dir) / "config.json").string();
  if (!fs::exists(fs::symlink_status(config_path, ec))) {
    return fail(config_path + ": not found (expected a Hugging Face model folder with a " +
                "config.json, or a .gguf file)");
  }
  rs::Result<rs::model::ModelConfig> cfg_or = rs::model::load_model_config(config_path);
  if (!cfg_or.ok()) return fail(cfg_or.error().message);
  const rs::model::ModelConfig& cfg = cfg_or.value();
  print_model(dir, cfg);

  // In the order `run` checks them: the tokenizer against the config, then the weights.
  const std::string tokenizer_path = (fs::path(dir) / "tokenizer.json").string();
  if (!fs::exists(fs::symlink_status(tokenizer_path, ec))) {
    std::printf("tokenizer      none (no tokenizer.json)\n");
  } else {
    Status tok = check_tokenizer(rs::data::Tokenizer::from_model(dir), tokenizer_path, cfg);
    if (!tok.ok()) return fail(tok.error().message);
  }
  if (!rs::checkpoint::has_hf_weights(dir)) {
    std::printf("weights        none (no model.safetensors or model.safetensors.index.json)\n");
    return 0;
  }
  rs::Result<rs::checkpoint::HfCheckpoint> ck = rs::checkpoint::open_hf_checkpoint(dir, cfg);
  if (!ck.ok()) return fail(ck.error().message);
  std::printf(
      "weights        %zu safetensors file(s), %.3f GiB, %zu tensors, all as the config "
      "says\n",
      ck.value().files.size(), ck.value().tensor_bytes / kGiB, ck.value().where.size());
  return 0;
}

int inspect_gguf(const std::string& path) {
  rs::Result<rs::checkpoint::GgufFile> file = rs::checkpoint::GgufFile::open(path);
  if (!file.ok()) return fail(file.error().message);
  const rs::checkpoint::GgufFile& f = file.value();
  rs::Result<rs::model::ModelConfig> cfg_or = rs::checkpoint::gguf_model_config(f);
  if (!cfg_or.ok()) return fail(cfg_or.error().message);
  const rs::model::ModelConfig& cfg = cfg_or.value();
  print_model(path, cfg);

  std::vector<rs::checkpoint::CheckpointTensor> tensors;
  std::map<std::string, int> types;
  uint64_t bytes = 0;
  for (const std::string& name : f.tensor_names()) {
    const rs::checkpoint::GgufTensorInfo& info = *f.info(name).value();
    const rs::checkpoint::GgmlTypeTraits* traits = rs::checkpoint::ggml_type_traits(info.type_id);
    const std::string type = rs::checkpoint::ggml_type_name(info.type_id);
    tensors.push_back({rs::checkpoint::gguf_name_to_hf(name), name, path, info.torch_shape(), type,
                       traits != nullptr && traits->dequantize});
    ++types[type];
    bytes += info.nbytes;
  }
  Status st = rs::checkpoint::check_checkpoint_tensors(tensors, cfg, path);
  if (!st.ok()) return fail(st.error().message);
  std::string mix;
  for (const auto& [type, count] : types) {
    mix += (mix.empty() ? "" : ", ") + type + " x " + std::to_string(count);
  }
  std::printf("weights        %zu tensors (%s), %.3f GiB, all as the metadata says\n",
              tensors.size(), mix.c_str(), bytes / kGiB);

  if (f.find("tokenizer.ggml.model") == nullptr) {
    std::printf("tokenizer      none (no tokenizer.ggml.* metadata)\n");
    return 0;
  }
  rs::Result<rs::checkpoint::GgufTokenizer> meta = rs::checkpoint::gguf_tokenizer(f);
  if (!meta.ok()) return fail(meta.error().message);
  Status tok = check_tokenizer(rs::data::Tokenizer::from_gguf(meta.value(), path), path, cfg);
  if (!tok.ok()) return fail(tok.error().message);
  return 0;
}

bool has_gguf_magic(const std::string& path) {
  char magic[4] = {};
  std::ifstream in(path, std::ios::binary);
  in.read(magic, 4);
  return in.gcount() == 4 && std::string(magic, 4) == "GGUF";
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

int inspect_command(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) {
    return fail(path + ": no such file or folder (expected a model folder or a .gguf file)");
  }
  if (fs::is_directory(st)) {
    if (ends_with(path, ".gguf") && !fs::exists(fs::path(path) / "config.json", ec)) {
      return fail(path + ": is a folder, expected a .gguf file");
    }
    return inspect_hf_folder(path);
  }
  Status regular = rs::check_regular_file(path, "a model folder or a .gguf file");
  if (!regular.ok()) return fail(regular.error().message);
  if (has_gguf_magic(path)) return inspect_gguf(path);
  return fail(path + ": is a file but not a GGUF file (no GGUF magic); expected a model folder " +
              "(config.json, weights) or a .gguf file");
}

}  // namespace ramstream::cli
