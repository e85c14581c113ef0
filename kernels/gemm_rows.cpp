#include "kernels/gemm_rows.h"

#include <immintrin.h>

#include <cstring>
#include <vector>

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

// AVX-512, bit for bit the AVX2 kernel's sums: each 512-bit accumulator holds the 8-lane
// accumulators of one weight row against two x rows (low half x row 2p, high half 2p+1), the
// weight vector broadcast to both halves, so every lane runs the same FMA chain as in rows_avx2
// and the halves are reduced by the same hsum. Twice the multiply-adds per instruction where the
// CPU has 512-bit FMA units. xp: the x rows interleaved by pairs (pair_x_rows).
#define RS_AVX512 [[gnu::target("avx512f,avx2,fma")]]
// GCC 12's own AVX-512 intrinsics (_mm512_broadcast_f64x4, _mm512_extractf64x4_pd) pass an
// _mm512_undefined_pd() it then flags as maybe uninitialised; nothing here reads undefined lanes.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// xp[((p * nb) + b) * 16 + h * 8 + j] = x[(2p + h) * ic + 8b + j] for the nb = ic / 8 full blocks;
// a missing last row of an odd n is zeros.
void pair_x_rows(const float* x, int64_t n, int64_t ic, std::vector<float>& xp) {
  const int64_t nb = ic / 8, pairs = (n + 1) / 2;
  xp.assign(static_cast<size_t>(pairs * nb * 16), 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t b = 0; b < nb; ++b) {
      std::memcpy(xp.data() + ((i / 2) * nb + b) * 16 + (i % 2) * 8, x + i * ic + b * 8,
                  8 * sizeof(float));
    }
  }
}

RS_AVX512 inline __m256 high_half(__m512 v) {
  return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

// Weight rows wr[0..3] against pairs p0 .. p0+NP-1.
template <int NP>
RS_AVX512 void pairs_avx512(const float* xp, const float* x, int64_t n, int64_t ic,
                            const float* const* wr, const float* next, int64_t p0, int64_t o,
                            const float* bias, float* out, int64_t oc) {
  const int64_t nb = ic / 8, vec = nb * 8;
  __m512 a[4][NP];
  for (auto& r : a)
    for (auto& c : r) c = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    if (next != nullptr && b % 2 == 0) {
      for (int r = 0; r < 4; ++r)
        _mm_prefetch(reinterpret_cast<const char*>(next + r * ic + b * 8), _MM_HINT_T0);
    }
    __m512 xv[NP];
    for (int c = 0; c < NP; ++c) xv[c] = _mm512_loadu_ps(xp + ((p0 + c) * nb + b) * 16);
    for (int r = 0; r < 4; ++r) {
      // Both halves the same 8 floats (f64x4: AVX512F alone, same bits).
      const __m512 wv = _mm512_castpd_ps(
          _mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(wr[r] + b * 8))));
      for (int c = 0; c < NP; ++c) a[r][c] = _mm512_fmadd_ps(wv, xv[c], a[r][c]);
    }
  }
  for (int r = 0; r < 4; ++r) {
    for (int c = 0; c < NP; ++c) {
      for (int h = 0; h < 2; ++h) {
        const int64_t i = 2 * (p0 + c) + h;
        if (i >= n) continue;
        const __m256 half = h == 0 ? _mm512_castps512_ps256(a[r][c]) : high_half(a[r][c]);
        float s = hsum(half);
        for (int64_t k = vec; k < ic; ++k) s += wr[r][k] * x[i * ic + k];
        out[i * oc + o + r] = s + (bias ? bias[o + r] : 0.0f);
      }
    }
  }
}

RS_AVX512 void rows_avx512(const float* xp, const float* x, int64_t n, int64_t ic, const float* w,
                           int64_t o0, int64_t o1, const float* bias, float* out, int64_t oc) {
  const int64_t pairs = (n + 1) / 2;
  int64_t o = o0;
  for (; o + 4 <= o1; o += 4) {
    const float* wr[4] = {w + o * ic, w + (o + 1) * ic, w + (o + 2) * ic, w + (o + 3) * ic};
    const float* next = o + 8 <= o1 ? w + (o + 4) * ic : nullptr;
    int64_t p = 0;
    for (; p + 4 <= pairs; p += 4) {
      pairs_avx512<4>(xp, x, n, ic, wr, p == 0 ? next : nullptr, p, o, bias, out, oc);
    }
    const float* first = p == 0 ? next : nullptr;
    switch (pairs - p) {
      case 3:
        pairs_avx512<3>(xp, x, n, ic, wr, first, p, o, bias, out, oc);
        break;
      case 2:
        pairs_avx512<2>(xp, x, n, ic, wr, first, p, o, bias, out, oc);
        break;
      case 1:
        pairs_avx512<1>(xp, x, n, ic, wr, first, p, o, bias, out, oc);
        break;
      default:
        break;
    }
  }
  if (o < o1) rows_scalar(x, n, ic, w, o, o1, bias, out, oc);
}
#pragma GCC diagnostic pop

}  // namespace

void gemm_rows_nt(const float* x, int64_t n, int64_t ic, const float* w, int64_t oc,
                  const float* bias, float* out) {
  const bool avx2 = kernel_isa() == Isa::kAvx2Fma;
  // A single row gains nothing from pairs (half of each FMA would be padding).
  if (avx2 && n >= 2 && kernel_avx512()) {
    thread_local std::vector<float> xp;
    pair_x_rows(x, n, ic, xp);
    // The workers see the pointer: a thread_local named in the lambda would be each worker's own.
    const float* pairs = xp.data();
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, oc, kRowsPerTask),
                      [&](const tbb::blocked_range<int64_t>& r) {
                        rows_avx512(pairs, x, n, ic, w, r.begin(), r.end(), bias, out, oc);
                      });
    return;
  }
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
