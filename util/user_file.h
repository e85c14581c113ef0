// Reading files a user names (configs, recipes, datasets, tokenizers) without trusting them: the
// path must be a regular file (not a folder, FIFO or character device, which would block or read
// forever) no larger than a limit, and every error names the file and says what it was expected
// to be. Also the one way to quote user input back in a message, cut to a bounded length.
//
//   Result<std::string> text = read_user_file(path, "model config", 64 << 20);
//   if (!text.ok()) return text.error();   // "x/config.json: is a folder, expected the model
//   config" msg += "unexpected value " + quote_bounded(token);   // at most ~80 bytes of it
#pragma once

#include <sys/stat.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "util/result.h"

namespace ramstream {

// `s` in single quotes, cut to `max_bytes` (at a UTF-8 boundary) with "..." and the full length
// when longer, control bytes shown as \xNN. For echoing untrusted input in one short line.
inline std::string quote_bounded(std::string_view s, size_t max_bytes = 80) {
  std::string out = "'";
  size_t n = s.size() <= max_bytes ? s.size() : max_bytes;
  if (n < s.size()) {
    while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  }
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += "'";
  if (n < s.size()) out += "... (" + std::to_string(s.size()) + " bytes)";
  return out;
}

// Ok when `path` is a regular file (symlinks followed); else an error naming it and `what` it was
// expected to be ("the recipe", "the dataset", ...).
inline Status check_regular_file(const std::string& path, const char* what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return Error{path + ": " + std::strerror(errno) + " (expected " + what + ")"};
  }
  if (S_ISDIR(st.st_mode)) return Error{path + ": is a folder, expected " + what + " (a file)"};
  if (!S_ISREG(st.st_mode)) {
    return Error{path + ": is not a regular file (a device, FIFO or socket), expected " + what};
  }
  return Ok{};
}

// The whole content of a regular file of at most `max_bytes`; errors name the file.
inline Result<std::string> read_user_file(const std::string& path, const char* what,
                                          uint64_t max_bytes) {
  Status regular = check_regular_file(path, what);
  if (!regular.ok()) return regular.error();
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return Error{path + ": cannot open: " + std::strerror(errno)};
  std::string data;
  char buf[1 << 16];
  size_t got = 0;
  while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) {
    if (data.size() + got > max_bytes) {
      std::fclose(f);
      return Error{path + ": larger than " + std::to_string(max_bytes >> 20) +
                   " MiB, too large for " + what};
    }
    data.append(buf, got);
  }
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) return Error{path + ": read error"};
  return data;
}

}  // namespace ramstream
