// Byte-level BPE tokenizer (GPT-2 family: GPT-2, Llama-3, Qwen2, SmolLM2) built from a Hugging
// Face tokenizer.json or from GGUF tokenizer metadata; encode and decode with ids identical to
// Hugging Face `tokenizers` (checked on tests/fixtures/tokenizer/, >= 1,000 strings per tokenizer).
//
//   Result<Tokenizer> tok = Tokenizer::from_model("/models/smollm2");   // folder or .gguf file
//   if (!tok.ok()) { std::cerr << tok.error().message; return 1; }
//   std::vector<int32_t> ids = tok.value().encode("<|im_start|>user\nHi<|im_end|>\n");
//   std::string text = tok.value().decode(ids);
//
// What is supported (anything else is an Error naming the file and the key):
//   model            BPE with merges as "a b" strings or [a, b] pairs, ignore_merges, unk_token +
//                    fuse_unk; no dropout, byte_fallback or subword prefixes/suffixes. Bytes
//                    whose symbol is missing from the vocabulary are dropped (SmolLM2 lacks 21),
//                    as `tokenizers` does without unk_token.
//   added_tokens     special or not, lstrip / rstrip / single_word / normalized as `tokenizers`
//                    applies them (leftmost-longest match, before normalisation unless normalized).
//   normalizer       null or NFC (Qwen2), also inside a Sequence.
//   pre_tokenizer    Sequence of Split (Regex or String pattern, any behavior, invert) and Digits,
//                    ending with ByteLevel (add_prefix_space, use_regex = GPT-2's regex). Regexes
//                    run on PCRE2 with Oniguruma's classes (data/tokenizer_regex.h).
//   post_processor   TemplateProcessing (a leading special token means add_bos), ByteLevel, null.
//   decoder          ByteLevel.
// tokenizer_config.json beside tokenizer.json gives bos/eos/pad/unk_token (strings or
// {"content": ...}), add_bos_token and chat_template (string, or named list: "default" wins);
// transformers 5's chat_template.jinja is read when the config has no template.
// GGUF: tokenizer.ggml.model "gpt2" only ("llama" = SentencePiece is refused); tokenizer.ggml.pre
// names the pre-tokenizer: "gpt-2", "default", "" -> GPT-2's ByteLevel regex (as transformers);
// "llama-bpe", "llama3", "llama-v3" -> Llama-3's Split regex with ignore_merges; "qwen2" -> NFC +
// Qwen2's Split regex; "smollm", "starcoder" -> Digits(individual_digits) + GPT-2's regex. Other
// names are refused. Control tokens (token_type 3) and bos/eos/pad/unk are special added tokens,
// user-defined ones (4) plain added tokens; tokens outside the byte alphabet are respelled from
// their UTF-8 bytes, as transformers' GGUF loader does.
//
// Thread safety: a Tokenizer is immutable after loading except for an internal, lock-striped
// cache of BPE results per word; encode/decode may run concurrently from any number of threads.
// Copies share the same state (cheap).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "util/result.h"

namespace ramstream::checkpoint {
struct GgufTokenizer;
}

namespace ramstream::data {

// Text -> ids: what datasets need from a tokenizer (tests substitute a byte-level encoder).
class TextEncoder {
 public:
  virtual ~TextEncoder() = default;
  // Special/added tokens written literally in `text` (e.g. "<|im_end|>") become their ids.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when the model has none
  virtual int32_t eos_id() const = 0;  // -1 when the model has none
  // Whether a plain-text document starts with bos (Hugging Face's add_bos_token): Llama-3 yes,
  // SmolLM2 and Qwen2 no. Chat conversations never get a second bos (data/dataset.h).
  virtual bool add_bos() const { return bos_id() >= 0; }
  // Identifies the vocabulary, merges and special tokens: equal fingerprints encode every text
  // identically. The tokenised dataset cache is keyed by it; "" (the default) disables the cache.
  virtual std::string fingerprint() const { return ""; }
};

class Tokenizer : public TextEncoder {
 public:
  // tokenizer.json (and, when present next to it, tokenizer_config.json for bos/eos/pad,
  // add_bos_token and chat_template). Errors name the file and the key.
  static Result<Tokenizer> from_tokenizer_json(const std::string& path);
  // GGUF tokenizer metadata (tokenizer.ggml.*); `origin` names the file in errors.
  static Result<Tokenizer> from_gguf(const checkpoint::GgufTokenizer& meta,
                                     const std::string& origin);
  // A model folder holding tokenizer.json, or a .gguf file.
  static Result<Tokenizer> from_model(const std::string& path);

  // Hugging Face's encode(text, add_special_tokens=False): nothing (not even bos) is added.
  // Ill-formed UTF-8 is first repaired to U+FFFD (Hugging Face only ever sees valid text).
  // Throws std::runtime_error, naming the tokenizer file, only if PCRE2 gives up on one of the
  // tokenizer's own regexes (TokenizerRegex::kMatchLimit and friends, data/tokenizer_regex.h).
  std::vector<int32_t> encode(std::string_view text) const override;
  // Special tokens written in the text are encoded as plain text ("<|im_end|>" -> several ids);
  // non-special added tokens still match (`tokenizers` with encode_special_tokens = true).
  std::vector<int32_t> encode_ordinary(std::string_view text) const;
  // The ByteLevel decoder: token bytes joined, ill-formed UTF-8 (a character cut between ids)
  // shown as U+FFFD. Ids outside the vocabulary are skipped; skip_special drops special tokens.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;

  int32_t token_to_id(std::string_view token) const;  // -1 when absent
  const std::string& id_to_token(int32_t id) const;   // throws std::out_of_range
  bool is_special(int32_t id) const;
  int64_t vocab_size() const;  // one past the largest id (model vocabulary and added tokens)
  int32_t bos_id() const override;
  int32_t eos_id() const override;
  int32_t pad_id() const;         // -1 when absent
  bool add_bos() const override;  // prepend bos when encoding a whole document
  // Jinja source of the model's chat template ("" when none); data/chat.h picks the format.
  const std::string& chat_template() const;
  // 32 hex digits hashing the tokenizer.json that save() writes (vocabulary, merges, added
  // tokens, normalizer, pre-tokenizer): equal fingerprints encode every text identically.
  std::string fingerprint() const override;

  // Writes tokenizer.json and tokenizer_config.json (bos/eos/pad/unk_token, add_bos_token,
  // chat_template) into the existing folder `dir`, each atomically, so that Hugging Face
  // `tokenizers` and `transformers` load it and encode identically (used by convert; checked
  // with make_tokenizer_reference.py --check-saved).
  Status save(const std::string& dir) const;
  // GGUF tokenizer metadata for llama.cpp, the inverse of from_gguf: tokens 0..vocab_size-1 (ids
  // without a token as "[PAD<id>]", type unused, as llama.cpp's converter pads), token types
  // (control for special tokens, user-defined for other added ones, else normal), merges as
  // "left right", bos/eos/pad/unk ids, add_bos, the chat template, and tokenizer.ggml.pre named
  // from the normalizer + pre-tokenizer (one of from_gguf's families, else an Error naming the
  // key 'pre_tokenizer'). Added tokens' lstrip/rstrip/single_word/normalized have no GGUF key.
  Result<checkpoint::GgufTokenizer> to_gguf(int64_t vocab_size) const;

 private:
  struct Impl;
  explicit Tokenizer(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
};

}  // namespace ramstream::data
