// The CPU backend of device.h and the host worker queue.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <stdexcept>
#include <thread>

#include "pipeline/device.h"

namespace ramstream::pipeline {
namespace {

// Counts records and reached points; waiting for a record waits for the point it marked.
class HostEvent final : public Event {
 public:
  void record(Stream& stream) override {
    uint64_t target;
    {
      std::lock_guard<std::mutex> lock(mu_);
      target = ++recorded_;
    }
    stream.host_task([this, target] { signal(target); });
  }
  void synchronize() override { wait_for(last_recorded()); }

  uint64_t last_recorded() {
    std::lock_guard<std::mutex> lock(mu_);
    return recorded_;
  }
  void wait_for(uint64_t target) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return reached_ >= target; });
  }

 private:
  void signal(uint64_t target) {
    std::lock_guard<std::mutex> lock(mu_);
    reached_ = std::max(reached_, target);
    cv_.notify_all();
  }

  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t recorded_ = 0;
  uint64_t reached_ = 0;
};

HostEvent& as_host_event(Event& e) {
  auto* h = dynamic_cast<HostEvent*>(&e);
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
    HostEvent& e = as_host_event(event);
    const uint64_t target = e.last_recorded();
    host_task([&e, target] { e.wait_for(target); });
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
  void wait(Event& event) override { as_host_event(event).synchronize(); }
  void host_task(std::function<void()> fn) override { fn(); }
  void synchronize() override {}

 private:
  const std::string name_ = "compute";
};

class CpuDevice final : public Device {
 public:
  explicit CpuDevice(const CpuDeviceOptions& opts) : opts_(opts) {}
  DeviceKind kind() const override { return DeviceKind::kCpu; }
  at::Device torch_device() const override { return at::kCPU; }
  at::ScalarType compute_dtype() const override { return at::kFloat; }
  at::Tensor alloc(int64_t numel, at::ScalarType dtype) override {
    return at::zeros({numel}, at::TensorOptions().dtype(dtype));
  }
  std::unique_ptr<Stream> new_stream(const std::string& name) override {
    CpuDeviceOptions o = opts_;
    o.fault_seed = opts_.fault_seed + (++streams_) * 7919;  // distinct delays per stream
    return std::make_unique<WorkerStream>(name, o);
  }
  std::unique_ptr<Event> new_event() override { return std::make_unique<HostEvent>(); }
  Stream& compute_stream() override { return compute_; }
  std::string describe() const override {
    return std::string("cpu (fp32 compute") + (opts_.fault_injection ? ", fault injection)" : ")");
  }

 private:
  const CpuDeviceOptions opts_;
  uint64_t streams_ = 0;
  InlineStream compute_;
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
