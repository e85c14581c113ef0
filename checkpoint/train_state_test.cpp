// Training-state checkpoints: CRC-32C, save/load round trips, corruption and fall-back, rotation,
// async saves equal to sync ones, and exact resume after SIGKILL (the child processes are this
// binary re-executed with --gtest_filter=TrainStateChild.Run and an environment variable, so they
// start with no threads of the parent's).
#include "checkpoint/train_state.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "autograd/model.h"
#include "autograd/test_util.h"
#include "checkpoint/hf_loader.h"
#include "checkpoint/safetensors.h"
#include "model/hf_names.h"
#include "pipeline/engine_testing.h"

extern char** environ;

namespace ramstream::checkpoint {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using pipeline::Engine;
using pipeline::EngineOptions;
using pipeline::ParamStore;

constexpr int64_t kB = 2, kT = 8;
constexpr const char* kChildEnv = "RAMSTREAM_TRAIN_STATE_CHILD";
constexpr int kChildFd = 100;  // the child's end of the pipe to the parent

// ---------------------------------------------------------------------------------------------
// CRC-32C

std::vector<uint8_t> bytes_of(const std::string& s) {
  return std::vector<uint8_t>(s.begin(), s.end());
}

TEST(Crc32cTest, KnownVectors) {
  // RFC 3720 (iSCSI) B.4 and the usual check value.
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xff), up(32), down(32);
  for (int i = 0; i < 32; ++i) {
    up[i] = static_cast<uint8_t>(i);
    down[i] = static_cast<uint8_t>(31 - i);
  }
  const std::vector<uint8_t> check = bytes_of("123456789");
  for (auto fn : {&crc32c, &crc32c_portable}) {
    EXPECT_EQ(fn(check.data(), check.size(), 0), 0xE3069283u);
    EXPECT_EQ(fn(zeros.data(), 32, 0), 0x8A9136AAu);
    EXPECT_EQ(fn(ones.data(), 32, 0), 0x62A8AB43u);
    EXPECT_EQ(fn(up.data(), 32, 0), 0x46DD794Eu);
    EXPECT_EQ(fn(down.data(), 32, 0), 0x113FDB5Cu);
    EXPECT_EQ(fn(check.data(), 0, 0), 0u);
    // Continuation: the CRC of a concatenation from the CRC of its first part.
    EXPECT_EQ(fn(check.data() + 4, 5, fn(check.data(), 4, 0)), 0xE3069283u);
  }
  std::printf("crc32c: hardware (SSE4.2) path %s\n", crc32c_hardware() ? "in use" : "absent");
}

