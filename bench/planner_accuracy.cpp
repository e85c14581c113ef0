// The planner's cost model against measurement on this machine: predicted vs measured step time
// for training configurations (the streaming engine on the CPU backend, random weights of
// SmolLM2-135M's shape and of the 50M benchmark model) and inference configurations (the
// Generator: prefill + decode with bf16 and KIVI caches at several batch sizes), one table with
// the error of each.
//
//   build/bin/planner_accuracy [--device cpu|cuda] [--hardware auto|FILE|NAME] [--steps 3]
//                              [--quick] [--json]
//
// With --hardware auto the machine is probed afresh (and the cache `ramstream plan --hardware
// auto` reads is rewritten), so the table checks the model against what the machine measures
// now. Measured: the median of --steps steps after one warm-up step (training), one timed
// generate() after a warm-up one (inference). --device cuda runs the same kind of table on the
// GPU (bf16 store, pinned, streamed and resident stages) and, where NVML's energy counter is
// readable, also compares the predicted GPU joules per step with the counter's (the mean over
// the timed steps; NVML updates every 20-100 ms, so the GPU cases are sized to run >= 0.3 s).
// With --json the last stdout line is one object: {"cpu":..., "device":..., "rows":[{"name",
// "predicted_s","measured_s","error"[,"predicted_gpu_j","measured_gpu_j","energy_error"]}],
// "train_mean_abs_error", "infer_mean_abs_error", "worst_abs_error"[, "energy_mean_abs_error"]}.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "autograd/model.h"
#include "bench/bench_model.h"
#include "inference/generator.h"
#include "model/params.h"
#include "model/shapes.h"
#include "pipeline/engine.h"
#include "planner/cost_model.h"
#include "planner/energy_meter.h"
#include "planner/planner.h"
#include "util/runtime_defaults.h"

namespace rs = ramstream;
namespace pl = ramstream::planner;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Row {
  std::string name;
  bool train = true;
  double predicted_s = 0, measured_s = 0;
  // GPU joules per step (training) or per batch (inference); NaN where no counter.
  double predicted_gpu_j = std::nan(""), measured_gpu_j = std::nan("");
  double error() const { return predicted_s / measured_s - 1; }
  double energy_error() const { return predicted_gpu_j / measured_gpu_j - 1; }
};

struct TrainCase {
  std::string model;  // "smollm2-135m" | "50m"
  int64_t micro_batch, accum, seq;
  bool keep, bf16;
  int64_t resident = 0;  // CUDA: stages kept on the device
  int slots = 2;
};

// A measurement: seconds per step (or per batch) and the GPU joules over the same window.
struct Measured {
  double seconds = 0;
  double gpu_j = std::nan("");
};

// What the runs below share: the backend, and the energy counter read around each timed window.
struct Backend {
  bool cuda = false;
  rs::planner::EnergyMeter meter = rs::planner::EnergyMeter::open();

  std::unique_ptr<rs::pipeline::Device> device(bool bf16) const {
    if (cuda) return rs::pipeline::make_cuda_device(0);
    rs::pipeline::CpuDeviceOptions dopt;
    dopt.compute_dtype = bf16 ? at::kBFloat16 : at::kFloat;
    return rs::pipeline::make_cpu_device(dopt);
  }
  // The store layout the trainer (and inference/session.cpp) uses for this backend: on CUDA the
  // bf16 working copy, pinned; on the CPU the bf16 copy when training in bf16, else fp32.
  rs::pipeline::ParamStoreOptions store_options(bool bf16, bool optimizer) const {
    rs::pipeline::ParamStoreOptions so;
    so.optimizer_state = optimizer;
    so.working_copy_bf16 = cuda || (bf16 && optimizer);
    if (optimizer) so.grad_regions = !so.working_copy_bf16;  // clipping on, as the recipes
    so.pin = cuda;
    return so;
  }
};

struct InferCase {
  std::string model;
  int64_t batch, prompt, new_tokens;
  pl::KvKind kv;
};

rs::model::ModelConfig config_of(const std::string& name) {
  return name == "50m" ? rs::bench::model_50m_config() : rs::model::smollm2_135m_shape();
}

rs::model::ModelParams random_params(const rs::model::ModelConfig& cfg) {
  rs::model::ModelParams p = rs::model::allocate_model_params(cfg, at::kFloat);
  rs::model::init_params_normal(p, 0.02, 0);
  return p;
}

