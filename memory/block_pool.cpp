#include "memory/block_pool.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "memory/topology.h"

namespace ramstream::memory {

namespace {

// Live pools by id, and every pool's list of thread caches. Thread exit and pool destruction
// both take this lock, so a thread never flushes into a pool that is being destroyed. Only the
// slow paths (a thread's first use of a pool, thread exit, pool lifetime, free_blocks_approx)
// take it. Leaked so that threads exiting during static destruction still find it.
struct Registry {
  std::mutex mu;
  std::unordered_map<uint64_t, BlockPool*> live;
  uint64_t next_id = 1;
};

Registry& registry() {
  static Registry* r = new Registry;
  return *r;
}

}  // namespace

struct BlockPool::ThreadCache {
  std::atomic<uint32_t> count{0};  // written by the owning thread only; read by free_blocks_approx
  uint32_t items[2 * kMaxThreadCacheSize];
};

// The calling thread's caches, one slot per pool it used recently.
struct ThreadCacheSet {
  struct Slot {
    uint64_t pool_id = 0;  // 0 = empty
    BlockPool::ThreadCache* cache = nullptr;
  };
  Slot slots[BlockPool::kMaxPoolsPerThread];
  int next_victim = 0;

  ~ThreadCacheSet() {
    Registry& reg = registry();
    std::lock_guard<std::mutex> lock(reg.mu);
    for (Slot& s : slots) {
      if (s.pool_id == 0) continue;
      auto it = reg.live.find(s.pool_id);
      // A dead pool already freed its caches.
      if (it != reg.live.end()) it->second->detach_cache_locked(s.cache);
      s = Slot{};
    }
  }
};

namespace {
thread_local ThreadCacheSet t_caches;
}  // namespace

Result<std::unique_ptr<BlockPool>> BlockPool::create(uint64_t block_bytes, uint64_t num_blocks,
                                                     const ArenaOptions& opts,
                                                     const std::string& what,
                                                     int thread_cache_size) {
  if (block_bytes == 0 || num_blocks == 0) {
    return Error{what + ": a block pool needs block_bytes > 0 and num_blocks > 0 (got " +
                 std::to_string(block_bytes) + " and " + std::to_string(num_blocks) + ")"};
  }
  if (num_blocks >= TaggedIndexStack::kNil) {
    return Error{what + ": " + std::to_string(num_blocks) + " blocks exceed the pool's limit of " +
                 std::to_string(TaggedIndexStack::kNil - 1)};
  }
  if (thread_cache_size > static_cast<int>(kMaxThreadCacheSize)) {
    return Error{what + ": thread_cache_size " + std::to_string(thread_cache_size) + " exceeds " +
                 std::to_string(kMaxThreadCacheSize)};
  }
  if (block_bytes > (~0ull - kBlockAlign) / num_blocks) {
    return Error{what + ": " + std::to_string(num_blocks) + " blocks of " +
                 std::to_string(block_bytes) + " bytes overflow 64 bits"};
  }
  const uint64_t stride = (block_bytes + kBlockAlign - 1) / kBlockAlign * kBlockAlign;
  Result<HostArena> arena = HostArena::create(stride * num_blocks, opts, what);
  if (!arena.ok()) return arena.error();

  std::unique_ptr<BlockPool> pool(new BlockPool);
  pool->arena_ = std::move(arena).value();
  pool->requested_block_bytes_ = block_bytes;
  pool->stride_ = stride;
  if ((stride & (stride - 1)) == 0) pool->stride_shift_ = __builtin_ctzll(stride);
  pool->capacity_ = num_blocks;
  pool->cache_size_ =
      thread_cache_size >= 0
          ? static_cast<uint32_t>(thread_cache_size)
          : static_cast<uint32_t>(std::min<uint64_t>(kMaxThreadCacheSize, num_blocks / 64));
  pool->what_ = what;
  // Index 0 on top: a fresh pool hands blocks out front to back.
  pool->free_list_ = std::make_unique<TaggedIndexStack>(static_cast<uint32_t>(num_blocks));
  pool->free_list_->fill();

  Registry& reg = registry();
  std::lock_guard<std::mutex> lock(reg.mu);
  pool->id_ = reg.next_id++;
  reg.live.emplace(pool->id_, pool.get());
  return Result<std::unique_ptr<BlockPool>>(std::move(pool));
}

BlockPool::~BlockPool() {
  Registry& reg = registry();
  std::lock_guard<std::mutex> lock(reg.mu);
  reg.live.erase(id_);
  // Threads still holding slots for this id see it gone and never touch these caches again.
  caches_.clear();
}

BlockPool::ThreadCache* BlockPool::local_cache() {
  if (cache_size_ == 0) return nullptr;
  for (const ThreadCacheSet::Slot& s : t_caches.slots)
    if (s.pool_id == id_) return s.cache;
  return attach_cache();
}

BlockPool::ThreadCache* BlockPool::attach_cache() {
  Registry& reg = registry();
  std::lock_guard<std::mutex> lock(reg.mu);
  ThreadCacheSet& set = t_caches;
  ThreadCacheSet::Slot* free_slot = nullptr;
  for (ThreadCacheSet::Slot& s : set.slots) {
    if (s.pool_id != 0 && reg.live.count(s.pool_id) == 0) s = {};  // that pool is gone
    if (s.pool_id == 0 && !free_slot) free_slot = &s;
  }
  if (!free_slot) {
    free_slot = &set.slots[set.next_victim];
    set.next_victim = (set.next_victim + 1) % kMaxPoolsPerThread;
    reg.live.at(free_slot->pool_id)->detach_cache_locked(free_slot->cache);
  }
  caches_.push_back(std::make_unique<ThreadCache>());
  *free_slot = {id_, caches_.back().get()};
  return free_slot->cache;
}

void BlockPool::drain(ThreadCache* cache) {
  const uint32_t n = cache->count.load(std::memory_order_relaxed);
  if (n != 0) free_list_->push(cache->items, n);
  cache->count.store(0, std::memory_order_relaxed);
}

void BlockPool::detach_cache_locked(ThreadCache* cache) {
  drain(cache);
  auto it =
      std::find_if(caches_.begin(), caches_.end(),
                   [cache](const std::unique_ptr<ThreadCache>& c) { return c.get() == cache; });
  if (it != caches_.end()) caches_.erase(it);
}

void* BlockPool::allocate() {
  ThreadCache* cache = local_cache();
  if (!cache) {
    uint32_t index;
    return free_list_->pop(&index, 1) ? block_at(index) : nullptr;
  }
  uint32_t n = cache->count.load(std::memory_order_relaxed);
  if (n == 0) n = free_list_->pop(cache->items, cache_size_);
  if (n == 0) return nullptr;
  const uint32_t index = cache->items[--n];
  cache->count.store(n, std::memory_order_relaxed);
  return block_at(index);
}

void BlockPool::free(void* block) {
  if (!block) return;
  if (!owns(block)) die_not_owned(block, "free");
  const uint32_t index = index_unchecked(block);
  ThreadCache* cache = local_cache();
  if (!cache) {
    free_list_->push(&index, 1);
    return;
  }
  uint32_t n = cache->count.load(std::memory_order_relaxed);
  cache->items[n++] = index;
  if (n == 2 * cache_size_) {
    // Keep the most recently freed half: those blocks are the likeliest to be in CPU caches.
    free_list_->push(cache->items, cache_size_);
    std::memmove(cache->items, cache->items + cache_size_, cache_size_ * sizeof(uint32_t));
    n -= cache_size_;
  }
  cache->count.store(n, std::memory_order_relaxed);
}

void BlockPool::flush_thread_cache() {
  for (const ThreadCacheSet::Slot& s : t_caches.slots)
    if (s.pool_id == id_) drain(s.cache);
}

uint64_t BlockPool::free_blocks_approx() const {
  Registry& reg = registry();
  std::lock_guard<std::mutex> lock(reg.mu);
  uint64_t n = free_list_->size_approx();
  for (const std::unique_ptr<ThreadCache>& c : caches_)
    n += c->count.load(std::memory_order_relaxed);
  return std::min(n, capacity_);
}

bool BlockPool::owns(const void* p) const {
  const uintptr_t base = reinterpret_cast<uintptr_t>(arena_.data());
  const uintptr_t q = reinterpret_cast<uintptr_t>(p);
  if (q < base) return false;
  const uint64_t off = q - base;
  if (off >= capacity_ * stride_) return false;
  return stride_shift_ >= 0 ? (off & (stride_ - 1)) == 0 : off % stride_ == 0;
}

uint32_t BlockPool::index_of(const void* block) const {
  if (!owns(block)) die_not_owned(block, "index_of");
  return index_unchecked(block);
}

uint32_t BlockPool::index_unchecked(const void* block) const {
  const uint64_t off =
      reinterpret_cast<uintptr_t>(block) - reinterpret_cast<uintptr_t>(arena_.data());
  return static_cast<uint32_t>(stride_shift_ >= 0 ? off >> stride_shift_ : off / stride_);
}

void BlockPool::die_not_owned(const void* p, const char* op) const {
  // Straight to stderr: the process is about to abort, and a logger may buffer or go elsewhere.
  std::fprintf(stderr,
               "%s: %s(%p) of a pointer that is not a block of this pool (%llu blocks of %llu B at "
               "%p)\n",
               what_.c_str(), op, p, static_cast<unsigned long long>(capacity_),
               static_cast<unsigned long long>(stride_), static_cast<const void*>(arena_.data()));
  std::abort();
}

std::string BlockPool::describe() const {
  std::string s = what_ + ": " + std::to_string(capacity_) + " blocks of " + format_bytes(stride_) +
                  " (" + std::to_string(requested_block_bytes_) + " B requested, " +
                  std::to_string(stride_) + " B stride), thread cache ";
  s += cache_size_
           ? std::to_string(cache_size_) + " (flush at " + std::to_string(2 * cache_size_) + ")"
           : std::string("off");
  // The arena carries the same name; drop it rather than say it twice.
  const std::string arena = arena_.describe();
  return s + "; arena: " + arena.substr(std::min(arena.size(), what_.size() + 2));
}

}  // namespace ramstream::memory
