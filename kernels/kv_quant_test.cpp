// KV quantisation: fp16 conversion, the packing layout, round-trip bounds, slot refills, shape
// errors, and decode attention over packed codes against double-precision attention over the
// dequantised values (both ISAs, alive masks, GQA, the batch entry point).
#include "kernels/kv_quant.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include <gtest/gtest.h>

#include "kernels/cpu_isa.h"
#include "kernels/gemm_rows.h"
#include "kernels/test_values.h"

namespace ramstream::kernels {
namespace {

TEST(KvQuant, HalfConversionRoundsToNearestEven) {
  for (float x : {0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f, 0.333333f}) {
    const float back = half_to_float(float_to_half(x));
    EXPECT_NEAR(back, x, std::abs(x) * 1e-3 + 1e-7) << x;
  }
  EXPECT_EQ(float_to_half(1.0f), 0x3C00);
  EXPECT_EQ(float_to_half(1.0f + 1.0f / 2048), 0x3C00);  // tie -> even
  EXPECT_EQ(float_to_half(1.0f + 3.0f / 2048), 0x3C02);  // tie -> even (up)
  EXPECT_EQ(float_to_half(1e6f), 0x7C00);                // overflow -> inf
  EXPECT_TRUE(std::isnan(half_to_float(float_to_half(NAN))));
}

TEST(KvQuant, PackingLayoutIsLowBitsFirst) {
  // Value token, D = G = 32, 2 bits: x = 0..3 repeating gives codes 0,1,2,3,... exactly.
  float v[32];
  for (int i = 0; i < 32; ++i) v[i] = float(i % 4);
  uint32_t codes[2];
  QuantParams p[1];
  quantize_value_token(v, 32, 32, 2, codes, p);
  EXPECT_EQ(half_to_float(p[0].min), 0.0f);
  EXPECT_EQ(half_to_float(p[0].scale), 1.0f);
  // code i at bits [2i, 2i+2): 0b11100100 repeating.
  EXPECT_EQ(codes[0], 0xE4E4E4E4u);
  EXPECT_EQ(codes[1], 0xE4E4E4E4u);
}

TEST(KvQuant, RoundTripWithinHalfAStep) {
  for (int bits : {2, 4}) {
    for (int G : {32, 64}) {
      const int D = 128;
      const std::vector<float> k = normal_values<float>(int64_t{G} * D, 3, 2.0f);
      const KeyGroupLayout l{D, G, bits, 0};
      std::vector<uint8_t> rec(static_cast<size_t>(l.bytes()));
      quantize_key_group(k.data(), D, l, rec.data());
      std::vector<float> back(k.size());
      dequantize_key_group(rec.data(), l, back.data(), D);
      double worst = 0;
      for (int j = 0; j < G; ++j) {
        for (int d = 0; d < D; ++d) {
          const double step = half_to_float(l.params(rec.data())[d].scale);
          const double e =
              std::abs(back[static_cast<size_t>(j * D + d)] - k[static_cast<size_t>(j * D + d)]);
          // Half a step, plus the fp16 rounding of min and of the step itself.
          ASSERT_LE(e, 0.5 * step * 1.01 + 4e-3) << "bits " << bits << " G " << G;
          worst = std::max(worst, e / step);
        }
      }
      std::vector<uint32_t> vc(static_cast<size_t>(value_token_words(D, bits)));
      std::vector<QuantParams> vp(static_cast<size_t>(D / G));
      std::vector<float> vb(static_cast<size_t>(D));
      quantize_value_token(k.data(), D, G, bits, vc.data(), vp.data());
      dequantize_value_token(vc.data(), vp.data(), D, G, bits, vb.data());
      for (int d = 0; d < D; ++d) {
        const double step = half_to_float(vp[static_cast<size_t>(d / G)].scale);
        ASSERT_LE(std::abs(vb[static_cast<size_t>(d)] - k[static_cast<size_t>(d)]),
                  0.5 * step * 1.01 + 4e-3);
      }
      std::printf("kivi%d G%d keys: worst error %.3f steps\n", bits, G, worst);
    }
  }
}

// Squared error of one value token quantised with `fit`.
double value_token_sq_error(const std::vector<float>& v, int D, int G, int bits, QuantFit fit) {
  std::vector<uint32_t> codes(static_cast<size_t>(value_token_words(D, bits)));
  std::vector<QuantParams> p(static_cast<size_t>(D / G));
  std::vector<float> back(static_cast<size_t>(D));
  quantize_value_token(v.data(), D, G, bits, codes.data(), p.data(), fit);
  dequantize_value_token(codes.data(), p.data(), D, G, bits, back.data());
  double e = 0;
  for (int d = 0; d < D; ++d) {
    const double diff = double(back[static_cast<size_t>(d)]) - v[static_cast<size_t>(d)];
    e += diff * diff;
  }
  return e;
}

TEST(KvQuant, MseFittedValuesNeverLoseToMinMaxAndWinOnHeavyTails) {
  for (int bits : {2, 4}) {
    const int D = 64, G = 32;
    double minmax_total = 0, mse_total = 0;
    for (int t = 0; t < 200; ++t) {
      std::vector<float> v = normal_values<float>(D, 100 + t, 1.0f);
      v[static_cast<size_t>(t % D)] *= 6.0f;  // one outlier per token, as real values have
      const double mm = value_token_sq_error(v, D, G, bits, QuantFit::kMinMax);
      const double ms = value_token_sq_error(v, D, G, bits, QuantFit::kMse);
      ASSERT_LE(ms, mm * (1 + 1e-6)) << "bits " << bits << " token " << t;
      minmax_total += mm;
      mse_total += ms;
    }
    std::printf("kivi%d values, 200 tokens with an outlier: squared error min/max %.2f, mse %.2f\n",
                bits, minmax_total, mse_total);
    // Measured: 2 bits halves the error, 4 bits takes a fifth off.
    EXPECT_LT(mse_total, (bits == 2 ? 0.6 : 0.9) * minmax_total) << "bits " << bits;
  }
  // A constant group and a two-level group are coded exactly either way.
  std::vector<float> flat(32, 0.75f), two(32);
  for (int i = 0; i < 32; ++i) two[static_cast<size_t>(i)] = i % 2 ? 1.5f : -0.5f;
  EXPECT_EQ(value_token_sq_error(flat, 32, 32, 2, QuantFit::kMse), 0.0);
  EXPECT_EQ(value_token_sq_error(two, 32, 32, 2, QuantFit::kMse), 0.0);
}

TEST(KvQuant, KeyGroupRecordLayoutIsAsDocumented) {
  // D 64, G 32, 2 bits, 2 outliers: codes 64 x 2 words, params 64 x 4 bytes, deltas 64 x 2 x 2,
  // slots 64 x 2.
  const KeyGroupLayout l{64, 32, 2, 2};
  EXPECT_EQ(l.words(), 128);
  EXPECT_EQ(l.bytes(), 512 + 256 + 256 + 128);
  std::vector<uint8_t> rec(static_cast<size_t>(l.bytes()));
  EXPECT_EQ(reinterpret_cast<const uint8_t*>(l.params(rec.data())), rec.data() + 512);
  EXPECT_EQ(reinterpret_cast<const uint8_t*>(l.deltas(rec.data(), 3)), rec.data() + 768 + 12);
  EXPECT_EQ(l.slots(rec.data(), 3), rec.data() + 1024 + 6);
  EXPECT_EQ(key_group_record_bytes(64, 32, 2), 768);  // no outliers: KIVI's record
  EXPECT_NE(check_key_group_layout({64, 32, 2, kMaxKeyOutliers + 1}).find("key outliers"),
            std::string::npos);
  EXPECT_EQ(check_key_group_layout({64, 32, 2, kMaxKeyOutliers}), "");
}

// Channels with `n` planted outliers each (10 to 20 standard deviations out, either side): the
// quantiser must find exactly those, keep them exact up to fp16 rounding of the residual, and
// code the rest against the narrower range within half a step.
TEST(KvQuant, KeyOutliersAreFoundKeptExactAndLeaveTheRangeNarrow) {
  for (int bits : {2, 4}) {
    for (int n : {1, 2, 4}) {
      const int D = 64, G = 32;
      std::vector<float> k = normal_values<float>(G * D, 40 + n, 1.0f);
      std::vector<std::vector<int>> planted(D);
      for (int d = 0; d < D; ++d) {
        for (int e = 0; e < n; ++e) {
          const int j = (d * 7 + e * 11) % G;
          k[static_cast<size_t>(j * D + d)] = (e % 2 ? -1.0f : 1.0f) * (10.0f + float(e + d % 10));
          planted[static_cast<size_t>(d)].push_back(j);
        }
      }
      const KeyGroupLayout with{D, G, bits, n}, without{D, G, bits, 0};
      std::vector<uint8_t> rec(static_cast<size_t>(with.bytes())),
          plain(static_cast<size_t>(without.bytes()));
      quantize_key_group(k.data(), D, with, rec.data());
      quantize_key_group(k.data(), D, without, plain.data());
      std::vector<float> back(k.size()), plain_back(k.size());
      dequantize_key_group(rec.data(), with, back.data(), D);
      dequantize_key_group(plain.data(), without, plain_back.data(), D);
      double err = 0, plain_err = 0;
      for (int d = 0; d < D; ++d) {
        std::vector<int> found(with.slots(rec.data(), d), with.slots(rec.data(), d) + n);
        std::sort(found.begin(), found.end());
        std::vector<int> want = planted[static_cast<size_t>(d)];
        std::sort(want.begin(), want.end());
        ASSERT_EQ(found, want) << "channel " << d << " n " << n;
        const double step = half_to_float(with.params(rec.data())[d].scale);
        EXPECT_LT(step, 0.6 * half_to_float(without.params(plain.data())[d].scale));
        for (int j = 0; j < G; ++j) {
          const size_t i = static_cast<size_t>(j * D + d);
          const double e = std::abs(back[i] - k[i]);
          const bool outlier = std::find(want.begin(), want.end(), j) != want.end();
          // An outlier: the fp16 rounding of its residual.
          ASSERT_LE(e, outlier ? std::abs(k[i]) * 1e-3 + 1e-4 : 0.5 * step * 1.01 + 4e-3)
              << "bits " << bits << " n " << n << " d " << d << " j " << j;
          err += e * e;
          plain_err += (plain_back[i] - k[i]) * (plain_back[i] - k[i]);
        }
      }
      std::printf(
          "kivi%d keys, %d planted outliers per channel: squared error %.1f (%.1f "
          "without outliers kept)\n",
          bits, n, err, plain_err);
    }
  }
}

// A key group record of l's shape from random keys [G][D] (returned through k).
std::vector<uint8_t> random_key_group(const KeyGroupLayout& l, uint32_t seed,
                                      std::vector<float>& k) {
  k = normal_values<float>(int64_t{l.G} * l.D, seed, 1.0f);
  std::vector<uint8_t> rec(static_cast<size_t>(l.bytes()));
  quantize_key_group(k.data(), l.D, l, rec.data());
  return rec;
}

TEST(KvQuant, SlotRefillUsesTheGroupsRangeClamped) {
  const int D = 32, G = 32, bits = 4;
  const KeyGroupLayout l{D, G, bits, 0};
  std::vector<float> k;
  std::vector<uint8_t> rec = random_key_group(l, 4, k);
  const QuantParams* p = l.params(rec.data());
  std::vector<float> fresh(D, 100.0f);  // far above every channel's max: clamped to it
  fresh[0] = k[0];                      // inside the range: coded as before
  quantize_key_slot(fresh.data(), l, 5, rec.data());
  std::vector<float> back(static_cast<size_t>(G * D));
  dequantize_key_group(rec.data(), l, back.data(), D);
  for (int d = 1; d < D; ++d) {
    const float hi = half_to_float(p[d].min) + 15 * half_to_float(p[d].scale);
    EXPECT_FLOAT_EQ(back[static_cast<size_t>(5 * D + d)], hi);
  }
  EXPECT_FLOAT_EQ(back[5 * D], back[0]);
  for (int j = 0; j < G; ++j) {  // other slots untouched
    if (j == 5) continue;
    EXPECT_NEAR(back[static_cast<size_t>(j * D + 7)], k[static_cast<size_t>(j * D + 7)],
                half_to_float(p[7].scale));
  }
}

TEST(KvQuant, ARefilledOutlierSlotKeepsTheNewTokenExact) {
  const int D = 32, G = 32, bits = 2;
  const KeyGroupLayout l{D, G, bits, 1};
  std::vector<float> k;
  std::vector<uint8_t> rec = random_key_group(l, 5, k);
  const int slot = l.slots(rec.data(), 0)[0];  // channel 0's outlier
  std::vector<float> fresh(D, 0.1f);
  fresh[0] = 50.0f;  // far outside channel 0's range: exact through the outlier's residual
  quantize_key_slot(fresh.data(), l, slot, rec.data());
  std::vector<float> back(static_cast<size_t>(G * D));
  dequantize_key_group(rec.data(), l, back.data(), D);
  EXPECT_NEAR(back[static_cast<size_t>(slot * D)], 50.0f, 0.05f);
  for (int d = 1; d < D; ++d) {  // other channels: coded in their range (or exact at theirs)
    const float s = half_to_float(l.params(rec.data())[d].scale);
    const float lo = half_to_float(l.params(rec.data())[d].min);
    const bool theirs = l.slots(rec.data(), d)[0] == slot;
    const float want = theirs ? 0.1f : std::min(lo + 3 * s, std::max(lo, 0.1f));
    EXPECT_NEAR(back[static_cast<size_t>(slot * D + d)], want, theirs ? 1e-3f : 0.5f * s + 1e-3f);
  }
}

TEST(KvQuant, ShapeErrorsSayWhatIsWrong) {
  EXPECT_NE(check_kv_quant_shape(64, 48, 2).find("multiple of 32"), std::string::npos);
  EXPECT_NE(check_kv_quant_shape(48, 32, 2).find("divide the head dimension 48"),
            std::string::npos);
  EXPECT_NE(check_kv_quant_shape(64, 32, 3).find("2 or 4 bits"), std::string::npos);
  EXPECT_EQ(check_kv_quant_shape(128, 64, 4), "");
  EXPECT_THROW(require_kv_quant_shape(64, 16, 2), std::invalid_argument);
}

// Records [n][record_bytes] spread over pages of `per_page` records, the first page starting
// `first` records in (like a window whose oldest rows were dropped), so that attention crosses
// page boundaries everywhere.
struct Paged {
  std::vector<std::vector<uint8_t>> pages;
  std::vector<const uint8_t*> table;
  PagedRecords records;
};

Paged paginate(const std::vector<uint8_t>& data, int64_t record_bytes, int64_t per_page,
               int64_t first) {
  Paged p;
  const int64_t n = record_bytes > 0 ? static_cast<int64_t>(data.size()) / record_bytes : 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t slot = first + i;
    if (slot / per_page >= static_cast<int64_t>(p.pages.size())) {
      p.pages.emplace_back(static_cast<size_t>(per_page * record_bytes), uint8_t{0xAB});
    }
    std::memcpy(p.pages.back().data() + (slot % per_page) * record_bytes,
                data.data() + i * record_bytes, static_cast<size_t>(record_bytes));
  }
  for (const auto& page : p.pages) p.table.push_back(page.data());
  p.records = PagedRecords{p.table.data(), per_page, record_bytes, first};
  return p;
}

std::vector<uint8_t> float_bytes(const float* begin, const float* end) {
  return std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(begin),
                              reinterpret_cast<const uint8_t*>(end));
}

