// The CUDA backend of the KV pages' device twin (kv_mirror.h): cudaMalloc'd chunks, a pinned
// staging buffer uploaded with one cudaMemcpyAsync per layer, the scatter and attention kernels of
// kernels/kv_quant_cuda.cuh, all on the Generator's compute stream.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "inference/kv_mirror.h"
#include "kernels/kv_quant_cuda.cuh"

namespace ramstream::inference {
namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    throw std::runtime_error(std::string("KV pages on the device: ") + what + ": " +
                             cudaGetErrorString(e));
  }
}

class CudaMirrorBackend final : public KvMirrorBackend {
 public:
  explicit CudaMirrorBackend(cudaStream_t stream) : stream_(stream) {
    check(cudaEventCreateWithFlags(&uploaded_, cudaEventDisableTiming), "cudaEventCreate");
    int dev = 0, optin = 0;
    check(cudaGetDevice(&dev), "cudaGetDevice");
    check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
          "cudaDeviceGetAttribute");
    max_logits_ = optin / 4;
  }
  ~CudaMirrorBackend() override {
    cudaEventSynchronize(uploaded_);
    cudaEventDestroy(uploaded_);
    if (host_) cudaFreeHost(host_);
    if (device_) cudaFree(device_);
  }
  std::string name() const override { return "CUDA"; }
  uint8_t* alloc(int64_t bytes) override {
    void* p = nullptr;
    if (cudaMalloc(&p, static_cast<size_t>(bytes)) != cudaSuccess) {
      cudaGetLastError();  // clear the allocation failure: the mirror stops, the run goes on
      return nullptr;
    }
    return static_cast<uint8_t*>(p);
  }
  void free(uint8_t* p) override {
    cudaStreamSynchronize(stream_);  // kernels in flight may still read it
    cudaFree(p);
  }
  int64_t available_bytes() const override {
    size_t free_bytes = 0, total = 0;
    return cudaMemGetInfo(&free_bytes, &total) == cudaSuccess ? static_cast<int64_t>(free_bytes)
                                                              : 0;
  }
  uint8_t* staging(int64_t bytes) override {
    check(cudaEventSynchronize(uploaded_), "waiting for the last upload");
    if (bytes > capacity_) {
      check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
      if (host_) cudaFreeHost(host_);
      if (device_) cudaFree(device_);
      host_ = nullptr;
      device_ = nullptr;
      capacity_ = std::max<int64_t>((bytes + 4095) / 4096 * 4096, 2 * capacity_);
      void* h = nullptr;
      void* d = nullptr;
      check(cudaMallocHost(&h, static_cast<size_t>(capacity_)), "cudaMallocHost (staging)");
      host_ = static_cast<uint8_t*>(h);
      check(cudaMalloc(&d, static_cast<size_t>(capacity_)), "cudaMalloc (staging)");
      device_ = static_cast<uint8_t*>(d);
    }
    return host_;
  }
  uint8_t* device_staging(int64_t offset) override { return device_ + offset; }
  int64_t max_logits() const override { return max_logits_; }
  void run(int64_t bytes, int64_t ops_offset, int64_t n_ops, int64_t views_offset, int64_t n_views,
           int64_t max_tokens, const float* q, int64_t q_stride, int Hq, float scale, float* out,
           int64_t out_stride) override {
    check(cudaMemcpyAsync(device_, host_, static_cast<size_t>(bytes), cudaMemcpyHostToDevice,
                          stream_),
          "staging upload");
    check(cudaEventRecord(uploaded_, stream_), "cudaEventRecord");
    check(kernels::kv_scatter_cuda(device_,
                                   reinterpret_cast<const kernels::KvCopyOp*>(device_ + ops_offset),
                                   n_ops, stream_),
          "kv_scatter_cuda");
    check(kernels::kv_decode_attention_cuda(
              reinterpret_cast<const kernels::KvHeadView*>(device_ + views_offset), n_views,
              max_tokens, q, q_stride, Hq, scale, out, out_stride, stream_),
          "kv_decode_attention_cuda");
  }

 private:
  cudaStream_t stream_;
  cudaEvent_t uploaded_ = nullptr;
  uint8_t* host_ = nullptr;
  uint8_t* device_ = nullptr;
  int64_t capacity_ = 0, max_logits_ = 0;
};

}  // namespace

std::unique_ptr<KvMirrorBackend> make_cuda_mirror_backend(void* stream) {
  return std::make_unique<CudaMirrorBackend>(static_cast<cudaStream_t>(stream));
}

}  // namespace ramstream::inference
