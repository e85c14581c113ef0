#include "pipeline/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <utility>

#include "dist/communicator.h"
#include "kernels/reduce.h"

namespace ramstream::pipeline {

using autograd::ActivationMode;

// A device buffer for one micro-batch's block input in host-checkpoint mode.
struct Engine::CkptBuffer {
  at::Tensor t;                   // [N,C]
  std::unique_ptr<Event> copied;  // d2h (forward) or h2d (backward) copy finished
  std::unique_ptr<Event> used;    // compute finished with the content
};

// Pinned host copies of one step's micro-batches (ids, the rows with a target, the positions and
// documents of packed rows), uploaded on the compute stream; `consumed` marks the end of the
// upload.
struct Engine::Staging {
  std::vector<at::Tensor> ids, index, target, pos;  // [M] of [N] int64
  std::vector<at::Tensor> cu_seqlens;               // [M] of [N+1] int32
  std::unique_ptr<Event> consumed;
};

// Where one step's loss lands on the host.
struct Engine::LossSlot {
  at::Tensor host;  // [1] float64, pinned
  std::unique_ptr<Event> ready;
  // Data parallel: `host` holds the sum over ranks once this host event is reached.
  std::unique_ptr<Event> reduced = make_host_event();
  bool summed = false;      // this use of the slot is summed over ranks
  uint64_t generation = 0;  // which use of the slot it holds (or will)
};

// One step's global grad norm and what the optimizer made of it; written on the optimizer queue
// before `ready` is reached, read by the updates (same queue) and by StepResult after `ready`.
struct Engine::NormRecord {
  std::unique_ptr<Event> ready = make_host_event();
  double norm = -1;
  float clip_coef = 1.0f;
  bool skip = false;
};

// The first failed collective's error; later collective tasks skip their work (the job is
// broken) but still reach their events, so no stream waits for ever.
struct Engine::CommState {
  std::mutex mu;
  std::exception_ptr error;
  std::unique_ptr<dist::Communicator> single;  // collective() without a communicator

