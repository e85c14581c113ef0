// The KV cache of decoding sequences, one back-end per run:
//   full   keys and values in full precision (fp32 on the CPU backend): the reference;
//   kivi2 / kivi4   KIVI: asymmetric min/max codes (kernels/kv_quant.h), keys per channel in
//          groups of G tokens, values per token in groups of G channels; the last R tokens in full
//          precision. Keys are quantised a block of R at a time when their window fills, values
//          one (the oldest) token at a time once R are waiting. R % G == 0. Our additions, off
//          by default: `sink` first tokens in full precision, least-squares value params
//          (`value_fit`), and `key_outliers` per key channel and group kept exact as sparse fp16
//          residuals (dense-and-sparse; kernels/kv_quant.h documents the record).
//   +h2o   heavy-hitter eviction: per KV head a budget of `budget` x context tokens (at least
//          8), half heavy hitters, half the most recent; each token's score is the attention
//          probability it received, summed over the decode steps (and the prompt's queries at
//          prefill) and over the query heads of its group (GQA). The lowest-scoring token outside
//          the recent window is evicted whenever the budget is exceeded; the next token takes its
//          slot. Keys are cached after RoPE, so an evicted position needs no re-rotation.
//          With KIVI the recent window is the full-precision one (R tokens; budget must leave
//          room for heavy hitters beyond R + G); tokens leave it one at a time into evicted
//          slots, quantised with that group's scale and minimum (clamped), or G at a time into a
//          new group; keys and values then share slots. Per sequence and head: batch > 1 is
//          exact.
//
// Storage: every head's records (key groups, value tokens, window rows) live in pages of a
// KvPagePool (inference/kv_pages.h), taken as the sequence grows and given back as the window
// moves on, compaction shrinks it, or the sequence ends. The pages are host memory, pinned with a
// CUDA device: the CPU kernels attend straight over them and the CUDA Generator moves q and the
// new k/v across (FlexGen's CPU delegation of attention).
//
//   KvCacheConfig cfg = KvCacheConfig::parse("kivi2", 32, 128, 0.2).value();
//   auto pool = std::make_shared<KvPagePool>(
//       KvPagePool::page_bytes_for(SequenceKv::largest_record(cfg, model_cfg)), /*pin=*/false);
//   SequenceKv kv(cfg, model_cfg, /*context=*/2048, pool);
//   kv.prefill(layer, k, v, T, col_scores);  // k, v [T][NKV][D] fp32 after RoPE
//   kv.append(layer, k1, v1);                // one decode token, [NKV][D]
//   attend(layer, {&kv, ...}, q, out);       // q, out [B][NH][D]
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "inference/kv_pages.h"
#include "kernels/kv_quant.h"
#include "model/config.h"
#include "util/result.h"

namespace ramstream::inference {

struct KvCacheConfig {
  int bits = 0;        // 0: full precision; 2 or 4: KIVI
  int group = 32;      // G
  int residual = 128;  // R
  bool h2o = false;
  double budget = 0.2;  // h2o: fraction of the context kept
  // KIVI: the first `sink` tokens of a sequence stay in full precision (attention sinks: the
  // tokens every query attends to most, whose quantisation error every step pays for).
  int sink = 0;
  // KIVI: how value groups get their scale and minimum (kernels/kv_quant.h). Keys always use
  // min/max.
  kernels::QuantFit value_fit = kernels::QuantFit::kMinMax;
  // KIVI: per channel of each key group, this many values (those farthest from the channel's
  // mean) stay exact as sparse fp16 residuals, out of the group's range (dense-and-sparse, as
  // KVQuant; 24 bits each). 0 is KIVI.
  int key_outliers = 0;

  // "bf16" (alias "fp32", "full"), "kivi2", "kivi4", "h2o", "kivi2+h2o", "kivi4+h2o"; errors
  // name the bad value and list the choices.
  static Result<KvCacheConfig> parse(const std::string& name, int group, int residual,
                                     double budget);
  std::string name() const;
  // "" when usable for head dim `head_dim` and `context` tokens; else what is wrong, naming the
  // flag (--kv-group, --kv-residual, --kv-budget, --kv-sink, --kv-value-fit, --kv-key-outliers).
  std::string validate(int64_t head_dim, int64_t context) const;
  // h2o: tokens kept per KV head for a context of `context` tokens.
  int64_t budget_tokens(int64_t context) const;
};

// "minmax" or "mse" (--kv-value-fit); an error names the value and the choices.
Result<kernels::QuantFit> parse_value_fit(const std::string& name);

// One sequence's cache across all layers.
class SequenceKv {
 public:
  // `context`: positions this sequence may reach; h2o's budget is a fraction of it. `pool`: where
  // the pages come from (shared by a batch; null: a private host pool).
  SequenceKv(const KvCacheConfig& cfg, const model::ModelConfig& model, int64_t context,
             std::shared_ptr<KvPagePool> pool = nullptr);
  ~SequenceKv();
  SequenceKv(const SequenceKv&) = delete;
  SequenceKv& operator=(const SequenceKv&) = delete;

  // The prompt's keys and values of one layer, k/v [T][NKV][D] fp32 (already rotated);
  // col_scores [NKV][T]: each prompt token's attention received (h2o only; else nullptr).
  void prefill(int64_t layer, const float* k, const float* v, int64_t T, const float* col_scores);
  // One new token of one layer: k/v [NKV][D].
  void append(int64_t layer, const float* k, const float* v);
  // Tokens seen so far (prompt + appended) in `layer`.
  int64_t length(int64_t layer) const;
  // Tokens held (not evicted) in layer `layer`, head `head`.
  int64_t live_tokens(int64_t layer, int64_t head) const;
  // Bytes held by this sequence's cache (codes, scales, full-precision rows, h2o scores): the
  // payload; pages_held() x the page size is what it takes from the pool.
  int64_t bytes() const;
  int64_t pages_held() const;
  // The largest record (bytes) a cache of this kind puts in a page.
  static int64_t largest_record(const KvCacheConfig& cfg, const model::ModelConfig& model);

  // For attend(): the kernel view of one layer and head, and h2o's score update afterwards.
  kernels::KvHeadView view(int64_t layer, int64_t head);
  void add_scores(int64_t layer, int64_t head, const float* probs, int64_t hq);
  void evict(int64_t layer);

 private:
  struct Head;
  Head& head(int64_t layer, int64_t h);
  const Head& head(int64_t layer, int64_t h) const;
  void push_token(Head& hd, const float* k, const float* v, int64_t pos, float score);
  void flush(Head& hd);
  void evict_head(Head& hd, int64_t now);
  void compact(Head& hd);

  KvCacheConfig cfg_;
  int64_t nkv_, d_, context_, budget_ = 0;
  std::vector<int64_t> length_;  // per layer
  std::vector<Head> heads_;      // [layer][kv head]
};

// Decode attention of one layer for a batch: q [B][NH][D] fp32, out [B][NH][D]; seqs[b] holds
// row b's cache (its newest token already appended). Updates h2o scores and evicts.
void attend(int64_t layer, const std::vector<SequenceKv*>& seqs, const float* q, float* out,
            const model::ModelConfig& model);

// Bits per cached element (keys and values averaged) in theory: KIVI b + 32/G for codes and fp16
// scale + minimum, plus 24 n / G on keys for n outliers per key channel and group (12 n / G
// averaged); the full-precision window and sinks excluded.
double kivi_bits_per_element(int bits, int group, int key_outliers = 0);

}  // namespace ramstream::inference
