#include "inference/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <utility>

namespace ramstream::inference {

using kernels::QuantParams;

Result<KvCacheConfig> KvCacheConfig::parse(const std::string& name, int group, int residual,
                                           double budget) {
  KvCacheConfig c;
  c.group = group;
  c.residual = residual;
  c.budget = budget;
  if (name == "bf16" || name == "fp32" || name == "full") {
  } else if (name == "kivi2" || name == "kivi4") {
    c.bits = name == "kivi2" ? 2 : 4;
  } else if (name == "h2o") {
    c.h2o = true;
  } else if (name == "kivi2+h2o" || name == "kivi4+h2o" || name == "h2o+kivi2" ||
             name == "h2o+kivi4") {
    c.bits = name.find('2') != std::string::npos ? 2 : 4;
    c.h2o = true;
  } else {
    return Error{"--kv-cache '" + name +
                 "': unknown cache type (choose bf16, kivi2, kivi4, h2o, kivi2+h2o, kivi4+h2o)"};
  }
  return c;
}

Result<kernels::QuantFit> parse_value_fit(const std::string& name) {
  if (name == "minmax") return kernels::QuantFit::kMinMax;
  if (name == "mse") return kernels::QuantFit::kMse;
  return Error{"--kv-value-fit '" + name + "': unknown fit (choose minmax or mse)"};
}

std::string KvCacheConfig::name() const {
  std::string n = bits == 0 ? (h2o ? "h2o" : "bf16") : "kivi" + std::to_string(bits);
  if (bits != 0 && h2o) n += "+h2o";
  if (sink > 0) n += " sink" + std::to_string(sink);
  if (bits != 0 && value_fit == kernels::QuantFit::kMse) n += " mse-values";
  if (bits != 0 && key_outliers > 0) n += " key-outliers" + std::to_string(key_outliers);
  return n;
}

int64_t KvCacheConfig::budget_tokens(int64_t context) const {
  return std::max<int64_t>(8, static_cast<int64_t>(std::ceil(budget * double(context))));
}

std::string KvCacheConfig::validate(int64_t head_dim, int64_t context) const {
  if (h2o && !(budget > 0 && budget <= 1)) {
    return "--kv-budget must be in (0, 1] (a fraction of the context), got " +
           std::to_string(budget);
  }
  if (sink < 0) return "--kv-sink must be >= 0, got " + std::to_string(sink);
  if (sink > 0 && (bits == 0 || h2o)) {
    return "--kv-sink " + std::to_string(sink) +
           ": keeps a KIVI cache's first tokens in full precision; it applies to kivi2 and "
           "kivi4 (h2o keeps its own heavy hitters, bf16 is all full precision)";
  }
  if (value_fit != kernels::QuantFit::kMinMax && bits == 0) {
    return "--kv-value-fit mse: fits a KIVI cache's value groups; it applies to kivi2 and kivi4 "
           "(and their +h2o forms)";
  }
  if (key_outliers != 0 && bits == 0) {
    return "--kv-key-outliers " + std::to_string(key_outliers) +
           ": keeps outliers of a KIVI cache's key groups exact; it applies to kivi2 and kivi4 "
           "(and their +h2o forms)";
  }
  if (key_outliers < 0 || key_outliers > kernels::kMaxKeyOutliers) {
    return "--kv-key-outliers must be in [0, " + std::to_string(kernels::kMaxKeyOutliers) +
           "] (per channel and key group), got " + std::to_string(key_outliers);
  }
  if (bits == 0) return "";
  if (group < 32 || group > 256 || group % 32 != 0) {
    return "--kv-group " + std::to_string(group) + ": must be a multiple of 32 in [32, 256]";
  }
  if (head_dim % group != 0) {
    return "--kv-group " + std::to_string(group) + ": must divide the head dimension (" +
           std::to_string(head_dim) + ") for the per-token value groups";
  }
  if (residual <= 0 || residual % group != 0) {
    return "--kv-residual " + std::to_string(residual) +
           ": must be a positive multiple of --kv-group (" + std::to_string(group) +
           "): keys are quantised a block of R tokens at a time in groups of G";
  }
  if (h2o && budget_tokens(context) <= residual + group) {
    return "--kv-budget " + std::to_string(budget) + " keeps " +
           std::to_string(budget_tokens(context)) + " of " + std::to_string(context) +
           " tokens, no more than the full-precision window R + G = " +
           std::to_string(residual + group) +
           ": no room for heavy hitters; raise --kv-budget or lower --kv-residual";
  }
  return "";
}

double kivi_bits_per_element(int bits, int group, int key_outliers) {
  return double(bits) + 32.0 / double(group) + 12.0 * double(key_outliers) / double(group);
}

// One layer and KV head of one sequence. Token index t of the kernel view: the quantised slots
// first (KIVI; keys and values may split differently without h2o), then the full-precision rows.
struct SequenceKv::Head {
  Head(const std::shared_ptr<KvPagePool>& pool, int64_t D, int G, int bits, int key_outliers)
      : kgroups(pool, bits ? kernels::key_group_record_bytes(int(D), G, bits, key_outliers) : 4),
        vtokens(pool, bits ? kernels::value_token_record_bytes(int(D), G, bits) : 4),
        krows(pool, D * 4),
        vrows(pool, D * 4),
        ksink(pool, D * 4),
        vsink(pool, D * 4) {}

