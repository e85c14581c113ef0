#include "checkpoint/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <new>

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include "model/hf_names.h"
#include "util/user_file.h"

namespace ramstream::checkpoint {

// Values and blocks are read in place; a big-endian host would need byte swapping.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "GGUF reader assumes little-endian");

// ---- fp16 / bf16 -----------------------------------------------------------------------------

namespace ggml {

float fp16_to_fp32(half h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);  // rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal half: normalise into a float exponent.
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    bits = sign | static_cast<uint32_t>(112 - e) << 23 | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

float bf16_to_fp32(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

}  // namespace ggml

// ---- ggml types ------------------------------------------------------------------------------

namespace {

using G = GgmlType;

// Block sizes and bytes per block as in ggml.c's type_traits (checked against gguf-py's
// GGML_QUANT_SIZES).
const GgmlTypeTraits kGgmlTypes[] = {
    {G::kF32, "f32", 1, 4, true},
    {G::kF16, "f16", 1, 2, true},
    {G::kQ4_0, "q4_0", 32, 18, true},
    {G::kQ4_1, "q4_1", 32, 20, true},
    {G::kQ5_0, "q5_0", 32, 22, true},
    {G::kQ5_1, "q5_1", 32, 24, true},
    {G::kQ8_0, "q8_0", 32, 34, true},
    {G::kQ8_1, "q8_1", 32, 36, false},
    {G::kQ2_K, "q2_K", 256, 84, true},
    {G::kQ3_K, "q3_K", 256, 110, true},
    {G::kQ4_K, "q4_K", 256, 144, true},
    {G::kQ5_K, "q5_K", 256, 176, true},
    {G::kQ6_K, "q6_K", 256, 210, true},
    {G::kQ8_K, "q8_K", 256, 292, false},
    {G::kIQ2_XXS, "iq2_xxs", 256, 66, false},
    {G::kIQ2_XS, "iq2_xs", 256, 74, false},
    {G::kIQ3_XXS, "iq3_xxs", 256, 98, false},
    {G::kIQ1_S, "iq1_s", 256, 50, false},
    {G::kIQ4_NL, "iq4_nl", 32, 18, false},
    {G::kIQ3_S, "iq3_s", 256, 110, false},
    {G::kIQ2_S, "iq2_s", 256, 82, false},
    {G::kIQ4_XS, "iq4_xs", 256, 136, false},
    {G::kI8, "i8", 1, 1, true},
    {G::kI16, "i16", 1, 2, true},
    {G::kI32, "i32", 1, 4, true},
    {G::kI64, "i64", 1, 8, true},
    {G::kF64, "f64", 1, 8, true},
    {G::kIQ1_M, "iq1_m", 256, 56, false},
    {G::kBF16, "bf16", 1, 2, true},
    {G::kTQ1_0, "tq1_0", 256, 54, false},
    {G::kTQ2_0, "tq2_0", 256, 66, false},
    {G::kMXFP4, "mxfp4", 32, 17, false},
};

template <class Block>
Block load_block(const uint8_t* p) {
  // memcpy rather than a cast: the mapping gives no alignment or type guarantee.
  Block b;
  std::memcpy(&b, p, sizeof b);
  return b;
}

template <class T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

using ggml::fp16_to_fp32;

// Each decoder turns one block at `src` into block_size floats at `y`. The arithmetic order
// follows ggml-quants.c (and gguf-py, which the tests compare against bit for bit).

void dequant_q4_0(const uint8_t* src, float* y) {
  const auto b = load_block<ggml::BlockQ4_0>(src);
  const float d = fp16_to_fp32(b.d);
  for (int j = 0; j < ggml::kQK4_0 / 2; ++j) {
    y[j] = d * static_cast<float>((b.qs[j] & 0x0f) - 8);
    y[j + ggml::kQK4_0 / 2] = d * static_cast<float>((b.qs[j] >> 4) - 8);
  }
}

void dequant_q4_1(const uint8_t* src, float* y) {
  const auto b = load_block<ggml::BlockQ4_1>(src);
  const float d = fp16_to_fp32(b.d), m = fp16_to_fp32(b.m);
  for (int j = 0; j < ggml::kQK4_1 / 2; ++j) {
    y[j] = d * static_cast<float>(b.qs[j] & 0x0f) + m;
    y[j + ggml::kQK4_1 / 2] = d * static_cast<float>(b.qs[j] >> 4) + m;
  }
}

void dequant_q5_0(const uint8_t* src, float* y) {
  const auto b = load_block<ggml::BlockQ5_0>(src);
  const float d = fp16_to_fp32(b.d);
  const uint32_t qh = load<uint32_t>(b.qh);
  for (int j = 0; j < ggml::kQK5_0 / 2; ++j) {
    const int h0 = ((qh >> j) & 1) << 4;
    const int h1 = ((qh >> (j + 16)) & 1) << 4;
    y[j] = d * static_cast<float>(((b.qs[j] & 0x0f) | h0) - 16);
    y[j + ggml::kQK5_0 / 2] = d * static_cast<float>(((b.qs[j] >> 4) | h1) - 16);
  }
}

void dequant_q5_1(const uint8_t* src, float* y) {
  const auto b = load_block<ggml::BlockQ5_1>(src);
  const float d = fp16_to_fp32(b.d), m = fp16_to_fp32(b.m);
  const uint32_t qh = load<uint32_t>(b.qh);
  for (int j = 0; j < ggml::kQK5_1 / 2; ++j) {
    const int h0 = ((qh >> j) & 1) << 4;
    const int h1 = ((qh >> (j + 16)) & 1) << 4;
    y[j] = d * static_cast<float>((b.qs[j] & 0x0f) | h0) + m;
    y[j + ggml::kQK5_1 / 2] = d * static_cast<float>((b.qs[j] >> 4) | h1) + m;
  }
}

void dequant_q8_0(const uint8_t* src, float* y) {
  const auto b = load_block<ggml::BlockQ8_0>(src);
  const float d = fp16_to_fp32(b.d);
  for (int j = 0; j < ggml::kQK8_0; ++j) y[j] = static_cast<float>(b.qs[j]) * d;
}

void dequant_q2_k(const uint8_t* src, float* y) {
  const auto b = load_block<ggml::BlockQ2_K>(src);
  const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
  // Output o = half*128 + shift*32 + l takes bits [2*shift, 2*shift+2) of qs[half*32 + l];
  // sub-block o/16 owns scales[o/16].
  for (int o = 0; o < ggml::kQK_K; ++o) {
    const int half = o / 128, shift = (o / 32) % 4, l = o % 32;
    const uint8_t sc = b.scales[o / 16];
    const float dl = d * static_cast<float>(sc & 0x0f);
    const float ml = dmin * static_cast<float>(sc >> 4);
    y[o] = dl * static_cast<float>((b.qs[half * 32 + l] >> (2 * shift)) & 3) - ml;
  }
}

void dequant_q3_k(const uint8_t* src, float* y) {
  const auto b = load_block<ggml::BlockQ3_K>(src);
  const float d = fp16_to_fp32(b.d);
  // 16 6-bit scales: low 4 bits from scales[0..8) (nibbles), high 2 bits from scales[8..12).
  float dl[16];
  for (int j = 0; j < 16; ++j) {
    const int low = j < 8 ? (b.scales[j] & 0x0f) : (b.scales[j - 8] >> 4);
    const int high = (b.scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    dl[j] = d * static_cast<float>(static_cast<int8_t>(low | (high << 4)) - 32);
  }
  for (int o = 0; o < ggml::kQK_K; ++o) {
    const int half = o / 128, shift = (o / 32) % 4, l = o % 32;
    const int ql = (b.qs[half * 32 + l] >> (2 * shift)) & 3;
    const int hbit = (b.hmask[l] >> (o / 32)) & 1;  // a set bit means no -4 offset
    y[o] = dl[o / 16] * static_cast<float>(ql - ((hbit ^ 1) << 2));
  }
}

// The 6-bit scale and min of sub-block j (0..7) of Q4_K / Q5_K (ggml's get_scale_min_k4).
void scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

void dequant_q4_k(const uint8_t* src, float* y) {
  const auto b = load_block<ggml::BlockQ4_K>(src);
  const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
  // Sub-block pairs (2c, 2c+1) share qs[32c, 32c+32): low nibbles, then high nibbles.
  for (int c = 0; c < 4; ++c) {
    for (int s = 0; s < 2; ++s) {
      uint8_t sc, m;
      scale_min_k4(2 * c + s, b.scales, &sc, &m);
      const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
      for (int l = 0; l < 32; ++l) {
        y[64 * c + 32 * s + l] = d1 * static_cast<float>((b.qs[32 * c + l] >> (4 * s)) & 0x0f) - m1;
      }
    }
  }
}

void dequant_q5_k(const uint8_t* src, float* y) {
  const auto b = load_block<ggml::BlockQ5_K>(src);
  const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
  for (int c = 0; c < 4; ++c) {
    for (int s = 0; s < 2; ++s) {
      const int j = 2 * c + s;  // sub-block; its fifth bits are bit j of qh[l]
      uint8_t sc, m;
      scale_min_k4(j, b.scales, &sc, &m);
      const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
      for (int l = 0; l < 32; ++l) {
        const int q = ((b.qs[32 * c + l] >> (4 * s)) & 0x0f) | (((b.qh[l] >> j) & 1) << 4);
        y[32 * j + l] = d1 * static_cast<float>(q) - m1;
      }
    }
  }
}

void dequant_q6_k(const uint8_t* src, float* y) {
  const auto b = load_block<ggml::BlockQ6_K>(src);
  const float d = fp16_to_fp32(b.d);
  // Two halves of 128: output h*128 + s*32 + l takes the nibble s/2 of ql[h*64 + (s%2)*32 + l]
  // and bits [2s, 2s+2) of qh[h*32 + l].
  for (int o = 0; o < ggml::kQK_K; ++o) {
    const int h = o / 128, s = (o / 32) % 4, l = o % 32;
    const int low = (b.ql[h * 64 + (s % 2) * 32 + l] >> (4 * (s / 2))) & 0x0f;
    const int high = (b.qh[h * 32 + l] >> (2 * s)) & 3;
    const int q = (low | (high << 4)) - 32;
    y[o] = d * static_cast<float>(b.scales[o / 16]) * static_cast<float>(q);
  }
}

using BlockDecoder = void (*)(const uint8_t*, float*);

BlockDecoder block_decoder(G t) {
  switch (t) {
    case G::kQ4_0:
      return dequant_q4_0;
    case G::kQ4_1:
      return dequant_q4_1;
    case G::kQ5_0:
      return dequant_q5_0;
    case G::kQ5_1:
      return dequant_q5_1;
    case G::kQ8_0:
      return dequant_q8_0;
    case G::kQ2_K:
      return dequant_q2_k;
    case G::kQ3_K:
      return dequant_q3_k;
    case G::kQ4_K:
      return dequant_q4_k;
    case G::kQ5_K:
      return dequant_q5_k;
    case G::kQ6_K:
      return dequant_q6_k;
    default:
      return nullptr;
  }
}

template <class T>
void convert_plain(const uint8_t* src, int64_t begin, int64_t end, float* dst) {
  for (int64_t k = begin; k < end; ++k) {
    dst[k] = static_cast<float>(load<T>(src + k * static_cast<int64_t>(sizeof(T))));
  }
}

}  // namespace

const GgmlTypeTraits* ggml_type_traits(uint32_t id) {
  for (const GgmlTypeTraits& t : kGgmlTypes) {
    if (static_cast<uint32_t>(t.type) == id) return &t;
  }
  return nullptr;
}

std::string ggml_type_name(uint32_t id) {
  const GgmlTypeTraits* t = ggml_type_traits(id);
  return t ? std::string(t->name) : "unknown type " + std::to_string(id);
}

Status ggml_dequantize(uint32_t id, const uint8_t* src, int64_t nblocks, float* dst) {
  const GgmlTypeTraits* traits = ggml_type_traits(id);
  if (traits == nullptr) return Error{"unknown ggml type id " + std::to_string(id)};
  if (!traits->dequantize) {
    return Error{std::string("no dequantiser for ggml type ") + traits->name + " (id " +
                 std::to_string(id) + ")"};
  }
  if (nblocks <= 0) return Ok{};
  const int64_t bs = traits->block_size, ts = traits->type_size;
  // Blocks are independent; the grain keeps tiny tensors on one thread.
  constexpr int64_t kGrainValues = 1 << 16;
  const int64_t grain = std::max<int64_t>(1, kGrainValues / bs);
  switch (traits->type) {
    case G::kF32:
      at::parallel_for(0, nblocks, grain, [&](int64_t b, int64_t e) {
        std::memcpy(dst + b, src + 4 * b, static_cast<size_t>(e - b) * 4);
      });
      return Ok{};
    case G::kF16:
      at::parallel_for(0, nblocks, grain, [&](int64_t b, int64_t e) {
        for (int64_t k = b; k < e; ++k) dst[k] = ggml::fp16_to_fp32(load<uint16_t>(src + 2 * k));
      });
      return Ok{};
    case G::kBF16:
      at::parallel_for(0, nblocks, grain, [&](int64_t b, int64_t e) {
        for (int64_t k = b; k < e; ++k) dst[k] = ggml::bf16_to_fp32(load<uint16_t>(src + 2 * k));
      });
      return Ok{};
    case G::kF64:
      at::parallel_for(0, nblocks, grain,
                       [&](int64_t b, int64_t e) { convert_plain<double>(src, b, e, dst); });
      return Ok{};
    case G::kI8:
      at::parallel_for(0, nblocks, grain,
                       [&](int64_t b, int64_t e) { convert_plain<int8_t>(src, b, e, dst); });
      return Ok{};
    case G::kI16:
      at::parallel_for(0, nblocks, grain,
                       [&](int64_t b, int64_t e) { convert_plain<int16_t>(src, b, e, dst); });
      return Ok{};
    case G::kI32:
      at::parallel_for(0, nblocks, grain,
                       [&](int64_t b, int64_t e) { convert_plain<int32_t>(src, b, e, dst); });
      return Ok{};
    case G::kI64:
      at::parallel_for(0, nblocks, grain,
                       [&](int64_t b, int64_t e) { convert_plain<int64_t>(src, b, e, dst); });
      return Ok{};
    default:
      break;
  }
  const BlockDecoder decode = block_decoder(traits->type);
  if (decode == nullptr) return Error{std::string("no dequantiser for ggml type ") + traits->name};
  at::parallel_for(0, nblocks, grain, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) decode(src + k * ts, dst + k * bs);
  });
  return Ok{};
}

// ---- metadata values -------------------------------------------------------------------------

namespace {

using VT = GgufValueType;

constexpr uint32_t kNumValueTypes = 13;

// Fills a scalar GgufValue of type `t` from its little-endian bytes.
GgufValue decode_scalar(VT t, const uint8_t* p) {
  GgufValue v;
  v.type = t;
  switch (t) {
    case VT::kUint8:
      v.u = p[0];
      break;
    case VT::kInt8:
      v.i = static_cast<int8_t>(p[0]);
      break;
    case VT::kUint16:
      v.u = load<uint16_t>(p);
      break;
    case VT::kInt16:
      v.i = load<int16_t>(p);
      break;
    case VT::kUint32:
      v.u = load<uint32_t>(p);
      break;
    case VT::kInt32:
      v.i = load<int32_t>(p);
      break;
    case VT::kUint64:
      v.u = load<uint64_t>(p);
      break;
    case VT::kInt64:
      v.i = load<int64_t>(p);
      break;
    case VT::kFloat32:
      v.f = load<float>(p);
      break;
    case VT::kFloat64:
      v.f = load<double>(p);
      break;
    case VT::kBool:
      v.u = p[0] != 0;
      break;
    default:
      break;
  }
  return v;
}

bool is_unsigned(VT t) {
  return t == VT::kUint8 || t == VT::kUint16 || t == VT::kUint32 || t == VT::kUint64;
}
bool is_signed(VT t) {
  return t == VT::kInt8 || t == VT::kInt16 || t == VT::kInt32 || t == VT::kInt64;
}

}  // namespace

uint64_t gguf_scalar_size(GgufValueType t) {
  switch (t) {
    case VT::kUint8:
    case VT::kInt8:
    case VT::kBool:
      return 1;
    case VT::kUint16:
    case VT::kInt16:
      return 2;
    case VT::kUint32:
    case VT::kInt32:
    case VT::kFloat32:
      return 4;
    case VT::kUint64:
    case VT::kInt64:
    case VT::kFloat64:
      return 8;
    default:
      return 0;
  }
}

const char* gguf_value_type_name(GgufValueType t) {
  static const char* const kNames[kNumValueTypes] = {"u8",  "i8",  "u16",  "i16",    "u32",
                                                     "i32", "f32", "bool", "string", "array",
                                                     "u64", "i64", "f64"};
  const uint32_t id = static_cast<uint32_t>(t);
  return id < kNumValueTypes ? kNames[id] : "unknown";
}

std::optional<int64_t> GgufValue::as_int() const {
  if (is_signed(type)) return i;
  if (is_unsigned(type)) {
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  return std::nullopt;
}

std::optional<double> GgufValue::as_double() const {
  if (type == VT::kFloat32 || type == VT::kFloat64) return f;
  if (is_signed(type)) return static_cast<double>(i);
  if (is_unsigned(type)) return static_cast<double>(u);
  return std::nullopt;
}

std::optional<GgufValue> GgufValue::scalar_at(uint64_t k) const {
  const uint64_t size = gguf_scalar_size(elem_type);
  if (!is_array() || size == 0 || k >= count) return std::nullopt;
  return decode_scalar(elem_type, raw.data() + k * size);
}

std::string GgufValue::describe() const {
  if (!is_array()) return gguf_value_type_name(type);
  return std::string("array[") + gguf_value_type_name(elem_type) + "; " + std::to_string(count) +
         "]";
}

// ---- tensor infos ----------------------------------------------------------------------------

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;  // checked against overflow when the file was opened
  return n;
}

std::vector<int64_t> GgufTensorInfo::torch_shape() const {
  return std::vector<int64_t>(ne.rbegin(), ne.rend());
}

// ---- the file --------------------------------------------------------------------------------

namespace {

std::string dims_str(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

// A bounds-checked reader over the file bytes. Every read names what it was reading so errors
// can say "tensor 'x': n_dims: truncated at offset 1234".
class Cursor {
 public:
  Cursor(const uint8_t* base, uint64_t size) : base_(base), size_(size) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  Status bytes(uint64_t n, const uint8_t** out, const std::string& what) {
    if (n > left()) {
      return Error{what + ": needs " + std::to_string(n) + " bytes at offset " +
                   std::to_string(pos_) + ", only " + std::to_string(left()) +
                   " left (truncated file)"};
    }
    *out = base_ + pos_;
    pos_ += n;
    return Ok{};
  }
  template <class T>
  Status read(T* v, const std::string& what) {
    const uint8_t* p = nullptr;
    Status s = bytes(sizeof(T), &p, what);
    if (s.ok()) std::memcpy(v, p, sizeof(T));
    return s;
  }
  Status string(std::string* out, const std::string& what) {
    uint64_t len = 0;
    Status s = read(&len, what + " (string length)");
    if (!s.ok()) return s;
    if (len > left()) {
      return Error{what + ": string length " + std::to_string(len) + " at offset " +
                   std::to_string(pos_ - 8) + " runs past end of file (" + std::to_string(left()) +
                   " bytes left)"};
    }
    const uint8_t* p = nullptr;
    s = bytes(len, &p, what);
    if (s.ok()) out->assign(reinterpret_cast<const char*>(p), static_cast<size_t>(len));
    return s;
  }

 private:
  const uint8_t* base_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

Status read_value(Cursor& c, VT type, int depth, GgufValue* out, const std::string& what);

Status read_value_type(Cursor& c, VT* type, const std::string& what) {
  uint32_t id = 0;
  Status s = c.read(&id, what + " (value type)");
  if (!s.ok()) return s;
  if (id >= kNumValueTypes) {
    return Error{what + ": unknown value type " + std::to_string(id) + " at offset " +
                 std::to_string(c.pos() - 4)};
  }
  *type = static_cast<VT>(id);
  return Ok{};
}

Status read_array(Cursor& c, int depth, GgufValue* out, const std::string& what) {
  if (depth >= GgufFile::kMaxArrayDepth) {
    return Error{what + ": arrays nested deeper than " + std::to_string(GgufFile::kMaxArrayDepth) +
                 " levels"};
  }
  Status s = read_value_type(c, &out->elem_type, what + " (array element type)");
  if (!s.ok()) return s;
  s = c.read(&out->count, what + " (array length)");
  if (!s.ok()) return s;
  const VT et = out->elem_type;
  // Every element takes at least this many bytes, so a count the rest of the file cannot hold
  // is refused before anything is allocated for it.
  const uint64_t min_elem = et == VT::kString ? 8 : et == VT::kArray ? 12 : gguf_scalar_size(et);
  if (out->count > c.left() / min_elem) {
    return Error{what + ": array of " + std::to_string(out->count) + " " +
                 gguf_value_type_name(et) + " elements cannot fit in the " +
                 std::to_string(c.left()) + " bytes left (corrupt length)"};
  }
  if (et == VT::kString) {
    out->strings.resize(static_cast<size_t>(out->count));
    for (uint64_t k = 0; k < out->count; ++k) {
      s = c.string(&out->strings[k], what + "[" + std::to_string(k) + "]");
      if (!s.ok()) return s;
    }
  } else if (et == VT::kArray) {
    out->arrays.resize(static_cast<size_t>(out->count));
    for (uint64_t k = 0; k < out->count; ++k) {
      out->arrays[k].type = VT::kArray;
      s = read_array(c, depth + 1, &out->arrays[k], what + "[" + std::to_string(k) + "]");
      if (!s.ok()) return s;
    }
  } else {
    const uint8_t* p = nullptr;
    s = c.bytes(out->count * min_elem, &p, what);
    if (!s.ok()) return s;
    out->raw.assign(p, p + out->count * min_elem);
  }
  return Ok{};
}

Status read_value(Cursor& c, VT type, int depth, GgufValue* out, const std::string& what) {
  out->type = type;
  if (type == VT::kString) return c.string(&out->str, what);
  if (type == VT::kArray) return read_array(c, depth, out, what);
  const uint8_t* p = nullptr;
  Status s = c.bytes(gguf_scalar_size(type), &p, what);
  if (!s.ok()) return s;
  *out = decode_scalar(type, p);
  return Ok{};
}

}  // namespace

Result<GgufFile> GgufFile::open(const std::string& path) {
  Result<std::shared_ptr<const MappedFile>> mapped = MappedFile::open(path, "a GGUF file");
  if (!mapped.ok()) return mapped.error();
  return parse(std::move(mapped).value(), path);
}

Result<GgufFile> GgufFile::open_bytes(const uint8_t* bytes, size_t size, const std::string& name) {
  return parse(MappedFile::copy_of(bytes, size), name);
}

Result<GgufFile> GgufFile::parse(std::shared_ptr<const MappedFile> storage,
                                 const std::string& path) {
  auto fail = [&](const std::string& what) -> Error { return Error{path + ": " + what}; };
  auto failed = [&](const Status& s) -> Error { return fail(s.error().message); };
  const uint64_t file_size = storage->size();
  Cursor c(storage->data(), file_size);

  const uint8_t* magic = nullptr;
  if (!c.bytes(4, &magic, "magic").ok()) {
    return fail("truncated: " + std::to_string(file_size) + " bytes, no room for the GGUF magic");
  }
  if (std::memcmp(magic, "GGUF", 4) != 0) {
    char shown[5] = {};
    for (int k = 0; k < 4; ++k) shown[k] = (magic[k] >= 32 && magic[k] < 127) ? magic[k] : '?';
    return fail(std::string("bad magic '") + shown + "', expected 'GGUF' (not a GGUF file)");
  }
  GgufFile f;
  f.path_ = path;
  Status s = c.read(&f.version_, "version");
  if (!s.ok()) return failed(s);
  if (f.version_ == 1) {
    return fail(
        "GGUF version 1 is not supported (versions 2 and 3 are; re-convert the model with "
        "a current llama.cpp)");
  }
  if (f.version_ != 2 && f.version_ != 3) {
    const uint32_t swapped = __builtin_bswap32(f.version_);
    if (swapped >= 1 && swapped <= 3) {
      return fail("big-endian GGUF (version " + std::to_string(swapped) + ") is not supported");
    }
    return fail("unsupported GGUF version " + std::to_string(f.version_) + " (2 and 3 are)");
  }
  uint64_t n_tensors = 0, n_kv = 0;
  s = c.read(&n_tensors, "tensor count");
  if (!s.ok()) return failed(s);
  s = c.read(&n_kv, "metadata kv count");
  if (!s.ok()) return failed(s);
  // Smallest possible kv: empty key (8), type (4), u8 value (1). Smallest tensor info: empty
  // name (8), n_dims (4), one dim (8), type (4), offset (8).
  if (n_kv > c.left() / 13) {
    return fail("metadata kv count " + std::to_string(n_kv) + " cannot fit in the " +
                std::to_string(file_size) + "-byte file (corrupt header)");
  }
  if (n_tensors > c.left() / 32) {
    return fail("tensor count " + std::to_string(n_tensors) + " cannot fit in the " +
                std::to_string(file_size) + "-byte file (corrupt header)");
  }

  f.keys_.reserve(static_cast<size_t>(n_kv));
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key;
    s = c.string(&key, "metadata kv " + std::to_string(k) + " key");
    if (!s.ok()) return failed(s);
    const std::string what = "key '" + key + "'";
    if (f.metadata_.count(key)) return fail(what + " appears twice");
    VT type{};
    s = read_value_type(c, &type, what);
    if (!s.ok()) return failed(s);
    GgufValue v;
    s = read_value(c, type, 0, &v, what);
    if (!s.ok()) return failed(s);
    f.keys_.push_back(key);
    f.metadata_.emplace(key, std::move(v));
  }

  if (const GgufValue* a = f.find("general.alignment")) {
    const std::optional<int64_t> n = a->as_int();
    if (a->type != VT::kUint32 || !n || *n == 0 || (*n & (*n - 1)) != 0) {
      return fail("key 'general.alignment': must be a u32 power of two, got " + a->describe() +
                  (n ? " " + std::to_string(*n) : ""));
    }
    f.alignment_ = static_cast<uint64_t>(*n);
  }

  f.infos_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo info;
    s = c.string(&info.name, "tensor info " + std::to_string(k) + " name");
    if (!s.ok()) return failed(s);
    const std::string what = "tensor '" + info.name + "'";
    if (f.index_.count(info.name)) return fail(what + " appears twice");
    uint32_t n_dims = 0;
    s = c.read(&n_dims, what + " n_dims");
    if (!s.ok()) return failed(s);
    if (n_dims < 1 || n_dims > kMaxDims) {
      return fail(what + ": n_dims " + std::to_string(n_dims) + " outside 1.." +
                  std::to_string(kMaxDims));
    }
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      int64_t ne = 0;
      s = c.read(&ne, what + " ne[" + std::to_string(d) + "]");
      if (!s.ok()) return failed(s);
      if (ne < 1) {
        return fail(what + ": ne[" + std::to_string(d) + "] = " + std::to_string(ne) +
                    " (dims must be >= 1)");
      }
      info.ne.push_back(ne);
      if (__builtin_mul_overflow(numel, ne, &numel)) {
        return fail(what + ": dims " + dims_str(info.ne) + " overflow the element count");
      }
    }
    s = c.read(&info.type_id, what + " type");
    if (!s.ok()) return failed(s);
    const GgmlTypeTraits* traits = ggml_type_traits(info.type_id);
    if (traits == nullptr) {
      return fail(what + ": unknown ggml type id " + std::to_string(info.type_id));
    }
    if (info.ne[0] % traits->block_size != 0) {
      return fail(what + ": ne[0] = " + std::to_string(info.ne[0]) + " is not a multiple of " +
                  traits->name + "'s block size " + std::to_string(traits->block_size));
    }
    // numel is a multiple of the block size because ne[0] is.
    if (__builtin_mul_overflow(static_cast<uint64_t>(numel / traits->block_size),
                               static_cast<uint64_t>(traits->type_size), &info.nbytes)) {
      return fail(what + ": dims " + dims_str(info.ne) + " overflow the byte count");
    }
    s = c.read(&info.offset, what + " offset");
    if (!s.ok()) return failed(s);
    if (info.offset % f.alignment_ != 0) {
      return fail(what + ": offset " + std::to_string(info.offset) + " is not a multiple of the " +
                  std::to_string(f.alignment_) + "-byte alignment");
    }
    f.index_.emplace(info.name, f.infos_.size());
    f.names_.push_back(info.name);
    f.infos_.push_back(std::move(info));
  }

