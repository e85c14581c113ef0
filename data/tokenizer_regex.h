// Pre-tokenizer regexes for data/tokenizer.h: patterns as tokenizer.json writes them (Oniguruma's
// dialect, which Hugging Face `tokenizers` runs) compiled with PCRE2 in UTF + UCP mode and JIT.
//
// Where the engines differ on what these patterns use, the pattern is rewritten so that PCRE2
// matches exactly what Oniguruma (as built into `tokenizers` 0.23) matches, checked on every
// code point for \s, \S, \p{L}, \p{N} and the (?i:'s|'t|...) letters:
//   `\s` / `\S`   Oniguruma: the 25 White_Space code points; PCRE2's UCP \s also has U+180E.
//                 Rewritten to explicit classes; `\S` inside a bracket class is refused.
//   `\p{L}` / `\p{N}`  PCRE2 10.42 has Unicode 14 tables, Oniguruma Unicode 16: the letters and
//                 numbers assigned in 15.0-16.0 (35 + 10 ranges) are added to the class.
// Other constructs pass through unchanged (both engines share Perl syntax for them).
//
//   Result<std::shared_ptr<const TokenizerRegex>> re = TokenizerRegex::compile(R"(\p{N}{1,3})");
//   std::vector<std::pair<size_t, size_t>> spans;
//   re.value()->find_all("ab 12345", &spans);   // {3, 6}, {6, 8}
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "util/result.h"

namespace ramstream::data {

class TokenizerRegex {
 public:
  // Errors carry PCRE2's message and the offset in the pattern.
  static Result<std::shared_ptr<const TokenizerRegex>> compile(std::string_view pattern);
  // A literal string (tokenizer.json's {"String": ...} split patterns).
  static Result<std::shared_ptr<const TokenizerRegex>> literal(std::string_view text);
  ~TokenizerRegex();
  TokenizerRegex(const TokenizerRegex&) = delete;
  TokenizerRegex& operator=(const TokenizerRegex&) = delete;

  // Bounds on one match attempt, so that a pathological pattern (nested quantifiers) fails in
  // well under a second instead of running for hours: PCRE2's default match limit, made
  // explicit; a backtracking depth and heap far beyond what the tokenizer patterns need.
  static constexpr uint32_t kMatchLimit = 10'000'000;
  static constexpr uint32_t kDepthLimit = 1'000'000;
  static constexpr uint32_t kHeapLimitKiB = 64 * 1024;
  // Tokenizer patterns are a few hundred bytes.
  static constexpr size_t kMaxPatternBytes = 64 * 1024;

  // Appends the [begin, end) byte spans of successive non-overlapping matches in `text`, which
  // must be valid UTF-8. After an empty match the search resumes one character later.
  // Thread-safe. Throws std::runtime_error only when PCRE2 gives up (a limit above exceeded by
  // a pathological pattern and input, or out of memory).
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>* spans) const;
  const std::string& pattern() const { return pattern_; }

 private:
  TokenizerRegex() = default;
  static Result<std::shared_ptr<const TokenizerRegex>> build(std::string_view display,
                                                             const std::string& pcre2,
                                                             uint32_t options);
  std::string pattern_;   // as given
  void* code_ = nullptr;  // pcre2_code_8
};

// The characters `tokenizers`' Digits pre-tokenizer cuts out: Rust's char::is_numeric, whose
// Unicode 17 tables have 13 digits more than Oniguruma's \p{N} (U+11DE0.., U+16FF4..).
inline constexpr const char* kDigitsPattern = R"([\p{N}\x{11DE0}-\x{11DE9}\x{16FF4}-\x{16FF6}])";

// The Oniguruma pattern rewritten for PCRE2 (the `\s` / `\S` substitution above).
Result<std::string> onig_to_pcre2(std::string_view pattern);

}  // namespace ramstream::data
