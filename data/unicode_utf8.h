// UTF-8 and byte-level helpers for the tokenizer (data/tokenizer.h): strict decoding, lossy
// repair the way Rust's String::from_utf8_lossy does it (Hugging Face `tokenizers` decodes
// through it), the White_Space property, NFC, and GPT-2's byte <-> code point alphabet.
//
//   std::string fixed = utf8_lossy("a\xffz");          // "a\uFFFDz"
//   std::string mapped = byte_level_encode(" hi");      // "Ġhi"
//   std::string bytes;
//   bool ok = byte_level_decode("Ġhi", &bytes);         // bytes == " hi"
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ramstream::data {

// Decodes the code point at text[pos]; returns its byte length, or 0 when the bytes there are
// not well-formed UTF-8 (overlong forms, surrogates and values above U+10FFFF included).
size_t utf8_decode(std::string_view text, size_t pos, uint32_t* cp);
void utf8_append(uint32_t cp, std::string* out);
bool utf8_valid(std::string_view text);
// Every ill-formed subsequence becomes U+FFFD, one per maximal subpart (Unicode 15, section
// 3.9, "U+FFFD Substitution of Maximal Subparts"; what Rust's from_utf8_lossy does).
std::string utf8_lossy(std::string_view text);

// Unicode's White_Space property: what Rust's char::is_whitespace and regex `\s`, and
// Oniguruma's `\s`, match (25 code points).
bool is_white_space(uint32_t cp);
// The character class body (without brackets) matching exactly is_white_space, in PCRE2 syntax.
const char* white_space_class_body();

// Canonical composition (NFC) of valid UTF-8, through utf8proc (Unicode 15 in Debian 12's 2.8).
// utf8proc rather than ICU: NFC is all the tokenizers need (Qwen2's normalizer), and utf8proc is
// a ~350 KB library with no data files, where ICU brings ~30 MB of data (libicudata) that would
// have to travel to the GPU machine. Throws std::runtime_error naming utf8proc's error (e.g.
// "Invalid UTF-8 string") when the input is not valid UTF-8.
std::string nfc_normalize(std::string_view text);

// GPT-2's byte-level alphabet: byte b is spelled as one code point, itself for the printable
// Latin-1 bytes ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF) and 256 + k for the k-th other byte.
uint32_t byte_to_symbol(uint8_t b);
// The byte a symbol spells, or -1 for a code point outside the alphabet.
int symbol_to_byte(uint32_t cp);
std::string byte_level_encode(std::string_view bytes);
// The bytes a byte-level token spells; false (out untouched) when a character is outside the
// alphabet or the token is not valid UTF-8.
bool byte_level_decode(std::string_view token, std::string* out);

}  // namespace ramstream::data