  // The data section starts at the next multiple of the alignment (from the start of the file).
  const uint64_t pad = (f.alignment_ - c.pos() % f.alignment_) % f.alignment_;
  f.data_start_ = c.pos() + pad;  // no overflow: pos <= file size, pad < alignment <= 2^31
  const uint64_t data_size = f.data_start_ <= file_size ? file_size - f.data_start_ : 0;
  if (!f.infos_.empty() && f.data_start_ > file_size) {
    return fail("data section would start at " + std::to_string(f.data_start_) +
                ", past end of file (" + std::to_string(file_size) + " bytes): truncated");
  }
  std::vector<const GgufTensorInfo*> by_offset;
  for (const GgufTensorInfo& info : f.infos_) {
    if (info.offset > data_size || info.nbytes > data_size - info.offset) {
      return fail("tensor '" + info.name + "': bytes [" + std::to_string(info.offset) + ", " +
                  std::to_string(info.offset) + " + " + std::to_string(info.nbytes) +
                  ") run past the " + std::to_string(data_size) +
                  "-byte data section (truncated file or bad offset)");
    }
    by_offset.push_back(&info);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < by_offset.size(); ++k) {
    const GgufTensorInfo& a = *by_offset[k - 1];
    if (by_offset[k]->offset < a.offset + a.nbytes) {
      return fail("tensors '" + a.name + "' and '" + by_offset[k]->name +
                  "' overlap in the data section");
    }
  }
  f.storage_ = std::move(storage);
  return f;
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

Error GgufFile::key_error(const std::string& key, const std::string& what) const {
  return Error{path_ + ": key '" + key + "': " + what};
}

Result<std::string> GgufFile::get_string(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return key_error(key, "missing");
  if (v->type != VT::kString) return key_error(key, "expected a string, got " + v->describe());
  return v->str;
}

Result<int64_t> GgufFile::get_int(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return key_error(key, "missing");
  const std::optional<int64_t> n = v->as_int();
  if (!n) {
    return key_error(key, is_unsigned(v->type) ? "value " + std::to_string(v->u) + " too large"
                                               : "expected an integer, got " + v->describe());
  }
  return *n;
}

namespace {

// The shortest decimal that reads back as the same float: converters store config values such as
// rms_norm_eps = 1e-5 as f32, and 1e-5 (not 9.99999974737875e-06) is what was meant.
double shortest_decimal(float x) {
  if (!std::isfinite(x)) return x;
  char buf[32];
  for (int digits = 1; digits <= 9; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, static_cast<double>(x));
    const double d = std::strtod(buf, nullptr);
    if (static_cast<float>(d) == x) return d;
  }
  return x;
}

}  // namespace

