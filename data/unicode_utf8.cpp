#include "data/unicode_utf8.h"

#include <array>
#include <cstdlib>
#include <stdexcept>
#include <utility>

#include <utf8proc.h>

namespace ramstream::data {
namespace {

// Second-byte range of a lead byte; later continuation bytes are always 80..BF.
struct LeadInfo {
  int length;  // 0: never starts a sequence
  uint8_t lo, hi;
};

LeadInfo lead_info(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b < 0xC2) return {0, 0, 0};
  if (b < 0xE0) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b < 0xF0) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b < 0xF4) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

// Length of the well-formed sequence at pos (0 when ill-formed) and of the maximal subpart that
// must be replaced otherwise (>= 1).
size_t scan(std::string_view text, size_t pos, size_t* bad_len, uint32_t* cp) {
  const auto at = [&](size_t k) { return static_cast<uint8_t>(text[k]); };
  const uint8_t b0 = at(pos);
  const LeadInfo info = lead_info(b0);
  *bad_len = 1;
  if (info.length == 1) {
    *cp = b0;
    return 1;
  }
  if (info.length == 0) return 0;
  uint32_t value = b0 & (0x7F >> info.length);
  for (int k = 1; k < info.length; ++k) {
    if (pos + k >= text.size()) return 0;
    const uint8_t b = at(pos + k);
    const uint8_t lo = k == 1 ? info.lo : 0x80, hi = k == 1 ? info.hi : 0xBF;
    if (b < lo || b > hi) return 0;
    value = (value << 6) | (b & 0x3F);
    *bad_len = static_cast<size_t>(k) + 1;
  }
  *cp = value;
  return static_cast<size_t>(info.length);
}

struct ByteAlphabet {
  std::array<uint32_t, 256> symbol{};
  std::array<int16_t, 324> byte{};  // symbols are < 256 + 68

  ByteAlphabet() {
    byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      symbol[b] = printable ? b : 256 + extra++;
      byte[symbol[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

}  // namespace

size_t utf8_decode(std::string_view text, size_t pos, uint32_t* cp) {
  size_t bad = 0;
  return scan(text, pos, &bad, cp);
}

void utf8_append(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool utf8_valid(std::string_view text) {
  uint32_t cp = 0;
  for (size_t pos = 0; pos < text.size();) {
    if (static_cast<uint8_t>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const size_t n = utf8_decode(text, pos, &cp);
    if (n == 0) return false;
    pos += n;
  }
  return true;
}

std::string utf8_lossy(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  uint32_t cp = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t bad = 0;
    const size_t n = scan(text, pos, &bad, &cp);
    if (n > 0) {
      out.append(text.substr(pos, n));
      pos += n;
    } else {
      out.append("\xEF\xBF\xBD");
      pos += bad;
    }
  }
  return out;
}

bool is_white_space(uint32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  if (cp < 0x85) return false;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

const char* white_space_class_body() {
  return "\\x{09}-\\x{0D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
         "\\x{202F}\\x{205F}\\x{3000}";
}

std::string nfc_normalize(std::string_view text) {
  // Fast path: every code point below U+0300 is a starter that nothing composes with from the
  // left (NFC_Quick_Check=Yes), and in UTF-8 such text has no byte >= 0xCC (0xCC 0x80 is
  // U+0300). Most tokenizer input is ASCII or Latin-1 and is returned as is.
  bool below_0300 = true;
  for (char c : text) {
    if (static_cast<uint8_t>(c) >= 0xCC) {
      below_0300 = false;
      break;
    }
  }
  if (below_0300) return std::string(text);
  utf8proc_uint8_t* mapped = nullptr;
  // An explicit length (no UTF8PROC_NULLTERM): embedded NUL bytes are characters like any other.
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                   static_cast<utf8proc_ssize_t>(text.size()), &mapped,
                   static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) {
    std::free(mapped);
    throw std::runtime_error("NFC normalization (utf8proc " + std::string(utf8proc_version()) +
                             ") failed on " + std::to_string(text.size()) +
                             " bytes: " + utf8proc_errmsg(n));
  }
  std::string out(reinterpret_cast<const char*>(mapped), static_cast<size_t>(n));
  std::free(mapped);
  return out;
}

uint32_t byte_to_symbol(uint8_t b) {
  return alphabet().symbol[b];
}

int symbol_to_byte(uint32_t cp) {
  return cp < alphabet().byte.size() ? alphabet().byte[cp] : -1;
}

std::string byte_level_encode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) utf8_append(byte_to_symbol(static_cast<uint8_t>(c)), &out);
  return out;
}

bool byte_level_decode(std::string_view token, std::string* out) {
  std::string bytes;
  bytes.reserve(token.size());
  uint32_t cp = 0;
  for (size_t pos = 0; pos < token.size();) {
    const size_t n = utf8_decode(token, pos, &cp);
    if (n == 0) return false;
    const int b = symbol_to_byte(cp);
    if (b < 0) return false;
    bytes.push_back(static_cast<char>(b));
    pos += n;
  }
  *out = std::move(bytes);
  return true;
}

}  // namespace ramstream::data
