// Internals of data/tokenizer.h shared by its loaders (tokenizer_load.cpp) and the encoder
// (tokenizer.cpp). Not a public header.
//
// The encode pipeline follows Hugging Face `tokenizers` step by step:
//   1. added tokens whose `normalized` flag is false are cut out of the raw text (leftmost-longest
//      match; lstrip/rstrip widen a match over White_Space, single_word needs non-word neighbours;
//      special ones are skipped by encode_ordinary);
//   2. each remaining piece is normalised (NFC when configured), then added tokens with
//      `normalized` true are cut out of it;
//   3. the pre-tokenizer steps split every piece (Split / Digits / ByteLevel), dropping empty
//      pieces; ByteLevel adds its prefix space to every piece it sees;
//   4. BPE runs on each piece's bytes (a byte stands for its GPT-2 alphabet symbol), by merge rank,
//      leftmost first; bytes whose symbol is not in the vocabulary are dropped (or become unk).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/tokenizer.h"
#include "data/tokenizer_regex.h"

namespace ramstream::data {

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel } kind = Kind::kSplit;
  // kSplit: the pattern; kByteLevel: GPT-2's regex when use_regex, else null.
  std::shared_ptr<const TokenizerRegex> regex;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;  // kByteLevel
};

struct AddedTokenInfo {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

// Leftmost-longest search over a set of byte strings (what aho-corasick's LeftmostLongest gives
// `tokenizers`), as a byte trie: tries every start position in order and takes the longest
// pattern there.
class AddedTokenMatcher {
 public:
  void add(std::string_view pattern, int32_t value);
  bool empty() const { return nodes_.size() == 1; }
  // The first match at or after `from`: {begin, end, value}; value -1 when there is none.
  struct Match {
    size_t begin = 0, end = 0;
    int32_t value = -1;
  };
  Match find(std::string_view text, size_t from) const;

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> next;  // byte -> node
    int32_t value = -1;
  };
  std::vector<Node> nodes_{1};
  std::array<bool, 256> first_byte_{};
};

// BPE results per pre-token: most words repeat, so remembering them skips the merge loop.
// Lock-striped so that concurrent encode() calls rarely wait on each other; a shard that grows
// past its budget is cleared (cheap, and keeps memory bounded on endless distinct words).
class WordCache {
 public:
  static constexpr size_t kShards = 16;
  static constexpr size_t kMaxEntriesPerShard = 4096;  // 64K words, a few MB
  static constexpr size_t kMaxWordBytes = 64;          // longer words are rare: not cached

  bool get(const std::string& word, std::vector<int32_t>* ids) const;
  void put(const std::string& word, const std::vector<int32_t>& ids) const;

 private:
  struct Shard {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>> map;
  };
  mutable std::array<Shard, kShards> shards_;
};

struct MergeTarget {
  int32_t rank = 0;
  int32_t id = 0;  // the merged token
};

struct Tokenizer::Impl {
  std::string origin;  // the file it came from, for messages

  // ---- vocabulary: ids 0 .. tokens.size()-1 (holes allowed, present[id] == 0) ----------------
  std::vector<std::string> tokens;       // id -> token string (added content wins, as in HF)
  std::vector<uint8_t> present;          // id is a model or added token
  std::vector<std::string> token_bytes;  // id -> bytes decode() emits
  std::vector<uint8_t> special;          // id is a special added token
  std::unordered_map<std::string, int32_t> token_ids;  // added contents, then model vocabulary

  // ---- BPE model -------------------------------------------------------------------------------
  std::vector<std::pair<std::string, int32_t>> model_vocab;     // as loaded, for save()
  std::vector<std::pair<int32_t, int32_t>> merge_pairs;         // rank order, for save()
  std::unordered_map<std::string, int32_t> model_ids_by_bytes;  // tokens inside the byte alphabet
  std::array<int32_t, 256> byte_ids{};                          // -1: symbol not in the vocabulary
  std::unordered_map<uint64_t, MergeTarget> merges;             // (left << 32 | right) -> target
  std::string unk_token;                                        // "" when none
  int32_t unk_id = -1;
  bool fuse_unk = false;
  bool ignore_merges = false;

  // ---- text pipeline ---------------------------------------------------------------------------
  bool nfc = false;
  std::vector<AddedTokenInfo> added;  // in tokenizer.json order
  AddedTokenMatcher raw_matcher;      // added[i] with normalized == false, value i
  AddedTokenMatcher normalized_matcher;
  std::shared_ptr<const TokenizerRegex> word_char;  // Rust regex `\w`, for single_word
  std::vector<PreTokenizerStep> pre_steps;

  // ---- model facts -----------------------------------------------------------------------------
  int32_t bos_id = -1, eos_id = -1, pad_id = -1, unk_config_id = -1;
  bool add_bos = false;
  std::string chat_template;

  // tokenizer.json sections save() writes back as they were (or as from_gguf built them).
  nlohmann::json normalizer_json, pre_tokenizer_json, post_processor_json, decoder_json;

  std::string fingerprint;  // of tokenizer_json(), set by the loaders

  WordCache cache;

  // tokenizer.json as save() writes it (also what the fingerprint hashes).
  std::string tokenizer_json() const;

  void encode(std::string_view text, bool split_special, std::vector<int32_t>* ids) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const;
  // Builds tokens / token_bytes / special / token_ids / byte_ids / matchers from model_vocab,
  // added and the merge list; errors name `origin`.
  // `merges_key` names the merge list in errors ("model.merges", "tokenizer.ggml.merges").
  Status finish(const std::vector<std::pair<std::string, std::string>>& merge_strings,
                const std::string& merges_key);

 private:
  void encode_text(std::string_view text, bool split_special, std::vector<int32_t>* ids) const;
  void pre_tokenize_and_bpe(std::string_view text, std::vector<int32_t>* ids) const;
  void bpe(const std::string& word, std::vector<int32_t>* ids) const;
  void bpe_uncached(const std::string& word, std::vector<int32_t>* ids) const;
  // Cuts added tokens out of `text`; calls on_text(piece) / on_token(id) in order.
  template <class OnText, class OnToken>
  void split_added(std::string_view text, const AddedTokenMatcher& matcher, bool split_special,
                   OnText&& on_text, OnToken&& on_token) const;
};

}  // namespace ramstream::data