// A cache of N tokens of one KV head: quantised key groups + key window, quantised values +
// value window, all from the same random K/V, each kind paged; returns the view and (through
// kd/vd) the values attention should see.
struct Cache {
  Paged ks, vs, kq, kw, vq, vw;
  std::vector<float> kd, vd;
  std::vector<uint8_t> alive;
  KvHeadView view;
};

// The first `sinks` tokens stay in full precision (attention sinks).
Cache make_cache(int D, int G, int bits, int64_t key_groups, int64_t key_window, int64_t vq,
                 uint32_t seed, bool mask, int64_t sinks = 0, int key_outliers = 0) {
  Cache c;
  const int64_t S = sinks, N = S + key_groups * G + key_window;
  const std::vector<float> k = normal_values<float>(N * D, seed, 1.0f);
  const std::vector<float> v = normal_values<float>(N * D, seed + 1, 1.0f);
  c.kd.resize(static_cast<size_t>(N * D));
  c.vd.resize(static_cast<size_t>(N * D));
  const KeyGroupLayout kl{D, G, bits, key_outliers};
  const int64_t krec = kl.bytes();
  std::copy(k.begin(), k.begin() + S * D, c.kd.begin());
  std::copy(v.begin(), v.begin() + S * D, c.vd.begin());
  std::vector<uint8_t> kq(static_cast<size_t>(key_groups * krec));
  for (int64_t g = 0; g < key_groups; ++g) {
    uint8_t* rec = kq.data() + g * krec;
    quantize_key_group(k.data() + (S + g * G) * D, D, kl, rec);
    dequantize_key_group(rec, kl, c.kd.data() + (S + g * G) * D, D);
  }
  const int64_t kw0 = S + key_groups * G;  // first key window token
  std::copy(k.begin() + kw0 * D, k.end(), c.kd.begin() + kw0 * D);
  const int64_t vwords = value_token_words(D, bits), vrec = value_token_record_bytes(D, G, bits);
  std::vector<uint8_t> vqr(static_cast<size_t>(vq * vrec));
  for (int64_t t = 0; t < vq; ++t) {
    uint8_t* rec = vqr.data() + t * vrec;
    quantize_value_token(v.data() + (S + t) * D, D, G, bits, record_codes(rec),
                         record_params(rec, vwords));
    dequantize_value_token(record_codes(rec), record_params(rec, vwords), D, G, bits,
                           c.vd.data() + (S + t) * D);
  }
  std::copy(v.begin() + (S + vq) * D, v.end(), c.vd.begin() + (S + vq) * D);
  c.ks = paginate(float_bytes(k.data(), k.data() + S * D), D * 4, 2, 1);
  c.vs = paginate(float_bytes(v.data(), v.data() + S * D), D * 4, 3, 0);
  c.kq = paginate(kq, krec, 3, 1);
  c.kw = paginate(float_bytes(k.data() + kw0 * D, k.data() + N * D), D * 4, 5, 2);
  c.vq = paginate(vqr, vrec, 7, 3);
  c.vw = paginate(float_bytes(v.data() + (S + vq) * D, v.data() + N * D), D * 4, 4, 1);
  c.alive.assign(static_cast<size_t>(N), 1);
  if (mask) {
    for (int64_t t = 0; t < N; t += 3) c.alive[static_cast<size_t>(t)] = 0;
  }
  KvHeadView& w = c.view;
  w.D = D;
  w.G = G;
  w.bits = bits;
  w.key_outliers = key_outliers;
  w.sink_keys = c.ks.records;
  w.sink_values = c.vs.records;
  w.n_sink = S;
  w.key_groups = c.kq.records;
  w.n_key_groups = key_groups;
  w.key_window = c.kw.records;
  w.n_key_window = key_window;
  w.value_tokens = c.vq.records;
  w.n_value_quant = vq;
  w.value_window = c.vw.records;
  w.n_value_window = N - S - vq;
  w.alive = mask ? c.alive.data() : nullptr;
  return c;
}

