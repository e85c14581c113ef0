#include "memory/block_pool.h"

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace ramstream::memory {
namespace {

std::unique_ptr<BlockPool> make_pool(uint64_t block_bytes, uint64_t n, int cache = -1) {
  ArenaOptions opts;
  opts.pin = false;
  Result<std::unique_ptr<BlockPool>> r =
      BlockPool::create(block_bytes, n, opts, "test pool", cache);
  EXPECT_TRUE(r.ok()) << r.error().message;
  return r.ok() ? std::move(r).value() : nullptr;
}

// Allocates until the pool says no; every block distinct.
std::vector<void*> drain_pool(BlockPool& pool) {
  std::vector<void*> blocks;
  while (void* b = pool.allocate()) blocks.push_back(b);
  return blocks;
}

TEST(BlockPool, RoundsBlocksTo64BytesAndAligns) {
  auto pool = make_pool(100, 50);
  ASSERT_TRUE(pool);
  EXPECT_EQ(pool->block_bytes(), 128u);
  EXPECT_EQ(pool->requested_block_bytes(), 100u);
  EXPECT_EQ(pool->capacity(), 50u);
  EXPECT_EQ(pool->arena().size(), 128u * 50);
  EXPECT_NE(pool->describe().find("50 blocks of 128 B (100 B requested"), std::string::npos)
      << pool->describe();
  for (uint32_t i = 0; i < 50; ++i) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(pool->block_at(i)) % 64, 0u);
    EXPECT_EQ(pool->index_of(pool->block_at(i)), i);
  }
  auto odd = make_pool(65, 3);
  EXPECT_EQ(odd->block_bytes(), 128u);
  EXPECT_EQ(odd->index_of(odd->block_at(2)), 2u);  // non-power-of-two path: 3 * 128 is fine too
  auto odd2 = make_pool(192, 3);
  EXPECT_EQ(odd2->block_bytes(), 192u);
  EXPECT_EQ(odd2->index_of(odd2->block_at(2)), 2u);
}

TEST(BlockPool, CreateRejectsBadSizes) {
  ArenaOptions opts;
  opts.pin = false;
  EXPECT_FALSE(BlockPool::create(0, 10, opts, "x").ok());
  EXPECT_FALSE(BlockPool::create(64, 0, opts, "x").ok());
  EXPECT_FALSE(BlockPool::create(64, 1ull << 32, opts, "x").ok());
  EXPECT_FALSE(BlockPool::create(64, 10, opts, "x", 33).ok());
  Result<std::unique_ptr<BlockPool>> r =
      BlockPool::create(1ull << 40, 1ull << 30, opts, "kv pages");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("kv pages"), std::string::npos) << r.error().message;
}

class BlockPoolCaches : public ::testing::TestWithParam<int> {};

TEST_P(BlockPoolCaches, ExhaustThenFreeAndReallocate) {
  auto pool = make_pool(64, 200, GetParam());
  std::vector<void*> blocks = drain_pool(*pool);
  ASSERT_EQ(blocks.size(), 200u);
  EXPECT_EQ(std::set<void*>(blocks.begin(), blocks.end()).size(), 200u);
  EXPECT_EQ(pool->allocate(), nullptr);
  EXPECT_EQ(pool->allocate(), nullptr);
  EXPECT_EQ(pool->free_blocks_approx(), 0u);

  pool->free(blocks[17]);
  EXPECT_EQ(pool->free_blocks_approx(), 1u);
  EXPECT_EQ(pool->allocate(), blocks[17]);
  EXPECT_EQ(pool->allocate(), nullptr);

  for (void* b : blocks) pool->free(b);
  EXPECT_EQ(pool->free_blocks_approx(), 200u);
  EXPECT_EQ(drain_pool(*pool).size(), 200u);
}

INSTANTIATE_TEST_SUITE_P(CacheSizes, BlockPoolCaches, ::testing::Values(-1, 0, 1, 5, 32));

TEST(BlockPool, UsersMayWriteWholeBlocks) {
  auto pool = make_pool(256, 64, 4);
  std::vector<void*> blocks = drain_pool(*pool);
  for (void* b : blocks) std::memset(b, 0xff, pool->block_bytes());
  for (void* b : blocks) pool->free(b);
  EXPECT_EQ(drain_pool(*pool).size(), 64u);  // no free-list state lived inside the blocks
}