TEST(Crc32cTest, HardwareAndTablePathsAgree) {
  // Sizes around the interleaved block sizes (3 x 8192, 3 x 256) and odd alignments.
  std::mt19937_64 rng(7);
  std::vector<uint8_t> buf(3 * 8192 * 3 + 1000);
  for (uint8_t& b : buf) b = static_cast<uint8_t>(rng());
  const size_t sizes[] = {0,   1,    7,     8,     9,     255,       256,       767,  768,
                          769, 4096, 24575, 24576, 24577, 3 * 24576, 70000 + 3, 74000};
  for (size_t size : sizes) {
    for (size_t offset : {0, 1, 3, 7}) {
      if (offset + size > buf.size()) continue;
      const uint32_t want = crc32c_portable(buf.data() + offset, size, 0x12345678u);
      EXPECT_EQ(crc32c(buf.data() + offset, size, 0x12345678u), want)
          << "size " << size << " offset " << offset;
      // Split anywhere: the same value.
      const size_t cut = size / 3;
      EXPECT_EQ(crc32c(buf.data() + offset + cut, size - cut,
                       crc32c(buf.data() + offset, cut, 0x12345678u)),
                want);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// A tiny model trained on deterministic synthetic batches: batch k depends only on k.

model::ModelConfig test_config(bool tied) {
  model::testing::TinyOptions o;
  o.tied = tied;
  o.layers = 3;
  return model::testing::tiny_config(o);
}

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

struct Batch {
  at::Tensor ids, targets;
};

Batch make_batch(const model::ModelConfig& cfg, int64_t k) {
  uint64_t s = 0x5eed0000ull + static_cast<uint64_t>(k);
  Batch b;
  b.ids = at::empty({kB, kT}, at::kLong);
  int64_t* p = b.ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < kB * kT; ++i) {
    p[i] = static_cast<int64_t>(splitmix64(s) % static_cast<uint64_t>(cfg.vocab_size));
  }
  b.targets = autograd::next_token_targets(b.ids);
  return b;
}

struct Variant {
  bool tied = false;
  bool clip = false;
  bool grad_ring = false;  // store without grad regions: backward waits for the optimizer
  bool faults = false;     // delay every queued task of the device and the optimizer queue
};

EngineOptions engine_options(const Variant& v) {
  EngineOptions o;
  o.adamw.lr = 1e-2f;
  o.max_grad_norm = v.clip ? 0.05 : 0.0;
  o.optimizer_queue = pipeline::CpuDeviceOptions::faults(v.faults, 11, 300);
  return o;
}

class Trainer {
 public:
  explicit Trainer(const Variant& v)
      : cfg_(test_config(v.tied)),
        dev_(pipeline::make_cpu_device(pipeline::CpuDeviceOptions::faults(v.faults, 5, 300))),
        store_(pipeline::plan_stages(cfg_), cfg_, {/*working_copy_bf16=*/false, !v.grad_ring}),
        engine_(*dev_, store_, engine_options(v), kB, kT) {
    store_.load(autograd::testing::random_params(cfg_, at::kFloat, 61));
  }
  // Trains on batch `k` (1-based: the k-th step of the run).
  double step(int64_t k) {
    const Batch b = make_batch(cfg_, k);
    return engine_.train_step({b.ids}, {b.targets}).loss();
  }
  ParamStore& store() { return store_; }
  Engine& engine() { return engine_; }
  const model::ModelConfig& config() const { return cfg_; }

 private:
  model::ModelConfig cfg_;
  std::unique_ptr<pipeline::Device> dev_;
  ParamStore store_;
  Engine engine_;
};

using pipeline::testing::same_bits;
using pipeline::testing::snapshot;
using Snapshot = pipeline::testing::StoreSnapshot;

void expect_same_state(const Snapshot& a, const Snapshot& b) {
  ASSERT_EQ(a.master.size(), b.master.size());
  for (size_t i = 0; i < a.master.size(); ++i) {
    EXPECT_TRUE(same_bits(a.master[i], b.master[i])) << "master of stage " << i;
    EXPECT_TRUE(same_bits(a.m[i], b.m[i])) << "m of stage " << i;
    EXPECT_TRUE(same_bits(a.v[i], b.v[i])) << "v of stage " << i;
  }
}

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = (fs::temp_directory_path() / ("ramstream_train_state_" + std::to_string(::getpid()) +
                                          "_" + std::to_string(counter++)))
                .string();
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// relative path -> content, for every file under `dir`.
std::map<std::string, std::string> tree(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) {
      out[fs::relative(e.path(), dir).generic_string()] = read_all(e.path().string());
    }
  }
  return out;
}

std::vector<std::string> listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

// A source model folder with non-weight files to copy.
void write_source_folder(const std::string& dir) {
  fs::create_directories(dir);
  std::ofstream(dir + "/tokenizer.json") << R"({"version": "1.0", "model": {"type": "BPE"}})";
  std::ofstream(dir + "/config.json") << R"({"bos_token_id": 1, "eos_token_id": 2})";
  std::ofstream(dir + "/model.safetensors") << "not copied";
}

// The engine stage an HF weight belongs to (embedding, blocks, head).
int64_t stage_of(const model::ModelConfig& cfg, const std::string& hf_name) {
  const model::HfParamRef ref = model::resolve_hf_name(cfg, hf_name).value_or_throw();
  switch (ref.row->target) {
    case model::HfTarget::kEmbedding:
      return 0;
    case model::HfTarget::kBlock:
      return 1 + ref.layer;
    default:
      return 1 + cfg.num_layers;
  }
}

void flip_byte(const std::string& path, uint64_t offset) {
  std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x10);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

// ---------------------------------------------------------------------------------------------
// Round trip

class RoundTripTest : public ::testing::TestWithParam<std::tuple<bool, at::ScalarType>> {};

