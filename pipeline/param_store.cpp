#include "pipeline/param_store.h"

#include <stdexcept>

namespace ramstream::pipeline {

ParamStore::ParamStore(const StagePlan& plan, const model::ModelConfig& cfg,
                       const ParamStoreOptions& opts)
    : plan_(plan), cfg_(cfg), opts_(opts) {
  const bool grads = !opts.working_copy_bf16 && opts.grad_regions;
  persistent_bytes_ = bytes_needed(plan, opts);
  memory::ArenaOptions arena_opts;
  arena_opts.numa_node = opts.numa_node;
  arena_opts.pin = opts.pin;
  Result<memory::HostArena> arena = memory::HostArena::create(
      static_cast<uint64_t>(persistent_bytes_), arena_opts, "parameter store");
  if (!arena.ok()) throw std::runtime_error(arena.error().message);
  arena_ = std::move(arena).value();

  // Regions are laid out [masters | m | v | grads or working], each part stage by stage, so one
  // stage's master is contiguous with nothing it does not need. The arena starts zeroed.
  uint8_t* base = arena_.data();
  int64_t offset = 0;
  auto carve = [&](int64_t numel, at::ScalarType dtype) {
    const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(dtype));
    at::Tensor t = at::from_blob(base + offset, {numel}, at::TensorOptions().dtype(dtype));
    offset += bytes;
    return t;
  };
  regions_.resize(plan.stages.size());
  for (size_t i = 0; i < plan.stages.size(); ++i)
    regions_[i].master = carve(plan.stages[i].numel, at::kFloat);
  for (size_t i = 0; i < plan.stages.size(); ++i)
    regions_[i].m = carve(plan.stages[i].numel, at::kFloat);
  for (size_t i = 0; i < plan.stages.size(); ++i)
    regions_[i].v = carve(plan.stages[i].numel, at::kFloat);
  for (size_t i = 0; i < plan.stages.size(); ++i) {
    if (opts.working_copy_bf16) {
      regions_[i].working = carve(plan.stages[i].numel, at::kBFloat16);
    } else if (grads) {
      regions_[i].grad = carve(plan.stages[i].numel, at::kFloat);
    }
  }
  model::ModelParams views = master_params();
  num_params_ = views.numel();
}

int64_t ParamStore::bytes_needed(const StagePlan& plan, const ParamStoreOptions& opts) {
  // Per element: master, m, v (fp32) + the bf16 working copy or an fp32 grad, if any.
  const bool grads = !opts.working_copy_bf16 && opts.grad_regions;
  const int64_t bytes_per_elem = 12 + (opts.working_copy_bf16 ? 2 : 0) + (grads ? 4 : 0);
  int64_t total_elems = 0;
  for (const Stage& s : plan.stages) total_elems += s.numel;
  return total_elems * bytes_per_elem;
}

model::ModelParams ParamStore::master_params() {
  std::vector<at::Tensor> masters;
  for (const Region& r : regions_) masters.push_back(r.master);
  return bind_stage_params(masters, plan_, cfg_);
}

void ParamStore::load(const model::ModelParams& params) {
  model::ModelParams dst = master_params();
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
    r.m.zero_();
    r.v.zero_();
  }
  refresh_working_copies();
}

void ParamStore::refresh_working_copies() {
  for (int64_t s = 0; s < plan_.num_stages(); ++s) refresh_working_copy(s);
}

void ParamStore::refresh_working_copy(int64_t stage) {
  Region& r = region(stage);
  if (r.working.defined()) r.working.copy_(r.master);
}

}  // namespace ramstream::pipeline