Result<double> GgufFile::get_float(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return key_error(key, "missing");
  const std::optional<double> x = v->as_double();
  if (!x) return key_error(key, "expected a number, got " + v->describe());
  if (v->type == VT::kFloat32) return shortest_decimal(static_cast<float>(*x));
  return *x;
}

Result<bool> GgufFile::get_bool(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return key_error(key, "missing");
  if (v->type != VT::kBool) return key_error(key, "expected a bool, got " + v->describe());
  return v->u != 0;
}

Result<std::vector<std::string>> GgufFile::get_string_array(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return key_error(key, "missing");
  if (!v->is_array() || v->elem_type != VT::kString) {
    return key_error(key, "expected an array of strings, got " + v->describe());
  }
  return v->strings;
}

Result<std::vector<int64_t>> GgufFile::get_int_array(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return key_error(key, "missing");
  if (!v->is_array() || !(is_signed(v->elem_type) || is_unsigned(v->elem_type))) {
    return key_error(key, "expected an array of integers, got " + v->describe());
  }
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(v->count));
  for (uint64_t k = 0; k < v->count; ++k) {
    const std::optional<int64_t> n = v->scalar_at(k)->as_int();
    if (!n) return key_error(key, "element " + std::to_string(k) + " does not fit int64");
    out.push_back(*n);
  }
  return out;
}

