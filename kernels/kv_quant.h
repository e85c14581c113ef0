// KV-cache quantisation (KIVI-style asymmetric min/max codes) and decode attention straight over
// the packed codes, on raw arrays (no libtorch). The CUDA kernels of kv_quant_cuda.cuh use the
// same formats; these CPU functions are their reference.
//
// Format, byte by byte:
//   - b-bit unsigned codes, b in {2, 4}: 32/b codes per little-endian uint32 word, code i of a
//     word at bits [i*b, i*b + b) (low bits first).
//   - QuantParams: 4 bytes, {uint16 scale, uint16 min}, both IEEE fp16 bit patterns. A group
//     dequantises as x^ = q * scale + min; the quantiser rounds scale = (max - min) / (2^b - 1)
//     and min to fp16 first and codes q = clamp(round((x - min) / scale), 0, 2^b - 1) against
//     those rounded values (scale 0: every code 0). Values may instead be fitted (QuantFit::kMse):
//     same format, other (scale, min).
//   - KEY GROUP RECORD: one KV head, G token slots, grouped per channel (keys have outlier
//     channels): codes [D][G*b/32] uint32 (channel d's G codes contiguous, slot j = code j), then
//     params [D], then with n > 0 outliers per channel (dense-and-sparse): deltas [D][n] uint16
//     (fp16 bits) and slots [D][n] uint8; key_group_record_bytes(D, G, b, n) bytes in all
//     (D % 4 == 0 keeps it a multiple of 4). Channel d's outliers are its n values farthest from
//     the channel's mean over the group (ties: the lower slot first); its (scale, min) is the
//     min/max of the other G - n values; every slot is coded (outliers clamped to that range)
//     and an outlier's delta is fp16(x - x^), so it dequantises as q * scale + min + delta.
//   - VALUE TOKEN RECORD: one KV head, one token, grouped per G channels: codes [D*b/32] uint32,
//     then params [D/G]; value_token_record_bytes(D, G, b) bytes.
//   - WINDOW ROW: one full-precision key or value row, D fp32.
//   - PAGES: a head's records of one kind sit in fixed-size pages (inference/kv_pages.h), records
//     never straddle a page; PagedRecords is the page table the attention reads them through.
// G % 32 == 0, 32 <= G <= 256, D % G == 0 (check_kv_quant_shape); 0 <= n <= kMaxKeyOutliers.
//
//   uint8_t rec[key_group_record_bytes(64, 32, 2, /*outliers=*/1)];
//   quantize_key_group(k, /*ld=*/64, {/*D=*/64, /*G=*/32, /*bits=*/2, /*outliers=*/1}, rec);
//   const uint8_t* page = rec;
//   KvHeadView v;  v.D = 64; v.key_groups = {&page, 1, sizeof rec, 0}; v.n_key_groups = 1; ...
//   kv_decode_attention(v, q, /*Hq=*/3, 0.125f, out, /*probs=*/nullptr, work.data());
#pragma once

#include <cstdint>
#include <string>

#if defined(__CUDACC__)
#define RS_HOST_DEVICE __host__ __device__
#else
#define RS_HOST_DEVICE
#endif

