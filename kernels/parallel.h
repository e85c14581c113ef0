// Fixed-chunk parallel loop shared by the CPU kernels (internal to kernels/).
//
// [0, n) is cut into chunks of kChunkElements; chunk c always covers the same elements whatever
// the thread count, which is what makes the reductions deterministic (one partial per chunk,
// summed in chunk order) and keeps vector-aligned chunk starts for the elementwise kernels.
//
//   parallel_chunks(n, max_threads, [&](int64_t chunk, int64_t begin, int64_t end) { ... });
#pragma once

#include <algorithm>
#include <cstdint>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>
#include <tbb/task_arena.h>

namespace ramstream::kernels {

// 64K elements: 256 KiB of each fp32 stream, ~2 MB of traffic for AdamW, tens of microseconds of
// work: small enough to balance across cores, large enough to hide TBB's per-task cost.
constexpr int64_t kChunkElements = int64_t{1} << 16;

inline int64_t num_chunks(int64_t n) {
  return (n + kChunkElements - 1) / kChunkElements;
}

// max_threads: 0 = the calling TBB arena (all cores unless the caller limited it), 1 = serially
// in the calling thread (no TBB at all), k > 1 = a task arena of k threads.
template <class F>
void parallel_chunks(int64_t n, int max_threads, const F& fn) {
  const int64_t chunks = num_chunks(n);
  auto run = [&](int64_t c) {
    const int64_t begin = c * kChunkElements;
    fn(c, begin, std::min(n, begin + kChunkElements));
  };
  if (chunks <= 1 || max_threads == 1) {
    for (int64_t c = 0; c < chunks; ++c) run(c);
    return;
  }
  auto loop = [&] {
    // simple_partitioner with grain 1: one task per chunk, no range splitting heuristics.
    tbb::parallel_for(
        tbb::blocked_range<int64_t>(0, chunks, 1),
        [&](const tbb::blocked_range<int64_t>& r) {
          for (int64_t c = r.begin(); c < r.end(); ++c) run(c);
        },
        tbb::simple_partitioner());
  };
  if (max_threads <= 0) {
    loop();
  } else {
    tbb::task_arena arena(max_threads);
    arena.execute(loop);
  }
}

}  // namespace ramstream::kernels

// Marks a function compiled for AVX2+FMA regardless of the build's -march; only called after the
// run-time check in cpu_isa.h.
#if defined(__x86_64__) || defined(__i386__)
#define RAMSTREAM_KERNELS_X86 1
#define RAMSTREAM_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define RAMSTREAM_KERNELS_X86 0
#define RAMSTREAM_TARGET_AVX2
#endif
