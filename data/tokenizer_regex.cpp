#include "data/tokenizer_regex.h"

#include <stdexcept>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "data/unicode_utf8.h"
#include "util/user_file.h"

namespace ramstream::data {
namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  if (pcre2_get_error_message(code, buf, sizeof(buf)) < 0)
    return "PCRE2 error " + std::to_string(code);
  return reinterpret_cast<const char*>(buf);
}

// Per-thread match state: one ovector pair is all find_all reads (PCRE2 still reports the whole
// match when the pattern has more groups), a JIT stack that grows to 8 MiB for long runs, and the
// limits of TokenizerRegex (the interpreter ignores the JIT stack, the JIT the depth and heap).
struct MatchScratch {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  pcre2_jit_stack* jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);

  MatchScratch() {
    if (!context) return;
    if (jit_stack) pcre2_jit_stack_assign(context, nullptr, jit_stack);
    pcre2_set_match_limit(context, TokenizerRegex::kMatchLimit);
    pcre2_set_depth_limit(context, TokenizerRegex::kDepthLimit);
    pcre2_set_heap_limit(context, TokenizerRegex::kHeapLimitKiB);
  }
  ~MatchScratch() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
  MatchScratch(const MatchScratch&) = delete;
  MatchScratch& operator=(const MatchScratch&) = delete;
};

MatchScratch& scratch() {
  thread_local MatchScratch s;
  if (!s.data || !s.context) throw std::runtime_error("PCRE2: out of memory for match data");
  return s;
}

// Letters (\p{L}) and numbers (\p{N}) assigned in Unicode 15.0 to 16.0. Oniguruma as built
// into `tokenizers` 0.23 knows them; PCRE2 10.42 (Unicode 14) does not. Listing them again is
// harmless with a newer PCRE2. Found by comparing both engines on every code point.
constexpr const char* kNewLetters =
    "\\x{1C89}-\\x{1C8A}\\x{A7CB}-\\x{A7CD}\\x{A7DA}-\\x{A7DC}\\x{105C0}-\\x{105F3}"
    "\\x{10D4A}-\\x{10D65}\\x{10D6F}-\\x{10D85}\\x{10EC2}-\\x{10EC4}\\x{1123F}-\\x{11240}"
    "\\x{11380}-\\x{11389}\\x{1138B}\\x{1138E}\\x{11390}-\\x{113B5}\\x{113B7}\\x{113D1}"
    "\\x{113D3}\\x{11BC0}-\\x{11BE0}\\x{11F02}\\x{11F04}-\\x{11F10}\\x{11F12}-\\x{11F33}"
    "\\x{1342F}\\x{13441}-\\x{13446}\\x{13460}-\\x{143FA}\\x{16100}-\\x{1611D}"
    "\\x{16D40}-\\x{16D6C}\\x{18CFF}\\x{1B132}\\x{1B155}\\x{1DF25}-\\x{1DF2A}"
    "\\x{1E030}-\\x{1E06D}\\x{1E4D0}-\\x{1E4EB}\\x{1E5D0}-\\x{1E5ED}\\x{1E5F0}\\x{2B739}"
    "\\x{2EBF0}-\\x{2EE5D}\\x{31350}-\\x{323AF}";
constexpr const char* kNewNumbers =
    "\\x{10D40}-\\x{10D49}\\x{116D0}-\\x{116E3}\\x{11BF0}-\\x{11BF9}\\x{11F50}-\\x{11F59}"
    "\\x{16130}-\\x{16139}\\x{16D70}-\\x{16D79}\\x{1CCF0}-\\x{1CCF9}\\x{1D2C0}-\\x{1D2D3}"
    "\\x{1E4F0}-\\x{1E4F9}\\x{1E5F1}-\\x{1E5FA}";

}  // namespace

