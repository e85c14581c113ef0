// Private helpers shared by dataset.cpp and dataset_cache.cpp: hashing, the seeded PRNG and the
// binary cache of a tokenised Dataset. Not part of the public interface.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "data/dataset.h"
#include "util/result.h"

namespace ramstream::data::internal {

// splitmix64's output function: a bijective 64-bit mix.
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// A seed for one independent stream (`stream` names what it is used for) of a user seed.
inline uint64_t derive_seed(uint64_t seed, uint64_t stream) {
  return mix64(seed ^ mix64(stream));
}

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    state_ += 0x9e3779b97f4a7c15ULL;
    uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, bound) by Lemire's multiply-shift (bias < bound / 2^64, irrelevant here).
  uint64_t below(uint64_t bound) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * bound) >> 64);
  }

 private:
  uint64_t state_;
};

// Non-cryptographic 64-bit hash of bytes (word at a time); different seeds give unrelated hashes.
uint64_t hash_bytes(const void* data, size_t size, uint64_t seed);
std::string hex64(uint64_t value);

// The cache file: magic, key text, payload, and a hash of everything before it.
// read_cache: Ok(true) and `out` filled on a hit; Ok(false) when the file is absent, belongs to
// another key or was written by an older version of the format (rebuilt without a warning);
// Error when it exists but is corrupt (caller warns and rebuilds).
Result<bool> read_cache(const std::string& path, const std::string& key, Dataset* out);
Status write_cache(const std::string& path, const std::string& key, const Dataset& dataset);

}  // namespace ramstream::data::internal
