// The cache back-ends' bookkeeping: KIVI's windows and quantisation points, H2O's budget, recent
// window and choice of victims, their composition, the bytes held against theory, and attention
// over a compressed cache against attention over the exact keys and values.
#include "inference/kv_cache.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>

#include <gtest/gtest.h>

#include "model/testing.h"

namespace ramstream::inference {
namespace {

model::ModelConfig shape(int64_t layers = 1, int64_t heads = 2, int64_t kv_heads = 1,
                         int64_t head_dim = 64) {
  model::testing::TinyOptions o;
  o.layers = layers;
  o.heads = heads;
  o.kv_heads = kv_heads;
  o.head_dim = head_dim;
  o.hidden = heads * head_dim;
  return model::testing::tiny_config(o);
}

std::vector<float> randn(int64_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(g);
  return v;
}

KvCacheConfig cache(const char* name, int G = 32, int R = 64, double budget = 0.5) {
  Result<KvCacheConfig> c = KvCacheConfig::parse(name, G, R, budget);
  EXPECT_TRUE(c.ok()) << name;
  return c.value();
}

TEST(KvCacheConfig, ParseAndValidate) {
  EXPECT_FALSE(KvCacheConfig::parse("kivi3", 32, 128, 0.2).ok());
  EXPECT_NE(KvCacheConfig::parse("kivi3", 32, 128, 0.2).error().message.find("kivi2"),
            std::string::npos);
  EXPECT_EQ(cache("kivi2+h2o").name(), "kivi2+h2o");
  EXPECT_EQ(cache("fp32").name(), "bf16");
  EXPECT_NE(cache("kivi2", 32, 100).validate(64, 1000).find("--kv-residual 100"),
            std::string::npos);
  EXPECT_NE(cache("kivi2", 48, 96).validate(64, 1000).find("--kv-group 48"), std::string::npos);
  EXPECT_NE(cache("kivi4", 32, 64).validate(16, 1000).find("head dimension"), std::string::npos);
  EXPECT_NE(cache("h2o", 32, 64, 0).validate(64, 100).find("--kv-budget"), std::string::npos);
  EXPECT_NE(cache("kivi2+h2o", 32, 128, 0.2).validate(64, 512).find("no room for heavy hitters"),
            std::string::npos);
  EXPECT_EQ(cache("kivi2+h2o", 32, 32, 0.2).validate(64, 512), "");
  EXPECT_EQ(cache("h2o", 32, 64, 0.2).budget_tokens(512), 103);
}

TEST(KvCache, KiviQuantisesKeysByBlocksAndValuesByToken) {
  const model::ModelConfig m = shape();
  const int R = 64, G = 32;
  SequenceKv kv(cache("kivi2", G, R), m, 1000);
  const int64_t T = 150;
  const std::vector<float> k = randn(T * 64, 1), v = randn(T * 64, 2);
  kv.prefill(0, k.data(), v.data(), 100, nullptr);
  for (int64_t t = 100; t < T; ++t) kv.append(0, k.data() + t * 64, v.data() + t * 64);
  const kernels::KvHeadView view = kv.view(0, 0);
  EXPECT_EQ(view.n_key_groups * G, T / R * R);  // blocks of R
  EXPECT_EQ(view.n_key_window, T % R);
  EXPECT_EQ(view.n_value_quant, T - R);  // all but the last R
  EXPECT_EQ(view.n_value_window, R);
  EXPECT_EQ(kv.length(0), T);
  // The windows hold the newest tokens exactly.
  for (int64_t t = 0; t < view.n_key_window; ++t) {
    ASSERT_EQ(0, std::memcmp(view.key_window.row(t), k.data() + (T / R * R + t) * 64, 64 * 4)) << t;
  }
  for (int64_t t = 0; t < view.n_value_window; ++t) {
    ASSERT_EQ(0, std::memcmp(view.value_window.row(t), v.data() + (T - R + t) * 64, 64 * 4)) << t;
  }
}

// The cache after a prefill and single-token appends holds exactly the records of quantising the
// same rows at once in the documented blocks: key groups of G tokens after the sinks, one value
// record per token, each with the run's fit.
TEST(KvCache, KiviStreamingEqualsQuantisingAtOnce) {
  const model::ModelConfig m = shape(1, 2, 1, 64);
  const int D = 64, G = 32, R = 64;
  const int64_t T = 231, P = 37;
  const std::vector<float> k = randn(T * D, 11), v = randn(T * D, 12);
  for (const char* kind : {"kivi2", "kivi4"}) {
    for (kernels::QuantFit fit : {kernels::QuantFit::kMinMax, kernels::QuantFit::kMse}) {
      for (int S : {0, 3}) {
        for (int outliers : {0, 2}) {
          KvCacheConfig cfg = cache(kind, G, R);
          cfg.sink = S;
          cfg.value_fit = fit;
          cfg.key_outliers = outliers;
          SequenceKv kv(cfg, m, 1000);
          kv.prefill(0, k.data(), v.data(), P, nullptr);
          for (int64_t t = P; t < T; ++t) kv.append(0, k.data() + t * D, v.data() + t * D);
          const kernels::KvHeadView w = kv.view(0, 0);
          const std::string what = cfg.name();
          ASSERT_EQ(w.n_key_groups * G, (T - S) / R * R) << what;
          ASSERT_EQ(w.n_value_quant, T - S - R) << what;
          ASSERT_EQ(w.key_outliers, outliers) << what;
          std::vector<uint8_t> want(static_cast<size_t>(w.key_layout().bytes()));
          for (int64_t g = 0; g < w.n_key_groups; ++g) {
            kernels::quantize_key_group(k.data() + (S + g * G) * D, D, w.key_layout(), want.data());
            ASSERT_EQ(0, std::memcmp(w.key_groups.at(g), want.data(), want.size()))
                << what << " key group " << g;
          }
          const int64_t vrec = kernels::value_token_record_bytes(D, G, cfg.bits);
          want.resize(static_cast<size_t>(vrec));
          for (int64_t t = 0; t < w.n_value_quant; ++t) {
            kernels::quantize_value_token(
                v.data() + (S + t) * D, D, G, cfg.bits, kernels::record_codes(want.data()),
                kernels::record_params(want.data(), kernels::value_token_words(D, cfg.bits)), fit);
            ASSERT_EQ(0, std::memcmp(w.value_tokens.at(t), want.data(), want.size()))
                << what << " value token " << t;
          }
          for (int64_t t = 0; t < w.n_key_window; ++t) {
            ASSERT_EQ(0, std::memcmp(w.key_window.row(t),
                                     k.data() + (S + w.n_key_groups * G + t) * D, D * 4))
                << what;
          }
        }
      }
    }
  }
  KvCacheConfig bad = cache("bf16");
  bad.value_fit = kernels::QuantFit::kMse;
  EXPECT_NE(bad.validate(64, 1000).find("--kv-value-fit"), std::string::npos);
  bad.value_fit = kernels::QuantFit::kMinMax;
  bad.key_outliers = 1;
  EXPECT_NE(bad.validate(64, 1000).find("--kv-key-outliers 1: keeps outliers of a KIVI"),
            std::string::npos);
  KvCacheConfig many = cache("kivi2");
  many.key_outliers = kernels::kMaxKeyOutliers + 1;
  EXPECT_NE(many.validate(64, 1000).find("--kv-key-outliers must be in [0, 8]"), std::string::npos);
  many.key_outliers = -1;
  EXPECT_NE(many.validate(64, 1000).find("--kv-key-outliers"), std::string::npos);
  EXPECT_FALSE(parse_value_fit("lsq").ok());
  EXPECT_NE(parse_value_fit("lsq").error().message.find("minmax or mse"), std::string::npos);
}

TEST(KvCache, KiviSinksStayExactAndOutOfTheGroups) {
  const model::ModelConfig m = shape();
  const int R = 64, G = 32, S = 4;
  KvCacheConfig cfg = cache("kivi2", G, R);
  cfg.sink = S;
  SequenceKv kv(cfg, m, 1000);
  const int64_t T = 150;
  const std::vector<float> k = randn(T * 64, 1), v = randn(T * 64, 2);
  kv.prefill(0, k.data(), v.data(), 100, nullptr);
  for (int64_t t = 100; t < T; ++t) kv.append(0, k.data() + t * 64, v.data() + t * 64);
  const kernels::KvHeadView view = kv.view(0, 0);
  EXPECT_EQ(view.n_sink, S);
  EXPECT_EQ(view.n_key_groups * G, (T - S) / R * R);  // the window starts after the sinks
  EXPECT_EQ(view.n_value_quant, T - S - R);
  EXPECT_EQ(view.tokens(), T);
  for (int64_t t = 0; t < S; ++t) {
    EXPECT_EQ(0, std::memcmp(view.sink_keys.row(t), k.data() + t * 64, 64 * 4));
    EXPECT_EQ(0, std::memcmp(view.sink_values.row(t), v.data() + t * 64, 64 * 4));
  }
  EXPECT_EQ(kv.live_tokens(0, 0), T);
  KvCacheConfig bad = cache("h2o");
  bad.sink = 4;
  EXPECT_NE(bad.validate(64, 1000).find("--kv-sink 4"), std::string::npos);
  EXPECT_EQ(cfg.name(), "kivi2 sink4");
}

TEST(KvCache, BytesPerTokenMatchTheory) {
  const model::ModelConfig m = shape(1, 2, 1, 64);
  for (int bits : {2, 4}) {
    for (int G : {32, 64}) {
      for (int outliers : {0, 2}) {
        const int R = 128;
        KvCacheConfig cfg = cache(bits == 2 ? "kivi2" : "kivi4", G, R);
        cfg.key_outliers = outliers;
        SequenceKv kv(cfg, m, 5000);
        const int64_t T = 4000;
        const std::vector<float> k = randn(T * 64, 3);
        kv.prefill(0, k.data(), k.data(), T, nullptr);
        const kernels::KvHeadView w = kv.view(0, 0);
        const double quantised = double(w.n_key_groups * G + w.n_value_quant) * 64;
        const double window_bytes = double(w.n_key_window + w.n_value_window) * 64 * 4;  // fp32
        const double bits_per = (double(kv.bytes()) - window_bytes) * 8 / quantised;
        // Keys carry the outliers (24 n / G bits more than values, twice the average's share);
        // keys and values are quantised in different numbers (blocks of R vs one at a time).
        const double nk = double(w.n_key_groups * G), nv = double(w.n_value_quant);
        const double theory =
            kivi_bits_per_element(bits, G, outliers) + 12.0 * outliers / G * (nk - nv) / (nk + nv);
        std::printf(
            "kivi%d G%d key outliers %d: %.4f bits per quantised element (theory %.4f), "
            "%.1f B/token\n",
            bits, G, outliers, bits_per, theory, double(kv.bytes()) / T);
        EXPECT_NEAR(bits_per, theory, 1e-9);
      }
    }
  }
}

// Attention straight over the packed cache equals attention (in double) over what the cache
// holds, dequantised; and 4 bits lose less than 2.
TEST(KvCache, AttentionOverKiviEqualsAttentionOverItsDequantisedContent) {
  const model::ModelConfig m = shape(1, 4, 2, 64);
  const int64_t T = 300, D = 64, Hq = 2;
  std::vector<float> k = randn(T * 2 * D, 5), v = randn(T * 2 * D, 6), q = randn(4 * D, 7);
  for (float& x : q) x *= 0.5f;
  std::vector<float> exact(4 * D);
  SequenceKv full(cache("bf16"), m, 400);
  full.prefill(0, k.data(), v.data(), T, nullptr);
  attend(0, {&full}, q.data(), exact.data(), m);
  double loss[3];
  int which = 0;
  for (const int outliers : {-1, 0, 2}) {  // kivi4, kivi2, kivi2 with two key outliers
    const char* kind = outliers < 0 ? "kivi4" : "kivi2";
    KvCacheConfig cfg = cache(kind, 32, 64);
    cfg.key_outliers = std::max(0, outliers);
    SequenceKv quant(cfg, m, 400);
    quant.prefill(0, k.data(), v.data(), T, nullptr);
    std::vector<float> got(4 * D);
    attend(0, {&quant}, q.data(), got.data(), m);
    double worst = 0, num = 0, den = 0;
    for (int64_t h = 0; h < 2; ++h) {
      const kernels::KvHeadView w = quant.view(0, h);
      // The cache's content, dequantised: keys [T][D], values [T][D].
      std::vector<float> kd(static_cast<size_t>(T * D)), vd(static_cast<size_t>(T * D));
      for (int64_t g = 0; g < w.n_key_groups; ++g) {
        const uint8_t* rec = w.key_groups.at(g);
        kernels::dequantize_key_group(rec, w.key_layout(), kd.data() + g * 32 * D, D);
      }
      for (int64_t t = 0; t < w.n_key_window; ++t) {
        std::copy(w.key_window.row(t), w.key_window.row(t) + D,
                  kd.begin() + (w.n_key_groups * 32 + t) * D);
      }
      for (int64_t t = 0; t < w.n_value_quant; ++t) {
        const uint8_t* rec = w.value_tokens.at(t);
        kernels::dequantize_value_token(
            kernels::record_codes(rec),
            kernels::record_params(rec, kernels::value_token_words(64, w.bits)), 64, 32, w.bits,
            vd.data() + t * D);
      }
      for (int64_t t = 0; t < w.n_value_window; ++t) {
        std::copy(w.value_window.row(t), w.value_window.row(t) + D,
                  vd.begin() + (w.n_value_quant + t) * D);
      }
      for (int64_t i = 0; i < Hq; ++i) {
        const float* qh = q.data() + (h * Hq + i) * D;
        std::vector<double> p(static_cast<size_t>(T));
        double mx = -1e300, sum = 0;
        for (int64_t t = 0; t < T; ++t) {
          double s = 0;
          for (int64_t d = 0; d < D; ++d) s += double(qh[d]) * kd[static_cast<size_t>(t * D + d)];
          p[static_cast<size_t>(t)] = s / 8.0;
          mx = std::max(mx, p[static_cast<size_t>(t)]);
        }
        for (double& x : p) sum += x = std::exp(x - mx);
        for (int64_t d = 0; d < D; ++d) {
          double o = 0;
          for (int64_t t = 0; t < T; ++t)
            o += p[static_cast<size_t>(t)] / sum * vd[static_cast<size_t>(t * D + d)];
          const size_t at = static_cast<size_t>((h * Hq + i) * D + d);
          worst = std::max(worst, std::abs(o - got[at]));
          num += (got[at] - exact[at]) * (got[at] - exact[at]);
          den += exact[at] * exact[at];
        }
      }
    }
    loss[which++] = std::sqrt(num / den);
    std::printf(
        "%s: max abs error vs its dequantised content %.3g; relative error vs the exact "
        "cache %.4f\n",
        cfg.name().c_str(), worst, loss[which - 1]);
    EXPECT_LT(worst, 1e-5) << cfg.name();
  }
  EXPECT_LT(loss[0], loss[1]);
  EXPECT_LT(loss[2], loss[1]);  // the outliers kept exact help even on Gaussian keys
}

TEST(KvCache, H2oKeepsTheBudgetTheRecentAndTheHeavyHitters) {
  const model::ModelConfig m = shape(1, 2, 1, 64);
  const int64_t ctx = 200, D = 64;
  SequenceKv kv(cache("h2o", 32, 64, 0.2), m, ctx);  // 40 tokens: 20 heavy + 20 recent
  const int64_t T = 100;
  std::vector<float> k = randn(T * D, 8), v = randn(T * D, 9);
  // Prompt scores: tokens 10 and 50 received the most attention.
  std::vector<float> col(static_cast<size_t>(T), 0.01f);
  col[10] = 5;
  col[50] = 4;
  kv.prefill(0, k.data(), v.data(), T, col.data());
  EXPECT_EQ(kv.live_tokens(0, 0), 40);
  const kernels::KvHeadView view = kv.view(0, 0);
  auto alive_row_equal = [&](int64_t t) {
    for (int64_t r = 0; r < view.n_key_window; ++r) {
      if (view.alive[r] && view.key_window.row(r)[0] == k[static_cast<size_t>(t * D)]) return true;
    }
    return false;
  };
  EXPECT_TRUE(alive_row_equal(10));
  EXPECT_TRUE(alive_row_equal(50));
  for (int64_t t = T - 20; t < T; ++t) EXPECT_TRUE(alive_row_equal(t)) << "recent " << t;
  // Decoding keeps the budget, and memory stays at budget + 1 rows.
  std::vector<float> q = randn(2 * D, 10), out(2 * D);
  for (int64_t t = 0; t < 60; ++t) {
    const std::vector<float> nk = randn(D, 100 + t), nv = randn(D, 200 + t);
    kv.append(0, nk.data(), nv.data());
    attend(0, {&kv}, q.data(), out.data(), m);
    EXPECT_EQ(kv.live_tokens(0, 0), 40);
  }
  // Compacted after the prompt, then evicted slots are reused: budget + 1 rows at most.
  EXPECT_LE(kv.view(0, 0).n_key_window, 41);
}

TEST(KvCache, KiviWithH2oStaysWithinTheBudget) {
  const model::ModelConfig m = shape(1, 2, 1, 64);
  const int64_t ctx = 1000, D = 64;
  for (int outliers : {0, 2}) {  // with outliers, refills rewrite the outlier slots' residuals
    KvCacheConfig cfg = cache("kivi2+h2o", 32, 32, 0.2);
    cfg.key_outliers = outliers;
    SequenceKv kv(cfg, m, ctx);  // 200 tokens, window R = 32
    std::vector<float> k = randn(500 * D, 11);
    std::vector<float> col(500, 0.0f);
    for (size_t i = 0; i < col.size(); ++i) col[i] = float((i * 7919) % 101) / 101.0f;
    kv.prefill(0, k.data(), k.data(), 500, col.data());
    EXPECT_EQ(kv.live_tokens(0, 0), 200);
    std::vector<float> q = randn(2 * D, 12), out(2 * D);
    const int64_t bytes_before = kv.bytes();
    for (int64_t t = 0; t < 300; ++t) {
      const std::vector<float> nk = randn(D, 300 + t);
      kv.append(0, nk.data(), nk.data());
      attend(0, {&kv}, q.data(), out.data(), m);
      EXPECT_EQ(kv.live_tokens(0, 0), 200);
      for (float x : out) ASSERT_TRUE(std::isfinite(x));
    }
    // Evicted slots are refilled: the cache does not grow by more than one group.
    EXPECT_LE(kv.bytes(),
              bytes_before + 64 * 32 + 4 * 64 + D * outliers * 3 + 32 * (64 / 4 + 8) + 4096)
        << cfg.name();
    EXPECT_LE(kv.view(0, 0).n_key_window, 32 + 32) << cfg.name();
  }
}

TEST(KvPages, SequencesTakePagesAsTheyGrowAndGiveThemBack) {
  const model::ModelConfig m = shape(2, 2, 1, 64);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  std::vector<float> k(64), v(64);
  for (const char* kind : {"bf16", "kivi2", "h2o"}) {
    const KvCacheConfig cfg = KvCacheConfig::parse(kind, 32, 64, 0.25).value();
    auto pool = std::make_shared<KvPagePool>(
        KvPagePool::page_bytes_for(SequenceKv::largest_record(cfg, m)), false);
    std::vector<int64_t> held;
    {
      SequenceKv kv(cfg, m, 2048, pool);
      for (int t = 0; t < 2000; ++t) {
        for (int l = 0; l < 2; ++l) {
          for (float& x : k) x = nd(rng);
          for (float& x : v) x = nd(rng);
          kv.append(l, k.data(), v.data());
          std::vector<float> q(128), out(128);
          attend(l, {&kv}, q.data(), out.data(), m);  // h2o evicts here
        }
        if (t % 500 == 499) held.push_back(pool->pages_in_use());
        ASSERT_EQ(kv.pages_held(), pool->pages_in_use());
      }
    }
    std::printf("%s: pages held at 500/1000/1500/2000 tokens: %lld %lld %lld %lld (%lld B each)\n",
                kind, (long long)held[0], (long long)held[1], (long long)held[2],
                (long long)held[3], (long long)pool->page_bytes());
    if (std::string(kind) == "h2o") {
      EXPECT_EQ(held[1], held[3]) << "h2o holds its budget, not the context";
    } else {
      EXPECT_LT(held[0], held[1]);
      EXPECT_LT(held[1], held[3]);
    }
    EXPECT_EQ(pool->pages_in_use(), 0) << kind << ": the sequence gave every page back";
  }
}

}  // namespace
}  // namespace ramstream::inference
