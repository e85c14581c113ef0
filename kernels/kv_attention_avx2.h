// Internal to kernels/: the AVX2 decode attention of kv_quant.h and the softmax step it shares
// with the portable version in kv_quant.cpp.
#pragma once

#include "kernels/kv_quant.h"

namespace ramstream::kernels::detail {

// logits [Hq][N] raw q.k -> probabilities in place (dead slots 0), copied to probs when not null.
void softmax_logits(const KvHeadView& kv, float* logits, int Hq, float scale, float* probs);

// logits[h * ld + j] += q[h] . delta over the outliers (slot j) of a key group record's channels.
void add_key_outliers(const KeyGroupLayout& l, const uint8_t* rec, const float* q, int Hq,
                      float* logits, int64_t ld);

// The whole attention of one view with AVX2/FMA/F16C, register-blocked: false (nothing written)
// when the view is not one it handles (D % 32 != 0), so the caller runs the portable version.
bool kv_attention_avx2(const KvHeadView& kv, const float* q, int Hq, float scale, float* out,
                       float* probs, float* work);

}  // namespace ramstream::kernels::detail
