#include "dist/gloo_communicator.h"

#include "dist/store.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#ifdef RAMSTREAM_WITH_GLOO
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

namespace ramstream::dist {

#ifndef RAMSTREAM_WITH_GLOO

bool gloo_available() {
  return false;
}

Result<std::unique_ptr<Communicator>> make_gloo_communicator(const DistEnv& env,
                                                             const GlooOptions&) {
  return Error{
      "this ramstream was built without c10d Gloo (install libgloo-dev and rebuild), so "
      "it cannot join a job of " +
      std::to_string(env.world_size) + " processes"};
}

Result<std::unique_ptr<StoreServer>> host_tcp_store(int, double) {
  return Error{"this ramstream was built without c10d (no Gloo): it cannot host a TCPStore"};
}

#else

bool gloo_available() {
  return true;
}

namespace {

using Clock = std::chrono::steady_clock;
using detail::connect_store;
using detail::store_name;
using std::chrono::milliseconds;

milliseconds to_ms(double s) {
  return milliseconds(static_cast<int64_t>(s * 1000.0));
}

at::ScalarType to_aten(DType t) {
  switch (t) {
    case DType::kFloat32:
      return at::kFloat;
    case DType::kFloat64:
      return at::kDouble;
    case DType::kInt64:
      return at::kLong;
    case DType::kBFloat16:
      return at::kHalf;  // the same two bytes, moved as they are (no arithmetic on them)
  }
  return at::kFloat;
}

void check_summable(DType t, const std::string& what) {
  if (t == DType::kBFloat16) {
    throw std::invalid_argument("Gloo: a sum of bf16 values (" + what + ") is not supported");
  }
}

at::Tensor view(const void* p, int64_t count, DType t) {
  return at::from_blob(const_cast<void*>(p), {count}, at::TensorOptions().dtype(to_aten(t)));
}

std::vector<uint8_t> bytes_of(const std::string& s) {
  return {s.begin(), s.end()};
}
std::string string_of(const std::vector<uint8_t>& b) {
  return {b.begin(), b.end()};
}

bool loopback(const std::string& addr) {
  return addr == "127.0.0.1" || addr == "localhost" || addr == "::1" || addr.rfind("127.", 0) == 0;
}

class GlooCommunicator;

class GlooWork final : public Work {
 public:
  GlooWork(GlooCommunicator& owner, c10::intrusive_ptr<c10d::Work> work, int64_t seq,
           std::string what, std::function<void()> after = {})
      : owner_(owner),
        work_(std::move(work)),
        seq_(seq),
        what_(std::move(what)),
        after_(std::move(after)) {}
  void wait() override;

 private:
  GlooCommunicator& owner_;
  c10::intrusive_ptr<c10d::Work> work_;
  int64_t seq_;
  std::string what_;
  std::function<void()> after_;
};

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(const DistEnv& env, const GlooOptions& options) : env_(env), opt_(options) {}

  ~GlooCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (heartbeat_.joinable()) heartbeat_.join();
  }

