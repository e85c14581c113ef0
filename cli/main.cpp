// The `ramstream` command line: thin parsing over the library.
//
//   ramstream run RECIPE [key.sub=value ...]       # train: a recipe file or a bundled name
//   ramstream ls                                    # bundled recipes
//   ramstream cp NAME DEST                          # copy a bundled recipe to edit it
//   ramstream validate FILE                         # check a recipe; non-zero exit on problems
//   ramstream inspect --model DIR                   # architecture, parameters, memory per mode
//   ramstream convert --from FILE.gguf --to DIR [--dtype bf16|fp16|fp32]   # GGUF -> HF folder
//   ramstream --version
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "checkpoint/gguf.h"
#include "checkpoint/hf_folder.h"
#include "checkpoint/hf_loader.h"
#include "checkpoint/safetensors.h"
#include "data/tokenizer.h"
#include "model/config.h"
#include "model/params.h"
#include "pipeline/param_store.h"
#include "pipeline/stages.h"
#include "trainer/recipe.h"
#include "trainer/trainer.h"
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
  // Host memory of the parameter store per mode (pipeline/param_store.h): fp32 master + Adam m, v,
  // plus a bf16 working copy (GPU) or fp32 grads (CPU with exact clipping).
  const rs::pipeline::StagePlan plan = rs::pipeline::plan_stages(cfg);
  rs::pipeline::ParamStoreOptions gpu, cpu_clip, cpu_noclip;
  gpu.working_copy_bf16 = true;
  cpu_clip.grad_regions = true;
  cpu_noclip.grad_regions = false;
  const auto gib = [&](const rs::pipeline::ParamStoreOptions& o) {
    return double(rs::pipeline::ParamStore::bytes_needed(plan, o)) / kGiB;
  };
  std::printf(
      "host memory    full fine-tune: GPU %.2f GiB (14 B/param), CPU %.2f GiB with "
      "clipping (16 B/param), %.2f GiB without (12 B/param)\n",
      gib(gpu), gib(cpu_clip), gib(cpu_noclip));
  std::printf("               inference: %.2f GiB (bf16 weights)\n", n.total() * 2.0 / kGiB);
  std::printf("device memory  %.3f GiB per streamed layer slot (bf16), 2 slots by default\n",
              double(plan.slot_numel) * 2.0 / kGiB);

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
  // The tokenizer goes through a scratch folder that save_hf_folder copies from, so the model
  // folder still appears atomically with everything in it.
  std::string tokenizer_note = "no tokenizer in the GGUF";
  const std::string scratch = to + ".tokenizer-" + std::to_string(::getpid());
  rs::Result<rs::checkpoint::GgufTokenizer> meta = rs::checkpoint::gguf_tokenizer(file.value());
  if (meta.ok()) {
    rs::Result<rs::data::Tokenizer> tok = rs::data::Tokenizer::from_gguf(meta.value(), from);
    if (!tok.ok()) {
      tokenizer_note = "tokenizer not converted: " + tok.error().message;
    } else {
      ::mkdir(scratch.c_str(), 0755);
      st = tok.value().save(scratch);
      if (!st.ok()) {
        std::fprintf(stderr, "ramstream convert: %s\n", st.error().message.c_str());
        std::filesystem::remove_all(scratch);
        return 1;
      }
      opts.copy_from_dir = scratch;
      opts.extra_config = rs::checkpoint::token_ids_config(
          tok.value().bos_id(), tok.value().eos_id(), tok.value().pad_id());
      tokenizer_note = "tokenizer.json (" + std::to_string(tok.value().vocab_size()) + " tokens)";
    }
  }
  st = rs::checkpoint::save_hf_folder(to, cfg.value(), params, opts);
  if (!opts.copy_from_dir.empty()) std::filesystem::remove_all(scratch);
  if (!st.ok()) {
    std::fprintf(stderr, "ramstream convert: %s\n", st.error().message.c_str());
    return 1;
  }
  std::printf("wrote %s: %s, %.3f M parameters as %s, %s\n", to.c_str(),
              cfg.value().model_type.c_str(), params.numel() / 1e6, dtype_name.c_str(),
              tokenizer_note.c_str());
  return 0;
}