// Double-precision attention over the dequantised K/V.
void reference(const Cache& c, const float* q, int Hq, float scale, std::vector<double>& out,
               std::vector<double>& probs) {
  const int D = c.view.D;
  const int64_t N = c.view.tokens();
  out.assign(static_cast<size_t>(Hq * D), 0.0);
  probs.assign(static_cast<size_t>(Hq * N), 0.0);
  for (int h = 0; h < Hq; ++h) {
    double mx = -1e300, sum = 0;
    std::vector<double> s(static_cast<size_t>(N));
    for (int64_t t = 0; t < N; ++t) {
      double d = 0;
      for (int i = 0; i < D; ++i) d += double(q[h * D + i]) * c.kd[static_cast<size_t>(t * D + i)];
      s[static_cast<size_t>(t)] = d * scale;
      if (c.alive[static_cast<size_t>(t)] || !c.view.alive)
        mx = std::max(mx, s[static_cast<size_t>(t)]);
    }
    for (int64_t t = 0; t < N; ++t) {
      const bool live = !c.view.alive || c.alive[static_cast<size_t>(t)];
      s[static_cast<size_t>(t)] = live ? std::exp(s[static_cast<size_t>(t)] - mx) : 0.0;
      sum += s[static_cast<size_t>(t)];
    }
    for (int64_t t = 0; t < N; ++t) {
      const double p = s[static_cast<size_t>(t)] / sum;
      probs[static_cast<size_t>(h * N + t)] = p;
      for (int i = 0; i < D; ++i)
        out[static_cast<size_t>(h * D + i)] += p * c.vd[static_cast<size_t>(t * D + i)];
    }
  }
}

