#include "checkpoint/hf_loader.h"

#include <algorithm>
#include <filesystem>

#include <ATen/core/grad_mode.h>
#include <nlohmann/json.hpp>

#include "model/hf_names.h"
#include "util/json_read.h"
#include "util/user_file.h"

namespace ramstream::checkpoint {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr size_t kMaxListed = 8;       // names listed per problem kind; the rest are counted
constexpr size_t kMaxNameBytes = 120;  // of a tensor or shard name quoted in a message

std::string quoted(const std::string& name) {
  return quote_bounded(name, kMaxNameBytes);
}

struct Sources {
  std::vector<std::string> files;                 // sorted
  std::string index_path;                         // empty without an index
  std::map<std::string, std::string> weight_map;  // tensor -> shard path, with an index
};

// Why `shard` is not a plain file name beside the index, or "" when it is one.
std::string bad_shard_name(const std::string& shard) {
  if (shard.empty() || shard == "." || shard == "..") return "not a file name";
  if (shard[0] == '/') return "an absolute path (shards must lie beside the index)";
  if (shard.find("..") != std::string::npos && shard.find('/') != std::string::npos) {
    return "a path leaving the folder ('..')";
  }
  if (shard.find('/') != std::string::npos || shard.find('\\') != std::string::npos) {
    return "a path, not a file name beside the index";
  }
  for (unsigned char c : shard) {
    if (c < 0x20 || c == 0x7f) return "a name with control characters";
  }
  return "";
}

Result<Sources> read_index(const fs::path& dir, const std::string& index_path) {
  Sources s;
  s.index_path = index_path;
  // Real indexes list a few thousand tensors (~100 KB); 64 MiB is far beyond any.
  Result<json> parsed = read_json_file(index_path, "the safetensors index");
  if (!parsed.ok()) return parsed.error();
  const json& j = parsed.value();
  auto fail = [&](const std::string& what) -> Error { return Error{index_path + ": " + what}; };
  if (!j.is_object()) {
    return fail("expected a JSON object with a 'weight_map', found " + describe_json(j));
  }
  auto meta = j.find("metadata");
  if (meta != j.end() && !meta->is_null()) {
    if (!meta->is_object()) {
      return fail("key 'metadata': expected an object, found " + describe_json(*meta));
    }
    auto total = meta->find("total_size");
    if (total != meta->end() && !total->is_null() && !total->is_number_unsigned()) {
      return fail("key 'metadata.total_size': expected a byte count, found " +
                  describe_json(*total));
    }
  }
  auto map = j.find("weight_map");
  if (map == j.end()) return fail("key 'weight_map': missing (required)");
  if (!map->is_object()) {
    return fail("key 'weight_map': expected an object {tensor: shard file}, found " +
                describe_json(*map));
  }
  for (auto it = map->begin(); it != map->end(); ++it) {
    const std::string key = "key 'weight_map' entry " + quoted(it.key()) + ": ";
    if (!it.value().is_string()) {
      return fail(key + "expected a file name (the shard), found " + describe_json(it.value()));
    }
    const std::string& shard = it.value().get_ref<const std::string&>();
    const std::string why = bad_shard_name(shard);
    if (!why.empty()) return fail(key + "invalid shard name " + quoted(shard) + ": " + why);
    const std::string shard_path = (dir / shard).string();
    s.weight_map[it.key()] = shard_path;
    s.files.push_back(shard_path);
  }
  std::sort(s.files.begin(), s.files.end());
  s.files.erase(std::unique(s.files.begin(), s.files.end()), s.files.end());
  return s;
}

Result<Sources> find_sources(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) return Error{path + ": no such file or folder"};
  if (!fs::is_directory(st)) {
    Sources s;
    s.files.push_back(path);
    return s;
  }
  const fs::path dir(path);
  const fs::path index = dir / kIndexFile;
  if (fs::exists(fs::symlink_status(index, ec))) return read_index(dir, index.string());
  const fs::path single = dir / kSingleFile;
  if (fs::exists(fs::symlink_status(single, ec))) {
    Sources s;
    s.files.push_back(single.string());
    return s;
  }
  return Error{path + ": folder has neither " + kSingleFile + " nor " + kIndexFile};
}