  // Store, heartbeat, group; throws std::exception with c10d's message.
  void start() {
    const bool hosts = env_.rank == 0 && detail::rank0_hosts_store(env_);
    store_ = connect_store(env_, hosts, env_.timeout_s);
    beat_store_ = connect_store(env_, false, 5.0);  // a connection of its own (see header)
    publish_heartbeat();
    heartbeat_ = std::thread([this] { heartbeat_loop(); });
    auto o = c10d::ProcessGroupGloo::Options::create(to_ms(env_.timeout_s));
    o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(gloo_host()));
    pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("rs/pg", store_), env_.rank, env_.world_size, o);
  }

  int rank() const override { return env_.rank; }
  int world_size() const override { return env_.world_size; }
  std::string backend() const override { return "gloo"; }

  std::unique_ptr<Work> all_reduce_sum(void* buf, int64_t count, DType dtype,
                                       const std::string& what) override {
    check_summable(dtype, what);
    const int64_t n = env_.world_size;
    count_traffic(2 * (n - 1) * count * dtype_size(dtype) / n);
    return issue(what, [&] {
      std::vector<at::Tensor> t{view(buf, count, dtype)};
      return pg_->allreduce(t);
    });
  }

  std::unique_ptr<Work> reduce_scatter_sum(const void* in, void* out, int64_t count, DType dtype,
                                           const std::string& what) override {
    check_summable(dtype, what);
    const int64_t n = env_.world_size;
    count_traffic(2 * (n - 1) * count * dtype_size(dtype));
    at::Tensor scratch = view(in, n * count, dtype).clone();
    const int64_t offset = env_.rank * count;
    return issue(
        what,
        [&] {
          std::vector<at::Tensor> t{scratch};
          return pg_->allreduce(t);
        },
        [scratch, out, offset, count] {
          std::memcpy(
              out, static_cast<const char*>(scratch.data_ptr()) + offset * scratch.element_size(),
              static_cast<size_t>(count * scratch.element_size()));
        });
  }

  std::unique_ptr<Work> all_gather(const void* in, void* out, int64_t count, DType dtype,
                                   const std::string& what) override {
    const int64_t n = env_.world_size;
    count_traffic((n - 1) * count * dtype_size(dtype));
    return issue(what, [&] {
      std::vector<std::vector<at::Tensor>> outputs(1);
      for (int64_t r = 0; r < n; ++r) {
        outputs[0].push_back(
            view(static_cast<char*>(out) + r * count * dtype_size(dtype), count, dtype));
      }
      std::vector<at::Tensor> inputs{view(in, count, dtype)};
      return pg_->allgather(outputs, inputs);
    });
  }

  std::unique_ptr<Work> broadcast(void* buf, int64_t count, DType dtype, int root,
                                  const std::string& what) override {
    const int64_t n = env_.world_size;
    count_traffic(env_.rank == root ? (n - 1) * count * dtype_size(dtype) : 0);
    return issue(what, [&] {
      std::vector<at::Tensor> t{view(buf, count, dtype)};
      c10d::BroadcastOptions o;
      o.rootRank = root;
      return pg_->broadcast(t, o);
    });
  }

  void barrier(const std::string& what) override {
    issue(what, [&] { return pg_->barrier(); })->wait();
  }

  // The error for collective `seq` that failed with `cause`: names the rank at fault if it can.
  [[noreturn]] void fail(int64_t seq, const std::string& what, const std::string& cause) {
    int fault = -1;
    const std::string diagnosis = diagnose(seq, &fault);
    std::string first_line = cause.substr(0, cause.find('\n'));
    if (first_line.size() > 300) first_line = first_line.substr(0, 300) + "...";
    throw CommError("rank " + std::to_string(env_.rank) + ": collective #" + std::to_string(seq) +
                        " (" + what + ") failed: " + diagnosis + " [gloo: " + first_line + "]",
                    fault);
  }

 private:
  template <class Issue>
  std::unique_ptr<Work> issue(const std::string& what, Issue&& fn,
                              std::function<void()> after = {}) {
    const int64_t seq = ++seq_;
    {
      std::lock_guard<std::mutex> lock(mu_);
      current_ = what;
    }
    try {
      return std::make_unique<GlooWork>(*this, fn(), seq, what, std::move(after));
    } catch (const std::exception& e) {
      fail(seq, what, e.what());
    }
  }

  std::string gloo_host() const {
    if (!opt_.hostname.empty()) return opt_.hostname;
    if (!env_.store_file.empty() || loopback(env_.master_addr)) return "127.0.0.1";
    char name[256] = {};
    if (gethostname(name, sizeof name - 1) != 0) return "127.0.0.1";
    return name;
  }

  std::string key(int r) const { return "rs/hb/" + std::to_string(r); }

  void publish_heartbeat() {
    std::string what;
    {
      std::lock_guard<std::mutex> lock(mu_);
      what = current_;
    }
    beat_store_->set(key(env_.rank), bytes_of(std::to_string(++beat_) + " " +
                                              std::to_string(seq_.load()) + " " + what));
  }

  void heartbeat_loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!cv_.wait_for(lock, to_ms(opt_.heartbeat_s), [&] { return stop_; })) {
      lock.unlock();
      try {
        publish_heartbeat();
      } catch (const std::exception&) {
        // The store is gone; the next collective reports it.
      }
      lock.lock();
    }
  }

  struct Beat {
    bool present = false;
    int64_t beat = -1, seq = -1;
    std::string what;
  };

  std::vector<Beat> read_beats() {
    std::vector<Beat> beats(static_cast<size_t>(env_.world_size));
    for (int r = 0; r < env_.world_size; ++r) {
      if (!beat_store_->check({key(r)})) continue;
      std::istringstream in(string_of(beat_store_->get(key(r))));
      Beat& b = beats[static_cast<size_t>(r)];
      b.present = true;
      in >> b.beat >> b.seq;
      std::getline(in >> std::ws, b.what);
    }
    return beats;
  }

  std::string diagnose(int64_t seq, int* fault) {
    std::vector<Beat> before, after;
    const auto t0 = Clock::now();
    try {
      before = read_beats();
      std::this_thread::sleep_for(to_ms(2.5 * opt_.heartbeat_s));
      after = read_beats();
    } catch (const std::exception&) {
      const bool rank0_hosts = detail::rank0_hosts_store(env_);
      if (rank0_hosts) *fault = 0;
      return store_name(env_) + " does not answer" +
             (rank0_hosts ? std::string(": rank 0, which hosts it, has probably died")
                          : std::string(""));
    }
    const double waited = std::chrono::duration<double>(Clock::now() - t0).count();
    std::string stopped, behind;
    for (int r = 0; r < env_.world_size; ++r) {
      if (r == env_.rank) continue;
      const Beat& a = before[static_cast<size_t>(r)];
      const Beat& b = after[static_cast<size_t>(r)];
      const std::string last = b.present ? "its last heartbeat was at collective #" +
                                               std::to_string(b.seq) +
                                               (b.what.empty() ? "" : " (" + b.what + ")")
                                         : "never seen";
      if (!b.present || a.beat == b.beat) {
        if (*fault < 0) *fault = r;
        char buf[64];
        std::snprintf(buf, sizeof buf, "no heartbeat for %.1f s", waited);
        stopped += (stopped.empty() ? "" : "; ") + ("rank " + std::to_string(r)) +
                   " has died or stopped (" + buf + ", " + last + ")";
      } else if (b.seq < seq) {
        behind += (behind.empty() ? "" : "; ") + ("rank " + std::to_string(r)) +
                  " is alive but has not reached it (" + last + ")";
      }
    }
    if (!stopped.empty()) return stopped;
    if (!behind.empty()) {
      for (int r = 0; r < env_.world_size && *fault < 0; ++r) {
        if (r != env_.rank && after[static_cast<size_t>(r)].seq < seq) *fault = r;
      }
      return behind;
    }
    return "every rank is alive and has reached it (a network or configuration problem?)";
  }

  DistEnv env_;
  GlooOptions opt_;
  c10::intrusive_ptr<c10d::Store> store_, beat_store_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
  std::atomic<int64_t> seq_{0};
  int64_t beat_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::string current_;
  std::thread heartbeat_;
};

