// Collectives between the processes of one training job, on flat buffers: the one interface the
// engine and the trainer call, whatever moves the bytes (Gloo over TCP for host buffers, NCCL for
// device buffers, nothing at all for a single process).
//
// Rules every caller keeps:
//   * every rank issues the same collectives in the same order (the engine and the trainer issue
//     all of theirs from one queue, pipeline::Engine::collective);
//   * a collective that cannot finish (a rank died, hung, or the network broke) throws CommError
//     within the timeout, and its message names the rank at fault when it can be found out (see
//     dist/gloo_communicator.h for how);
//   * `what` labels the collective in such messages ("grads of block 3, step 12").
//
//   std::unique_ptr<Communicator> comm = make_communicator(env.value(), {}).value_or_throw();
//   std::vector<float> g(n);                        // this rank's grads
//   comm->all_reduce_sum(g.data(), n, DType::kFloat32, "grads")->wait();   // now the sum
//   comm->all_gather(shard, full, n / comm->world_size(), DType::kFloat32, "weights")->wait();
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

namespace ramstream::dist {

// kBFloat16 moves bytes only (all-gather, broadcast): its sums are not offered (Gloo in
// libtorch 1.13 has no bf16 arithmetic).
enum class DType { kFloat32, kFloat64, kInt64, kBFloat16 };
int64_t dtype_size(DType t);

// A collective failed or timed out. `rank_at_fault` is -1 when no single rank could be named.
class CommError : public std::runtime_error {
 public:
  CommError(const std::string& message, int rank_at_fault)
      : std::runtime_error(message), rank_at_fault_(rank_at_fault) {}
  int rank_at_fault() const { return rank_at_fault_; }

 private:
  int rank_at_fault_;
};

// An issued collective; wait() blocks until its output is complete (throws CommError).
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
};

// Bytes a collective put on this rank's links, counted per call from the algorithm the back-end
// runs (ring: 2(N-1)/N of the buffer for an all-reduce, (N-1)/N for reduce-scatter and
// all-gather). A logical count, for comparing with the analytic model, not a packet capture.
struct TrafficCounters {
  int64_t collectives = 0;
  int64_t bytes_sent = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual std::string backend() const = 0;  // "single", "gloo", "nccl"

  // In place: buf[i] = sum over ranks of buf[i]. The result is bitwise the same on every rank.
  virtual std::unique_ptr<Work> all_reduce_sum(void* buf, int64_t count, DType dtype,
                                               const std::string& what) = 0;
  // in: world_size() * count elements; out: count elements, this rank's block summed over ranks
  // (block r = in[r*count, (r+1)*count)).
  virtual std::unique_ptr<Work> reduce_scatter_sum(const void* in, void* out, int64_t count,
                                                   DType dtype, const std::string& what) = 0;
  // in: count elements; out: world_size() * count, rank r's at out[r*count].
  virtual std::unique_ptr<Work> all_gather(const void* in, void* out, int64_t count, DType dtype,
                                           const std::string& what) = 0;
  // root's buf to every rank.
  virtual std::unique_ptr<Work> broadcast(void* buf, int64_t count, DType dtype, int root,
                                          const std::string& what) = 0;
  virtual void barrier(const std::string& what) = 0;

  // Safe to read from any thread while collectives run.
  TrafficCounters traffic() const { return {collectives_.load(), bytes_sent_.load()}; }

 protected:
  void count_traffic(int64_t bytes) {
    collectives_.fetch_add(1);
    bytes_sent_.fetch_add(bytes);
  }

 private:
  std::atomic<int64_t> collectives_{0}, bytes_sent_{0};
};

// World size 1: every collective is its identity (all_gather/reduce_scatter copy).
std::unique_ptr<Communicator> make_single_communicator();

}  // namespace ramstream::dist
