// The stage streaming that training and inference share: K device slots (templates of the slot
// layout) that stages of a ParamStore are copied into on a copy stream, with events ordering
// copy -> compute -> slot reuse, plus resident stages that keep a device buffer of their own.
// The weight source follows the store layout: the bf16 working copy (bf16 layout) or the fp32
// master (fp32 layout). `Engine` (the training step) and `inference::Generator` (prefill and
// decode) are schedules written on top of it.
//
//   StageStreamer streamer(dev, store, *h2d, {.num_slots = 2});
//   int cur = streamer.acquire(0, -1);
//   for (int64_t s = 0; s < plan.num_stages(); ++s) {
//     const int next = s + 1 < n ? streamer.acquire(s + 1, cur) : -1;  // prefetch meanwhile
//     const SlotViews& w = streamer.begin_use(cur, compute);  // compute waits for the copy
//     ...                                                       // ops reading w on `compute`
//     streamer.end_use(cur, compute);                         // the slot may be reused after
//     cur = next;
//   }
//   streamer.invalidate();  // the store changed (an optimizer step): reload on next acquire
//
// A gate (set_gate) makes the load of a stage wait for an event, e.g. the training step's
// "stage s may load only after its update": a wait of the copy stream, never of the caller.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include <ATen/ATen.h>

#include "pipeline/device.h"
#include "pipeline/param_store.h"
#include "pipeline/stages.h"

namespace ramstream::pipeline {

struct StageStreamerOptions {
  int num_slots = 2;              // K >= 2 streaming slots (double buffering)
  std::vector<int64_t> resident;  // stages with a device buffer of their own, never evicted
  // CPU backend only: every stage's views bind straight to the store's regions (the device is
  // host memory, so a copy would only cost bandwidth); no slots are used.
  bool host_views = false;
};

class StageStreamer {
 public:
  // Marks the begin/end of each load on `h2d` ("load_begin"/"load_end", stage) for timelines.
  using MarkFn = std::function<void(Stream&, const char*, int64_t)>;

  // Allocates the slots and resident buffers on `dev` (zero-filled on the current stream).
  StageStreamer(Device& dev, ParamStore& store, Stream& h2d, const StageStreamerOptions& options,
                MarkFn mark = {});
  ~StageStreamer();
  StageStreamer(const StageStreamer&) = delete;
  StageStreamer& operator=(const StageStreamer&) = delete;

  // A buffer holding `stage` (its resident buffer, or a streaming slot other than `busy_slot`,
  // the least recently used), with its copy enqueued on the copy stream if it is not there yet.
  // Never blocks the caller.
  int acquire(int64_t stage, int busy_slot);
  // The compute stream waits for the buffer's copy; the stage's views in the buffer.
  const SlotViews& begin_use(int buffer, Stream& compute);
  // Compute is done reading the buffer once what is enqueued on `compute` so far has run.
  void end_use(int buffer, Stream& compute);
  // The store changed: every buffer (resident ones too) reloads on its next acquire.
  void invalidate();
  // Loads of `stage` wait for `gate` (as last recorded) first; nullptr removes the gate.
  void set_gate(int64_t stage, Event* gate);

  int num_slots() const { return num_slots_; }
  bool is_resident(int64_t stage) const;
  // Host -> device weight bytes copied so far.
  int64_t weight_bytes_loaded() const { return weight_bytes_loaded_; }
  // Bytes of the slots and resident buffers on the device.
  int64_t device_bytes() const;
  // Device elements a buffer of `stage` needs (the tied head also holds the embedding matrix).
  static int64_t buffer_numel(const StagePlan& plan, int64_t stage);

 private:
  struct Buffer;
  void load(Buffer& b, int64_t stage);
  at::ScalarType source_dtype() const;
  const at::Tensor& source(int64_t stage) const;

  Device& dev_;
  ParamStore& store_;
  Stream& h2d_;
  const StagePlan& plan_;
  MarkFn mark_;
  int num_slots_;
  std::vector<std::unique_ptr<Buffer>> buffers_;  // streaming slots, then resident buffers
  std::vector<int> resident_of_;                  // per stage: its resident buffer or -1
  bool host_views_ = false;
  std::vector<Event*> gates_;  // per stage
  uint64_t use_clock_ = 0;
  int64_t weight_bytes_loaded_ = 0;
};

}  // namespace ramstream::pipeline