Result<std::string> onig_to_pcre2(std::string_view pattern) {
  const std::string space = white_space_class_body();
  const std::string letters = std::string("\\p{L}") + kNewLetters;
  const std::string numbers = std::string("\\p{N}") + kNewNumbers;
  std::string out;
  out.reserve(pattern.size() + 64);
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[i + 1];
      // \p{L} and \p{N} (exactly these spellings) get the newer code points too.
      const std::string_view rest = pattern.substr(i);
      if (rest.substr(0, 5) == "\\p{L}" || rest.substr(0, 5) == "\\p{N}") {
        const std::string& body = rest[3] == 'L' ? letters : numbers;
        out += in_class ? body : "[" + body + "]";
        i += 4;
        continue;
      }
      if (e == 's') {
        out += in_class ? space : "[" + space + "]";
      } else if (e == 'S') {
        if (in_class) {
          return Error{"regex " + quote_bounded(pattern) + ": \\S inside a character class " +
                       "(offset " + std::to_string(i) + ") is not supported"};
        }
        out += "[^" + space + "]";
      } else {
        out += c;
        out += e;
      }
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal member.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      const size_t close = pattern.find(":]", i + 2);  // POSIX class [:alpha:]
      if (close != std::string_view::npos) {
        out.append(pattern.substr(i, close + 2 - i));
        i = close + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

Result<std::shared_ptr<const TokenizerRegex>> TokenizerRegex::build(std::string_view display,
                                                                    const std::string& pcre2,
                                                                    uint32_t options) {
  int code = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* compiled = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pcre2.data()), pcre2.size(),
                                       PCRE2_UTF | options, &code, &offset, nullptr);
  if (!compiled) {
    return Error{"regex " + quote_bounded(display) + ": " + pcre2_message(code) + " at offset " +
                 std::to_string(offset) + " of the PCRE2 form " + quote_bounded(pcre2, 200)};
  }
  // JIT is an optimisation: without it (unsupported CPU, no executable memory) matching falls
  // back to the interpreter.
  pcre2_jit_compile(compiled, PCRE2_JIT_COMPLETE);
  std::shared_ptr<TokenizerRegex> re(new TokenizerRegex());
  re->pattern_ = std::string(display);
  re->code_ = compiled;
  return std::shared_ptr<const TokenizerRegex>(std::move(re));
}

Result<std::shared_ptr<const TokenizerRegex>> TokenizerRegex::compile(std::string_view pattern) {
  if (pattern.size() > kMaxPatternBytes) {
    return Error{"regex of " + std::to_string(pattern.size()) + " bytes, longer than the " +
                 std::to_string(kMaxPatternBytes) + " supported"};
  }
  if (!utf8_valid(pattern)) return Error{"regex is not valid UTF-8"};
  Result<std::string> translated = onig_to_pcre2(pattern);
  if (!translated.ok()) return translated.error();
  return build(pattern, translated.value(), PCRE2_UCP);
}

Result<std::shared_ptr<const TokenizerRegex>> TokenizerRegex::literal(std::string_view text) {
  if (text.size() > kMaxPatternBytes) {
    return Error{"split string of " + std::to_string(text.size()) + " bytes, longer than the " +
                 std::to_string(kMaxPatternBytes) + " supported"};
  }
  if (!utf8_valid(text)) return Error{"split string is not valid UTF-8"};
  return build(text, std::string(text), PCRE2_LITERAL);
}

TokenizerRegex::~TokenizerRegex() {
  pcre2_code_free(static_cast<pcre2_code*>(code_));
}

void TokenizerRegex::find_all(std::string_view text,
                              std::vector<std::pair<size_t, size_t>>* spans) const {
  auto* code = static_cast<pcre2_code*>(code_);
  MatchScratch& s = scratch();
  const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;
  while (start <= text.size()) {
    int rc = pcre2_match(code, subject, text.size(), start, PCRE2_NO_UTF_CHECK, s.data, s.context);
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
      // JIT stack or match limit: the interpreter keeps its backtracking state on the heap.
      rc = pcre2_match(code, subject, text.size(), start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, s.data,
                       s.context);
    }
    if (rc == PCRE2_ERROR_NOMATCH) return;
    if (rc < 0) {
      throw std::runtime_error("regex " + quote_bounded(pattern_) + " gave up on a " +
                               std::to_string(text.size()) +
                               "-byte piece of text: " + pcre2_message(rc));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(s.data);
    const size_t begin = ov[0], end = ov[1];
    spans->emplace_back(begin, end);
    if (end > begin) {
      start = end;
    } else {
      if (begin >= text.size()) return;
      uint32_t cp = 0;
      const size_t n = utf8_decode(text, begin, &cp);
      start = begin + (n ? n : 1);
    }
  }
}

}  // namespace ramstream::data
