#include "pipeline/engine.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <utility>

#include "kernels/reduce.h"

namespace ramstream::pipeline {

using autograd::ActivationMode;

struct Engine::Slot {
  at::Tensor buf;  // [plan.slot_numel] in the compute dtype, on the device
  int64_t stage = -1;
  uint64_t last_use = 0;
  std::unique_ptr<Event> loaded;  // h2d: the copy of `stage` finished
  std::unique_ptr<Event> idle;    // compute: done reading the slot
};

// A device buffer for one micro-batch's block input in host-checkpoint mode.
struct Engine::CkptBuffer {
  at::Tensor t;                   // [N,C]
  std::unique_ptr<Event> copied;  // d2h (forward) or h2d (backward) copy finished
  std::unique_ptr<Event> used;    // compute finished with the content
};

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
  const bool cuda = dev_.kind() == DeviceKind::kCuda;
  TORCH_CHECK(store_.options().working_copy_bf16 == cuda, "Engine: a ", cuda ? "CUDA" : "CPU",
              " device needs a ParamStore with working_copy_bf16=", cuda ? "true" : "false");
  const at::ScalarType dtype = dev_.compute_dtype();
  const at::Device where = dev_.torch_device();
  h2d_ = dev_.new_stream("h2d");
  d2h_ = dev_.new_stream("d2h");
  optimizer_ = make_host_worker("optimizer", options_.optimizer_queue);
  for (int k = 0; k < options_.num_slots; ++k) {
    auto s = std::make_unique<Slot>();
    s->buf = dev_.alloc(plan_.slot_numel, dtype);
    s->loaded = dev_.new_event();
    s->idle = dev_.new_event();
    slots_.push_back(std::move(s));
  }
  for (int g = 0; g < 2; ++g) {
    grad_buf_[g] = dev_.alloc(plan_.slot_numel, dtype);
    grad_ready_[g] = dev_.new_event();
    grad_free_[g] = dev_.new_event();
  }
  if (plan_.tied) tied_grad_ = dev_.alloc(plan_.vocab * plan_.hidden, dtype);
  tied_ready_ = dev_.new_event();
  tied_free_ = dev_.new_event();
  for (int64_t s = 0; s < plan_.num_stages(); ++s) {
    grads_on_host_.push_back(dev_.new_event());
    update_done_.push_back(make_host_event());
  }
  sum_sq_.assign(static_cast<size_t>(plan_.num_stages()), 0.0);
  host_grad_.assign(static_cast<size_t>(plan_.num_stages()), nullptr);
  const bool grad_regions = cuda || store_.options().grad_regions;
  TORCH_CHECK(grad_regions || options_.max_grad_norm <= 0,
              "Engine: exact global-norm clipping needs every grad before any update: use a "
              "ParamStore with grad_regions=true, or max_grad_norm=0");
  if (!grad_regions) {
    for (int r = 0; r < 2; ++r) {
      grad_ring_.push_back(at::empty({plan_.slot_numel}, at::kFloat));
      grad_ring_free_.push_back(make_host_event());
    }
  }
  norm_ready_ = make_host_event();

  const int64_t N = B_ * T_, C = cfg_.hidden_size;
  const auto o = at::TensorOptions().dtype(dtype).device(where);
  acts_ = autograd::BlockActs::allocate(cfg_, B_, T_, dtype, where);
  scratch_ = autograd::BlockScratch::allocate(cfg_, B_, T_, dtype, where);
  rope_ = autograd::make_rope_tables(cfg_, T_, dtype, where);
  y_tmp_ = at::empty({N, C}, o);
  final_h_ = at::empty({N, C}, o);
  final_rstd_ = at::empty({N}, o.dtype(autograd::acc_dtype(dtype)));
  dh_ = at::empty({N, C}, o);
  ce_chunk_rows_ = autograd::cross_entropy_chunk_rows(cfg_.vocab_size);
}

Engine::~Engine() {
  synchronize();
}

