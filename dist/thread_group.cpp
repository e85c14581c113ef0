#include "dist/thread_group.h"

#include <stdexcept>

namespace ramstream::dist {
namespace {

class DoneWork final : public Work {
 public:
  void wait() override {}
};

template <class T>
void add_into(std::vector<char>& acc, const std::vector<char>& x) {
  T* a = reinterpret_cast<T*>(acc.data());
  const T* b = reinterpret_cast<const T*>(x.data());
  for (size_t i = 0; i < acc.size() / sizeof(T); ++i) a[i] += b[i];
}

void add(DType t, std::vector<char>& acc, const std::vector<char>& x) {
  switch (t) {
    case DType::kFloat32:
      return add_into<float>(acc, x);
    case DType::kFloat64:
      return add_into<double>(acc, x);
    case DType::kInt64:
      return add_into<int64_t>(acc, x);
    case DType::kBFloat16:
      throw std::invalid_argument("ThreadGroup: no sums of bf16");
  }
}

}  // namespace

class ThreadGroup::Member final : public Communicator {
 public:
  Member(ThreadGroup& g, int rank) : g_(g), rank_(rank) {}
  int rank() const override { return rank_; }
  int world_size() const override { return g_.world_; }
  std::string backend() const override { return "threads"; }

  std::unique_ptr<Work> all_reduce_sum(void* buf, int64_t count, DType dtype,
                                       const std::string&) override {
    return op(Kind::kAllReduce, {buf, buf, count, dtype, 0});
  }
  std::unique_ptr<Work> reduce_scatter_sum(const void* in, void* out, int64_t count, DType dtype,
                                           const std::string&) override {
    return op(Kind::kReduceScatter, {in, out, count, dtype, 0});
  }
  std::unique_ptr<Work> all_gather(const void* in, void* out, int64_t count, DType dtype,
                                   const std::string&) override {
    return op(Kind::kAllGather, {in, out, count, dtype, 0});
  }
  std::unique_ptr<Work> broadcast(void* buf, int64_t count, DType dtype, int root,
                                  const std::string&) override {
    return op(Kind::kBroadcast, {buf, buf, count, dtype, root});
  }
  void barrier(const std::string&) override { op(Kind::kBarrier, {}); }

 private:
  std::unique_ptr<Work> op(Kind kind, const Call& call) {
    g_.meet(rank_, kind, call);
    return std::make_unique<DoneWork>();
  }
  ThreadGroup& g_;
  int rank_;
};

std::unique_ptr<Communicator> ThreadGroup::communicator(int rank) {
  return std::make_unique<Member>(*this, rank);
}

void ThreadGroup::meet(int rank, Kind kind, const Call& call) {
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t gen = generation_;
  calls_[static_cast<size_t>(rank)] = call;
  if (++arrived_ == world_) {
    run(kind);
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return;
  }
  cv_.wait(lock, [&] { return generation_ != gen; });
}

void ThreadGroup::run(Kind kind) {
  if (kind == Kind::kBarrier) return;
  const Call& first = calls_[0];
  const size_t elem = static_cast<size_t>(dtype_size(first.dtype));
  const size_t n = static_cast<size_t>(first.count);
  const size_t world = static_cast<size_t>(world_);
  auto read = [&](const void* p, size_t bytes) {
    std::vector<char> v(bytes);
    copy_(v.data(), p, bytes);
    return v;
  };
  switch (kind) {
    case Kind::kAllReduce:
    case Kind::kReduceScatter: {
      const size_t bytes = (kind == Kind::kAllReduce ? n : n * world) * elem;
      std::vector<char> sum = read(calls_[0].in, bytes);
      for (size_t r = 1; r < world; ++r) add(first.dtype, sum, read(calls_[r].in, bytes));
      for (size_t r = 0; r < world; ++r) {
        if (kind == Kind::kAllReduce) {
          copy_(calls_[r].out, sum.data(), bytes);
        } else {
          copy_(calls_[r].out, sum.data() + r * n * elem, n * elem);
        }
      }
      return;
    }
    case Kind::kAllGather: {
      std::vector<char> all(world * n * elem);
      for (size_t r = 0; r < world; ++r) {
        std::vector<char> part = read(calls_[r].in, n * elem);
        std::memcpy(all.data() + r * n * elem, part.data(), n * elem);
      }
      for (size_t r = 0; r < world; ++r) copy_(calls_[r].out, all.data(), all.size());
      return;
    }
    case Kind::kBroadcast: {
      std::vector<char> v = read(calls_[static_cast<size_t>(first.root)].in, n * elem);
      for (size_t r = 0; r < world; ++r) copy_(calls_[r].out, v.data(), v.size());
      return;
    }
    case Kind::kBarrier:
      return;
  }
}

}  // namespace ramstream::dist
