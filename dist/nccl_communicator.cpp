#include "dist/nccl_communicator.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime.h>
#include <nccl.h>

#include "dist/store.h"

namespace ramstream::dist {

bool nccl_available() {
  return true;
}

namespace {

ncclDataType_t to_nccl(DType t) {
  switch (t) {
    case DType::kFloat32:
      return ncclFloat32;
    case DType::kFloat64:
      return ncclFloat64;
    case DType::kInt64:
      return ncclInt64;
    case DType::kBFloat16:
      return ncclBfloat16;
  }
  return ncclFloat32;
}

std::string nccl_text(ncclResult_t r) {
  return ncclGetErrorString(r);
}

class NcclCommunicator;

class DoneWork final : public Work {
 public:
  void wait() override {}
};

class NcclWork final : public Work {
 public:
  NcclWork(NcclCommunicator& owner, cudaEvent_t done, std::string what)
      : owner_(owner), done_(done), what_(std::move(what)) {}
  ~NcclWork() override { cudaEventDestroy(done_); }
  void wait() override;

 private:
  NcclCommunicator& owner_;
  cudaEvent_t done_;
  std::string what_;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const DistEnv& env, int device) : env_(env), device_(device) {}
  ~NcclCommunicator() override {
    if (comm_ != nullptr) {
      if (aborted_) {
        ncclCommAbort(comm_);
      } else {
        ncclCommDestroy(comm_);
      }
    }
    if (barrier_buf_ != nullptr) cudaFree(barrier_buf_);
    for (void* p : scratch_) {
      if (p != nullptr) cudaFree(p);
    }
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // Throws std::runtime_error naming what failed.
  void start() {
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    const bool hosts = env_.rank == 0 && detail::rank0_hosts_store(env_);
    c10::intrusive_ptr<c10d::Store> store = detail::connect_store(env_, hosts, env_.timeout_s);
    ncclUniqueId id;
    const std::string key = "rs/nccl/unique_id";
    if (env_.rank == 0) {
      check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
      const auto* p = reinterpret_cast<const uint8_t*>(&id);
      store->set(key, std::vector<uint8_t>(p, p + sizeof id));
    } else {
      const std::vector<uint8_t> v = store->get(key);
      if (v.size() != sizeof id) throw std::runtime_error("the store's NCCL id has a wrong size");
      std::memcpy(&id, v.data(), sizeof id);
    }
    check_nccl(ncclCommInitRank(&comm_, env_.world_size, id, env_.rank), "ncclCommInitRank");
  }

  int rank() const override { return env_.rank; }
  int world_size() const override { return env_.world_size; }
  std::string backend() const override { return "nccl"; }

  std::unique_ptr<Work> all_reduce_sum(void* buf, int64_t count, DType dtype,
                                       const std::string& what) override {
    const int64_t n = env_.world_size;
    const size_t bytes = static_cast<size_t>(count * dtype_size(dtype));
    count_traffic(2 * (n - 1) * count * dtype_size(dtype) / n);
    return run(what, buf, bytes, buf, bytes, [&](const void* in, void* out) {
      return ncclAllReduce(in, out, static_cast<size_t>(count), to_nccl(dtype), ncclSum, comm_,
                           stream_);
    });
  }
  std::unique_ptr<Work> reduce_scatter_sum(const void* in, void* out, int64_t count, DType dtype,
                                           const std::string& what) override {
    const int64_t n = env_.world_size;
    const size_t bytes = static_cast<size_t>(count * dtype_size(dtype));
    count_traffic((n - 1) * count * dtype_size(dtype));
    return run(what, in, bytes * static_cast<size_t>(n), out, bytes, [&](const void* i, void* o) {
      return ncclReduceScatter(i, o, static_cast<size_t>(count), to_nccl(dtype), ncclSum, comm_,
                               stream_);
    });
  }
  std::unique_ptr<Work> all_gather(const void* in, void* out, int64_t count, DType dtype,
                                   const std::string& what) override {
    const int64_t n = env_.world_size;
    const size_t bytes = static_cast<size_t>(count * dtype_size(dtype));
    count_traffic((n - 1) * count * dtype_size(dtype));
    return run(what, in, bytes, out, bytes * static_cast<size_t>(n), [&](const void* i, void* o) {
      return ncclAllGather(i, o, static_cast<size_t>(count), to_nccl(dtype), comm_, stream_);
    });
  }
  std::unique_ptr<Work> broadcast(void* buf, int64_t count, DType dtype, int root,
                                  const std::string& what) override {
    const int64_t n = env_.world_size;
    const size_t bytes = static_cast<size_t>(count * dtype_size(dtype));
    count_traffic(env_.rank == root ? (n - 1) * count * dtype_size(dtype) : 0);
    return run(what, buf, bytes, buf, bytes, [&](const void* i, void* o) {
      return ncclBroadcast(i, o, static_cast<size_t>(count), to_nccl(dtype), root, comm_, stream_);
    });
  }
  void barrier(const std::string& what) override {
    // NCCL has no barrier: a one-element all-reduce of scratch device memory.
    if (barrier_buf_ == nullptr) check_cuda(cudaMalloc(&barrier_buf_, 8), "cudaMalloc");
    all_reduce_sum(barrier_buf_, 1, DType::kFloat32, what)->wait();
  }

  // Polls `done` until reached, an asynchronous NCCL error, or the timeout (then aborts).
  void wait_for(cudaEvent_t done, const std::string& what) {
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      const cudaError_t q = cudaEventQuery(done);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) fail(what, std::string("CUDA: ") + cudaGetErrorString(q));
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess) fail(what, "NCCL: " + nccl_text(async));
      const double waited =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (waited > env_.timeout_s) {
        fail(what, "not done after " + std::to_string(static_cast<int>(env_.timeout_s)) +
                       " s (RAMSTREAM_DIST_TIMEOUT_S): a rank has died or hangs");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  [[noreturn]] void fail(const std::string& what, const std::string& cause) {
    aborted_ = true;
    throw CommError(
        "rank " + std::to_string(env_.rank) + ": NCCL collective (" + what + ") failed: " + cause,
        -1);
  }

 private:
  static bool on_device(const void* p) {
    cudaPointerAttributes a{};
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
      cudaGetLastError();  // an unregistered host pointer on older runtimes
      return false;
    }
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
  }

