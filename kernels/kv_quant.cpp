#include "kernels/kv_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include <tbb/parallel_for.h>

#include "kernels/cpu_isa.h"
#include "kernels/kv_attention_avx2.h"
#include "kernels/softmax_rows.h"

namespace ramstream::kernels {

uint16_t float_to_half(float x) {
  uint32_t f;
  std::memcpy(&f, &x, 4);
  const uint32_t sign = (f >> 16) & 0x8000u;
  const uint32_t abs = f & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) {  // inf or nan
    return static_cast<uint16_t>(sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0u));
  }
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds past 65504
  if (abs < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);
    const uint32_t mant = (abs & 0x7FFFFFu) | 0x800000u;
    const int shift = 126 - static_cast<int>(abs >> 23);  // 14 .. 24
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = ((abs >> 23) - 112) << 10 | ((abs >> 13) & 0x3FFu);
  const uint32_t rem = abs & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // may carry into the exponent: fine
  return static_cast<uint16_t>(sign | h);
}

float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
  uint32_t f;
  if (exp == 0) {
    if (mant == 0) {
      f = sign;
    } else {  // subnormal: value mant * 2^-24
      const float v = float(mant) * 5.9604644775390625e-08f;
      std::memcpy(&f, &v, 4);
      f |= sign;
    }
  } else if (exp == 31) {
    f = sign | 0x7F800000u | (mant << 13);
  } else {
    f = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float out;
  std::memcpy(&out, &f, 4);
  return out;
}

std::string check_kv_quant_shape(int D, int G, int bits) {
  if (bits != 2 && bits != 4) return "KV codes must be 2 or 4 bits, got " + std::to_string(bits);
  if (G < 32 || G > 256 || G % 32 != 0) {
    return "KV group size must be a multiple of 32 in [32, 256], got " + std::to_string(G);
  }
  if (D <= 0 || D % G != 0) {
    return "KV group size " + std::to_string(G) + " must divide the head dimension " +
           std::to_string(D);
  }
  return "";
}

void require_kv_quant_shape(int D, int G, int bits) {
  const std::string bad = check_kv_quant_shape(D, G, bits);
  if (!bad.empty()) throw std::invalid_argument(bad);
}

namespace {

// Params of values x[0], x[stride], ... (n of them) and their codes, packed from bit 0 of
// out[0] on.
QuantParams min_max_params(float lo, float hi, int bits) {
  const float levels = float((1 << bits) - 1);
  QuantParams p;
  p.min = float_to_half(lo);
  p.scale = float_to_half((hi - lo) / levels);
  return p;
}

inline uint32_t code_of(float x, float scale, float mn, int bits) {
  if (!(scale > 0)) return 0;
  const float levels = float((1 << bits) - 1);
  const float q = std::nearbyint((x - mn) / scale);
  return static_cast<uint32_t>(std::min(levels, std::max(0.0f, q)));
}

// Squared error of x[i*stride] (n of them) coded against p.
float coded_error(const float* x, int64_t stride, int n, QuantParams p, int bits) {
  const float s = half_to_float(p.scale), mn = half_to_float(p.min);
  float e = 0;
  for (int i = 0; i < n; ++i) {
    const float v = x[i * stride];
    const float d = float(code_of(v, s, mn, bits)) * s + mn - v;
    e += d * d;
  }
  return e;
}

// The group x[i*stride] (n of them): its min/max params, or under kMse the best of those and the
// least-squares (scale, min) of each candidate coding (kv_quant.h; the CUDA quantiser does the
// same arithmetic in the same order, bit for bit).
QuantParams fit_params(const float* x, int64_t stride, int n, int bits, QuantFit fit) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; ++i) {
    lo = std::min(lo, x[i * stride]);
    hi = std::max(hi, x[i * stride]);
  }
  QuantParams best = min_max_params(lo, hi, bits);
  if (fit == QuantFit::kMinMax || !(hi > lo)) return best;
  float best_err = coded_error(x, stride, n, best, bits);
  const float levels = float((1 << bits) - 1);
  for (int step = 0; step <= kMseFitSteps; ++step) {
    const float iscale = (levels - 1.0f + 2.0f * float(step) / float(kMseFitSteps)) / (hi - lo);
    float sq = 0, sqq = 0, sx = 0, sqx = 0;
    for (int i = 0; i < n; ++i) {
      const float v = x[i * stride];
      const float q = float(int(std::min(levels, iscale * (v - lo)) + 0.5f));
      sq += q;
      sqq += q * q;
      sx += v;
      sqx += q * v;
    }
    const float det = float(n) * sqq - sq * sq;
    if (!(det > 0)) continue;
    const float scale = (float(n) * sqx - sq * sx) / det;
    if (!(scale > 0)) continue;
    QuantParams p;
    p.scale = float_to_half(scale);
    p.min = float_to_half((sx - scale * sq) / float(n));
    const float err = coded_error(x, stride, n, p, bits);
    if (err < best_err) {
      best_err = err;
      best = p;
    }
  }
  return best;
}