TEST(BlockPool, Owns) {
  auto a = make_pool(100, 10);
  auto b = make_pool(100, 10);
  void* blk = a->allocate();
  const uint8_t* base = static_cast<const uint8_t*>(a->block_at(0));
  EXPECT_TRUE(a->owns(blk));
  EXPECT_TRUE(a->owns(a->block_at(9)));
  EXPECT_FALSE(a->owns(static_cast<uint8_t*>(blk) + 1));
  EXPECT_FALSE(a->owns(base - 128));
  EXPECT_FALSE(a->owns(base + 10 * 128));
  EXPECT_FALSE(a->owns(nullptr));
  EXPECT_FALSE(b->owns(blk));
  a->free(nullptr);  // ignored, like std::free
  a->free(blk);
}

TEST(BlockPoolDeathTest, FreeOfForeignPointerAborts) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";  // libraries may have started threads
  auto a = make_pool(64, 4, 0);
  int x = 0;
  EXPECT_DEATH(a->free(&x), "not a block of this pool");
  EXPECT_DEATH(a->free(static_cast<uint8_t*>(a->block_at(1)) + 8), "not a block of this pool");
}

TEST(BlockPool, FlushThreadCacheHandsCachedBlocksToOtherThreads) {
  auto pool = make_pool(64, 256, 8);
  std::vector<void*> mine;
  for (int i = 0; i < 10; ++i) mine.push_back(pool->allocate());
  for (void* b : mine) pool->free(b);  // some of these stay in this thread's cache
  EXPECT_EQ(pool->free_blocks_approx(), 256u);

  auto count_in_thread = [&] {
    size_t n = 0;
    std::thread t([&] {
      std::vector<void*> got = drain_pool(*pool);
      n = got.size();
      for (void* b : got) pool->free(b);
    });
    t.join();  // the thread's exit returns its cache
    return n;
  };
  EXPECT_LT(count_in_thread(), 256u);
  pool->flush_thread_cache();
  EXPECT_EQ(count_in_thread(), 256u);
}

TEST(BlockPool, ThreadExitReturnsCachedBlocks) {
  auto pool = make_pool(128, 1024);
  ASSERT_GT(pool->thread_cache_size(), 0u);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&pool, t] {
      std::vector<void*> held;
      for (int i = 0; i < 100 + 37 * t; ++i) held.push_back(pool->allocate());
      for (void* b : held) pool->free(b);
      // Exits with a partly filled cache.
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(pool->free_blocks_approx(), 1024u);
  std::vector<void*> all = drain_pool(*pool);
  EXPECT_EQ(all.size(), 1024u);
  for (void* b : all) pool->free(b);
}

TEST(BlockPool, PoolMayDieBeforeThreadsThatUsedIt) {
  auto pool = make_pool(64, 128, 4);
  std::mutex mu;
  std::condition_variable cv;
  bool used = false, destroyed = false;
  std::thread t([&] {
    pool->free(pool->allocate());  // leaves a cache for this pool in this thread
    std::unique_lock<std::mutex> lock(mu);
    used = true;
    cv.notify_all();
    cv.wait(lock, [&] { return destroyed; });
    // Exits now: must not touch the dead pool.
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return used; });
    pool.reset();
    destroyed = true;
    cv.notify_all();
  }
  t.join();
  auto fresh = make_pool(64, 128, 4);
  EXPECT_EQ(drain_pool(*fresh).size(), 128u);
}

TEST(BlockPool, MorePoolsThanCacheSlotsPerThread) {
  constexpr int kPools = BlockPool::kMaxPoolsPerThread + 5;
  std::vector<std::unique_ptr<BlockPool>> pools;
  for (int i = 0; i < kPools; ++i) pools.push_back(make_pool(64, 64, 4));
  std::thread t([&] {
    for (int round = 0; round < 20; ++round) {
      for (auto& p : pools) {
        void* a = p->allocate();
        void* b = p->allocate();
        ASSERT_TRUE(a && b);
        p->free(a);
        p->free(b);
      }
    }
  });
  t.join();
  for (auto& p : pools) {
    EXPECT_EQ(p->free_blocks_approx(), 64u);
    std::vector<void*> all = drain_pool(*p);
    EXPECT_EQ(all.size(), 64u);
    for (void* b : all) p->free(b);
  }
}