Result<std::vector<double>> GgufFile::get_float_array(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return key_error(key, "missing");
  if (!v->is_array() || gguf_scalar_size(v->elem_type) == 0 || v->elem_type == VT::kBool) {
    return key_error(key, "expected an array of numbers, got " + v->describe());
  }
  std::vector<double> out;
  out.reserve(static_cast<size_t>(v->count));
  for (uint64_t k = 0; k < v->count; ++k) out.push_back(*v->scalar_at(k)->as_double());
  return out;
}

Result<const GgufTensorInfo*> GgufFile::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) return Error{path_ + ": no tensor '" + name + "'"};
  return &infos_[it->second];
}

const uint8_t* GgufFile::data(const GgufTensorInfo& info) const {
  return storage_->data() + data_start_ + info.offset;
}

Result<at::Tensor> GgufFile::dequantize(const std::string& name) const {
  Result<const GgufTensorInfo*> r = info(name);
  if (!r.ok()) return r.error();
  const GgufTensorInfo& in = *r.value();
  const GgmlTypeTraits& traits = *ggml_type_traits(in.type_id);  // known: checked on open
  if (!traits.dequantize) {
    return Error{path_ + ": tensor '" + name + "': no dequantiser for ggml type " + traits.name +
                 " (id " + std::to_string(in.type_id) + ")"};
  }
  at::Tensor out;
  try {
    out = at::empty(in.torch_shape(), at::kFloat);
  } catch (const std::exception& e) {
    return Error{path_ + ": tensor '" + name + "': cannot allocate " + dims_str(in.torch_shape()) +
                 " floats: " + e.what()};
  }
  const int64_t nblocks = static_cast<int64_t>(in.nbytes / static_cast<uint64_t>(traits.type_size));
  Status s = ggml_dequantize(in.type_id, data(in), nblocks, out.data_ptr<float>());
  if (!s.ok()) return Error{path_ + ": tensor '" + name + "': " + s.error().message};
  return out;
}

