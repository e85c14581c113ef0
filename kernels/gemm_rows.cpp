#include "kernels/gemm_rows.h"

#include <immintrin.h>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include "kernels/cpu_isa.h"

namespace ramstream::kernels {
namespace {

// Output rows per task: 64 rows of a 576-wide matrix are ~150 KB of weights.
constexpr int64_t kRowsPerTask = 64;

void rows_scalar(const float* x, int64_t n, int64_t ic, const float* w, int64_t o0, int64_t o1,
                 const float* bias, float* out, int64_t oc) {
  for (int64_t o = o0; o < o1; ++o) {
    const float* wr = w + o * ic;
    for (int64_t i = 0; i < n; ++i) {
      const float* xr = x + i * ic;
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t k = 0;
      for (; k + 8 <= ic; k += 8) {
        for (int j = 0; j < 8; ++j) acc[j] += wr[k + j] * xr[k + j];
      }
      float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
      for (; k < ic; ++k) s += wr[k] * xr[k];
      out[i * oc + o] = s + (bias ? bias[o] : 0.0f);
    }
  }
}

[[gnu::target("avx2,fma")]] inline float hsum(__m256 v) {
  const __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  __m128 s = _mm_add_ps(lo, hi);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// A 4 x 3 tile: four weight rows against three x rows, 12 accumulators; each load of a weight
// vector feeds three FMAs and each x vector four, so the loop is bound by FMAs, not loads.
[[gnu::target("avx2,fma")]] void rows_avx2(const float* x, int64_t n, int64_t ic, const float* w,
                                           int64_t o0, int64_t o1, const float* bias, float* out,
                                           int64_t oc) {
  const int64_t vec = ic / 8 * 8;
  auto tail = [&](const float* wr, const float* xr, float s) {
    for (int64_t k = vec; k < ic; ++k) s += wr[k] * xr[k];
    return s;
  };
  int64_t o = o0;
  for (; o + 4 <= o1; o += 4) {
    const float* wr[4] = {w + o * ic, w + (o + 1) * ic, w + (o + 2) * ic, w + (o + 3) * ic};
    // The next four weight rows, requested during the first pass over these: they come from RAM
    // (decode streams the whole model once per step), and the hardware prefetcher alone leaves
    // each group waiting for its first pass (about a quarter of the time at 32 rows).
    const float* next = o + 8 <= o1 ? w + (o + 4) * ic : nullptr;
    auto prefetch_next = [&](int64_t k) {
      if (next != nullptr && k % 16 == 0) {
        for (int r = 0; r < 4; ++r)
          _mm_prefetch(reinterpret_cast<const char*>(next + r * ic + k), _MM_HINT_T0);
      }
    };
    int64_t i = 0;
    for (; i + 3 <= n; i += 3) {
      const float* xr[3] = {x + i * ic, x + (i + 1) * ic, x + (i + 2) * ic};
      __m256 a[4][3];
      for (auto& r : a) r[0] = r[1] = r[2] = _mm256_setzero_ps();
      for (int64_t k = 0; k < vec; k += 8) {
        if (i == 0) prefetch_next(k);
        const __m256 x0 = _mm256_loadu_ps(xr[0] + k), x1 = _mm256_loadu_ps(xr[1] + k),
                     x2 = _mm256_loadu_ps(xr[2] + k);
        for (int r = 0; r < 4; ++r) {
          const __m256 wv = _mm256_loadu_ps(wr[r] + k);
          a[r][0] = _mm256_fmadd_ps(wv, x0, a[r][0]);
          a[r][1] = _mm256_fmadd_ps(wv, x1, a[r][1]);
          a[r][2] = _mm256_fmadd_ps(wv, x2, a[r][2]);
        }
      }
      for (int r = 0; r < 4; ++r) {
        for (int c = 0; c < 3; ++c) {
          out[(i + c) * oc + o + r] =
              tail(wr[r], xr[c], hsum(a[r][c])) + (bias ? bias[o + r] : 0.0f);
        }
      }
    }
    for (; i < n; ++i) {
      const float* xr = x + i * ic;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t k = 0; k < vec; k += 8) {
        if (i == 0) prefetch_next(k);
        const __m256 xv = _mm256_loadu_ps(xr + k);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(wr[0] + k), xv, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(wr[1] + k), xv, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(wr[2] + k), xv, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(wr[3] + k), xv, a3);
      }
      const __m256 acc[4] = {a0, a1, a2, a3};
      for (int r = 0; r < 4; ++r) {
        out[i * oc + o + r] = tail(wr[r], xr, hsum(acc[r])) + (bias ? bias[o + r] : 0.0f);
      }
    }
  }
  if (o < o1) rows_scalar(x, n, ic, w, o, o1, bias, out, oc);
}

}  // namespace

void gemm_rows_nt(const float* x, int64_t n, int64_t ic, const float* w, int64_t oc,
                  const float* bias, float* out) {
  const bool avx2 = kernel_isa() == Isa::kAvx2Fma;
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, oc, kRowsPerTask),
                    [&](const tbb::blocked_range<int64_t>& r) {
                      if (avx2) {
                        rows_avx2(x, n, ic, w, r.begin(), r.end(), bias, out, oc);
                      } else {
                        rows_scalar(x, n, ic, w, r.begin(), r.end(), bias, out, oc);
                      }
                    });
}

}  // namespace ramstream::kernels
