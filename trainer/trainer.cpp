#include "trainer/trainer.h"

#include <unistd.h>

#include <sys/stat.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>

#include <ATen/Parallel.h>
#include <tbb/task_arena.h>
#include <nlohmann/json.hpp>

#include "checkpoint/atomic_file.h"
#include "checkpoint/gguf.h"
#include "checkpoint/hf_loader.h"
#include "checkpoint/train_state.h"
#include "data/chat.h"
#include "dist/gloo_communicator.h"
#include "dist/nccl_communicator.h"
#include "inference/generator.h"
#include "inference/model_files.h"
#include "memory/arena.h"
#include "memory/host_binding.h"
#include "memory/topology.h"
#include "model/flops.h"
#include "model/params.h"
#include "pipeline/device.h"
#include "pipeline/gemm_probe.h"
#include "pipeline/param_store.h"
#include "pipeline/stages.h"
#include "planner/energy_meter.h"
#include "planner/planner.h"
#include "trainer/lr_schedule.h"
#include "trainer/progress.h"
#include "util/runtime_defaults.h"
#include "util/text.h"
#include "util/user_file.h"

namespace ramstream::trainer {

namespace {

std::atomic<int> g_stop_signals{0};
std::atomic<int> g_stop_signal{0};  // the first one

extern "C" void on_stop_signal(int sig) {
  int none = 0;
  g_stop_signal.compare_exchange_strong(none, sig);        // before the count, which readers poll
  if (g_stop_signals.fetch_add(1) >= 1) _exit(128 + sig);  // second signal: leave now
}

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

double host_rss_gib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) * 1024.0 / kGiB;
  }
  return 0;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string strip(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

std::string one_line(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  return s;
}

}  // namespace

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}
bool stop_requested() {
  return g_stop_signals.load() > 0;
}
int stop_signal() {
  return g_stop_signal.load();
}
void clear_stop_request() {
  g_stop_signals.store(0);
  g_stop_signal.store(0);
}

struct Trainer::State {
  Recipe recipe;
  FILE* log = stdout;
  model::ModelConfig cfg;
  std::unique_ptr<data::Tokenizer> tokenizer;
  data::ChatFormat chat;
  std::string tokenizer_dir;  // non-weight files copied into every saved model folder
  data::Dataset dataset;
  std::unique_ptr<data::DataLoader> loader;
  std::unique_ptr<pipeline::Device> device;
  std::unique_ptr<pipeline::ParamStore> store;
  std::unique_ptr<pipeline::Engine> engine;
  std::unique_ptr<checkpoint::AsyncCheckpointWriter> writer;
  bool cuda = false;
  // The compute dtype (model.compute resolved) and why, for the start-up table.
  pipeline::ComputeChoice compute;
  std::string config_hash;
  LrSchedule schedule;
  std::FILE* metrics = nullptr;
  ProgressClock wall;                 // since create() began
  bool tty = false;                   // progress as a bar rewritten in place, else as lines
  double progress_interval = 10;      // seconds between progress lines of a long evaluation
  std::vector<std::string> warnings;  // for the start-up table
  int64_t tokens_per_step = 0;
  // MFU = tokens/s x flops_per_token / peak_flops: model FLOPs (model/flops.h) over the measured
  // GEMM rate of the compute device (pipeline/gemm_probe.h); peak_flops is NaN when the probe
  // failed (gemm_error says why), so MFU reads as unknown rather than wrong.
  double flops_per_token = 0, peak_flops = 0;
  pipeline::GemmRate gemm_rate;
  std::string gemm_error;
  // Where the store, the optimizer threads and the launching thread go (memory/host_binding.h):
  // ParamStoreOptions::numa_node, EngineOptions::optimizer_cpus, and train() binds itself.
  memory::HostBinding binding;
  // Data parallel (dist/env.h): this process's place in the job, its communicator (nullptr for
  // one process), where ranks other than 0 send their log (nowhere), and the agreed stop: -1
  // until some rank was signalled, then that signal.
  dist::DistEnv dist;
  std::unique_ptr<dist::Communicator> comm;
  FILE* quiet_log = nullptr;
  int agreed_signal = -1;
  // The planner (planner/planner.h): its predicted step for the settings that run, what it chose
  // (or why there is no prediction), and the energy counters that measure what a step costs.
  planner::Prediction predicted;
  bool has_prediction = false;
  std::string plan_line;
  int64_t resident_stages = 0;
  int optimizer_threads = 0;
  std::unique_ptr<planner::EnergyMeter> energy;

  bool lead() const { return dist.rank == 0; }
  int world() const { return dist.world_size; }

  ~State() {
    // The engine before the communicator it uses (declared later, so destroyed first), and the
    // checkpoint writer, which uses the engine, before it.
    writer.reset();
    engine.reset();
    if (metrics) std::fclose(metrics);
    if (quiet_log) std::fclose(quiet_log);
  }

  void metric(const nlohmann::json& j) {
    if (!metrics) return;
    const std::string line = j.dump() + "\n";
    std::fwrite(line.data(), 1, line.size(), metrics);
    std::fflush(metrics);
  }
};

