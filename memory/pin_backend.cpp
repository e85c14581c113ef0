#include "memory/pin_backend.h"

#include <algorithm>
#include <cctype>
#include <cstdio>

#include "memory/log.h"

#ifdef RAMSTREAM_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace ramstream::memory {

namespace {

class NoopPinBackend final : public PinBackend {
 public:
  const char* name() const override { return "noop"; }
  Status register_range(void*, uint64_t) override { return Ok{}; }
  void unregister_range(void*) override {}
};

#ifdef RAMSTREAM_WITH_CUDA

// Reads and resets the runtime's last-error slot so a failure we handled does not resurface.
void clear_cuda_error() {
  (void)cudaGetLastError();
}

class CudaPinBackend final : public PinBackend {
 public:
  const char* name() const override { return "cudaHostRegister"; }

  Status register_range(void* p, uint64_t bytes) override {
    const cudaError_t err =
        cudaHostRegister(p, static_cast<size_t>(bytes), cudaHostRegisterDefault);
    if (err == cudaSuccess) return Ok{};
    clear_cuda_error();
    return Error{std::string("cudaHostRegister: ") + cudaGetErrorName(err) + " (" +
                 cudaGetErrorString(err) + ")"};
  }

  void unregister_range(void* p) override {
    const cudaError_t err = cudaHostUnregister(p);
    if (err == cudaSuccess) return;
    clear_cuda_error();
    char where[32];
    std::snprintf(where, sizeof(where), "%p", p);
    log_warning(std::string("cudaHostUnregister(") + where + ") failed: " + cudaGetErrorName(err) +
                " (" + cudaGetErrorString(err) + ")");
  }
};

// nullptr unless device 0 can page-lock host memory; decided once per process.
PinBackend* make_cuda_pin_backend() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    clear_cuda_error();  // a CUDA build on a machine without GPU: nothing to pin for, say nothing
    return nullptr;
  }
  int supported = 0;
  err = cudaDeviceGetAttribute(&supported, cudaDevAttrHostRegisterSupported, 0);
  if (err != cudaSuccess || !supported) {
    clear_cuda_error();
    log_warning(std::string("host pinning off: CUDA device 0 does not support cudaHostRegister (") +
                (err == cudaSuccess ? "attribute is 0" : cudaGetErrorString(err)) + ")");
    return nullptr;
  }
  static CudaPinBackend backend;
  return &backend;
}

#endif  // RAMSTREAM_WITH_CUDA

}  // namespace

PinBackend* cuda_pin_backend() {
#ifdef RAMSTREAM_WITH_CUDA
  static PinBackend* const backend = make_cuda_pin_backend();
  return backend;
#else
  return nullptr;
#endif
}

PinBackend* noop_pin_backend() {
  static NoopPinBackend backend;
  return &backend;
}

std::string cuda_device_pci_bus_id(int device) {
#ifdef RAMSTREAM_WITH_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || device < 0 || device >= count) {
    clear_cuda_error();
    return {};
  }
  char buf[64] = {};
  if (cudaDeviceGetPCIBusId(buf, sizeof(buf), device) != cudaSuccess) {
    clear_cuda_error();
    return {};
  }
  // The runtime writes "0000:3B:00.0"; sysfs names devices in lower case.
  std::string id(buf);
  std::transform(id.begin(), id.end(), id.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return id;
#else
  (void)device;
  return {};
#endif
}

}  // namespace ramstream::memory