int run(const std::string& recipe_name, const std::vector<std::string>& overrides) {
  rs::Result<rs::trainer::Recipe> recipe = rs::trainer::load_recipe(recipe_name, overrides);
  if (!recipe.ok()) {
    std::fprintf(stderr, "ramstream run: %s\n", recipe.error().message.c_str());
    return 2;
  }
  rs::Result<std::unique_ptr<rs::trainer::Trainer>> trainer =
      rs::trainer::Trainer::create(recipe.value());
  if (!trainer.ok()) {
    std::fprintf(stderr, "ramstream run: %s\n", trainer.error().message.c_str());
    return 1;
  }
  rs::Result<rs::trainer::TrainSummary> sum = trainer.value()->train();
  if (!sum.ok()) {
    std::fprintf(stderr, "ramstream run: %s\n", sum.error().message.c_str());
    return 1;
  }
  const rs::trainer::TrainSummary& s = sum.value();
  std::printf("done: steps %lld..%lld", static_cast<long long>(s.first_step),
              static_cast<long long>(s.last_step));
  if (s.last_step > s.first_step) {
    std::printf(", loss %.4f -> %.4f, %.1f tokens/s", s.first_loss, s.last_loss, s.tokens_per_s);
  }
  std::printf("%s\n", s.interrupted ? " (interrupted)" : "");
  if (s.before.accuracy >= 0 && s.after.accuracy >= 0) {
    std::printf("held-out accuracy: %.1f%% before -> %.1f%% after (%lld examples)\n",
                100 * s.before.accuracy, 100 * s.after.accuracy,
                static_cast<long long>(s.after.total));
  }
  if (!s.last_checkpoint.empty()) std::printf("checkpoint: %s\n", s.last_checkpoint.c_str());
  return 0;
}

int list_recipes() {
  for (const rs::trainer::BundledRecipe& r : rs::trainer::bundled_recipes()) {
    // The first header line says what the recipe is for: "# name: what it does".
    std::string first = r.text.substr(0, r.text.find('\n'));
    const size_t colon = first.find(": ");
    std::string what = colon == std::string::npos ? "" : first.substr(colon + 2);
    std::printf("%-26s %s\n", r.name.c_str(), what.c_str());
  }
  return 0;
}

int copy_recipe(const std::string& name, std::string dest) {
  for (const rs::trainer::BundledRecipe& r : rs::trainer::bundled_recipes()) {
    if (r.name != name) continue;
    if (std::filesystem::is_directory(dest)) dest += "/" + name + ".yaml";
    if (std::filesystem::exists(dest)) {
      std::fprintf(stderr, "ramstream cp: %s exists; not overwriting it\n", dest.c_str());
      return 1;
    }
    std::ofstream out(dest, std::ios::binary);
    out << r.text;
    if (!out) {
      std::fprintf(stderr, "ramstream cp: cannot write %s\n", dest.c_str());
      return 1;
    }
    std::printf("wrote %s\n", dest.c_str());
    return 0;
  }
  std::fprintf(stderr, "ramstream cp: no bundled recipe '%s' (see `ramstream ls`)\n", name.c_str());
  return 1;
}

int validate(const std::string& file) {
  const std::vector<std::string> problems = rs::trainer::validate_recipe(file);
  for (const std::string& p : problems) std::fprintf(stderr, "%s\n", p.c_str());
  if (problems.empty()) std::printf("%s: ok\n", file.c_str());
  return problems.empty() ? 0 : 1;
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
  std::string recipe;
  std::vector<std::string> overrides;
  CLI::App* run_cmd =
      app.add_subcommand("run", "train with a recipe (a YAML file or a bundled name)");
  run_cmd->add_option("recipe", recipe, "recipe file, or the name of a bundled recipe")->required();
  run_cmd->add_option("overrides", overrides, "key.sub=value overrides, applied in order");
  CLI::App* ls_cmd = app.add_subcommand("ls", "list the bundled recipes");
  std::string cp_name, cp_dest;
  CLI::App* cp_cmd = app.add_subcommand("cp", "copy a bundled recipe to a file to edit");
  cp_cmd->add_option("name", cp_name, "bundled recipe name")->required();
  cp_cmd->add_option("dest", cp_dest, "destination file or folder")->required();
  std::string validate_file;
  CLI::App* validate_cmd = app.add_subcommand("validate", "check a recipe file");
  validate_cmd->add_option("file", validate_file, "recipe file or bundled name")->required();
  CLI11_PARSE(app, argc, argv);
  if (*run_cmd) return run(recipe, overrides);
  if (*ls_cmd) return list_recipes();
  if (*cp_cmd) return copy_recipe(cp_name, cp_dest);
  if (*validate_cmd) return validate(validate_file);
  if (*inspect_cmd) return inspect(model_dir);
  if (*convert_cmd) return convert(from, to, dtype);
  return 0;
}
