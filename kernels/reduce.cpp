#include "kernels/reduce.h"

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "kernels/cpu_isa.h"
#include "kernels/parallel.h"
#include "kernels/simd_avx2.h"

namespace ramstream::kernels {
namespace {

// Element k of a chunk always lands in lane k % kLanes (the tail continues from lane 0), and the
// lanes are added in index order: the vector and scalar paths perform the same additions in the
// same order. 16 lanes = four 4-double AVX2 accumulators, enough to hide the FMA latency.
constexpr int kLanes = 16;

inline double widen(float x) {
  return x;
}
inline double widen(bf16 x) {
  return to_float(x);
}

template <class T>
void accumulate_scalar(double* acc, const T* x, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const double d = widen(x[i + l]);
      acc[l] += d * d;  // the square of an fp32 value is exact in double
    }
  }
  for (int l = 0; i + l < n; ++l) {
    const double d = widen(x[i + l]);
    acc[l] += d * d;
  }
}

double combine(const double* acc) {
  double s = 0.0;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

template <class T>
double chunk_scalar(const T* x, int64_t n) {
  double acc[kLanes] = {};
  accumulate_scalar(acc, x, n);
  return combine(acc);
}

#if RAMSTREAM_KERNELS_X86
template <class T>
RAMSTREAM_TARGET_AVX2 double chunk_avx2(const T* x, int64_t n) {
  __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const __m256 lo = load8_fp32(x + i), hi = load8_fp32(x + i + 8);
    const __m256d d0 = _mm256_cvtps_pd(_mm256_castps256_ps128(lo));
    const __m256d d1 = _mm256_cvtps_pd(_mm256_extractf128_ps(lo, 1));
    const __m256d d2 = _mm256_cvtps_pd(_mm256_castps256_ps128(hi));
    const __m256d d3 = _mm256_cvtps_pd(_mm256_extractf128_ps(hi, 1));
    // d*d is exact, so the fused form rounds exactly like the scalar path's acc += d*d.
    a0 = _mm256_fmadd_pd(d0, d0, a0);
    a1 = _mm256_fmadd_pd(d1, d1, a1);
    a2 = _mm256_fmadd_pd(d2, d2, a2);
    a3 = _mm256_fmadd_pd(d3, d3, a3);
  }
  alignas(32) double acc[kLanes];
  _mm256_store_pd(acc + 0, a0);
  _mm256_store_pd(acc + 4, a1);
  _mm256_store_pd(acc + 8, a2);
  _mm256_store_pd(acc + 12, a3);
  accumulate_scalar(acc, x + i, n - i);
  return combine(acc);
}
#endif

template <class T>
void partials_impl(const T* x, int64_t n, double* out, int max_threads) {
  if (n < 0) throw std::invalid_argument("sum_of_squares: negative element count");
  if (n == 0) return;
  const bool avx2 = kernel_isa() == Isa::kAvx2Fma;
  // Threads take 64K-element chunks; inside one, each block of kSumOfSquaresBlock elements has
  // its own partial, so the partials do not depend on the chunking either.
  parallel_chunks(n, max_threads, [&](int64_t, int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; b += kSumOfSquaresBlock) {
      const int64_t len = std::min(kSumOfSquaresBlock, end - b);
#if RAMSTREAM_KERNELS_X86
      if (avx2) {
        out[b / kSumOfSquaresBlock] = chunk_avx2(x + b, len);
        continue;
      }
#endif
      (void)avx2;
      out[b / kSumOfSquaresBlock] = chunk_scalar(x + b, len);
    }
  });
}

template <class T>
double sum_of_squares_impl(const T* x, int64_t n, int max_threads) {
  if (n < 0) throw std::invalid_argument("sum_of_squares: negative element count");
  std::vector<double> partial(static_cast<size_t>(sum_of_squares_blocks(n)));
  partials_impl(x, n, partial.data(), max_threads);
  double s = 0.0;
  for (double p : partial) s += p;  // block order: the thread count cannot change the result
  return s;
}

}  // namespace

double sum_of_squares(const float* x, int64_t n, int max_threads) {
  return sum_of_squares_impl(x, n, max_threads);
}

double sum_of_squares(const bf16* x, int64_t n, int max_threads) {
  return sum_of_squares_impl(x, n, max_threads);
}

void sum_of_squares_partials(const float* x, int64_t n, double* partials, int max_threads) {
  partials_impl(x, n, partials, max_threads);
}

void sum_of_squares_partials(const bf16* x, int64_t n, double* partials, int max_threads) {
  partials_impl(x, n, partials, max_threads);
}

}  // namespace ramstream::kernels
