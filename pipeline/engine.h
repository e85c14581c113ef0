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
// copy -> compute -> slot reuse. The launching thread never waits for the device or the
// optimizer inside a step: "load stage s only after its update" is a wait of the copy stream,
// the loss stays on the device until asked for, and the grad norm is read only when wanted.
// Grads accumulate in fp32 on the device whatever the compute dtype. The result equals the
// non-streamed model of autograd/model.h with the same AdamW (bitwise on the CPU, in both store
// layouts; tested).
//
//   auto dev = make_cpu_device({});
//   ParamStore store(plan_stages(cfg), cfg, {});
//   store.load(initial_params);
//   Engine engine(*dev, store, EngineOptions{}, /*batch=*/4, /*seq_len=*/256);
//   StepResult s = engine.train_step({ids}, {targets});  // ids/targets [B,T] int64, CPU
//   double loss = s.loss();                              // the step's one host read
//   engine.synchronize();                                // store now holds the updated weights
//   engine.train_step({ids}, {targets}, {positions});    // packed rows (autograd/positions.h)
//
// Data parallel (EngineOptions::comm with world size N > 1): each rank passes its own share of the
// global batch. As soon as a stage's backward is done its fp32 device grads are summed over the
// ranks on the engine's collective queue (a host worker issuing every collective of the process in
// the order the launching thread asked for them), while the next stage's backward runs; the
// step's loss is summed the same way. The grads being the same bits on every rank, so are the
// global norm, the clipping and the update: the ranks stay replicas without further traffic.
// A failed collective (a rank died or hangs) does not stall the streams: the error is kept and
// rethrown by the step's loss(), the next train_step and collective().
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "autograd/model.h"
#include "kernels/adamw.h"
#include "memory/block_pool.h"
#include "memory/host_binding.h"
#include "pipeline/device.h"
#include "pipeline/engine_memory.h"
#include "pipeline/param_store.h"
#include "pipeline/stage_streamer.h"
#include "pipeline/stages.h"

namespace ramstream::dist {
class Communicator;
}

namespace ramstream::pipeline {

struct EngineOptions {
  int num_slots = 2;  // K >= 2 device templates
  // Stages with a device buffer of their own (still reloaded after each update).
  std::vector<int64_t> resident_stages;
  autograd::ActivationMode activations = autograd::ActivationMode::kRecompute;
  bool host_checkpoints = false;  // keep block inputs in host memory instead of on the device
  double max_grad_norm = 0.0;     // > 0: exact global-norm clipping before any update
  kernels::AdamWConfig adamw;
  CpuDeviceOptions optimizer_queue;  // fault injection for the optimizer worker in tests
  // With clipping (max_grad_norm > 0): a step whose global grad norm is not finite changes
  // nothing (master, m, v and the bf16 working copy stay as they were); StepResult::skipped()
  // reports it.
  bool skip_nonfinite = true;
  // Record when each stream reaches the start and end of every load, compute, grad copy and
  // update (CUDA: timing events; host streams: host clock).
  bool record_timeline = false;
  // Rows per cross-entropy chunk; 0 picks default_ce_chunk_bytes of fp32 logits per chunk.
  int64_t ce_chunk_rows = 0;
  // CUDA: run with a store (or checkpoint pool) that could not be page-locked, every copy to or
  // from it then synchronous. Off: such a store is an error.
  bool allow_pageable = false;
  // CPUs of the optimizer (its queue thread and its TBB threads), e.g. the GPU's NUMA node minus
  // the launcher's cores (memory::plan_host_binding); empty: unbound, all cores.
  std::vector<int> optimizer_cpus;
  // Data parallel over these ranks (see above); nullptr or world size 1: this process alone. Not
  // owned; outlives the engine.
  dist::Communicator* comm = nullptr;
};

struct TimelineEvent {
  std::string stream;  // "h2d", "compute", "d2h", "optimizer"
  std::string what;    // "load", "forward", "head", "backward", "grads", "update" + "_begin"/"_end"
  int64_t stage = -1;
  double t_us = 0;  // since the engine was created
};

// Fraction of the time spent in weight loads during which compute was running too (0..1).
double load_compute_overlap(const std::vector<TimelineEvent>& timeline);
// Fraction of the span from the first compute begin to the last compute end in which the compute
// stream ran nothing (0..1): the device's idle share.
double compute_idle_fraction(const std::vector<TimelineEvent>& timeline);

// What one train_step reports. Nothing here is read from the device until asked: the loss waits
// for the step's head (one host wait), the grad norm for every grad of the step (the optimizer's
// sums). Read them on the thread that calls train_step, within Engine::kLossSlots steps.
class StepResult {
 public:
  struct Record;
  StepResult() = default;
  explicit StepResult(std::shared_ptr<Record> r) : rec_(std::move(r)) {}

  int64_t step() const;
  int64_t num_targets() const;  // known on the host at launch
  double loss_sum();
  double loss();  // mean over the step's targets
  double grad_norm();
  // Clipping on, norm not finite, skip_nonfinite: nothing was updated.
  bool skipped();