// codes[i] for i < n into words (n % (32/bits) == 0).
void pack(const uint32_t* codes, int n, int bits, uint32_t* words) {
  const int per = 32 / bits;
  for (int w = 0; w < n / per; ++w) {
    uint32_t v = 0;
    for (int i = 0; i < per; ++i) v |= codes[w * per + i] << (i * bits);
    words[w] = v;
  }
}

[[gnu::always_inline]] inline void unpack(const uint32_t* words, int n, int bits, float* out) {
  const int per = 32 / bits;
  const uint32_t mask = (1u << bits) - 1;
  for (int w = 0; w < n / per; ++w) {
    const uint32_t v = words[w];
    for (int i = 0; i < per; ++i) out[w * per + i] = float((v >> (i * bits)) & mask);
  }
}

}  // namespace

std::string check_key_group_layout(const KeyGroupLayout& l) {
  const std::string bad = check_kv_quant_shape(l.D, l.G, l.bits);
  if (!bad.empty()) return bad;
  if (l.outliers < 0 || l.outliers > kMaxKeyOutliers) {
    return "key outliers per channel must be in [0, " + std::to_string(kMaxKeyOutliers) +
           "], got " + std::to_string(l.outliers);
  }
  return "";
}

namespace {

void require_key_group_layout(const KeyGroupLayout& l) {
  const std::string bad = check_key_group_layout(l);
  if (!bad.empty()) throw std::invalid_argument(bad);
}

uint16_t* deltas_of(uint8_t* rec, const KeyGroupLayout& l, int d) {
  return const_cast<uint16_t*>(l.deltas(rec, d));
}
uint8_t* slots_of(uint8_t* rec, const KeyGroupLayout& l, int d) {
  return const_cast<uint8_t*>(l.slots(rec, d));
}

// fp16 of a residual, finite (a residual past fp16's range keeps its largest value).
uint16_t residual_half(float r) {
  return float_to_half(std::min(65504.0f, std::max(-65504.0f, r)));
}

}  // namespace

void quantize_key_group(const float* k, int64_t ld, const KeyGroupLayout& l, uint8_t* rec) {
  require_key_group_layout(l);
  const int D = l.D, G = l.G, bits = l.bits, n = l.outliers;
  QuantParams* params = const_cast<QuantParams*>(l.params(rec));
  std::vector<uint32_t> q(static_cast<size_t>(G));
  std::vector<float> x(static_cast<size_t>(G));
  std::vector<uint8_t> outlier(static_cast<size_t>(G));
  for (int d = 0; d < D; ++d) {
    for (int j = 0; j < G; ++j) x[static_cast<size_t>(j)] = k[j * ld + d];
    std::fill(outlier.begin(), outlier.end(), uint8_t{0});
    uint8_t* slots = slots_of(rec, l, d);
    if (n > 0) {
      float mean = 0;
      for (int j = 0; j < G; ++j) mean += x[static_cast<size_t>(j)];
      mean /= float(G);
      for (int e = 0; e < n; ++e) {  // the farthest not yet taken; ties to the lower slot
        int far = -1;
        float far_dist = -1;
        for (int j = 0; j < G; ++j) {
          const float dist = std::fabs(x[static_cast<size_t>(j)] - mean);
          if (!outlier[static_cast<size_t>(j)] && dist > far_dist) {
            far = j;
            far_dist = dist;
          }
        }
        outlier[static_cast<size_t>(far)] = 1;
        slots[e] = static_cast<uint8_t>(far);
      }
    }
    float lo = std::numeric_limits<float>::infinity(), hi = -lo;
    for (int j = 0; j < G; ++j) {
      if (outlier[static_cast<size_t>(j)]) continue;
      lo = std::min(lo, x[static_cast<size_t>(j)]);
      hi = std::max(hi, x[static_cast<size_t>(j)]);
    }
    params[d] = min_max_params(lo, hi, bits);
    const float s = half_to_float(params[d].scale), mn = half_to_float(params[d].min);
    for (int j = 0; j < G; ++j)
      q[static_cast<size_t>(j)] = code_of(x[static_cast<size_t>(j)], s, mn, bits);
    pack(q.data(), G, bits, record_codes(rec) + d * (l.words() / D));
    uint16_t* deltas = deltas_of(rec, l, d);
    for (int e = 0; e < n; ++e) {
      const int j = slots[e];
      deltas[e] =
          residual_half(x[static_cast<size_t>(j)] - (float(q[static_cast<size_t>(j)]) * s + mn));
    }
  }
}

