// BlockPool against glibc malloc/free and oneTBB's scalable allocator, same pattern, same run.
//
//   build/bin/pool_bench            # table
//   build/bin/pool_bench --json     # table, then one JSON object as the last stdout line
//   build/bin/pool_bench --pairs 500000 --reps 3
//
// Pattern (the engine's staging-buffer use): 2 threads; each keeps a window of 64 blocks of
// 64 KiB, and per step frees a random one of them and allocates its replacement, writing the
// first 8 bytes of the new block. One "op" is one such free + allocate pair; ops_per_s sums both
// threads. Each allocator runs `reps` times, interleaved with the others so that drift on a
// shared machine hits all of them alike; the median rep is reported.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <tbb/scalable_allocator.h>

#include "memory/block_pool.h"
#include "util/bench_flags.h"

namespace rm = ramstream::memory;

namespace {

constexpr int kThreads = 2;
constexpr int kWindow = 64;
constexpr uint64_t kBlockBytes = 64 << 10;

// Runs the pattern on kThreads threads; returns pairs per second over both threads.
template <class AllocFn, class FreeFn>
double run_pattern(AllocFn alloc, FreeFn release, uint64_t pairs) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<double> seconds(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::minstd_rand rng(17 + t);
      void* window[kWindow];
      for (void*& b : window) {
        b = alloc();
        if (!b) std::abort();
        std::memset(b, 0, 8);
      }
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) {
      }
      const auto t0 = std::chrono::steady_clock::now();
      for (uint64_t i = 0; i < pairs; ++i) {
        const unsigned j = rng() % kWindow;
        release(window[j]);
        void* b = alloc();
        if (!b) std::abort();
        std::memcpy(b, &i, sizeof(i));
        window[j] = b;
      }
      seconds[t] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      for (void* b : window) release(b);
    });
  }
  while (ready.load() != kThreads) std::this_thread::yield();
  go.store(true, std::memory_order_release);
  for (std::thread& t : threads) t.join();
  return static_cast<double>(pairs) * kThreads / *std::max_element(seconds.begin(), seconds.end());
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  const ramstream::BenchFlags flags =
      ramstream::parse_bench_flags(argc, argv, "pool_bench", {{"pairs", 2000000}, {"reps", 7}});
  struct {
    uint64_t pairs;  // per thread
    int reps;
    bool json;
  } const args{static_cast<uint64_t>(flags.value("pairs")), static_cast<int>(flags.value("reps")),
               flags.json};

  // Window plus what the per-thread caches may hold (2 x 32 each), with room to spare.
  rm::ArenaOptions opts;
  opts.pin = false;
  auto pool_or = rm::BlockPool::create(kBlockBytes, 1024, opts, "bench pool", 32);
  if (!pool_or.ok()) {
    std::fprintf(stderr, "pool_bench: %s\n", pool_or.error().message.c_str());
    return 1;
  }
  std::unique_ptr<rm::BlockPool> pool = std::move(pool_or).value();
  rm::BlockPool* p = pool.get();

  enum { kPool, kMalloc, kTbb, kCount };
  const char* names[kCount] = {"block_pool", "malloc", "tbb_scalable"};
  std::vector<double> rates[kCount];
  for (int rep = 0; rep < args.reps; ++rep) {
    for (int k = 0; k < kCount; ++k) {
      const int which = (rep + k) % kCount;
      double r = 0;
      if (which == kPool) {
        r = run_pattern([p] { return p->allocate(); }, [p](void* b) { p->free(b); }, args.pairs);
      } else if (which == kMalloc) {
        r = run_pattern([] { return std::malloc(kBlockBytes); }, [](void* b) { std::free(b); },
                        args.pairs);
      } else {
        r = run_pattern([] { return scalable_malloc(kBlockBytes); },
                        [](void* b) { scalable_free(b); }, args.pairs);
      }
      rates[which].push_back(r);
    }
  }

  std::printf(
      "pool_bench: %d threads, window %d blocks of %llu KiB, %llu free+alloc pairs per "
      "thread, %d reps (median); op = one free+alloc pair, ns/op per thread\n",
      kThreads, kWindow, static_cast<unsigned long long>(kBlockBytes >> 10),
      static_cast<unsigned long long>(args.pairs), args.reps);
  std::printf("  %s\n", p->describe().c_str());
  std::printf("%-14s %14s %14s %14s %10s\n", "allocator", "Mops/s median", "min", "max", "ns/op");
  double med[kCount];
  for (int k = 0; k < kCount; ++k) {
    med[k] = median(rates[k]);
    const auto [lo, hi] = std::minmax_element(rates[k].begin(), rates[k].end());
    std::printf("%-14s %14.2f %14.2f %14.2f %10.1f\n", names[k], med[k] / 1e6, *lo / 1e6, *hi / 1e6,
                1e9 * kThreads / med[k]);
  }
  const double vs_malloc = med[kPool] / med[kMalloc], vs_tbb = med[kPool] / med[kTbb];
  std::printf("block_pool speedup: %.2fx vs malloc, %.2fx vs tbb_scalable\n", vs_malloc, vs_tbb);
  if (p->free_blocks_approx() != p->capacity()) {
    std::fprintf(stderr, "pool_bench: %llu of %llu blocks lost\n",
                 static_cast<unsigned long long>(p->capacity() - p->free_blocks_approx()),
                 static_cast<unsigned long long>(p->capacity()));
    return 1;
  }
  if (args.json) {
    std::printf(
        "{\"bench\":\"pool_bench\",\"threads\":%d,\"block_bytes\":%llu,\"window\":%d,"
        "\"pairs_per_thread\":%llu,\"reps\":%d,\"ops_per_s\":{\"block_pool\":%.0f,"
        "\"malloc\":%.0f,\"tbb_scalable\":%.0f},\"speedup_vs_malloc\":%.3f,"
        "\"speedup_vs_tbb\":%.3f}\n",
        kThreads, static_cast<unsigned long long>(kBlockBytes), kWindow,
        static_cast<unsigned long long>(args.pairs), args.reps, med[kPool], med[kMalloc], med[kTbb],
        vs_malloc, vs_tbb);
  }
  return 0;
}