 private:
  std::shared_ptr<Record> rec_;
};

class Engine {
 public:
  Engine(Device& device, ParamStore& store, const EngineOptions& options, int64_t batch,
         int64_t seq_len);
  ~Engine();

  // Steps whose loss is kept on the host at once (StepResult::loss() of an older step throws).
  static constexpr int kLossSlots = 4;

  // One optimizer step over the micro-batches (each [B,T] int64 on the CPU; targets use
  // autograd::kIgnoreIndex for positions without a loss). The loss is the mean over all targets
  // of all micro-batches. Returns once the step is enqueued: on CUDA before the device is done,
  // and whatever the device, before the optimizer has finished its updates.
  // `positions`: empty, or one per micro-batch, each [B,T] int64 on the CPU or undefined: the
  // position of every token in its document, for rows that pack several documents
  // (autograd/positions.h; validated here, an error names the row and token). Without them
  // every row is one document with positions 0..T-1.
  // Data parallel: `global_targets` is the number of targets of the whole step over all ranks
  // (the loss is their mean); 0 sums the local counts through the collective queue, which waits
  // for the previous step's reductions first.
  StepResult train_step(const std::vector<at::Tensor>& ids, const std::vector<at::Tensor>& targets,
                        const std::vector<at::Tensor>& positions = {}, int64_t global_targets = 0);
  // Loss sum/count over the micro-batches without grads or updates.
  autograd::CrossEntropyResult evaluate(const std::vector<at::Tensor>& ids,
                                        const std::vector<at::Tensor>& targets,
                                        const std::vector<at::Tensor>& positions = {});
  // Waits until every scheduled update has reached the store.
  void synchronize();
  // Runs fn on the collective queue after everything queued there so far and waits for it; how
  // the trainer issues its own collectives (evaluation sums, the stop flag) in a safe order.
  // Rethrows fn's exception, or an earlier collective's. Without a communicator fn gets a
  // world-size-1 one.
  void collective(const std::function<void(dist::Communicator&)>& fn);
  bool data_parallel() const;
  dist::Communicator* communicator() const { return options_.comm; }
  Device& device() { return dev_; }
  // Global grad norm of the last step (waits for it).
  double grad_norm();
  // Steps skipped so far under skip_nonfinite (as far as the optimizer got; never blocks).
  int64_t skipped_steps() const { return skipped_steps_.load(); }

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
  int64_t weight_bytes_loaded() const { return streamer_->weight_bytes_loaded(); }
  int64_t device_bytes() const;
  // Host bytes the engine holds beyond the store (grad staging ring, host checkpoints).
  int64_t host_bytes() const;

 private:
  friend class StepResult;
  struct CkptBuffer;
  struct Staging;
  struct LossSlot;
  struct NormRecord;
  struct Mark;
  struct CommState;

  // Copies the micro-batches into pinned staging, finds their loss rows (and the documents of
  // packed rows) on the host and uploads them on the compute stream; returns the number of
  // targets of the step.
  int64_t stage_batch(const std::vector<at::Tensor>& ids, const std::vector<at::Tensor>& targets,
                      const std::vector<at::Tensor>& positions);
  // (Re)allocates what scales with the number of micro-batches (waits for in-flight work).
  void resize_micro_batches(int64_t M);
  void mark(Stream& stream, const char* what, int64_t stage);
  // A buffer holding `stage` (not `busy_slot`), loading it if needed. Never blocks the caller:
  // the copy stream waits for the stage's previous update (the streamer's gates).
  int acquire_slot(int64_t stage, int busy_slot) { return streamer_->acquire(stage, busy_slot); }
  void forward(bool keep_for_backward);
  // Final norm + LM head + cross-entropy per micro-batch into loss_dev_, then its copy to
  // `loss`'s host slot; with `backward`, also their backward (seeding the residual grads) and the
  // head's grads to the host.
  void head(int slot, bool backward, double grad_scale, LossSlot& loss);
  void backward(int head_slot);
  // Sends a stage's fp32 device grads to its host grad region (rounded to bf16 once, on the
  // device, for the bf16 layout); `grads_free` is recorded when `grads` may be reused.
  void grads_to_host(int64_t stage, const at::Tensor& grads, Event& grads_free);
  // Data parallel: queues the sum over ranks of `grads` (device fp32, n elements) once compute
  // has written them; `then` runs on the collective queue after it. Returns the host event
  // reached when both are done.
  Event& reduce_grads(int64_t stage, const at::Tensor& grads, std::function<void()> then);
  // Data parallel: queues the sum over ranks of `loss`'s host value once it has landed.
  void reduce_loss(LossSlot& loss);
  // Runs fn on the collective queue unless an earlier collective failed; keeps fn's error.
  void comm_task(std::function<void(dist::Communicator&)> fn);
  // The next device grad buffer (its turn), zeroed once its previous content has left.
  int take_grad_buffer();
  std::shared_ptr<LossSlot> next_loss_slot();
  // Optimizer queue tasks, in order: per-stage sums of squares, the norm, the updates.
  void schedule_sum_of_squares(int64_t stage);
  void schedule_norm();
  void schedule_update(int64_t stage);
  // The norm, clip coefficient and skip flag from the step's sum of squares.
  void finish_norm(NormRecord& norm, double total);
  // Sharded: gathers a stage's updated shards from every rank into every rank's weights.
  void schedule_gather(int64_t stage);
  // Data parallel: elements of a stage's grads the collectives sum: padded to whole shards
  // (pipeline::shard_span), sharded or not, so a reduce-scatter of the sharded optimizer runs the
  // very all-reduce of the replicated one and sums every element in the same order; 0 without
  // data parallel.
  int64_t reduced_numel(int64_t stage) const;
  // An event at the compute stream's current point, for one collective task to wait for.
  std::shared_ptr<Event> compute_point();
  // Which device grad buffer `grads` is: 0, 1 (the turns) or 2 (the tied embedding's).
  int grad_buffer_index(const at::Tensor& grads) const;