void quantize_key_slot(const float* k, const KeyGroupLayout& l, int slot, uint8_t* rec) {
  require_key_group_layout(l);
  const int D = l.D, G = l.G, bits = l.bits;
  if (slot < 0 || slot >= G) throw std::invalid_argument("quantize_key_slot: slot out of range");
  const QuantParams* params = l.params(rec);
  const int per = 32 / bits, w = slot / per, shift = (slot % per) * bits;
  const uint32_t mask = ((1u << bits) - 1) << shift;
  for (int d = 0; d < D; ++d) {
    const float s = half_to_float(params[d].scale), mn = half_to_float(params[d].min);
    const uint32_t code = code_of(k[d], s, mn, bits);
    uint32_t& word = record_codes(rec)[d * (l.words() / D) + w];
    word = (word & ~mask) | (code << shift);
    for (int e = 0; e < l.outliers; ++e) {
      if (l.slots(rec, d)[e] == slot) {
        deltas_of(rec, l, d)[e] = residual_half(k[d] - (float(code) * s + mn));
      }
    }
  }
}

void dequantize_key_group(const uint8_t* rec, const KeyGroupLayout& l, float* out, int64_t ld) {
  require_key_group_layout(l);
  const int D = l.D, G = l.G, bits = l.bits;
  std::vector<float> c(static_cast<size_t>(G));
  for (int d = 0; d < D; ++d) {
    unpack(l.codes(rec, d), G, bits, c.data());
    const float s = half_to_float(l.params(rec)[d].scale), mn = half_to_float(l.params(rec)[d].min);
    for (int j = 0; j < G; ++j) out[j * ld + d] = c[static_cast<size_t>(j)] * s + mn;
    for (int e = 0; e < l.outliers; ++e) {
      out[l.slots(rec, d)[e] * ld + d] += half_to_float(l.deltas(rec, d)[e]);
    }
  }
}

void quantize_value_token(const float* v, int D, int G, int bits, uint32_t* codes,
                          QuantParams* params, QuantFit fit) {
  require_kv_quant_shape(D, G, bits);
  std::vector<uint32_t> q(static_cast<size_t>(D));
  for (int g = 0; g < D / G; ++g) {
    const float* x = v + g * G;
    params[g] = fit_params(x, 1, G, bits, fit);
    const float s = half_to_float(params[g].scale), mn = half_to_float(params[g].min);
    for (int j = 0; j < G; ++j) q[static_cast<size_t>(g * G + j)] = code_of(x[j], s, mn, bits);
  }
  pack(q.data(), D, bits, codes);
}

void dequantize_value_token(const uint32_t* codes, const QuantParams* params, int D, int G,
                            int bits, float* out) {
  require_kv_quant_shape(D, G, bits);
  unpack(codes, D, bits, out);
  for (int d = 0; d < D; ++d) {
    out[d] = out[d] * half_to_float(params[d / G].scale) + half_to_float(params[d / G].min);
  }
}

void kv_scatter(const uint8_t* src, const KvCopyOp* ops, int64_t n_ops) {
  for (int64_t i = 0; i < n_ops; ++i) {
    std::memcpy(ops[i].dst, src + ops[i].src_offset, static_cast<size_t>(ops[i].bytes));
  }
}