namespace ramstream::kernels {

struct QuantParams {
  uint16_t scale;  // fp16 bits
  uint16_t min;    // fp16 bits
};
static_assert(sizeof(QuantParams) == 4, "QuantParams is two fp16 values");

// How a group's (scale, min) are chosen.
//   kMinMax  KIVI: the group's range; every value inside it, |x - x^| <= scale / 2.
//   kMse     the min/max params and, for each of kMseFitSteps + 1 candidate codings (codes of
//            the range at (2^b - 2 + 2k / kMseFitSteps) / (max - min) steps per unit, k = 0 ..
//            kMseFitSteps), the least-squares (scale, min) of x against those codes; the one of
//            lowest squared error after fp16 rounding and recoding wins. Never a larger squared
//            error than kMinMax; extremes may clip. Offered for values only: on keys (per
//            channel) it measured worse, since the clipped extremes are the tokens attention
//            picks (bench/RESULTS.md, kv_quality).
enum class QuantFit : uint8_t { kMinMax, kMse };
inline constexpr int kMseFitSteps = 10;

uint16_t float_to_half(float x);  // round to nearest even, overflow to inf
float half_to_float(uint16_t h);

// "" when (D, G, bits) is a layout these kernels support, else what is wrong.
std::string check_kv_quant_shape(int D, int G, int bits);
// Throws std::invalid_argument with check_kv_quant_shape's message.
void require_kv_quant_shape(int D, int G, int bits);

RS_HOST_DEVICE constexpr int64_t key_group_words(int D, int G, int bits) {
  return int64_t{D} * G * bits / 32;
}
RS_HOST_DEVICE constexpr int64_t value_token_words(int D, int bits) {
  return int64_t{D} * bits / 32;
}
RS_HOST_DEVICE constexpr int64_t key_group_record_bytes(int D, int G, int bits, int outliers = 0) {
  return key_group_words(D, G, bits) * 4 + int64_t{D} * 4 + int64_t{D} * outliers * 3;
}
RS_HOST_DEVICE constexpr int64_t value_token_record_bytes(int D, int G, int bits) {
  return value_token_words(D, bits) * 4 + int64_t{D / G} * 4;
}
// A record's codes, and its params after `code_words` words of codes.
RS_HOST_DEVICE inline uint32_t* record_codes(uint8_t* rec) {
  return reinterpret_cast<uint32_t*>(rec);
}
RS_HOST_DEVICE inline const uint32_t* record_codes(const uint8_t* rec) {
  return reinterpret_cast<const uint32_t*>(rec);
}
RS_HOST_DEVICE inline QuantParams* record_params(uint8_t* rec, int64_t code_words) {
  return reinterpret_cast<QuantParams*>(rec + code_words * 4);
}
RS_HOST_DEVICE inline const QuantParams* record_params(const uint8_t* rec, int64_t code_words) {
  return reinterpret_cast<const QuantParams*>(rec + code_words * 4);
}

// Most outliers per key channel and group a record may carry.
inline constexpr int kMaxKeyOutliers = 8;

// The shape of a key group record.
struct KeyGroupLayout {
  int D = 0, G = 32, bits = 2, outliers = 0;

  RS_HOST_DEVICE int64_t words() const { return key_group_words(D, G, bits); }
  RS_HOST_DEVICE int64_t bytes() const { return key_group_record_bytes(D, G, bits, outliers); }
  // Channel d's codes (G*b/32 words).
  RS_HOST_DEVICE const uint32_t* codes(const uint8_t* rec, int d) const {
    return record_codes(rec) + int64_t{d} * G * bits / 32;
  }
  RS_HOST_DEVICE const QuantParams* params(const uint8_t* rec) const {
    return record_params(rec, words());
  }
  // Channel d's outlier deltas and slots (`outliers` of each).
  RS_HOST_DEVICE const uint16_t* deltas(const uint8_t* rec, int d) const {
    return reinterpret_cast<const uint16_t*>(rec + words() * 4 + int64_t{D} * 4) +
           int64_t{d} * outliers;
  }
  RS_HOST_DEVICE const uint8_t* slots(const uint8_t* rec, int d) const {
    return rec + words() * 4 + int64_t{D} * 4 + int64_t{D} * outliers * 2 + int64_t{d} * outliers;
  }
};

// Fixed-size records of one kind spread over pages (a page table): record i sits at
// pages[(first + i) / per_page] + ((first + i) % per_page) * record_bytes. One contiguous array
// is one page with per_page >= its length.
struct PagedRecords {
  const uint8_t* const* pages = nullptr;
  int64_t per_page = 1, record_bytes = 0, first = 0;

