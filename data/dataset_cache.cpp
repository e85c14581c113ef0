// The tokenised dataset cache file (native little-endian; the magic names the version):
//   "RSDSET02"  u64 key length, key bytes
//   i64 num_examples, num_skipped, num_truncated, train_tokens, trained_tokens
//   rows: train then val: u64 count, u64 seq_len, then per row seq_len i32 ids, seq_len i32
//     labels, seq_len i32 positions
//   val_examples: u64 count, then per example i64 line, str text, u64 messages, (str role,
//     str content) each; warnings: u64 count, str each       (str = u64 length + bytes)
//   u64 hash_bytes(everything above, seed 3)
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <type_traits>

#include "checkpoint/atomic_file.h"
#include "data/dataset_internal.h"

namespace ramstream::data::internal {
namespace {

constexpr char kMagic[8] = {'R', 'S', 'D', 'S', 'E', 'T', '0', '2'};
// Files of an older version hold what this one cannot use (version 01 had no positions): they are
// rebuilt like a cache miss, not reported as corrupt.
constexpr size_t kVersionBytes = 2;
constexpr uint64_t kChecksumSeed = 3;

class Writer {
 public:
  template <class T>
  void pod(T v) {
    static_assert(std::is_trivially_copyable_v<T>);
    out_.append(reinterpret_cast<const char*>(&v), sizeof(v));
  }
  void str(const std::string& s) {
    pod<uint64_t>(s.size());
    out_ += s;
  }
  void raw(const void* p, size_t n) { out_.append(static_cast<const char*>(p), n); }
  std::string& bytes() { return out_; }

 private:
  std::string out_;
};

// Bounds-checked reads; any failure leaves ok() false and the caller reports the file corrupt.
class Reader {
 public:
  Reader(const char* p, size_t n) : p_(p), n_(n) {}
  template <class T>
  T pod() {
    T v{};
    if (!take(sizeof(T))) return v;
    std::memcpy(&v, p_ + at_ - sizeof(T), sizeof(T));
    return v;
  }
  std::string str() {
    const uint64_t len = pod<uint64_t>();
    if (!take(len)) return {};
    return std::string(p_ + at_ - len, len);
  }
  bool raw(void* dst, uint64_t bytes) {
    if (!take(bytes)) return false;
    std::memcpy(dst, p_ + at_ - bytes, bytes);
    return true;
  }
  // A count whose items take at least `min_item_bytes` each: refuse counts the rest cannot hold.
  uint64_t count(uint64_t min_item_bytes) {
    const uint64_t c = pod<uint64_t>();
    if (ok_ && min_item_bytes > 0 && c > (n_ - at_) / min_item_bytes) ok_ = false;
    return ok_ ? c : 0;
  }
  bool ok() const { return ok_; }
  bool at_end() const { return at_ == n_; }