// ---- model import ----------------------------------------------------------------------------

namespace {

// Per-layer llama.cpp suffixes -> Hugging Face suffixes (llama.cpp's tensor_mapping.py, LLAMA).
const std::pair<const char*, const char*> kLayerNames[] = {
    {"attn_norm.weight", "input_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_q.bias", "self_attn.q_proj.bias"},
    {"attn_k.weight", "self_attn.k_proj.weight"},
    {"attn_k.bias", "self_attn.k_proj.bias"},
    {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_v.bias", "self_attn.v_proj.bias"},
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"attn_output.bias", "self_attn.o_proj.bias"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},
    {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
};
const std::pair<const char*, const char*> kGlobalNames[] = {
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"},
};

constexpr size_t kMaxListed = 8;

struct ProblemList {
  const char* title;
  std::vector<std::string> items;
  void append_to(std::string* msg) const {
    if (items.empty()) return;
    *msg += "\n  " + std::to_string(items.size()) + " " + title + ":";
    for (size_t k = 0; k < items.size() && k < kMaxListed; ++k) *msg += "\n    " + items[k];
    if (items.size() > kMaxListed) {
      *msg += "\n    ... and " + std::to_string(items.size() - kMaxListed) + " more";
    }
  }
};

std::string shape_str(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t k = 0; k < shape.size(); ++k) s += (k ? ", " : "") + std::to_string(shape[k]);
  return s + "]";
}

// Rows [n_head, a, b, ...] -> [n_head, b, a, ...]: both directions of llama.cpp's Q/K row order.
at::Tensor swap_rope_row_halves(const at::Tensor& w, int64_t n_head, int64_t a) {
  const int64_t rows = w.size(0);
  std::vector<int64_t> shape = {n_head, a, rows / n_head / a};
  for (int64_t d = 1; d < w.dim(); ++d) shape.push_back(w.size(d));
  return w.reshape(shape).transpose(1, 2).reshape(w.sizes());
}

}  // namespace