TEST_P(RoundTripTest, SaveLoadIsBitwiseAndTheHfFolderLoads) {
  const auto [tied, dtype] = GetParam();
  TempDir tmp;
  const std::string src = tmp.path() + "/src", out = tmp.path() + "/out";
  write_source_folder(src);
  Variant v;
  v.tied = tied;
  Trainer t(v);
  for (int64_t k = 1; k <= 3; ++k) t.step(k);
  t.engine().synchronize();
  const Snapshot saved = snapshot(t.store());

  CheckpointOptions opts;
  opts.hf.dtype = dtype;
  opts.hf.copy_from_dir = src;
  const json trainer = {{"cursor", 3}, {"rng", {1, 2, 3}}, {"lr_schedule", {{"last", 0.5}}}};
  CheckpointStats stats;
  Status st = save_checkpoint(out, 3, t.store(), trainer, "hash-1", opts, &stats);
  ASSERT_TRUE(st.ok()) << st.error().message;
  const std::string dir = checkpoint_dir(out, 3);
  EXPECT_EQ(fs::path(dir).filename(), "step_000003");
  EXPECT_GT(stats.bytes, 0u);

  // state.json: the fields and one entry per file with its size.
  const json state = json::parse(read_all(dir + "/trainer_state/state.json"));
  EXPECT_EQ(state["format"], "ramstream.train_state");
  EXPECT_EQ(state["version"], 1);
  EXPECT_EQ(state["step"], 3);
  EXPECT_EQ(state["config_hash"], "hash-1");
  EXPECT_EQ(state["trainer"], trainer);
  EXPECT_EQ(state["stages"].size(), 5u);  // embedding, 3 blocks, head
  EXPECT_TRUE(state["state_crc32c"].is_string());
  std::vector<std::string> listed;
  uint64_t total = 0;
  for (const auto& [rel, rec] : state["files"].items()) {
    listed.push_back(rel);
    EXPECT_EQ(rec["bytes"].get<uint64_t>(), fs::file_size(dir + "/" + rel)) << rel;
    total += rec["bytes"].get<uint64_t>();
  }
  EXPECT_EQ(total + fs::file_size(dir + "/trainer_state/state.json"), stats.bytes);
  const std::vector<std::string> want_files = {"config.json",
                                               "generation_config.json",
                                               "model.safetensors",
                                               "tokenizer.json",
                                               "trainer_state/stage_000.safetensors",
                                               "trainer_state/stage_001.safetensors",
                                               "trainer_state/stage_002.safetensors",
                                               "trainer_state/stage_003.safetensors",
                                               "trainer_state/stage_004.safetensors"};
  EXPECT_EQ(listed, want_files);
  EXPECT_EQ(read_all(dir + "/tokenizer.json"), read_all(src + "/tokenizer.json"));
  ASSERT_TRUE(verify_checkpoint(dir).ok()) << verify_checkpoint(dir).error().message;

  // Into a fresh store (whose state differs): master, m and v bit for bit.
  Trainer fresh(v);
  Result<TrainStateMeta> meta = load_checkpoint(dir, fresh.store());
  ASSERT_TRUE(meta.ok()) << meta.error().message;
  EXPECT_EQ(meta.value().step, 3);
  EXPECT_EQ(meta.value().config_hash, "hash-1");
  EXPECT_EQ(meta.value().trainer, trainer);
  expect_same_state(snapshot(fresh.store()), saved);

  // The HF folder: what transformers would load, the masters in the chosen dtype.
  const model::ModelConfig cfg = model::load_model_config(dir + "/config.json").value_or_throw();
  model::ModelParams hf = model::allocate_model_params(cfg, at::kFloat);
  st = load_hf_weights(dir, cfg, hf);
  ASSERT_TRUE(st.ok()) << st.error().message;
  model::ModelParams want = model::clone_model_params(
      model::clone_model_params(t.store().master_params(), dtype), at::kFloat);
  model::testing::expect_equal_params(hf, want);
  if (tied) {
    Result<SafetensorsFile> f = SafetensorsFile::open(dir + "/model.safetensors");
    ASSERT_TRUE(f.ok());
    EXPECT_FALSE(f.value().contains("lm_head.weight"));
  }

  // Saving the same step again replaces the folder as a whole.
  st = save_checkpoint(out, 3, t.store(), {{"cursor", 3}}, "hash-1", opts);
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_TRUE(verify_checkpoint(dir).ok());
  EXPECT_EQ(listing(out), std::vector<std::string>{"step_000003"});
}

INSTANTIATE_TEST_SUITE_P(Dtypes, RoundTripTest,
                         ::testing::Values(std::make_tuple(false, at::kFloat),
                                           std::make_tuple(true, at::kBFloat16)));

TEST(TrainStateTest, HfWeightsInACallerChosenOrder) {
  TempDir tmp;
  const model::ModelConfig cfg = test_config(false);
  model::ModelParams p = autograd::testing::random_params(cfg, at::kFloat, 3);
  std::vector<std::string> order = model::hf_param_names(cfg);
  std::reverse(order.begin(), order.end());
  HfSaveOptions opts;
  opts.dtype = at::kFloat;
  opts.tensor_order = order;
  std::vector<std::string> written;
  opts.after_tensor = [&](const std::string& name) -> Status {
    written.push_back(name);
    return Ok{};
  };
  ASSERT_TRUE(save_hf_folder(tmp.path() + "/m", cfg, p, opts).ok());
  EXPECT_EQ(written, order);
  Result<SafetensorsFile> f = SafetensorsFile::open(tmp.path() + "/m/model.safetensors");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f.value().names(), order);  // data order
  model::ModelParams back = model::allocate_model_params(cfg, at::kFloat);
  ASSERT_TRUE(load_hf_weights(tmp.path() + "/m", cfg, back).ok());
  model::testing::expect_equal_params(back, p);

  // Not a permutation of the model's names: refused before anything is written.
  opts.tensor_order.pop_back();
  Status st = save_hf_folder(tmp.path() + "/n", cfg, p, opts);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("tensor_order"), std::string::npos) << st.error().message;
  EXPECT_FALSE(fs::exists(tmp.path() + "/n"));
}