std::string shape_str(const std::vector<int64_t>& shape) {
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

struct WeightProblems {
  ProblemList missing{"missing tensors", {}};
  ProblemList unexpected{"unexpected tensors", {}};
  ProblemList mismatched{"shape/dtype mismatches", {}};
  ProblemList index{"index inconsistencies", {}};

  bool empty() const {
    return missing.items.empty() && unexpected.items.empty() && mismatched.items.empty() &&
           index.items.empty();
  }
  Status status(const std::string& source, const model::ModelConfig& cfg) const {
    if (empty()) return Ok{};
    std::string msg = source + ": weights do not match the " + cfg.model_type + " config:";
    missing.append_to(&msg);
    unexpected.append_to(&msg);
    mismatched.append_to(&msg);
    index.append_to(&msg);
    return Error{msg};
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

// The shape the HF tensor `ref` has in a model of `cfg` (what hf_param_view would return).
std::vector<int64_t> expected_shape(const model::ModelConfig& cfg, const model::BlockLayout& layout,
                                    const model::HfParamRef& ref) {
  const int64_t rows = ref.row_end - ref.row_begin;
  switch (ref.row->target) {
    case model::HfTarget::kEmbedding:
    case model::HfTarget::kLmHead:
      return {rows, cfg.hidden_size};
    case model::HfTarget::kFinalNorm:
      return {rows};
    case model::HfTarget::kBlock:
      break;
  }
  std::vector<int64_t> shape = layout[ref.row->block].shape;
  shape.at(0) = rows;
  return shape;
}

void check_tensors(const std::vector<CheckpointTensor>& tensors, const model::ModelConfig& cfg,
                   WeightProblems* p) {
  const model::BlockLayout layout = model::block_layout(cfg);
  std::map<std::string, const CheckpointTensor*> found;
  for (const CheckpointTensor& t : tensors) {
    const std::string label = t.file + ": tensor " + quoted(t.stored.empty() ? t.name : t.stored);
    if (t.name.empty()) {
      p->unexpected.items.push_back(label + " (no Hugging Face name)");
      continue;
    }
    if (ignored_by_hf(cfg, t.name)) continue;
    auto [it, inserted] = found.emplace(t.name, &t);
    if (!inserted) {
      p->index.items.push_back(quoted(t.name) + " is in both " + it->second->file + " and " +
                               t.file);
      continue;
    }
    if (t.name.size() > kMaxNameBytes) {
      p->unexpected.items.push_back(label);
      continue;
    }
    Result<model::HfParamRef> ref = model::resolve_hf_name(cfg, t.name);
    if (!ref.ok()) {
      p->unexpected.items.push_back(t.file + ": " + ref.error().message);
      continue;
    }
    const std::vector<int64_t> want = expected_shape(cfg, layout, ref.value());
    if (!t.convertible) {
      p->mismatched.items.push_back(label + ": dtype " + t.dtype +
                                    " is not a floating-point type we can load");
    } else if (t.shape != want) {
      p->mismatched.items.push_back(label + ": file has shape " + shape_str(t.shape) +
                                    ", model expects " + shape_str(want));
    }
  }
  for (const std::string& name : model::hf_param_names(cfg)) {
    if (!found.count(name)) p->missing.items.push_back("'" + name + "'");
  }
}

}  // namespace

Status check_checkpoint_tensors(const std::vector<CheckpointTensor>& tensors,
                                const model::ModelConfig& cfg, const std::string& source) {
  WeightProblems problems;
  check_tensors(tensors, cfg, &problems);
  return problems.status(source, cfg);
}

Result<std::vector<std::string>> hf_safetensors_files(const std::string& path) {
  Result<Sources> s = find_sources(path);
  if (!s.ok()) return s.error();
  return s.value().files;
}

bool has_hf_weights(const std::string& dir) {
  std::error_code ec;
  const fs::path d(dir);
  return fs::exists(fs::symlink_status(d / kIndexFile, ec)) ||
         fs::exists(fs::symlink_status(d / kSingleFile, ec));
}

Result<HfCheckpoint> open_hf_checkpoint(const std::string& path, const model::ModelConfig& cfg) {
  Result<Sources> src = find_sources(path);
  if (!src.ok()) return src.error();
  const Sources& sources = src.value();
  HfCheckpoint ck;
  ck.index_path = sources.index_path;
  WeightProblems problems;
  for (const std::string& f : sources.files) {
    std::error_code ec;
    if (!sources.index_path.empty() && !fs::exists(f, ec)) {
      problems.index.items.push_back("shard " + f + " is listed in the index but does not exist");
      continue;
    }
    Result<SafetensorsFile> r = SafetensorsFile::open(f);
    if (!r.ok()) return r.error();
    ck.files.push_back(std::move(r).value());
  }

  std::vector<CheckpointTensor> tensors;
  for (size_t i = 0; i < ck.files.size(); ++i) {
    const SafetensorsFile& file = ck.files[i];
    for (const std::string& name : file.names()) {
      const SafetensorInfo& info = *file.info(name).value();
      ck.tensor_bytes += info.end - info.begin;
      ck.where.emplace(name, i);
      tensors.push_back({name, "", file.path(), info.shape, safetensors_dtype_name(info.dtype),
                         is_float(info.dtype)});
    }
  }
  check_tensors(tensors, cfg, &problems);
  if (!sources.index_path.empty()) {
    for (const auto& [name, shard] : sources.weight_map) {
      auto it = ck.where.find(name);
      std::error_code ec;
      if ((it == ck.where.end() || ck.files[it->second].path() != shard) && fs::exists(shard, ec)) {
        problems.index.items.push_back(quoted(name) + " is listed in shard " + shard +
                                       " but is not there");
      }
    }
    for (const auto& [name, i] : ck.where) {
      if (!sources.weight_map.count(name)) {
        problems.index.items.push_back(quoted(name) + " in " + ck.files[i].path() +
                                       " is not listed in the index");
      }
    }
  }
  Status st = problems.status(path, cfg);
  if (!st.ok()) return st.error();
  return ck;
}

Status load_hf_weights(const std::string& path, const model::ModelConfig& cfg,
                       model::ModelParams& params) {
  Result<HfCheckpoint> opened = open_hf_checkpoint(path, cfg);
  if (!opened.ok()) return opened.error();
  const HfCheckpoint& ck = opened.value();
  // Everything was checked above, so a bad checkpoint has left params untouched.
  at::NoGradGuard no_grad;
  for (const auto& [name, i] : ck.where) {
    if (ignored_by_hf(cfg, name)) continue;
    Result<at::Tensor> view = model::hf_param_view(params, cfg, name);
    if (!view.ok()) return Error{path + ": " + view.error().message};
    at::Tensor dst = view.value();
    Status st = ck.files[i].read_into(name, dst);
    if (!st.ok()) return st;
  }
  return Ok{};
}

}  // namespace ramstream::checkpoint