Measured measure_train(const Backend& be, const TrainCase& c, int64_t steps) {
  const rs::model::ModelConfig cfg = config_of(c.model);
  auto dev = be.device(c.bf16);
  rs::pipeline::ParamStore store(rs::pipeline::plan_stages(cfg), cfg,
                                 be.store_options(c.bf16, true));
  store.load(random_params(cfg));
  rs::pipeline::EngineOptions o;
  o.num_slots = c.slots;
  for (int64_t i = 0; i < c.resident; ++i) o.resident_stages.push_back(i);
  o.adamw.lr = 1e-4f;
  o.max_grad_norm = 1.0;
  o.activations =
      c.keep ? rs::autograd::ActivationMode::kSaved : rs::autograd::ActivationMode::kRecompute;
  rs::pipeline::Engine engine(*dev, store, o, c.micro_batch, c.seq);
  at::manual_seed(1);
  std::vector<at::Tensor> ids, targets;
  for (int64_t m = 0; m < c.accum; ++m) {
    ids.push_back(at::randint(0, cfg.vocab_size, {c.micro_batch, c.seq}, at::kLong));
    targets.push_back(rs::autograd::next_token_targets(ids.back()));
  }
  std::vector<double> times;
  // Steady state as the trainer runs it: each step's loss read (it waits for the step's head),
  // the optimizer of step i overlapping step i + 1; the time between consecutive loss reads.
  engine.train_step(ids, targets).loss();
  const rs::planner::EnergyMeter::Reading e0 = be.meter.read();
  double last = now_s();
  for (int64_t i = 0; i < steps; ++i) {
    engine.train_step(ids, targets).loss();
    const double t = now_s();
    times.push_back(t - last);
    last = t;
  }
  const rs::planner::EnergyMeter::Reading e1 = be.meter.read();
  engine.synchronize();
  std::sort(times.begin(), times.end());
  return {times[times.size() / 2], be.meter.gpu_joules_between(e0, e1) / double(steps)};
}

Measured measure_infer(const Backend& be, const InferCase& c, double* prefill_s, double* decode_s) {
  const rs::model::ModelConfig cfg = config_of(c.model);
  auto dev = be.device(false);
  rs::pipeline::ParamStore store(rs::pipeline::plan_stages(cfg), cfg,
                                 be.store_options(false, false));
  store.load(random_params(cfg));
  rs::inference::GeneratorOptions go;
  go.kv = rs::inference::KvCacheConfig::parse(pl::kv_kind_name(c.kv), 32, 128, 0.2).value();
  go.micro_batch = c.batch;
  rs::inference::Generator gen(*dev, store, go);
  std::vector<std::vector<int32_t>> prompts;
  for (int64_t b = 0; b < c.batch; ++b) {
    std::vector<int32_t> p;
    for (int64_t t = 0; t < c.prompt; ++t)
      p.push_back(int32_t((t * 7919 + b * 31) % cfg.vocab_size));
    prompts.push_back(std::move(p));
  }
  rs::inference::GenerateOptions opts;
  opts.max_new_tokens = c.new_tokens;
  opts.ignore_eos = true;
  gen.generate(prompts, opts);  // warm-up: pools, allocator, thread pool
  const rs::planner::EnergyMeter::Reading e0 = be.meter.read();
  const rs::inference::GenerateResult r = gen.generate(prompts, opts);
  const rs::planner::EnergyMeter::Reading e1 = be.meter.read();
  *prefill_s = r.prefill_s;
  *decode_s = r.decode_s;
  return {r.prefill_s + r.decode_s, be.meter.gpu_joules_between(e0, e1)};
}

std::string train_name(const TrainCase& c) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "train %s %s b%lld x%lld T%lld %s", c.model.c_str(),
                c.bf16 ? "bf16" : "fp32", (long long)c.micro_batch, (long long)c.accum,
                (long long)c.seq, c.keep ? "keep" : "recompute");
  std::string name = buf;
  if (c.resident > 0) name += " res" + std::to_string(c.resident);
  if (c.slots != 2) name += " K" + std::to_string(c.slots);
  return name;
}