void Engine::mark(Stream& stream, const char* what, int64_t stage) {
  if (!options_.record_timeline) return;
  const std::string name = stream.name();
  stream.host_task([this, name, what, stage] {
    const double t =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0_).count();
    std::lock_guard<std::mutex> lock(timeline_mu_);
    timeline_.push_back({name, what, stage, t});
  });
}

std::vector<TimelineEvent> Engine::timeline() {
  std::lock_guard<std::mutex> lock(timeline_mu_);
  std::vector<TimelineEvent> t = timeline_;
  std::stable_sort(t.begin(), t.end(),
                   [](const TimelineEvent& a, const TimelineEvent& b) { return a.t_us < b.t_us; });
  return t;
}

void Engine::clear_timeline() {
  std::lock_guard<std::mutex> lock(timeline_mu_);
  timeline_.clear();
}

double load_compute_overlap(const std::vector<TimelineEvent>& timeline) {
  // Pair *_begin/*_end per (stream, stage) into intervals.
  auto intervals = [&](const std::string& stream) {
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
  };
  const auto loads = intervals("h2d");
  const auto computes = intervals("compute");
  double load_time = 0, overlapped = 0;
  for (const auto& l : loads) {
    load_time += l.second - l.first;
    for (const auto& c : computes) {
      overlapped += std::max(0.0, std::min(l.second, c.second) - std::max(l.first, c.first));
    }
  }
  return load_time > 0 ? std::min(1.0, overlapped / load_time) : 0.0;
}

void Engine::synchronize() {
  dev_.compute_stream().synchronize();
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
  norm_ready_->synchronize();
  return grad_norm_;
}

int64_t Engine::device_bytes() const {
  auto b = [](const at::Tensor& t) {
    return t.defined() ? t.numel() * static_cast<int64_t>(t.element_size()) : int64_t{0};
  };
  int64_t n = b(grad_buf_[0]) + b(grad_buf_[1]) + b(tied_grad_) + b(y_tmp_) + b(final_h_) +
              b(final_rstd_) + b(dh_) + acts_.bytes() + scratch_.bytes();
  for (const auto& s : slots_) n += b(s->buf);
  for (const auto& v : ckpt_)
    for (const at::Tensor& t : v) n += b(t);
  for (const auto& r : ring_) n += b(r->t);
  for (const auto& v : kept_)
    for (const autograd::BlockActs& a : v) n += a.bytes();
  for (const at::Tensor& t : dres_) n += b(t);
  return n;
}

int64_t Engine::host_bytes() const {
  int64_t n = 0;
  for (const at::Tensor& t : grad_ring_) n += t.numel() * static_cast<int64_t>(t.element_size());
  for (const auto& v : host_ckpt_) {
    for (const at::Tensor& t : v) n += t.numel() * static_cast<int64_t>(t.element_size());
  }
  return n;
}

