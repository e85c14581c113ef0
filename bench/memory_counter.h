// Counts the bytes that libtorch allocates on the CPU, with a high-water mark, by installing a
// wrapping allocator. Used by benchmarks to compare the activation memory of two implementations
// in one process; install it once, before any tensor is created.
//
//   MemoryCounter& mem = MemoryCounter::install();
//   mem.reset_peak();
//   const int64_t base = mem.current();
//   run_step();
//   int64_t step_bytes = mem.peak() - base;
#pragma once

#include <atomic>
#include <cstdint>

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include "util/torch_compat.h"

namespace ramstream::bench {

class MemoryCounter final : public c10::Allocator {
 public:
  static MemoryCounter& install() {
    static MemoryCounter counter;
    c10::SetCPUAllocator(&counter, /*priority=*/100);
    return counter;
  }

  c10::DataPtr allocate(size_t n) RAMSTREAM_ALLOCATE_CONST override {
    // A 64-byte header keeps the size and the 64-byte alignment libtorch expects.
    char* base = static_cast<char*>(c10::alloc_cpu(n + kHeader));
    *reinterpret_cast<size_t*>(base) = n;
    add(static_cast<int64_t>(n));
    return {base + kHeader, base, &release, c10::Device(c10::DeviceType::CPU)};
  }
  RAMSTREAM_ALLOCATOR_COPY_DATA

  int64_t current() const { return current_.load(); }
  int64_t peak() const { return peak_.load(); }
  void reset_peak() { peak_.store(current_.load()); }

 private:
  static constexpr size_t kHeader = 64;

  static MemoryCounter*& self() {
    static MemoryCounter* s = nullptr;
    return s;
  }
  MemoryCounter() { self() = this; }

  void add(int64_t n) const {
    const int64_t now = current_.fetch_add(n) + n;
    int64_t p = peak_.load();
    while (now > p && !peak_.compare_exchange_weak(p, now)) {
    }
  }
  static void release(void* ctx) {
    char* base = static_cast<char*>(ctx);
    self()->add(-static_cast<int64_t>(*reinterpret_cast<size_t*>(base)));
    c10::free_cpu(base);
  }

  mutable std::atomic<int64_t> current_{0};
  mutable std::atomic<int64_t> peak_{0};
};

}  // namespace ramstream::bench
