// The CUDA backend of device.h (built only with a CUDA libtorch). Copies are cudaMemcpyAsync on
// streams from libtorch's pool; the compute stream is the current ATen stream, so ops issued by
// the engine run on it; events are cudaEvent_t without timing.
#include <memory>
#include <stdexcept>
#include <string>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include "pipeline/device.h"

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
  cudaStream_t raw() const { return stream_.stream(); }

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
  void synchronize() override { check(cudaStreamSynchronize(raw()), "cudaStreamSynchronize"); }

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
  CudaEvent() { check(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming), "event create"); }
  ~CudaEvent() override { cudaEventDestroy(event_); }
  void record(Stream& stream) override {
    check(cudaEventRecord(event_, as_cuda(stream).raw()), "cudaEventRecord");
  }
  void synchronize() override { check(cudaEventSynchronize(event_), "cudaEventSynchronize"); }
  cudaEvent_t raw() const { return event_; }

 private:
  cudaEvent_t event_{};
};

void CudaStream::wait(Event& event) {
  auto* e = dynamic_cast<CudaEvent*>(&event);
  if (e == nullptr) throw std::logic_error("a CUDA stream can only wait for CUDA events");
  check(cudaStreamWaitEvent(raw(), e->raw(), 0), "cudaStreamWaitEvent");
}

class CudaDevice final : public Device {
 public:
  explicit CudaDevice(int index)
      : index_(index), compute_("compute", c10::cuda::getCurrentCUDAStream(index)) {}
  DeviceKind kind() const override { return DeviceKind::kCuda; }
  at::Device torch_device() const override { return at::Device(at::kCUDA, index_); }
  at::ScalarType compute_dtype() const override { return at::kBFloat16; }
  at::Tensor alloc(int64_t numel, at::ScalarType dtype) override {
    return at::zeros({numel}, at::TensorOptions().dtype(dtype).device(torch_device()));
  }
  std::unique_ptr<Stream> new_stream(const std::string& name) override {
    return std::make_unique<CudaStream>(name, c10::cuda::getStreamFromPool(false, index_));
  }
  std::unique_ptr<Event> new_event() override { return std::make_unique<CudaEvent>(); }
  Stream& compute_stream() override { return compute_; }
  std::string describe() const override {
    const cudaDeviceProp* p = at::cuda::getDeviceProperties(index_);
    return std::string("cuda:") + std::to_string(index_) + " " + p->name + " (bf16 compute)";
  }

 private:
  int index_;
  CudaStream compute_;
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
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

}  // namespace ramstream::pipeline