  bool failed() {
    std::lock_guard<std::mutex> lock(mu);
    return error != nullptr;
  }
  void rethrow() {
    std::lock_guard<std::mutex> lock(mu);
    if (error) std::rethrow_exception(error);
  }
};

struct Engine::Mark {
  std::string stream, what;
  int64_t stage;
  bool host;  // on the optimizer queue (host clock) rather than a device stream
  std::unique_ptr<Event> event;
};

struct StepResult::Record {
  int64_t step = 0, num_targets = 0;
  std::shared_ptr<Engine::LossSlot> loss_slot;
  uint64_t loss_generation = 0;
  std::shared_ptr<Engine::NormRecord> norm;
  std::shared_ptr<Engine::CommState> comm;
  double loss_sum = 0;
  bool loss_read = false;
};

int64_t StepResult::step() const {
  return rec_ ? rec_->step : 0;
}

int64_t StepResult::num_targets() const {
  return rec_ ? rec_->num_targets : 0;
}

double StepResult::loss_sum() {
  if (!rec_) throw std::logic_error("StepResult: empty (no step)");
  if (!rec_->loss_read) {
    Engine::LossSlot& slot = *rec_->loss_slot;
    if (slot.generation != rec_->loss_generation) {
      throw std::logic_error("StepResult::loss: the loss of step " + std::to_string(rec_->step) +
                             " was overwritten; read it within " +
                             std::to_string(Engine::kLossSlots) + " steps or evaluations");
    }
    if (slot.summed) {
      slot.reduced->synchronize();
      rec_->comm->rethrow();
    } else {
      slot.ready->synchronize();
    }
    rec_->loss_sum = slot.host.data_ptr<double>()[0];
    rec_->loss_read = true;
  }
  return rec_->loss_sum;
}

double StepResult::loss() {
  const double sum = loss_sum();
  return rec_->num_targets > 0 ? sum / double(rec_->num_targets) : 0.0;
}

double StepResult::grad_norm() {
  if (!rec_) throw std::logic_error("StepResult: empty (no step)");
  rec_->norm->ready->synchronize();
  return rec_->norm->norm;
}

bool StepResult::skipped() {
  if (!rec_) throw std::logic_error("StepResult: empty (no step)");
  rec_->norm->ready->synchronize();
  return rec_->norm->skip;
}

Engine::Engine(Device& device, ParamStore& store, const EngineOptions& options, int64_t batch,
               int64_t seq_len)
    : dev_(device),
      store_(store),
      options_(options),
      plan_(store.plan()),
      cfg_(store.config()),
      B_(batch),
      T_(seq_len) {
  TORCH_CHECK(options_.num_slots >= 2, "Engine: num_slots must be >= 2 (double buffering), got ",
              options_.num_slots);
  TORCH_CHECK(!(options_.host_checkpoints && options_.activations == ActivationMode::kSaved),
              "Engine: keeping activations needs device checkpoints (host_checkpoints=false)");
  TORCH_CHECK(batch >= 1 && seq_len >= 1, "Engine: batch and seq_len must be >= 1, got ", batch,
              " and ", seq_len);
  const at::ScalarType dtype = dev_.compute_dtype();
  const bool bf16_layout = store_.options().working_copy_bf16;
  TORCH_CHECK(
      bf16_layout == (dtype == at::kBFloat16), "Engine: ", dev_.describe(), " computes in ", dtype,
      " and needs a ParamStore with working_copy_bf16=", dtype == at::kBFloat16 ? "true" : "false");
  const bool cuda = dev_.kind() == DeviceKind::kCuda;
  if (cuda && !store_.arena().pinned() && !options_.allow_pageable) {
    throw std::runtime_error(
        "Engine: the parameter store is not page-locked (" + store_.arena().describe() +
        "), so every host<->device copy would be synchronous; pin it (ParamStoreOptions::pin) or "
        "set engine.allow_pageable=true");
  }
  const at::ScalarType acc = autograd::acc_dtype(dtype);
  const at::Device where = dev_.torch_device();
  compute_ = dev_.new_compute_stream();
  // Buffers are filled on the engine's compute stream (and waited for at the end), so no other
  // stream ever sees one before its zero-fill.
  const std::unique_ptr<StreamScope> scope = dev_.make_current(*compute_);
  h2d_ = dev_.new_stream("h2d");
  d2h_ = dev_.new_stream("d2h");
  optimizer_ = make_host_worker("optimizer", options_.optimizer_queue);
  comm_state_ = std::make_shared<CommState>();
  if (data_parallel()) {
    comm_ = make_host_worker("comm", {});
    for (int b = 0; b < 3; ++b) comm_reduced_[b] = make_host_event();
  }
  optimizer_arena_ = std::make_unique<memory::ArenaBinding>(options_.optimizer_cpus);
  streamer_ = std::make_unique<StageStreamer>(
      dev_, store_, *h2d_, StageStreamerOptions{options_.num_slots, options_.resident_stages},
      [this](Stream& s, const char* what, int64_t stage) { mark(s, what, stage); });
  const bool sharded = store_.sharded();
  if (sharded) {
    const ParamStoreOptions& so = store_.options();
    TORCH_CHECK(data_parallel() && options_.comm->world_size() == so.shard_count &&
                    options_.comm->rank() == so.shard_rank,
                "Engine: a store sharded as rank ", so.shard_rank, " of ", so.shard_count,
                " needs a communicator of that rank and world size");
  }
  // Data parallel: every stage's grads are summed over a buffer padded to whole shards (see
  // reduced_numel), sharded or not.
  int64_t grad_numel = plan_.grad_numel, tied_numel = plan_.vocab * plan_.hidden, ring_numel = 0;
  for (int64_t s = 0; s < plan_.num_stages(); ++s) {
    const ShardSpan& span = store_.region(s).shard;
    const int64_t padded = reduced_numel(s);
    if (s == 0 && plan_.tied) {
      tied_numel = std::max(tied_numel, padded);
    } else {
      grad_numel = std::max(grad_numel, padded);
    }
    ring_numel = std::max(ring_numel, sharded ? span.stride : plan_.slot_numel);
  }
  // Sharded bf16 layout: the fp32 sum of a shard lands here before its one rounding into the
  // working copy (one at a time, on the collective queue).
  if (sharded && bf16_layout) shard_sum_ = dev_.alloc_host(ring_numel, at::kFloat);
  for (int g = 0; g < 2; ++g) {
    grad_buf_[g] = dev_.alloc(grad_numel, acc);
    grad_free_[g] = dev_.new_event();
    // On the CPU backend the grads are rounded straight into the store: no staging needed.
    if (bf16_layout && cuda) {
      grad_half_[g] = dev_.alloc(plan_.slot_numel, dtype);
      half_free_[g] = dev_.new_event();
    }
  }
  if (plan_.tied) tied_grad_ = dev_.alloc(tied_numel, acc);
  tied_free_ = dev_.new_event();
  grads_ready_ = dev_.new_event();
  for (int64_t s = 0; s < plan_.num_stages(); ++s) {
    grads_on_host_.push_back(dev_.new_event());
    update_done_.push_back(make_host_event());
    gathered_.push_back(make_host_event());
    // The previous step's update of a stage must be in the store before it is copied; sharded,
    // the updated shards of every rank must have been gathered.
    streamer_->set_gate(s, sharded ? gathered_.back().get() : update_done_.back().get());
    const ShardSpan& span = store_.region(s).shard;
    partials_.emplace_back(
        static_cast<size_t>(sharded ? kernels::sum_of_squares_blocks(span.stride) : 0), 0.0);
  }
  sum_sq_.assign(static_cast<size_t>(plan_.num_stages()), 0.0);
  host_grad_.assign(static_cast<size_t>(plan_.num_stages()), nullptr);
  const bool grad_regions = bf16_layout || store_.options().grad_regions;
  TORCH_CHECK(grad_regions || options_.max_grad_norm <= 0,
              "Engine: exact global-norm clipping needs every grad before any update: use a "
              "ParamStore with grad_regions=true, or max_grad_norm=0");
  if (!grad_regions) {
    for (int r = 0; r < 2; ++r) {
      grad_ring_.push_back(at::empty({ring_numel}, at::kFloat));
      grad_ring_free_.push_back(make_host_event());
    }
  }
  norm_ = std::make_shared<NormRecord>();
  for (int i = 0; i < kLossSlots; ++i) {
    auto slot = std::make_shared<LossSlot>();
    slot->host = dev_.alloc_host(1, at::kDouble);
    slot->ready = dev_.new_event();
    loss_slots_.push_back(std::move(slot));
  }
  for (int i = 0; i < 2; ++i) {
    auto st = std::make_unique<Staging>();
    st->consumed = dev_.new_event();
    staging_.push_back(std::move(st));
  }

  const int64_t N = B_ * T_, C = cfg_.hidden_size;
  const auto o = at::TensorOptions().dtype(dtype).device(where);
  acts_ = autograd::BlockActs::allocate(cfg_, B_, T_, dtype, where);
  scratch_ = autograd::BlockScratch::allocate(cfg_, B_, T_, dtype, where);
  rope_ = autograd::make_rope_tables(cfg_, T_, dtype, where);
  y_tmp_ = at::empty({N, C}, o);
  final_h_ = at::empty({N, C}, o);
  final_rstd_ = at::empty({N}, o.dtype(acc));
  dh_ = at::empty({N, C}, o);
  loss_dev_ = at::zeros({}, o.dtype(at::kDouble));
  ce_chunk_rows_ = options_.ce_chunk_rows > 0 ? options_.ce_chunk_rows
                                              : autograd::cross_entropy_chunk_rows(
                                                    cfg_.vocab_size, default_ce_chunk_bytes(cuda));
  compute_->synchronize();
  if (options_.record_timeline) {
    // Both references reached now (within a few microseconds of each other).
    t0_dev_ = dev_.new_event(/*timing=*/true);
    t0_dev_->record(*compute_);
    t0_dev_->synchronize();
    t0_host_ = make_host_event();
    t0_host_->record(*optimizer_);
    t0_host_->synchronize();
  }
}

Engine::~Engine() {
  synchronize();
}

void Engine::mark(Stream& stream, const char* what, int64_t stage) {
  if (!options_.record_timeline) return;
  const bool host = &stream == optimizer_.get() || &stream == comm_.get();
  std::unique_ptr<Event> e = host ? make_host_event() : dev_.new_event(/*timing=*/true);
  e->record(stream);
  marks_.push_back({stream.name(), what, stage, host, std::move(e)});
}

std::vector<TimelineEvent> Engine::timeline() {
  std::vector<TimelineEvent> t;
  for (Mark& m : marks_) {
    if (!m.event->query()) continue;  // not reached yet
    // On the CPU backend every event is a host event: one reference keeps one clock.
    const bool host_ref = m.host && dev_.kind() != DeviceKind::kCpu;
    const double us = m.event->elapsed_us(host_ref ? *t0_host_ : *t0_dev_);
    t.push_back({m.stream, m.what, m.stage, us});
  }
  std::stable_sort(t.begin(), t.end(),
                   [](const TimelineEvent& a, const TimelineEvent& b) { return a.t_us < b.t_us; });
  return t;
}

void Engine::clear_timeline() {
  marks_.clear();
}

namespace {

// Pairs *_begin/*_end per stage on one stream into intervals.
std::vector<std::pair<double, double>> intervals(const std::vector<TimelineEvent>& timeline,
                                                 const std::string& stream) {
  std::vector<std::pair<double, double>> out;
  std::vector<std::pair<int64_t, double>> open;
  for (const TimelineEvent& e : timeline) {
    if (e.stream != stream) continue;
    const bool begin = e.what.size() > 6 && e.what.compare(e.what.size() - 6, 6, "_begin") == 0;
    if (begin) {
      open.emplace_back(e.stage, e.t_us);
      continue;
    }
    for (auto it = open.begin(); it != open.end(); ++it) {
      if (it->first == e.stage) {
        out.emplace_back(it->second, e.t_us);
        open.erase(it);
        break;
      }
    }
  }
  return out;
}

}  // namespace

double load_compute_overlap(const std::vector<TimelineEvent>& timeline) {
  const auto loads = intervals(timeline, "h2d");
  const auto computes = intervals(timeline, "compute");
  double load_time = 0, overlapped = 0;
  for (const auto& l : loads) {
    load_time += l.second - l.first;
    for (const auto& c : computes) {
      overlapped += std::max(0.0, std::min(l.second, c.second) - std::max(l.first, c.first));
    }
  }
  return load_time > 0 ? std::min(1.0, overlapped / load_time) : 0.0;
}

double compute_idle_fraction(const std::vector<TimelineEvent>& timeline) {
  auto busy = intervals(timeline, "compute");
  if (busy.empty()) return 0.0;
  std::sort(busy.begin(), busy.end());
  double covered = 0, end = busy.front().first;
  const double first = busy.front().first;
  for (const auto& b : busy) {
    if (b.second <= end) continue;
    covered += b.second - std::max(b.first, end);
    end = b.second;
  }
  const double span = end - first;
  return span > 0 ? std::max(0.0, 1.0 - covered / span) : 0.0;
}

bool Engine::data_parallel() const {
  return options_.comm != nullptr && options_.comm->world_size() > 1;
}

int64_t Engine::reduced_numel(int64_t stage) const {
  if (!data_parallel()) return 0;
  const int world = options_.comm->world_size();
  return shard_span(plan_.stages[static_cast<size_t>(stage)].numel, 0, world).stride * world;
}

std::shared_ptr<Event> Engine::compute_point() {
  // A new event each time: the collective queue waits for exactly this point. A reused one could
  // be recorded again further on before the queue reaches its wait, and on CUDA that later point
  // may itself wait for this reduction (the next use of the same grad buffer).
  std::shared_ptr<Event> e = dev_.new_event();
  e->record(*compute_);
  return e;
}

int Engine::grad_buffer_index(const at::Tensor& grads) const {
  if (grads.data_ptr() == grad_buf_[0].data_ptr()) return 0;
  if (grads.data_ptr() == grad_buf_[1].data_ptr()) return 1;
  return 2;  // the tied embedding's
}

void Engine::comm_task(std::function<void(dist::Communicator&)> fn) {
  std::shared_ptr<CommState> st = comm_state_;
  dist::Communicator* comm = options_.comm;
  comm_->host_task([st, comm, fn = std::move(fn)] {
    if (st->failed()) return;
    try {
      fn(*comm);
    } catch (...) {
      std::lock_guard<std::mutex> lock(st->mu);
      if (!st->error) st->error = std::current_exception();
    }
  });
}

void Engine::collective(const std::function<void(dist::Communicator&)>& fn) {
  if (!data_parallel()) {
    if (options_.comm != nullptr) {
      fn(*options_.comm);
      return;
    }
    if (!comm_state_->single) comm_state_->single = dist::make_single_communicator();
    fn(*comm_state_->single);
    return;
  }
  comm_state_->rethrow();
  std::unique_ptr<Event> done = make_host_event();
  comm_task([&fn](dist::Communicator& c) { fn(c); });
  done->record(*comm_);
  done->synchronize();
  comm_state_->rethrow();
}

Event& Engine::reduce_grads(int64_t stage, const at::Tensor& grads, std::function<void()> then) {
  const int b = grad_buffer_index(grads);
  std::shared_ptr<Event> ready = compute_point();
  const int64_t n = reduced_numel(stage);
  const std::string what =
      plan_.stages[static_cast<size_t>(stage)].name() + " grads, step " + std::to_string(step_);
  float* data = grads.data_ptr<float>();
  mark(*comm_, "reduce_begin", stage);
  comm_task([ready, data, n, what](dist::Communicator& c) {
    ready->synchronize();
    c.all_reduce_sum(data, n, dist::DType::kFloat32, what)->wait();
  });
  // `then` runs even after a failure: it only moves bytes, and what waits for it must go on.
  if (then) comm_->host_task(std::move(then));
  mark(*comm_, "reduce_end", stage);
  comm_reduced_[b]->record(*comm_);
  return *comm_reduced_[b];
}

void Engine::reduce_loss(LossSlot& loss) {
  loss.summed = true;
  std::shared_ptr<Event> ready = compute_point();  // the loss's copy to the host is before it
  double* value = loss.host.data_ptr<double>();
  const std::string what = "loss, step " + std::to_string(step_);
  comm_task([ready, value, what](dist::Communicator& c) {
    ready->synchronize();
    c.all_reduce_sum(value, 1, dist::DType::kFloat64, what)->wait();
  });
  loss.reduced->record(*comm_);
}

void Engine::synchronize() {
  if (comm_) comm_->synchronize();
  compute_->synchronize();
  h2d_->synchronize();
  d2h_->synchronize();
  optimizer_->synchronize();
}

void Engine::set_step(int64_t step) {
  TORCH_CHECK(step >= 0, "Engine::set_step: negative step ", step);
  step_ = step;
}

std::vector<int64_t> Engine::update_order() const {
  std::vector<int64_t> order;
  // Without clipping each stage is updated as its grads land: head, blocks in reverse, embedding.
  for (int64_t s = 0; s < plan_.num_stages(); ++s) order.push_back(s);
  if (options_.max_grad_norm <= 0) std::reverse(order.begin(), order.end());
  return order;
}

double Engine::grad_norm() {
  norm_->ready->synchronize();
  return norm_->norm;
}

int64_t Engine::device_bytes() const {
  auto b = [](const at::Tensor& t) {
    return t.defined() ? t.numel() * static_cast<int64_t>(t.element_size()) : int64_t{0};
  };
  int64_t n = b(grad_buf_[0]) + b(grad_buf_[1]) + b(grad_half_[0]) + b(grad_half_[1]) +
              b(tied_grad_) + b(y_tmp_) + b(final_h_) + b(final_rstd_) + b(dh_) + acts_.bytes() +
              scratch_.bytes();
  n += streamer_->device_bytes();
  for (const auto& v : ckpt_)
    for (const at::Tensor& t : v) n += b(t);
  for (const auto& r : ring_) n += b(r->t);
  for (const auto& v : kept_)
    for (const autograd::BlockActs& a : v) n += a.bytes();
  for (const auto* v : {&dres_, &ids_, &rows_index_, &rows_target_, &pos_, &cu_seqlens_})
    for (const at::Tensor& t : *v) n += b(t);
  return n;
}

int64_t Engine::host_bytes() const {
  auto b = [](const at::Tensor& t) { return t.numel() * static_cast<int64_t>(t.element_size()); };
  int64_t n = 0;
  for (const at::Tensor& t : grad_ring_) n += b(t);
  for (const auto& v : host_ckpt_)
    for (const at::Tensor& t : v) n += b(t);
  for (const auto& st : staging_)
    for (const auto* v : {&st->ids, &st->index, &st->target, &st->pos, &st->cu_seqlens})
      for (const at::Tensor& t : *v) n += b(t);
  return n;
}

void Engine::resize_micro_batches(int64_t M) {
  // Nothing in flight may still use the old buffers.
  synchronize();
  M_ = M;
  const at::Device where = dev_.torch_device();
  const at::ScalarType dtype = dev_.compute_dtype();
  const auto o = at::TensorOptions().dtype(dtype).device(where);
  const auto ol = at::TensorOptions().dtype(at::kLong).device(where);
  const int64_t N = B_ * T_, C = cfg_.hidden_size, L = cfg_.num_layers;
  for (auto& st : staging_) {
    for (auto* v : {&st->ids, &st->index, &st->target, &st->pos}) {
      v->clear();
      for (int64_t mb = 0; mb < M; ++mb) v->push_back(dev_.alloc_host(N, at::kLong));
    }
    st->cu_seqlens.clear();
    for (int64_t mb = 0; mb < M; ++mb) st->cu_seqlens.push_back(dev_.alloc_host(N + 1, at::kInt));
  }
  ids_.clear();
  rows_index_.clear();
  rows_target_.clear();
  rows_.assign(static_cast<size_t>(M), {});
  pos_.clear();
  cu_seqlens_.clear();
  positions_.assign(static_cast<size_t>(M), {});
  dres_.clear();
  for (int64_t mb = 0; mb < M; ++mb) {
    ids_.push_back(at::empty({B_, T_}, ol));
    rows_index_.push_back(at::empty({N}, ol));
    rows_target_.push_back(at::empty({N}, ol));
    pos_.push_back(at::empty({B_, T_}, ol));
    cu_seqlens_.push_back(at::empty({N + 1}, ol.dtype(at::kInt)));
    dres_.push_back(at::empty({N, C}, o));
  }
  ckpt_.clear();
  ring_.clear();
  host_ckpt_.clear();
  kept_.clear();
  if (options_.host_checkpoints) {
    for (int64_t i = 0; i < 2 * M; ++i) {
      auto r = std::make_unique<CkptBuffer>();
      r->t = at::empty({N, C}, o);
      r->copied = dev_.new_event();
      r->used = dev_.new_event();
      ring_.push_back(std::move(r));
    }
    // One pinned block per (layer, micro-batch) from a block pool.
    memory::ArenaOptions po;
    po.pin = dev_.kind() == DeviceKind::kCuda;
    const uint64_t block = static_cast<uint64_t>(N * C) * c10::elementSize(dtype);
    ckpt_pool_.reset();
    Result<std::unique_ptr<memory::BlockPool>> pool = memory::BlockPool::create(
        block, static_cast<uint64_t>(L * M), po, "activation checkpoints", /*thread_cache=*/0);
    if (!pool.ok()) throw std::runtime_error(pool.error().message);
    ckpt_pool_ = std::move(pool).value();
    if (po.pin && !ckpt_pool_->arena().pinned() && !options_.allow_pageable) {
      throw std::runtime_error("Engine: host activation checkpoints could not be page-locked (" +
                               ckpt_pool_->arena().pin_fallback_reason() +
                               "); set engine.allow_pageable=true to run with synchronous copies");
    }
    host_ckpt_.resize(static_cast<size_t>(L));
    for (auto& per_layer : host_ckpt_) {
      for (int64_t mb = 0; mb < M; ++mb) {
        void* p = ckpt_pool_->allocate();
        TORCH_CHECK(p != nullptr, "Engine: checkpoint pool exhausted");
        per_layer.push_back(at::from_blob(p, {N, C}, at::TensorOptions().dtype(dtype)));
      }
    }
  } else {
    ckpt_.resize(static_cast<size_t>(L + 1));
    for (auto& per_layer : ckpt_) {
      for (int64_t mb = 0; mb < M; ++mb) per_layer.push_back(at::empty({N, C}, o));
    }
  }
  if (options_.activations == ActivationMode::kSaved) {
    kept_.resize(static_cast<size_t>(L));
    for (auto& per_layer : kept_) {
      for (int64_t mb = 0; mb < M; ++mb) {
        per_layer.push_back(autograd::BlockActs::allocate(cfg_, B_, T_, dtype, where));
      }
    }
  }
}

int64_t Engine::stage_batch(const std::vector<at::Tensor>& ids,
                            const std::vector<at::Tensor>& targets,
                            const std::vector<at::Tensor>& positions) {
  TORCH_CHECK(!ids.empty() && ids.size() == targets.size(), "Engine: ", ids.size(),
              " id batches and ", targets.size(), " target batches");
  TORCH_CHECK(positions.empty() || positions.size() == ids.size(), "Engine: ", positions.size(),
              " position batches for ", ids.size(), " micro-batches");
  for (size_t i = 0; i < ids.size(); ++i) {
    const at::Tensor none;
    const at::Tensor& pos = positions.empty() ? none : positions[i];
    for (const at::Tensor* t : {&ids[i], &targets[i], &pos}) {
      if (t == &pos && !pos.defined()) continue;
      TORCH_CHECK(t->dim() == 2 && t->size(0) == B_ && t->size(1) == T_ &&
                      t->scalar_type() == at::kLong && t->is_cpu(),
                  "Engine: micro-batch ", i, " must be int64 [", B_, ",", T_, "] on the CPU, got ",
                  t->sizes(), " ", t->scalar_type(), " on ", t->device());
    }
  }
  const int64_t M = static_cast<int64_t>(ids.size());
  if (M != M_) resize_micro_batches(M);
  const int64_t N = B_ * T_, V = cfg_.vocab_size;
  Staging& st = *staging_[static_cast<size_t>(staging_turn_)];
  staging_turn_ ^= 1;
  // The upload from this set two steps ago is long done in steady state; wait only if not.
  if (!st.consumed->query()) st.consumed->synchronize();
  int64_t count = 0;
  for (size_t mb = 0; mb < ids.size(); ++mb) {
    const at::Tensor x = ids[mb].contiguous();
    const int64_t* xp = x.data_ptr<int64_t>();
    for (int64_t i = 0; i < N; ++i) {
      TORCH_CHECK(xp[i] >= 0 && xp[i] < V, "Engine: micro-batch ", mb, " has token id ", xp[i],
                  " at position ", i, ", outside the vocabulary [0, ", V, ")");
    }
    std::memcpy(st.ids[mb].data_ptr(), xp, static_cast<size_t>(N) * sizeof(int64_t));
    const autograd::LossRows r = autograd::find_loss_rows(targets[mb], V);
    const int64_t R = r.count();
    compute_->copy(ids_[mb].data_ptr(), st.ids[mb].data_ptr(), static_cast<size_t>(N) * 8);
    if (R > 0) {
      std::memcpy(st.index[mb].data_ptr(), r.index.data_ptr(), static_cast<size_t>(R) * 8);
      std::memcpy(st.target[mb].data_ptr(), r.target.data_ptr(), static_cast<size_t>(R) * 8);
      compute_->copy(rows_index_[mb].data_ptr(), st.index[mb].data_ptr(),
                     static_cast<size_t>(R) * 8);
      compute_->copy(rows_target_[mb].data_ptr(), st.target[mb].data_ptr(),
                     static_cast<size_t>(R) * 8);
    }
    rows_[mb] = {rows_index_[mb].narrow(0, 0, R), rows_target_[mb].narrow(0, 0, R)};
    count += R;
    positions_[mb] = {};
    if (!positions.empty() && positions[mb].defined()) {
      const at::Tensor p = positions[mb].contiguous();
      const int64_t* pp = p.data_ptr<int64_t>();
      autograd::DocumentBounds docs;
      try {
        docs = autograd::find_documents(pp, B_, T_);
      } catch (const c10::Error& e) {
        TORCH_CHECK(false, "Engine: micro-batch ", mb, ": ", e.what_without_backtrace());
      }
      if (docs.packed) {
        const int64_t S1 = static_cast<int64_t>(docs.cu_seqlens.size());
        std::memcpy(st.pos[mb].data_ptr(), pp, static_cast<size_t>(N) * 8);
        std::memcpy(st.cu_seqlens[mb].data_ptr(), docs.cu_seqlens.data(),
                    static_cast<size_t>(S1) * 4);
        compute_->copy(pos_[mb].data_ptr(), st.pos[mb].data_ptr(), static_cast<size_t>(N) * 8);
        compute_->copy(cu_seqlens_[mb].data_ptr(), st.cu_seqlens[mb].data_ptr(),
                       static_cast<size_t>(S1) * 4);
        positions_[mb] = {pos_[mb], cu_seqlens_[mb].narrow(0, 0, S1), docs.max_seqlen};
      }
    }
  }
  st.consumed->record(*compute_);
  return count;
}

void Engine::forward(bool keep_for_backward) {
  Stream& compute = *compute_;
  const int64_t L = cfg_.num_layers;
  const bool host_mode = options_.host_checkpoints;
  // Block input l of micro-batch mb in host mode lives in ring buffer (l % 2).
  auto ring = [&](int64_t l, int64_t mb) -> CkptBuffer& {
    return *ring_[static_cast<size_t>((l % 2) * M_ + mb)];
  };
  int cur = acquire_slot(0, -1);
  for (int64_t s = 0; s <= L; ++s) {            // embedding, then blocks
    const int next = acquire_slot(s + 1, cur);  // prefetch the next stage meanwhile
    const SlotViews& w = streamer_->begin_use(cur, compute);
    mark(compute, "forward_begin", s);
    const Stage& st = plan_.stages[static_cast<size_t>(s)];
    for (int64_t mb = 0; mb < M_; ++mb) {
      if (st.kind == StageKind::kEmbedding) {
        at::Tensor& out = host_mode ? ring(0, mb).t : ckpt_[0][static_cast<size_t>(mb)];
        autograd::embedding_forward(out, ids_[static_cast<size_t>(mb)], w.embedding);
        continue;
      }
      const int64_t l = st.layer;
      autograd::BlockActs& a = keep_for_backward && !kept_.empty()
                                   ? kept_[static_cast<size_t>(l)][static_cast<size_t>(mb)]
                                   : acts_;
      if (host_mode) {
        CkptBuffer& in = ring(l, mb);
        CkptBuffer& out = ring(l + 1, mb);
        compute.wait(*out.copied);  // its old content (block input l-1) is on the host
        autograd::block_forward(out.t, a, scratch_, w.block, in.t, rope_, cfg_,
                                positions_[static_cast<size_t>(mb)]);
        in.used->record(compute);
        d2h_->wait(*in.used);
        d2h_->copy(host_ckpt_[static_cast<size_t>(l)][static_cast<size_t>(mb)].data_ptr(),
                   in.t.data_ptr(), static_cast<size_t>(in.t.numel() * in.t.element_size()));
        in.copied->record(*d2h_);
      } else {
        autograd::block_forward(ckpt_[static_cast<size_t>(l + 1)][static_cast<size_t>(mb)], a,
                                scratch_, w.block,
                                ckpt_[static_cast<size_t>(l)][static_cast<size_t>(mb)], rope_, cfg_,
                                positions_[static_cast<size_t>(mb)]);
      }
    }
    streamer_->end_use(cur, compute);
    mark(compute, "forward_end", s);
    cur = next;
  }
}

void Engine::grads_to_host(int64_t stage, const at::Tensor& grads, Event& grads_free) {
  Stream& compute = *compute_;
  const int64_t n = plan_.stages[static_cast<size_t>(stage)].numel;
  ParamStore::Region& r = store_.region(stage);
  const bool bf16 = store_.options().working_copy_bf16;
  at::Tensor dst = bf16 ? r.working : r.grad;
  int ring_slot = -1;
  if (!dst.defined()) {
    // Staging ring: wait until the optimizer consumed this buffer's previous grads.
    ring_slot = grad_ring_turn_;
    grad_ring_turn_ = (grad_ring_turn_ + 1) % static_cast<int>(grad_ring_.size());
    d2h_->wait(*grad_ring_free_[static_cast<size_t>(ring_slot)]);
    dst = grad_ring_[static_cast<size_t>(ring_slot)];
  }
  host_grad_[static_cast<size_t>(stage)] = dst.data_ptr();
  const bool dp = data_parallel();
  if (store_.sharded()) {
    // Reduce-scatter: this rank's shard of the sum over ranks lands in its host grad shard (the
    // CPU backend's device memory is host memory; on CUDA the NCCL communicator copies the shard
    // out of its device scratch).
    if (ring_slot >= 0) comm_->wait(*grad_ring_free_[static_cast<size_t>(ring_slot)]);
    std::shared_ptr<Event> ready = compute_point();
    const int64_t stride = r.shard.stride, shard_numel = r.shard.numel;
    const float* in = grads.data_ptr<float>();
    // bf16 layout: summed in fp32, then rounded once into this rank's part of the working copy
    // (dead until the update), where the unsharded layout puts the whole stage's.
    kernels::bf16* rounded = nullptr;
    float* out = static_cast<float*>(dst.data_ptr());
    if (bf16) {
      rounded = reinterpret_cast<kernels::bf16*>(r.working.data_ptr()) + r.shard.begin;
      host_grad_[static_cast<size_t>(stage)] = rounded;
      out = shard_sum_.data_ptr<float>();
    }
    const std::string what =
        plan_.stages[static_cast<size_t>(stage)].name() + " grads, step " + std::to_string(step_);
    mark(*comm_, "reduce_begin", stage);
    comm_task([ready, in, out, stride, rounded, shard_numel, what](dist::Communicator& c) {
      ready->synchronize();
      c.reduce_scatter_sum(in, out, stride, dist::DType::kFloat32, what)->wait();
      if (rounded) kernels::fp32_to_bf16(out, rounded, shard_numel);
    });
    mark(*comm_, "reduce_end", stage);
    if (dev_.kind() == DeviceKind::kCpu) {
      grads_free.record(*comm_);
      grads_on_host_[static_cast<size_t>(stage)]->record(*comm_);
    } else {
      // Device events are recorded on a device stream, once the collective queue is past.
      Event& done = *comm_reduced_[grad_buffer_index(grads)];
      done.record(*comm_);
      d2h_->wait(done);
      grads_free.record(*d2h_);
      grads_on_host_[static_cast<size_t>(stage)]->record(*d2h_);
    }
  } else if (dp && bf16 && dev_.kind() == DeviceKind::kCpu) {
    // Summed over the ranks in fp32, then rounded to bf16 once, both on the collective queue so
    // that the next stage's backward runs meanwhile.
    at::Tensor g = grads;
    reduce_grads(stage, grads, [dst, g, n] { dst.narrow(0, 0, n).copy_(g.narrow(0, 0, n)); });
    grads_free.record(*comm_);
    grads_on_host_[static_cast<size_t>(stage)]->record(*comm_);
  } else if (bf16 && dev_.kind() == DeviceKind::kCpu) {
    // The device is host memory: the one rounding of this step's fp32 grads to bf16 goes
    // straight into the store's working copy, which nothing reads until this stage's update.
    dst.narrow(0, 0, n).copy_(grads.narrow(0, 0, n));
    grads_free.record(compute);
    grads_on_host_[static_cast<size_t>(stage)]->record(compute);
  } else {
    at::Tensor src = grads;
    Event* src_free = &grads_free;
    Event* reduced = dp ? &reduce_grads(stage, grads, {}) : nullptr;
    if (bf16) {
      // CUDA: the rounding waits for the sum (the compute stream stalls for it; the copy and the
      // sum of the next stage's grads still overlap).
      if (reduced) compute.wait(*reduced);
      // The one rounding of this step's fp32 grads to bf16, on the device, into a staging buffer;
      // the fp32 buffer is free again as soon as that is done.
      const int h = half_turn_;
      half_turn_ ^= 1;
      compute.wait(*half_free_[h]);
      src = grad_half_[h];
      src.narrow(0, 0, n).copy_(grads.narrow(0, 0, n));
      grads_free.record(compute);
      src_free = half_free_[h].get();
    }
    grads_ready_->record(compute);
    d2h_->wait(*grads_ready_);
    if (reduced && !bf16) d2h_->wait(*reduced);
    mark(*d2h_, "grads_begin", stage);
    d2h_->copy(dst.data_ptr(), src.data_ptr(),
               static_cast<size_t>(n * static_cast<int64_t>(dst.element_size())));
    mark(*d2h_, "grads_end", stage);
    grads_on_host_[static_cast<size_t>(stage)]->record(*d2h_);
    src_free->record(*d2h_);
  }
  schedule_sum_of_squares(stage);
  if (options_.max_grad_norm <= 0) schedule_update(stage);
  if (ring_slot >= 0) grad_ring_free_[static_cast<size_t>(ring_slot)]->record(*optimizer_);
}

int Engine::take_grad_buffer() {
  const int t = grad_turn_;
  grad_turn_ ^= 1;
  compute_->wait(*grad_free_[t]);
  grad_buf_[t].zero_();
  return t;
}

std::shared_ptr<Engine::LossSlot> Engine::next_loss_slot() {
  std::shared_ptr<LossSlot> slot = loss_slots_[static_cast<size_t>(loss_turn_)];
  loss_turn_ = (loss_turn_ + 1) % kLossSlots;
  slot->generation = ++loss_generation_;
  return slot;
}

void Engine::schedule_sum_of_squares(int64_t stage) {
  const void* g = host_grad_[static_cast<size_t>(stage)];
  if (store_.sharded()) {
    // The partials of this rank's shard; the norm task adds every rank's up in block order.
    optimizer_->host_task([this, stage, g] {
      grads_on_host_[static_cast<size_t>(stage)]->synchronize();
      std::vector<double>& p = partials_[static_cast<size_t>(stage)];
      std::fill(p.begin(), p.end(), 0.0);
      const int64_t n = store_.region(stage).shard.numel;
      optimizer_arena_->execute([&] {
        if (store_.options().working_copy_bf16) {
          kernels::sum_of_squares_partials(static_cast<const kernels::bf16*>(g), n, p.data());
        } else {
          kernels::sum_of_squares_partials(static_cast<const float*>(g), n, p.data());
        }
      });
    });
    return;
  }
  optimizer_->host_task([this, stage, g] {
    grads_on_host_[static_cast<size_t>(stage)]->synchronize();
    const int64_t n = plan_.stages[static_cast<size_t>(stage)].numel;
    sum_sq_[static_cast<size_t>(stage)] = optimizer_arena_->execute([&] {
      return store_.options().working_copy_bf16
                 ? kernels::sum_of_squares(static_cast<const kernels::bf16*>(g), n)
                 : kernels::sum_of_squares(static_cast<const float*>(g), n);
    });
  });
}

void Engine::schedule_update(int64_t stage) {
  const kernels::AdamWConfig cfg = options_.adamw;
  const int64_t step = step_;
  const void* grad = host_grad_[static_cast<size_t>(stage)];
  std::shared_ptr<NormRecord> norm = norm_;
  mark(*optimizer_, "update_begin", stage);
  optimizer_->host_task([this, stage, cfg, step, grad, norm] {
    if (update_gate_) update_gate_(stage);
    const bool bf16 = store_.options().working_copy_bf16;
    if (norm->skip) {
      // Nothing changes. In the bf16 layout this stage's grads sit where its weights were:
      // write the weights back from the master before anything loads them.
      if (bf16) optimizer_arena_->execute([&] { store_.refresh_working_copy(stage); });
      return;
    }
    ParamStore::Region& r = store_.region(stage);
    // Sharded: this rank's shard only (the others arrive through the all-gather).
    const int64_t n = r.shard.numel;
    if (n == 0) return;
    // The bf16 layout's sharded master is the shard itself.
    float* p = r.master.data_ptr<float>() + (store_.masters_sharded() ? 0 : r.shard.begin);
    float* m = r.m.data_ptr<float>();
    float* v = r.v.data_ptr<float>();
    optimizer_arena_->execute([&] {
      if (!bf16) {
        kernels::adamw_update(p, m, v, static_cast<const float*>(grad), n, cfg, step,
                              norm->clip_coef, nullptr);
      } else {
        // Grads arrived in the working region; each grad is read before its new weight is
        // written.
        auto* w = reinterpret_cast<kernels::bf16*>(r.working.data_ptr()) + r.shard.begin;
        kernels::adamw_update(p, m, v, w, n, cfg, step, norm->clip_coef, w);
      }
    });
  });
  mark(*optimizer_, "update_end", stage);
  update_done_[static_cast<size_t>(stage)]->record(*optimizer_);
}

void Engine::finish_norm(NormRecord& norm, double total) {
  norm.norm = std::sqrt(total);
  if (options_.max_grad_norm > 0) {
    // torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), clamped to 1.
    norm.clip_coef = static_cast<float>(std::min(1.0, options_.max_grad_norm / (norm.norm + 1e-6)));
    norm.skip = options_.skip_nonfinite && !std::isfinite(norm.norm);
    if (norm.skip) skipped_steps_.fetch_add(1);
  }
}

void Engine::schedule_norm() {
  std::shared_ptr<NormRecord> norm = norm_;
  if (!store_.sharded()) {
    optimizer_->host_task([this, norm] {
      double total = 0;
      for (double s : sum_sq_) total += s;  // stage order: deterministic
      finish_norm(*norm, total);
    });
    norm->ready->record(*optimizer_);
    return;
  }
  // Every rank's partials of every stage, gathered, then added in stage and block order: the
  // same additions as one process summing whole stages, so the same bits.
  std::unique_ptr<Event> partials_done = make_host_event();
  partials_done->record(*optimizer_);
  comm_->wait(*partials_done);
  const std::string what = "grad-norm partials, step " + std::to_string(step_);
  comm_task([this, norm, what](dist::Communicator& c) {
    int64_t per_rank = 0;
    for (const std::vector<double>& p : partials_) per_rank += static_cast<int64_t>(p.size());
    std::vector<double> mine, all(static_cast<size_t>(per_rank * c.world_size()));
    for (const std::vector<double>& p : partials_) mine.insert(mine.end(), p.begin(), p.end());
    c.all_gather(mine.data(), all.data(), per_rank, dist::DType::kFloat64, what)->wait();
    double total = 0;
    int64_t offset = 0;  // of this stage's partials within one rank's part
    for (const std::vector<double>& p : partials_) {
      double stage_sum = 0;
      for (int r = 0; r < c.world_size(); ++r) {
        const double* q = all.data() + r * per_rank + offset;
        for (size_t k = 0; k < p.size(); ++k) stage_sum += q[k];
      }
      total += stage_sum;
      offset += static_cast<int64_t>(p.size());
    }
    finish_norm(*norm, total);
  });
  norm->ready->record(*comm_);
}

void Engine::schedule_gather(int64_t stage) {
  ParamStore::Region& r = store_.region(stage);
  comm_->wait(*update_done_[static_cast<size_t>(stage)]);
  // The weights the slots load: the fp32 masters, or the bf16 working copy.
  char* padded = static_cast<char*>(r.gathered.data_ptr());
  const int64_t stride = r.shard.stride;
  const int64_t bytes = stride * static_cast<int64_t>(r.gathered.element_size());
  const dist::DType dtype =
      store_.options().working_copy_bf16 ? dist::DType::kBFloat16 : dist::DType::kFloat32;
  const std::string what =
      plan_.stages[static_cast<size_t>(stage)].name() + " weights, step " + std::to_string(step_);
  comm_task([padded, bytes, stride, dtype, what](dist::Communicator& c) {
    // In place: this rank's shard is already where the gather puts it.
    c.all_gather(padded + c.rank() * bytes, padded, stride, dtype, what)->wait();
  });
  gathered_[static_cast<size_t>(stage)]->record(*comm_);
}

void Engine::head(int slot_index, bool backward, double grad_scale, LossSlot& loss) {
  Stream& compute = *compute_;
  const SlotViews& w = streamer_->begin_use(slot_index, compute);
  mark(compute, "head_begin", plan_.head_index());
  const int64_t L = cfg_.num_layers, C = cfg_.hidden_size;
  int turn = -1;
  at::Tensor g_norm, g_lm;
  if (backward) {
    turn = take_grad_buffer();
    at::Tensor& g = grad_buf_[turn];
    g_norm = g.narrow(0, 0, C);
    if (plan_.tied) {
      compute.wait(*tied_free_);
      tied_grad_.zero_();
      g_lm = tied_grad_.view({plan_.vocab, plan_.hidden});
    } else {
      g_lm = g.narrow(0, plan_.head_lm_head_offset, plan_.vocab * plan_.hidden)
                 .view({plan_.vocab, plan_.hidden});
    }
  }
  loss_dev_.zero_();
  for (int64_t mb = 0; mb < M_; ++mb) {
    at::Tensor& x = options_.host_checkpoints
                        ? ring_[static_cast<size_t>((L % 2) * M_ + mb)]->t
                        : ckpt_[static_cast<size_t>(L)][static_cast<size_t>(mb)];
    const autograd::LossRows& rows = rows_[static_cast<size_t>(mb)];
    autograd::rmsnorm_forward(final_h_, final_rstd_, x, w.final_norm, cfg_.rms_norm_eps);
    if (backward) {
      autograd::cross_entropy_forward_backward(loss_dev_, dh_, g_lm, final_h_, w.lm_head, rows,
                                               grad_scale, ce_chunk_rows_);
      at::Tensor& dres = dres_[static_cast<size_t>(mb)];
      dres.zero_();
      autograd::rmsnorm_backward(dres, g_norm, dh_, x, w.final_norm, final_rstd_);
    } else {
      autograd::cross_entropy_forward(loss_dev_, final_h_, w.lm_head, rows, ce_chunk_rows_);
    }
    if (options_.host_checkpoints)
      ring_[static_cast<size_t>((L % 2) * M_ + mb)]->used->record(compute);
  }
  compute.copy(loss.host.data_ptr(), loss_dev_.data_ptr(), sizeof(double));
  loss.ready->record(compute);
  loss.summed = false;
  if (backward && data_parallel()) reduce_loss(loss);
  streamer_->end_use(slot_index, compute);
  mark(compute, "head_end", plan_.head_index());
  if (backward) grads_to_host(plan_.head_index(), grad_buf_[turn], *grad_free_[turn]);
}

void Engine::backward(int head_slot) {
  Stream& compute = *compute_;
  const int64_t L = cfg_.num_layers;
  const bool host_mode = options_.host_checkpoints;
  const bool keep = options_.activations == ActivationMode::kSaved;
  auto ring = [&](int64_t l, int64_t mb) -> CkptBuffer& {
    return *ring_[static_cast<size_t>((l % 2) * M_ + mb)];
  };
  // Brings block input l of every micro-batch back from the host (ring buffer l % 2).
  auto fetch_checkpoint = [&](int64_t l) {
    for (int64_t mb = 0; mb < M_; ++mb) {
      CkptBuffer& b = ring(l, mb);
      h2d_->wait(*b.used);
      h2d_->copy(b.t.data_ptr(),
                 host_ckpt_[static_cast<size_t>(l)][static_cast<size_t>(mb)].data_ptr(),
                 static_cast<size_t>(b.t.numel() * b.t.element_size()));
      b.copied->record(*h2d_);
    }
  };
  int cur = head_slot;
  for (int64_t l = L - 1; l >= 0; --l) {
    const int64_t stage = plan_.block_index(l);
    const int this_slot = acquire_slot(stage, cur);
    // Prefetch: the next block's weights and (host mode) its checkpoints. Block input L-1 is
    // still on the device from the forward.
    if (l > 0) acquire_slot(plan_.block_index(l - 1), this_slot);
    if (host_mode && l > 0) fetch_checkpoint(l - 1);
    cur = this_slot;
    const model::BlockParams& w = streamer_->begin_use(cur, compute).block;
    mark(compute, "backward_begin", stage);
    const int turn = take_grad_buffer();
    model::BlockParams gw = model::bind_block_params(grad_buf_[turn], plan_.block);
    for (int64_t mb = 0; mb < M_; ++mb) {
      const autograd::TokenPositions& positions = positions_[static_cast<size_t>(mb)];
      autograd::BlockActs* a = &acts_;
      if (keep) {
        a = &kept_[static_cast<size_t>(l)][static_cast<size_t>(mb)];
      } else if (host_mode) {
        CkptBuffer& in = ring(l, mb);
        compute.wait(*in.copied);
        autograd::block_forward(y_tmp_, acts_, scratch_, w, in.t, rope_, cfg_, positions);
      } else {
        autograd::block_forward(y_tmp_, acts_, scratch_, w,
                                ckpt_[static_cast<size_t>(l)][static_cast<size_t>(mb)], rope_, cfg_,
                                positions);
      }
      autograd::block_backward(dres_[static_cast<size_t>(mb)], gw, *a, scratch_, w, rope_, cfg_,
                               positions);
      if (host_mode) ring(l, mb).used->record(compute);
    }
    streamer_->end_use(cur, compute);
    mark(compute, "backward_end", stage);
    grads_to_host(stage, grad_buf_[turn], *grad_free_[turn]);
  }
  // Embedding: needs no weights, only the ids and the residual grads.
  at::Tensor ge;
  Event* ge_free;
  if (plan_.tied) {
    ge = tied_grad_;  // already holds the head's contribution
    ge_free = tied_free_.get();
  } else {
    const int turn = take_grad_buffer();
    ge = grad_buf_[turn];
    ge_free = grad_free_[turn].get();
  }
  at::Tensor gv = ge.narrow(0, 0, plan_.vocab * plan_.hidden).view({plan_.vocab, plan_.hidden});
  for (int64_t mb = 0; mb < M_; ++mb) {
    autograd::embedding_backward(gv, dres_[static_cast<size_t>(mb)], ids_[static_cast<size_t>(mb)]);
  }
  grads_to_host(0, ge, *ge_free);
}

StepResult Engine::train_step(const std::vector<at::Tensor>& ids,
                              const std::vector<at::Tensor>& targets,
                              const std::vector<at::Tensor>& positions, int64_t global_targets) {
  comm_state_->rethrow();
  const std::unique_ptr<StreamScope> scope = dev_.make_current(*compute_);
  int64_t count = stage_batch(ids, targets, positions);
  if (data_parallel()) {
    if (global_targets <= 0) {
      int64_t sum = count;
      collective([&](dist::Communicator& c) {
        c.all_reduce_sum(&sum, 1, dist::DType::kInt64,
                         "target count, step " + std::to_string(step_ + 1))
            ->wait();
      });
      global_targets = sum;
    }
    TORCH_CHECK(global_targets >= count, "Engine::train_step: global_targets ", global_targets,
                " is below this rank's ", count, " targets");
    count = global_targets;
  }
  TORCH_CHECK(count > 0, "Engine::train_step: no target in any micro-batch (all ignored)");
  ++step_;
  streamer_->invalidate();  // the store changed since they were loaded
  norm_ = std::make_shared<NormRecord>();
  const double grad_scale = 1.0 / double(count);

  forward(/*keep_for_backward=*/true);
  const int head_slot = acquire_slot(plan_.head_index(), -1);
  std::shared_ptr<LossSlot> loss = next_loss_slot();
  head(head_slot, /*backward=*/true, grad_scale, *loss);
  backward(head_slot);
  schedule_norm();
  if (options_.max_grad_norm > 0) {
    // Exact clipping: every update waits for the norm; the next forward waits per stage.
    if (store_.sharded()) optimizer_->wait(*norm_->ready);  // reached on the collective queue
    for (int64_t s = 0; s < plan_.num_stages(); ++s) schedule_update(s);
  }
  if (store_.sharded()) {
    // Each stage's new weights from every rank's shard, in the order the updates finish.
    for (int64_t s : update_order()) schedule_gather(s);
  }
  auto rec = std::make_shared<StepResult::Record>();
  rec->step = step_;
  rec->num_targets = count;
  rec->loss_slot = loss;
  rec->loss_generation = loss->generation;
  rec->norm = norm_;
  rec->comm = comm_state_;
  return StepResult(std::move(rec));
}

autograd::CrossEntropyResult Engine::evaluate(const std::vector<at::Tensor>& ids,
                                              const std::vector<at::Tensor>& targets,
                                              const std::vector<at::Tensor>& positions) {
  const std::unique_ptr<StreamScope> scope = dev_.make_current(*compute_);
  const int64_t count = stage_batch(ids, targets, positions);
  streamer_->invalidate();
  forward(/*keep_for_backward=*/false);
  const int head_slot = acquire_slot(plan_.head_index(), -1);
  std::shared_ptr<LossSlot> loss = next_loss_slot();
  head(head_slot, /*backward=*/false, 0.0, *loss);
  loss->ready->synchronize();
  return {loss->host.data_ptr<double>()[0], count};
}

}  // namespace ramstream::pipeline