// Many threads allocate and free with random holding patterns. Each block carries its holder's
// stamp in its first 8 bytes and a held flag beside the pool: a block handed out twice at once
// shows as a flag already set on allocate, or as a stamp overwritten while held.
struct StressResult {
  uint64_t ops = 0, allocs = 0, empty = 0, double_handouts = 0, stamp_clobbers = 0;
};

StressResult stress(BlockPool& pool, int threads, uint64_t total_ops, int max_held) {
  std::vector<std::atomic<uint8_t>> held(pool.capacity());
  for (auto& h : held) h.store(0);
  std::atomic<uint64_t> allocs{0}, empty{0}, doubles{0}, clobbers{0};
  std::atomic<int> started{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      // Start together, so that the threads really overlap.
      started.fetch_add(1);
      while (started.load() < threads) std::this_thread::yield();
      std::mt19937_64 rng(1234 + t);
      std::vector<std::pair<void*, uint64_t>> mine;
      uint64_t seq = 0, my_allocs = 0, my_empty = 0, my_doubles = 0, my_clobbers = 0;
      auto release = [&](size_t i) {
        auto [b, stamp] = mine[i];
        if (__atomic_load_n(static_cast<uint64_t*>(b), __ATOMIC_RELAXED) != stamp) ++my_clobbers;
        if (held[pool.index_of(b)].exchange(0) != 1) ++my_doubles;
        pool.free(b);
        mine[i] = mine.back();
        mine.pop_back();
      };
      // A holding limit that drifts, so threads alternate between hoarding and draining.
      int limit = 1 + static_cast<int>(rng() % max_held);
      for (uint64_t op = 0; op < total_ops / threads; ++op) {
        if (op % 1000 == 0) limit = 1 + static_cast<int>(rng() % max_held);
        // Give up the core now and then so that, even on 2 cores, threads interleave mid-CAS.
        if (rng() % 256 == 0) std::this_thread::yield();
        const bool want_alloc =
            mine.empty() || (static_cast<int>(mine.size()) < limit && rng() % 3);
        if (!want_alloc) {
          release(rng() % mine.size());
          continue;
        }
        void* b = pool.allocate();
        if (!b) {
          ++my_empty;
          if (!mine.empty()) release(rng() % mine.size());
          continue;
        }
        ++my_allocs;
        if (held[pool.index_of(b)].exchange(1) != 0) ++my_doubles;
        const uint64_t stamp = (uint64_t(t + 1) << 40) | ++seq;
        __atomic_store_n(static_cast<uint64_t*>(b), stamp, __ATOMIC_RELAXED);
        mine.emplace_back(b, stamp);
      }
      while (!mine.empty()) release(mine.size() - 1);
      allocs += my_allocs;
      empty += my_empty;
      doubles += my_doubles;
      clobbers += my_clobbers;
    });
  }
  for (std::thread& w : workers) w.join();
  return {total_ops, allocs.load(), empty.load(), doubles.load(), clobbers.load()};
}

void expect_whole(BlockPool& pool) {
  EXPECT_EQ(pool.free_blocks_approx(), pool.capacity());
  std::vector<void*> all = drain_pool(pool);
  EXPECT_EQ(all.size(), pool.capacity());
  EXPECT_EQ(std::set<void*>(all.begin(), all.end()).size(), pool.capacity());
  for (void* b : all) pool.free(b);
}

TEST(BlockPoolStress, EightThreadsMillionOpsWithCaches) {
  auto pool = make_pool(64, 512);
  ASSERT_GT(pool->thread_cache_size(), 0u);
  const StressResult r = stress(*pool, 8, 1000000, 48);
  EXPECT_EQ(r.double_handouts, 0u);
  EXPECT_EQ(r.stamp_clobbers, 0u);
  EXPECT_GT(r.allocs, 100000u);
  expect_whole(*pool);
}

// No caches and a tiny pool: every operation is a CAS on the shared head, the case where ABA
// would show.
TEST(BlockPoolStress, SharedHeadOnlyTinyPool) {
  auto pool = make_pool(64, 16, 0);
  const StressResult r = stress(*pool, 8, 400000, 4);
  EXPECT_EQ(r.double_handouts, 0u);
  EXPECT_EQ(r.stamp_clobbers, 0u);
  EXPECT_GT(r.allocs, 10000u);
  expect_whole(*pool);
}

}  // namespace
}  // namespace ramstream::memory
