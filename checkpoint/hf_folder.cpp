#include "checkpoint/hf_folder.h"

#include <filesystem>
#include <fstream>
#include <vector>

#include "checkpoint/atomic_file.h"
#include "checkpoint/safetensors_writer.h"
#include "model/hf_names.h"

namespace ramstream::checkpoint {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

const char* dtype_config_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "float32";
    case at::kBFloat16:
      return "bfloat16";
    case at::kHalf:
      return "float16";
    default:
      return nullptr;
  }
}

// Token ids live in config.json, not in ModelConfig (which describes the architecture); a saved
// folder keeps the source's so generation still stops at eos.
constexpr const char* kTokenIdKeys[] = {"bos_token_id", "eos_token_id", "pad_token_id"};

Result<json> read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error{path + ": cannot open"};
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    return Error{path + ": invalid JSON: " + e.what()};
  }
}

Status copy_non_weight_files(const std::string& from, const std::string& to) {
  std::error_code ec;
  if (!fs::is_directory(from, ec)) return Error{from + ": copy_from_dir is not a folder"};
  for (fs::directory_iterator it(from, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    // is_regular_file follows symlinks: HF cache snapshots link every file to a blob.
    if (!is_hf_non_weight_file(name) || !it->is_regular_file(ec)) continue;
    const fs::path dst = fs::path(to) / name;
    fs::copy_file(it->path(), dst, fs::copy_options::overwrite_existing, ec);
    if (ec) {
      return Error{it->path().string() + ": cannot copy to " + dst.string() + ": " + ec.message()};
    }
  }
  if (ec) return Error{from + ": cannot list: " + ec.message()};
  return Ok{};
}

}  // namespace

bool is_hf_non_weight_file(const std::string& f) {
  static const char* const kWeightSuffixes[] = {".safetensors", ".bin",       ".pt", ".pth",
                                                ".ckpt",        ".gguf",      ".h5", ".msgpack",
                                                ".onnx",        ".index.json"};
  if (f == "config.json" || f.empty()) return false;
  for (const char* s : kWeightSuffixes) {
    if (ends_with(f, s)) return false;
  }
  // Our own staging names (atomic_file.h), left by a crash.
  return f.find(".tmp-") == std::string::npos && f.find(".old-") == std::string::npos;
}

Status save_hf_folder(const std::string& dir, const model::ModelConfig& cfg,
                      model::ModelParams& params, const HfSaveOptions& opts) {
  const char* dtype_name = dtype_config_name(opts.dtype);
  if (dtype_name == nullptr) {
    return Error{dir + ": cannot save weights as " + std::string(c10::toString(opts.dtype)) +
                 " (choose float32, bfloat16 or float16)"};
  }
  if (!opts.extra_config.is_object()) return Error{dir + ": extra_config must be a JSON object"};

  // Everything that can be checked is checked before the staging folder exists.
  std::vector<TensorSource> sources;
  for (const std::string& name : model::hf_param_names(cfg)) {
    Result<at::Tensor> view = model::hf_param_view(params, cfg, name);
    if (!view.ok()) return Error{dir + ": " + view.error().message};
    sources.push_back(TensorSource::from_tensor(name, view.value(), opts.dtype));
  }

  json config = model::model_config_to_json(cfg);
  config["dtype"] = dtype_name;        // transformers >= 4.56
  config["torch_dtype"] = dtype_name;  // older readers
  bool source_has_generation_config = false;
  if (!opts.copy_from_dir.empty()) {
    std::error_code ec;
    if (!fs::is_directory(opts.copy_from_dir, ec)) {
      return Error{opts.copy_from_dir + ": copy_from_dir is not a folder"};
    }
    const fs::path src_config = fs::path(opts.copy_from_dir) / "config.json";
    if (fs::exists(src_config, ec)) {
      Result<json> src = read_json(src_config.string());
      if (!src.ok()) return src.error();
      for (const char* key : kTokenIdKeys) {
        if (src.value().is_object() && src.value().contains(key)) config[key] = src.value()[key];
      }
    }
    source_has_generation_config =
        fs::is_regular_file(fs::path(opts.copy_from_dir) / "generation_config.json", ec);
  }
  config.merge_patch(opts.extra_config);

  Result<StagedDir> stage = StagedDir::create(dir);
  if (!stage.ok()) return stage.error();
  const std::string staging = stage.value().path();

  if (!opts.copy_from_dir.empty()) {
    Status st = copy_non_weight_files(opts.copy_from_dir, staging);
    if (!st.ok()) return st;
  }
  // replace: invalid UTF-8 from extra_config must not throw out of a save.
  const std::string config_text = config.dump(2, ' ', false, json::error_handler_t::replace);
  Status st = write_file_atomic(staging + "/config.json", config_text + "\n");
  if (!st.ok()) return st;
  if (!source_has_generation_config) {
    json gen = {{"_from_model_config", true}};
    for (const char* key : kTokenIdKeys) {
      if (config.contains(key) && !config[key].is_null()) gen[key] = config[key];
    }
    if (gen.contains("bos_token_id") || gen.contains("eos_token_id")) {
      st = write_file_atomic(staging + "/generation_config.json", gen.dump(2) + "\n");
      if (!st.ok()) return st;
    }
  }

  SafetensorsWriteOptions wopts;
  wopts.after_tensor = opts.after_tensor;
  Result<SafetensorsFolder> weights =
      write_safetensors_folder(staging, sources, opts.max_shard_bytes, wopts);
  if (!weights.ok()) return weights.error();
  return stage.value().commit();
}

}  // namespace ramstream::checkpoint
