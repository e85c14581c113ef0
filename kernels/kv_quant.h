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
//     those rounded values (scale 0: every code 0).
//   - KEY GROUP: one KV head, G token slots, grouped per channel (keys have outlier channels):
//     codes [D][G*b/32] uint32 (channel d's G codes contiguous, slot j = code j), then (in a
//     separate array) params [D]. Groups of a head: group g's codes at codes + g * key_group_words,
//     its params at params + g * D.
//   - VALUE TOKEN: one KV head, one token, grouped per G channels: codes [D*b/32] uint32,
//     params [D/G]. Token t at codes + t * D*b/32, params + t * (D/G).
// G % 32 == 0, 32 <= G <= 256, D % G == 0 (check_kv_quant_shape).
//
//   QuantParams p[64];  uint32_t codes[key_group_words(64, 32, 2)];
//   quantize_key_group(k, /*ld=*/64, /*D=*/64, /*G=*/32, /*bits=*/2, codes, p);
//   KvHeadView v;  v.D = 64; v.key_codes = codes; v.key_params = p; v.n_key_groups = 1; ...
//   kv_decode_attention(v, q, /*Hq=*/3, 0.125f, out, /*probs=*/nullptr, work.data());
#pragma once

#include <cstdint>
#include <string>

namespace ramstream::kernels {

struct QuantParams {
  uint16_t scale;  // fp16 bits
  uint16_t min;    // fp16 bits
};
static_assert(sizeof(QuantParams) == 4, "QuantParams is two fp16 values");

uint16_t float_to_half(float x);  // round to nearest even, overflow to inf
float half_to_float(uint16_t h);

// "" when (D, G, bits) is a layout these kernels support, else what is wrong.
std::string check_kv_quant_shape(int D, int G, int bits);
// Throws std::invalid_argument with check_kv_quant_shape's message.
void require_kv_quant_shape(int D, int G, int bits);

constexpr int64_t key_group_words(int D, int G, int bits) {
  return int64_t{D} * G * bits / 32;
}
constexpr int64_t value_token_words(int D, int bits) {
  return int64_t{D} * bits / 32;
}

// k: G rows of D floats, row stride ld.
void quantize_key_group(const float* k, int64_t ld, int D, int G, int bits, uint32_t* codes,
                        QuantParams* params);
// One token into slot `slot` of an existing group, with that group's params (clamped to its
// range): an evicted slot refilled.
void quantize_key_slot(const float* k, int D, int G, int bits, int slot, uint32_t* codes,
                       const QuantParams* params);
void dequantize_key_group(const uint32_t* codes, const QuantParams* params, int D, int G, int bits,
                          float* out, int64_t ld);
void quantize_value_token(const float* v, int D, int G, int bits, uint32_t* codes,
                          QuantParams* params);
void dequantize_value_token(const uint32_t* codes, const QuantParams* params, int D, int G,
                            int bits, float* out);

// One sequence's cache of one KV head, as decode attention reads it. Token t in [0, N) is the same
// token for keys and values: keys are the quantised slots (n_key_groups * G) then the window
// rows; values the quantised tokens then the window rows (the split points may differ).
struct KvHeadView {
  int D = 0, G = 32, bits = 2;
  const uint32_t* key_codes = nullptr;
  const QuantParams* key_params = nullptr;
  int64_t n_key_groups = 0;
  const float* key_window = nullptr;
  int64_t n_key_window = 0, key_window_ld = 0;
  const uint32_t* value_codes = nullptr;
  const QuantParams* value_params = nullptr;
  int64_t n_value_quant = 0;
  const float* value_window = nullptr;
  int64_t n_value_window = 0, value_window_ld = 0;
  // [N] or null: 0 = slot empty or evicted, left out of the softmax.
  const uint8_t* alive = nullptr;

  int64_t tokens() const { return n_key_groups * G + n_key_window; }
};

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
