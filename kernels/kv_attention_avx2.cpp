// Decode attention over one KV head's paged cache, AVX2 + FMA + F16C. Per block of work the
// accumulators stay in registers: up to 3 query heads x 32 tokens (key logits) or x 32 channels
// (values), so each FMA needs at most one load; codes are unpacked 8 at a time with variable
// shifts and fp16 params converted 8 at a time. Records are walked page by page (no division per
// record).
#include "kernels/kv_attention_avx2.h"

#include <immintrin.h>

#include <algorithm>
#include <vector>

namespace ramstream::kernels::detail {
namespace {

#define RS_AVX2 [[gnu::target("avx2,fma,f16c")]]

// Walks records 0, 1, ... of r page by page. Plain code (lambdas would not inherit the target
// attribute of the functions using it).
struct Cursor {
  explicit Cursor(const PagedRecords& r)
      : rec(r),
        page(r.per_page > 0 ? r.first / r.per_page : 0),
        off(r.per_page > 0 ? r.first % r.per_page : 0) {}
  const uint8_t* next() {
    const uint8_t* p = rec.pages[page] + off * rec.record_bytes;
    if (++off == rec.per_page) {
      ++page;
      off = 0;
    }
    return p;
  }
  const PagedRecords& rec;
  int64_t page, off;
};

// Codes 8v .. 8v+7 of a packed run of b-bit codes, as floats.
RS_AVX2 inline __m256 unpack8(const uint32_t* words, int v, int bits) {
  const int bit = v * 8 * bits;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i shifts = _mm256_add_epi32(_mm256_set1_epi32(bit % 32),
                                          _mm256_mullo_epi32(lane, _mm256_set1_epi32(bits)));
  const __m256i w = _mm256_set1_epi32(static_cast<int>(words[bit / 32]));
  const __m256i c =
      _mm256_and_si256(_mm256_srlv_epi32(w, shifts), _mm256_set1_epi32((1 << bits) - 1));
  return _mm256_cvtepi32_ps(c);
}

// 8 QuantParams -> their 8 scales and 8 minimums.
RS_AVX2 inline void load_params8(const QuantParams* p, __m256& scale, __m256& mn) {
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i lo = _mm256_and_si256(x, _mm256_set1_epi32(0xffff));
  const __m256i hi = _mm256_srli_epi32(x, 16);
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xD8);
  scale = _mm256_cvtph_ps(_mm256_castsi256_si128(packed));
  mn = _mm256_cvtph_ps(_mm256_extracti128_si256(packed, 1));
}

RS_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// The four sums of a0..a3, in order.
RS_AVX2 inline __m128 hsum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// Rows ahead of the one in use whose cache lines are requested early: a full-precision window
// lies in pages of a few KiB each, scattered, where the hardware prefetcher stops at every page
// boundary, so without this the decode attention waits on memory rather than computes.
constexpr int64_t kPrefetchRows = 8;

inline void prefetch_rows(const float* const* rows, int64_t t0, int64_t t1, int D) {
  for (int64_t t = t0; t < t1; ++t) {
    const char* p = reinterpret_cast<const char*>(rows[t]);
    for (int64_t b = 0; b < int64_t{D} * 4; b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
  }
}

struct Ctx {
  const KvHeadView& kv;
  const float* q;
  int64_t N, S;   // tokens; sinks (columns 0 .. S-1 of the logits)
  float* logits;  // [Hq][N]
  float* qs;      // [Hq][D]
  float* mb;      // [Hq]
};

// Logits of one quantised key group for query heads h0 .. h0+NH-1 (qs/mb already set), written
// at column `col`.
template <int NH>
RS_AVX2 void key_group_logits(const Ctx& c, const uint32_t* codes, int h0, int64_t col) {
  const int D = c.kv.D, G = c.kv.G, b = c.kv.bits;
  const int64_t words_per_channel = int64_t{G} * b / 32;
  for (int j0 = 0; j0 < G; j0 += 32) {
    __m256 acc[NH][4];
    for (auto& a : acc) a[0] = a[1] = a[2] = a[3] = _mm256_setzero_ps();
    for (int d = 0; d < D; ++d) {
      const uint32_t* w = codes + d * words_per_channel;
      __m256 cv[4];
      for (int i = 0; i < 4; ++i) cv[i] = unpack8(w, j0 / 8 + i, b);
      for (int hh = 0; hh < NH; ++hh) {
        const __m256 s = _mm256_broadcast_ss(c.qs + (h0 + hh) * D + d);
        for (int i = 0; i < 4; ++i) acc[hh][i] = _mm256_fmadd_ps(s, cv[i], acc[hh][i]);
      }
    }
    for (int hh = 0; hh < NH; ++hh) {
      const __m256 m = _mm256_set1_ps(c.mb[h0 + hh]);
      float* lg = c.logits + (h0 + hh) * c.N + col + j0;
      for (int i = 0; i < 4; ++i) _mm256_storeu_ps(lg + 8 * i, _mm256_add_ps(acc[hh][i], m));
    }
  }
}

// Logits of full-precision key rows for query heads h0 .. h0+NH-1, four rows at a time, written
// from column col0 on.
template <int NH>
RS_AVX2 void window_logits(const Ctx& c, const float* const* rows, int64_t n, int64_t col0,
                           int h0) {
  const int D = c.kv.D;
  int64_t t = 0;
  for (; t + 4 <= n; t += 4) {
    prefetch_rows(rows, t + kPrefetchRows, std::min(n, t + kPrefetchRows + 4), D);
    __m256 acc[NH][4];
    for (auto& a : acc) a[0] = a[1] = a[2] = a[3] = _mm256_setzero_ps();
    for (int d = 0; d < D; d += 8) {
      __m256 kv[4];
      for (int i = 0; i < 4; ++i) kv[i] = _mm256_loadu_ps(rows[t + i] + d);
      for (int hh = 0; hh < NH; ++hh) {
        const __m256 qv = _mm256_loadu_ps(c.q + (h0 + hh) * D + d);
        for (int i = 0; i < 4; ++i) acc[hh][i] = _mm256_fmadd_ps(qv, kv[i], acc[hh][i]);
      }
    }
    for (int hh = 0; hh < NH; ++hh) {
      _mm_storeu_ps(c.logits + (h0 + hh) * c.N + col0 + t,
                    hsum4(acc[hh][0], acc[hh][1], acc[hh][2], acc[hh][3]));
    }
  }
  for (; t < n; ++t) {
    for (int hh = 0; hh < NH; ++hh) {
      __m256 a = _mm256_setzero_ps();
      for (int d = 0; d < D; d += 8) {
        a = _mm256_fmadd_ps(_mm256_loadu_ps(c.q + (h0 + hh) * D + d), _mm256_loadu_ps(rows[t] + d),
                            a);
      }
      c.logits[(h0 + hh) * c.N + col0 + t] = hsum(a);
    }
  }
}

// acc += p x rows[t][c0 .. c0+31] for query heads h0 .. h0+NH-1, p from column col0 + t.
template <int NH>
RS_AVX2 void value_rows(const Ctx& c, const float* const* rows, int64_t n, int64_t col0, int h0,
                        int c0, __m256 (&acc)[NH][4]) {
  for (int64_t t = 0; t < n; ++t) {
    if (c0 == 0 && t + kPrefetchRows < n)
      prefetch_rows(rows, t + kPrefetchRows, t + kPrefetchRows + 1, c.kv.D);
    __m256 vv[4];
    for (int i = 0; i < 4; ++i) vv[i] = _mm256_loadu_ps(rows[t] + c0 + 8 * i);
    for (int hh = 0; hh < NH; ++hh) {
      const __m256 pb = _mm256_broadcast_ss(c.logits + (h0 + hh) * c.N + col0 + t);
      for (int i = 0; i < 4; ++i) acc[hh][i] = _mm256_fmadd_ps(pb, vv[i], acc[hh][i]);
    }
  }
}

// out[h][c0 .. c0+31] for query heads h0 .. h0+NH-1: the sinks, the quantised value tokens
// (their codes for channels c0.., one group's scale and minimum), then the window rows.
template <int NH>
RS_AVX2 void value_chunk(const Ctx& c, const float* const* sinks, const float* const* vrows, int h0,
                         int c0, float* out) {
  const KvHeadView& kv = c.kv;
  const int D = kv.D, G = kv.G, b = kv.bits;
  const int64_t vwords = value_token_words(D, b);
  __m256 acc[NH][4];
  for (auto& a : acc) a[0] = a[1] = a[2] = a[3] = _mm256_setzero_ps();
  float bias[NH] = {};
  Cursor cur(kv.value_tokens);
  for (int64_t t = 0; t < kv.n_value_quant; ++t) {
    const uint8_t* rec = cur.next();
    const uint32_t* codes = record_codes(rec);
    const QuantParams p = record_params(rec, vwords)[c0 / G];
    const float s = _cvtsh_ss(p.scale), m = _cvtsh_ss(p.min);
    __m256 cv[4];
    for (int i = 0; i < 4; ++i) cv[i] = unpack8(codes, c0 / 8 + i, b);
    for (int hh = 0; hh < NH; ++hh) {
      const float pr = c.logits[(h0 + hh) * c.N + c.S + t];
      const __m256 ps = _mm256_set1_ps(pr * s);
      bias[hh] += pr * m;
      for (int i = 0; i < 4; ++i) acc[hh][i] = _mm256_fmadd_ps(ps, cv[i], acc[hh][i]);
    }
  }
  value_rows<NH>(c, sinks, c.S, 0, h0, c0, acc);
  value_rows<NH>(c, vrows, kv.n_value_window, c.S + kv.n_value_quant, h0, c0, acc);
  for (int hh = 0; hh < NH; ++hh) {
    const __m256 bv = _mm256_set1_ps(bias[hh]);
    float* o = out + (h0 + hh) * D + c0;
    for (int i = 0; i < 4; ++i) _mm256_storeu_ps(o + 8 * i, _mm256_add_ps(acc[hh][i], bv));
  }
}

// Runs f<NH>(h0) over the query heads in blocks of at most three.
template <template <int> class Op, class... A>
RS_AVX2 void by_heads(int Hq, A&&... args) {
  for (int h0 = 0; h0 < Hq; h0 += 3) {
    switch (std::min(3, Hq - h0)) {
      case 3:
        Op<3>::run(h0, args...);
        break;
      case 2:
        Op<2>::run(h0, args...);
        break;
      default:
        Op<1>::run(h0, args...);
        break;
    }
  }
}

template <int NH>
struct KeyGroupOp {
  RS_AVX2 static void run(int h0, const Ctx& c, const uint32_t* codes, int64_t col) {
    key_group_logits<NH>(c, codes, h0, col);
  }
};
template <int NH>
struct WindowOp {
  RS_AVX2 static void run(int h0, const Ctx& c, const float* const* rows, int64_t n, int64_t col0) {
    window_logits<NH>(c, rows, n, col0, h0);
  }
};
template <int NH>
struct ValueOp {
  RS_AVX2 static void run(int h0, const Ctx& c, const float* const* sinks,
                          const float* const* vrows, int c0, float* out) {
    value_chunk<NH>(c, sinks, vrows, h0, c0, out);
  }
};

}  // namespace

RS_AVX2 bool kv_attention_avx2(const KvHeadView& kv, const float* q, int Hq, float scale,
                               float* out, float* probs, float* work) {
  const int D = kv.D;
  if (D % 32 != 0) return false;
  const int64_t N = kv.tokens(), S = kv.n_sink, NQ = kv.n_key_groups * kv.G;
  Ctx c{kv, q, N, S, work, work + int64_t{Hq} * N, work + int64_t{Hq} * N + int64_t{Hq} * D};
  // Row pointers of the windows, gathered once (a window is at most ~2R rows, or the whole
  // context for a full-precision cache).
  thread_local std::vector<const float*> krows, vrows, ksinks, vsinks;
  krows.resize(static_cast<size_t>(kv.n_key_window));
  vrows.resize(static_cast<size_t>(kv.n_value_window));
  ksinks.resize(static_cast<size_t>(S));
  vsinks.resize(static_cast<size_t>(S));
  Cursor ks(kv.sink_keys), vs(kv.sink_values);
  for (auto& r : ksinks) r = reinterpret_cast<const float*>(ks.next());
  for (auto& r : vsinks) r = reinterpret_cast<const float*>(vs.next());
  Cursor kw(kv.key_window), vw(kv.value_window);
  for (auto& r : krows) r = reinterpret_cast<const float*>(kw.next());
  for (auto& r : vrows) r = reinterpret_cast<const float*>(vw.next());

  const int64_t kwords = key_group_words(D, kv.G, kv.bits);
  Cursor kg(kv.key_groups);
  for (int64_t g = 0; g < kv.n_key_groups; ++g) {
    const uint8_t* rec = kg.next();
    const QuantParams* kp = record_params(rec, kwords);
    for (int h = 0; h < Hq; ++h) {  // qs = q * scale per channel, mb = q . min
      __m256 mbv = _mm256_setzero_ps();
      for (int d = 0; d < D; d += 8) {
        __m256 s, m;
        load_params8(kp + d, s, m);
        const __m256 qv = _mm256_loadu_ps(q + h * D + d);
        _mm256_storeu_ps(c.qs + h * D + d, _mm256_mul_ps(qv, s));
        mbv = _mm256_fmadd_ps(qv, m, mbv);
      }
      c.mb[h] = hsum(mbv);
    }
    by_heads<KeyGroupOp>(Hq, c, record_codes(rec), S + g * kv.G);
    if (kv.key_outliers > 0)
      add_key_outliers(kv.key_layout(), rec, q, Hq, c.logits + S + g * kv.G, N);
  }
  by_heads<WindowOp>(Hq, c, static_cast<const float* const*>(ksinks.data()), S, int64_t{0});
  by_heads<WindowOp>(Hq, c, static_cast<const float* const*>(krows.data()), kv.n_key_window,
                     S + NQ);
  softmax_logits(kv, c.logits, Hq, scale, probs);
  for (int c0 = 0; c0 < D; c0 += 32) {
    by_heads<ValueOp>(Hq, c, static_cast<const float* const*>(vsinks.data()),
                      static_cast<const float* const*>(vrows.data()), c0, out);
  }
  return true;
}

}  // namespace ramstream::kernels::detail
