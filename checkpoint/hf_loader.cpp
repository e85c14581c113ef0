#include "checkpoint/hf_loader.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <ATen/core/grad_mode.h>
#include <nlohmann/json.hpp>

#include "checkpoint/safetensors.h"
#include "model/hf_names.h"

namespace ramstream::checkpoint {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr size_t kMaxListed = 8;  // names listed per problem kind; the rest are counted

struct Sources {
  std::vector<std::string> files;
  std::string index_path;                         // empty without an index
  std::map<std::string, std::string> weight_map;  // tensor -> shard path, with an index
};

Result<Sources> find_sources(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) return Error{path + ": no such file or folder"};
  Sources s;
  if (!fs::is_directory(st)) {
    s.files.push_back(path);
    return s;
  }
  const fs::path dir(path);
  const fs::path index = dir / kIndexFile;
  if (fs::exists(index, ec)) {
    s.index_path = index.string();
    std::ifstream in(index, std::ios::binary);
    if (!in) return Error{s.index_path + ": cannot open"};
    json j;
    try {
      j = json::parse(in);
    } catch (const json::exception& e) {
      return Error{s.index_path + ": invalid JSON: " + e.what()};
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
      return Error{s.index_path + ": key 'weight_map': missing or not an object"};
    }
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string()) {
        return Error{s.index_path + ": weight_map['" + it.key() + "']: expected a file name"};
      }
      const std::string shard = it.value().get<std::string>();
      // A shard name is a file beside the index, never a path out of the folder.
      if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos ||
          shard.find('\\') != std::string::npos) {
        return Error{s.index_path + ": weight_map['" + it.key() + "']: invalid shard name '" +
                     shard + "'"};
      }
      const std::string shard_path = (dir / shard).string();
      s.weight_map[it.key()] = shard_path;
      if (std::find(s.files.begin(), s.files.end(), shard_path) == s.files.end()) {
        s.files.push_back(shard_path);
      }
    }
    std::sort(s.files.begin(), s.files.end());
    return s;
  }
  const fs::path single = dir / kSingleFile;
  if (fs::exists(single, ec)) {
    s.files.push_back(single.string());
    return s;
  }
  return Error{path + ": folder has neither " + kSingleFile + " nor " + kIndexFile};
}

std::string shape_str(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Collects problems of one kind and prints at most kMaxListed of them.
struct ProblemList {
  const char* title;
  std::vector<std::string> items;
  void append_to(std::string* msg) const {
    if (items.empty()) return;
    *msg += "\n  " + std::to_string(items.size()) + " " + title + ":";
    for (size_t i = 0; i < items.size() && i < kMaxListed; ++i) *msg += "\n    " + items[i];
    if (items.size() > kMaxListed) {
      *msg += "\n    ... and " + std::to_string(items.size() - kMaxListed) + " more";
    }
  }
};

bool ignored_by_hf(const model::ModelConfig& cfg, const std::string& name) {
  static const std::string kInvFreq = ".rotary_emb.inv_freq";
  if (name.size() >= kInvFreq.size() &&
      name.compare(name.size() - kInvFreq.size(), kInvFreq.size(), kInvFreq) == 0) {
    return true;
  }
  return cfg.tie_word_embeddings && name == "lm_head.weight";
}

bool is_float(SafetensorsDtype d) {
  return d == SafetensorsDtype::kF64 || d == SafetensorsDtype::kF32 ||
         d == SafetensorsDtype::kF16 || d == SafetensorsDtype::kBF16;
}

}  // namespace

Result<std::vector<std::string>> hf_safetensors_files(const std::string& path) {
  Result<Sources> s = find_sources(path);
  if (!s.ok()) return s.error();
  return s.value().files;
}

Status load_hf_weights(const std::string& path, const model::ModelConfig& cfg,
                       model::ModelParams& params) {
  Result<Sources> src = find_sources(path);
  if (!src.ok()) return src.error();
  const Sources& sources = src.value();

  std::vector<SafetensorsFile> files;
  for (const std::string& f : sources.files) {
    Result<SafetensorsFile> r = SafetensorsFile::open(f);
    if (!r.ok()) return r.error();
    files.push_back(std::move(r).value());
  }

  // name -> index into `files`; a name in two shards is ambiguous.
  std::map<std::string, size_t> where;
  ProblemList index_problems{"index inconsistencies", {}};
  for (size_t i = 0; i < files.size(); ++i) {
    for (const std::string& name : files[i].names()) {
      auto [it, inserted] = where.emplace(name, i);
      if (!inserted) {
        index_problems.items.push_back("'" + name + "' is in both " + files[it->second].path() +
                                       " and " + files[i].path());
      }
    }
  }
  if (!sources.index_path.empty()) {
    for (const auto& [name, shard] : sources.weight_map) {
      auto it = where.find(name);
      if (it == where.end() || files[it->second].path() != shard) {
        index_problems.items.push_back("'" + name + "' is listed in shard " + shard +
                                       " but is not there");
      }
    }
    for (const auto& [name, i] : where) {
      if (!sources.weight_map.count(name)) {
        index_problems.items.push_back("'" + name + "' in " + files[i].path() +
                                       " is not listed in the index");
      }
    }
  }

  // Check everything before writing anything, so a bad checkpoint leaves params untouched.
  struct Copy {
    const SafetensorsFile* file;
    std::string name;
    at::Tensor dst;
  };
  std::vector<Copy> copies;
  ProblemList unexpected{"unexpected tensors", {}};
  ProblemList mismatched{"shape/dtype mismatches", {}};
  for (const auto& [name, i] : where) {
    if (ignored_by_hf(cfg, name)) continue;
    Result<at::Tensor> view = model::hf_param_view(params, cfg, name);
    if (!view.ok()) {
      unexpected.items.push_back(files[i].path() + ": " + view.error().message);
      continue;
    }
    const SafetensorInfo& info = *files[i].info(name).value();
    if (!is_float(info.dtype)) {
      mismatched.items.push_back(files[i].path() + ": tensor '" + name + "': dtype " +
                                 safetensors_dtype_name(info.dtype) +
                                 " is not a floating-point type");
    } else if (view.value().sizes() != at::IntArrayRef(info.shape)) {
      mismatched.items.push_back(files[i].path() + ": tensor '" + name + "': file has shape " +
                                 shape_str(info.shape) + ", model expects " +
                                 shape_str(view.value().sizes()));
    } else {
      copies.push_back({&files[i], name, view.value()});
    }
  }
  ProblemList missing{"missing tensors", {}};
  for (const std::string& name : model::hf_param_names(cfg)) {
    if (!where.count(name)) missing.items.push_back("'" + name + "'");
  }
  if (!index_problems.items.empty() || !unexpected.items.empty() || !mismatched.items.empty() ||
      !missing.items.empty()) {
    std::string msg = path + ": weights do not match the " + cfg.model_type + " config:";
    missing.append_to(&msg);
    unexpected.append_to(&msg);
    mismatched.append_to(&msg);
    index_problems.append_to(&msg);
    return Error{msg};
  }

  at::NoGradGuard no_grad;
  for (Copy& c : copies) {
    Status st = c.file->read_into(c.name, c.dst);
    if (!st.ok()) return st;
  }
  return Ok{};
}

}  // namespace ramstream::checkpoint