  RS_HOST_DEVICE const uint8_t* at(int64_t i) const {
    const int64_t j = first + i;
    return pages[j / per_page] + (j % per_page) * record_bytes;
  }
  RS_HOST_DEVICE const float* row(int64_t i) const { return reinterpret_cast<const float*>(at(i)); }
};

// "" when (D, G, bits, outliers) is a key group layout these kernels support, else what is wrong.
std::string check_key_group_layout(const KeyGroupLayout& l);

// k: G rows of D floats, row stride ld -> one key group record (l.bytes() bytes).
void quantize_key_group(const float* k, int64_t ld, const KeyGroupLayout& l, uint8_t* rec);
// One token (D floats) into slot `slot` of an existing group, with that group's params (clamped
// to its range): an evicted slot refilled. Where the slot is one of a channel's outliers, its
// delta becomes the new token's residual, so it stays exact there.
void quantize_key_slot(const float* k, const KeyGroupLayout& l, int slot, uint8_t* rec);
// out: G rows of D floats, row stride ld.
void dequantize_key_group(const uint8_t* rec, const KeyGroupLayout& l, float* out, int64_t ld);
void quantize_value_token(const float* v, int D, int G, int bits, uint32_t* codes,
                          QuantParams* params, QuantFit fit = QuantFit::kMinMax);
void dequantize_value_token(const uint32_t* codes, const QuantParams* params, int D, int G,
                            int bits, float* out);

// One sequence's cache of one KV head, as decode attention reads it. Token t in [0, N) is the same
// token for keys and values: first the n_sink full-precision sink rows (the sequence's first
// tokens, kept exact), then for keys the quantised slots (n_key_groups * G) and the window rows,
// for values the quantised tokens and the window rows (the split points may differ).
struct KvHeadView {
  int D = 0, G = 32, bits = 2;
  int key_outliers = 0;                 // per channel of each key group record
  PagedRecords sink_keys, sink_values;  // full-precision rows
  int64_t n_sink = 0;
  PagedRecords key_groups;  // key group records
  int64_t n_key_groups = 0;
  PagedRecords key_window;  // full-precision key rows
  int64_t n_key_window = 0;
  PagedRecords value_tokens;  // value token records
  int64_t n_value_quant = 0;
  PagedRecords value_window;  // full-precision value rows
  int64_t n_value_window = 0;
  // [N] or null: 0 = slot empty or evicted, left out of the softmax.
  const uint8_t* alive = nullptr;

  RS_HOST_DEVICE int64_t tokens() const { return n_sink + n_key_groups * G + n_key_window; }
  RS_HOST_DEVICE KeyGroupLayout key_layout() const { return {D, G, bits, key_outliers}; }
};

// One byte run of a staging buffer to its place: dst[0, bytes) = src + src_offset (a multiple of
// 4 bytes, 4-byte aligned on both sides). How dirty KV records reach a device twin of their pages.
struct KvCopyOp {
  uint8_t* dst;
  int64_t src_offset, bytes;
};
static_assert(sizeof(KvCopyOp) == 24, "KvCopyOp is a pointer and two int64");
// The CPU reference of kv_scatter_cuda: every op in order.
void kv_scatter(const uint8_t* src, const KvCopyOp* ops, int64_t n_ops);

// Floats of scratch kv_decode_attention needs.
int64_t kv_attention_work_floats(const KvHeadView& kv, int Hq);
// q [Hq][D] (the query heads sharing this KV head), out [Hq][D] = softmax(scale q.k) v over the
// N tokens; probs (nullable) [Hq][N] receives the probabilities (0 for dead slots).
void kv_decode_attention(const KvHeadView& kv, const float* q, int Hq, float scale, float* out,
                         float* probs, float* work);
// Every view (in parallel, results independent of the thread count): q + i*q_stride for view i,
// out + i*out_stride, probs[i] when probs is not null.
void kv_decode_attention_batch(const KvHeadView* views, int64_t n_views, const float* q,
                               int64_t q_stride, int Hq, float scale, float* out,
                               int64_t out_stride, float* const* probs);

}  // namespace ramstream::kernels