namespace detail {

void add_key_outliers(const KeyGroupLayout& l, const uint8_t* rec, const float* q, int Hq,
                      float* logits, int64_t ld) {
  for (int d = 0; d < l.D; ++d) {
    const uint16_t* deltas = l.deltas(rec, d);
    const uint8_t* slots = l.slots(rec, d);
    for (int e = 0; e < l.outliers; ++e) {
      const float delta = half_to_float(deltas[e]);
      for (int h = 0; h < Hq; ++h) logits[h * ld + slots[e]] += q[h * l.D + d] * delta;
    }
  }
}

void softmax_logits(const KvHeadView& kv, float* logits, int Hq, float scale, float* probs) {
  // Per head with the kernels' vectorised exp (softmax_rows.h), dead slots out.
  const int64_t N = kv.tokens();
  for (int h = 0; h < Hq; ++h) {
    float* lg = logits + h * N;
    if (kv.alive) {
      for (int64_t t = 0; t < N; ++t) {
        if (!kv.alive[t]) lg[t] = -std::numeric_limits<float>::max();
      }
    }
    const float mx = row_max(lg, N);
    const float sum = exp_sum(lg, N, scale, mx * scale, 1.0f, /*store=*/true);
    if (kv.alive) {
      for (int64_t t = 0; t < N; ++t) {
        if (!kv.alive[t]) lg[t] = 0.0f;  // exp of the clamped -max: ~1e-38, made exact
      }
    }
    scale_row(lg, N, sum > 0 ? 1.0f / sum : 0.0f);
    if (probs) std::memcpy(probs + h * N, lg, static_cast<size_t>(N) * sizeof(float));
  }
}

}  // namespace detail

int64_t kv_attention_work_floats(const KvHeadView& kv, int Hq) {
  const int64_t N = kv.tokens();
  return int64_t{Hq} * N + 2 * int64_t{Hq} * kv.D + std::max(kv.G, kv.D) + int64_t{Hq} * kv.D;
}

