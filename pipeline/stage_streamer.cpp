#include "pipeline/stage_streamer.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace ramstream::pipeline {

struct StageStreamer::Buffer {
  at::Tensor buf;  // in the compute dtype, on the device
  int64_t stage = -1;
  uint64_t last_use = 0;
  bool resident = false;
  SlotViews views;                // of `stage` in `buf`
  std::unique_ptr<Event> loaded;  // h2d: the copy of `stage` finished
  std::unique_ptr<Event> idle;    // compute: done reading the buffer
};

int64_t StageStreamer::buffer_numel(const StagePlan& plan, int64_t stage) {
  const Stage& st = plan.stages[static_cast<size_t>(stage)];
  if (st.kind == StageKind::kHead) {
    return std::max(st.numel, plan.head_lm_head_offset + plan.vocab * plan.hidden);
  }
  return st.numel;
}

StageStreamer::StageStreamer(Device& dev, ParamStore& store, Stream& h2d,
                             const StageStreamerOptions& options, MarkFn mark)
    : dev_(dev),
      store_(store),
      h2d_(h2d),
      plan_(store.plan()),
      mark_(std::move(mark)),
      num_slots_(options.num_slots),
      host_views_(options.host_views) {
  if (num_slots_ < 2) {
    throw std::invalid_argument("StageStreamer: num_slots must be >= 2 (double buffering), got " +
                                std::to_string(num_slots_));
  }
  const at::ScalarType dtype = dev_.compute_dtype();
  const int64_t n = plan_.num_stages();
  resident_of_.assign(static_cast<size_t>(n), -1);
  gates_.assign(static_cast<size_t>(n), nullptr);
  auto add = [&](int64_t numel, bool resident) {
    auto b = std::make_unique<Buffer>();
    b->buf = dev_.alloc(numel, dtype);
    b->resident = resident;
    b->loaded = dev_.new_event();
    b->idle = dev_.new_event();
    buffers_.push_back(std::move(b));
  };
  if (host_views_) {
    if (dev_.kind() != DeviceKind::kCpu || dev_.compute_dtype() != source_dtype()) {
      throw std::invalid_argument(
          "StageStreamer: host_views needs the CPU backend computing in "
          "the store's weight dtype");
    }
    // One view set per stage, bound once: buffers 0..n-1 are the stages themselves.
    for (int64_t s = 0; s < n; ++s) {
      auto b = std::make_unique<Buffer>();
      b->stage = s;
      b->resident = true;
      const Stage& st = plan_.stages[static_cast<size_t>(s)];
      if (st.kind == StageKind::kHead && plan_.tied) {
        // The head's region holds only the final norm; the LM head is the embedding.
        b->views.final_norm = source(s).narrow(0, 0, plan_.hidden);
        b->views.lm_head =
            source(0).narrow(0, 0, plan_.vocab * plan_.hidden).view({plan_.vocab, plan_.hidden});
      } else {
        b->views = bind_slot(source(s), st, plan_);
      }
      b->loaded = dev_.new_event();
      b->idle = dev_.new_event();
      resident_of_[static_cast<size_t>(s)] = static_cast<int>(s);
      buffers_.push_back(std::move(b));
    }
    return;
  }
  for (int k = 0; k < num_slots_; ++k) add(plan_.slot_numel, false);
  for (int64_t s : options.resident) {
    if (s < 0 || s >= n) {
      throw std::invalid_argument("StageStreamer: resident stage " + std::to_string(s) +
                                  " out of range [0, " + std::to_string(n) + ")");
    }
    if (resident_of_[static_cast<size_t>(s)] >= 0) continue;
    resident_of_[static_cast<size_t>(s)] = static_cast<int>(buffers_.size());
    add(buffer_numel(plan_, s), true);
  }
}

StageStreamer::~StageStreamer() = default;

at::ScalarType StageStreamer::source_dtype() const {
  return store_.options().working_copy_bf16 ? at::kBFloat16 : at::kFloat;
}

const at::Tensor& StageStreamer::source(int64_t stage) const {
  ParamStore::Region& r = store_.region(stage);
  return store_.options().working_copy_bf16 ? r.working : r.master;
}

bool StageStreamer::is_resident(int64_t stage) const {
  return resident_of_[static_cast<size_t>(stage)] >= 0;
}

void StageStreamer::set_gate(int64_t stage, Event* gate) {
  gates_[static_cast<size_t>(stage)] = gate;
}

void StageStreamer::invalidate() {
  if (host_views_) return;  // the views see the store as it is
  for (auto& b : buffers_) b->stage = -1;
}

void StageStreamer::load(Buffer& b, int64_t stage) {
  if (Event* gate = gates_[static_cast<size_t>(stage)]) h2d_.wait(*gate);
  h2d_.wait(*b.idle);
  const Stage& st = plan_.stages[static_cast<size_t>(stage)];
  if (mark_) mark_(h2d_, "load_begin", stage);
  const at::Tensor& src = source(stage);
  const size_t elem = src.element_size();
  h2d_.copy(b.buf.data_ptr(), src.data_ptr(), static_cast<size_t>(st.numel) * elem);
  weight_bytes_loaded_ += st.numel * static_cast<int64_t>(elem);
  if (st.kind == StageKind::kHead && plan_.tied) {
    // The head reads the embedding matrix as its LM head.
    if (Event* gate = gates_[0]) h2d_.wait(*gate);
    const int64_t n = plan_.vocab * plan_.hidden;
    h2d_.copy(static_cast<char*>(b.buf.data_ptr()) + plan_.head_lm_head_offset * elem,
              source(0).data_ptr(), static_cast<size_t>(n) * elem);
    weight_bytes_loaded_ += n * static_cast<int64_t>(elem);
  }
  if (mark_) mark_(h2d_, "load_end", stage);
  b.loaded->record(h2d_);
  b.stage = stage;
  b.views = bind_slot(b.buf, st, plan_);
}

int StageStreamer::acquire(int64_t stage, int busy_slot) {
  const int res = resident_of_[static_cast<size_t>(stage)];
  if (res >= 0) {
    Buffer& b = *buffers_[static_cast<size_t>(res)];
    if (b.stage != stage) load(b, stage);
    return res;
  }
  for (int k = 0; k < num_slots_; ++k) {
    if (buffers_[static_cast<size_t>(k)]->stage == stage) {
      buffers_[static_cast<size_t>(k)]->last_use = ++use_clock_;
      return k;
    }
  }
  int victim = -1;
  for (int k = 0; k < num_slots_; ++k) {
    if (k == busy_slot) continue;
    if (victim < 0 || buffers_[static_cast<size_t>(k)]->last_use <
                          buffers_[static_cast<size_t>(victim)]->last_use) {
      victim = k;
    }
  }
  Buffer& b = *buffers_[static_cast<size_t>(victim)];
  load(b, stage);
  b.last_use = ++use_clock_;
  return victim;
}

const SlotViews& StageStreamer::begin_use(int buffer, Stream& compute) {
  Buffer& b = *buffers_[static_cast<size_t>(buffer)];
  compute.wait(*b.loaded);
  return b.views;
}

void StageStreamer::end_use(int buffer, Stream& compute) {
  buffers_[static_cast<size_t>(buffer)]->idle->record(compute);
}

int64_t StageStreamer::device_bytes() const {
  int64_t n = 0;
  for (const auto& b : buffers_) {
    if (b->buf.defined()) n += b->buf.numel() * static_cast<int64_t>(b->buf.element_size());
  }
  return n;
}

}  // namespace ramstream::pipeline
