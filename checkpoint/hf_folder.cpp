#include "checkpoint/hf_folder.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <vector>

#include "checkpoint/atomic_file.h"
#include "checkpoint/safetensors_writer.h"
#include "model/hf_names.h"
#include "util/json_read.h"
#include "util/user_file.h"

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
  if (f == "config.json" || f == kHfOutputMarker || f.empty()) return false;
  for (const char* s : kWeightSuffixes) {
    if (ends_with(f, s)) return false;
  }
  // Our own staging names (atomic_file.h), left by a crash.
  return f.find(".tmp-") == std::string::npos && f.find(".old-") == std::string::npos;
}

namespace {

// What a save writes, computed and checked before any file exists.
struct PreparedFolder {
  std::vector<TensorSource> sources;  // in the order they are written
  json config;
  bool source_has_generation_config = false;
};

Result<PreparedFolder> prepare_hf_folder(const std::string& dir, const model::ModelConfig& cfg,
                                         model::ModelParams& params, const HfSaveOptions& opts) {
  const char* dtype_name = dtype_config_name(opts.dtype);
  if (dtype_name == nullptr) {
    return Error{dir + ": cannot save weights as " + std::string(c10::toString(opts.dtype)) +
                 " (choose float32, bfloat16 or float16)"};
  }
  if (!opts.extra_config.is_object()) return Error{dir + ": extra_config must be a JSON object"};

  PreparedFolder out;
  std::vector<std::string> names = model::hf_param_names(cfg);
  if (!opts.tensor_order.empty()) {
    std::vector<std::string> want = names, got = opts.tensor_order;
    std::sort(want.begin(), want.end());
    std::sort(got.begin(), got.end());
    if (want != got) {
      return Error{dir + ": tensor_order must list each of the model's " +
                   std::to_string(want.size()) + " weight names exactly once (got " +
                   std::to_string(got.size()) + " names)"};
    }
    names = opts.tensor_order;
  }
  for (const std::string& name : names) {
    Result<at::Tensor> view = model::hf_param_view(params, cfg, name);
    if (!view.ok()) return Error{dir + ": " + view.error().message};
    out.sources.push_back(TensorSource::from_tensor(name, view.value(), opts.dtype));
  }

  out.config = model::model_config_to_json(cfg);
  out.config["dtype"] = dtype_name;        // transformers >= 4.56
  out.config["torch_dtype"] = dtype_name;  // older readers
  if (!opts.copy_from_dir.empty()) {
    std::error_code ec;
    if (!fs::is_directory(opts.copy_from_dir, ec)) {
      return Error{opts.copy_from_dir + ": copy_from_dir is not a folder"};
    }
    const fs::path src_config = fs::path(opts.copy_from_dir) / "config.json";
    if (fs::exists(src_config, ec)) {
      Result<json> src = read_json_file(src_config.string(), "the source model config");
      if (!src.ok()) return src.error();
      for (const char* key : kTokenIdKeys) {
        if (src.value().is_object() && src.value().contains(key)) {
          out.config[key] = src.value()[key];
        }
      }
    }
    out.source_has_generation_config =
        fs::is_regular_file(fs::path(opts.copy_from_dir) / "generation_config.json", ec);
  }
  out.config.merge_patch(opts.extra_config);
  return out;
}

Status write_prepared(const std::string& dir, const PreparedFolder& folder,
                      const HfSaveOptions& opts) {
  if (!opts.copy_from_dir.empty()) {
    Status st = copy_non_weight_files(opts.copy_from_dir, dir);
    if (!st.ok()) return st;
  }
  if (opts.write_extra_files) {
    Status st = opts.write_extra_files(dir);
    if (!st.ok()) return st;
  }
  const json& config = folder.config;
  // replace: invalid UTF-8 from extra_config must not throw out of a save.
  const std::string config_text = config.dump(2, ' ', false, json::error_handler_t::replace);
  Status st = write_file_atomic(dir + "/config.json", config_text + "\n");
  if (!st.ok()) return st;
  if (!folder.source_has_generation_config) {
    json gen = {{"_from_model_config", true}};
    for (const char* key : kTokenIdKeys) {
      if (config.contains(key) && !config[key].is_null()) gen[key] = config[key];
    }
    if (gen.contains("bos_token_id") || gen.contains("eos_token_id")) {
      st = write_file_atomic(dir + "/generation_config.json", gen.dump(2) + "\n");
      if (!st.ok()) return st;
    }
  }

  SafetensorsWriteOptions wopts;
  wopts.after_tensor = opts.after_tensor;
  Result<SafetensorsFolder> weights =
      write_safetensors_folder(dir, folder.sources, opts.max_shard_bytes, wopts);
  if (!weights.ok()) return weights.error();
  return Ok{};
}

}  // namespace

