// The streaming engine: trains a model whose authoritative state lives in a ParamStore (host RAM)
// on a Device that holds only K layer templates ("slots") at a time.
//
// One train_step, layer-major so weights cross the host link a fixed number of times however
// many micro-batches there are:
//   1. forward: per stage (embedding, blocks, ...), for every micro-batch; the input of each
//      block is kept as an activation checkpoint (on the device, or copied to host memory).
//   2. head: final norm + LM head + chunked cross-entropy, forward and backward per micro-batch.
//   3. backward: blocks in reverse; each is loaded once, recomputed from its checkpoint for every
//      micro-batch (or its kept activations reused) and back-propagated, accumulating its weight
//      grads in a device grad buffer that is then copied to the stage's host grad region.
//   4. optimizer: CPU AdamW per stage on a worker thread, overlapped with the device: as each
//      stage's grads land (no clipping), or, with global-norm clipping, after the norm is known,
//      overlapped with the next step's forward (a stage is loaded only after its update).
// While stage i computes, the next stage is copied into another slot; events order
// copy -> compute -> slot reuse. The result equals the non-streamed model of autograd/model.h
// with the same AdamW (bitwise on the CPU; tested).
//
//   auto dev = make_cpu_device({});
//   ParamStore store(plan_stages(cfg), cfg, {});
//   store.load(initial_params);
//   Engine engine(*dev, store, EngineOptions{}, /*batch=*/4, /*seq_len=*/256);
//   StepStats s = engine.train_step({ids}, {targets});   // ids/targets [B,T] int64, CPU
//   engine.synchronize();                                // store now holds the updated weights
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "autograd/model.h"
#include "kernels/adamw.h"
#include "memory/block_pool.h"
#include "pipeline/device.h"
#include "pipeline/param_store.h"
#include "pipeline/stages.h"

namespace ramstream::pipeline {

struct EngineOptions {
  int num_slots = 2;  // K >= 2 device templates
  autograd::ActivationMode activations = autograd::ActivationMode::kRecompute;
  bool host_checkpoints = false;  // keep block inputs in host memory instead of on the device
  double max_grad_norm = 0.0;     // > 0: exact global-norm clipping before any update
  kernels::AdamWConfig adamw;
  CpuDeviceOptions optimizer_queue;  // fault injection for the optimizer worker in tests
  // With clipping (max_grad_norm > 0): a step whose global grad norm is not finite changes
  // nothing (master, m and v stay as they were); StepStats::skipped reports it.
  bool skip_nonfinite = true;
  // Record when each stream reaches the start and end of every load, compute, grad copy and
  // update (host timestamps taken in stream order; on CUDA through cudaLaunchHostFunc).
  bool record_timeline = false;
};

struct TimelineEvent {
  std::string stream;  // "h2d", "compute", "d2h", "optimizer"
  std::string what;    // "load", "forward", "head", "backward", "grads", "update" + "_begin"/"_end"
  int64_t stage = -1;
  double t_us = 0;  // since the engine was created
};

// Fraction of the time spent in weight loads during which compute was running too (0..1).
double load_compute_overlap(const std::vector<TimelineEvent>& timeline);

struct StepStats {
  double loss_sum = 0;
  int64_t num_targets = 0;
  double grad_norm = -1;  // filled when clipping is on; else see Engine::grad_norm()
  bool skipped = false;   // clipping on, norm not finite, skip_nonfinite: nothing was updated
  double loss() const { return num_targets > 0 ? loss_sum / double(num_targets) : 0.0; }
};

class Engine {
 public:
  Engine(Device& device, ParamStore& store, const EngineOptions& options, int64_t batch,
         int64_t seq_len);
  ~Engine();

  // One optimizer step over the micro-batches (each [B,T] int64 on the CPU; targets use
  // autograd::kIgnoreIndex for positions without a loss). The loss is the mean over all targets
  // of all micro-batches.
  StepStats train_step(const std::vector<at::Tensor>& ids, const std::vector<at::Tensor>& targets);
  // Loss sum/count over the micro-batches without grads or updates.
  autograd::CrossEntropyResult evaluate(const std::vector<at::Tensor>& ids,
                                        const std::vector<at::Tensor>& targets);
  // Waits until every scheduled update has reached the store.
  void synchronize();
  // Global grad norm of the last step (waits for it).
  double grad_norm();

