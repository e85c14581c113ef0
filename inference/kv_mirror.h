// Device-resident KV pages: a twin of a KvPagePool's pages in device memory, so that decode
// attention runs on the device over the packed caches (kernels/kv_quant_cuda.cuh) instead of
// sending q to the host and the output back.
//
// The host pages stay the caches' truth: SequenceKv writes them as before (KIVI blocks, windows,
// sinks), and every record written is marked (KvPagePool::mark_written, called by PagedArray).
// Each pool chunk gets a device chunk of the same size; before a layer's attention the mirror
// packs, into one staging buffer, the records written since the last attention, the batch's page
// tables translated to device addresses and the kernel views, uploads it in one copy, scatters
// the records into the device chunks (kv_scatter_cuda) and runs the attention kernel, all in
// stream order. Per decode step and sequence that is the new token's rows (2 x heads x D floats
// per layer) plus, now and then, a quantised block: far less than the q and output round trip.
//
// When a new chunk does not fit the device budget the mirror stops (active() false, reason()
// says why) and attention goes back to the host pages, which are complete: nothing is lost.
// h2o caches are not mirrored (their scores need the probabilities on the host).
//
// The backend is where device memory and kernels come from: CUDA (make_cuda_mirror_backend, null
// when this build has no CUDA toolkit), or host memory standing in for a device (tests: the same
// packing, translation and scatter, with the CPU attention kernel reading the twin).
//
//   std::unique_ptr<KvMirrorBackend> b = make_cuda_mirror_backend(compute_stream_handle);
//   auto mirror = std::make_unique<KvDeviceMirror>(std::move(b), /*max_bytes=*/8ll << 30);
//   pool->set_mirror(mirror.get());                      // before sequences take pages
//   ... seq->append(layer, k, v) for each row ...
//   if (!mirror->attend(layer, seqs, q_dev, out_dev, model)) attend(layer, seqs, q, out, model);
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/kv_quant.h"
#include "model/config.h"

namespace ramstream::inference {

class SequenceKv;

class KvMirrorBackend {
 public:
  virtual ~KvMirrorBackend() = default;
  virtual std::string name() const = 0;
  // `bytes` of device memory, or nullptr when it cannot be had.
  virtual uint8_t* alloc(int64_t bytes) = 0;
  virtual void free(uint8_t* p) = 0;
  // Device memory free now (the auto budget is half of it).
  virtual int64_t available_bytes() const = 0;
  // A host staging buffer of at least `bytes`, free to overwrite (the previous upload is done).
  virtual uint8_t* staging(int64_t bytes) = 0;
  // The device address that staging byte `offset` will have once uploaded.
  virtual uint8_t* device_staging(int64_t offset) = 0;
  // The most logits (floats) one attention block may hold: Hq x tokens of a view.
  virtual int64_t max_logits() const = 0;
  // In stream order: staging[0, bytes) to the device, then the n_ops KvCopyOps at ops_offset,
  // then decode attention over the n_views views at views_offset (kv_decode_attention_cuda's
  // arguments; q and out are device pointers).
  virtual void run(int64_t bytes, int64_t ops_offset, int64_t n_ops, int64_t views_offset,
                   int64_t n_views, int64_t max_tokens, const float* q, int64_t q_stride, int Hq,
                   float scale, float* out, int64_t out_stride) = 0;
};

// CUDA on `stream` (a cudaStream_t); null when this build has no CUDA toolkit.
std::unique_ptr<KvMirrorBackend> make_cuda_mirror_backend(void* stream);
// Host memory as the "device": the CPU attention kernel reads the twin (tests).
std::unique_ptr<KvMirrorBackend> make_host_mirror_backend();

class KvDeviceMirror {
 public:
  // max_bytes: device bytes the twin may take (its chunks); beyond, it stops.
  KvDeviceMirror(std::unique_ptr<KvMirrorBackend> backend, int64_t max_bytes);
  ~KvDeviceMirror();
  KvDeviceMirror(const KvDeviceMirror&) = delete;
  KvDeviceMirror& operator=(const KvDeviceMirror&) = delete;

  bool active() const { return active_; }
  // Why the mirror stopped ("" while active).
  const std::string& reason() const { return reason_; }
  int64_t device_bytes() const { return device_bytes_; }
  int64_t uploaded_bytes() const { return uploaded_bytes_; }  // records copied so far

  // KvPagePool's hooks: a new chunk of pages; bytes [p, p + n) of a page were written.
  void add_chunk(const uint8_t* base, int64_t bytes);
  void mark(const uint8_t* p, int64_t n) {
    if (active_) dirty_.push_back({p, n});
  }

  // Decode attention of one layer for a batch on the device (kv_cache.h's attend(), same q/out
  // layout [B][NH][D] but device pointers). False, having done nothing, when it cannot: the
  // mirror stopped, an h2o cache, or a view longer than one attention block holds; the caller
  // then attends on the host.
  bool attend(int64_t layer, const std::vector<SequenceKv*>& seqs, const float* q, float* out,
              const model::ModelConfig& model);

  // Where host byte `p` of a mirrored chunk lives on the device.
  uint8_t* to_device(const uint8_t* p) const;

 private:
  struct Chunk {
    int64_t bytes;
    uint8_t* device;
  };
  struct Written {
    const uint8_t* p;
    int64_t n;
  };
  void stop(const std::string& why);

  std::unique_ptr<KvMirrorBackend> backend_;
  int64_t max_bytes_, device_bytes_ = 0, uploaded_bytes_ = 0;
  bool active_ = true;
  std::string reason_;
  std::map<const uint8_t*, Chunk> chunks_;  // by host base
  std::vector<Written> dirty_;
};

}  // namespace ramstream::inference