  PagedArray kgroups, vtokens;  // quantised key groups (slots 0 .. groups*G-1), value tokens
  PagedArray krows, vrows;      // full-precision rows
  PagedArray ksink, vsink;      // KIVI: the first cfg.sink tokens, full precision
  // h2o: per quantised slot (KIVI) or per row (full precision); window: per row of krows.
  std::vector<float> score, wscore;
  std::vector<int64_t> pos, wpos;
  std::vector<uint8_t> alive, view_alive;
  std::vector<int64_t> free_slots;
  int64_t live = 0;
};

int64_t SequenceKv::largest_record(const KvCacheConfig& cfg, const model::ModelConfig& model) {
  const int D = static_cast<int>(model.head_dim);
  int64_t r = int64_t{D} * 4;
  if (cfg.bits != 0 && kernels::check_kv_quant_shape(D, cfg.group, cfg.bits).empty()) {
    r = std::max({r, kernels::key_group_record_bytes(D, cfg.group, cfg.bits, cfg.key_outliers),
                  kernels::value_token_record_bytes(D, cfg.group, cfg.bits)});
  }
  return r;
}

SequenceKv::SequenceKv(const KvCacheConfig& cfg, const model::ModelConfig& model, int64_t context,
                       std::shared_ptr<KvPagePool> pool)
    : cfg_(cfg), nkv_(model.num_kv_heads), d_(model.head_dim), context_(context) {
  const std::string bad = cfg.validate(d_, context);
  if (!bad.empty()) throw std::invalid_argument(bad);
  const int64_t record = largest_record(cfg, model);
  if (!pool) pool = std::make_shared<KvPagePool>(KvPagePool::page_bytes_for(record), false);
  if (pool->page_bytes() < record) {
    throw std::invalid_argument("SequenceKv: KV pages of " + std::to_string(pool->page_bytes()) +
                                " bytes cannot hold a record of " + std::to_string(record));
  }
  if (cfg_.h2o) budget_ = cfg_.budget_tokens(context);
  length_.assign(static_cast<size_t>(model.num_layers), 0);
  heads_.reserve(static_cast<size_t>(model.num_layers * nkv_));
  for (int64_t i = 0; i < model.num_layers * nkv_; ++i) {
    heads_.emplace_back(pool, d_, cfg_.group, cfg_.bits, cfg_.key_outliers);
  }
}

SequenceKv::~SequenceKv() = default;

SequenceKv::Head& SequenceKv::head(int64_t layer, int64_t h) {
  return heads_[static_cast<size_t>(layer * nkv_ + h)];
}

const SequenceKv::Head& SequenceKv::head(int64_t layer, int64_t h) const {
  return heads_[static_cast<size_t>(layer * nkv_ + h)];
}

int64_t SequenceKv::length(int64_t layer) const {
  return length_[static_cast<size_t>(layer)];
}

int64_t SequenceKv::live_tokens(int64_t layer, int64_t h) const {
  const Head& hd = head(layer, h);
  if (cfg_.h2o) return hd.live;
  return hd.ksink.size() + hd.kgroups.size() * cfg_.group + hd.krows.size();
}

int64_t SequenceKv::bytes() const {
  int64_t n = 0;
  for (const Head& h : heads_) {
    if (cfg_.bits != 0) {
      n +=
          h.kgroups.size() * h.kgroups.record_bytes() + h.vtokens.size() * h.vtokens.record_bytes();
    }
    n += (h.krows.size() + h.vrows.size() + h.ksink.size() + h.vsink.size()) * d_ *
         static_cast<int64_t>(sizeof(float));
    if (cfg_.h2o) {
      const int64_t slots = static_cast<int64_t>(h.score.size()) + h.krows.size();
      n += slots * static_cast<int64_t>(sizeof(float) + sizeof(int64_t) + 1);
    }
  }
  return n;
}

int64_t SequenceKv::pages_held() const {
  int64_t n = 0;
  for (const Head& h : heads_) {
    n += h.kgroups.pages_held() + h.vtokens.pages_held() + h.krows.pages_held() +
         h.vrows.pages_held() + h.ksink.pages_held() + h.vsink.pages_held();
  }
  return n;
}

void SequenceKv::push_token(Head& hd, const float* k, const float* v, int64_t pos, float score) {
  const size_t row_bytes = static_cast<size_t>(d_) * sizeof(float);
  if (cfg_.bits == 0) {
    int64_t row;
    if (cfg_.h2o && !hd.free_slots.empty()) {
      row = hd.free_slots.back();
      hd.free_slots.pop_back();
      std::memcpy(hd.krows.at(row), k, row_bytes);
      std::memcpy(hd.vrows.at(row), v, row_bytes);
    } else {
      row = hd.krows.size();
      std::memcpy(hd.krows.push_back(), k, row_bytes);
      std::memcpy(hd.vrows.push_back(), v, row_bytes);
      if (cfg_.h2o) {
        hd.score.push_back(0);
        hd.pos.push_back(0);
        hd.alive.push_back(0);
      }
    }
    if (cfg_.h2o) {
      hd.score[static_cast<size_t>(row)] = score;
      hd.pos[static_cast<size_t>(row)] = pos;
      hd.alive[static_cast<size_t>(row)] = 1;
      ++hd.live;
    }
    return;
  }
  if (pos < cfg_.sink) {
    std::memcpy(hd.ksink.push_back(), k, row_bytes);
    std::memcpy(hd.vsink.push_back(), v, row_bytes);
    return;
  }
  std::memcpy(hd.krows.push_back(), k, row_bytes);
  std::memcpy(hd.vrows.push_back(), v, row_bytes);
  if (cfg_.h2o) {
    hd.wscore.push_back(score);
    hd.wpos.push_back(pos);
    ++hd.live;
  }
  flush(hd);
}

void SequenceKv::flush(Head& hd) {
  const int D = static_cast<int>(d_), G = cfg_.group, R = cfg_.residual, b = cfg_.bits;
  const kernels::KeyGroupLayout klayout{D, G, b, cfg_.key_outliers};
  const int64_t vwords = kernels::value_token_words(D, b);
  auto quantize_value = [&](const float* row) {
    uint8_t* rec = hd.vtokens.push_back();
    kernels::quantize_value_token(row, D, G, b, kernels::record_codes(rec),
                                  kernels::record_params(rec, vwords), cfg_.value_fit);
  };
  // The G oldest window rows as one group; rows may straddle pages, so gathered first.
  std::vector<float> group_rows;
  auto new_key_group = [&]() {
    group_rows.resize(static_cast<size_t>(G) * D);
    hd.krows.gather(0, G, reinterpret_cast<uint8_t*>(group_rows.data()));
    uint8_t* rec = hd.kgroups.push_back();
    kernels::quantize_key_group(group_rows.data(), D, klayout, rec);
  };
  if (!cfg_.h2o) {
    // Keys: a block of R once the window holds R; values: the oldest once R are waiting.
    if (hd.krows.size() == R) {
      for (int64_t g = 0; g < R / G; ++g) {
        new_key_group();
        hd.krows.pop_front(G);
      }
    }
    while (hd.vrows.size() > R) {
      quantize_value(std::as_const(hd.vrows).row(0));
      hd.vrows.pop_front(1);
    }
    return;
  }
  // h2o: keys and values share slots; the window is the recent part.
  while (hd.krows.size() > R) {
    if (!hd.free_slots.empty()) {
      const int64_t s = hd.free_slots.back();
      hd.free_slots.pop_back();
      uint8_t* krec = hd.kgroups.at(s / G);
      kernels::quantize_key_slot(std::as_const(hd.krows).row(0), klayout, static_cast<int>(s % G),
                                 krec);
      uint8_t* vrec = hd.vtokens.at(s);
      kernels::quantize_value_token(std::as_const(hd.vrows).row(0), D, G, b,
                                    kernels::record_codes(vrec),
                                    kernels::record_params(vrec, vwords), cfg_.value_fit);
      hd.score[static_cast<size_t>(s)] = hd.wscore.front();
      hd.pos[static_cast<size_t>(s)] = hd.wpos.front();
      hd.alive[static_cast<size_t>(s)] = 1;
      hd.krows.pop_front(1);
      hd.vrows.pop_front(1);
      hd.wscore.erase(hd.wscore.begin());
      hd.wpos.erase(hd.wpos.begin());
    } else if (hd.krows.size() >= R + G) {
      new_key_group();
      for (int64_t i = 0; i < G; ++i) {
        quantize_value(std::as_const(hd.vrows).row(i));
        hd.score.push_back(hd.wscore[static_cast<size_t>(i)]);
        hd.pos.push_back(hd.wpos[static_cast<size_t>(i)]);
        hd.alive.push_back(1);
      }
      hd.krows.pop_front(G);
      hd.vrows.pop_front(G);
      hd.wscore.erase(hd.wscore.begin(), hd.wscore.begin() + G);
      hd.wpos.erase(hd.wpos.begin(), hd.wpos.begin() + G);
    } else {
      break;
    }
  }
}

void SequenceKv::evict_head(Head& hd, int64_t now) {
  // Heavy hitters compete outside the recent window: the last budget/2 positions (full
  // precision) or the full-precision window (KIVI, never in the quantised slots).
  const int64_t recent_from = now - budget_ / 2;
  while (hd.live > budget_) {
    int64_t victim = -1;
    float best = std::numeric_limits<float>::infinity();
    for (size_t s = 0; s < hd.alive.size(); ++s) {
      if (!hd.alive[s]) continue;
      if (cfg_.bits == 0 && hd.pos[s] > recent_from) continue;
      if (hd.score[s] < best) {
        best = hd.score[s];
        victim = static_cast<int64_t>(s);
      }
    }
    if (victim < 0) return;  // everything left is recent
    hd.alive[static_cast<size_t>(victim)] = 0;
    hd.free_slots.push_back(victim);
    --hd.live;
  }
}

void SequenceKv::compact(Head& hd) {
  // Full-precision rows after the prompt's eviction: keep only the live ones (the prompt may be
  // far longer than the budget), so memory is the budget from the first decode step on.
  const size_t row_bytes = static_cast<size_t>(d_) * sizeof(float);
  int64_t w = 0;
  for (int64_t r = 0; r < hd.krows.size(); ++r) {
    if (!hd.alive[static_cast<size_t>(r)]) continue;
    if (w != r) {
      std::memcpy(hd.krows.at(w), hd.krows.at(r), row_bytes);
      std::memcpy(hd.vrows.at(w), hd.vrows.at(r), row_bytes);
      hd.score[static_cast<size_t>(w)] = hd.score[static_cast<size_t>(r)];
      hd.pos[static_cast<size_t>(w)] = hd.pos[static_cast<size_t>(r)];
      hd.alive[static_cast<size_t>(w)] = 1;
    }
    ++w;
  }
  hd.krows.truncate(w);
  hd.vrows.truncate(w);
  hd.score.resize(static_cast<size_t>(w));
  hd.pos.resize(static_cast<size_t>(w));
  hd.alive.resize(static_cast<size_t>(w));
  hd.free_slots.clear();
}

void SequenceKv::prefill(int64_t layer, const float* k, const float* v, int64_t T,
                         const float* col_scores) {
  const int64_t row = nkv_ * d_;
  const int64_t start = length_[static_cast<size_t>(layer)];
  for (int64_t h = 0; h < nkv_; ++h) {
    Head& hd = head(layer, h);
    for (int64_t t = 0; t < T; ++t) {
      const float s = col_scores ? col_scores[h * T + t] : 0.0f;
      push_token(hd, k + t * row + h * d_, v + t * row + h * d_, start + t, s);
    }
    if (cfg_.h2o) {
      evict_head(hd, start + T - 1);
      if (cfg_.bits == 0) compact(hd);
    }
  }
  length_[static_cast<size_t>(layer)] += T;
}

void SequenceKv::append(int64_t layer, const float* k, const float* v) {
  const int64_t p = length_[static_cast<size_t>(layer)];
  for (int64_t h = 0; h < nkv_; ++h) {
    push_token(head(layer, h), k + h * d_, v + h * d_, p, 0.0f);
  }
  length_[static_cast<size_t>(layer)] += 1;
}

kernels::KvHeadView SequenceKv::view(int64_t layer, int64_t h) {
  Head& hd = head(layer, h);
  kernels::KvHeadView kv;
  kv.D = static_cast<int>(d_);
  kv.G = cfg_.group;
  kv.bits = cfg_.bits == 0 ? 2 : cfg_.bits;
  kv.key_outliers = cfg_.key_outliers;
  kv.sink_keys = hd.ksink.records();
  kv.sink_values = hd.vsink.records();
  kv.n_sink = hd.ksink.size();
  kv.key_groups = hd.kgroups.records();
  kv.n_key_groups = hd.kgroups.size();
  kv.key_window = hd.krows.records();
  kv.n_key_window = hd.krows.size();
  kv.value_tokens = hd.vtokens.records();
  kv.n_value_quant = hd.vtokens.size();
  kv.value_window = hd.vrows.records();
  kv.n_value_window = hd.vrows.size();
  if (cfg_.h2o) {
    if (cfg_.bits == 0) {
      kv.alive = hd.alive.data();
    } else {
      hd.view_alive.assign(hd.alive.begin(), hd.alive.end());
      hd.view_alive.resize(hd.alive.size() + static_cast<size_t>(hd.krows.size()), 1);
      kv.alive = hd.view_alive.data();
    }
  }
  return kv;
}

void SequenceKv::add_scores(int64_t layer, int64_t h, const float* probs, int64_t hq) {
  Head& hd = head(layer, h);
  const int64_t nq = cfg_.bits == 0 ? 0 : static_cast<int64_t>(hd.score.size());
  const int64_t n = nq + hd.krows.size();
  for (int64_t t = 0; t < n; ++t) {
    float s = 0;
    for (int64_t i = 0; i < hq; ++i) s += probs[i * n + t];
    if (cfg_.bits == 0 || t < nq) {
      hd.score[static_cast<size_t>(t)] += s;
    } else {
      hd.wscore[static_cast<size_t>(t - nq)] += s;
    }
  }
}

void SequenceKv::evict(int64_t layer) {
  if (!cfg_.h2o) return;
  const int64_t now = length_[static_cast<size_t>(layer)] - 1;
  for (int64_t h = 0; h < nkv_; ++h) evict_head(head(layer, h), now);
}

void attend(int64_t layer, const std::vector<SequenceKv*>& seqs, const float* q, float* out,
            const model::ModelConfig& model) {
  const int64_t B = static_cast<int64_t>(seqs.size());
  const int64_t NKV = model.num_kv_heads, D = model.head_dim, Hq = model.num_heads / NKV;
  std::vector<kernels::KvHeadView> views(static_cast<size_t>(B * NKV));
  bool h2o = false;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < NKV; ++h) {
      views[static_cast<size_t>(b * NKV + h)] = seqs[static_cast<size_t>(b)]->view(layer, h);
    }
    h2o = h2o || views[static_cast<size_t>(b * NKV)].alive != nullptr;
  }
  // h2o: the probabilities of every view, [Hq][N] each.
  std::vector<std::vector<float>> probs;
  std::vector<float*> probs_ptr;
  if (h2o) {
    probs.resize(views.size());
    probs_ptr.resize(views.size());
    for (size_t i = 0; i < views.size(); ++i) {
      const kernels::KvHeadView& v = views[i];
      probs[i].resize(static_cast<size_t>(Hq * v.tokens()));
      probs_ptr[i] = probs[i].data();
    }
  }
  const float scale = 1.0f / std::sqrt(float(D));
  kernels::kv_decode_attention_batch(views.data(), static_cast<int64_t>(views.size()), q, Hq * D,
                                     static_cast<int>(Hq), scale, out, Hq * D,
                                     h2o ? probs_ptr.data() : nullptr);
  if (!h2o) return;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < NKV; ++h) {
      seqs[static_cast<size_t>(b)]->add_scores(layer, h,
                                               probs[static_cast<size_t>(b * NKV + h)].data(), Hq);
    }
    seqs[static_cast<size_t>(b)]->evict(layer);
  }
}

}  // namespace ramstream::inference