  int64_t step() const { return step_; }
  // Resuming: the number of updates already applied to the store (drives Adam's bias
  // corrections). Call only when no step is in flight (after synchronize()).
  void set_step(int64_t step);
  // The order in which a step updates the stages (its optimizer tasks run in this order).
  std::vector<int64_t> update_order() const;
  // Called on the optimizer worker right before each stage's update, in update_order(); it may
  // block, which holds back that update and every later optimizer task (and, through them, the
  // loads that wait for the updates). A checkpoint writer uses it to save the state of step N
  // stage by stage while step N+1 runs, without a second copy: a stage is updated only after it
  // is written. Install or clear it only when no step is in flight (after synchronize()).
  using UpdateGate = std::function<void(int64_t stage)>;
  void set_update_gate(UpdateGate gate) { update_gate_ = std::move(gate); }
  // The recorded timeline (call synchronize() first for a complete one).
  std::vector<TimelineEvent> timeline();
  void clear_timeline();
  void set_learning_rate(float lr) { options_.adamw.lr = lr; }
  const EngineOptions& options() const { return options_; }
  // Host->device weight bytes copied so far (to check the fixed-traffic property).
  int64_t weight_bytes_loaded() const { return weight_bytes_loaded_; }
  int64_t device_bytes() const;
  // Host bytes the engine holds beyond the store (grad staging ring, host checkpoints).
  int64_t host_bytes() const;

 private:
  struct Slot;
  struct CkptBuffer;

  void check_batch(const std::vector<at::Tensor>& ids, const std::vector<at::Tensor>& targets);
  void mark(Stream& stream, const char* what, int64_t stage);
  // Makes `stage` resident in a slot other than `busy_slot`, loading it if needed.
  int acquire_slot(int64_t stage, int busy_slot);
  void forward(bool keep_for_backward);
  // Final norm + LM head + cross-entropy per micro-batch; with `backward`, also their backward
  // (seeding the residual grads) and the head's grads to the host.
  void head(int slot, bool backward, double grad_scale, autograd::CrossEntropyResult* result);
  void backward(int head_slot);
  void grads_to_host(int64_t stage, const at::Tensor& grads);
  at::Tensor& take_grad_buffer();
  // Optimizer queue tasks, in order: per-stage sums of squares, the norm, the updates.
  void schedule_sum_of_squares(int64_t stage);
  void schedule_norm();
  void schedule_update(int64_t stage);

  // Checkpoint of block l's input for micro-batch mb (device mode).
  at::Tensor& device_checkpoint(int64_t l, int64_t mb);

  Device& dev_;
  ParamStore& store_;
  EngineOptions options_;
  const StagePlan& plan_;
  model::ModelConfig cfg_;
  int64_t B_, T_, M_ = 0;  // micro-batch size, tokens, micro-batches of the current step
  int64_t step_ = 0;
  int64_t weight_bytes_loaded_ = 0;

  std::unique_ptr<Stream> h2d_, d2h_, optimizer_;
  std::vector<std::unique_ptr<Slot>> slots_;
  uint64_t use_clock_ = 0;
  at::Tensor grad_buf_[2];
  std::unique_ptr<Event> grad_ready_[2], grad_free_[2];
  int grad_turn_ = 0;
  at::Tensor tied_grad_;  // [V*C] device, tied embeddings only
  std::unique_ptr<Event> tied_ready_, tied_free_;
  std::vector<std::unique_ptr<Event>> grads_on_host_, update_done_;
  std::vector<double> sum_sq_;  // per stage, written by the optimizer queue
  // Host grad staging when the store has no grad regions: a ring the optimizer drains.
  std::vector<at::Tensor> grad_ring_;
  std::vector<std::unique_ptr<Event>> grad_ring_free_;  // recorded by the optimizer queue
  int grad_ring_turn_ = 0;
  std::vector<void*> host_grad_;  // per stage: where its grads landed this step
  double grad_norm_ = -1;
  UpdateGate update_gate_;
  float clip_coef_ = 1.0f;  // written and read on the optimizer queue only
  std::unique_ptr<Event> norm_ready_;

  // Per micro-batch device state.
  std::vector<at::Tensor> ids_, targets_, dres_;
  std::vector<std::vector<at::Tensor>> ckpt_;           // [L+1][M] device checkpoints (device mode)
  std::vector<std::unique_ptr<CkptBuffer>> ring_;       // [2*M] device buffers (host mode)
  std::vector<std::vector<at::Tensor>> host_ckpt_;      // [L][M] host copies (host mode)
  std::unique_ptr<memory::BlockPool> ckpt_pool_;        // their blocks (pinned on CUDA)
  std::vector<std::vector<autograd::BlockActs>> kept_;  // [L][M] (keep mode)
  autograd::BlockActs acts_;
  autograd::BlockScratch scratch_;
  autograd::RopeTables rope_;
  at::Tensor y_tmp_, final_h_, final_rstd_, dh_;
  int64_t ce_chunk_rows_;
  std::mutex timeline_mu_;
  std::vector<TimelineEvent> timeline_;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

}  // namespace ramstream::pipeline
