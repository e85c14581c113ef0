// TaggedIndexStack: the lock-free global free list under BlockPool, kept apart so that its ABA
// safety can be tested deterministically.
//
// A Treiber stack of 32-bit indices in [0, capacity). The head is one 64-bit word, {index,
// version}, changed only by CAS, and every push and pop bumps the version: if the top entry is
// popped and pushed back between a thread's load of the head and its CAS, the version differs and
// the CAS fails (the ABA problem that breaks an untagged stack). The next-links sit in their own
// array, so the indexed objects themselves hold no list state. Nothing is ever freed while the
// stack lives, so a stale link read during a failed attempt is harmless.
//
//   TaggedIndexStack s(n);
//   s.fill();                      // 0 on top, then 1, 2, ...
//   uint32_t got[8];
//   uint32_t k = s.pop(got, 8);    // up to 8 indices in one CAS; 0 when empty
//   s.push(got, k);                // k >= 1 indices as one chain, got[0] ends on top
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

namespace ramstream::memory {

class TaggedIndexStack {
 public:
  static constexpr uint32_t kNil = 0xffffffffu;  // "none"; hence capacity < 2^32 - 1

  explicit TaggedIndexStack(uint32_t capacity)
      : capacity_(capacity), next_(new std::atomic<uint32_t>[capacity]) {
    for (uint32_t i = 0; i < capacity; ++i) next_[i].store(kNil, std::memory_order_relaxed);
  }

  uint32_t capacity() const { return capacity_; }

  // Puts every index on the stack, 0 on top. Only while no other thread uses the stack.
  void fill() {
    for (uint32_t i = 0; i < capacity_; ++i)
      next_[i].store(i + 1 < capacity_ ? i + 1 : kNil, std::memory_order_relaxed);
    size_.store(capacity_, std::memory_order_relaxed);
    head_.store(pack(capacity_ ? 0 : kNil, version(head_.load()) + 1), std::memory_order_release);
  }

  // Pops up to `max` (>= 1) indices into `out`, top first; returns how many, 0 when empty.
  uint32_t pop(uint32_t* out, uint32_t max) {
    return pop(out, max, [] {});
  }

  // As pop(); `before_cas` runs in every attempt between reading the chain and the CAS. Tests use
  // it to change the stack at exactly the moment that exposes ABA.
  template <class BeforeCas>
  uint32_t pop(uint32_t* out, uint32_t max, BeforeCas&& before_cas) {
    uint64_t head = head_.load(std::memory_order_acquire);
    for (;;) {
      const uint32_t top = index(head);
      if (top == kNil) return 0;
      // Links read here may be stale when another thread changes the stack meanwhile; then the
      // version moved and the CAS fails, so a stale chain is never published.
      uint32_t n = 0, cur = top, rest = kNil;
      for (;;) {
        out[n++] = cur;
        rest = next_[cur].load(std::memory_order_relaxed);
        if (n == max || rest == kNil) break;
        cur = rest;
      }
      before_cas();
      if (head_.compare_exchange_weak(head, pack(rest, version(head) + 1),
                                      std::memory_order_acq_rel, std::memory_order_acquire)) {
        size_.fetch_sub(n, std::memory_order_relaxed);
        return n;
      }
    }
  }

  // Pushes items[0..n) (n >= 1, none of them on the stack) as one chain in one CAS.
  void push(const uint32_t* items, uint32_t n) {
    for (uint32_t i = 0; i + 1 < n; ++i)
      next_[items[i]].store(items[i + 1], std::memory_order_relaxed);
    uint64_t head = head_.load(std::memory_order_relaxed);
    for (;;) {
      next_[items[n - 1]].store(index(head), std::memory_order_relaxed);
      // Release publishes the links above (and the caller's writes to the objects) to the
      // thread that pops them.
      if (head_.compare_exchange_weak(head, pack(items[0], version(head) + 1),
                                      std::memory_order_acq_rel, std::memory_order_relaxed)) {
        size_.fetch_add(n, std::memory_order_relaxed);
        return;
      }
    }
  }

  // Entries on the stack; exact when no other thread is pushing or popping.
  uint64_t size_approx() const {
    const int64_t n = size_.load(std::memory_order_relaxed);  // may dip below 0 transiently
    return n < 0 ? 0 : static_cast<uint64_t>(n);
  }

 private:
  static constexpr uint64_t pack(uint32_t index, uint32_t version) {
    return (uint64_t{version} << 32) | index;
  }
  static constexpr uint32_t index(uint64_t head) { return static_cast<uint32_t>(head); }
  static constexpr uint32_t version(uint64_t head) { return static_cast<uint32_t>(head >> 32); }

  uint32_t capacity_;
  std::unique_ptr<std::atomic<uint32_t>[]> next_;
  alignas(64) std::atomic<uint64_t> head_{pack(kNil, 0)};
  alignas(64) std::atomic<int64_t> size_{0};
};

}  // namespace ramstream::memory
