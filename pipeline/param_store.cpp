#include "pipeline/param_store.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/bf16.h"
#include "kernels/reduce.h"

namespace ramstream::pipeline {

namespace {

// Every region starts on a page, so the arena can be page-locked in chunks that end only at
// region boundaries (a copy across two registrations is not a pinned copy to the driver).
constexpr int64_t kRegionAlign = 4096;

int64_t align_region(int64_t bytes) {
  return (bytes + kRegionAlign - 1) / kRegionAlign * kRegionAlign;
}

// The parts of each region in arena order: [masters | m | v | grads or working], each part
// stage by stage, so one stage's master is contiguous with nothing it does not need.
struct Part {
  at::Tensor ParamStore::Region::*member;
  at::ScalarType dtype;
};

// Elements of `part` for a stage of `numel` (see Region: sharded stores keep shards of m, v and
// the grads, and a padded master).
int64_t part_numel(const Part& part, int64_t numel, const ParamStoreOptions& opts) {
  if (opts.shard_count <= 1) return numel;
  const ShardSpan span = shard_span(numel, opts.shard_rank, opts.shard_count);
  const bool gathered = opts.working_copy_bf16 ? part.member == &ParamStore::Region::working
                                               : part.member == &ParamStore::Region::master;
  if (gathered) return span.stride * opts.shard_count;
  if (part.member == &ParamStore::Region::grad) return span.stride;
  return span.numel;  // m, v, and the bf16 layout's master
}
std::vector<Part> region_parts(const ParamStoreOptions& opts) {
  std::vector<Part> parts = {{&ParamStore::Region::master, at::kFloat}};
  if (opts.optimizer_state) {
    parts.push_back({&ParamStore::Region::m, at::kFloat});
    parts.push_back({&ParamStore::Region::v, at::kFloat});
  }
  if (opts.working_copy_bf16) {
    parts.push_back({&ParamStore::Region::working, at::kBFloat16});
  } else if (opts.grad_regions && opts.optimizer_state) {
    parts.push_back({&ParamStore::Region::grad, at::kFloat});
  }
  return parts;
}

}  // namespace

ShardSpan shard_span(int64_t stage_numel, int rank, int count) {
  if (count <= 1) return {0, stage_numel, stage_numel};
  const int64_t blocks = kernels::sum_of_squares_blocks(stage_numel);
  const int64_t stride = (blocks + count - 1) / count * kernels::kSumOfSquaresBlock;
  const int64_t begin = std::min(stage_numel, rank * stride);
  return {begin, std::min(stage_numel, begin + stride) - begin, stride};
}

ParamStore::ParamStore(const StagePlan& plan, const model::ModelConfig& cfg,
                       const ParamStoreOptions& opts)
    : plan_(plan), cfg_(cfg), opts_(opts) {
  if (opts.shard_count < 1 || opts.shard_rank < 0 || opts.shard_rank >= opts.shard_count) {
    throw std::invalid_argument("ParamStore: shard " + std::to_string(opts.shard_rank) + " of " +
                                std::to_string(opts.shard_count) + " does not exist");
  }
  if (opts.shard_count > 1 && !opts.optimizer_state) {
    throw std::invalid_argument("ParamStore: nothing to shard without optimizer state");
  }
  persistent_bytes_ = bytes_needed(plan, opts);
  const std::vector<Part> parts = region_parts(opts);
  memory::ArenaOptions arena_opts;
  arena_opts.numa_node = opts.numa_node;
  arena_opts.pin = opts.pin;
  for (int64_t offset = 0, k = 0; k < static_cast<int64_t>(parts.size()); ++k) {
    for (const Stage& st : plan.stages) {
      if (offset > 0) arena_opts.pin_split_points.push_back(static_cast<uint64_t>(offset));
      offset += align_region(part_numel(parts[k], st.numel, opts) *
                             static_cast<int64_t>(c10::elementSize(parts[k].dtype)));
    }
  }
  Result<memory::HostArena> arena = memory::HostArena::create(
      static_cast<uint64_t>(persistent_bytes_), arena_opts, "parameter store");
  if (!arena.ok()) throw std::runtime_error(arena.error().message);
  arena_ = std::move(arena).value();
  if (opts.pin && !arena_.pinned() && !opts.allow_pageable) {
    throw std::runtime_error(
        "parameter store: " +
        (arena_.pin_fallback_reason().empty() ? std::string("no pinning backend (no CUDA device?)")
                                              : arena_.pin_fallback_reason()) +
        ". Every host<->device copy would be synchronous; set engine.allow_pageable=true to run "
        "like that anyway");
  }

  // The arena starts zeroed.
  uint8_t* base = arena_.data();
  int64_t offset = 0;
  regions_.resize(plan.stages.size());
  for (const Part& part : parts) {
    for (size_t i = 0; i < plan.stages.size(); ++i) {
      const int64_t numel = part_numel(part, plan.stages[i].numel, opts);
      regions_[i].*part.member =
          at::from_blob(base + offset, {numel}, at::TensorOptions().dtype(part.dtype));
      offset += align_region(numel * static_cast<int64_t>(c10::elementSize(part.dtype)));
    }
  }
  for (size_t i = 0; i < plan.stages.size(); ++i) {
    Region& r = regions_[i];
    const int64_t numel = plan.stages[i].numel;
    r.shard = shard_span(numel, opts.shard_rank, opts.shard_count);
    at::Tensor& whole = opts.working_copy_bf16 ? r.working : r.master;
    r.gathered = whole;
    whole = r.gathered.narrow(0, 0, numel);
  }
  // Counted on shape-only tensors: a sharded bf16 store has no whole masters to bind.
  std::vector<at::Tensor> shapes;
  for (const Stage& st : plan.stages) {
    shapes.push_back(
        at::empty({st.numel}, at::TensorOptions().dtype(at::kFloat).device(at::kMeta)));
  }
  num_params_ = bind_stage_params(shapes, plan, cfg).numel();
}

int64_t ParamStore::bytes_needed(const StagePlan& plan, const ParamStoreOptions& opts) {
  // Per element: master, m, v (fp32) + the bf16 working copy or an fp32 grad, if any; each
  // region rounded up to a page.
  int64_t total = 0;
  for (const Part& part : region_parts(opts)) {
    for (const Stage& s : plan.stages) {
      total += align_region(part_numel(part, s.numel, opts) *
                            static_cast<int64_t>(c10::elementSize(part.dtype)));
    }
  }
  return total;
}

model::ModelParams ParamStore::master_params() {
  if (masters_sharded()) {
    throw std::logic_error(
        "ParamStore::master_params: the masters of a sharded bf16 store are spread over the "
        "ranks (load whole parameters with load())");
  }
  std::vector<at::Tensor> masters;
  for (const Region& r : regions_) masters.push_back(r.master);
  return bind_stage_params(masters, plan_, cfg_);
}

void ParamStore::load(const model::ModelParams& params) {
  // A sharded bf16 store goes through whole fp32 stages (transient, the size of the model):
  // each keeps its master shard and rounds the whole stage into its working copy.
  std::vector<at::Tensor> whole;
  if (masters_sharded()) {
    for (const Stage& st : plan_.stages) whole.push_back(at::zeros({st.numel}, at::kFloat));
  }
  model::ModelParams dst =
      masters_sharded() ? bind_stage_params(whole, plan_, cfg_) : master_params();
  model::ModelParams& src = const_cast<model::ModelParams&>(params);
  std::vector<at::Tensor> from;
  model::for_each_param(src, [&](const std::string&, at::Tensor& t) { from.push_back(t); });
  size_t i = 0;
  model::for_each_param(dst, [&](const std::string& name, at::Tensor& t) {
    TORCH_CHECK(i < from.size() && from[i].sizes() == t.sizes(), "ParamStore::load: ", name,
                " does not match the store's layout");
    t.copy_(from[i++]);
  });
  TORCH_CHECK(i == from.size(), "ParamStore::load: ", from.size(), " tensors for ", i, " slots");
  for (Region& r : regions_) {
    if (r.m.defined()) r.m.zero_();
    if (r.v.defined()) r.v.zero_();
  }
  if (!masters_sharded()) {
    refresh_working_copies();
    return;
  }
  for (int64_t s = 0; s < plan_.num_stages(); ++s)
    load_stage_whole(s, whole[static_cast<size_t>(s)]);
}

void ParamStore::load_stage_whole(int64_t stage, const at::Tensor& whole) {
  Region& r = region(stage);
  if (!masters_sharded()) {
    r.master.copy_(whole);
    refresh_working_copy(stage);
    return;
  }
  r.master.copy_(whole.narrow(0, r.shard.begin, r.shard.numel));
  const at::Tensor w = whole.contiguous();
  kernels::fp32_to_bf16(w.data_ptr<float>(), reinterpret_cast<kernels::bf16*>(r.working.data_ptr()),
                        w.numel());
}

void ParamStore::refresh_working_copies() {
  for (int64_t s = 0; s < plan_.num_stages(); ++s) refresh_working_copy(s);
}

void ParamStore::refresh_working_copy(int64_t stage) {
  Region& r = region(stage);
  if (!r.working.defined()) return;
  // The optimizer's rounding (kernels/bf16.h), so a refreshed copy equals an updated one bit for
  // bit, NaN included. Sharded: this rank's part of the working copy (the rest is gathered).
  kernels::fp32_to_bf16(r.master.data_ptr<float>(),
                        reinterpret_cast<kernels::bf16*>(r.working.data_ptr()) +
                            (masters_sharded() ? r.shard.begin : 0),
                        r.master.numel());
}

}  // namespace ramstream::pipeline
