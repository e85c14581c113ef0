// Devices the engine streams layers through, ggml-backend style: a Device hands out buffers,
// streams and events; a Stream runs copies (and, for the compute stream, the ops issued while it
// is current) in order; an Event marks a point in a stream that another stream or the host can
// wait for.
//
// Backends:
//   - CPU: buffers are host tensors; the compute stream is the calling thread (ops run inline);
//     every other stream is a worker thread that runs its queue in order. So every scheduling
//     path of the engine (prefetch, slot reuse, grad copies, optimizer overlap) runs in CI.
//     A fault-injection mode delays each queued task and splits copies into slow pieces, so a
//     missing wait shows up as a wrong result instead of passing by luck.
//   - CUDA (built with a CUDA libtorch): cudaMemcpyAsync on dedicated streams, cudaEvent_t.
//
//   std::unique_ptr<Device> dev = make_cpu_device({});
//   std::unique_ptr<Stream> h2d = dev->new_stream("h2d");
//   std::unique_ptr<Event> loaded = dev->new_event();
//   h2d->copy(slot.data_ptr(), master, bytes);
//   loaded->record(*h2d);
//   dev->compute_stream().wait(*loaded);   // compute may now read the slot
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
  // event was never recorded).
  virtual void synchronize() = 0;
};

class Stream {
 public:
  virtual ~Stream() = default;
  virtual const std::string& name() const = 0;
  // Asynchronous byte copy in stream order; dst/src are device or host pointers of this device.
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  // Work enqueued after this call starts only once `event` (as last recorded) is reached.
  virtual void wait(Event& event) = 0;
  // Runs `fn` on the host in stream order (CPU worker streams: on the worker thread).
  virtual void host_task(std::function<void()> fn) = 0;
  // Blocks the caller until everything enqueued so far has run.
  virtual void synchronize() = 0;
};

struct CpuDeviceOptions {
  bool fault_injection = false;  // delay every queued task, copy in slow pieces
  uint64_t fault_seed = 1;
  int fault_max_delay_us = 300;
};

class Device {
 public:
  virtual ~Device() = default;
  virtual DeviceKind kind() const = 0;
  virtual at::Device torch_device() const = 0;
  // fp32 on the CPU (bf16 GEMMs are ~25x slower there), bf16 on CUDA.
  virtual at::ScalarType compute_dtype() const = 0;
  // A device buffer of `numel` elements, zero-filled.
  virtual at::Tensor alloc(int64_t numel, at::ScalarType dtype) = 0;
  virtual std::unique_ptr<Stream> new_stream(const std::string& name) = 0;
  virtual std::unique_ptr<Event> new_event() = 0;
  // The stream ops run on (CPU: the calling thread, so its copy() is a plain memcpy).
  virtual Stream& compute_stream() = 0;
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

}  // namespace ramstream::pipeline