at::Tensor gguf_permute_rope_rows(const at::Tensor& w, int64_t n_head) {
  return swap_rope_row_halves(w, n_head, 2);
}

at::Tensor gguf_unpermute_rope_rows(const at::Tensor& w, int64_t n_head) {
  return swap_rope_row_halves(w, n_head, w.size(0) / n_head / 2);
}

bool gguf_arch_permutes_rope_rows(const std::string& arch) {
  return arch == "llama";
}

std::string gguf_arch_of(const model::ModelConfig& cfg) {
  if (cfg.model_type == "llama" || cfg.model_type == "mistral") return "llama";
  if (cfg.model_type == "qwen2") return "qwen2";
  return "";
}

std::string hf_name_to_gguf(const std::string& hf) {
  for (const auto& [g, h] : kGlobalNames) {
    if (hf == h) return g;
  }
  static const std::string kLayers = "model.layers.";
  if (hf.compare(0, kLayers.size(), kLayers) != 0) return "";
  const size_t dot = hf.find('.', kLayers.size());
  if (dot == std::string::npos) return "";
  const std::string layer = hf.substr(kLayers.size(), dot - kLayers.size());
  const std::string rest = hf.substr(dot + 1);
  for (const auto& [g, h] : kLayerNames) {
    if (rest == h) {
      const std::string name = "blk." + layer + "." + g;
      return gguf_name_to_hf(name) == hf ? name : "";  // checks the layer digits
    }
  }
  return "";
}

std::string gguf_name_to_hf(const std::string& name) {
  for (const auto& [g, hf] : kGlobalNames) {
    if (name == g) return hf;
  }
  static const std::string kBlk = "blk.";
  if (name.compare(0, kBlk.size(), kBlk) != 0) return "";
  size_t k = kBlk.size();
  const size_t digits_begin = k;
  while (k < name.size() && name[k] >= '0' && name[k] <= '9') ++k;
  const size_t n_digits = k - digits_begin;
  // No leading zeros ("blk.01" must not alias "blk.1"); hf_param_view checks the range.
  if (n_digits == 0 || n_digits > 9 || (n_digits > 1 && name[digits_begin] == '0')) return "";
  if (k >= name.size() || name[k] != '.') return "";
  const std::string rest = name.substr(k + 1);
  for (const auto& [g, hf] : kLayerNames) {
    if (rest == g) return "model.layers." + name.substr(digits_begin, n_digits) + "." + hf;
  }
  return "";
}