namespace {

using State = Trainer::State;

// Whether to stop now: a signal to this process or, data parallel, to any rank. Every rank calls
// it at the same points (it is a collective then); once true it stays true without talking.
bool agreed_stop(State& s) {
  if (!s.comm) return stop_requested();
  if (s.agreed_signal > 0) return true;
  std::vector<int64_t> signals(static_cast<size_t>(s.world()));
  const int64_t mine = stop_requested() ? std::max(1, stop_signal()) : 0;
  s.engine->collective([&](dist::Communicator& c) {
    c.all_gather(&mine, signals.data(), 1, dist::DType::kInt64, "stop flags")->wait();
  });
  for (int64_t v : signals) {
    if (v != 0) {
      s.agreed_signal = mine != 0 ? static_cast<int>(mine) : static_cast<int>(v);
      return true;
    }
  }
  return false;
}

int agreed_signal(State& s) {
  return s.comm ? std::max(0, s.agreed_signal) : stop_signal();
}

// Sharded optimizer: a stage's whole m and v from every rank's shard (a collective: every rank
// calls it for the same stages in the same order). Transient: twice the stage, padded.
std::pair<at::Tensor, at::Tensor> gather_moments(State& s, int64_t stage) {
  const pipeline::ParamStore::Region& r = s.store->region(stage);
  const int64_t stride = r.shard.stride, numel = s.store->plan().stages[size_t(stage)].numel;
  at::Tensor mine = at::zeros({2, stride}, at::kFloat);
  mine[0].narrow(0, 0, r.shard.numel).copy_(r.m);
  mine[1].narrow(0, 0, r.shard.numel).copy_(r.v);
  at::Tensor m = at::empty({s.world() * stride}, at::kFloat), v = at::empty_like(m);
  const std::string what = s.store->plan().stages[size_t(stage)].name() + " moments (checkpoint)";
  s.engine->collective([&](dist::Communicator& c) {
    c.all_gather(mine[0].data_ptr(), m.data_ptr(), stride, dist::DType::kFloat32, what)->wait();
    c.all_gather(mine[1].data_ptr(), v.data_ptr(), stride, dist::DType::kFloat32, what)->wait();
  });
  return {m.narrow(0, 0, numel), v.narrow(0, 0, numel)};
}

// Sharded bf16 layout: every stage's whole fp32 masters from every rank's shard (a collective),
// for a checkpoint (transient: 4 B/param).
std::vector<at::Tensor> gather_masters(State& s) {
  std::vector<at::Tensor> whole;
  for (int64_t stage = 0; stage < s.store->plan().num_stages(); ++stage) {
    const pipeline::ParamStore::Region& r = s.store->region(stage);
    const int64_t stride = r.shard.stride, numel = s.store->plan().stages[size_t(stage)].numel;
    at::Tensor mine = at::zeros({stride}, at::kFloat);
    mine.narrow(0, 0, r.shard.numel).copy_(r.master);
    at::Tensor all = at::empty({s.world() * stride}, at::kFloat);
    const std::string what = s.store->plan().stages[size_t(stage)].name() + " masters (checkpoint)";
    s.engine->collective([&](dist::Communicator& c) {
      c.all_gather(mine.data_ptr(), all.data_ptr(), stride, dist::DType::kFloat32, what)->wait();
    });
    whole.push_back(all.narrow(0, 0, numel));
  }
  return whole;
}

// Sums of `values` over the ranks (nothing to do for one process).
void sum_over_ranks(State& s, std::vector<double>& values, const char* what) {
  if (!s.comm) return;
  s.engine->collective([&](dist::Communicator& c) {
    c.all_reduce_sum(values.data(), static_cast<int64_t>(values.size()), dist::DType::kFloat64,
                     what)
        ->wait();
  });
}

// The model's config and tokenizer, from an HF folder or a GGUF file (weights come later,
// straight into the parameter store).
Status load_model_meta(State& s) {
  const std::string& path = s.recipe.model_path;
  Result<inference::ModelFiles> m = inference::open_model_files(path);
  if (!m.ok()) {
    const std::string& msg = m.error().message;
    // Name the recipe key for the one problem that is about the path itself.
    if (msg.rfind("model '", 0) == 0) return Error{"model.path" + msg.substr(5)};
    return m.error();
  }
  s.cfg = m.value().cfg;
  s.tokenizer = std::move(m.value().tokenizer);
  if (!m.value().gguf) {
    s.tokenizer_dir = path;
    return Ok{};
  }
  // Saved model folders get HF tokenizer files written from the GGUF vocabulary.
  s.tokenizer_dir = s.recipe.output_dir + "/.tokenizer";
  std::error_code ec;
  std::filesystem::create_directories(s.tokenizer_dir, ec);
  if (ec) return Error{s.tokenizer_dir + ": cannot create: " + ec.message()};
  return s.tokenizer->save(s.tokenizer_dir);
}

// Weights straight into the store's fp32 masters, dequantised or converted on the way.
Status load_weights(State& s) {
  if (s.store->masters_sharded()) {
    // Whole weights pass through a temporary copy (4 B/param while loading).
    model::ModelParams whole = model::allocate_model_params(s.cfg, at::kFloat);
    const Status st = inference::load_model_weights(s.recipe.model_path, s.cfg, whole);
    if (!st.ok()) return st;
    s.store->load(whole);
    return Ok{};
  }
  model::ModelParams masters = s.store->master_params();
  const Status st = inference::load_model_weights(s.recipe.model_path, s.cfg, masters);
  if (!st.ok()) return st;
  s.store->refresh_working_copies();
  return Ok{};
}

data::DatasetOptions dataset_options(const Recipe& r, const std::string& path) {
  data::DatasetOptions o;
  o.path = path;
  o.format = r.data_format;
  o.columns = r.data_columns;
  o.system_prompt = r.system_prompt;
  o.train_on_prompt = r.train_on_prompt;
  o.skip_malformed = r.skip_malformed;
  o.max_seq_len = r.max_seq_len;
  o.pack = r.pack;
  o.seed = r.seed;
  o.cache_dir = r.cache_dir == "auto" ? r.output_dir + "/.data_cache" : r.cache_dir;
  return o;
}

// What the recipe asks of the model that the model cannot give, and tokenizer problems, which
// are the model's and must not surface later as problems of the data.
Status check_model_against_recipe(State& s) {
  const Recipe& r = s.recipe;
  const bool gguf = ends_with(r.model_path, ".gguf");
  const std::string config_file = gguf ? r.model_path : r.model_path + "/config.json";
  const std::string tokenizer_file = gguf ? r.model_path : r.model_path + "/tokenizer.json";
  const int64_t positions = s.cfg.max_position_embeddings;
  if (positions > 0 && r.max_seq_len > positions) {
    return Error{"data.max_seq_len " + std::to_string(r.max_seq_len) +
                 " is beyond the model's max_position_embeddings " + std::to_string(positions) +
                 " (" + config_file + "); set data.max_seq_len to at most " +
                 std::to_string(positions)};
  }
  if (s.tokenizer->vocab_size() == 0) {
    return Error{tokenizer_file + ": the tokenizer's vocabulary is empty"};
  }
  if (s.tokenizer->vocab_size() > s.cfg.vocab_size) {
    return Error{tokenizer_file + ": the tokenizer has " +
                 std::to_string(s.tokenizer->vocab_size()) + " tokens but the model (" +
                 config_file + ") only " + std::to_string(s.cfg.vocab_size)};
  }
  if (s.tokenizer->encode("Hello, world 123").empty()) {
    return Error{tokenizer_file +
                 ": the tokenizer turns plain text (\"Hello, world 123\") into no tokens; its "
                 "vocabulary lacks the byte-level symbols"};
  }
  return Ok{};
}

Status load_data(State& s) {
  const Recipe& r = s.recipe;
  if (r.chat_format == "auto") {
    Result<data::ChatFormat> f = data::detect_chat_format(s.tokenizer->chat_template());
    if (!f.ok()) return Error{r.model_path + ": " + f.error().message};
    s.chat = f.value();
  } else {
    Result<data::ChatFormat> f = data::chat_format_from_name(r.chat_format);
    if (!f.ok()) return f.error();
    s.chat = f.value();
  }
  // Named by their keys here; the dataset reader names only the file.
  if (r.data_path.empty()) return Error{"data.path is not set (the training data file)"};
  Status regular = check_regular_file(r.data_path, "the training data of data.path");
  if (!regular.ok()) return regular.error();
  if (!r.val_path.empty()) {
    regular = check_regular_file(r.val_path, "the validation data of data.val_path");
    if (!regular.ok()) return regular.error();
  }
  data::DatasetOptions train_opts = dataset_options(r, r.data_path);
  if (r.val_path.empty()) {
    train_opts.val_size = r.val_size;
    train_opts.val_fraction = r.val_fraction;
  }
  Result<data::Dataset> ds = data::load_dataset(train_opts, *s.tokenizer, s.chat);
  if (!ds.ok()) return ds.error();
  s.dataset = std::move(ds).value();
  if (!r.val_path.empty()) {
    data::DatasetOptions val_opts = dataset_options(r, r.val_path);
    val_opts.val_fraction = 0;
    val_opts.val_size = 0;
    Result<data::Dataset> val = data::load_dataset(val_opts, *s.tokenizer, s.chat);
    if (!val.ok()) return val.error();
    s.dataset.val_rows = std::move(val.value().train_rows);
    for (std::string& w : val.value().warnings) s.dataset.warnings.push_back(std::move(w));
    Result<std::vector<data::RawExample>> raw = data::read_examples(val_opts);
    if (!raw.ok()) return raw.error();
    s.dataset.val_examples = std::move(raw).value();
  }
  if (s.dataset.train_rows.empty()) return Error{r.data_path + ": no training rows"};
  if (s.dataset.trained_tokens == 0) {
    return Error{r.data_path + ": no token of the training rows carries a loss"};
  }
  s.loader = std::make_unique<data::DataLoader>(s.dataset.train_rows, r.batch_size, r.seed);
  return Ok{};
}

void print_startup(State& s, uint64_t need_bytes) {
  const Recipe& r = s.recipe;
  const model::ModelConfig& c = s.cfg;
  FILE* o = s.log;
  const int64_t stages = s.store->plan().num_stages();
  std::fprintf(o, "ramstream run: %s\n", r.source.c_str());
  std::fprintf(o, "  model        %s (%s)\n", r.model_path.c_str(), c.model_type.c_str());
  std::fprintf(
      o,
      "  dims         %lld layers, hidden %lld, MLP %lld, heads %lld/%lld x %lld, vocab %lld%s\n",
      (long long)c.num_layers, (long long)c.hidden_size, (long long)c.intermediate_size,
      (long long)c.num_heads, (long long)c.num_kv_heads, (long long)c.head_dim,
      (long long)c.vocab_size, c.tie_word_embeddings ? " (tied)" : "");
  std::fprintf(o, "  parameters   %.1f M\n", double(s.store->num_params()) / 1e6);
  std::fprintf(o, "  host RAM     %.2f GiB needed (%.1f B/param), %.2f GiB available\n",
               double(need_bytes) / kGiB, s.store->bytes_per_param(),
               double(memory::host_memory_available_bytes()) / kGiB);
  std::fprintf(o, "  device       %s, %lld of %lld stages resident at a time (%lld streamed)\n",
               s.device->describe().c_str(), (long long)r.num_slots, (long long)stages,
               (long long)std::max<int64_t>(0, stages - r.num_slots));
  std::fprintf(o, "  numa         %s\n", s.binding.describe().c_str());
  std::fprintf(o, "  dtype        %s\n", s.compute.reason.c_str());
  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
  std::fprintf(o, "  threads      %d OpenMP (ATen, oneDNN; OMP_WAIT_POLICY %s), %d TBB\n",
               at::get_num_threads(), wait_policy ? wait_policy : "unset",
               tbb::this_task_arena::max_concurrency());
  if (s.gemm_error.empty()) {
    std::fprintf(o,
                 "  compute      %s; MFU counts 6 x %.1f M matmul params + attention per token\n",
                 s.gemm_rate.describe().c_str(), double(model::matmul_param_count(c)) / 1e6);
  } else {
    std::fprintf(o, "  compute      GEMM peak unknown (%s): MFU not computed\n",
                 s.gemm_error.c_str());
  }
  if (s.comm) {
    // The grads of every stage summed by a ring all-reduce: 2(N-1)/N of their fp32 bytes.
    int64_t grad_elems = 0;
    for (const pipeline::Stage& st : s.store->plan().stages) grad_elems += st.numel;
    const double n = double(s.world());
    if (s.store->sharded()) {
      // Reduce-scatter of fp32 grads (run as an all-reduce by c10d's Gloo: 2(N-1)/N x 4 B) plus
      // the all-gather of the updated weights ((N-1)/N x 4 B fp32 masters, x 2 B bf16 copy).
      const double gather_bytes = s.store->options().working_copy_bf16 ? 2 : 4;
      std::fprintf(o,
                   "  parallel     data parallel, %s, %s, optimizer state sharded (ZeRO-2): "
                   "grads reduce-scattered and weights all-gathered per stage: (N-1)/N x %.0f B "
                   "x %.1f M = %.1f MB sent per rank per step\n",
                   s.dist.describe().c_str(), s.comm->backend().c_str(), 8 + gather_bytes,
                   double(grad_elems) / 1e6,
                   (n - 1) / n * (8 + gather_bytes) * double(grad_elems) / 1e6);
    } else {
      std::fprintf(o,
                   "  parallel     data parallel, %s, %s; grads all-reduced per stage: 2(N-1)/N "
                   "x 4 B x %.1f M = %.1f MB sent per rank per step\n",
                   s.dist.describe().c_str(), s.comm->backend().c_str(), double(grad_elems) / 1e6,
                   2 * (n - 1) / n * 4 * double(grad_elems) / 1e6);
    }
    std::fprintf(o,
                 "  batch        %lld rows x %lld tokens x %lld accumulation x %d ranks = %lld "
                 "tokens/step\n",
                 (long long)r.batch_size, (long long)r.max_seq_len, (long long)r.grad_accum,
                 s.world(), (long long)s.tokens_per_step);
  } else {
    std::fprintf(o,
                 "  batch        %lld rows x %lld tokens x %lld accumulation = %lld tokens/step\n",
                 (long long)r.batch_size, (long long)r.max_seq_len, (long long)r.grad_accum,
                 (long long)s.tokens_per_step);
  }
  std::fprintf(o,
               "  data         %s: %lld examples -> %zu train rows (%lld tokens, %lld trained), "
               "%zu val rows%s\n",
               r.data_path.c_str(), (long long)s.dataset.num_examples, s.dataset.train_rows.size(),
               (long long)s.dataset.train_tokens, (long long)s.dataset.trained_tokens,
               s.dataset.val_rows.size(), s.dataset.from_cache ? " (cached)" : "");
  if (s.dataset.num_skipped > 0 || s.dataset.num_truncated > 0) {
    std::fprintf(o,
                 "               %lld malformed records skipped (data.skip_malformed), %lld "
                 "examples truncated to data.max_seq_len\n",
                 (long long)s.dataset.num_skipped, (long long)s.dataset.num_truncated);
  }
  for (const std::string& w : s.dataset.warnings) std::fprintf(o, "  warning: %s\n", w.c_str());
  for (const std::string& w : s.warnings) std::fprintf(o, "  warning: %s\n", w.c_str());
  std::fprintf(o, "  schedule     %lld steps, lr %.3g (%s, warmup %lld), clip %.3g, seed %llu\n",
               (long long)r.max_steps, r.lr, r.lr_schedule.c_str(), (long long)r.warmup_steps,
               r.max_grad_norm, (unsigned long long)r.seed);
  if (!s.plan_line.empty()) std::fprintf(o, "  plan         %s\n", s.plan_line.c_str());
  if (s.energy) std::fprintf(o, "  %s\n", s.energy->describe().c_str());
  std::fprintf(o, "  output       %s\n", r.output_dir.c_str());
  std::fflush(o);
}

}  // namespace