void Engine::check_batch(const std::vector<at::Tensor>& ids,
                         const std::vector<at::Tensor>& targets) {
  TORCH_CHECK(!ids.empty() && ids.size() == targets.size(), "Engine: ", ids.size(),
              " id batches and ", targets.size(), " target batches");
  for (size_t i = 0; i < ids.size(); ++i) {
    for (const at::Tensor* t : {&ids[i], &targets[i]}) {
      TORCH_CHECK(
          t->dim() == 2 && t->size(0) == B_ && t->size(1) == T_ && t->scalar_type() == at::kLong,
          "Engine: micro-batch ", i, " must be int64 [", B_, ",", T_, "], got ", t->sizes(), " ",
          t->scalar_type());
    }
  }
  const int64_t M = static_cast<int64_t>(ids.size());
  const at::Device where = dev_.torch_device();
  const at::ScalarType dtype = dev_.compute_dtype();
  const auto o = at::TensorOptions().dtype(dtype).device(where);
  const int64_t N = B_ * T_, C = cfg_.hidden_size, L = cfg_.num_layers;
  ids_.clear();
  targets_.clear();
  for (int64_t mb = 0; mb < M; ++mb) {
    ids_.push_back(ids[static_cast<size_t>(mb)].to(where));
    targets_.push_back(targets[static_cast<size_t>(mb)].reshape({-1}).to(where));
  }
  if (M == M_) return;
  // Buffers that scale with the number of micro-batches; nothing in flight may still use the old
  // ones.
  synchronize();
  M_ = M;
  dres_.clear();
  for (int64_t mb = 0; mb < M; ++mb) dres_.push_back(at::empty({N, C}, o));
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

int Engine::acquire_slot(int64_t stage, int busy_slot) {
  for (int k = 0; k < static_cast<int>(slots_.size()); ++k) {
    if (slots_[k]->stage == stage) {
      slots_[k]->last_use = ++use_clock_;
      return k;
    }
  }
  int victim = -1;
  for (int k = 0; k < static_cast<int>(slots_.size()); ++k) {
    if (k == busy_slot) continue;
    if (victim < 0 || slots_[k]->last_use < slots_[victim]->last_use) victim = k;
  }
  Slot& s = *slots_[static_cast<size_t>(victim)];
  // The previous step's update of this stage must be in the store before we copy it.
  update_done_[static_cast<size_t>(stage)]->synchronize();
  h2d_->wait(*s.idle);
  const Stage& st = plan_.stages[static_cast<size_t>(stage)];
  const bool bf16 = store_.options().working_copy_bf16;
  mark(*h2d_, "load_begin", stage);
  auto source = [&](int64_t i) -> const at::Tensor& {
    ParamStore::Region& r = store_.region(i);
    return bf16 ? r.working : r.master;
  };
  const at::Tensor& src = source(stage);
  const size_t elem = src.element_size();
  h2d_->copy(s.buf.data_ptr(), src.data_ptr(), static_cast<size_t>(st.numel) * elem);
  weight_bytes_loaded_ += st.numel * static_cast<int64_t>(elem);
  if (st.kind == StageKind::kHead && plan_.tied) {
    // The head reads the embedding matrix as its LM head.
    update_done_[0]->synchronize();
    const int64_t n = plan_.vocab * plan_.hidden;
    h2d_->copy(static_cast<char*>(s.buf.data_ptr()) + plan_.head_lm_head_offset * elem,
               source(0).data_ptr(), static_cast<size_t>(n) * elem);
    weight_bytes_loaded_ += n * static_cast<int64_t>(elem);
  }
  mark(*h2d_, "load_end", stage);
  s.loaded->record(*h2d_);
  s.stage = stage;
  s.last_use = ++use_clock_;
  return victim;
}

at::Tensor& Engine::device_checkpoint(int64_t l, int64_t mb) {
  return ckpt_[static_cast<size_t>(l)][static_cast<size_t>(mb)];
}

void Engine::forward(bool keep_for_backward) {
  Stream& compute = dev_.compute_stream();
  const int64_t L = cfg_.num_layers;
  const bool host_mode = options_.host_checkpoints;
  // Block input l of micro-batch mb in host mode lives in ring buffer (l % 2).
  auto ring = [&](int64_t l, int64_t mb) -> CkptBuffer& {
    return *ring_[static_cast<size_t>((l % 2) * M_ + mb)];
  };
  int cur = acquire_slot(0, -1);
  for (int64_t s = 0; s <= L; ++s) {            // embedding, then blocks
    const int next = acquire_slot(s + 1, cur);  // prefetch the next stage meanwhile
    Slot& slot = *slots_[static_cast<size_t>(cur)];
    compute.wait(*slot.loaded);
    mark(compute, "forward_begin", s);
    const Stage& st = plan_.stages[static_cast<size_t>(s)];
    const SlotViews w = bind_slot(slot.buf, st, plan_);
    for (int64_t mb = 0; mb < M_; ++mb) {
      if (st.kind == StageKind::kEmbedding) {
        at::Tensor& out = host_mode ? ring(0, mb).t : device_checkpoint(0, mb);
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
        autograd::block_forward(out.t, a, scratch_, w.block, in.t, rope_, cfg_);
        in.used->record(compute);
        d2h_->wait(*in.used);
        d2h_->copy(host_ckpt_[static_cast<size_t>(l)][static_cast<size_t>(mb)].data_ptr(),
                   in.t.data_ptr(), static_cast<size_t>(in.t.numel() * in.t.element_size()));
        in.copied->record(*d2h_);
      } else {
        autograd::block_forward(device_checkpoint(l + 1, mb), a, scratch_, w.block,
                                device_checkpoint(l, mb), rope_, cfg_);
      }
    }
    slot.idle->record(compute);
    mark(compute, "forward_end", s);
    cur = next;
  }
}

void Engine::grads_to_host(int64_t stage, const at::Tensor& grads) {
  Stream& compute = dev_.compute_stream();
  const Stage& st = plan_.stages[static_cast<size_t>(stage)];
  ParamStore::Region& r = store_.region(stage);
  at::Tensor dst = store_.options().working_copy_bf16 ? r.working : r.grad;
  int ring_slot = -1;
  if (!dst.defined()) {
    // Staging ring: wait until the optimizer consumed this buffer's previous grads.
    ring_slot = grad_ring_turn_;
    grad_ring_turn_ = (grad_ring_turn_ + 1) % static_cast<int>(grad_ring_.size());
    d2h_->wait(*grad_ring_free_[static_cast<size_t>(ring_slot)]);
    dst = grad_ring_[static_cast<size_t>(ring_slot)];
  }
  host_grad_[static_cast<size_t>(stage)] = dst.data_ptr();
  const bool tied_source = grads.is_same(tied_grad_);
  Event& ready = tied_source ? *tied_ready_ : *grad_ready_[grad_turn_];
  ready.record(compute);
  d2h_->wait(ready);
  mark(*d2h_, "grads_begin", stage);
  d2h_->copy(dst.data_ptr(), grads.data_ptr(),
             static_cast<size_t>(st.numel * static_cast<int64_t>(dst.element_size())));
  mark(*d2h_, "grads_end", stage);
  grads_on_host_[static_cast<size_t>(stage)]->record(*d2h_);
  if (tied_source) {
    tied_free_->record(*d2h_);
  } else {
    grad_free_[grad_turn_]->record(*d2h_);
    grad_turn_ ^= 1;
  }
  schedule_sum_of_squares(stage);
  if (options_.max_grad_norm <= 0) schedule_update(stage);
  if (ring_slot >= 0) grad_ring_free_[static_cast<size_t>(ring_slot)]->record(*optimizer_);
}

// The next device grad buffer, zeroed once its previous content is on the host.
at::Tensor& Engine::take_grad_buffer() {
  dev_.compute_stream().wait(*grad_free_[grad_turn_]);
  grad_buf_[grad_turn_].zero_();
  return grad_buf_[grad_turn_];
}

void Engine::schedule_sum_of_squares(int64_t stage) {
  const void* g = host_grad_[static_cast<size_t>(stage)];
  optimizer_->host_task([this, stage, g] {
    grads_on_host_[static_cast<size_t>(stage)]->synchronize();
    const int64_t n = plan_.stages[static_cast<size_t>(stage)].numel;
    sum_sq_[static_cast<size_t>(stage)] =
        store_.options().working_copy_bf16
            ? kernels::sum_of_squares(static_cast<const kernels::bf16*>(g), n)
            : kernels::sum_of_squares(static_cast<const float*>(g), n);
  });
}

void Engine::schedule_update(int64_t stage) {
  const kernels::AdamWConfig cfg = options_.adamw;
  const int64_t step = step_;
  const void* grad = host_grad_[static_cast<size_t>(stage)];
  mark(*optimizer_, "update_begin", stage);
  optimizer_->host_task([this, stage, cfg, step, grad] {
    if (update_gate_) update_gate_(stage);
    if (options_.max_grad_norm > 0 && options_.skip_nonfinite && !std::isfinite(grad_norm_)) return;
    ParamStore::Region& r = store_.region(stage);
    const int64_t n = plan_.stages[static_cast<size_t>(stage)].numel;
    float* p = r.master.data_ptr<float>();
    float* m = r.m.data_ptr<float>();
    float* v = r.v.data_ptr<float>();
    if (!store_.options().working_copy_bf16) {
      kernels::adamw_update(p, m, v, static_cast<const float*>(grad), n, cfg, step, clip_coef_,
                            nullptr);
    } else {
      // Grads arrived in the working region; each grad is read before its new weight is written.
      auto* w = reinterpret_cast<kernels::bf16*>(r.working.data_ptr());
      kernels::adamw_update(p, m, v, w, n, cfg, step, clip_coef_, w);
    }
  });
  mark(*optimizer_, "update_end", stage);
  update_done_[static_cast<size_t>(stage)]->record(*optimizer_);
}

void Engine::schedule_norm() {
  optimizer_->host_task([this] {
    double total = 0;
    for (double s : sum_sq_) total += s;  // stage order: deterministic
    grad_norm_ = std::sqrt(total);
    clip_coef_ = 1.0f;
    if (options_.max_grad_norm > 0) {
      // torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), clamped to 1.
      clip_coef_ = static_cast<float>(std::min(1.0, options_.max_grad_norm / (grad_norm_ + 1e-6)));
    }
  });
  norm_ready_->record(*optimizer_);
}

void Engine::head(int slot_index, bool backward, double grad_scale,
                  autograd::CrossEntropyResult* result) {
  Stream& compute = dev_.compute_stream();
  Slot& slot = *slots_[static_cast<size_t>(slot_index)];
  compute.wait(*slot.loaded);
  mark(compute, "head_begin", plan_.head_index());
  const int64_t L = cfg_.num_layers, C = cfg_.hidden_size;
  const SlotViews w = bind_slot(slot.buf, plan_.stages.back(), plan_);
  at::Tensor* g = nullptr;
  at::Tensor g_norm, g_lm;
  if (backward) {
    g = &take_grad_buffer();
    g_norm = g->narrow(0, 0, C);
    if (plan_.tied) {
      compute.wait(*tied_free_);
      tied_grad_.zero_();
      g_lm = tied_grad_.view({plan_.vocab, plan_.hidden});
    } else {
      g_lm = g->narrow(0, plan_.head_lm_head_offset, plan_.vocab * plan_.hidden)
                 .view({plan_.vocab, plan_.hidden});
    }
  }
  for (int64_t mb = 0; mb < M_; ++mb) {
    at::Tensor& x = options_.host_checkpoints ? ring_[static_cast<size_t>((L % 2) * M_ + mb)]->t
                                              : device_checkpoint(L, mb);
    const at::Tensor& tg = targets_[static_cast<size_t>(mb)];
    autograd::rmsnorm_forward(final_h_, final_rstd_, x, w.final_norm, cfg_.rms_norm_eps);
    autograd::CrossEntropyResult r;
    if (backward) {
      r = autograd::chunked_cross_entropy_forward_backward(dh_, g_lm, final_h_, w.lm_head, tg,
                                                           grad_scale, ce_chunk_rows_);
      at::Tensor& dres = dres_[static_cast<size_t>(mb)];
      dres.zero_();
      autograd::rmsnorm_backward(dres, g_norm, dh_, x, w.final_norm, final_rstd_);
    } else {
      r = autograd::chunked_cross_entropy_forward(final_h_, w.lm_head, tg, ce_chunk_rows_);
    }
    result->loss_sum += r.loss_sum;
    result->num_targets += r.num_targets;
    if (options_.host_checkpoints)
      ring_[static_cast<size_t>((L % 2) * M_ + mb)]->used->record(compute);
  }
  slot.idle->record(compute);
  mark(compute, "head_end", plan_.head_index());
  if (backward) grads_to_host(plan_.head_index(), *g);
}

void Engine::backward(int head_slot) {
  Stream& compute = dev_.compute_stream();
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
    Slot& slot = *slots_[static_cast<size_t>(cur)];
    compute.wait(*slot.loaded);
    mark(compute, "backward_begin", stage);
    const model::BlockParams w =
        bind_slot(slot.buf, plan_.stages[static_cast<size_t>(stage)], plan_).block;
    at::Tensor& g = take_grad_buffer();
    model::BlockParams gw = model::bind_block_params(g, plan_.block);
    for (int64_t mb = 0; mb < M_; ++mb) {
      autograd::BlockActs* a = &acts_;
      if (keep) {
        a = &kept_[static_cast<size_t>(l)][static_cast<size_t>(mb)];
      } else if (host_mode) {
        CkptBuffer& in = ring(l, mb);
        compute.wait(*in.copied);
        autograd::block_forward(y_tmp_, acts_, scratch_, w, in.t, rope_, cfg_);
      } else {
        autograd::block_forward(y_tmp_, acts_, scratch_, w, device_checkpoint(l, mb), rope_, cfg_);
      }
      autograd::block_backward(dres_[static_cast<size_t>(mb)], gw, *a, scratch_, w, rope_, cfg_);
      if (host_mode) ring(l, mb).used->record(compute);
    }
    slot.idle->record(compute);
    mark(compute, "backward_end", stage);
    grads_to_host(stage, g);
  }
  // Embedding: needs no weights, only the ids and the residual grads.
  at::Tensor* ge;
  if (plan_.tied) {
    ge = &tied_grad_;  // already holds the head's contribution
  } else {
    ge = &take_grad_buffer();
  }
  at::Tensor gv = ge->narrow(0, 0, plan_.vocab * plan_.hidden).view({plan_.vocab, plan_.hidden});
  for (int64_t mb = 0; mb < M_; ++mb) {
    autograd::embedding_backward(gv, dres_[static_cast<size_t>(mb)], ids_[static_cast<size_t>(mb)]);
  }
  grads_to_host(0, *ge);
}

