// The CPU backend of device.h and the host worker queue.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <stdexcept>
#include <thread>

#include "pipeline/device.h"
#include "pipeline/host_event.h"

namespace ramstream::pipeline {
namespace detail {
namespace {

std::atomic<int64_t> g_host_waits{0};
thread_local bool t_worker_thread = false;

}  // namespace

void count_host_wait() {
  if (!t_worker_thread) g_host_waits.fetch_add(1, std::memory_order_relaxed);
}

void mark_worker_thread() {
  t_worker_thread = true;
}

void HostEvent::record(Stream& stream) {
  uint64_t target;
  {
    std::lock_guard<std::mutex> lock(st_->mu);
    target = ++st_->recorded;
  }
  stream.host_task([st = st_, target] { st->signal(target); });
}

void HostEvent::synchronize() {
  count_host_wait();
  st_->wait_for(st_->last_recorded());
}

bool HostEvent::query() {
  std::lock_guard<std::mutex> lock(st_->mu);
  return st_->reached >= st_->recorded;
}

double HostEvent::elapsed_us(Event& start) {
  HostEvent* s = as_host_event(start);
  if (s == nullptr) throw std::logic_error("HostEvent::elapsed_us: start is not a host event");
  auto reached_at = [](State& st) {
    std::lock_guard<std::mutex> lock(st.mu);
    if (st.reached == 0 || st.reached < st.recorded) {
      throw std::logic_error("HostEvent::elapsed_us: an event was not reached");
    }
    return st.reached_at;
  };
  const auto a = reached_at(*s->st_);
  const auto b = reached_at(*st_);
  return std::chrono::duration<double, std::micro>(b - a).count();
}

uint64_t HostEvent::State::last_recorded() {
  std::lock_guard<std::mutex> lock(mu);
  return recorded;
}

void HostEvent::State::wait_for(uint64_t target) {
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return reached >= target; });
}

void HostEvent::State::signal(uint64_t target) {
  std::lock_guard<std::mutex> lock(mu);
  if (target > reached) {
    reached = target;
    reached_at = std::chrono::steady_clock::now();
  }
  cv.notify_all();
}

HostEvent* as_host_event(Event& e) {
  return dynamic_cast<HostEvent*>(&e);
}

}  // namespace detail

int64_t host_wait_count() {
  return detail::g_host_waits.load(std::memory_order_relaxed);
}

namespace {

using detail::HostEvent;

HostEvent& host_event_or_throw(Event& e) {
  HostEvent* h = detail::as_host_event(e);
  if (h == nullptr) throw std::logic_error("a CPU stream can only wait for CPU/host events");
  return *h;
}

// A worker thread running its queue in order. Fault injection sleeps before every task and
// copies in four pieces with sleeps between them.
class WorkerStream final : public Stream {
 public:
  WorkerStream(std::string name, const CpuDeviceOptions& opts)
      : name_(std::move(name)), opts_(opts), rng_(opts.fault_seed) {
    thread_ = std::thread([this] { run(); });
  }
  ~WorkerStream() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  const std::string& name() const override { return name_; }

  void copy(void* dst, const void* src, size_t bytes) override {
    host_task([this, dst, src, bytes] {
      if (!opts_.fault_injection) {
        std::memcpy(dst, src, bytes);
        return;
      }
      const size_t piece = (bytes + 3) / 4;
      for (size_t off = 0; off < bytes; off += piece) {
        std::memcpy(static_cast<char*>(dst) + off, static_cast<const char*>(src) + off,
                    std::min(piece, bytes - off));
        fault_delay();
      }
    });
  }

  void wait(Event& event) override {
    std::shared_ptr<HostEvent::State> st = host_event_or_throw(event).state();
    const uint64_t target = st->last_recorded();
    host_task([st, target] { st->wait_for(target); });
  }

  void host_task(std::function<void()> fn) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(fn));
      ++enqueued_;
    }
    cv_.notify_all();
  }

  void synchronize() override {
    detail::count_host_wait();
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t target = enqueued_;
    done_cv_.wait(lock, [&] { return finished_ >= target; });
  }

 private:
  void fault_delay() {
    if (!opts_.fault_injection) return;
    std::uniform_int_distribution<int> d(0, opts_.fault_max_delay_us);
    std::this_thread::sleep_for(std::chrono::microseconds(d(rng_)));
  }

  void run() {
    detail::mark_worker_thread();
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stop requested and drained
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      fault_delay();
      if (opts_.before_each_task) opts_.before_each_task();
      task();
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++finished_;
      }
      done_cv_.notify_all();
    }
  }

  const std::string name_;
  const CpuDeviceOptions opts_;
  std::mt19937_64 rng_;  // used by the worker thread only
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::deque<std::function<void()>> queue_;
  uint64_t enqueued_ = 0, finished_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

// The CPU compute stream: the calling thread itself.
class InlineStream final : public Stream {
 public:
  const std::string& name() const override { return name_; }
  void copy(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void wait(Event& event) override {
    HostEvent::State& st = *host_event_or_throw(event).state();
    st.wait_for(st.last_recorded());  // the compute stream waiting, not a host read
  }
  void host_task(std::function<void()> fn) override { fn(); }
  void synchronize() override {}

 private:
  const std::string name_ = "compute";
};

class CpuDevice final : public Device {
 public:
  explicit CpuDevice(const CpuDeviceOptions& opts) : opts_(opts) {
    if (opts.compute_dtype != at::kFloat && opts.compute_dtype != at::kBFloat16) {
      throw std::invalid_argument(std::string("cpu device: compute dtype must be fp32 or bf16, "
                                              "got ") +
                                  c10::toString(opts.compute_dtype));
    }
  }
  DeviceKind kind() const override { return DeviceKind::kCpu; }
  at::Device torch_device() const override { return at::kCPU; }
  at::ScalarType compute_dtype() const override { return opts_.compute_dtype; }
  at::Tensor alloc(int64_t numel, at::ScalarType dtype) override {
    return at::zeros({numel}, at::TensorOptions().dtype(dtype));
  }
  at::Tensor alloc_host(int64_t numel, at::ScalarType dtype) override {
    return at::zeros({numel}, at::TensorOptions().dtype(dtype));
  }
  std::unique_ptr<Stream> new_stream(const std::string& name) override {
    CpuDeviceOptions o = opts_;
    o.fault_seed = opts_.fault_seed + (++streams_) * 7919;  // distinct delays per stream
    return std::make_unique<WorkerStream>(name, o);
  }
  std::unique_ptr<Stream> new_compute_stream() override { return std::make_unique<InlineStream>(); }
  std::unique_ptr<StreamScope> make_current(Stream&) override {
    return std::make_unique<StreamScope>();
  }
  std::unique_ptr<Event> new_event(bool) override { return std::make_unique<HostEvent>(); }
  std::string describe() const override {
    return std::string("cpu (") + (opts_.compute_dtype == at::kBFloat16 ? "bf16" : "fp32") +
           " compute" + (opts_.fault_injection ? ", fault injection)" : ")");
  }

 private:
  const CpuDeviceOptions opts_;
  uint64_t streams_ = 0;
};

}  // namespace

std::unique_ptr<Device> make_cpu_device(const CpuDeviceOptions& options) {
  return std::make_unique<CpuDevice>(options);
}

std::unique_ptr<Stream> make_host_worker(const std::string& name, const CpuDeviceOptions& options) {
  return std::make_unique<WorkerStream>(name, options);
}

std::unique_ptr<Event> make_host_event() {
  return std::make_unique<HostEvent>();
}

}  // namespace ramstream::pipeline