struct AttnCase {
  int D, G, bits, Hq;
  int64_t key_groups, key_window, vq;
  bool mask;
  int64_t sinks = 0;
  int key_outliers = 0;
};

TEST(KvQuant, DecodeAttentionOverPackedCodesMatchesTheReference) {
  const AttnCase cases[] = {
      {64, 32, 2, 3, 0, 40, 0, false},   // full precision only
      {64, 32, 2, 3, 4, 0, 0, false},    // quantised keys only (values full precision)
      {64, 32, 4, 1, 0, 50, 50, false},  // quantised values only
      {64, 32, 2, 3, 6, 17, 100, false},
      {128, 64, 4, 3, 3, 9, 150, true},
      {128, 32, 2, 1, 5, 31, 91, true},
      {64, 64, 4, 2, 2, 64, 120, false},
      {64, 32, 4, 7, 3, 13, 90, true},       // 7 query heads per KV head: blocks of 3, 3, 1
      {48, 48, 2, 3, 0, 21, 0, false},       // D % 32 != 0: the portable path on every ISA
      {64, 32, 2, 3, 4, 20, 100, false, 5},  // attention sinks in full precision
      {128, 32, 4, 7, 2, 9, 70, true, 32},
      {64, 32, 2, 3, 5, 20, 140, false, 4, 1},  // key outliers (dense-and-sparse)
      {128, 64, 4, 7, 3, 9, 150, true, 0, 3},
      {96, 32, 2, 3, 2, 21, 60, false, 0, 2},
  };
  for (Isa isa : {Isa::kScalar, best_isa()}) {
    set_kernel_isa(isa);
    for (const AttnCase& a : cases) {
      Cache c = make_cache(a.D, a.G, a.bits, a.key_groups, a.key_window, a.vq, 21, a.mask, a.sinks,
                           a.key_outliers);
      const int64_t N = c.view.tokens();
      const std::vector<float> q = normal_values<float>(int64_t{a.Hq} * a.D, 9, 0.7f);
      const float scale = 1.0f / std::sqrt(float(a.D));
      std::vector<float> out(static_cast<size_t>(a.Hq * a.D)), probs(static_cast<size_t>(a.Hq * N));
      std::vector<float> work(static_cast<size_t>(kv_attention_work_floats(c.view, a.Hq)));
      kv_decode_attention(c.view, q.data(), a.Hq, scale, out.data(), probs.data(), work.data());
      std::vector<double> ro, rp;
      reference(c, q.data(), a.Hq, scale, ro, rp);
      double eo = 0, ep = 0, psum = 0;
      for (size_t i = 0; i < out.size(); ++i) eo = std::max(eo, std::abs(out[i] - ro[i]));
      for (size_t i = 0; i < probs.size(); ++i) ep = std::max(ep, std::abs(probs[i] - rp[i]));
      for (int64_t t = 0; t < N; ++t) psum += probs[static_cast<size_t>(t)];
      std::printf(
          "%s D%d G%d b%d Hq%d N%lld S%lld outliers %d%s: max abs error out %.2g probs "
          "%.2g\n",
          isa_name(isa), a.D, a.G, a.bits, a.Hq, (long long)N, (long long)a.sinks, a.key_outliers,
          a.mask ? " masked" : "", eo, ep);
      EXPECT_LT(eo, 2e-5);
      EXPECT_LT(ep, 1e-6);
      EXPECT_NEAR(psum, 1.0, 1e-5);
      if (a.mask) {
        EXPECT_EQ(probs[0], 0.0f);  // dead slot 0
      }
    }
  }
  set_kernel_isa(best_isa());
}

