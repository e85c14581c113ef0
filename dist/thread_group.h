// N ranks as threads of one process, for tests: a Communicator per rank whose collectives meet in
// shared memory. Each op waits until every rank has called it; the last one to arrive reads every
// rank's input (through `copy`, so device buffers work when it is a cudaMemcpy with
// cudaMemcpyDefault), sums in rank order (deterministic, and for two ranks a + b, the same bits as
// any order), and writes every rank's output. It lets one GPU run the engine's data-parallel path
// with several ranks, which NCCL cannot (one rank per GPU).
//
//   ThreadGroup group(2);
//   std::thread t0([&] { auto c = group.communicator(0); c->all_reduce_sum(...)->wait(); });
//   std::thread t1([&] { auto c = group.communicator(1); c->all_reduce_sum(...)->wait(); });
#pragma once

#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dist/communicator.h"

namespace ramstream::dist {

class ThreadGroup {
 public:
  using Copy = std::function<void(void* dst, const void* src, size_t bytes)>;
  explicit ThreadGroup(
      int world, Copy copy = [](void* d, const void* s, size_t n) { std::memcpy(d, s, n); })
      : world_(world), copy_(std::move(copy)), calls_(static_cast<size_t>(world)) {}

  std::unique_ptr<Communicator> communicator(int rank);

 private:
  enum class Kind { kAllReduce, kReduceScatter, kAllGather, kBroadcast, kBarrier };
  struct Call {
    const void* in = nullptr;
    void* out = nullptr;
    int64_t count = 0;
    DType dtype = DType::kFloat32;
    int root = 0;
  };
  class Member;

  // Rank `rank`'s part of one collective; returns once every rank's output is written.
  void meet(int rank, Kind kind, const Call& call);
  void run(Kind kind);

  int world_;
  Copy copy_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Call> calls_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
};

}  // namespace ramstream::dist
