#include "checkpoint/train_state.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>
#include <utility>

#include "checkpoint/atomic_file.h"
#include "checkpoint/safetensors.h"
#include "checkpoint/safetensors_writer.h"
#include "model/config.h"
#include "model/hf_names.h"
#include "util/json_read.h"

namespace ramstream::checkpoint {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using pipeline::ParamStore;
using pipeline::StagePlan;

constexpr const char* kFormat = "ramstream.train_state";
constexpr int kVersion = 1;
constexpr const char* kStateDir = "trainer_state";
constexpr const char* kStateJson = "trainer_state/state.json";
constexpr const char* kSelfCrcKey = "state_crc32c";
// The trainer_state tensors of one HF weight.
constexpr const char* kKinds[3] = {"master.", "exp_avg.", "exp_avg_sq."};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

std::string stage_file(int64_t stage) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s/stage_%03lld.safetensors", kStateDir,
                static_cast<long long>(stage));
  return buf;
}

Error errno_error(const std::string& path, const std::string& what, int err) {
  return Error{path + ": " + what + ": " + std::strerror(err)};
}

// The HF weights of each stage, in HF order within a stage.
Result<std::vector<std::vector<std::string>>> hf_names_by_stage(const model::ModelConfig& cfg,
                                                                const StagePlan& plan) {
  std::vector<std::vector<std::string>> by_stage(static_cast<size_t>(plan.num_stages()));
  for (const std::string& name : model::hf_param_names(cfg)) {
    Result<model::HfParamRef> ref = model::resolve_hf_name(cfg, name);
    if (!ref.ok()) return ref.error();
    int64_t stage = plan.head_index();
    switch (ref.value().row->target) {
      case model::HfTarget::kEmbedding:
        stage = 0;
        break;
      case model::HfTarget::kBlock:
        stage = plan.block_index(ref.value().layer);
        break;
      case model::HfTarget::kFinalNorm:
      case model::HfTarget::kLmHead:
        stage = plan.head_index();
        break;
    }
    by_stage[static_cast<size_t>(stage)].push_back(name);
  }
  return by_stage;
}

// Views of the store's masters, m and v, bound like ModelParams (tied lm_head = embedding).
struct StoreViews {
  model::ModelParams part[3];
};

// Whole [numel] tensors of every stage's masters: the store's own, those given (a sharded bf16
// store's, gathered), or shape-only stand-ins (meta tensors) where the store has only shards.
std::vector<at::Tensor> whole_masters(ParamStore& store, const std::vector<at::Tensor>& given) {
  std::vector<at::Tensor> flats;
  for (int64_t s = 0; s < store.plan().num_stages(); ++s) {
    const int64_t numel = store.plan().stages[static_cast<size_t>(s)].numel;
    if (!given.empty()) {
      flats.push_back(given[static_cast<size_t>(s)]);
    } else if (store.masters_sharded()) {
      flats.push_back(at::empty({numel}, at::TensorOptions().dtype(at::kFloat).device(at::kMeta)));
    } else {
      flats.push_back(store.region(s).master);
    }
  }
  return flats;
}

// A sharded store holds only its shard of m and v (and, bf16 layout, of the masters): their views
// are bound to whole stand-ins (same shapes) and never read or written; the whole state of one
// stage at a time comes from CheckpointOptions::gather_moments and whole_masters (save) or goes
// through stage_views (load).
StoreViews store_views(ParamStore& store, const std::vector<at::Tensor>& given_masters = {}) {
  std::vector<at::Tensor> flats[3];
  flats[0] = whole_masters(store, given_masters);
  for (int64_t s = 0; s < store.plan().num_stages(); ++s) {
    ParamStore::Region& r = store.region(s);
    flats[1].push_back(store.sharded() ? flats[0][static_cast<size_t>(s)] : r.m);
    flats[2].push_back(store.sharded() ? flats[0][static_cast<size_t>(s)] : r.v);
  }
  StoreViews v;
  for (int k = 0; k < 3; ++k)
    v.part[k] = pipeline::bind_stage_params(flats[k], store.plan(), store.config());
  return v;
}