EngineMemory estimate_engine_memory(const model::ModelConfig& c, const Recipe& r,
                                    int64_t element_bytes, bool cuda) {
  pipeline::EngineShape shape;
  shape.batch = r.batch_size;
  shape.seq_len = r.max_seq_len;
  shape.micro_batches = r.grad_accum;
  shape.num_slots = r.num_slots;
  shape.keep_activations = r.activations == "keep";
  shape.host_checkpoints = r.host_checkpoints;
  return pipeline::estimate_engine_memory(c, shape, element_bytes, cuda);
}

std::string summary_text(const TrainSummary& s) {
  char buf[256];
  std::string text;
  if (s.already_finished) {
    std::snprintf(buf, sizeof buf, "done: nothing to do, already finished at step %lld",
                  (long long)s.last_step);
    text = buf;
  } else {
    std::snprintf(buf, sizeof buf, "done: steps %lld..%lld", (long long)s.first_step,
                  (long long)s.last_step);
    text = buf;
    if (s.last_step > s.first_step) {
      std::snprintf(buf, sizeof buf, ", loss %.4f -> %.4f, %.1f tokens/s", s.first_loss,
                    s.last_loss, s.tokens_per_s);
      text += buf;
    }
  }
  text += ", wall " + format_duration(s.wall_seconds);
  if (s.interrupted) {
    text += std::string(" (interrupted by ") + (s.stop_signal == SIGTERM ? "SIGTERM" : "SIGINT") +
            "; the same command resumes)";
  }
  text += "\n";
  if (s.before.accuracy >= 0 && s.after.accuracy >= 0) {
    std::snprintf(buf, sizeof buf,
                  "held-out accuracy: %.1f%% before -> %.1f%% after (%lld examples)\n",
                  100 * s.before.accuracy, 100 * s.after.accuracy, (long long)s.after.total);
    text += buf;
  } else if (s.after.accuracy >= 0) {
    std::snprintf(buf, sizeof buf, "held-out accuracy: %.1f%% (%lld examples)\n",
                  100 * s.after.accuracy, (long long)s.after.total);
    text += buf;
  }
  if (!s.last_checkpoint.empty()) text += "checkpoint: " + s.last_checkpoint + "\n";
  return text;
}

Trainer::Trainer(std::unique_ptr<State> state) : s_(std::move(state)) {}
Trainer::~Trainer() {
  if (s_ && s_->writer) {
    Status st = s_->writer->wait();
    (void)st;
  }
}

pipeline::Engine& Trainer::engine() {
  return *s_->engine;
}
const data::Tokenizer& Trainer::tokenizer() const {
  return *s_->tokenizer;
}
const model::ModelConfig& Trainer::model_config() const {
  return s_->cfg;
}
const data::Dataset& Trainer::dataset() const {
  return s_->dataset;
}

