// The CUDA backend of device.h (built only with a CUDA libtorch). Copies are cudaMemcpyAsync on
// streams from libtorch's pool; a compute stream is one of the pool's high-priority streams, made
// current for ATen by make_current() (a stream and device guard); events are cudaEvent_t. A CUDA
// stream waits for a host event through a host function that blocks until it is reached.
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include "pipeline/device.h"
#include "pipeline/host_event.h"

namespace ramstream::pipeline {
namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("CUDA ") + what + ": " + cudaGetErrorString(err));
  }
}

class CudaStream final : public Stream {
 public:
  CudaStream(std::string name, c10::cuda::CUDAStream stream)
      : name_(std::move(name)), stream_(stream) {}
  const std::string& name() const override { return name_; }
  void* native_handle() override { return raw(); }
  cudaStream_t raw() const { return stream_.stream(); }
  const c10::cuda::CUDAStream& c10_stream() const { return stream_; }

  void copy(void* dst, const void* src, size_t bytes) override {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, raw()), "cudaMemcpyAsync");
  }
  void wait(Event& event) override;
  void host_task(std::function<void()> fn) override {
    auto* heap_fn = new std::function<void()>(std::move(fn));
    check(cudaLaunchHostFunc(
              raw(),
              [](void* p) {
                std::unique_ptr<std::function<void()>> f(static_cast<std::function<void()>*>(p));
                (*f)();
              },
              heap_fn),
          "cudaLaunchHostFunc");
  }
  void synchronize() override {
    detail::count_host_wait();
    check(cudaStreamSynchronize(raw()), "cudaStreamSynchronize");
  }

 private:
  const std::string name_;
  c10::cuda::CUDAStream stream_;
};

CudaStream& as_cuda(Stream& s) {
  auto* c = dynamic_cast<CudaStream*>(&s);
  if (c == nullptr) throw std::logic_error("CUDA event used with a non-CUDA stream");
  return *c;
}

class CudaEvent final : public Event {
 public:
  explicit CudaEvent(bool timing) : timing_(timing) {
    check(cudaEventCreateWithFlags(&event_, timing ? cudaEventDefault : cudaEventDisableTiming),
          "event create");
  }
  ~CudaEvent() override { cudaEventDestroy(event_); }
  void record(Stream& stream) override {
    check(cudaEventRecord(event_, as_cuda(stream).raw()), "cudaEventRecord");
  }
  void synchronize() override {
    detail::count_host_wait();
    check(cudaEventSynchronize(event_), "cudaEventSynchronize");
  }
  bool query() override {
    const cudaError_t err = cudaEventQuery(event_);
    if (err == cudaErrorNotReady) {
      (void)cudaGetLastError();  // not an error: clear it so it does not resurface elsewhere
      return false;
    }
    check(err, "cudaEventQuery");
    return true;
  }
  double elapsed_us(Event& start) override {
    auto* s = dynamic_cast<CudaEvent*>(&start);
    if (s == nullptr || !s->timing_ || !timing_) {
      throw std::logic_error("CudaEvent::elapsed_us: both events must be CUDA timing events");
    }
    float ms = 0;
    check(cudaEventElapsedTime(&ms, s->event_, event_), "cudaEventElapsedTime");
    return double(ms) * 1e3;
  }
  cudaEvent_t raw() const { return event_; }

 private:
  cudaEvent_t event_{};
  bool timing_;
};

void CudaStream::wait(Event& event) {
  if (auto* e = dynamic_cast<CudaEvent*>(&event)) {
    check(cudaStreamWaitEvent(raw(), e->raw(), 0), "cudaStreamWaitEvent");
    return;
  }
  detail::HostEvent* h = detail::as_host_event(event);
  if (h == nullptr) throw std::logic_error("a CUDA stream can wait for CUDA or host events only");
  // Blocks only this stream (later work on it starts after the host event), never the caller.
  // It waits for host work (an optimizer update) that itself waits only for work enqueued
  // earlier, so it cannot deadlock; other streams keep running.
  std::shared_ptr<detail::HostEvent::State> st = h->state();
  const uint64_t target = st->last_recorded();
  {
    std::lock_guard<std::mutex> lock(st->mu);
    if (st->reached >= target) return;  // already there (or never recorded): nothing to wait for
  }
  host_task([st, target] { st->wait_for(target); });
}

class CudaScope final : public StreamScope {
 public:
  explicit CudaScope(const c10::cuda::CUDAStream& s) : guard_(s) {}

 private:
  c10::cuda::CUDAStreamGuard guard_;
};

class CudaDevice final : public Device {
 public:
  explicit CudaDevice(int index) : index_(index) {}
  DeviceKind kind() const override { return DeviceKind::kCuda; }
  at::Device torch_device() const override { return at::Device(at::kCUDA, index_); }
  at::ScalarType compute_dtype() const override { return at::kBFloat16; }
  at::Tensor alloc(int64_t numel, at::ScalarType dtype) override {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(index_));
    return at::zeros({numel}, at::TensorOptions().dtype(dtype).device(torch_device()));
  }
  at::Tensor alloc_host(int64_t numel, at::ScalarType dtype) override {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(index_));
    return at::zeros({numel}, at::TensorOptions().dtype(dtype).pinned_memory(true));
  }
  std::unique_ptr<Stream> new_stream(const std::string& name) override {
    return std::make_unique<CudaStream>(
        name, c10::cuda::getStreamFromPool(/*isHighPriority=*/false,
                                           static_cast<c10::DeviceIndex>(index_)));
  }
  std::unique_ptr<Stream> new_compute_stream() override {
    return std::make_unique<CudaStream>(
        "compute", c10::cuda::getStreamFromPool(/*isHighPriority=*/true,
                                                static_cast<c10::DeviceIndex>(index_)));
  }
  std::unique_ptr<StreamScope> make_current(Stream& compute) override {
    return std::make_unique<CudaScope>(as_cuda(compute).c10_stream());
  }
  std::unique_ptr<Event> new_event(bool timing) override {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(index_));
    return std::make_unique<CudaEvent>(timing);
  }
  std::string describe() const override {
    const cudaDeviceProp* p = at::cuda::getDeviceProperties(index_);
    return std::string("cuda:") + std::to_string(index_) + " " + p->name + " (bf16 compute)";
  }

 private:
  int index_;
};

}  // namespace

std::unique_ptr<Device> make_cuda_device(int index) {
  int count = 0;
  check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
  if (index < 0 || index >= count) {
    throw std::runtime_error("CUDA device " + std::to_string(index) + " requested; " +
                             std::to_string(count) + " present");
  }
  return std::make_unique<CudaDevice>(index);
}

bool cuda_device_available() {
  int count = 0;
  const bool ok = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  (void)cudaGetLastError();
  return ok;
}

}  // namespace ramstream::pipeline