void GlooWork::wait() {
  try {
    work_->wait();
  } catch (const std::exception& e) {
    owner_.fail(seq_, what_, e.what());
  }
  if (after_) after_();
}

class TcpStoreServer final : public StoreServer {
 public:
  TcpStoreServer(c10::intrusive_ptr<c10d::TCPStore> s, int port)
      : store_(std::move(s)), port_(port) {}
  int port() const override { return port_; }

 private:
  c10::intrusive_ptr<c10d::TCPStore> store_;
  int port_;
};

// A port nothing listens on now (bound to 0, then released).
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  close(fd);
  return port;
}

}  // namespace

Result<std::unique_ptr<Communicator>> make_gloo_communicator(const DistEnv& env,
                                                             const GlooOptions& options) {
  auto comm = std::make_unique<GlooCommunicator>(env, options);
  try {
    comm->start();
  } catch (const std::exception& e) {
    std::string msg = e.what();
    msg = msg.substr(0, msg.find('\n'));
    return Error{"rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size) +
                 ": could not form the group through " + detail::store_name(env) + " within " +
                 std::to_string(static_cast<int>(env.timeout_s)) + " s: " + msg};
  }
  return std::unique_ptr<Communicator>(std::move(comm));
}

Result<std::unique_ptr<StoreServer>> host_tcp_store(int port, double timeout_s) {
  if (port == 0) port = free_port();
  if (port <= 0) return Error{"no free TCP port for the store"};
  try {
    c10d::TCPStoreOptions o;
    o.port = static_cast<uint16_t>(port);
    o.isServer = true;
    o.waitWorkers = false;
    o.timeout = to_ms(timeout_s);
    auto s = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o);
    return std::unique_ptr<StoreServer>(std::make_unique<TcpStoreServer>(std::move(s), port));
  } catch (const std::exception& e) {
    std::string msg = e.what();
    return Error{"could not host the TCPStore on port " + std::to_string(port) + ": " +
                 msg.substr(0, msg.find('\n'))};
  }
}

#endif  // RAMSTREAM_WITH_GLOO

}  // namespace ramstream::dist