// ModelParams views of whole stand-ins, except that stage `stage` is bound to `flat` (a whole
// [numel] tensor of that stage, e.g. its gathered m): hf_param_view of the stage's names then
// points into `flat`.
model::ModelParams stage_views(ParamStore& store, int64_t stage, const at::Tensor& flat) {
  std::vector<at::Tensor> flats = whole_masters(store, {});
  flats[static_cast<size_t>(stage)] = flat;
  return pipeline::bind_stage_params(flats, store.plan(), store.config());
}

struct FileRecord {
  uint64_t bytes = 0;
  uint32_t crc = 0;
};

// One trainer_state file written straight from the store: no staging buffer, no conversion
// (fp32 on disk as in memory), the CRC computed on the way. No fsync here: the commit of the
// folder syncs every file, after the optimizer has been released.
Result<FileRecord> write_stage_file(const std::string& path, const std::vector<TensorSource>& src,
                                    const std::string& stage_name) {
  Result<SafetensorsLayout> layout =
      plan_safetensors(src, {{"ramstream", kFormat}, {"stage", stage_name}});
  if (!layout.ok()) return Error{path + ": " + layout.error().message};
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno_error(path, "cannot create", errno);
  OutFile out(fd, path);
  FileRecord rec;
  const std::string& header = layout.value().header;
  rec.crc = crc32c(header.data(), header.size());
  Status st = out.write(header.data(), header.size());
  // Chunks small enough that the bytes the CRC just read are still in cache for write().
  constexpr size_t kChunk = 4u << 20;
  for (size_t i : layout.value().order) {
    if (!st.ok()) break;
    const at::Tensor& t = src[i].tensor;
    const auto* p = static_cast<const uint8_t*>(t.data_ptr());
    const size_t n = static_cast<size_t>(t.numel()) * t.element_size();
    for (size_t off = 0; off < n && st.ok(); off += kChunk) {
      const size_t len = std::min(kChunk, n - off);
      rec.crc = crc32c(p + off, len, rec.crc);
      st = out.write(p + off, len);
    }
  }
  if (::close(fd) != 0 && st.ok()) st = errno_error(path, "close failed", errno);
  if (!st.ok()) return st.error();
  rec.bytes = out.size();
  return rec;
}

Result<FileRecord> checksum_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_error(path, "cannot open", errno);
  std::vector<uint64_t> buf((4u << 20) / 8);
  FileRecord rec;
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size() * 8);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return errno_error(path, "read failed", err);
    }
    if (n == 0) break;
    rec.crc = crc32c(buf.data(), static_cast<size_t>(n), rec.crc);
    rec.bytes += static_cast<uint64_t>(n);
  }
  ::close(fd);
  return rec;
}

// The compact dump the self-checksum covers: state.json's object without kSelfCrcKey.
std::string self_crc_of(json j) {
  j.erase(kSelfCrcKey);
  const std::string text = j.dump(-1, ' ', false, json::error_handler_t::replace);
  return hex32(crc32c(text.data(), text.size()));
}

// A relative path inside the checkpoint folder, as state.json may name it.
bool safe_relative_path(const std::string& rel) {
  if (rel.empty() || rel[0] == '/') return false;
  for (const fs::path& part : fs::path(rel)) {
    if (part == ".." || part == ".") return false;
  }
  return true;
}