std::string infer_name(const InferCase& c) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "infer %s B%lld prompt %lld + %lld %s", c.model.c_str(),
                (long long)c.batch, (long long)c.prompt, (long long)c.new_tokens,
                pl::kv_kind_name(c.kv));
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  rs::apply_runtime_defaults(argv);
  std::string hardware = "auto", device = "cpu";
  int64_t steps = 3;
  bool json = false, quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json") {
      json = true;
    } else if (a == "--quick") {
      quick = true;
    } else if (a == "--hardware" && i + 1 < argc) {
      hardware = argv[++i];
    } else if (a == "--device" && i + 1 < argc &&
               (std::strcmp(argv[i + 1], "cpu") == 0 || std::strcmp(argv[i + 1], "cuda") == 0)) {
      device = argv[++i];
    } else if (a == "--steps" && i + 1 < argc) {
      steps = std::max<int64_t>(1, std::atoll(argv[++i]));
    } else {
      std::fprintf(stderr,
                   "planner_accuracy: unknown argument '%s'\nusage: planner_accuracy [--device "
                   "cpu|cuda] [--hardware auto|FILE|NAME] [--steps N] [--quick] [--json]\n",
                   a.c_str());
      return 2;
    }
  }
  Backend be;
  be.cuda = device == "cuda";
  if (be.cuda && !rs::pipeline::cuda_device_available()) {
    std::fprintf(stderr, "planner_accuracy: --device cuda: no CUDA device here\n");
    return 2;
  }
  // A fresh probe: the table checks the model against what this machine measures now.
  pl::ProbeOptions probe;
  probe.refresh = true;
  rs::Result<pl::HardwareProfile> hw = pl::hardware_profile_for(hardware, probe);
  if (!hw.ok()) {
    std::fprintf(stderr, "planner_accuracy: --hardware %s: %s\n", hardware.c_str(),
                 hw.error().message.c_str());
    return 1;
  }
  if (be.cuda && !hw.value().gpu.present) {
    std::fprintf(stderr, "planner_accuracy: --device cuda: the profile '%s' has no GPU\n",
                 hw.value().name.c_str());
    return 1;
  }
  std::printf("planner_accuracy: %s\n%s\n", pl::describe_hardware(hw.value()).c_str(),
              be.meter.describe().c_str());
  std::vector<TrainCase> train;
  std::vector<InferCase> infer;
  if (!be.cuda) {
    train = {
        {"smollm2-135m", 2, 1, 256, true, true},  // the default recipe
        {"smollm2-135m", 2, 1, 256, false, true}, {"smollm2-135m", 1, 2, 256, true, true},
        {"smollm2-135m", 4, 1, 128, true, false}, {"50m", 4, 1, 256, false, false},
        {"50m", 8, 1, 128, true, true},           {"50m", 2, 2, 512, true, true},
    };
    infer = {
        {"smollm2-135m", 1, 128, 32, pl::KvKind::kFull},
        {"smollm2-135m", 8, 128, 32, pl::KvKind::kFull},
        {"smollm2-135m", 8, 512, 32, pl::KvKind::kKivi4},
        {"smollm2-135m", 32, 128, 16, pl::KvKind::kFull},
        {"50m", 4, 256, 32, pl::KvKind::kKivi2},
    };
  } else {
    // Larger steps than on the CPU (each >= ~0.3 s, for the energy counter); streamed and
    // resident stages, 2 and 3 slots, keep and recompute.
    train = {
        {"smollm2-135m", 2, 1, 256, true, true},  // the default recipe
        {"smollm2-135m", 8, 4, 512, true, true},
        {"smollm2-135m", 8, 4, 512, false, true},
        {"smollm2-135m", 16, 2, 1024, false, true, 0, 3},
        {"smollm2-135m", 8, 4, 512, true, true, 8},
        {"50m", 16, 4, 512, true, true},
        {"50m", 8, 4, 1024, false, true, 0, 3},
    };
    infer = {
        {"smollm2-135m", 1, 128, 64, pl::KvKind::kFull},
        {"smollm2-135m", 32, 512, 64, pl::KvKind::kFull},
        {"smollm2-135m", 32, 512, 64, pl::KvKind::kKivi4},
        {"smollm2-135m", 64, 1024, 32, pl::KvKind::kKivi2},
        {"50m", 16, 256, 64, pl::KvKind::kFull},
    };
  }
  if (quick) {
    train.resize(2);
    infer.resize(2);
  }
  std::vector<Row> rows;
  std::printf("%-56s %12s %12s %8s %22s\n", "configuration", "predicted s", "measured s", "error",
              "GPU J pred / NVML");
  auto print_row = [](const Row& r) {
    std::printf("%-56s %12.3f %12.3f %+7.1f%%", r.name.c_str(), r.predicted_s, r.measured_s,
                100 * r.error());
    if (std::isfinite(r.measured_gpu_j)) {
      std::printf(" %9.1f / %9.1f %+6.1f%%", r.predicted_gpu_j, r.measured_gpu_j,
                  100 * r.energy_error());
    }
  };
  for (const TrainCase& c : train) {
    pl::TrainWorkload w;
    w.model = config_of(c.model);
    w.seq_len = c.seq;
    w.rows_per_step = c.micro_batch * c.accum;
    w.clip = true;
    w.bf16 = c.bf16 || be.cuda;
    w.use_gpu = be.cuda;
    pl::TrainSettings s;
    s.micro_batch = c.micro_batch;
    s.grad_accum = c.accum;
    s.keep_activations = c.keep;
    s.num_slots = c.slots;
    s.resident_stages = c.resident;
    const pl::Prediction p = pl::predict_train(hw.value(), w, s);
    const Measured m = measure_train(be, c, steps);
    Row r{train_name(c), true, p.step_s, m.seconds, p.gpu.energy_j, m.gpu_j};
    print_row(r);
    std::printf("\n");
    std::fflush(stdout);
    rows.push_back(r);
  }
  for (const InferCase& c : infer) {
    pl::InferWorkload w;
    w.model = config_of(c.model);
    w.batch = c.batch;
    w.prompt_tokens = c.prompt;
    w.new_tokens = c.new_tokens;
    w.use_gpu = be.cuda;
    pl::InferSettings s;
    s.micro_batch = c.batch;
    s.kv = c.kv;
    const pl::Prediction p = pl::predict_infer(hw.value(), w, s);
    double prefill = 0, decode = 0;
    const Measured m = measure_infer(be, c, &prefill, &decode);
    Row r{infer_name(c), false, p.step_s, m.seconds, p.gpu.energy_j, m.gpu_j};
    print_row(r);
    std::printf("   (prefill %.3f / %.3f, decode %.3f / %.3f)\n", p.prefill_s, prefill, p.decode_s,
                decode);
    std::fflush(stdout);
    rows.push_back(r);
  }
  double train_err = 0, infer_err = 0, worst = 0, energy_err = 0;
  int n_train = 0, n_infer = 0, n_energy = 0;
  nlohmann::json list = nlohmann::json::array();
  for (const Row& r : rows) {
    const double e = std::fabs(r.error());
    worst = std::max(worst, e);
    (r.train ? train_err : infer_err) += e;
    (r.train ? n_train : n_infer) += 1;
    nlohmann::json row = {{"name", r.name},
                          {"predicted_s", r.predicted_s},
                          {"measured_s", r.measured_s},
                          {"error", r.error()}};
    if (std::isfinite(r.measured_gpu_j)) {
      row["predicted_gpu_j"] = r.predicted_gpu_j;
      row["measured_gpu_j"] = r.measured_gpu_j;
      row["energy_error"] = r.energy_error();
      energy_err += std::fabs(r.energy_error());
      ++n_energy;
    }
    list.push_back(row);
  }
  train_err /= std::max(1, n_train);
  infer_err /= std::max(1, n_infer);
  std::printf(
      "mean |error|: train %.1f%% (%d configurations), inference %.1f%% (%d); worst %.1f%%\n",
      100 * train_err, n_train, 100 * infer_err, n_infer, 100 * worst);
  if (n_energy > 0) {
    std::printf("mean |GPU energy error| vs NVML: %.1f%% (%d configurations)\n",
                100 * energy_err / n_energy, n_energy);
  } else {
    std::printf("energy: modelled only (%s)\n", be.meter.describe().c_str());
  }
  if (json) {
    nlohmann::json j = {{"bench", "planner_accuracy"},
                        {"hardware", hw.value().name},
                        {"cpu", hw.value().cpu.model},
                        {"device", device},
                        {"rows", list},
                        {"train_mean_abs_error", train_err},
                        {"infer_mean_abs_error", infer_err},
                        {"worst_abs_error", worst}};
    if (n_energy > 0) j["energy_mean_abs_error"] = energy_err / n_energy;
    std::printf("%s\n", j.dump().c_str());
  }
  return 0;
}