TEST(TrainStateTest, LoadRefusesAnotherModelOrConfigHashAndLeavesTheStoreAlone) {
  TempDir tmp;
  Trainer t(Variant{});
  t.step(1);
  t.engine().synchronize();
  ASSERT_TRUE(save_checkpoint(tmp.path(), 1, t.store(), {}, "hash-a", {}).ok());
  const std::string dir = checkpoint_dir(tmp.path(), 1);

  // Another model: one more layer.
  model::testing::TinyOptions o;
  o.layers = 4;
  const model::ModelConfig other = model::testing::tiny_config(o);
  ParamStore store(pipeline::plan_stages(other), other, {});
  Result<TrainStateMeta> r = load_checkpoint(dir, store);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find(dir + "/config.json"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("num_hidden_layers"), std::string::npos) << r.error().message;

  // The same model, another run configuration.
  Trainer fresh(Variant{});
  const Snapshot before = snapshot(fresh.store());
  LoadCheckpointOptions lo;
  lo.expected_config_hash = "hash-b";
  r = load_checkpoint(dir, fresh.store(), lo);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("state.json"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("hash-a"), std::string::npos) << r.error().message;
  expect_same_state(snapshot(fresh.store()), before);
  lo.expected_config_hash = "hash-a";
  EXPECT_TRUE(load_checkpoint(dir, fresh.store(), lo).ok());
}

// ---------------------------------------------------------------------------------------------
// Corruption, fall-back, rotation

struct Corruption {
  const char* name;
  const char* file;  // relative to the checkpoint folder
  void (*apply)(const std::string& path);
};

void PrintTo(const Corruption& c, std::ostream* os) {
  *os << c.name;
}

class CorruptionTest : public ::testing::TestWithParam<Corruption> {};

TEST_P(CorruptionTest, IsReportedByPathAndTheLatestValidCheckpointIsUsed) {
  const Corruption c = GetParam();
  TempDir tmp;
  Trainer t(Variant{});
  for (int64_t k = 1; k <= 2; ++k) {
    t.step(k);
    t.engine().synchronize();
    Status st = save_checkpoint(tmp.path(), k, t.store(), {{"cursor", k}}, "h", {});
    ASSERT_TRUE(st.ok()) << st.error().message;
  }
  const std::string dir2 = checkpoint_dir(tmp.path(), 2);
  ASSERT_TRUE(verify_checkpoint(dir2).ok());
  c.apply(dir2 + "/" + c.file);

  Status st = verify_checkpoint(dir2);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find(dir2), std::string::npos) << st.error().message;
  EXPECT_NE(st.error().message.find(c.file), std::string::npos) << st.error().message;
  std::printf("  %s: %s\n", c.name, st.error().message.c_str());

  std::vector<std::string> problems;
  Result<CheckpointRef> latest = find_latest_valid_checkpoint(tmp.path(), &problems);
  ASSERT_TRUE(latest.ok()) << latest.error().message;
  EXPECT_EQ(latest.value().step, 1);
  EXPECT_EQ(latest.value().path, checkpoint_dir(tmp.path(), 1));
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find(c.file), std::string::npos) << problems[0];

  Trainer fresh(Variant{});
  EXPECT_FALSE(load_checkpoint(dir2, fresh.store()).ok());
  Result<TrainStateMeta> meta = load_checkpoint(latest.value().path, fresh.store());
  ASSERT_TRUE(meta.ok()) << meta.error().message;
  EXPECT_EQ(meta.value().trainer["cursor"], 1);
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, CorruptionTest,
    ::testing::Values(
        Corruption{"FlippedByteInTrainerState", "trainer_state/stage_002.safetensors",
                   [](const std::string& p) { flip_byte(p, fs::file_size(p) - 5); }},
        Corruption{"FlippedByteInHfWeights", "model.safetensors",
                   [](const std::string& p) { flip_byte(p, fs::file_size(p) / 2); }},
        Corruption{"TruncatedWeights", "model.safetensors",
                   [](const std::string& p) { fs::resize_file(p, fs::file_size(p) - 4); }},
        Corruption{"TruncatedTrainerState", "trainer_state/stage_000.safetensors",
                   [](const std::string& p) { fs::resize_file(p, 100); }},
        Corruption{"DeletedConfig", "config.json", [](const std::string& p) { fs::remove(p); }},
        Corruption{"DeletedStateJson", "trainer_state/state.json",
                   [](const std::string& p) { fs::remove(p); }},
        Corruption{"EditedStateJson", "trainer_state/state.json",
                   [](const std::string& p) {
                     std::string s = read_all(p);
                     const size_t at = s.find("\"cursor\": 2");
                     ASSERT_NE(at, std::string::npos);
                     s[at + 10] = '7';  // still valid JSON
                     std::ofstream(p, std::ios::binary) << s;
                   }},
        Corruption{"TruncatedStateJson", "trainer_state/state.json",
                   [](const std::string& p) { fs::resize_file(p, fs::file_size(p) / 2); }}),
    [](const ::testing::TestParamInfo<Corruption>& i) { return std::string(i.param.name); });