namespace {

planner::TrainSettings recipe_settings(const Recipe& r) {
  planner::TrainSettings t;
  t.micro_batch = r.batch_size;
  t.grad_accum = r.grad_accum;
  t.num_slots = int(r.num_slots);
  t.keep_activations = r.activations == "keep";
  t.host_checkpoints = r.host_checkpoints;
  return t;
}

// The planner's prediction for the recipe's own settings (plan: none), or its chosen settings
// for the recipe's rows per step applied to the recipe (plan: auto | time | energy | balanced).
// Without a hardware profile there is no prediction (a warning), unless a plan was asked for.
Status plan_run(State& s, bool bf16) {
  Recipe& r = s.recipe;
  Result<planner::HardwareProfile> hw = planner::hardware_profile_for(r.plan_hardware, {});
  if (!hw.ok()) {
    const std::string why = "plan_hardware " + r.plan_hardware + ": " + hw.error().message;
    if (r.plan != "none") return Error{why};
    s.warnings.push_back("no step-time prediction: " + why);
    return Ok{};
  }
  planner::TrainWorkload w;
  w.model = s.cfg;
  w.seq_len = r.max_seq_len;
  w.rows_per_step = r.batch_size * r.grad_accum;
  w.clip = r.max_grad_norm > 0;
  w.use_gpu = s.cuda;
  w.bf16 = bf16;
  if (s.cuda && !hw.value().gpu.present) {
    const std::string why = "the hardware profile '" + hw.value().name + "' has no GPU";
    if (r.plan != "none") return Error{"plan " + r.plan + ": " + why};
    s.warnings.push_back("no step-time prediction: " + why);
    return Ok{};
  }
  const planner::TrainSettings own = recipe_settings(r);
  const planner::Prediction own_prediction = planner::predict_train(hw.value(), w, own);
  char buf[512];
  if (r.plan == "none") {
    s.predicted = own_prediction;
    std::snprintf(buf, sizeof buf, "none (the recipe's settings); predicted %.0f ms/step on %s",
                  own_prediction.step_s * 1e3, hw.value().name.c_str());
  } else {
    planner::Objective objective = planner::Objective::kTime;
    if (r.plan != "auto") planner::parse_objective(r.plan, &objective);
    Result<planner::TrainPlan> plan = planner::plan_train(hw.value(), w, objective);
    if (!plan.ok()) return Error{"plan " + r.plan + ": " + plan.error().message};
    const planner::TrainCandidate& c = plan.value().chosen;
    s.predicted = c.predicted;
    const bool same = planner::describe(c.settings, s.cuda) == planner::describe(own, s.cuda);
    std::snprintf(
        buf, sizeof buf, "%s (%s): %s, predicted %.0f ms/step on %s; the recipe's %s: %s%.0f ms",
        r.plan.c_str(), planner::objective_name(objective),
        planner::describe(c.settings, s.cuda).c_str(), c.predicted.step_s * 1e3,
        hw.value().name.c_str(), same ? "are the same" : "settings",
        same ? "" : (planner::describe(own, s.cuda) + ", ").c_str(), own_prediction.step_s * 1e3);
    r.batch_size = c.settings.micro_batch;
    r.grad_accum = c.settings.grad_accum;
    r.num_slots = c.settings.num_slots;
    r.activations = c.settings.keep_activations ? "keep" : "recompute";
    r.host_checkpoints = c.settings.host_checkpoints;
    s.resident_stages = c.settings.resident_stages;
    s.optimizer_threads = c.settings.optimizer_threads;
  }
  s.plan_line = buf;
  s.has_prediction = true;
  s.energy = std::make_unique<planner::EnergyMeter>(planner::EnergyMeter::open());
  return Ok{};
}

}  // namespace