namespace {

// The whole attention of one view, portable: the reference the AVX2 version is tested against,
// and what runs for shapes it does not handle.
void attention_body(const KvHeadView& kv, const float* q, int Hq, float scale, float* out,
                    float* probs, float* work) {
  const int D = kv.D, G = kv.G, b = kv.bits;
  const int64_t N = kv.tokens(), S = kv.n_sink, NQ = kv.n_key_groups * G;
  float* logits = work;                  // [Hq][N]
  float* qs = logits + Hq * N;           // [Hq][D]: q * scale of a group
  float* acc = qs + Hq * D;              // [Hq][D]: the value sum
  float* codes = acc + Hq * D;           // [max(G, D)]
  float* bias = codes + std::max(G, D);  // [Hq][D/G] value minimum sums
  const KeyGroupLayout kl = kv.key_layout();
  // Logits of the quantised keys: q . (code * scale + min) per group, channel by channel, plus
  // q . delta at each channel's outlier slots.
  for (int64_t g = 0; g < kv.n_key_groups; ++g) {
    const uint8_t* rec = kv.key_groups.at(g);
    const QuantParams* kp = kl.params(rec);
    for (int h = 0; h < Hq; ++h) {
      float* lg = logits + h * N + S + g * G;
      float mb = 0;
      for (int d = 0; d < D; ++d) {
        qs[h * D + d] = q[h * D + d] * half_to_float(kp[d].scale);
        mb += q[h * D + d] * half_to_float(kp[d].min);
      }
      for (int j = 0; j < G; ++j) lg[j] = mb;
    }
    for (int d = 0; d < D; ++d) {
      unpack(kl.codes(rec, d), G, b, codes);
      for (int h = 0; h < Hq; ++h) {
        float* lg = logits + h * N + S + g * G;
        const float w = qs[h * D + d];
        for (int j = 0; j < G; ++j) lg[j] += w * codes[j];
      }
    }
    detail::add_key_outliers(kl, rec, q, Hq, logits + S + g * G, N);
  }
  // Logits of the full-precision keys: the sinks, then the window.
  for (int64_t t = 0; t < S + kv.n_key_window; ++t) {
    const float* k = t < S ? kv.sink_keys.row(t) : kv.key_window.row(t - S);
    const int64_t col = t < S ? t : NQ + t;
    for (int h = 0; h < Hq; ++h) {
      // Eight independent partial sums: a plain running sum would not vectorise.
      const float* qh = q + h * D;
      float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int d = 0;
      for (; d + 8 <= D; d += 8) {
        for (int l = 0; l < 8; ++l) part[l] += qh[d + l] * k[d + l];
      }
      float s =
          ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
      for (; d < D; ++d) s += qh[d] * k[d];
      logits[h * N + col] = s;
    }
  }
  detail::softmax_logits(kv, logits, Hq, scale, probs);
  // Values: quantised tokens, then the window.
  std::fill(acc, acc + Hq * D, 0.0f);
  const int ng = D / G;
  std::fill(bias, bias + Hq * ng, 0.0f);
  const int64_t vwords = value_token_words(D, b);
  for (int64_t t = 0; t < kv.n_value_quant; ++t) {
    const uint8_t* rec = kv.value_tokens.at(t);
    unpack(record_codes(rec), D, b, codes);
    const QuantParams* vp = record_params(rec, vwords);
    for (int h = 0; h < Hq; ++h) {
      const float p = logits[h * N + S + t];
      if (p == 0.0f) continue;
      float* o = acc + h * D;
      for (int k = 0; k < ng; ++k) {
        const float ps = p * half_to_float(vp[k].scale);
        bias[h * ng + k] += p * half_to_float(vp[k].min);
        const float* c = codes + k * G;
        float* ok = o + k * G;
        for (int j = 0; j < G; ++j) ok[j] += ps * c[j];
      }
    }
  }
  if (kv.n_value_quant > 0) {  // ng >= 1 then (D % G == 0 is checked)
    for (int h = 0; h < Hq; ++h) {
      for (int d = 0; d < D; ++d) acc[h * D + d] += bias[h * ng + d / G];
    }
  }
  for (int64_t t = 0; t < S + kv.n_value_window; ++t) {
    const float* v = t < S ? kv.sink_values.row(t) : kv.value_window.row(t - S);
    const int64_t col = t < S ? t : kv.n_value_quant + t;
    for (int h = 0; h < Hq; ++h) {
      const float p = logits[h * N + col];
      if (p == 0.0f) continue;
      float* o = acc + h * D;
      for (int d = 0; d < D; ++d) o[d] += p * v[d];
    }
  }
  std::memcpy(out, acc, static_cast<size_t>(Hq) * D * sizeof(float));
}

void check_view(const KvHeadView& kv) {
  if (kv.n_key_groups > 0 || kv.n_value_quant > 0) require_key_group_layout(kv.key_layout());
  if (kv.n_sink < 0 ||
      kv.n_key_groups * kv.G + kv.n_key_window != kv.n_value_quant + kv.n_value_window) {
    throw std::invalid_argument("kv_decode_attention: keys and values hold different token counts");
  }
  const bool unpaged = (kv.n_sink > 0 && (!kv.sink_keys.pages || !kv.sink_values.pages)) ||
                       (kv.n_key_groups > 0 && !kv.key_groups.pages) ||
                       (kv.n_key_window > 0 && !kv.key_window.pages) ||
                       (kv.n_value_quant > 0 && !kv.value_tokens.pages) ||
                       (kv.n_value_window > 0 && !kv.value_window.pages);
  if (unpaged) throw std::invalid_argument("kv_decode_attention: records without a page table");
}

}  // namespace

void kv_decode_attention(const KvHeadView& kv, const float* q, int Hq, float scale, float* out,
                         float* probs, float* work) {
  check_view(kv);
  if (kv.tokens() == 0) {
    std::fill(out, out + int64_t{Hq} * kv.D, 0.0f);
    return;
  }
  static const bool f16c = __builtin_cpu_supports("f16c");
  if (kernel_isa() == Isa::kAvx2Fma && f16c &&
      detail::kv_attention_avx2(kv, q, Hq, scale, out, probs, work)) {
    return;
  }
  attention_body(kv, q, Hq, scale, out, probs, work);
}

void kv_decode_attention_batch(const KvHeadView* views, int64_t n_views, const float* q,
                               int64_t q_stride, int Hq, float scale, float* out,
                               int64_t out_stride, float* const* probs) {
  for (int64_t i = 0; i < n_views; ++i) check_view(views[i]);
  tbb::parallel_for(int64_t{0}, n_views, [&](int64_t i) {
    thread_local std::vector<float> work;
    const int64_t need = kv_attention_work_floats(views[i], Hq);
    if (static_cast<int64_t>(work.size()) < need) work.resize(static_cast<size_t>(need));
    kv_decode_attention(views[i], q + i * q_stride, Hq, scale, out + i * out_stride,
                        probs ? probs[i] : nullptr, work.data());
  });
}

}  // namespace ramstream::kernels