TEST(TrainStateTest, NoValidCheckpointIsAnErrorListingEachProblem) {
  TempDir tmp;
  std::vector<std::string> problems;
  Result<CheckpointRef> none = find_latest_valid_checkpoint(tmp.path() + "/absent", &problems);
  EXPECT_FALSE(none.ok());
  fs::create_directories(tmp.path() + "/step_000004/trainer_state");
  none = find_latest_valid_checkpoint(tmp.path(), &problems);
  ASSERT_FALSE(none.ok());
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(none.error().message.find("step_000004"), std::string::npos) << none.error().message;
  EXPECT_NE(problems[0].find("state.json is missing"), std::string::npos) << problems[0];
}

TEST(TrainStateTest, ListingIgnoresTempFoldersAndOtherNames) {
  TempDir tmp;
  for (const char* d : {"step_000010", "step_000002", "step_1234567", "step_000011.tmp-99",
                        "step_000012.old-99", "step_", "step_12a", "logs"}) {
    fs::create_directories(tmp.path() + "/" + d);
  }
  std::ofstream(tmp.path() + "/step_000013") << "a file";
  Result<std::vector<CheckpointRef>> refs = list_checkpoints(tmp.path());
  ASSERT_TRUE(refs.ok());
  std::vector<int64_t> steps;
  for (const CheckpointRef& r : refs.value()) steps.push_back(r.step);
  EXPECT_EQ(steps, (std::vector<int64_t>{1234567, 10, 2}));
  EXPECT_EQ(checkpoint_dir("out", 1234567), "out/step_1234567");
}

TEST(TrainStateTest, KeepLastNDeletesOnlyOlderCheckpointsAfterTheCommit) {
  TempDir tmp;
  Trainer t(Variant{});
  CheckpointOptions opts;
  opts.keep_last_n = 2;
  fs::create_directories(tmp.path() + "/step_000099");  // a later step (an abandoned run): kept
  for (int64_t k = 1; k <= 4; ++k) {
    t.step(k);
    t.engine().synchronize();
    ASSERT_TRUE(save_checkpoint(tmp.path(), k, t.store(), {}, "", opts).ok());
  }
  EXPECT_EQ(listing(tmp.path()),
            (std::vector<std::string>{"step_000003", "step_000004", "step_000099"}));
  // A failed save deletes nothing.
  opts.hf.after_tensor = [](const std::string&) -> Status { return Error{"disk full"}; };
  EXPECT_FALSE(save_checkpoint(tmp.path(), 5, t.store(), {}, "", opts).ok());
  EXPECT_EQ(listing(tmp.path()),
            (std::vector<std::string>{"step_000003", "step_000004", "step_000099"}));
  EXPECT_TRUE(verify_checkpoint(checkpoint_dir(tmp.path(), 4)).ok());
}

// ---------------------------------------------------------------------------------------------
// Async saves

void PrintTo(const Variant& v, std::ostream* os) {
  *os << (v.tied ? "tied" : "untied") << (v.clip ? "_clip" : "") << (v.grad_ring ? "_ring" : "")
      << (v.faults ? "_faults" : "");
}

class AsyncSaveTest : public ::testing::TestWithParam<Variant> {};

