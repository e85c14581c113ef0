// bfloat16 storage type and fp32 <-> bf16 conversion, bit for bit as PyTorch's c10::BFloat16.
//
// `bf16` is 16 bits of storage, not an arithmetic type: kernels load it, widen it to fp32 (a
// shift: bf16 is the top half of an fp32), compute in fp32 and narrow the result with
// round-to-nearest-even. No libtorch here, so the CPU kernels and the engine's flat host regions
// share one plain type; a bf16 array has the byte layout of an at::kBFloat16 tensor.
//
//   bf16 w = to_bf16(0.1f);                 // w.bits == 0x3dcd, as c10::BFloat16(0.1f)
//   float x = to_float(w);                  // 0.10009765625f
//   fp32_to_bf16(master, working, n);       // vectorised (AVX2 where the CPU has it) + TBB
//
// NaN: every NaN becomes the canonical quiet NaN 0x7fc0, as the scalar c10::BFloat16 constructor
// does. (ATen 1.13's vectorised tensor.to(kBFloat16) writes 0xffff instead; both are NaN.)
#pragma once

#include <cstdint>
#include <cstring>

namespace ramstream::kernels {

struct bf16 {
  uint16_t bits;
};
static_assert(sizeof(bf16) == 2, "bf16 must be exactly 16 bits so arrays match kBFloat16 layout");

inline uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}

inline float bits_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

// Round to nearest, ties to even: adding 0x7fff plus the lowest kept bit carries into the kept
// half exactly when the dropped half is above one half, or equal to it with the kept part odd.
// Infinities pass through (their dropped half is zero); overflow past the largest bf16 lands on
// inf, as it should. NaN must be caught first: the add could carry a NaN's payload into inf.
inline bf16 to_bf16(float x) {
  if (x != x) return bf16{0x7fc0};
  const uint32_t u = float_bits(x);
  const uint32_t rounding_bias = ((u >> 16) & 1u) + 0x7fffu;
  return bf16{static_cast<uint16_t>((u + rounding_bias) >> 16)};
}

inline float to_float(bf16 x) {
  return bits_float(static_cast<uint32_t>(x.bits) << 16);
}

// Bulk conversions of n elements. max_threads: 0 uses the calling TBB arena (all cores by
// default), 1 runs serially in the calling thread, k > 1 caps the work at k threads.
// src and dst must not overlap.
void fp32_to_bf16(const float* src, bf16* dst, int64_t n, int max_threads = 0);
void bf16_to_fp32(const bf16* src, float* dst, int64_t n, int max_threads = 0);

}  // namespace ramstream::kernels