  // A device scratch of at least `bytes` (grown as needed; collectives run one at a time).
  void* scratch(int which, size_t bytes) {
    if (scratch_bytes_[which] < bytes) {
      if (scratch_[which] != nullptr) cudaFree(scratch_[which]);
      scratch_[which] = nullptr;
      check_cuda(cudaMalloc(&scratch_[which], bytes), "cudaMalloc");
      scratch_bytes_[which] = bytes;
    }
    return scratch_[which];
  }

  // Issues `op` on device buffers. Host buffers (the trainer's flags and sums, the engine's host
  // shards, checkpoint gathers) pass through device scratch: copied in, the collective run and
  // waited for, copied out, so the returned Work is already done. In place stays in place.
  template <class Op>
  std::unique_ptr<Work> run(const std::string& what, const void* in, size_t in_bytes, void* out,
                            size_t out_bytes, Op&& op) {
    const bool host_in = !on_device(in), host_out = !on_device(out);
    if (!host_in && !host_out) return issue(what, op(in, out));
    const bool in_place = in == out;
    void* dout = host_out ? scratch(1, std::max(out_bytes, in_place ? in_bytes : 0)) : out;
    const void* din = in;
    if (host_in) {
      void* d = in_place ? dout : scratch(0, in_bytes);
      check_cuda(cudaMemcpyAsync(d, in, in_bytes, cudaMemcpyHostToDevice, stream_), "H2D");
      din = d;
    }
    issue(what, op(din, dout))->wait();
    if (host_out) {
      check_cuda(cudaMemcpyAsync(out, dout, out_bytes, cudaMemcpyDeviceToHost, stream_), "D2H");
      check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    }
    return std::make_unique<DoneWork>();
  }

  std::unique_ptr<Work> issue(const std::string& what, ncclResult_t r) {
    if (r != ncclSuccess) fail(what, nccl_text(r));
    cudaEvent_t done = nullptr;
    check_cuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate");
    check_cuda(cudaEventRecord(done, stream_), "cudaEventRecord");
    return std::make_unique<NcclWork>(*this, done, what);
  }

  static void check_cuda(cudaError_t e, const char* what) {
    if (e != cudaSuccess)
      throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
  }
  static void check_nccl(ncclResult_t r, const char* what) {
    if (r != ncclSuccess) throw std::runtime_error(std::string(what) + ": " + nccl_text(r));
  }

  DistEnv env_;
  int device_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void* barrier_buf_ = nullptr;
  void* scratch_[2] = {nullptr, nullptr};
  size_t scratch_bytes_[2] = {0, 0};
  bool aborted_ = false;
};

void NcclWork::wait() {
  owner_.wait_for(done_, what_);
}

}  // namespace

Result<std::unique_ptr<Communicator>> make_nccl_communicator(const DistEnv& env, int device) {
  auto comm = std::make_unique<NcclCommunicator>(env, device);
  try {
    comm->start();
  } catch (const std::exception& e) {
    std::string msg = e.what();
    return Error{"rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size) +
                 ": could not form the NCCL group through " + detail::store_name(env) + ": " +
                 msg.substr(0, msg.find('\n'))};
  }
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace ramstream::dist