// The files of a save taken while the next steps run equal those of a sync save, and training
// is unchanged by it. The save is slowed (each tensor sleeps; without a grad ring, the first
// tensor also waits until train_step has returned), so without the gate the next step's updates
// would land in the files.
TEST_P(AsyncSaveTest, EqualsSyncSaveAndLeavesTrainingUnchanged) {
  const Variant v = GetParam();
  constexpr int64_t N = 3;
  TempDir tmp;
  const std::string dir_sync = tmp.path() + "/sync", dir_async = tmp.path() + "/async";

  Trainer plain(v);
  std::vector<double> plain_losses;
  for (int64_t k = 1; k <= N + 2; ++k) plain_losses.push_back(plain.step(k));
  plain.engine().synchronize();

  Trainer sync(v);
  std::vector<double> sync_losses;
  for (int64_t k = 1; k <= N + 2; ++k) {
    sync_losses.push_back(sync.step(k));
    if (k == N) {
      sync.engine().synchronize();
      // The same write order as the async save (it fixes the tensor order of model.safetensors).
      CheckpointOptions o;
      o.stage_order = sync.engine().update_order();
      ASSERT_TRUE(save_checkpoint(dir_sync, N, sync.store(), {{"cursor", N}}, "h", o).ok());
    }
  }
  sync.engine().synchronize();

  Trainer async(v);
  std::vector<double> async_losses;
  for (int64_t k = 1; k <= N; ++k) async_losses.push_back(async.step(k));
  AsyncCheckpointWriter writer(async.engine(), async.store());
  std::mutex mu;
  std::condition_variable cv;
  bool step_returned = false;
  std::vector<std::string> written;
  CheckpointOptions opts;
  opts.hf.after_tensor = [&](const std::string& name) -> Status {
    std::unique_lock<std::mutex> lock(mu);
    if (written.empty() && !v.grad_ring) {
      cv.wait_for(lock, std::chrono::seconds(30), [&] { return step_returned; });
    }
    written.push_back(name);
    lock.unlock();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return Ok{};
  };
  writer.start(dir_async, N, {{"cursor", N}}, "h", opts);
  EXPECT_TRUE(writer.busy());
  async_losses.push_back(async.step(N + 1));
  if (!v.grad_ring) {
    // Step N+1 is scheduled while the save has not finished its first tensor.
    EXPECT_TRUE(writer.busy());
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_TRUE(written.empty());
    step_returned = true;
    cv.notify_all();
  }
  async_losses.push_back(async.step(N + 2));
  async.engine().synchronize();
  Status st = writer.wait();
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_FALSE(writer.busy());
  EXPECT_GT(writer.last_stats().bytes, 0u);

  // HF weights are written in the engine's update order, stage by stage.
  const std::vector<int64_t> order = async.engine().update_order();
  const model::ModelConfig& cfg = async.config();
  EXPECT_EQ(written.size(), model::hf_param_names(cfg).size());
  std::vector<int64_t> stages_written;
  for (const std::string& name : written) {
    const int64_t s = stage_of(cfg, name);
    if (stages_written.empty() || stages_written.back() != s) stages_written.push_back(s);
  }
  EXPECT_EQ(stages_written, order);
  EXPECT_EQ(written.front(), v.clip ? "model.embed_tokens.weight" : "model.norm.weight");

  const auto a = tree(checkpoint_dir(dir_sync, N));
  const auto b = tree(checkpoint_dir(dir_async, N));
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [rel, content] : a) {
    ASSERT_TRUE(b.count(rel)) << rel;
    EXPECT_TRUE(content == b.at(rel)) << rel << " differs between the sync and the async save";
  }
  EXPECT_EQ(sync_losses, plain_losses);
  EXPECT_EQ(async_losses, plain_losses);
  expect_same_state(snapshot(async.store()), snapshot(plain.store()));
  expect_same_state(snapshot(sync.store()), snapshot(plain.store()));
}

INSTANTIATE_TEST_SUITE_P(Variants, AsyncSaveTest,
                         ::testing::Values(Variant{false, false, false},
                                           Variant{true, false, false}, Variant{false, true, false},
                                           Variant{true, true, false}, Variant{true, false, true},
                                           Variant{false, false, false, true},
                                           Variant{true, true, false, true}),
                         [](const ::testing::TestParamInfo<Variant>& i) {
                           std::ostringstream os;
                           PrintTo(i.param, &os);
                           return os.str();
                         });

TEST(AsyncSaveTest, AFailedSaveReleasesTrainingAndReportsTheError) {
  TempDir tmp;
  Trainer plain(Variant{});
  for (int64_t k = 1; k <= 4; ++k) plain.step(k);
  plain.engine().synchronize();

  Trainer t(Variant{});
  for (int64_t k = 1; k <= 2; ++k) t.step(k);
  AsyncCheckpointWriter writer(t.engine(), t.store());
  CheckpointOptions opts;
  int seen = 0;
  opts.hf.after_tensor = [&](const std::string&) -> Status {
    return ++seen == 3 ? Status(Error{"simulated write failure"}) : Status(Ok{});
  };
  writer.start(tmp.path(), 2, {}, "", opts);
  t.step(3);
  t.step(4);
  t.engine().synchronize();
  Status st = writer.wait();
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("simulated write failure"), std::string::npos);
  EXPECT_TRUE(listing(tmp.path()).empty());  // no checkpoint, no staging folder left
  expect_same_state(snapshot(t.store()), snapshot(plain.store()));
  // The writer is usable again, and wait() without a save is Ok.
  EXPECT_TRUE(writer.wait().ok());
  writer.start(tmp.path(), 4, {}, "", {});
  ASSERT_TRUE(writer.wait().ok());
  EXPECT_TRUE(verify_checkpoint(checkpoint_dir(tmp.path(), 4)).ok());
}

// ---------------------------------------------------------------------------------------------
// SIGKILL: the child is this binary, re-executed (no threads inherited), running
// TrainStateChild.Run in the mode named by kChildEnv. It reports progress through kChildFd.