Result<std::unique_ptr<Trainer>> Trainer::create(const Recipe& recipe, FILE* log) {
  auto s = std::make_unique<State>();
  s->recipe = recipe;
  s->log = log;
  const Recipe& r = s->recipe;
  s->tty = r.progress == "bar" || (r.progress == "auto" && isatty(fileno(log)));
  Result<dist::DistEnv> env = dist::dist_env_from(dist::environ_map());
  if (!env.ok()) return Error{"data parallel: " + env.error().message};
  s->dist = env.value();
  if (!s->lead()) {
    // Rank 0 speaks for the job; the others report only their errors (as return values).
    s->quiet_log = std::fopen("/dev/null", "w");
    if (s->quiet_log) s->log = s->quiet_log;
    s->tty = false;
  }

  if (r.device == "cuda" && !pipeline::cuda_device_available()) {
    return Error{"engine.device is cuda but no CUDA device is available"};
  }
  s->cuda = r.device == "cuda" || (r.device == "auto" && pipeline::cuda_device_available());
  if (s->dist.distributed()) {
    // One process per device: NCCL between GPUs, Gloo between CPU processes.
    Result<std::unique_ptr<dist::Communicator>> c =
        s->cuda ? dist::make_nccl_communicator(s->dist, s->dist.local_rank)
                : dist::make_gloo_communicator(s->dist, {});
    if (!c.ok()) return c.error();
    s->comm = std::move(c).value();
  }

  Status st = load_model_meta(*s);
  if (!st.ok()) return st.error();
  st = check_model_against_recipe(*s);
  if (!st.ok()) return st.error();
  st = load_data(*s);
  if (!st.ok()) return st.error();

  if (s->cuda) {
    if (r.model_compute == "fp32") {
      return Error{
          "model.compute is fp32 but the CUDA backend computes in bf16 (fp32 master "
          "weights and optimizer); use model.compute: auto or bf16"};
    }
    s->compute = {at::kBFloat16, "bf16 (the CUDA backend)"};
  } else if (r.model_compute == "auto") {
    s->compute = pipeline::choose_cpu_compute(
        pipeline::cached_gemm_rate(at::Device(at::kCPU), at::kFloat),
        pipeline::cached_gemm_rate(at::Device(at::kCPU), at::kBFloat16));
    s->compute.reason = "model.compute auto -> " + s->compute.reason;
    if (s->comm) {
      // The ranks must be replicas: bf16 only when every rank's probe chose it.
      int64_t bf16_votes = s->compute.dtype == at::kBFloat16 ? 1 : 0;
      try {
        s->comm->all_reduce_sum(&bf16_votes, 1, dist::DType::kInt64, "compute dtype")->wait();
      } catch (const std::exception& e) {
        return Error{e.what()};
      }
      if (bf16_votes != s->world() && s->compute.dtype == at::kBFloat16) {
        s->compute = {at::kFloat, "model.compute auto -> fp32 (not every rank's probe chose bf16)"};
      }
    }
  } else {
    const bool bf16 = r.model_compute == "bf16";
    s->compute = {bf16 ? at::kBFloat16 : at::kFloat,
                  std::string(bf16 ? "bf16" : "fp32") + " (set by model.compute)"};
  }
  const bool bf16_layout = s->compute.dtype == at::kBFloat16;
  {
    const int64_t batch_before = r.batch_size;
    st = plan_run(*s, bf16_layout);
    if (!st.ok()) return st.error();
    if (r.batch_size != batch_before) {
      s->loader = std::make_unique<data::DataLoader>(s->dataset.train_rows, r.batch_size, r.seed);
    }
  }
  if (!s->cuda && !bf16_layout) {
    const std::string blas = openblas_core_warning();
    if (!blas.empty()) s->warnings.push_back(blas);
  }

  const pipeline::StagePlan plan = pipeline::plan_stages(s->cfg);
  // Every slot beyond one per stage would hold nothing.
  const int64_t most_slots = std::max<int64_t>(2, plan.num_stages());
  if (r.num_slots > most_slots) {
    s->warnings.push_back("engine.num_slots " + std::to_string(r.num_slots) +
                          " is more than the model's " + std::to_string(plan.num_stages()) +
                          " stages (embedding, layers, head); using " + std::to_string(most_slots));
    s->recipe.num_slots = most_slots;
  }
  pipeline::ParamStoreOptions so;
  so.working_copy_bf16 = bf16_layout;
  so.pin = s->cuda;
  so.allow_pageable = r.allow_pageable;
  so.grad_regions = !bf16_layout && r.max_grad_norm > 0;
  if (r.shard_optimizer && s->comm) {
    so.shard_rank = s->dist.rank;
    so.shard_count = s->world();
  } else if (r.shard_optimizer) {
    s->warnings.push_back("dist.shard_optimizer: one process, nothing to shard");
  }
  s->binding = memory::plan_host_binding(memory::Topology::probe());
  so.numa_node = s->binding.store_node;
  const uint64_t need = static_cast<uint64_t>(pipeline::ParamStore::bytes_needed(plan, so));
  st = memory::check_host_memory(need, "parameter store");
  if (!st.ok()) return st.error();
  {
    // The batch's activations, checkpoints and buffers, before anything is allocated for them.
    // On the CPU backend the device is host memory; a CUDA device reports its own allocation
    // failures (caught below), with only the pinned host buffers counted here.
    const EngineMemory em =
        estimate_engine_memory(s->cfg, r, so.working_copy_bf16 ? 2 : 4, s->cuda);
    const double engine_bytes = em.host_bytes + (s->cuda ? 0.0 : em.device_bytes);
    const double total = double(need) + engine_bytes;
    char what[320];
    std::snprintf(what, sizeof what,
                  "the parameter store (%.2f GiB) plus ~%.2f GiB for a batch of train.batch_size "
                  "%lld x data.max_seq_len %lld tokens x train.grad_accum %lld (activations, "
                  "checkpoints, buffers)",
                  double(need) / kGiB, engine_bytes / kGiB, (long long)r.batch_size,
                  (long long)r.max_seq_len, (long long)r.grad_accum);
    st = total >= 1.8e19 ? Status(Error{std::string(what) + " needs more than 2^64 bytes"})
                         : memory::check_host_memory(static_cast<uint64_t>(total), what);
    if (!st.ok()) {
      return Error{st.error().message +
                   "; lower train.batch_size, data.max_seq_len or train.grad_accum"};
    }
  }
  try {
    pipeline::CpuDeviceOptions cpu;
    cpu.compute_dtype = s->compute.dtype;
    s->device =
        s->cuda ? pipeline::make_cuda_device(s->dist.local_rank) : pipeline::make_cpu_device(cpu);
    s->store = std::make_unique<pipeline::ParamStore>(plan, s->cfg, so);
  } catch (const std::exception& e) {
    return Error{e.what()};
  }
  st = load_weights(*s);
  if (!st.ok()) return st.error();

  pipeline::EngineOptions eo;
  eo.num_slots = static_cast<int>(r.num_slots);
  eo.activations = r.activations == "keep" ? autograd::ActivationMode::kSaved
                                           : autograd::ActivationMode::kRecompute;
  eo.host_checkpoints = r.host_checkpoints;
  eo.allow_pageable = r.allow_pageable;
  if (!s->binding.shared) eo.optimizer_cpus = s->binding.optimizer_cpus;
  // The plan's optimizer threads: the first of the optimizer's CPUs (unbound: all cores).
  if (s->optimizer_threads > 0 && eo.optimizer_cpus.size() > size_t(s->optimizer_threads)) {
    eo.optimizer_cpus.resize(size_t(s->optimizer_threads));
  }
  for (int64_t i = 0; i < s->resident_stages; ++i) eo.resident_stages.push_back(i);
  eo.max_grad_norm = r.max_grad_norm;
  eo.skip_nonfinite = r.nan_policy == "skip";
  eo.adamw.lr = static_cast<float>(r.lr);
  eo.adamw.beta1 = static_cast<float>(r.beta1);
  eo.adamw.beta2 = static_cast<float>(r.beta2);
  eo.adamw.eps = static_cast<float>(r.eps);
  eo.adamw.weight_decay = static_cast<float>(r.weight_decay);
  eo.comm = s->comm.get();
  try {
    s->engine =
        std::make_unique<pipeline::Engine>(*s->device, *s->store, eo, r.batch_size, r.max_seq_len);
  } catch (const std::exception& e) {
    return Error{std::string("engine: ") + e.what()};
  }
  s->writer = std::make_unique<checkpoint::AsyncCheckpointWriter>(*s->engine, *s->store);
  s->config_hash = fnv1a_hex(model::model_config_to_json(s->cfg).dump());
  s->schedule.kind = LrSchedule::kind_from_name(r.lr_schedule);
  s->schedule.peak = r.lr;
  s->schedule.warmup_steps = r.warmup_steps;
  s->schedule.total_steps = r.max_steps;
  s->schedule.min_ratio = r.min_lr_ratio;
  s->tokens_per_step = r.batch_size * r.max_seq_len * r.grad_accum * s->world();
  // Model FLOPs per token (matmul weights, LM head included, input lookup not; attention; no
  // recompute) over the measured GEMM rate of the compute device in its compute dtype.
  s->flops_per_token = model::training_flops_per_token(s->cfg, r.max_seq_len);
  {
    const at::Device dev = s->cuda ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
    const at::ScalarType dtype = s->device->compute_dtype();
    Result<pipeline::GemmRate> rate = pipeline::cached_gemm_rate(dev, dtype);
    if (rate.ok()) {
      s->gemm_rate = rate.value();
      s->peak_flops = rate.value().flops_per_s;
    } else {
      s->gemm_error = rate.error().message;
      s->peak_flops = std::numeric_limits<double>::quiet_NaN();
    }
  }

  std::error_code ec;
  std::filesystem::create_directories(r.output_dir, ec);
  if (ec) return Error{r.output_dir + ": cannot create: " + ec.message()};
  if (s->lead()) {  // one writer of the run's files
    st = checkpoint::write_file_atomic(r.output_dir + "/recipe.yaml", recipe_to_yaml(r));
    if (!st.ok()) return st.error();
    s->metrics = std::fopen((r.output_dir + "/metrics.jsonl").c_str(), "a");
    if (!s->metrics) return Error{r.output_dir + "/metrics.jsonl: cannot open for appending"};
  }
  print_startup(*s, need);
  return std::unique_ptr<Trainer>(new Trainer(std::move(s)));
}

namespace {

// Progress lines of one evaluation, one every progress_interval seconds, so a short evaluation
// prints none; on a TTY one line rewritten in place (ended before the result is logged).
class EvalProgress {
 public:
  EvalProgress(State& s, std::string label) : s_(s), label_(std::move(label)) {}
  ~EvalProgress() {
    if (!inline_) return;
    std::fprintf(s_.log, "\n");
    std::fflush(s_.log);
  }
  // A new phase (validation rows, then generations): its own rate and ETA.
  void start() { phase_.restart(); }
  void report(int64_t done, int64_t total, const char* unit) {
    const double now = since_last_.seconds();
    if (now < s_.progress_interval) return;
    since_last_.restart();
    const std::string text = label_ + ": " + progress_text(done, total, phase_.seconds(), unit);
    if (s_.tty) {
      std::fprintf(s_.log, "\r%s   ", text.c_str());
      inline_ = true;
    } else {
      std::fprintf(s_.log, "%s\n", text.c_str());
    }
    std::fflush(s_.log);
  }

 private:
  State& s_;
  std::string label_;
  ProgressClock phase_, since_last_;
  bool inline_ = false;
};

}  // namespace

void Trainer::set_progress_interval(double seconds) {
  s_->progress_interval = seconds;
}

