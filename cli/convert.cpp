// `ramstream convert`: GGUF (llama.cpp) -> Hugging Face folder, and Hugging Face folder -> GGUF
// (cli/commands.h). Neither direction deletes anything it did not write: a --to that exists is
// replaced only when it is a previous output of ours (checkpoint/hf_folder.h's marker; for GGUF,
// never without --force).
#include <cstdio>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "checkpoint/gguf.h"
#include "checkpoint/gguf_writer.h"
#include "checkpoint/hf_folder.h"
#include "checkpoint/hf_loader.h"
#include "cli/commands.h"
#include "data/tokenizer.h"
#include "model/config.h"
#include "model/params.h"
#include "util/json_read.h"
#include "util/torch_compat.h"
#include "util/user_file.h"

namespace rs = ramstream;

namespace ramstream::cli {
namespace {

namespace fs = std::filesystem;

int fail(const std::string& message, int code = 1) {
  std::fprintf(stderr, "ramstream convert: %s\n", message.c_str());
  return code;
}

// Whether `path` lies inside the folder `dir` (both resolved): replacing `dir` would delete it.
bool is_inside(const std::string& path, const std::string& dir) {
  std::error_code ec;
  const fs::path p = fs::weakly_canonical(path, ec);
  if (ec) return false;
  const fs::path d = fs::weakly_canonical(dir, ec);
  if (ec) return false;
  auto pi = p.begin();
  for (auto di = d.begin(); di != d.end(); ++di, ++pi) {
    if (di->empty()) continue;  // a trailing separator
    if (pi == p.end() || *pi != *di) return false;
  }
  return pi != p.end();
}

// GGUF (llama.cpp) -> Hugging Face folder: dequantised weights, Q/K rows back in HF order.
int gguf_to_hf(const ConvertArgs& args) {
  if (!args.type.empty()) {
    return fail("--type is for a Hugging Face folder -> GGUF; GGUF -> folder takes --dtype", 2);
  }
  at::ScalarType dtype;
  const std::string dtype_name = args.dtype.empty() ? "bf16" : args.dtype;
  if (dtype_name == "bf16") {
    dtype = at::kBFloat16;
  } else if (dtype_name == "fp16") {
    dtype = at::kHalf;
  } else if (dtype_name == "fp32") {
    dtype = at::kFloat;
  } else {
    return fail("--dtype must be bf16, fp16 or fp32, got " + quote_bounded(dtype_name), 2);
  }
  // Refused before the (possibly long) conversion, and again by save_hf_folder.
  if (is_inside(args.from, args.to)) {
    return fail(args.to + ": holds the source " + args.from +
                "; replacing the folder would delete it (choose another --to)");
  }
  if (!args.force) {
    Status replaceable = checkpoint::check_replaceable_output(args.to);
    if (!replaceable.ok()) {
      return fail(replaceable.error().message + " (pass --force to replace it anyway)");
    }
  }
  Result<checkpoint::GgufFile> file = checkpoint::GgufFile::open(args.from);
  if (!file.ok()) return fail(file.error().message);
  Result<model::ModelConfig> cfg = checkpoint::gguf_model_config(file.value());
  if (!cfg.ok()) return fail(cfg.error().message);
  model::ModelParams params = model::allocate_model_params(cfg.value(), at::kFloat);
  Status st = checkpoint::gguf_load_weights(file.value(), cfg.value(), params);
  if (!st.ok()) return fail(st.error().message);

  checkpoint::HfSaveOptions opts;
  opts.dtype = dtype;
  opts.replace_foreign = args.force;
  // Tokenizer metadata that is present must convert; only a file without any goes without.
  std::string tokenizer_note =
      "no tokenizer (the GGUF has no tokenizer metadata; add tokenizer.json by hand)";
  std::optional<data::Tokenizer> tokenizer;
  if (checkpoint::gguf_has_tokenizer(file.value())) {
    Result<checkpoint::GgufTokenizer> meta = checkpoint::gguf_tokenizer(file.value());
    if (!meta.ok()) return fail(meta.error().message + " (the tokenizer metadata is broken)");
    Result<data::Tokenizer> tok = data::Tokenizer::from_gguf(meta.value(), args.from);
    if (!tok.ok()) return fail(tok.error().message + " (the tokenizer cannot be converted)");
    tokenizer = std::move(tok).value();
    opts.write_extra_files = [&](const std::string& dir) { return tokenizer->save(dir); };
    opts.extra_config =
        checkpoint::token_ids_config(tokenizer->bos_id(), tokenizer->eos_id(), tokenizer->pad_id());
    tokenizer_note = "tokenizer.json (" + std::to_string(tokenizer->vocab_size()) + " tokens)";
  }
  st = checkpoint::save_hf_folder(args.to, cfg.value(), params, opts);
  if (!st.ok()) return fail(st.error().message);
  std::printf("wrote %s: %s, %.3f M parameters as %s, %s\n", args.to.c_str(),
              cfg.value().model_type.c_str(), params.numel() / 1e6, dtype_name.c_str(),
              tokenizer_note.c_str());
  return 0;
}

// A token id from the folder's config.json for one the tokenizer lacks (llama.cpp's converter
// falls back on it too); integers only: a list (several eos ids) names no single token.
void fill_token_id(const nlohmann::json& config, const char* key, int64_t vocab, int64_t* id) {
  if (*id >= 0 || !config.is_object()) return;
  auto it = config.find(key);
  if (it == config.end() || !it->is_number_integer()) return;
  const int64_t v = it->get<int64_t>();
  if (v >= 0 && v < vocab) *id = v;
}

// Hugging Face folder (ours or transformers') -> GGUF for llama.cpp.
int hf_to_gguf(const ConvertArgs& args) {
  if (!args.dtype.empty()) {
    return fail("--dtype is for GGUF -> folder; a folder -> GGUF takes --type f32|f16|bf16|q8_0",
                2);
  }
  const std::string type_name = args.type.empty() ? "f16" : args.type;
  const std::optional<checkpoint::GgmlType> type = checkpoint::gguf_export_type(type_name);
  if (!type)
    return fail("--type must be f32, f16, bf16 or q8_0, got " + quote_bounded(type_name), 2);
  std::error_code ec;
  if (fs::is_directory(args.to, ec)) {
    return fail(args.to + ": is a folder; --to names the .gguf file to write");
  }
  if (fs::exists(args.to, ec) && !args.force) {
    return fail(args.to + ": exists; not overwriting it (pass --force to replace it)");
  }
  const std::string config_path = (fs::path(args.from) / "config.json").string();
  Result<model::ModelConfig> cfg = model::load_model_config(config_path);
  if (!cfg.ok()) return fail(cfg.error().message);
  model::ModelParams params = model::allocate_model_params(cfg.value(), at::kFloat);
  Status st = checkpoint::load_hf_weights(args.from, cfg.value(), params);
  if (!st.ok()) return fail(st.error().message);

  checkpoint::GgufExportOptions opts;
  opts.type = *type;
  opts.overwrite = args.force;
  // general.name: the folder's name ("out/smollm2-sft/" -> "smollm2-sft").
  opts.name = fs::absolute(args.from, ec).lexically_normal().parent_path().filename().string();
  const std::string last = fs::absolute(args.from, ec).lexically_normal().filename().string();
  if (!last.empty()) opts.name = last;
  std::string tokenizer_note =
      "no tokenizer (the folder has no tokenizer.json; llama.cpp needs one to run the model)";
  const std::string tokenizer_path = (fs::path(args.from) / "tokenizer.json").string();
  if (fs::exists(tokenizer_path, ec)) {
    Result<data::Tokenizer> tok = data::Tokenizer::from_tokenizer_json(tokenizer_path);
    if (!tok.ok()) return fail(tok.error().message);
    Result<checkpoint::GgufTokenizer> meta = tok.value().to_gguf(cfg.value().vocab_size);
    if (!meta.ok()) return fail(meta.error().message);
    Result<nlohmann::json> config = read_json_file(config_path, "the model config");
    if (!config.ok()) return fail(config.error().message);
    checkpoint::GgufTokenizer& m = meta.value();
    const int64_t vocab = static_cast<int64_t>(m.tokens.size());
    fill_token_id(config.value(), "bos_token_id", vocab, &m.bos_id);
    fill_token_id(config.value(), "eos_token_id", vocab, &m.eos_id);
    fill_token_id(config.value(), "pad_token_id", vocab, &m.pad_id);
    tokenizer_note =
        "tokenizer " + std::to_string(tok.value().vocab_size()) + " tokens, pre '" + m.pre + "'";
    opts.tokenizer = std::move(meta).value();
  }
  Result<checkpoint::GgufExportSummary> r =
      checkpoint::write_gguf_model(args.to, cfg.value(), params, opts);
  if (!r.ok()) return fail(r.error().message);
  std::string types;
  for (const auto& [name, count] : r.value().tensors_by_type) {
    types += (types.empty() ? "" : ", ") + std::to_string(count) + " " + name;
  }
  std::printf("wrote %s: %s (llama.cpp '%s'), %.3f M parameters, tensors %s, %s, %.1f MB\n",
              args.to.c_str(), cfg.value().model_type.c_str(), r.value().arch.c_str(),
              params.numel() / 1e6, types.c_str(), tokenizer_note.c_str(),
              static_cast<double>(r.value().bytes) / 1e6);
  for (const std::string& note : r.value().notes) std::printf("note: %s\n", note.c_str());
  return 0;
}

}  // namespace

int convert_command(const ConvertArgs& args) {
  std::error_code ec;
  const fs::file_status from = fs::status(args.from, ec);
  if (!fs::exists(from)) return fail(args.from + ": no such file or folder (--from)");
  if (fs::is_directory(from)) return hf_to_gguf(args);
  return gguf_to_hf(args);
}

}  // namespace ramstream::cli