TEST(KvQuant, BatchEqualsOneViewAtATime) {
  std::vector<Cache> caches;
  for (int i = 0; i < 7; ++i)
    caches.push_back(make_cache(64, 32, i % 2 ? 2 : 4, i, 5 + i, 3 * i, 30 + i, i % 3 == 0,
                                /*sinks=*/i % 4,
                                /*key_outliers=*/i % 3));
  std::vector<KvHeadView> views;
  for (const Cache& c : caches) views.push_back(c.view);
  const int Hq = 3, D = 64;
  const std::vector<float> q = normal_values<float>(7 * Hq * D, 2, 1.0f);
  std::vector<float> out(7 * Hq * D);
  std::vector<std::vector<float>> probs(7);
  std::vector<float*> pp;
  for (int i = 0; i < 7; ++i) {
    probs[static_cast<size_t>(i)].resize(
        static_cast<size_t>(Hq * views[static_cast<size_t>(i)].tokens()));
    pp.push_back(probs[static_cast<size_t>(i)].data());
  }
  kv_decode_attention_batch(views.data(), 7, q.data(), Hq * D, Hq, 0.125f, out.data(), Hq * D,
                            pp.data());
  for (int i = 0; i < 7; ++i) {
    std::vector<float> one(Hq * D), p(probs[static_cast<size_t>(i)].size());
    std::vector<float> work(
        static_cast<size_t>(kv_attention_work_floats(views[static_cast<size_t>(i)], Hq)));
    kv_decode_attention(views[static_cast<size_t>(i)], q.data() + i * Hq * D, Hq, 0.125f,
                        one.data(), p.data(), work.data());
    EXPECT_EQ(0, std::memcmp(one.data(), out.data() + i * Hq * D, one.size() * 4)) << i;
    EXPECT_EQ(p, probs[static_cast<size_t>(i)]) << i;
  }
}