EvalResult Trainer::evaluate(const std::string& label) {
  State& s = *s_;
  const Recipe& r = s.recipe;
  EvalResult out;
  EvalProgress progress(s, label);
  s.engine->synchronize();
  // Validation loss over up to eval.max_rows rows.
  const auto& rows = s.dataset.val_rows;
  const int64_t nrows = std::min<int64_t>(static_cast<int64_t>(rows.size()), r.eval_max_rows);
  double loss_sum = 0;
  int64_t count = 0;
  const int64_t B = r.batch_size, T = r.max_seq_len;
  // Data parallel: rank r takes batches r, r + N, ... and the sums are added up at the end.
  for (int64_t first = 0, batch = 0; first + B <= nrows; first += B, ++batch) {
    // A partial result; train() then saves and stops. (Data parallel: train() decides, together.)
    if (!s.comm && stop_requested()) break;
    if (batch % s.world() != s.dist.rank) continue;
    at::Tensor ids = at::empty({B, T}, at::kLong), tg = at::empty({B, T}, at::kLong);
    at::Tensor pos = at::empty({B, T}, at::kLong);
    for (int64_t b = 0; b < B; ++b) {
      const data::TokenRow& row = rows[static_cast<size_t>(first + b)];
      for (int64_t t = 0; t < T; ++t) {
        ids[b][t] = int64_t{row.ids[static_cast<size_t>(t)]};
        tg[b][t] = int64_t{row.labels[static_cast<size_t>(t)]};
        pos[b][t] = row.positions.empty() ? t : int64_t{row.positions[static_cast<size_t>(t)]};
      }
    }
    if (autograd::count_targets(tg) == 0) continue;
    const autograd::CrossEntropyResult ce = s.engine->evaluate({ids}, {tg}, {pos});
    loss_sum += ce.loss_sum;
    count += ce.num_targets;
    progress.report(first + B, nrows / B * B, "rows");
  }
  {
    std::vector<double> sums = {loss_sum, double(count)};
    sum_over_ranks(s, sums, "validation loss");
    loss_sum = sums[0];
    count = static_cast<int64_t>(sums[1]);
  }
  if (count > 0) {
    out.val_loss = loss_sum / double(count);
    out.val_tokens = count;
  }
  if (!r.eval_accuracy || (!s.comm && stop_requested())) return out;

  // Exact match: greedy reply to each validation conversation minus its last assistant turn.
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::string> expected, shown;
  for (const data::RawExample& ex : s.dataset.val_examples) {
    if (static_cast<int64_t>(prompts.size()) >= r.eval_max_examples) break;
    if (ex.messages.size() < 2 || ex.messages.back().role != "assistant") continue;
    std::vector<data::ChatMessage> convo(ex.messages.begin(), ex.messages.end() - 1);
    if (!r.system_prompt.empty() && convo.front().role != "system") {
      convo.insert(convo.begin(), data::ChatMessage{"system", r.system_prompt});
    }
    const std::string text = data::render_generation_prompt(s.chat, convo);
    std::vector<int32_t> ids = s.tokenizer->encode(text);
    if (s.tokenizer->add_bos() && s.tokenizer->bos_id() >= 0 &&
        (ids.empty() || ids.front() != s.tokenizer->bos_id())) {
      ids.insert(ids.begin(), s.tokenizer->bos_id());
    }
    prompts.push_back(std::move(ids));
    expected.push_back(strip(ex.messages.back().content));
    shown.push_back(convo.back().content);
  }
  if (prompts.empty()) return out;
  if (s.comm) {  // rank r answers prompts r, r + N, ...
    std::vector<std::vector<int32_t>> p;
    std::vector<std::string> e, sh;
    for (size_t i = static_cast<size_t>(s.dist.rank); i < prompts.size();
         i += static_cast<size_t>(s.world())) {
      p.push_back(std::move(prompts[i]));
      e.push_back(std::move(expected[i]));
      sh.push_back(std::move(shown[i]));
    }
    prompts = std::move(p);
    expected = std::move(e);
    shown = std::move(sh);
  }
  inference::GenerateOptions go;  // greedy
  go.max_new_tokens = r.max_new_tokens;
  if (s.tokenizer->eos_id() >= 0) go.stop_ids.push_back(s.tokenizer->eos_id());
  for (const char* end : {"<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>"}) {
    const int32_t id = s.tokenizer->token_to_id(end);
    if (id >= 0) go.stop_ids.push_back(id);
  }
  // The decode path of `ramstream generate`, over the training store: on the CPU it reads the
  // store in place; on CUDA every stage stays on the device when it fits, else they stream.
  std::unique_ptr<inference::Generator> generator;
  inference::GeneratorOptions gopt;
  try {
    generator = std::make_unique<inference::Generator>(*s.device, *s.store, gopt);
  } catch (const std::exception&) {
    if (!s.cuda) throw;
    gopt.resident_stages = 0;  // not enough device memory for all of them
    generator = std::make_unique<inference::Generator>(*s.device, *s.store, gopt);
  }
  progress.start();
  std::vector<std::vector<int32_t>> gen;
  constexpr size_t kBatch = 32;
  for (size_t first = 0; first < prompts.size(); first += kBatch) {
    const std::vector<std::vector<int32_t>> chunk(
        prompts.begin() + static_cast<std::ptrdiff_t>(first),
        prompts.begin() + static_cast<std::ptrdiff_t>(std::min(prompts.size(), first + kBatch)));
    inference::GenerateResult res = generator->generate(chunk, go);
    gen.insert(gen.end(), res.tokens.begin(), res.tokens.end());
    progress.report(static_cast<int64_t>(gen.size()), static_cast<int64_t>(prompts.size()),
                    "examples");
  }
  for (size_t i = 0; i < gen.size(); ++i) {
    std::vector<int32_t> ids = gen[i];
    while (!ids.empty() &&
           std::find(go.stop_ids.begin(), go.stop_ids.end(), ids.back()) != go.stop_ids.end()) {
      ids.pop_back();
    }
    const std::string got = strip(s.tokenizer->decode(ids, /*skip_special=*/true));
    const bool ok = got == expected[i];
    out.correct += ok ? 1 : 0;
    if (out.samples.size() < 3) {
      out.samples.push_back(one_line(shown[i]).substr(0, 60) + " -> \"" + one_line(got) +
                            "\" (expected \"" + expected[i] + "\")" + (ok ? "" : " x"));
    }
  }
  out.total = static_cast<int64_t>(gen.size());
  std::vector<double> sums = {double(out.correct), double(out.total)};
  sum_over_ranks(s, sums, "exact-match counts");
  out.correct = static_cast<int64_t>(sums[0]);
  out.total = static_cast<int64_t>(sums[1]);
  out.accuracy = out.total > 0 ? double(out.correct) / double(out.total) : -1;
  return out;
}

namespace {

nlohmann::json trainer_json(const State& s) {
  const data::DataCursor c = s.loader->cursor();
  return {{"data_cursor", {{"epoch", c.epoch}, {"index", c.index}}},
          {"rng", {{"data_order_seed", s.recipe.seed}}},
          {"lr_schedule",
           {{"kind", s.recipe.lr_schedule},
            {"peak", s.schedule.peak},
            {"warmup_steps", s.schedule.warmup_steps},
            {"total_steps", s.schedule.total_steps},
            {"min_ratio", s.schedule.min_ratio}}}};
}

checkpoint::CheckpointOptions checkpoint_options(const State& s) {
  checkpoint::CheckpointOptions o;
  o.keep_last_n = static_cast<int>(s.recipe.keep_last_n);
  o.hf.copy_from_dir = s.tokenizer_dir;
  // A GGUF import has no source config.json to take the token ids from.
  o.hf.extra_config = checkpoint::token_ids_config(s.tokenizer->bos_id(), s.tokenizer->eos_id(),
                                                   s.tokenizer->pad_id());
  o.hf.dtype = s.recipe.save_dtype == "fp32"   ? at::kFloat
               : s.recipe.save_dtype == "fp16" ? at::kHalf
                                               : at::kBFloat16;
  return o;
}

void log_eval(State& s, const char* when, int64_t step, const EvalResult& e) {
  std::fprintf(s.log, "eval %-6s step %lld:", when, (long long)step);
  if (e.val_loss >= 0)
    std::fprintf(s.log, " val loss %.4f (%lld tokens)", e.val_loss, (long long)e.val_tokens);
  if (e.accuracy >= 0) {
    std::fprintf(s.log, " accuracy %.1f%% (%lld/%lld exact)", 100 * e.accuracy,
                 (long long)e.correct, (long long)e.total);
  }
  std::fprintf(s.log, "\n");
  for (const std::string& line : e.samples) std::fprintf(s.log, "    %s\n", line.c_str());
  std::fflush(s.log);
  nlohmann::json j = {{"event", "eval"}, {"when", when}, {"step", step}};
  if (e.val_loss >= 0) j["val_loss"] = e.val_loss;
  if (e.accuracy >= 0) {
    j["accuracy"] = e.accuracy;
    j["correct"] = e.correct;
    j["total"] = e.total;
  }
  s.metric(j);
}

}  // namespace

Result<TrainSummary> Trainer::train() {
  try {
    return train_unguarded();
  } catch (const dist::CommError& e) {
    // Data parallel: another rank died or hangs. What was saved stays; this rank stops.
    return Error{e.what()};
  }
}

