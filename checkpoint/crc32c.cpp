#include "checkpoint/crc32c.h"

#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#define RAMSTREAM_CRC32C_SSE42 1
#endif

namespace ramstream::checkpoint {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // reflected Castagnoli polynomial

// Multiplication by x modulo the polynomial, in the reflected bit order (bit 31 is x^0).
constexpr uint32_t times_x(uint32_t b) {
  return (b & 1) ? (b >> 1) ^ kPoly : b >> 1;
}

// a * b modulo the polynomial (reflected).
uint32_t multiply_mod(uint32_t a, uint32_t b) {
  uint32_t product = 0;
  for (int i = 0; i < 32; ++i) {
    if (a & (0x80000000u >> i)) product ^= b;
    b = times_x(b);
  }
  return product;
}

// Running the CRC register over n zero bytes multiplies it by x^(8n). A table per register byte
// applies that multiplication in four lookups: this is how the interleaved streams are joined.
struct ShiftTable {
  uint32_t t[4][256];
  explicit ShiftTable(size_t bytes) {
    uint32_t op = 0x80000000u;  // x^0
    for (size_t i = 0; i < 8 * bytes; ++i) op = times_x(op);
    for (int k = 0; k < 4; ++k) {
      for (uint32_t i = 0; i < 256; ++i) t[k][i] = multiply_mod(op, i << (8 * k));
    }
  }
  uint32_t shift(uint32_t crc) const {
    return t[0][crc & 0xff] ^ t[1][(crc >> 8) & 0xff] ^ t[2][(crc >> 16) & 0xff] ^ t[3][crc >> 24];
  }
};

struct SliceTables {
  uint32_t t[8][256];
  SliceTables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = times_x(c);
      t[0][i] = c;
    }
    for (int k = 1; k < 8; ++k) {
      for (uint32_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xff];
    }
  }
};

const SliceTables& slice_tables() {
  static const SliceTables tables;
  return tables;
}

uint64_t load_u64(const uint8_t* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  return w;  // little-endian hosts only (as the safetensors writer)
}

uint32_t crc32c_tables(const uint8_t* p, size_t n, uint32_t crc) {
  const SliceTables& s = slice_tables();
  uint32_t c = ~crc;
  for (; n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0; --n) {
    c = (c >> 8) ^ s.t[0][(c ^ *p++) & 0xff];
  }
  for (; n >= 8; n -= 8, p += 8) {
    const uint64_t w = load_u64(p) ^ c;
    c = s.t[7][w & 0xff] ^ s.t[6][(w >> 8) & 0xff] ^ s.t[5][(w >> 16) & 0xff] ^
        s.t[4][(w >> 24) & 0xff] ^ s.t[3][(w >> 32) & 0xff] ^ s.t[2][(w >> 40) & 0xff] ^
        s.t[1][(w >> 48) & 0xff] ^ s.t[0][w >> 56];
  }
  for (; n > 0; --n) c = (c >> 8) ^ s.t[0][(c ^ *p++) & 0xff];
  return ~c;
}

#if RAMSTREAM_CRC32C_SSE42

// Block sizes of the three interleaved streams: long blocks for bulk data, short ones for the
// remainder. The crc32 instruction has a latency of 3 cycles and a throughput of 1 per cycle.
constexpr size_t kLongBlock = 8192;
constexpr size_t kShortBlock = 256;

const ShiftTable& long_shift() {
  static const ShiftTable t(kLongBlock);
  return t;
}
const ShiftTable& short_shift() {
  static const ShiftTable t(kShortBlock);
  return t;
}

__attribute__((target("sse4.2"))) uint64_t three_streams(const uint8_t*& p, size_t& n, uint64_t c,
                                                         size_t block, const ShiftTable& table) {
  while (n >= 3 * block) {
    uint64_t c0 = c, c1 = 0, c2 = 0;
    for (const uint8_t* end = p + block; p < end; p += 8) {
      c0 = _mm_crc32_u64(c0, load_u64(p));
      c1 = _mm_crc32_u64(c1, load_u64(p + block));
      c2 = _mm_crc32_u64(c2, load_u64(p + 2 * block));
    }
    c = table.shift(static_cast<uint32_t>(c0)) ^ static_cast<uint32_t>(c1);
    c = table.shift(static_cast<uint32_t>(c)) ^ static_cast<uint32_t>(c2);
    p += 2 * block;
    n -= 3 * block;
  }
  return c;
}

__attribute__((target("sse4.2"))) uint32_t crc32c_sse42(const uint8_t* p, size_t n, uint32_t crc) {
  uint64_t c = static_cast<uint32_t>(~crc);
  for (; n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0; --n) {
    c = _mm_crc32_u8(static_cast<uint32_t>(c), *p++);
  }
  c = three_streams(p, n, c, kLongBlock, long_shift());
  c = three_streams(p, n, c, kShortBlock, short_shift());
  for (; n >= 8; n -= 8, p += 8) c = _mm_crc32_u64(c, load_u64(p));
  for (; n > 0; --n) c = _mm_crc32_u8(static_cast<uint32_t>(c), *p++);
  return ~static_cast<uint32_t>(c);
}

bool detect_sse42() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2");
}

#endif

}  // namespace

bool crc32c_hardware() {
#if RAMSTREAM_CRC32C_SSE42
  static const bool has = detect_sse42();
  return has;
#else
  return false;
#endif
}

uint32_t crc32c_portable(const void* data, size_t bytes, uint32_t crc) {
  return crc32c_tables(static_cast<const uint8_t*>(data), bytes, crc);
}

uint32_t crc32c(const void* data, size_t bytes, uint32_t crc) {
#if RAMSTREAM_CRC32C_SSE42
  if (crc32c_hardware()) return crc32c_sse42(static_cast<const uint8_t*>(data), bytes, crc);
#endif
  return crc32c_tables(static_cast<const uint8_t*>(data), bytes, crc);
}

}  // namespace ramstream::checkpoint