 private:
  bool take(uint64_t bytes) {
    if (!ok_ || bytes > n_ - at_) {
      ok_ = false;
      return false;
    }
    at_ += bytes;
    return true;
  }
  const char* p_;
  size_t n_;
  size_t at_ = 0;
  bool ok_ = true;
};

void write_rows(Writer& w, const std::vector<TokenRow>& rows) {
  w.pod<uint64_t>(rows.size());
  w.pod<uint64_t>(rows.empty() ? 0 : rows[0].ids.size());
  for (const TokenRow& r : rows) {
    w.raw(r.ids.data(), r.ids.size() * sizeof(int32_t));
    w.raw(r.labels.data(), r.labels.size() * sizeof(int32_t));
    if (r.positions.size() == r.ids.size()) {
      w.raw(r.positions.data(), r.positions.size() * sizeof(int32_t));
    } else {  // none: one document, 0..n-1
      for (size_t k = 0; k < r.ids.size(); ++k) w.pod<int32_t>(static_cast<int32_t>(k));
    }
  }
}

// Each position is 0 or the one before plus 1 (dataset.h); anything else is corruption.
bool valid_positions(const std::vector<int32_t>& positions) {
  for (size_t k = 0; k < positions.size(); ++k) {
    const int32_t p = positions[k];
    if (p != 0 && (k == 0 || p != positions[k - 1] + 1)) return false;
  }
  return true;
}

bool read_rows(Reader& r, std::vector<TokenRow>* rows) {
  const uint64_t count = r.pod<uint64_t>();
  const uint64_t seq_len = r.pod<uint64_t>();
  if (!r.ok() || (count > 0 && seq_len == 0)) return false;
  if (seq_len > std::numeric_limits<uint32_t>::max()) return false;
  const uint64_t row_bytes = 3 * seq_len * sizeof(int32_t);
  if (count > 0 && count > std::numeric_limits<uint64_t>::max() / row_bytes) return false;
  rows->resize(0);
  for (uint64_t k = 0; k < count; ++k) {
    TokenRow row;
    row.ids.resize(seq_len);
    row.labels.resize(seq_len);
    row.positions.resize(seq_len);
    if (!r.raw(row.ids.data(), seq_len * sizeof(int32_t)) ||
        !r.raw(row.labels.data(), seq_len * sizeof(int32_t)) ||
        !r.raw(row.positions.data(), seq_len * sizeof(int32_t)) ||
        !valid_positions(row.positions)) {
      return false;
    }
    rows->push_back(std::move(row));
  }
  return true;
}

}  // namespace

uint64_t hash_bytes(const void* data, size_t size, uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = mix64(seed ^ (size * 0x9e3779b97f4a7c15ULL));
  size_t k = 0;
  for (; k + 8 <= size; k += 8) {
    uint64_t w;
    std::memcpy(&w, p + k, 8);
    h = (h ^ mix64(w)) * 0xff51afd7ed558ccdULL;
    h = (h << 29) | (h >> 35);
  }
  uint64_t tail = 0;
  for (size_t t = 0; k + t < size; ++t) tail |= static_cast<uint64_t>(p[k + t]) << (8 * t);
  return mix64(h ^ mix64(tail ^ 0xa5a5a5a5a5a5a5a5ULL));
}

std::string hex64(uint64_t value) {
  static const char kDigits[] = "0123456789abcdef";
  std::string s(16, '0');
  for (int k = 15; k >= 0; --k, value >>= 4) s[static_cast<size_t>(k)] = kDigits[value & 0xf];
  return s;
}

Result<bool> read_cache(const std::string& path, const std::string& key, Dataset* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;  // absent (or unreadable, which rebuilding and rewriting will show)
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const Error corrupt{path + ": corrupt dataset cache"};
  const size_t tag = sizeof(kMagic) - kVersionBytes;
  if (bytes.size() >= sizeof(kMagic) && std::memcmp(bytes.data(), kMagic, tag) == 0 &&
      std::memcmp(bytes.data() + tag, kMagic + tag, kVersionBytes) < 0) {
    return false;  // an older version: rebuilt and overwritten
  }
  if (bytes.size() < sizeof(kMagic) + 2 * sizeof(uint64_t) ||
      std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return corrupt;
  }
  const size_t body = bytes.size() - sizeof(uint64_t);
  uint64_t checksum;
  std::memcpy(&checksum, bytes.data() + body, sizeof(checksum));
  if (checksum != hash_bytes(bytes.data(), body, kChecksumSeed)) return corrupt;

  Reader r(bytes.data() + sizeof(kMagic), body - sizeof(kMagic));
  if (r.str() != key) return r.ok() ? Result<bool>(false) : Result<bool>(corrupt);
  Dataset ds;
  ds.num_examples = r.pod<int64_t>();
  ds.num_skipped = r.pod<int64_t>();
  ds.num_truncated = r.pod<int64_t>();
  ds.train_tokens = r.pod<int64_t>();
  ds.trained_tokens = r.pod<int64_t>();
  if (!read_rows(r, &ds.train_rows) || !read_rows(r, &ds.val_rows)) return corrupt;
  const uint64_t num_val = r.count(3 * sizeof(uint64_t));
  for (uint64_t k = 0; k < num_val && r.ok(); ++k) {
    RawExample ex;
    ex.line = r.pod<int64_t>();
    ex.text = r.str();
    const uint64_t num_messages = r.count(2 * sizeof(uint64_t));
    for (uint64_t m = 0; m < num_messages && r.ok(); ++m) {
      ChatMessage msg;
      msg.role = r.str();
      msg.content = r.str();
      ex.messages.push_back(std::move(msg));
    }
    ds.val_examples.push_back(std::move(ex));
  }
  const uint64_t num_warnings = r.count(sizeof(uint64_t));
  for (uint64_t k = 0; k < num_warnings && r.ok(); ++k) ds.warnings.push_back(r.str());
  if (!r.ok() || !r.at_end() || ds.train_rows.empty()) return corrupt;
  *out = std::move(ds);
  return true;
}

Status write_cache(const std::string& path, const std::string& key, const Dataset& ds) {
  Writer w;
  w.raw(kMagic, sizeof(kMagic));
  w.str(key);
  w.pod<int64_t>(ds.num_examples);
  w.pod<int64_t>(ds.num_skipped);
  w.pod<int64_t>(ds.num_truncated);
  w.pod<int64_t>(ds.train_tokens);
  w.pod<int64_t>(ds.trained_tokens);
  write_rows(w, ds.train_rows);
  write_rows(w, ds.val_rows);
  w.pod<uint64_t>(ds.val_examples.size());
  for (const RawExample& ex : ds.val_examples) {
    w.pod<int64_t>(ex.line);
    w.str(ex.text);
    w.pod<uint64_t>(ex.messages.size());
    for (const ChatMessage& m : ex.messages) {
      w.str(m.role);
      w.str(m.content);
    }
  }
  w.pod<uint64_t>(ds.warnings.size());
  for (const std::string& s : ds.warnings) w.str(s);
  w.pod<uint64_t>(hash_bytes(w.bytes().data(), w.bytes().size(), kChecksumSeed));
  return checkpoint::write_file_atomic(path, w.bytes());
}

}  // namespace ramstream::data::internal
