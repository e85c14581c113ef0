// The host event shared by the device backends (internal to pipeline/): a counter of records and
// of reached points; waiting for a record waits for the point it marked. It also remembers when
// its last point was reached, for timelines.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "pipeline/device.h"

namespace ramstream::pipeline::detail {

class HostEvent final : public Event {
 public:
  // Shared with the tasks a record or a wait enqueues, so the event may be destroyed while
  // they are pending.
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    uint64_t recorded = 0;
    uint64_t reached = 0;
    std::chrono::steady_clock::time_point reached_at{};

    uint64_t last_recorded();
    // Blocks until the record numbered `target` is reached; not counted as a host wait (streams
    // use it to wait).
    void wait_for(uint64_t target);
    void signal(uint64_t target);
  };

  void record(Stream& stream) override;
  void synchronize() override;
  bool query() override;
  double elapsed_us(Event& start) override;
  const std::shared_ptr<State>& state() const { return st_; }

 private:
  std::shared_ptr<State> st_ = std::make_shared<State>();
};

// nullptr when `e` is not a host event.
HostEvent* as_host_event(Event& e);

// Counts one host wait unless the calling thread is a backend's worker thread.
void count_host_wait();
// Marks the calling thread as a worker (its waits are not the launcher's).
void mark_worker_thread();

}  // namespace ramstream::pipeline::detail
