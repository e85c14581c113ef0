#include "inference/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

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

std::string KvCacheConfig::name() const {
  std::string n = bits == 0 ? (h2o ? "h2o" : "bf16") : "kivi" + std::to_string(bits);
  if (bits != 0 && h2o) n += "+h2o";
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

double kivi_bits_per_element(int bits, int group) {
  return double(bits) + 32.0 / double(group);
}

// One layer and KV head of one sequence. Token index t of the kernel view: the quantised slots
// first (KIVI; keys and values may split differently without h2o), then the full-precision rows.
struct SequenceKv::Head {
  std::vector<uint32_t> kcodes, vcodes;
  std::vector<QuantParams> kparams, vparams;
  int64_t groups = 0;               // quantised key groups (slots 0 .. groups*G-1)
  int64_t vq = 0;                   // quantised value tokens
  std::vector<float> krows, vrows;  // full-precision rows; the live ones from *begin
  int64_t kbegin = 0, nk = 0, vbegin = 0, nv = 0;
  // h2o: per quantised slot (KIVI) or per row (full precision); window: per row from kbegin.
  std::vector<float> score, wscore;
  std::vector<int64_t> pos, wpos;
  std::vector<uint8_t> alive, view_alive;
  std::vector<int64_t> free_slots;
  int64_t live = 0;
};

SequenceKv::SequenceKv(const KvCacheConfig& cfg, const model::ModelConfig& model, int64_t context)
    : cfg_(cfg), nkv_(model.num_kv_heads), d_(model.head_dim), context_(context) {
  const std::string bad = cfg.validate(d_, context);
  if (!bad.empty()) throw std::invalid_argument(bad);
  if (cfg_.h2o) budget_ = cfg_.budget_tokens(context);
  length_.assign(static_cast<size_t>(model.num_layers), 0);
  heads_.resize(static_cast<size_t>(model.num_layers * nkv_));
  const int64_t rows = cfg_.bits == 0 ? (cfg_.h2o ? std::min(context, budget_ + 1) : context)
                                      : 2 * int64_t{cfg_.residual} + cfg_.group;
  for (Head& h : heads_) {
    h.krows.reserve(static_cast<size_t>(rows * d_));
    h.vrows.reserve(static_cast<size_t>(rows * d_));
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
  return hd.groups * cfg_.group + hd.nk;
}

int64_t SequenceKv::bytes() const {
  int64_t n = 0;
  for (const Head& h : heads_) {
    n += static_cast<int64_t>((h.kcodes.size() + h.vcodes.size()) * sizeof(uint32_t) +
                              (h.kparams.size() + h.vparams.size()) * sizeof(QuantParams));
    n += (h.nk + h.nv) * d_ * static_cast<int64_t>(sizeof(float));
    if (cfg_.h2o) {
      const int64_t slots = static_cast<int64_t>(h.score.size()) + h.nk;
      n += slots * static_cast<int64_t>(sizeof(float) + sizeof(int64_t) + 1);
    }
  }
  return n;
}

namespace {

void drop_front_rows(std::vector<float>& rows, int64_t& begin, int64_t n_live, int64_t d,
                     int64_t threshold) {
  if (begin < threshold) return;
  std::memmove(rows.data(), rows.data() + begin * d, static_cast<size_t>(n_live * d) * 4);
  rows.resize(static_cast<size_t>(n_live * d));
  begin = 0;
}

template <class T>
void drop_front(std::vector<T>& v, int64_t begin) {
  v.erase(v.begin(), v.begin() + begin);
}

}  // namespace

void SequenceKv::push_token(Head& hd, const float* k, const float* v, int64_t pos, float score) {
  const int64_t D = d_;
  if (cfg_.bits == 0) {
    int64_t row;
    if (cfg_.h2o && !hd.free_slots.empty()) {
      row = hd.free_slots.back();
      hd.free_slots.pop_back();
      std::memcpy(hd.krows.data() + row * D, k, static_cast<size_t>(D) * 4);
      std::memcpy(hd.vrows.data() + row * D, v, static_cast<size_t>(D) * 4);
    } else {
      row = hd.nk;
      hd.krows.insert(hd.krows.end(), k, k + D);
      hd.vrows.insert(hd.vrows.end(), v, v + D);
      ++hd.nk;
      hd.nv = hd.nk;
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
  hd.krows.insert(hd.krows.end(), k, k + D);
  hd.vrows.insert(hd.vrows.end(), v, v + D);
  ++hd.nk;
  ++hd.nv;
  if (cfg_.h2o) {
    hd.wscore.push_back(score);
    hd.wpos.push_back(pos);
    ++hd.live;
  }
  flush(hd);
}

void SequenceKv::flush(Head& hd) {
  const int D = static_cast<int>(d_), G = cfg_.group, R = cfg_.residual, b = cfg_.bits;
  const int64_t kwords = kernels::key_group_words(D, G, b);
  const int64_t vwords = int64_t{D} * b / 32, vgroups = D / G;
  auto quantize_values = [&](const float* rows, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      hd.vcodes.resize(static_cast<size_t>((hd.vq + 1) * vwords));
      hd.vparams.resize(static_cast<size_t>((hd.vq + 1) * vgroups));
      kernels::quantize_value_token(rows + i * D, D, G, b, hd.vcodes.data() + hd.vq * vwords,
                                    hd.vparams.data() + hd.vq * vgroups);
      ++hd.vq;
    }
  };
  auto new_key_groups = [&](const float* rows, int64_t n_groups) {
    for (int64_t g = 0; g < n_groups; ++g) {
      hd.kcodes.resize(static_cast<size_t>((hd.groups + 1) * kwords));
      hd.kparams.resize(static_cast<size_t>((hd.groups + 1) * D));
      kernels::quantize_key_group(rows + g * G * D, D, D, G, b,
                                  hd.kcodes.data() + hd.groups * kwords,
                                  hd.kparams.data() + hd.groups * D);
      ++hd.groups;
    }
  };
  if (!cfg_.h2o) {
    // Keys: a block of R once the window holds R; values: the oldest once R are waiting.
    if (hd.nk == R) {
      new_key_groups(hd.krows.data() + hd.kbegin * D, R / G);
      hd.krows.clear();
      hd.kbegin = 0;
      hd.nk = 0;
    }
    while (hd.nv > R) {
      quantize_values(hd.vrows.data() + hd.vbegin * D, 1);
      ++hd.vbegin;
      --hd.nv;
    }
    drop_front_rows(hd.vrows, hd.vbegin, hd.nv, D, R);
    return;
  }
  // h2o: keys and values share slots; the window is the recent part.
  while (hd.nk > R) {
    const float* krow = hd.krows.data() + hd.kbegin * D;
    const float* vrow = hd.vrows.data() + hd.kbegin * D;
    if (!hd.free_slots.empty()) {
      const int64_t s = hd.free_slots.back();
      hd.free_slots.pop_back();
      const int64_t g = s / G;
      kernels::quantize_key_slot(krow, D, G, b, static_cast<int>(s % G),
                                 hd.kcodes.data() + g * kwords, hd.kparams.data() + g * D);
      kernels::quantize_value_token(vrow, D, G, b, hd.vcodes.data() + s * vwords,
                                    hd.vparams.data() + s * vgroups);
      hd.score[static_cast<size_t>(s)] = hd.wscore[static_cast<size_t>(hd.kbegin)];
      hd.pos[static_cast<size_t>(s)] = hd.wpos[static_cast<size_t>(hd.kbegin)];
      hd.alive[static_cast<size_t>(s)] = 1;
      hd.kbegin += 1;
      hd.nk -= 1;
    } else if (hd.nk >= R + G) {
      new_key_groups(krow, 1);
      quantize_values(vrow, G);
      for (int64_t i = 0; i < G; ++i) {
        hd.score.push_back(hd.wscore[static_cast<size_t>(hd.kbegin + i)]);
        hd.pos.push_back(hd.wpos[static_cast<size_t>(hd.kbegin + i)]);
        hd.alive.push_back(1);
      }
      hd.kbegin += G;
      hd.nk -= G;
    } else {
      break;
    }
  }
  hd.nv = hd.nk;
  if (hd.kbegin >= R) {
    drop_front(hd.wscore, hd.kbegin);
    drop_front(hd.wpos, hd.kbegin);
    int64_t vb = hd.kbegin;
    drop_front_rows(hd.vrows, vb, hd.nk, D, R);
    drop_front_rows(hd.krows, hd.kbegin, hd.nk, D, R);
  }
  hd.vbegin = hd.kbegin;
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
  const int64_t D = d_;
  int64_t w = 0;
  for (int64_t r = 0; r < hd.nk; ++r) {
    if (!hd.alive[static_cast<size_t>(r)]) continue;
    if (w != r) {
      std::memmove(hd.krows.data() + w * D, hd.krows.data() + r * D, static_cast<size_t>(D) * 4);
      std::memmove(hd.vrows.data() + w * D, hd.vrows.data() + r * D, static_cast<size_t>(D) * 4);
      hd.score[static_cast<size_t>(w)] = hd.score[static_cast<size_t>(r)];
      hd.pos[static_cast<size_t>(w)] = hd.pos[static_cast<size_t>(r)];
      hd.alive[static_cast<size_t>(w)] = 1;
    }
    ++w;
  }
  hd.nk = hd.nv = w;
  hd.krows.resize(static_cast<size_t>(w * D));
  hd.vrows.resize(static_cast<size_t>(w * D));
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
  kv.key_codes = hd.kcodes.data();
  kv.key_params = hd.kparams.data();
  kv.n_key_groups = hd.groups;
  kv.key_window = hd.krows.data() + hd.kbegin * d_;
  kv.n_key_window = hd.nk;
  kv.key_window_ld = d_;
  kv.value_codes = hd.vcodes.data();
  kv.value_params = hd.vparams.data();
  kv.n_value_quant = hd.vq;
  kv.value_window = hd.vrows.data() + hd.vbegin * d_;
  kv.n_value_window = hd.nv;
  kv.value_window_ld = d_;
  if (cfg_.h2o) {
    if (cfg_.bits == 0) {
      kv.alive = hd.alive.data();
    } else {
      hd.view_alive.assign(hd.alive.begin(), hd.alive.end());
      hd.view_alive.resize(hd.alive.size() + static_cast<size_t>(hd.nk), 1);
      kv.alive = hd.view_alive.data();
    }
  }
  return kv;
}

void SequenceKv::add_scores(int64_t layer, int64_t h, const float* probs, int64_t hq) {
  Head& hd = head(layer, h);
  const int64_t nq = static_cast<int64_t>(hd.score.size()) * (cfg_.bits == 0 ? 0 : 1);
  const int64_t n = cfg_.bits == 0 ? hd.nk : nq + hd.nk;
  for (int64_t t = 0; t < n; ++t) {
    float s = 0;
    for (int64_t i = 0; i < hq; ++i) s += probs[i * n + t];
    if (cfg_.bits == 0 || t < nq) {
      hd.score[static_cast<size_t>(t)] += s;
    } else {
      hd.wscore[static_cast<size_t>(hd.kbegin + t - nq)] += s;
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
      probs[i].resize(static_cast<size_t>(Hq * (v.n_key_groups * v.G + v.n_key_window)));
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