TEST(GemmRows, MatchesADoublePrecisionProduct) {
  for (Isa isa : {Isa::kScalar, best_isa()}) {
    set_kernel_isa(isa);
    for (int64_t n : {1, 3, 8, 32}) {
      const int64_t ic = 37 + 64, oc = 131;
      const std::vector<float> x = normal_values<float>(n * ic, 1, 1.0f);
      const std::vector<float> w = normal_values<float>(oc * ic, 2, 1.0f);
      const std::vector<float> b = normal_values<float>(oc, 3, 1.0f);
      std::vector<float> out(static_cast<size_t>(n * oc));
      gemm_rows_nt(x.data(), n, ic, w.data(), oc, b.data(), out.data());
      double worst = 0;
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t o = 0; o < oc; ++o) {
          double s = b[static_cast<size_t>(o)];
          for (int64_t k = 0; k < ic; ++k)
            s += double(x[static_cast<size_t>(i * ic + k)]) * w[static_cast<size_t>(o * ic + k)];
          worst = std::max(worst, std::abs(s - out[static_cast<size_t>(i * oc + o)]));
        }
      }
      EXPECT_LT(worst, 1e-4) << isa_name(isa) << " n " << n;
    }
  }
  set_kernel_isa(best_isa());
}

TEST(GemmRows, Avx512GivesTheAvx2Bits) {
  set_kernel_avx512(true);
  if (best_isa() != Isa::kAvx2Fma || !kernel_avx512()) {
    GTEST_SKIP() << "this CPU has no AVX-512F";
  }
  for (int64_t n : {2, 3, 5, 8, 31, 32}) {
    for (int64_t ic : {101, 576}) {      // with and without a tail past the last 8 columns
      for (int64_t oc : {131, 64, 7}) {  // full tasks, a remainder of 3, fewer than 4 rows
        const std::vector<float> x = normal_values<float>(n * ic, 1, 1.0f);
        const std::vector<float> w = normal_values<float>(oc * ic, 2, 1.0f);
        const std::vector<float> b = normal_values<float>(oc, 3, 1.0f);
        std::vector<float> want(static_cast<size_t>(n * oc)), got(want.size());
        set_kernel_avx512(false);
        gemm_rows_nt(x.data(), n, ic, w.data(), oc, b.data(), want.data());
        set_kernel_avx512(true);
        gemm_rows_nt(x.data(), n, ic, w.data(), oc, oc % 2 ? b.data() : nullptr, got.data());
        if (oc % 2 == 0) {  // without the bias: compare against the AVX2 kernel without it too
          set_kernel_avx512(false);
          gemm_rows_nt(x.data(), n, ic, w.data(), oc, nullptr, want.data());
          set_kernel_avx512(true);
        }
        EXPECT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * 4))
            << "n " << n << " ic " << ic << " oc " << oc;
      }
    }
  }
}

}  // namespace
}  // namespace ramstream::kernels