constexpr int64_t kResumeN = 4;

struct Child {
  pid_t pid = -1;
  int fd = -1;  // read end
};

Child spawn_child(const std::string& mode, const std::string& dir) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "RAMSTREAM_TRAIN_STATE_", 22) != 0) env.push_back(*e);
  }
  env.push_back(std::string(kChildEnv) + "=" + mode);
  env.push_back("RAMSTREAM_TRAIN_STATE_DIR=" + dir);
  std::vector<char*> envp;
  for (std::string& s : env) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string exe = "/proc/self/exe", filter = "--gtest_filter=TrainStateChild.Run";
  char* argv[] = {exe.data(), filter.data(), nullptr};
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return {};
  const pid_t pid = ::fork();
  if (pid == 0) {
    // Only async-signal-safe calls until exec.
    ::dup2(fds[1], kChildFd);  // the duplicate is not close-on-exec
    ::execve(exe.c_str(), argv, envp.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  return {pid, fds[0]};
}

// The next byte from the child, or 0 on EOF / timeout.
char read_from_child(const Child& c, int timeout_ms) {
  pollfd p{c.fd, POLLIN, 0};
  if (::poll(&p, 1, timeout_ms) <= 0) return 0;
  char byte = 0;
  return ::read(c.fd, &byte, 1) == 1 ? byte : 0;
}

int kill_child(Child& c) {
  ::kill(c.pid, SIGKILL);
  int status = 0;
  ::waitpid(c.pid, &status, 0);
  ::close(c.fd);
  return status;
}

int random_delay_ms(int max_ms) {
  std::random_device rd;
  return static_cast<int>(rd() % static_cast<unsigned>(max_ms + 1));
}

void tell_parent(char byte) {
  if (::write(kChildFd, &byte, 1) != 1) ::_exit(5);
}

// The child side of the kill tests; skipped in a normal run.
TEST(TrainStateChild, Run) {
  const char* mode = std::getenv(kChildEnv);
  if (mode == nullptr) GTEST_SKIP() << "runs only as the child of the SIGKILL tests";
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the parent
  const std::string dir = std::getenv("RAMSTREAM_TRAIN_STATE_DIR");
  const int64_t N = kResumeN;
  Trainer t(Variant{});
  auto fail = [](const Status& st) {
    std::fprintf(stderr, "child: %s\n", st.error().message.c_str());
    tell_parent('E');
    ::_exit(3);
  };
  if (std::string(mode) == "train") {
    // Steps 1..N, an async checkpoint of step N taken while step N+1 runs, then on and on.
    for (int64_t k = 1; k <= N; ++k) {
      t.step(k);
      if (k == N / 2) {  // an earlier checkpoint too
        t.engine().synchronize();
        Status st = save_checkpoint(dir, k, t.store(), {{"cursor", k}}, "h", {});
        if (!st.ok()) fail(st);
      }
    }
    AsyncCheckpointWriter writer(t.engine(), t.store());
    writer.start(dir, N, {{"cursor", N}}, "h", {});
    t.step(N + 1);
    t.engine().synchronize();
    Status st = writer.wait();
    if (!st.ok()) fail(st);
    tell_parent('C');
    for (int64_t k = N + 2; k < 100000; ++k) t.step(k);
  } else if (std::string(mode) == "kill_mid_save") {
    // A committed checkpoint at N, then a slow async save of step 2N, killed part way.
    for (int64_t k = 1; k <= 2 * N; ++k) {
      t.step(k);
      if (k == N) {
        t.engine().synchronize();
        Status st = save_checkpoint(dir, k, t.store(), {{"cursor", k}}, "h", {});
        if (!st.ok()) fail(st);
      }
    }
    AsyncCheckpointWriter writer(t.engine(), t.store());
    CheckpointOptions opts;
    int tensors = 0;
    opts.hf.after_tensor = [&](const std::string&) -> Status {
      if (++tensors == 4) tell_parent('M');
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      return Ok{};
    };
    writer.start(dir, 2 * N, {{"cursor", 2 * N}}, "h", opts);
    t.step(2 * N + 1);
    t.engine().synchronize();
    Status st = writer.wait();
    (void)st;
    tell_parent('D');  // the parent should have killed us before this
    std::this_thread::sleep_for(std::chrono::seconds(60));
  }
  ::_exit(0);
}

TEST(TrainStateKillTest, ResumeAfterSigkillIsExact) {
  TempDir tmp;
  const int64_t N = kResumeN;
  Child child = spawn_child("train", tmp.path());
  ASSERT_GT(child.pid, 0);
  const char got = read_from_child(child, 300000);
  const int delay = random_delay_ms(50);
  std::this_thread::sleep_for(std::chrono::milliseconds(delay));
  const int status = kill_child(child);
  ASSERT_EQ(got, 'C') << "the child did not commit its checkpoint";
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;
  std::printf("  killed the child %d ms after its checkpoint of step %lld was committed\n", delay,
              static_cast<long long>(N));

  std::vector<std::string> problems;
  Result<CheckpointRef> latest = find_latest_valid_checkpoint(tmp.path(), &problems);
  ASSERT_TRUE(latest.ok()) << latest.error().message;
  EXPECT_EQ(latest.value().step, N);
  EXPECT_TRUE(problems.empty());

  Trainer resumed(Variant{});
  LoadCheckpointOptions lo;
  lo.verify_checksums = false;  // find_latest_valid_checkpoint just did
  Result<TrainStateMeta> meta = load_checkpoint(latest.value().path, resumed.store(), lo);
  ASSERT_TRUE(meta.ok()) << meta.error().message;
  resumed.engine().set_step(meta.value().step);
  const int64_t cursor = meta.value().trainer.at("cursor").get<int64_t>();
  EXPECT_EQ(cursor, N);
  std::vector<double> resumed_losses;
  for (int64_t k = cursor + 1; k <= 2 * N; ++k) resumed_losses.push_back(resumed.step(k));
  resumed.engine().synchronize();

  Trainer straight(Variant{});
  std::vector<double> straight_losses;
  for (int64_t k = 1; k <= 2 * N; ++k) {
    const double loss = straight.step(k);
    if (k > N) straight_losses.push_back(loss);
  }
  straight.engine().synchronize();
  EXPECT_EQ(resumed_losses, straight_losses);
  expect_same_state(snapshot(resumed.store()), snapshot(straight.store()));
}

TEST(TrainStateKillTest, KillDuringASaveLeavesThePreviousCheckpointValid) {
  TempDir tmp;
  const int64_t N = kResumeN;
  Child child = spawn_child("kill_mid_save", tmp.path());
  ASSERT_GT(child.pid, 0);
  const char got = read_from_child(child, 300000);
  const int delay = random_delay_ms(20);
  std::this_thread::sleep_for(std::chrono::milliseconds(delay));
  const pid_t pid = child.pid;
  const int status = kill_child(child);
  ASSERT_EQ(got, 'M') << "the child did not reach the middle of its save";
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;

  // The staging folder of the interrupted save is still there, and ignored.
  const std::string stale = checkpoint_dir(tmp.path(), 2 * N) + ".tmp-" + std::to_string(pid);
  EXPECT_TRUE(fs::is_directory(stale)) << stale;
  EXPECT_FALSE(fs::exists(checkpoint_dir(tmp.path(), 2 * N)));
  std::vector<std::string> problems;
  Result<CheckpointRef> latest = find_latest_valid_checkpoint(tmp.path(), &problems);
  ASSERT_TRUE(latest.ok()) << latest.error().message;
  EXPECT_EQ(latest.value().step, N);
  EXPECT_TRUE(problems.empty());
  Trainer resumed(Variant{});
  Result<TrainStateMeta> meta = load_checkpoint(latest.value().path, resumed.store());
  ASSERT_TRUE(meta.ok()) << meta.error().message;
  EXPECT_EQ(meta.value().trainer.at("cursor"), N);
}

// The trainer loads a model straight into the store's masters (no second copy of the model):
// the result must equal copying a separately loaded model in with ParamStore::load.
TEST(LoadIntoStore, HfWeightsStraightIntoMastersEqualStoreLoad) {
  const std::string dir = "tests/fixtures/hf/qwen2_bias";
  const model::ModelConfig cfg = model::load_model_config(dir + "/config.json").value_or_throw();
  const pipeline::StagePlan plan = pipeline::plan_stages(cfg);
  for (bool bf16_working : {false, true}) {
    pipeline::ParamStoreOptions so;
    so.working_copy_bf16 = bf16_working;
    pipeline::ParamStore direct(plan, cfg, so), copied(plan, cfg, so);
    model::ModelParams masters = direct.master_params();
    ASSERT_TRUE(load_hf_weights(dir, cfg, masters).ok());
    direct.refresh_working_copies();
    model::ModelParams separate = model::allocate_model_params(cfg, at::kFloat);
    ASSERT_TRUE(load_hf_weights(dir, cfg, separate).ok());
    copied.load(separate);
    for (int64_t s = 0; s < plan.num_stages(); ++s) {
      const pipeline::ParamStore::Region& a = direct.region(s);
      const pipeline::ParamStore::Region& b = copied.region(s);
      EXPECT_TRUE(a.master.equal(b.master)) << "stage " << s;
      EXPECT_TRUE(a.m.equal(b.m) && a.v.equal(b.v)) << "stage " << s;
      if (bf16_working) {
        EXPECT_TRUE(a.working.equal(b.working)) << "stage " << s;
      }
    }
  }
}

}  // namespace
}  // namespace ramstream::checkpoint