Result<TrainSummary> Trainer::train_unguarded() {
  State& s = *s_;
  const Recipe& r = s.recipe;
  TrainSummary sum;
  auto finish = [&s](TrainSummary& done) -> Result<TrainSummary> {
    done.wall_seconds = s.wall.seconds();
    return done;
  };
  // A signal during an evaluation cuts it short: the partial result is dropped.
  auto evaluation_interrupted = [&sum, &s](EvalResult& e) {
    if (!agreed_stop(s)) return false;
    e = EvalResult{};
    sum.interrupted = true;
    sum.stop_signal = agreed_signal(s);
    return true;
  };
  install_stop_handlers();
  // The launching thread runs on the cores kept free of optimizer threads, for this run only.
  struct LauncherBinding {
    std::vector<int> before;
    ~LauncherBinding() {
      if (!before.empty()) (void)memory::bind_current_thread(before);
    }
  } launcher;
  if (!s.binding.shared && !s.binding.launcher_cpus.empty()) {
    launcher.before = memory::current_thread_cpus();
    Status b = memory::bind_current_thread(s.binding.launcher_cpus);
    if (!b.ok())
      std::fprintf(s.log, "warning: launcher not bound: %s\n", b.error().message.c_str());
  }

  // Resume.
  int64_t step = 0;
  std::string resumed_from;
  if (r.resume != "never") {
    checkpoint::LoadCheckpointOptions lo;
    lo.expected_config_hash = s.config_hash;
    std::string path;
    if (r.resume == "auto") {
      std::vector<std::string> problems;
      Result<checkpoint::CheckpointRef> latest =
          checkpoint::find_latest_valid_checkpoint(r.output_dir, &problems);
      for (const std::string& p : problems) std::fprintf(s.log, "warning: %s\n", p.c_str());
      if (latest.ok()) path = latest.value().path;
      lo.verify_checksums = false;  // find_latest_valid_checkpoint just verified it
    } else {
      path = r.resume;
    }
    if (!path.empty()) {
      Result<checkpoint::TrainStateMeta> meta = checkpoint::load_checkpoint(path, *s.store, lo);
      if (!meta.ok()) return meta.error();
      step = meta.value().step;
      s.engine->set_step(step);
      const nlohmann::json& t = meta.value().trainer;
      try {
        s.loader->seek(data::DataCursor{t.at("data_cursor").at("epoch").get<int64_t>(),
                                        t.at("data_cursor").at("index").get<int64_t>()});
      } catch (const std::exception& e) {
        return Error{path + "/trainer_state/state.json: bad data_cursor: " + e.what()};
      }
      std::fprintf(s.log, "resumed from %s (step %lld)\n", path.c_str(), (long long)step);
      resumed_from = path;
    }
  }
  sum.first_step = step;
  sum.last_step = step;
  if (step >= r.max_steps && step > 0) {
    // A finished run asked again: its end evaluation already ran, its model is saved.
    sum.already_finished = true;
    sum.last_checkpoint = resumed_from;
    std::fprintf(s.log,
                 "already finished at step %lld; nothing to do (train.max_steps is %lld: raise "
                 "it to train on; checkpoint.resume=never or another output_dir starts over; "
                 "eval.force=true evaluates the final model)\n",
                 (long long)step, (long long)r.max_steps);
    if (r.eval_force) {
      sum.after = evaluate("eval after");
      if (!evaluation_interrupted(sum.after)) log_eval(s, "after", step, sum.after);
    }
    std::fflush(s.log);
    clear_stop_request();
    return finish(sum);
  }

  if (r.eval_before && step == 0) {
    sum.before = evaluate("eval before");
    if (!evaluation_interrupted(sum.before)) log_eval(s, "before", step, sum.before);
  }

  const bool tty = s.tty;
  const auto run_start = std::chrono::steady_clock::now();
  int64_t tokens_run = 0;
  std::string pending_save;  // the folder a background save is writing, "" when none
  // Waits for the background save (at a step boundary) and removes its gate.
  auto finish_pending_save = [&]() -> Status {
    if (pending_save.empty()) return Ok{};
    s.engine->synchronize();
    Status st = s.writer->wait();
    if (st.ok()) sum.last_checkpoint = pending_save;
    pending_save.clear();
    return st;
  };
  auto save = [&](bool async) -> Status {
    Status st = finish_pending_save();
    if (!st.ok()) return st;
    s.engine->synchronize();
    const bool sharded = s.store->sharded();
    if (!s.lead()) {
      // Data parallel: rank 0 writes the one checkpoint (the weights are the same everywhere),
      // which any number of ranks can resume from; sharded, every rank hands over its shards of
      // each stage's moments as rank 0 writes that stage.
      if (s.store->masters_sharded()) (void)gather_masters(s);
      if (sharded) {
        for (int64_t stage = 0; stage < s.store->plan().num_stages(); ++stage) {
          (void)gather_moments(s, stage);
        }
      }
      sum.last_checkpoint = checkpoint::checkpoint_dir(r.output_dir, step);
      return Ok{};
    }
    checkpoint::CheckpointOptions o = checkpoint_options(s);
    if (sharded) {
      // Synchronous: the gathers are collectives of the launching thread.
      async = false;
      o.gather_moments = [&s](int64_t stage) { return gather_moments(s, stage); };
      if (s.store->masters_sharded()) o.whole_masters = gather_masters(s);
    }
    if (async) {
      s.writer->start(r.output_dir, step, trainer_json(s), s.config_hash, o);
      pending_save = checkpoint::checkpoint_dir(r.output_dir, step);
      return Ok{};
    }
    st = checkpoint::save_checkpoint(r.output_dir, step, *s.store, trainer_json(s), s.config_hash,
                                     o);
    if (st.ok()) sum.last_checkpoint = checkpoint::checkpoint_dir(r.output_dir, step);
    return st;
  };

  int64_t consecutive_nan = 0;
  pipeline::StepResult prev;  // the step before, under nan_policy skip not yet asked
  bool prev_unchecked = false;
  std::vector<at::Tensor> ids(static_cast<size_t>(r.grad_accum)), tgs(ids.size());
  std::vector<at::Tensor> pos(ids.size());
  int64_t comm_logged = s.comm ? s.comm->traffic().bytes_sent : 0, step_logged = step;
  while (step < r.max_steps) {
    if (agreed_stop(s)) break;
    const auto t0 = std::chrono::steady_clock::now();
    const bool metered = s.energy && s.energy->available();
    const planner::EnergyMeter::Reading energy0 =
        metered ? s.energy->read() : planner::EnergyMeter::Reading{};
    const int64_t loaded0 = s.engine->weight_bytes_loaded();
    // Every rank reads the whole global batch (world x grad_accum micro-batches, so the data
    // cursor is global) and keeps micro-batches [rank x grad_accum, (rank + 1) x grad_accum).
    int64_t global_targets = 0;
    for (int64_t k = 0; k < r.grad_accum * s.world(); ++k) {
      data::Batch b = s.loader->next();
      for (int64_t t : b.targets) global_targets += t != autograd::kIgnoreIndex ? 1 : 0;
      if (k / r.grad_accum != s.dist.rank) continue;
      const size_t m = static_cast<size_t>(k % r.grad_accum);
      ids[m] = at::from_blob(b.ids.data(), {b.batch, b.seq_len}, at::kLong).clone();
      tgs[m] = at::from_blob(b.targets.data(), {b.batch, b.seq_len}, at::kLong).clone();
      pos[m] = at::from_blob(b.positions.data(), {b.batch, b.seq_len}, at::kLong).clone();
    }
    const double lr = s.schedule.at(step + 1);
    s.engine->set_learning_rate(static_cast<float>(lr));
    pipeline::StepResult st;
    double loss = 0;
    try {
      st = s.engine->train_step(ids, tgs, pos, global_targets);
      loss = st.loss();  // the step's one read from the device
    } catch (const std::exception& e) {
      return Error{"step " + std::to_string(step + 1) + ": " + e.what()};
    }
    ++step;
    // Whether the engine skipped a step (non-finite grad norm under nan_policy skip) is known
    // once the optimizer has the norm. For the previous step that is the case by now (this
    // step's loads waited for its updates), so asking costs no wait; this step is asked at once
    // only when its loss is not finite.
    auto skipped_update = [&](pipeline::StepResult& r, int64_t at_step) -> Status {
      if (!r.skipped()) {
        consecutive_nan = 0;
        return Ok{};
      }
      std::fprintf(s.log, "step %lld: loss %g, grad norm %g: update skipped (nan_policy skip)\n",
                   (long long)at_step, r.loss(), r.grad_norm());
      if (++consecutive_nan >= 10) {
        return Error{
            "10 consecutive steps with a non-finite loss or grad norm; stopping. Last "
            "checkpoint: " +
            (sum.last_checkpoint.empty() ? "none" : sum.last_checkpoint)};
      }
      return Ok{};
    };
    if (prev_unchecked) {
      prev_unchecked = false;
      Status ps = skipped_update(prev, step - 1);
      if (!ps.ok()) return ps.error();
    }
    prev = st;
    prev_unchecked = r.nan_policy == "skip";
    if (!std::isfinite(loss)) {
      if (r.nan_policy == "skip" && st.skipped()) {
        prev_unchecked = false;
        Status ps = skipped_update(st, step);
        if (!ps.ok()) return ps.error();
        continue;
      }
      // An earlier step's save may still be running; it either completes with that step's
      // finite state or refuses diverged weights.
      Status ws = finish_pending_save();
      (void)ws;
      return Error{"step " + std::to_string(step) + ": loss is " + std::to_string(loss) +
                   "; stopping without saving (nan_policy stop; lower train.lr or enable "
                   "clipping). Last checkpoint: " +
                   (sum.last_checkpoint.empty() ? "none" : sum.last_checkpoint)};
    }
    // A finished background save releases its gate at this step boundary.
    if (!pending_save.empty() && !s.writer->busy()) {
      Status ws = finish_pending_save();
      if (!ws.ok()) return Error{"saving checkpoint: " + ws.error().message};
      if (!tty) std::fprintf(s.log, "saved %s\n", sum.last_checkpoint.c_str());
    }
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    tokens_run += s.tokens_per_step;
    if (sum.first_loss < 0) sum.first_loss = loss;
    sum.last_loss = loss;
    const double tok_s = double(s.tokens_per_step) / secs;
    // Weight bytes copied host -> device (on the CPU backend: into the slots) per second.
    const double h2d_gbs = double(s.engine->weight_bytes_loaded() - loaded0) / secs / 1e9;
    // Per rank: the global tokens over every rank's device.
    const double mfu = tok_s * s.flops_per_token / (s.peak_flops * double(s.world()));
    const double rss = host_rss_gib();
    if (step % r.log_every == 0 || step == r.max_steps) {
      const double gn = st.grad_norm();  // waits for this step's grads: only when logged
      nlohmann::json j = {{"step", step},
                          {"loss", loss},
                          {"lr", lr},
                          {"grad_norm", gn},
                          {"tokens_per_s", tok_s},
                          {"host_rss_gib", rss},
                          {"ms", secs * 1e3},
                          {"mfu", mfu},
                          {"h2d_gb_s", h2d_gbs},
                          {"epoch", s.loader->cursor().epoch}};
      if (s.has_prediction) {
        j["predicted_ms"] = s.predicted.step_s * 1e3;
        j["predicted_energy_j"] = s.predicted.energy_j;
      }
      double joules = std::numeric_limits<double>::quiet_NaN();
      if (metered) {
        joules = s.energy->joules_between(energy0, s.energy->read());
        if (std::isfinite(joules)) j["energy_j"] = joules;
      }
      if (s.cuda) j["gpu_mem_gib"] = double(s.engine->device_bytes()) / kGiB;
      // Data parallel: bytes this rank put on its links per step since the last log line (a
      // step's last collectives finish after its loss is read, so a window of its own would miss
      // them).
      double comm_mb = 0;
      if (s.comm) {
        const int64_t sent = s.comm->traffic().bytes_sent;
        comm_mb = double(sent - comm_logged) / 1e6 / double(step - step_logged);
        comm_logged = sent;
        step_logged = step;
        j["comm_mb"] = comm_mb;
      }
      s.metric(j);
      if (tty) {
        const int width = 30;
        const int filled = static_cast<int>(width * step / std::max<int64_t>(1, r.max_steps));
        const double elapsed =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
        std::fprintf(s.log, "\r[%s%s] %s: loss %.4f lr %.2e %.0f tok/s   ",
                     std::string(filled, '=').c_str(), std::string(width - filled, ' ').c_str(),
                     progress_text(step, r.max_steps, elapsed, "", sum.first_step).c_str(), loss,
                     lr, tok_s);
      } else {
        const double elapsed =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
        std::fprintf(s.log,
                     "step %s: loss %.4f grad_norm %.3f lr %.3e %.0f ms %.1f tok/s mfu %.1f%% "
                     "rss %.2f GiB h2d %.2f GB/s",
                     progress_text(step, r.max_steps, elapsed, "", sum.first_step).c_str(), loss,
                     gn, lr, secs * 1e3, tok_s, 100 * mfu, rss, h2d_gbs);
        if (s.cuda) std::fprintf(s.log, " gpu %.2f GiB", double(s.engine->device_bytes()) / kGiB);
        if (s.comm) std::fprintf(s.log, " comm %.1f MB", comm_mb);
        if (s.has_prediction) {
          std::fprintf(s.log, " (predicted %.0f ms, %.1f J", s.predicted.step_s * 1e3,
                       s.predicted.energy_j);
          if (std::isfinite(joules)) std::fprintf(s.log, "; measured %.1f J", joules);
          std::fprintf(s.log, ")");
        }
        std::fprintf(s.log, "\n");
      }
      std::fflush(s.log);
    }
    if (r.eval_every > 0 && step % r.eval_every == 0 && step < r.max_steps) {
      if (tty) std::fprintf(s.log, "\n");
      EvalResult during = evaluate("eval during");
      if (!evaluation_interrupted(during)) log_eval(s, "during", step, during);
    }
    if (r.save_every > 0 && step % r.save_every == 0 && step < r.max_steps) {
      Status ss = save(r.async_save);
      if (!ss.ok()) return Error{"saving checkpoint: " + ss.error().message};
    }
  }
  if (tty) std::fprintf(s.log, "\n");
  if (prev_unchecked && prev.skipped()) {
    std::fprintf(s.log, "step %lld: grad norm %g: update skipped (nan_policy skip)\n",
                 (long long)step, prev.grad_norm());
  }
  s.engine->synchronize();
  sum.nan_steps_skipped = s.engine->skipped_steps();
  sum.last_step = step;
  const double total_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
  sum.tokens_per_s = total_s > 0 ? double(tokens_run) / total_s : 0;

  if (agreed_stop(s)) {
    sum.interrupted = true;
    sum.stop_signal = agreed_signal(s);
    if (step > sum.first_step) {
      std::fprintf(s.log, "interrupted: saving step %lld before exiting\n", (long long)step);
      Status ss = save(/*async=*/false);
      if (!ss.ok()) return Error{"saving checkpoint: " + ss.error().message};
      std::fprintf(s.log, "saved %s\n", sum.last_checkpoint.c_str());
    } else {
      Status ws = finish_pending_save();
      if (!ws.ok()) return Error{"saving checkpoint: " + ws.error().message};
      std::fprintf(s.log, "interrupted before step %lld: nothing new to save\n",
                   (long long)(step + 1));
    }
    std::fflush(s.log);
    clear_stop_request();
    return finish(sum);
  }
  if (r.eval_at_end) {
    sum.after = evaluate("eval after");
    if (evaluation_interrupted(sum.after)) {
      std::fprintf(s.log, "interrupted: end evaluation cut short; saving the trained model\n");
    } else {
      log_eval(s, "after", step, sum.after);
    }
  }
  if (r.save_at_end && step > sum.first_step) {
    Status ss = save(/*async=*/false);
    if (!ss.ok()) return Error{"saving checkpoint: " + ss.error().message};
    std::fprintf(s.log, "saved %s\n", sum.last_checkpoint.c_str());
  } else {
    Status ws = finish_pending_save();
    if (!ws.ok()) return Error{"saving checkpoint: " + ws.error().message};
  }
  s.metric({{"event", "done"},
            {"step", step},
            {"tokens_per_s", sum.tokens_per_s},
            {"predicted_tokens_per_s", s.has_prediction ? s.predicted.tokens_per_s() : 0.0},
            {"first_loss", sum.first_loss},
            {"last_loss", sum.last_loss}});
  if (agreed_stop(s)) {  // during the end evaluation or the last save
    sum.interrupted = true;
    sum.stop_signal = agreed_signal(s);
  }
  clear_stop_request();
  return finish(sum);
}

}  // namespace ramstream::trainer