// The gate the engine's optimizer waits at: one flag per stage.
class StageGate {
 public:
  explicit StageGate(int64_t stages) : open_(static_cast<size_t>(stages), false) {}
  void wait(int64_t stage) {
    std::unique_lock<std::mutex> lock(mu_);
    if (open_[static_cast<size_t>(stage)]) return;
    const auto t0 = std::chrono::steady_clock::now();
    cv_.wait(lock, [&] { return open_[static_cast<size_t>(stage)]; });
    waited_s_ += seconds_since(t0);
  }
  void release(int64_t stage) {
    std::lock_guard<std::mutex> lock(mu_);
    open_[static_cast<size_t>(stage)] = true;
    cv_.notify_all();
  }
  void release_all() {
    std::lock_guard<std::mutex> lock(mu_);
    std::fill(open_.begin(), open_.end(), true);
    cv_.notify_all();
  }
  double waited_seconds() {
    std::lock_guard<std::mutex> lock(mu_);
    return waited_s_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<bool> open_;
  double waited_s_ = 0;
};

struct SaveJob {
  std::string output_dir;
  int64_t step = 0;
  json trainer;
  std::string config_hash;
  CheckpointOptions opts;
  std::vector<int64_t> order;  // stages in the order they are written (and released)
  StageGate* gate = nullptr;   // async saves: released stage by stage
};

Status delete_older_checkpoints(const std::string& output_dir, int64_t step, int keep_last_n) {
  Result<std::vector<CheckpointRef>> all = list_checkpoints(output_dir);
  if (!all.ok()) return all.error();
  int kept = 1;                                   // the new one
  for (const CheckpointRef& ref : all.value()) {  // newest first
    if (ref.step >= step) continue;
    if (kept < keep_last_n) {
      ++kept;
      continue;
    }
    // Out of the step_* namespace first, so a crash part way never leaves a half-deleted folder
    // under a checkpoint name.
    const std::string doomed = ref.path + ".tmp-" + std::to_string(::getpid()) + ".deleting";
    std::error_code ec;
    fs::remove_all(doomed, ec);  // a leftover of an earlier crash of a process with our pid
    fs::rename(ref.path, doomed, ec);
    if (!ec) fs::remove_all(doomed, ec);
    if (ec) {
      return Error{checkpoint_dir(output_dir, step) + ": saved, but cannot delete the older " +
                   ref.path + " (keep_last_n=" + std::to_string(keep_last_n) +
                   "): " + ec.message()};
    }
  }
  return Ok{};
}

Status run_save(const SaveJob& job, ParamStore& store, CheckpointStats* stats) {
  const auto t0 = std::chrono::steady_clock::now();
  const StagePlan& plan = store.plan();
  const model::ModelConfig& cfg = store.config();
  const std::string target = checkpoint_dir(job.output_dir, job.step);
  if (job.step < 0) return Error{target + ": negative step " + std::to_string(job.step)};
  std::vector<int64_t> sorted = job.order;
  std::sort(sorted.begin(), sorted.end());
  bool permutation = sorted.size() == static_cast<size_t>(plan.num_stages());
  for (size_t i = 0; permutation && i < sorted.size(); ++i) {
    permutation = sorted[i] == static_cast<int64_t>(i);
  }
  if (!permutation) {
    return Error{target + ": stage_order must list each of the " +
                 std::to_string(plan.num_stages()) + " stages once"};
  }
  Result<std::vector<std::vector<std::string>>> by_stage = hf_names_by_stage(cfg, plan);
  if (!by_stage.ok()) return Error{target + ": " + by_stage.error().message};
  if (store.sharded() && !job.opts.gather_moments) {
    return Error{target +
                 ": the store's optimizer state is sharded: the save needs "
                 "CheckpointOptions::gather_moments"};
  }
  if (store.masters_sharded() && job.opts.whole_masters.size() != size_t(plan.num_stages())) {
    return Error{target +
                 ": the store's masters are sharded: the save needs "
                 "CheckpointOptions::whole_masters"};
  }
  StoreViews views = store_views(store, job.opts.whole_masters);
  const std::vector<at::Tensor> masters_of = whole_masters(store, job.opts.whole_masters);

  // HF weights in stage write order; the last weight of each stage triggers that stage's file.
  HfSaveOptions hf = job.opts.hf;
  hf.tensor_order.clear();
  std::map<std::string, size_t> last_of_stage;  // HF name -> position in job.order
  for (size_t i = 0; i < job.order.size(); ++i) {
    const auto& names = by_stage.value()[static_cast<size_t>(job.order[i])];
    hf.tensor_order.insert(hf.tensor_order.end(), names.begin(), names.end());
    if (!names.empty()) last_of_stage[names.back()] = i;
  }

  Result<StagedDir> staged = StagedDir::create(target);
  if (!staged.ok()) return staged.error();
  const std::string staging = staged.value().path();
  std::error_code ec;
  fs::create_directory(fs::path(staging) / kStateDir, ec);
  if (ec) return Error{staging + "/" + kStateDir + ": cannot create: " + ec.message()};

  std::map<std::string, FileRecord> records;  // relative path -> size and CRC
  size_t written = 0;                         // stages of job.order done
  auto write_stages_through = [&](size_t last) -> Status {
    for (; written <= last && written < job.order.size(); ++written) {
      const int64_t s = job.order[written];
      // Never a checkpoint of broken weights (a diverged run): resuming from it could not recover.
      if (!at::isfinite(masters_of[static_cast<size_t>(s)]).all().item<bool>()) {
        return Error{target + ": not saved: stage " + plan.stages[static_cast<size_t>(s)].name() +
                     " has non-finite weights (the run diverged)"};
      }
      std::vector<TensorSource> src;
      model::ModelParams gathered[3];
      if (store.sharded()) {
        const std::pair<at::Tensor, at::Tensor> mv = job.opts.gather_moments(s);
        gathered[1] = stage_views(store, s, mv.first);
        gathered[2] = stage_views(store, s, mv.second);
      }
      for (const std::string& name : by_stage.value()[static_cast<size_t>(s)]) {
        for (int k = 0; k < 3; ++k) {
          model::ModelParams& part = store.sharded() && k > 0 ? gathered[k] : views.part[k];
          Result<at::Tensor> view = model::hf_param_view(part, cfg, name);
          if (!view.ok()) return Error{target + ": " + view.error().message};
          at::Tensor t = view.value();
          if (!t.is_contiguous()) t = t.contiguous();
          src.push_back(TensorSource::from_tensor(kKinds[k] + name, t, at::kFloat));
        }
      }
      const std::string rel = stage_file(s);
      Result<FileRecord> rec =
          write_stage_file(staging + "/" + rel, src, plan.stages[static_cast<size_t>(s)].name());
      if (!rec.ok()) return rec.error();
      records[rel] = rec.value();
      if (job.gate) job.gate->release(s);
    }
    return Ok{};
  };

  const auto user_hook = job.opts.hf.after_tensor;
  hf.after_tensor = [&](const std::string& name) -> Status {
    if (user_hook) {
      Status st = user_hook(name);
      if (!st.ok()) return st;
    }
    auto it = last_of_stage.find(name);
    return it == last_of_stage.end() ? Status(Ok{}) : write_stages_through(it->second);
  };
  model::ModelParams& masters = views.part[0];
  Status st = write_hf_folder_files(staging, cfg, masters, hf);
  if (!st.ok()) return st;
  st = write_stages_through(job.order.size());  // stages without HF weights, if any
  if (!st.ok()) return st;

  // Every other file (HF weights, config, tokenizer) is checksummed from the page cache.
  for (fs::recursive_directory_iterator it(staging, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    const std::string rel = fs::relative(it->path(), staging).generic_string();
    if (records.count(rel)) continue;
    Result<FileRecord> rec = checksum_file(it->path().string());
    if (!rec.ok()) return rec.error();
    records[rel] = rec.value();
  }
  if (ec) return Error{staging + ": cannot list: " + ec.message()};

  json state = {{"format", kFormat},      {"version", kVersion},
                {"step", job.step},       {"config_hash", job.config_hash},
                {"trainer", job.trainer}, {"stages", json::array()},
                {"files", json::object()}};
  for (const pipeline::Stage& s : plan.stages) state["stages"].push_back(s.name());
  uint64_t bytes = 0;
  for (const auto& [rel, rec] : records) {
    state["files"][rel] = {{"bytes", rec.bytes}, {"crc32c", hex32(rec.crc)}};
    bytes += rec.bytes;
  }
  // Through text and back, so the self-checksum covers exactly what a reader will parse (invalid
  // UTF-8 from the caller's json is replaced, not thrown).
  state = json::parse(state.dump(-1, ' ', false, json::error_handler_t::replace));
  state[kSelfCrcKey] = self_crc_of(state);
  const std::string text = state.dump(2) + "\n";
  st = write_file_atomic(staging + "/" + kStateJson, text);
  if (!st.ok()) return st;
  bytes += text.size();
  st = staged.value().commit();
  if (!st.ok()) return st;
  if (job.opts.keep_last_n > 0) {
    st = delete_older_checkpoints(job.output_dir, job.step, job.opts.keep_last_n);
    if (!st.ok()) return st;
  }
  if (stats) {
    stats->bytes = bytes;
    stats->seconds = seconds_since(t0);
  }
  return Ok{};
}

Status run_save_guarded(const SaveJob& job, ParamStore& store, CheckpointStats* stats) {
  try {
    return run_save(job, store, stats);
  } catch (const std::exception& e) {
    return Error{checkpoint_dir(job.output_dir, job.step) + ": save failed: " + e.what()};
  }
}

// state.json of `dir`, checked against every file it lists (sizes always, CRCs when `crc_files`).
Result<json> read_verified_state(const std::string& dir, bool crc_files) {
  const std::string state_path = dir + "/" + kStateJson;
  std::error_code ec;
  if (!fs::exists(state_path, ec)) {
    return Error{dir + ": " + kStateJson + " is missing (an incomplete save, or not a checkpoint)"};
  }
  Result<json> parsed = read_json_file(state_path, "the training state");
  if (!parsed.ok()) return parsed.error();
  const json& state = parsed.value();
  auto bad = [&](const std::string& what) { return Error{state_path + ": " + what}; };
  if (!state.is_object() || state.value("format", "") != kFormat) {
    return bad(std::string("not a ramstream training state (\"format\" is not \"") + kFormat +
               "\")");
  }
  if (!state.contains("version") || !state["version"].is_number_integer() ||
      state["version"].get<int64_t>() != kVersion) {
    return bad("unsupported \"version\" (this build reads " + std::to_string(kVersion) + ")");
  }
  if (!state.contains(kSelfCrcKey) || !state[kSelfCrcKey].is_string()) {
    return bad(std::string("no \"") + kSelfCrcKey + "\"");
  }
  const std::string recorded_self = state[kSelfCrcKey].get<std::string>();
  const std::string actual_self = self_crc_of(state);
  if (recorded_self != actual_self) {
    return bad("content does not match its checksum (CRC-32C " + actual_self + ", recorded " +
               recorded_self + "): corrupt");
  }
  if (!state.contains("step") || !state["step"].is_number_integer()) {
    return bad("\"step\" missing or not an integer");
  }
  if (!state.contains("stages") || !state["stages"].is_array() || state["stages"].empty()) {
    return bad("\"stages\" missing or empty");
  }
  if (!state.contains("files") || !state["files"].is_object()) return bad("\"files\" missing");
  const json& files = state["files"];
  std::vector<std::string> required = {"config.json"};
  for (size_t s = 0; s < state["stages"].size(); ++s) {
    required.push_back(stage_file(static_cast<int64_t>(s)));
  }
  for (const std::string& r : required) {
    if (!files.contains(r)) return bad("does not list " + r);
  }
  for (const auto& [rel, rec] : files.items()) {
    if (!safe_relative_path(rel)) return bad("lists a path outside the folder: '" + rel + "'");
    if (!rec.is_object() || !rec.contains("bytes") || !rec["bytes"].is_number_unsigned() ||
        !rec.contains("crc32c") || !rec["crc32c"].is_string()) {
      return bad("entry '" + rel + "' needs \"bytes\" and \"crc32c\"");
    }
    const std::string path = dir + "/" + rel;
    if (!fs::is_regular_file(path, ec)) {
      return Error{path + ": missing (listed in " + kStateJson + ")"};
    }
    const uint64_t want_bytes = rec["bytes"].get<uint64_t>();
    const uint64_t size = fs::file_size(path, ec);
    if (ec) return Error{path + ": cannot stat: " + ec.message()};
    if (size != want_bytes) {
      return Error{path + ": " + std::to_string(size) + " bytes, " + kStateJson + " records " +
                   std::to_string(want_bytes) + " (truncated or changed)"};
    }
    if (!crc_files) continue;
    Result<FileRecord> actual = checksum_file(path);
    if (!actual.ok()) return actual.error();
    const std::string want_crc = rec["crc32c"].get<std::string>();
    if (hex32(actual.value().crc) != want_crc || actual.value().bytes != want_bytes) {
      return Error{path + ": CRC-32C " + hex32(actual.value().crc) + " differs from " + want_crc +
                   " recorded in " + kStateJson + " (corrupt)"};
    }
  }
  return parsed;
}

// The first key whose value differs between two model configs ("" when equal).
std::string first_difference(const json& a, const json& b) {
  for (const auto& [k, v] : a.items()) {
    if (!b.contains(k)) return k + " (missing in the store's config)";
    if (b[k] != v) return k + ": checkpoint " + v.dump() + ", store " + b[k].dump();
  }
  for (const auto& [k, v] : b.items()) {
    if (!a.contains(k)) return k + ": missing in the checkpoint, store " + v.dump();
  }
  return "";
}

}  // namespace

std::string checkpoint_dir(const std::string& output_dir, int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%06lld", static_cast<long long>(step));
  return (fs::path(output_dir) / buf).string();
}

Status save_checkpoint(const std::string& output_dir, int64_t step, ParamStore& store,
                       const nlohmann::json& trainer, const std::string& config_hash,
                       const CheckpointOptions& opts, CheckpointStats* stats) {
  SaveJob job{output_dir, step, trainer, config_hash, opts, opts.stage_order, nullptr};
  if (job.order.empty()) {
    for (int64_t s = 0; s < store.plan().num_stages(); ++s) job.order.push_back(s);
  }
  CheckpointStats local;
  Status st = run_save_guarded(job, store, &local);
  if (stats) *stats = local;
  return st;
}

struct AsyncCheckpointWriter::State {
  State(pipeline::Engine& e, ParamStore& s) : engine(e), store(s) {}
  pipeline::Engine& engine;
  ParamStore& store;
  std::thread thread;
  std::shared_ptr<StageGate> gate;
  std::atomic<bool> running{false};
  Status result = Ok{};           // written by the thread before `running` drops
  CheckpointStats pending_stats;  // likewise
  CheckpointStats stats;
  std::string earlier_error;  // of a save that start() had to wait for
};

AsyncCheckpointWriter::AsyncCheckpointWriter(pipeline::Engine& engine, ParamStore& store)
    : state_(std::make_unique<State>(engine, store)) {}

AsyncCheckpointWriter::~AsyncCheckpointWriter() {
  if (state_->thread.joinable()) {
    Status ignored = wait();
    (void)ignored;
  }
}

bool AsyncCheckpointWriter::busy() const {
  return state_->running.load();
}

CheckpointStats AsyncCheckpointWriter::last_stats() const {
  return state_->stats;
}

void AsyncCheckpointWriter::start(const std::string& output_dir, int64_t step,
                                  nlohmann::json trainer, std::string config_hash,
                                  CheckpointOptions opts) {
  State& s = *state_;
  if (s.thread.joinable()) {
    Status previous = wait();
    if (!previous.ok()) s.earlier_error = previous.error().message;
  }
  // The state of step `step` must be complete in the store before anything is read.
  s.engine.synchronize();
  auto job = std::make_shared<SaveJob>();
  job->output_dir = output_dir;
  job->step = step;
  job->trainer = std::move(trainer);
  job->config_hash = std::move(config_hash);
  job->opts = std::move(opts);
  job->order = job->opts.stage_order.empty() ? s.engine.update_order() : job->opts.stage_order;
  s.gate = std::make_shared<StageGate>(s.store.plan().num_stages());
  job->gate = s.gate.get();
  // The gate holds its own reference: it stays valid even if the engine outlives this writer.
  std::shared_ptr<StageGate> gate = s.gate;
  s.engine.set_update_gate([gate](int64_t stage) { gate->wait(stage); });
  s.result = Ok{};
  s.pending_stats = {};
  s.running = true;
  try {
    s.thread = std::thread([&s, job, gate] {
      Status st = run_save_guarded(*job, s.store, &s.pending_stats);
      gate->release_all();  // success or not: training must go on
      s.result = std::move(st);
      s.running = false;
    });
  } catch (const std::exception& e) {  // no thread: nothing will release the gate but us
    gate->release_all();
    s.result =
        Error{checkpoint_dir(output_dir, step) + ": cannot start the writer thread: " + e.what()};
    s.running = false;
  }
}

Status AsyncCheckpointWriter::wait() {
  State& s = *state_;
  if (!s.gate) return Ok{};  // nothing started since the last wait()
  if (s.thread.joinable()) s.thread.join();
  // Every stage is released now, but an optimizer task may still be inside the gate function:
  // drain the engine before replacing it.
  s.engine.synchronize();
  s.engine.set_update_gate(nullptr);
  s.pending_stats.gate_wait_seconds = s.gate->waited_seconds();
  s.gate.reset();
  s.stats = s.pending_stats;
  Status st = std::move(s.result);
  s.result = Ok{};
  if (!s.earlier_error.empty()) {
    std::string msg = "an earlier save failed: " + s.earlier_error;
    if (!st.ok()) msg = st.error().message + "; " + msg;
    s.earlier_error.clear();
    return Error{msg};
  }
  return st;
}

Result<std::vector<CheckpointRef>> list_checkpoints(const std::string& output_dir) {
  std::vector<CheckpointRef> refs;
  std::error_code ec;
  if (!fs::exists(output_dir, ec)) return refs;
  if (!fs::is_directory(output_dir, ec)) return Error{output_dir + ": not a folder"};
  for (fs::directory_iterator it(output_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    // step_<digits> exactly: staging (.tmp-<pid>) and swapped-out (.old-<pid>) folders are not.
    if (name.size() <= 5 || name.compare(0, 5, "step_") != 0 || name.size() > 5 + 18) continue;
    if (!std::all_of(name.begin() + 5, name.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      continue;
    }
    if (!it->is_directory(ec)) continue;
    refs.push_back({it->path().string(), std::stoll(name.substr(5))});
  }
  if (ec) return Error{output_dir + ": cannot list: " + ec.message()};
  std::sort(refs.begin(), refs.end(), [](const CheckpointRef& a, const CheckpointRef& b) {
    return a.step != b.step ? a.step > b.step : a.path > b.path;
  });
  return refs;
}

Status verify_checkpoint(const std::string& path) {
  Result<json> state = read_verified_state(path, /*crc_files=*/true);
  if (!state.ok()) return state.error();
  return Ok{};
}

Result<CheckpointRef> find_latest_valid_checkpoint(const std::string& output_dir,
                                                   std::vector<std::string>* problems) {
  Result<std::vector<CheckpointRef>> all = list_checkpoints(output_dir);
  if (!all.ok()) return all.error();
  std::string skipped;
  for (const CheckpointRef& ref : all.value()) {
    Status st = verify_checkpoint(ref.path);
    if (st.ok()) return ref;
    if (problems) problems->push_back(st.error().message);
    skipped += "\n  " + st.error().message;
  }
  if (all.value().empty()) return Error{output_dir + ": no checkpoint (no step_* folder)"};
  return Error{output_dir + ": no valid checkpoint among " + std::to_string(all.value().size()) +
               ":" + skipped};
}

Result<TrainStateMeta> load_checkpoint(const std::string& path, ParamStore& store) {
  return load_checkpoint(path, store, LoadCheckpointOptions{});
}

Result<TrainStateMeta> load_checkpoint(const std::string& path, ParamStore& store,
                                       const LoadCheckpointOptions& opts) {
  Result<json> verified = read_verified_state(path, opts.verify_checksums);
  if (!verified.ok()) return verified.error();
  const json& state = verified.value();
  const StagePlan& plan = store.plan();
  const model::ModelConfig& cfg = store.config();
  const std::string state_path = path + "/" + kStateJson;

  // The model: config.json against the store's config.
  const std::string config_path = path + "/config.json";
  Result<model::ModelConfig> saved_cfg = model::load_model_config(config_path);
  if (!saved_cfg.ok()) return saved_cfg.error();
  const std::string diff = first_difference(model::model_config_to_json(saved_cfg.value()),
                                            model::model_config_to_json(cfg));
  if (!diff.empty()) {
    return Error{config_path +
                 ": the checkpoint's model differs from the one being trained: " + diff};
  }
  if (static_cast<int64_t>(state["stages"].size()) != plan.num_stages()) {
    return Error{state_path + ": " + std::to_string(state["stages"].size()) +
                 " stages, the model has " + std::to_string(plan.num_stages())};
  }
  TrainStateMeta meta;
  meta.step = state["step"].get<int64_t>();
  if (state.contains("config_hash") && state["config_hash"].is_string()) {
    meta.config_hash = state["config_hash"].get<std::string>();
  }
  if (state.contains("trainer")) meta.trainer = state["trainer"];
  if (!opts.expected_config_hash.empty() && meta.config_hash != opts.expected_config_hash) {
    return Error{state_path + ": saved with config hash '" + meta.config_hash +
                 "', this run has '" + opts.expected_config_hash + "'"};
  }

  Result<std::vector<std::vector<std::string>>> by_stage = hf_names_by_stage(cfg, plan);
  if (!by_stage.ok()) return Error{path + ": " + by_stage.error().message};
  StoreViews views = store_views(store);

  // Everything checked before the store is touched.
  std::vector<SafetensorsFile> files;
  for (int64_t s = 0; s < plan.num_stages(); ++s) {
    const std::string file = path + "/" + stage_file(s);
    Result<SafetensorsFile> f = SafetensorsFile::open(file);
    if (!f.ok()) return f.error();
    const auto& names = by_stage.value()[static_cast<size_t>(s)];
    if (f.value().names().size() != 3 * names.size()) {
      return Error{file + ": " + std::to_string(f.value().names().size()) + " tensors, stage '" +
                   plan.stages[static_cast<size_t>(s)].name() + "' has " +
                   std::to_string(3 * names.size())};
    }
    for (const std::string& name : names) {
      for (int k = 0; k < 3; ++k) {
        const std::string key = kKinds[k] + name;
        Result<const SafetensorInfo*> info = f.value().info(key);
        if (!info.ok()) return Error{file + ": tensor '" + key + "' is missing"};
        Result<at::Tensor> view = model::hf_param_view(views.part[k], cfg, name);
        if (!view.ok()) return Error{file + ": " + view.error().message};
        if (info.value()->dtype != SafetensorsDtype::kF32 ||
            at::IntArrayRef(info.value()->shape) != view.value().sizes()) {
          std::ostringstream os;
          os << file << ": tensor '" << key << "' is "
             << safetensors_dtype_name(info.value()->dtype) << " "
             << at::IntArrayRef(info.value()->shape) << ", expected F32 " << view.value().sizes();
          return Error{os.str()};
        }
      }
    }
    files.push_back(std::move(f).value());
  }

  for (int64_t s = 0; s < plan.num_stages(); ++s) {
    // Padding between tensors is not saved; it is zero in a fresh store and stays zero.
    ParamStore::Region& r = store.region(s);
    r.master.zero_();
    r.m.zero_();
    r.v.zero_();
    const SafetensorsFile& f = files[static_cast<size_t>(s)];
    // Sharded (resharding on load: any number of ranks reads any checkpoint): the whole stage's
    // m and v are read, this rank's shard kept.
    at::Tensor full[3];
    model::ModelParams part[3] = {views.part[0], views.part[1], views.part[2]};
    for (int k = store.masters_sharded() ? 0 : 1; store.sharded() && k < 3; ++k) {
      full[k] = at::zeros({plan.stages[static_cast<size_t>(s)].numel}, at::kFloat);
      part[k] = stage_views(store, s, full[k]);
    }
    for (const std::string& name : by_stage.value()[static_cast<size_t>(s)]) {
      for (int k = 0; k < 3; ++k) {
        at::Tensor dst = model::hf_param_view(part[k], cfg, name).value();
        Status st = f.read_into(kKinds[k] + name, dst);
        if (!st.ok()) return Error{f.path() + ": " + st.error().message};
      }
    }
    if (store.sharded()) {
      r.m.copy_(full[1].narrow(0, r.shard.begin, r.shard.numel));
      r.v.copy_(full[2].narrow(0, r.shard.begin, r.shard.numel));
    }
    if (store.masters_sharded()) {
      store.load_stage_whole(s, full[0]);  // the master shard and the whole working copy
    } else {
      store.refresh_working_copy(s);
    }
  }
  return meta;
}

}  // namespace ramstream::checkpoint