json token_ids_config(int64_t bos_id, int64_t eos_id, int64_t pad_id) {
  json j = json::object();
  const int64_t ids[] = {bos_id, eos_id, pad_id};
  for (size_t i = 0; i < 3; ++i) {
    if (ids[i] >= 0) j[kTokenIdKeys[i]] = ids[i];
  }
  return j;
}

namespace {

// Top-level entry names of `dir`, sorted.
Result<std::vector<std::string>> entry_names(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    names.push_back(it->path().filename().string());
  }
  if (ec) return Error{dir + ": cannot list: " + ec.message()};
  std::sort(names.begin(), names.end());
  return names;
}

Status write_output_marker(const std::string& dir) {
  Result<std::vector<std::string>> names = entry_names(dir);
  if (!names.ok()) return names.error();
  json files = json::array();
  for (const std::string& n : names.value()) {
    if (n != kHfOutputMarker) files.push_back(n);
  }
  const json marker = {{"written_by", "ramstream"}, {"kind", "hf_model_folder"}, {"files", files}};
  return write_file_atomic(dir + "/" + kHfOutputMarker,
                           marker.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
}

}  // namespace

Status check_replaceable_output(const std::string& dir) {
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(dir, ec);
  if (!fs::exists(st)) return Ok{};
  if (!fs::is_directory(st)) return Error{dir + ": exists and is not a folder; not replacing it"};
  Result<std::vector<std::string>> names = entry_names(dir);
  if (!names.ok()) return names.error();
  if (names.value().empty()) return Ok{};
  std::set<std::string> ours;
  const std::string marker_path = dir + "/" + kHfOutputMarker;
  bool has_marker = false;
  if (fs::is_regular_file(fs::symlink_status(marker_path, ec))) {
    JsonLimits limits;
    limits.max_bytes = 1 << 20;
    Result<json> marker = read_json_file(marker_path, "ramstream's output marker", limits);
    if (marker.ok() && marker.value().is_object() &&
        marker.value().value("written_by", json()) == "ramstream" &&
        marker.value().value("files", json()).is_array()) {
      has_marker = true;
      ours.insert(kHfOutputMarker);
      for (const json& f : marker.value()["files"]) {
        if (f.is_string()) ours.insert(f.get<std::string>());
      }
    }
  }
  std::vector<std::string> foreign;
  for (const std::string& n : names.value()) {
    if (!ours.count(n)) foreign.push_back(n);
  }
  if (foreign.empty()) return Ok{};
  std::string msg =
      dir + ": not empty and " +
      (has_marker ? std::string("holds entries the previous save did not write")
                  : std::string("not a folder ramstream wrote (no ") + kHfOutputMarker + ")") +
      "; refusing to replace it, which would delete: ";
  constexpr size_t kShown = 4;
  for (size_t k = 0; k < foreign.size() && k < kShown; ++k) {
    msg += (k ? ", " : "") + quote_bounded(foreign[k], 60);
  }
  if (foreign.size() > kShown) msg += " and " + std::to_string(foreign.size() - kShown) + " more";
  return Error{msg};
}

Status save_hf_folder(const std::string& dir, const model::ModelConfig& cfg,
                      model::ModelParams& params, const HfSaveOptions& opts) {
  // Everything that can be checked is checked before the staging folder exists.
  Result<PreparedFolder> folder = prepare_hf_folder(dir, cfg, params, opts);
  if (!folder.ok()) return folder.error();
  if (!opts.replace_foreign) {
    Status replaceable = check_replaceable_output(dir);
    if (!replaceable.ok()) return replaceable;
  }
  Result<StagedDir> stage = StagedDir::create(dir);
  if (!stage.ok()) return stage.error();
  Status st = write_prepared(stage.value().path(), folder.value(), opts);
  if (!st.ok()) return st;
  st = write_output_marker(stage.value().path());
  if (!st.ok()) return st;
  return stage.value().commit();
}

Status write_hf_folder_files(const std::string& dir, const model::ModelConfig& cfg,
                             model::ModelParams& params, const HfSaveOptions& opts) {
  Result<PreparedFolder> folder = prepare_hf_folder(dir, cfg, params, opts);
  if (!folder.ok()) return folder.error();
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return Error{dir + ": not a folder to write the model into"};
  return write_prepared(dir, folder.value(), opts);
}

}  // namespace ramstream::checkpoint
