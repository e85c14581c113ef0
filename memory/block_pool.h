// BlockPool: a lock-free pool of fixed-size host blocks for staging buffers, activation
// checkpoints and KV pages, carved from one HostArena (so NUMA-placed, huge-paged and pinned like
// it) and never returned to the OS while the pool lives.
//
// Structure (DPDK rte_mempool / folly IndexedMemPool style):
//   - a global free list: a TaggedIndexStack (index_stack.h) of block INDICES, a Treiber stack
//     whose head is one 64-bit word (32-bit index + 32-bit version) changed only by CAS, so ABA
//     cannot strike. Its next-links live in a separate array, not inside the blocks, so users may
//     write every byte of a block.
//   - per-thread caches: allocate() pops from the calling thread's cache and refills it with one
//     batch of thread_cache_size() blocks from the global list when empty; free() pushes to the
//     cache and, once it holds 2 x thread_cache_size() blocks, returns the older half in one CAS.
//     A thread's cache goes back to the global list when the thread exits, and on
//     flush_thread_cache().
// Consequence of caching: allocate() may return nullptr while other threads' caches still hold
// free blocks. Each thread caches at most 2 x thread_cache_size() blocks, which the automatic
// size keeps to capacity/32 per thread; size pools with that slack.
//
// A free() on one thread happens-before the allocate() that hands the same block to another, so
// data written into a block before free() is visible to its next owner.
// The pool must outlive every allocate()/free() call on it; threads may outlive the pool.
//
//   Result<std::unique_ptr<BlockPool>> r =
//       BlockPool::create(64 << 10, 256, ArenaOptions{}, "H2D staging");
//   if (!r.ok()) return r.error();
//   std::unique_ptr<BlockPool> pool = std::move(r).value();
//   void* b = pool->allocate();   // nullptr when exhausted
//   if (b) { /* ... */ pool->free(b); }
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "memory/arena.h"
#include "memory/index_stack.h"
#include "util/result.h"

namespace ramstream::memory {

class BlockPool {
 public:
  // Blocks are 64-byte aligned and block_bytes is rounded up to a multiple of 64 (see
  // block_bytes()); the first block sits at the arena's base (page, or 2 MiB, aligned).
  static constexpr uint64_t kBlockAlign = 64;
  // Largest per-thread batch; the cache holds up to twice this.
  static constexpr uint32_t kMaxThreadCacheSize = 32;
  // A thread keeps caches for this many pools at once; using more evicts (flushes) the oldest.
  static constexpr int kMaxPoolsPerThread = 16;

  // thread_cache_size: blocks moved per batch between a thread's cache and the global list,
  // at most kMaxThreadCacheSize; 0 disables caching; -1 picks min(32, num_blocks / 64).
  static Result<std::unique_ptr<BlockPool>> create(uint64_t block_bytes, uint64_t num_blocks,
                                                   const ArenaOptions& opts,
                                                   const std::string& what,
                                                   int thread_cache_size = -1);
  ~BlockPool();
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  // A free block, or nullptr when none is left (see the caching note at the top).
  void* allocate();
  // Returns `block` to the pool; nullptr is ignored. Aborts with a message when `block` is not
  // the start of a block of this pool: that is memory corruption in the caller.
  void free(void* block);
  // Returns the calling thread's cached blocks of this pool to the global list.
  void flush_thread_cache();

  uint64_t block_bytes() const { return stride_; }  // requested size rounded up to 64
  uint64_t requested_block_bytes() const { return requested_block_bytes_; }
  uint64_t capacity() const { return capacity_; }
  uint32_t thread_cache_size() const { return cache_size_; }
  // Global list plus every thread's cache. Exact when no other thread is allocating or freeing.
  uint64_t free_blocks_approx() const;
  // True when p is the start of one of this pool's blocks.
  bool owns(const void* p) const;
  // Stable block numbering in [0, capacity()), e.g. for page tables. index_of() aborts like
  // free() when `block` is not one of this pool's.
  uint32_t index_of(const void* block) const;
  void* block_at(uint32_t index) const { return arena_.data() + uint64_t{index} * stride_; }

  const HostArena& arena() const { return arena_; }
  std::string describe() const;

 private:
  struct ThreadCache;
  friend struct ThreadCacheSet;

  BlockPool() = default;
  // The calling thread's cache of this pool, created on first use; nullptr when caching is off.
  ThreadCache* local_cache();
  ThreadCache* attach_cache();
  // Empties `cache` into the global list.
  void drain(ThreadCache* cache);
  // `cache` is the calling thread's and the registry lock is held: drain and delete it.
  void detach_cache_locked(ThreadCache* cache);
  uint32_t index_unchecked(const void* block) const;
  [[noreturn]] void die_not_owned(const void* p, const char* op) const;

  HostArena arena_;
  uint64_t requested_block_bytes_ = 0;
  uint64_t stride_ = 0;
  int stride_shift_ = -1;  // log2(stride_) when a power of two: index by shift, not division
  uint64_t capacity_ = 0;
  uint32_t cache_size_ = 0;
  uint64_t id_ = 0;  // never reused, unlike addresses: keys the thread caches
  std::string what_;
  std::unique_ptr<TaggedIndexStack> free_list_;  // the global free list
  // Caches of live threads, owned here so that the pool's destructor frees them; guarded by the
  // process-wide registry mutex.
  std::vector<std::unique_ptr<ThreadCache>> caches_;
};

}  // namespace ramstream::memory