StepStats Engine::train_step(const std::vector<at::Tensor>& ids,
                             const std::vector<at::Tensor>& targets) {
  check_batch(ids, targets);
  ++step_;
  for (auto& s : slots_) s->stage = -1;  // the store changed since they were loaded
  int64_t count = 0;
  for (const at::Tensor& t : targets) count += autograd::count_targets(t);
  TORCH_CHECK(count > 0, "Engine::train_step: no target in any micro-batch (all ignored)");
  const double grad_scale = 1.0 / double(count);

  forward(/*keep_for_backward=*/true);
  const int head_slot = acquire_slot(plan_.head_index(), -1);
  autograd::CrossEntropyResult r;
  head(head_slot, /*backward=*/true, grad_scale, &r);
  backward(head_slot);
  schedule_norm();
  if (options_.max_grad_norm > 0) {
    // Exact clipping: every update waits for the norm; the next forward waits per stage.
    for (int64_t s = 0; s < plan_.num_stages(); ++s) schedule_update(s);
  }
  StepStats stats{r.loss_sum, r.num_targets, -1};
  if (options_.max_grad_norm > 0) {
    stats.grad_norm = grad_norm();
    stats.skipped = options_.skip_nonfinite && !std::isfinite(stats.grad_norm);
  }
  return stats;
}

autograd::CrossEntropyResult Engine::evaluate(const std::vector<at::Tensor>& ids,
                                              const std::vector<at::Tensor>& targets) {
  check_batch(ids, targets);
  for (auto& s : slots_) s->stage = -1;
  forward(/*keep_for_backward=*/false);
  const int head_slot = acquire_slot(plan_.head_index(), -1);
  autograd::CrossEntropyResult r;
  head(head_slot, /*backward=*/false, 0.0, &r);
  dev_.compute_stream().synchronize();
  return r;
}

}  // namespace ramstream::pipeline
