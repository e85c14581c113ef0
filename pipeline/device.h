// Devices the engine streams layers through, ggml-backend style: a Device hands out buffers,
// streams and events; a Stream runs copies (and, for a compute stream, the ops issued while it
// is current) in order; an Event marks a point in a stream that another stream or the host can
// wait for.
//
// Backends:
//   - CPU: buffers are host tensors; a compute stream is the calling thread (ops run inline);
//     every other stream is a worker thread that runs its queue in order. So every scheduling
//     path of the engine (prefetch, slot reuse, grad copies, optimizer overlap) runs in CI.
//     A fault-injection mode delays each queued task and splits copies into slow pieces, so a
//     missing wait shows up as a wrong result instead of passing by luck. Compute runs in fp32,
//     or in bf16 (the CUDA layout's dtype) when asked.
//   - CUDA (built with a CUDA libtorch): cudaMemcpyAsync on dedicated streams, cudaEvent_t, a
//     compute stream of the engine's own (never the legacy default stream), bf16 compute.
//
// Host events (make_host_event(), recorded by host workers such as the optimizer queue) can be
// waited for by any stream of any backend: a CUDA stream waits through a host function that
// blocks until the event is reached, so "load stage s only after its update" is a wait on the
// copy stream, not on the launching thread.
//
//   std::unique_ptr<Device> dev = make_cpu_device({});
//   std::unique_ptr<Stream> compute = dev->new_compute_stream();
//   auto scope = dev->make_current(*compute);   // ATen ops now run on `compute`
//   std::unique_ptr<Stream> h2d = dev->new_stream("h2d");
//   std::unique_ptr<Event> loaded = dev->new_event();
//   h2d->copy(slot.data_ptr(), master, bytes);
//   loaded->record(*h2d);
//   compute->wait(*loaded);   // compute may now read the slot
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <ATen/ATen.h>

namespace ramstream::pipeline {

enum class DeviceKind { kCpu, kCuda };

class Stream;

class Event {
 public:
  virtual ~Event() = default;
  // Marks the point after everything enqueued on `stream` so far.
  virtual void record(Stream& stream) = 0;
  // Blocks the calling thread until the last recorded point is reached (returns at once if the
  // event was never recorded). Counted by host_wait_count().
  virtual void synchronize() = 0;
  // Whether the last recorded point has been reached (true if never recorded); never blocks.
  virtual bool query() = 0;
  // Microseconds from `start` to this event, both reached and of the same kind (CUDA events made
  // with timing, or host events). Throws std::logic_error otherwise.
  virtual double elapsed_us(Event& start) = 0;
};

class Stream {
 public:
  virtual ~Stream() = default;
  virtual const std::string& name() const = 0;
  // Asynchronous byte copy in stream order; dst/src are device or host pointers of this device.
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  // Work enqueued after this call starts only once `event` (as last recorded) is reached. Takes
  // the events of this stream's device and host events.
  virtual void wait(Event& event) = 0;
  // Runs `fn` on the host in stream order (CPU worker streams: on the worker thread). On CUDA it
  // must not call CUDA.
  virtual void host_task(std::function<void()> fn) = 0;
  // Blocks the caller until everything enqueued so far has run. Counted by host_wait_count().
  virtual void synchronize() = 0;
  // The backend's own stream object (CUDA: the cudaStream_t), for kernels launched outside ATen;
  // null where there is none (CPU).
  virtual void* native_handle() { return nullptr; }
};

// While alive, ATen ops of the creating thread run on one compute stream (CUDA: a stream and
// device guard; CPU: nothing to do).
class StreamScope {
 public:
  virtual ~StreamScope() = default;
};

struct CpuDeviceOptions {
  bool fault_injection = false;  // delay every queued task, copy in slow pieces
  uint64_t fault_seed = 1;
  int fault_max_delay_us = 300;
  // Tests: runs on the worker before each queued task (e.g. to hold a queue back).
  std::function<void()> before_each_task;

  // Fault injection on (or off) with a seed and the largest delay, everything else default.
  static CpuDeviceOptions faults(bool on, uint64_t seed, int max_delay_us) {
    CpuDeviceOptions o;
    o.fault_injection = on;
    o.fault_seed = seed;
    o.fault_max_delay_us = max_delay_us;
    return o;
  }
  // fp32, or bf16 to run the CUDA layout's numerics (bf16 working copies and activations, fp32
  // grads and optimizer) on the CPU.
  at::ScalarType compute_dtype = at::kFloat;
};

class Device {
 public:
  virtual ~Device() = default;
  virtual DeviceKind kind() const = 0;
  virtual at::Device torch_device() const = 0;
  // The dtype of weights in the slots and of activations: bf16 on CUDA; fp32 or bf16 on the CPU.
  virtual at::ScalarType compute_dtype() const = 0;
  // A device buffer of `numel` elements, zero-filled.
  virtual at::Tensor alloc(int64_t numel, at::ScalarType dtype) = 0;
  // A host staging buffer the copy engines can read and write asynchronously (CUDA: page-locked),
  // zero-filled.
  virtual at::Tensor alloc_host(int64_t numel, at::ScalarType dtype) = 0;
  // An in-order stream for copies (CPU: a worker thread).
  virtual std::unique_ptr<Stream> new_stream(const std::string& name) = 0;
  // A stream for compute (CPU: the calling thread, so its copy() is a plain memcpy; CUDA: a new
  // stream, never the legacy default stream). Use it through make_current().
  virtual std::unique_ptr<Stream> new_compute_stream() = 0;
  virtual std::unique_ptr<StreamScope> make_current(Stream& compute) = 0;
  // timing: usable with Event::elapsed_us (host events always are).
  virtual std::unique_ptr<Event> new_event(bool timing = false) = 0;
  virtual std::string describe() const = 0;
};

std::unique_ptr<Device> make_cpu_device(const CpuDeviceOptions& options);
// Errors (no CUDA build, no device) are thrown as std::runtime_error naming the cause.
std::unique_ptr<Device> make_cuda_device(int index);
bool cuda_device_available();

// A host worker thread with an in-order queue: the CPU backend's copy streams and the engine's
// optimizer queue. Usable without a Device.
std::unique_ptr<Stream> make_host_worker(const std::string& name, const CpuDeviceOptions& options);
std::unique_ptr<Event> make_host_event();

// The host-sync counter: Event::synchronize() and Stream::synchronize() calls made so far by
// threads that are not a backend's worker threads (the launching thread, mostly), process-wide.
// A steady-state training step should need one (reading its loss).
int64_t host_wait_count();

}  // namespace ramstream::pipeline
