// The planner's cost model: for a model, a hardware profile and one setting of the engine's knobs,
// the predicted step time, host and device memory, and energy of a training step or of an
// inference batch (prefill + decode), built from FLOPs and bytes per operation.
//
// Every term is in cost_model.cpp's header comment with its formula; in short:
//   - per stage and phase (forward, recompute, backward, head, optimizer, each copy; prefill and
//     decode with KV bytes by cache type) the FLOPs and bytes of its GEMMs, attention and
//     elementwise passes;
//   - each operation's time from the roofline: max(FLOPs / GEMM peak, bytes / bandwidth), plus a
//     fixed per-operation launch overhead;
//   - the step from a simulation of the engine's streams (copy in, compute, copy out, optimizer),
//     each running its tasks in the order the engine issues them, a task starting when its stream
//     is free and its dependencies are done (the events of pipeline/engine.cpp): K slots, resident
//     stages, the optimizer after each stage's grads or, with clipping, after the norm and
//     overlapped with the next step's forward. On the CPU backend there are no copies and the
//     optimizer shares the cores with compute, so their times add;
//   - memory from the real layouts (ParamStore::bytes_needed, pipeline::estimate_engine_memory,
//     KV bytes per token of the cache type), a hard constraint against the profile's capacities;
//   - energy = sum over devices of (idle + (max - idle) x utilisation) x time x (1 + leakage x
//     utilisation).
//
//   TrainWorkload w{cfg, /*seq_len=*/256, /*rows_per_step=*/2, /*clip=*/true};
//   TrainSettings s;  s.micro_batch = 2;  s.keep_activations = true;
//   Prediction p = predict_train(profile, w, s);
//   std::printf("%.1f ms, %.2f GiB host\n", p.step_s * 1e3, p.host_bytes / (1 << 30));
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "planner/hardware_profile.h"

namespace ramstream::planner {

// Fraction of MemAvailable / device memory a plan may fill: the rest is for the allocator's
// slack, the data loader, the OS and (on the device) the CUDA context and fragmentation.
constexpr double kHostMemoryUsable = 0.90;
constexpr double kDeviceMemoryUsable = 0.92;
// Sustained full load raises leakage power with temperature; QEIL names a thermal yield but gives
// no figure: we take +10% of the dynamic range at full utilisation (leakage grows ~2x per 25 K on
// these processes and a loaded package runs ~10-15 K above its idle temperature).
constexpr double kLeakageAtFullLoad = 0.10;

// One device's time and energy in a prediction.
struct DeviceCost {
  double busy_s = 0;       // time it ran something
  double utilisation = 0;  // busy_s / step_s (0..1)
  double energy_j = 0;     // (idle + (max - idle) u) t (1 + leakage u)
};

// One operation class of the step (summed over stages and micro-batches), for the breakdown.
struct PhaseCost {
  std::string name;  // "forward", "recompute", "backward", "head", "optimizer", "h2d", "d2h",
                     // "prefill", "decode gemm", "decode attention", ...
  double flops = 0;
  double bytes = 0;
  double seconds = 0;  // on its resource, before overlap
};

struct Prediction {
  bool feasible = true;
  std::string binding;    // the tightest memory limit, e.g. "host RAM: 2.4 of 21.0 GiB"
  double violation = 0;   // infeasible: max over limits of need / limit - 1 (> 0)
  double step_s = 0;      // training: one optimizer step; inference: the whole batch
  double energy_j = 0;    // per step_s
  double host_bytes = 0;  // peak host RAM (the CPU backend's "device" memory included)
  double gpu_bytes = 0;   // peak device memory (0 on the CPU backend)
  double tokens = 0;      // trained tokens per step, or generated tokens per batch
  // Inference: the two halves of step_s.
  double prefill_s = 0, decode_s = 0;
  DeviceCost cpu, gpu;
  std::vector<PhaseCost> phases;

  double tokens_per_s() const { return step_s > 0 ? tokens / step_s : 0; }
  double joules_per_token() const { return tokens > 0 ? energy_j / tokens : 0; }
};

// ---- training ----

// What the recipe fixes.
struct TrainWorkload {
  model::ModelConfig model;
  int64_t seq_len = 0;
  int64_t rows_per_step = 0;  // batch_size x grad_accum of the recipe: the tokens per step / T
  bool clip = true;           // global-norm clipping (train.max_grad_norm > 0)
  bool use_gpu = false;       // the CUDA backend (needs profile.gpu.present)
  bool bf16 = false;          // compute dtype bf16 (always on the GPU; model.compute on the CPU)
};

// The engine's knobs the planner chooses.
struct TrainSettings {
  int64_t micro_batch = 1;        // train.batch_size: rows per micro-batch
  int64_t grad_accum = 1;         // micro-batches per step (rows_per_step / micro_batch)
  int num_slots = 2;              // engine.num_slots
  int64_t resident_stages = 0;    // GPU: stages with their own device buffer, from the first one
  bool keep_activations = false;  // engine.activations keep (else recompute)
  bool host_checkpoints = false;  // engine.host_checkpoints
  int optimizer_threads = 0;      // GPU machine: host threads of the optimizer (0: all cores)
};

Prediction predict_train(const HardwareProfile& hw, const TrainWorkload& w, const TrainSettings& s);

// What the probe's block calibration (hardware_profile.cpp) divides by: for one block forward +
// backward over b rows of T tokens on the CPU, its GEMMs' seconds at the profile's GEMM rates,
// the bytes of its elementwise passes and the FLOPs of its causal attention (the formulas above).
struct BlockWork {
  double gemm_s = 0, elementwise_bytes = 0, attention_flops = 0;
};
BlockWork cpu_block_work(const HardwareProfile& hw, const model::ModelConfig& cfg, int64_t rows,
                         int64_t seq_len, bool bf16);

// ---- inference ----

struct InferWorkload {
  model::ModelConfig model;
  int64_t batch = 1;          // prompts decoded together
  int64_t prompt_tokens = 0;  // per prompt
  int64_t new_tokens = 0;     // per prompt
  bool use_gpu = false;
};

enum class KvKind { kFull, kKivi4, kKivi2 };
const char* kv_kind_name(KvKind kind);  // "bf16", "kivi4", "kivi2" (the --kv-cache names)

struct InferSettings {
  int64_t micro_batch = 32;  // decode rows per stage application
  KvKind kv = KvKind::kFull;
  int kv_group = 32, kv_residual = 128;
  int kv_key_outliers = 0;  // per key channel and group (--kv-key-outliers)
  int num_slots = 2;
  int64_t resident_stages = -1;  // GPU: stages kept on the device (-1: all that fit)
};

// Bytes of K and V per token per layer for a cache kind at a context: full precision (fp32 on
// the CPU backend, bf16 on CUDA) for the window of the last `residual` tokens, KIVI's codes plus
// fp16 scale and minimum for the rest (inference::kivi_bits_per_element).
double kv_bytes_per_token_layer(const model::ModelConfig& cfg, const InferSettings& s,
                                int64_t context, bool gpu);

Prediction predict_infer(const HardwareProfile& hw, const InferWorkload& w, const InferSettings& s);

}  // namespace ramstream::planner