Result<model::ModelConfig> gguf_model_config(const GgufFile& f) {
  auto fail = [&](const std::string& what) -> Error { return Error{f.path() + ": " + what}; };
  Result<std::string> arch = f.get_string("general.architecture");
  if (!arch.ok()) return arch.error();
  if (arch.value() != "llama" && arch.value() != "qwen2") {
    return fail("key 'general.architecture': " + quote_bounded(arch.value()) +
                " is not supported (llama and qwen2 models import from GGUF)");
  }
  const std::string p = arch.value() + ".";
  model::ModelConfig cfg;
  cfg.model_type = arch.value();

  auto req_int = [&](const std::string& key, int64_t* out) -> Status {
    Result<int64_t> r = f.get_int(p + key);
    if (!r.ok()) return r.error();
    *out = r.value();
    return Ok{};
  };
  for (auto [key, dst] : {std::pair<const char*, int64_t*>{"block_count", &cfg.num_layers},
                          {"context_length", &cfg.max_position_embeddings},
                          {"embedding_length", &cfg.hidden_size},
                          {"feed_forward_length", &cfg.intermediate_size},
                          {"attention.head_count", &cfg.num_heads}}) {
    Status s = req_int(key, dst);
    if (!s.ok()) return s.error();
  }
  cfg.num_kv_heads = cfg.num_heads;  // llama.cpp's default when head_count_kv is absent
  if (f.find(p + "attention.head_count_kv")) {
    Status s = req_int("attention.head_count_kv", &cfg.num_kv_heads);
    if (!s.ok()) return s.error();
  }
  if (cfg.num_heads <= 0) return fail("key '" + p + "attention.head_count': must be positive");
  cfg.head_dim = cfg.hidden_size / cfg.num_heads;
  if (f.find(p + "attention.key_length")) {
    Status s = req_int("attention.key_length", &cfg.head_dim);
    if (!s.ok()) return s.error();
    if (const GgufValue* vl = f.find(p + "attention.value_length")) {
      if (vl->as_int() != std::optional<int64_t>(cfg.head_dim)) {
        return fail("key '" + p + "attention.value_length': differs from key_length " +
                    std::to_string(cfg.head_dim) + " (not supported)");
      }
    }
  }
  {
    Result<double> eps = f.get_float(p + "attention.layer_norm_rms_epsilon");
    if (!eps.ok()) return eps.error();
    cfg.rms_norm_eps = eps.value();
  }
  if (f.find(p + "rope.freq_base")) {
    Result<double> theta = f.get_float(p + "rope.freq_base");
    if (!theta.ok()) return theta.error();
    cfg.rope_theta = theta.value();
  }
  if (f.find(p + "rope.dimension_count")) {
    Result<int64_t> rot = f.get_int(p + "rope.dimension_count");
    if (!rot.ok()) return rot.error();
    if (rot.value() != cfg.head_dim) {
      return fail("key '" + p + "rope.dimension_count': " + std::to_string(rot.value()) +
                  " rotary dims with head_dim " + std::to_string(cfg.head_dim) +
                  " (partial rotary is not supported)");
    }
  }
  if (f.contains("rope_freqs.weight")) {
    return fail(
        "tensor 'rope_freqs.weight': per-frequency RoPE factors (Llama 3.1-style scaling "
        "baked by llama.cpp) are not supported yet");
  }
  if (f.find(p + "rope.scaling.type")) {
    Result<std::string> type = f.get_string(p + "rope.scaling.type");
    if (!type.ok()) return type.error();
    if (type.value() == "linear") {
      Result<double> factor = f.get_float(p + "rope.scaling.factor");
      if (!factor.ok()) return factor.error();
      cfg.rope_scaling.type = model::RopeScalingType::kLinear;
      cfg.rope_scaling.factor = factor.value();
    } else if (type.value() != "none") {
      return fail("key '" + p + "rope.scaling.type': '" + type.value() +
                  "' is not supported (none, linear)");
    }
  } else if (f.find(p + "rope.scale_linear")) {  // older converters
    Result<double> factor = f.get_float(p + "rope.scale_linear");
    if (!factor.ok()) return factor.error();
    if (factor.value() != 1.0) {
      cfg.rope_scaling.type = model::RopeScalingType::kLinear;
      cfg.rope_scaling.factor = factor.value();
    }
  }

  // The vocabulary size: the tokenizer's length, else llama.vocab_size, else the embedding rows
  // (a file without tokenizer metadata); the tensor shapes are checked against it below.
  const GgufValue* tokens = f.find("tokenizer.ggml.tokens");
  if (tokens != nullptr) {
    if (!tokens->is_array()) {
      return fail("key 'tokenizer.ggml.tokens': expected an array, got " + tokens->describe());
    }
    if (tokens->count > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return fail("key 'tokenizer.ggml.tokens': absurd length");
    }
    cfg.vocab_size = static_cast<int64_t>(tokens->count);
  }
  if (f.find(p + "vocab_size")) {
    Result<int64_t> v = f.get_int(p + "vocab_size");
    if (!v.ok()) return v.error();
    if (tokens != nullptr && v.value() != cfg.vocab_size) {
      return fail("key '" + p + "vocab_size': " + std::to_string(v.value()) + " but " +
                  "tokenizer.ggml.tokens has " + std::to_string(cfg.vocab_size) + " tokens");
    }
    cfg.vocab_size = v.value();
  } else if (tokens == nullptr) {
    Result<const GgufTensorInfo*> embd = f.info("token_embd.weight");
    if (!embd.ok()) {
      return fail("no key 'tokenizer.ggml.tokens' or '" + p +
                  "vocab_size' and no tensor 'token_embd.weight': the vocabulary size is unknown");
    }
    cfg.vocab_size = embd.value()->ne.back();
  }
  cfg.tie_word_embeddings = !f.contains("output.weight");
  cfg.qkv_bias = f.contains("blk.0.attn_q.bias");
  cfg.o_bias = f.contains("blk.0.attn_output.bias");
  if (cfg.model_type == "qwen2" && (!cfg.qkv_bias || cfg.o_bias)) {
    return fail(std::string("a qwen2 model has q/k/v biases and no output-projection bias, but ") +
                (cfg.qkv_bias ? "tensor 'blk.0.attn_output.bias' exists"
                              : "there is no tensor 'blk.0.attn_q.bias'"));
  }
  Status valid = model::validate_model_config(cfg, f.path());
  if (!valid.ok()) return valid.error();

  // Cross-check the sizes against the tensors, so a hostile header cannot make the caller
  // allocate a model far larger than the file (allocate_model_params trusts the config).
  const uint64_t n_tensors = f.tensor_names().size();
  if (static_cast<uint64_t>(cfg.num_layers) > n_tensors) {
    return fail("key '" + p + "block_count': " + std::to_string(cfg.num_layers) +
                " layers, but the file holds only " + std::to_string(n_tensors) + " tensors");
  }
  auto expect_ne = [&](const std::string& name, std::vector<int64_t> ne) -> Status {
    Result<const GgufTensorInfo*> info = f.info(name);
    if (!info.ok()) return Error{info.error().message + " (the metadata implies it)"};
    if (info.value()->ne != ne) {
      return Error{f.path() + ": tensor '" + name + "': ggml ne " + shape_str(info.value()->ne) +
                   ", the metadata implies " + shape_str(ne)};
    }
    return Ok{};
  };
  for (const auto& [name, ne] :
       {std::pair<std::string, std::vector<int64_t>>{"token_embd.weight",
                                                     {cfg.hidden_size, cfg.vocab_size}},
        {"blk.0.attn_q.weight", {cfg.hidden_size, cfg.q_dim()}},
        {"blk.0.attn_k.weight", {cfg.hidden_size, cfg.kv_dim()}},
        {"blk.0.ffn_up.weight", {cfg.hidden_size, cfg.intermediate_size}}}) {
    Status s = expect_ne(name, ne);
    if (!s.ok()) return s.error();
  }
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    Status s = expect_ne("blk." + std::to_string(l) + ".attn_norm.weight", {cfg.hidden_size});
    if (!s.ok()) return s.error();
  }
  return cfg;
}