  // Checkpoint of block l's input for micro-batch mb (device mode).
  at::Tensor& device_checkpoint(int64_t l, int64_t mb);

  Device& dev_;
  ParamStore& store_;
  EngineOptions options_;
  const StagePlan& plan_;
  model::ModelConfig cfg_;
  int64_t B_, T_, M_ = 0;  // micro-batch size, tokens, micro-batches of the current step
  int64_t step_ = 0;

  std::unique_ptr<Stream> compute_, h2d_, d2h_, optimizer_;
  std::unique_ptr<Stream> comm_;  // the collective queue (data parallel only)
  std::shared_ptr<CommState> comm_state_;
  // Per device grad buffer (the two turns, the tied embedding's): its grads are summed over the
  // ranks.
  std::unique_ptr<Event> comm_reduced_[3];
  std::unique_ptr<memory::ArenaBinding> optimizer_arena_;  // the optimizer's kernels run in it
  std::unique_ptr<StageStreamer> streamer_;
  // Device grads, always fp32 (the acc dtype): two stage-sized buffers taking turns, and for tied
  // embeddings one [V*C] buffer the head and the embedding both add into.
  at::Tensor grad_buf_[2];
  std::unique_ptr<Event> grad_free_[2];
  int grad_turn_ = 0;
  at::Tensor tied_grad_;
  std::unique_ptr<Event> tied_free_;
  // bf16 layout: the rounded copy of a stage's grads on its way to the host.
  at::Tensor grad_half_[2];
  std::unique_ptr<Event> half_free_[2];
  int half_turn_ = 0;
  std::unique_ptr<Event> grads_ready_;  // compute -> d2h, re-recorded per stage
  std::vector<std::unique_ptr<Event>> grads_on_host_, update_done_;
  std::vector<double> sum_sq_;  // per stage, written by the optimizer queue
  // Sharded: per stage, the sum-of-squares partials of this rank's shard (optimizer queue), and
  // the event reached once the stage's weights are gathered (the gate for its next load).
  std::vector<std::vector<double>> partials_;
  std::vector<std::unique_ptr<Event>> gathered_;
  at::Tensor shard_sum_;  // sharded bf16 layout: a shard's fp32 sum before its rounding
  // Host grad staging when the store has no grad regions: a ring the optimizer drains.
  std::vector<at::Tensor> grad_ring_;
  std::vector<std::unique_ptr<Event>> grad_ring_free_;  // recorded by the optimizer queue
  int grad_ring_turn_ = 0;
  std::vector<void*> host_grad_;  // per stage: where its grads landed this step
  UpdateGate update_gate_;
  std::shared_ptr<NormRecord> norm_;  // the current step's norm, clip coefficient and skip flag
  std::atomic<int64_t> skipped_steps_{0};

  // Per micro-batch device state, uploaded from two pinned staging sets taking turns.
  std::vector<std::unique_ptr<Staging>> staging_;
  int staging_turn_ = 0;
  std::vector<at::Tensor> ids_, rows_index_, rows_target_, dres_;  // [M]
  std::vector<autograd::LossRows> rows_;                           // [M] views of the two above
  std::vector<at::Tensor> pos_, cu_seqlens_;                       // [M] [B,T] int64, [N+1] int32
  std::vector<autograd::TokenPositions> positions_;  // [M] views of the two above, or none
  at::Tensor loss_dev_;                              // [] float64
  std::vector<std::shared_ptr<LossSlot>> loss_slots_;
  int loss_turn_ = 0;
  uint64_t loss_generation_ = 0;
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
  // Timeline marks (launching thread only) and their references: t0_dev_ for device streams,
  // t0_host_ for the optimizer queue, reached at about the same moment.
  std::vector<Mark> marks_;
  std::unique_ptr<Event> t0_dev_, t0_host_;
};

}  // namespace ramstream::pipeline
