// The authoritative host copy of a model under training: per stage one region holding the fp32
// master weights, the fp32 Adam moments m and v, and either
//   - (bf16 layout: the CUDA backend, and the CPU backend computing in bf16) the bf16 working copy
//     streamed to the device, in the slot layout; the GPU's
//     bf16 grads land in the same region between the stage's backward and its update, and the
//     optimizer reads each grad and writes the new bf16 weight in place: 4+4+4+2 = 14 B/param;
//   - (fp32 layout: the CPU backend computing in fp32) optionally an fp32 grad region (slots fill
//     from the master). Exact global-norm clipping needs every grad before any update, so it needs
//     them: 4+4+4+4 = 16 B/param. Without clipping the engine stages grads through a ring of a few
//     stage-sized buffers that the optimizer drains as they land: 12 B/param + O(one layer).
// All regions of the model live in one host arena (memory/arena.h): NUMA-bound to the GPU's node
// when known, huge pages, pinned for async copies on the CUDA backend; a machine with too little
// RAM is refused before anything is allocated, with the estimate and what is available.
//
//   ParamStore store(plan, cfg, {.working_copy_bf16 = false});
//   store.load(initial_params);                    // ModelParams of any dtype
//   ParamStore::Region& r = store.region(plan.block_index(3));
//   std::printf("%.2f bytes/param\n", store.bytes_per_param());
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

#include "memory/arena.h"
#include "model/config.h"
#include "model/params.h"
#include "pipeline/stages.h"

namespace ramstream::pipeline {

struct ParamStoreOptions {
  // The bf16 layout (see above): CUDA's, and the CPU backend's with bf16 compute. Otherwise fp32
  // masters feed the slots directly (CPU backend, fp32 compute).
  bool working_copy_bf16 = false;
  bool grad_regions = true;  // fp32 layout: fp32 grads per stage (needed for clipping)
  // false: weights only (inference): no m, v or grad regions; 4 B/param (fp32 layout) or 6
  // (bf16 layout: master + working copy).
  bool optimizer_state = true;
  bool pin = false;  // page-lock the arena (cudaHostRegister) for async copies
  // With `pin`: a failed registration is an error unless this is set (then the store stays
  // pageable and every copy to or from it is synchronous).
  bool allow_pageable = false;
  int numa_node = -1;  // bind to this node (-1: no binding)
  // Sharded optimizer state (ZeRO-2 over the ranks' host stores): this rank keeps m, v and the
  // grads of its shard of every stage (ShardSpan) and the whole weights the slots load, padded
  // for the collectives. fp32 layout: the whole fp32 masters, 4 + 12/shard_count B/param. bf16
  // layout: the master shard and the whole bf16 working copy (which the grads of the shard pass
  // through, as unsharded), 2 + 12/shard_count B/param.
  int shard_rank = 0, shard_count = 1;
};

// The part of a stage's elements one rank owns when the optimizer state is sharded: blocks of
// kernels::kSumOfSquaresBlock elements, ceil(blocks / count) per rank, so the ranks' sum-of-
// squares partials add up in order to the whole stage's (the global norm stays bitwise that of
// one process). `stride` is the padded per-rank count the collectives move (rank r's shard
// starts at r * stride); the last ranks' shards may be short or empty.
struct ShardSpan {
  int64_t begin = 0, numel = 0, stride = 0;
};
ShardSpan shard_span(int64_t stage_numel, int rank, int count);

class ParamStore {
 public:
  struct Region {
    // fp32 [numel]; bf16 layout sharded: [shard.numel], this rank's shard (from shard.begin).
    at::Tensor master;
    at::Tensor m, v;     // fp32 [numel] ([shard.numel] sharded); undefined without optimizer_state
    at::Tensor grad;     // fp32 [numel] ([shard.stride] sharded) (CPU backend with grad_regions)
    at::Tensor working;  // bf16 [numel] (CUDA backend) or undefined
    ShardSpan shard;     // the whole stage when not sharded
    // Sharded: the weights the all-gather fills, padded to shard.stride * shard_count elements
    // (fp32 layout: the master, bf16 layout: the working copy; master / working is their first
    // numel); else the master or the working copy itself.
    at::Tensor gathered;
  };

  // Throws std::runtime_error (naming the bytes needed and available) when host RAM is short.
  ParamStore(const StagePlan& plan, const model::ModelConfig& cfg, const ParamStoreOptions& opts);
  // Persistent bytes a store of `plan` with `opts` needs (for refusing up front).
  static int64_t bytes_needed(const StagePlan& plan, const ParamStoreOptions& opts);

  const StagePlan& plan() const { return plan_; }
  const model::ModelConfig& config() const { return cfg_; }
  Region& region(int64_t stage) { return regions_[static_cast<size_t>(stage)]; }
  const ParamStoreOptions& options() const { return opts_; }
  bool sharded() const { return opts_.shard_count > 1; }

  // Copies `params` into the masters (any dtype), zeroes m and v, refreshes working copies.
  void load(const model::ModelParams& params);
  // Views of the masters as ModelParams (tied embeddings stay tied). A sharded bf16-layout store
  // has no whole masters: std::logic_error (load() takes whole parameters instead).
  model::ModelParams master_params();
  // Sharded bf16 layout: the master shards live here and the whole weights only in the bf16
  // working copy.
  bool masters_sharded() const { return sharded() && opts_.working_copy_bf16; }
  // master -> bf16 working copy of one stage (no-op without working copies; a sharded bf16
  // store refreshes its shard's part).
  void refresh_working_copy(int64_t stage);
  // One stage's whole fp32 values ([numel]) into its master (its shard when masters_sharded())
  // and working copy; m and v untouched. For loaders of sharded stores.
  void load_stage_whole(int64_t stage, const at::Tensor& whole);
  // The same for every stage: after weights were loaded straight into master_params() (e.g.
  // checkpoint::load_hf_weights(dir, cfg, masters)), which needs no second copy of the model.
  // m and v are zero in a new store.
  void refresh_working_copies();

  int64_t num_params() const { return num_params_; }
  int64_t persistent_bytes() const { return persistent_bytes_; }
  double bytes_per_param() const { return double(persistent_bytes_) / double(num_params_); }
  const memory::HostArena& arena() const { return arena_; }

 private:
  StagePlan plan_;
  model::ModelConfig cfg_;
  ParamStoreOptions opts_;
  memory::HostArena arena_;  // the one allocation every region views
  std::vector<Region> regions_;
  int64_t num_params_ = 0;
  int64_t persistent_bytes_ = 0;
};

}  // namespace ramstream::pipeline