Status gguf_load_weights(const GgufFile& f, const model::ModelConfig& cfg,
                         model::ModelParams& params) {
  // Plan and check everything before writing, so a bad file leaves params untouched.
  struct Copy {
    std::string name;
    at::Tensor dst;
    int64_t unpermute_heads = 0;  // q/k: heads to un-permute over; 0 for the rest
  };
  std::vector<Copy> copies;
  std::map<std::string, std::string> found;  // HF name -> GGUF name
  ProblemList unexpected{"unexpected tensors", {}};
  ProblemList mismatched{"shape/type problems", {}};
  for (const std::string& name : f.tensor_names()) {
    const GgufTensorInfo& info = *f.info(name).value();
    const std::string hf = gguf_name_to_hf(name);
    if (hf.empty()) {
      unexpected.items.push_back("'" + name + "' (no llama.cpp -> Hugging Face name)");
      continue;
    }
    Result<at::Tensor> view = model::hf_param_view(params, cfg, hf);
    if (!view.ok()) {
      unexpected.items.push_back("'" + name + "' -> " + view.error().message);
      continue;
    }
    found.emplace(hf, name);
    const GgmlTypeTraits& traits = *ggml_type_traits(info.type_id);
    if (!traits.dequantize) {
      mismatched.items.push_back("'" + name + "': no dequantiser for ggml type " + traits.name);
    } else if (view.value().sizes() != at::IntArrayRef(info.torch_shape())) {
      mismatched.items.push_back("'" + name + "': file has " + shape_str(info.torch_shape()) +
                                 " (ggml ne " + shape_str(info.ne) + "), model expects " +
                                 shape_str(view.value().sizes()));
    } else {
      int64_t heads = 0;
      const model::RowPart part = model::resolve_hf_name(cfg, hf).value().row->part;
      if (gguf_arch_permutes_rope_rows(gguf_arch_of(cfg))) {
        if (part == model::RowPart::kQ) heads = cfg.num_heads;
        if (part == model::RowPart::kK) heads = cfg.num_kv_heads;
      }
      copies.push_back({name, view.value(), heads});
    }
  }
  ProblemList missing{"missing tensors", {}};
  for (const std::string& hf : model::hf_param_names(cfg)) {
    if (!found.count(hf)) missing.items.push_back("'" + hf + "'");
  }
  if (!unexpected.items.empty() || !mismatched.items.empty() || !missing.items.empty()) {
    std::string msg = f.path() + ": GGUF tensors do not match the model";
    missing.append_to(&msg);
    unexpected.append_to(&msg);
    mismatched.append_to(&msg);
    return Error{msg};
  }
  at::NoGradGuard no_grad;
  for (Copy& c : copies) {
    Result<at::Tensor> t = f.dequantize(c.name);
    if (!t.ok()) return t.error();
    c.dst.copy_(c.unpermute_heads ? gguf_unpermute_rope_rows(t.value(), c.unpermute_heads)
                                  : t.value());
  }
  return Ok{};
}

bool gguf_has_tokenizer(const GgufFile& f) {
  static const std::string kPrefix = "tokenizer.";
  for (const std::string& key : f.keys()) {
    if (key.compare(0, kPrefix.size(), kPrefix) == 0) return true;
  }
  return false;
}

Result<GgufTokenizer> gguf_tokenizer(const GgufFile& f) {
  auto fail = [&](const std::string& key, const std::string& what) -> Error {
    return Error{f.path() + ": key '" + key + "': " + what};
  };
  GgufTokenizer t;
  {
    Result<std::string> m = f.get_string("tokenizer.ggml.model");
    if (!m.ok()) return m.error();
    t.model = m.value();
  }
  if (f.find("tokenizer.ggml.pre")) {
    Result<std::string> pre = f.get_string("tokenizer.ggml.pre");
    if (!pre.ok()) return pre.error();
    t.pre = pre.value();
  }
  {
    Result<std::vector<std::string>> tokens = f.get_string_array("tokenizer.ggml.tokens");
    if (!tokens.ok()) return tokens.error();
    t.tokens = std::move(tokens).value();
  }
  const int64_t n = static_cast<int64_t>(t.tokens.size());
  if (f.find("tokenizer.ggml.token_type")) {
    Result<std::vector<int64_t>> types = f.get_int_array("tokenizer.ggml.token_type");
    if (!types.ok()) return types.error();
    if (static_cast<int64_t>(types.value().size()) != n) {
      return fail("tokenizer.ggml.token_type", std::to_string(types.value().size()) +
                                                   " entries for " + std::to_string(n) + " tokens");
    }
    for (size_t k = 0; k < types.value().size(); ++k) {
      const int64_t v = types.value()[k];
      if (v < 0 || v > kGgufTokenTypeMax) {
        return fail("tokenizer.ggml.token_type", "value " + std::to_string(v) + " at index " +
                                                     std::to_string(k) +
                                                     " is not a llama.cpp token type (0.." +
                                                     std::to_string(kGgufTokenTypeMax) + ")");
      }
      t.token_type.push_back(static_cast<int32_t>(v));
    }
  }
  if (f.find("tokenizer.ggml.scores")) {
    Result<std::vector<double>> scores = f.get_float_array("tokenizer.ggml.scores");
    if (!scores.ok()) return scores.error();
    if (static_cast<int64_t>(scores.value().size()) != n) {
      return fail("tokenizer.ggml.scores", std::to_string(scores.value().size()) + " entries for " +
                                               std::to_string(n) + " tokens");
    }
    t.scores.assign(scores.value().begin(), scores.value().end());
  }
  if (f.find("tokenizer.ggml.merges")) {
    Result<std::vector<std::string>> merges = f.get_string_array("tokenizer.ggml.merges");
    if (!merges.ok()) return merges.error();
    t.merges = std::move(merges).value();
  }
  for (auto [key, dst] :
       {std::pair<const char*, int64_t*>{"tokenizer.ggml.bos_token_id", &t.bos_id},
        {"tokenizer.ggml.eos_token_id", &t.eos_id},
        {"tokenizer.ggml.padding_token_id", &t.pad_id},
        {"tokenizer.ggml.unknown_token_id", &t.unk_id}}) {
    if (!f.find(key)) continue;
    Result<int64_t> id = f.get_int(key);
    if (!id.ok()) return id.error();
    if (id.value() < 0 || id.value() >= n) {
      return fail(key, "token id " + std::to_string(id.value()) + " outside the " +
                           std::to_string(n) + "-token vocabulary");
    }
    *dst = id.value();
  }
  for (auto [key, dst] :
       {std::pair<const char*, std::optional<bool>*>{"tokenizer.ggml.add_bos_token", &t.add_bos},
        {"tokenizer.ggml.add_eos_token", &t.add_eos}}) {
    if (!f.find(key)) continue;
    Result<bool> b = f.get_bool(key);
    if (!b.ok()) return b.error();
    *dst = b.value();
  }
  if (f.find("tokenizer.chat_template")) {
    Result<std::string> tmpl = f.get_string("tokenizer.chat_template");
    if (!tmpl.ok()) return tmpl.error();
    t.chat_template = tmpl.value();
  }
  return t;
}

}  // namespace ramstream::checkpoint
