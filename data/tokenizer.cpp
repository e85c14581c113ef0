// Encoding and decoding (the pipeline in tokenizer_impl.h). Loaders and save() live in
// tokenizer_load.cpp.
#include "data/tokenizer.h"

#include <algorithm>
#include <functional>
#include <queue>
#include <stdexcept>
#include <utility>

#include "data/tokenizer_impl.h"
#include "data/unicode_utf8.h"

namespace ramstream::data {
namespace {

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// Byte offset where the run of White_Space ending at `end` starts (Rust `\s*$`).
size_t white_space_run_start(std::string_view text, size_t end) {
  size_t pos = end;
  while (pos > 0) {
    size_t begin = pos - 1;
    while (begin > 0 && (static_cast<uint8_t>(text[begin]) & 0xC0) == 0x80) --begin;
    uint32_t cp = 0;
    if (utf8_decode(text, begin, &cp) == 0 || !is_white_space(cp)) break;
    pos = begin;
  }
  return pos;
}

// Byte length of the run of White_Space starting at `begin` (Rust `^\s*`).
size_t white_space_run_length(std::string_view text, size_t begin) {
  size_t pos = begin;
  uint32_t cp = 0;
  while (pos < text.size()) {
    const size_t n = utf8_decode(text, pos, &cp);
    if (n == 0 || !is_white_space(cp)) break;
    pos += n;
  }
  return pos - begin;
}

// Splits `text` at the regex spans the way `tokenizers`' NormalizedString::split does for each
// SplitDelimiterBehavior; empty pieces are dropped.
void split_by_spans(std::string_view text, const std::vector<std::pair<size_t, size_t>>& spans,
                    SplitBehavior behavior, bool invert, std::vector<std::string>* out) {
  struct Entry {
    size_t begin, end;
    bool matched;
  };
  std::vector<Entry> entries;
  entries.reserve(spans.size() * 2 + 1);
  size_t prev = 0;
  for (const auto& [begin, end] : spans) {
    if (begin > prev) entries.push_back({prev, begin, invert});
    entries.push_back({begin, end, !invert});
    prev = end;
  }
  if (prev < text.size()) entries.push_back({prev, text.size(), invert});

  std::vector<Entry> kept;
  kept.reserve(entries.size());
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      kept = std::move(entries);
      break;
    case SplitBehavior::kRemoved:
      for (const Entry& e : entries) {
        if (!e.matched) kept.push_back(e);
      }
      break;
    case SplitBehavior::kContiguous:
      for (const Entry& e : entries) {
        if (e.matched == previous_match && !kept.empty()) {
          kept.back().end = e.end;
        } else {
          kept.push_back(e);
        }
        previous_match = e.matched;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Entry& e : entries) {
        if (e.matched && !previous_match && !kept.empty()) {
          kept.back().end = e.end;
        } else {
          kept.push_back(e);
        }
        previous_match = e.matched;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto it = entries.rbegin(); it != entries.rend(); ++it) {
        if (it->matched && !previous_match && !kept.empty()) {
          kept.back().begin = it->begin;
        } else {
          kept.push_back(*it);
        }
        previous_match = it->matched;
      }
      std::reverse(kept.begin(), kept.end());
      break;
  }
  for (const Entry& e : kept) {
    if (e.end > e.begin) out->emplace_back(text.substr(e.begin, e.end - e.begin));
  }
}

}  // namespace

// ---- AddedTokenMatcher
// ---------------------------------------------------------------------------

void AddedTokenMatcher::add(std::string_view pattern, int32_t value) {
  if (pattern.empty()) return;
  int32_t node = 0;
  for (char c : pattern) {
    const uint8_t b = static_cast<uint8_t>(c);
    int32_t child = -1;
    for (const auto& [byte, index] : nodes_[node].next) {
      if (byte == b) child = index;
    }
    if (child < 0) {
      child = static_cast<int32_t>(nodes_.size());
      nodes_[node].next.emplace_back(b, child);
      nodes_.emplace_back();
    }
    node = child;
  }
  // The first token with a given content wins, as in the aho-corasick pattern order.
  if (nodes_[node].value < 0) nodes_[node].value = value;
  first_byte_[static_cast<uint8_t>(pattern[0])] = true;
}

AddedTokenMatcher::Match AddedTokenMatcher::find(std::string_view text, size_t from) const {
  for (size_t start = from; start < text.size(); ++start) {
    if (!first_byte_[static_cast<uint8_t>(text[start])]) continue;
    int32_t node = 0;
    Match best;
    for (size_t pos = start; pos < text.size(); ++pos) {
      const uint8_t b = static_cast<uint8_t>(text[pos]);
      int32_t child = -1;
      for (const auto& [byte, index] : nodes_[node].next) {
        if (byte == b) child = index;
      }
      if (child < 0) break;
      node = child;
      if (nodes_[node].value >= 0) best = {start, pos + 1, nodes_[node].value};
    }
    if (best.value >= 0) return best;
  }
  return {};
}

// ---- WordCache
// -----------------------------------------------------------------------------------

bool WordCache::get(const std::string& word, std::vector<int32_t>* ids) const {
  Shard& shard = shards_[std::hash<std::string>{}(word) % kShards];
  std::lock_guard<std::mutex> lock(shard.mutex);
  auto it = shard.map.find(word);
  if (it == shard.map.end()) return false;
  ids->insert(ids->end(), it->second.begin(), it->second.end());
  return true;
}

void WordCache::put(const std::string& word, const std::vector<int32_t>& ids) const {
  Shard& shard = shards_[std::hash<std::string>{}(word) % kShards];
  std::lock_guard<std::mutex> lock(shard.mutex);
  if (shard.map.size() >= kMaxEntriesPerShard) shard.map.clear();
  shard.map.emplace(word, ids);
}

// ---- encode
// ----------------------------------------------------------------------------------------

template <class OnText, class OnToken>
void Tokenizer::Impl::split_added(std::string_view text, const AddedTokenMatcher& matcher,
                                  bool split_special, OnText&& on_text, OnToken&& on_token) const {
  if (matcher.empty()) {
    if (!text.empty()) on_text(text);
    return;
  }
  auto is_word_char_at = [&](size_t pos, bool before) {
    // The character just before (or at) pos, tested against Rust regex `\w`.
    size_t begin = pos;
    if (before) {
      begin = pos - 1;
      while (begin > 0 && (static_cast<uint8_t>(text[begin]) & 0xC0) == 0x80) --begin;
    }
    uint32_t cp = 0;
    const size_t n = utf8_decode(text, begin, &cp);
    if (n == 0) return false;
    std::vector<std::pair<size_t, size_t>> spans;
    word_char->find_all(text.substr(begin, n), &spans);
    return !spans.empty();
  };
  size_t start_offset = 0;
  size_t search = 0;
  while (search < text.size()) {
    const AddedTokenMatcher::Match m = matcher.find(text, search);
    if (m.value < 0) break;
    search = m.end;
    const AddedTokenInfo& token = added[m.value];
    if (token.special && !split_special) continue;
    size_t start = m.begin, stop = m.end;
    if (token.single_word) {
      const bool word_before = start > 0 && is_word_char_at(start, true);
      const bool word_after = stop < text.size() && is_word_char_at(stop, false);
      if (word_before || word_after) continue;
    }
    if (token.lstrip) start = std::max(white_space_run_start(text, start), start_offset);
    if (token.rstrip) stop += white_space_run_length(text, stop);
    if (start_offset < start) on_text(text.substr(start_offset, start - start_offset));
    on_token(token.id);
    start_offset = stop;
  }
  if (start_offset < text.size()) on_text(text.substr(start_offset));
}

void Tokenizer::Impl::encode(std::string_view text, bool split_special,
                             std::vector<int32_t>* ids) const {
  if (utf8_valid(text)) {
    encode_text(text, split_special, ids);
  } else {
    encode_text(utf8_lossy(text), split_special, ids);
  }
}

void Tokenizer::Impl::encode_text(std::string_view text, bool split_special,
                                  std::vector<int32_t>* ids) const {
  auto emit = [ids](int32_t id) { ids->push_back(id); };
  split_added(
      text, raw_matcher, split_special,
      [&](std::string_view piece) {
        std::string normalized;
        if (nfc) {
          normalized = nfc_normalize(piece);
          piece = normalized;
        }
        split_added(
            piece, normalized_matcher, split_special,
            [&](std::string_view p) { pre_tokenize_and_bpe(p, ids); }, emit);
      },
      emit);
}

void Tokenizer::Impl::pre_tokenize_and_bpe(std::string_view text, std::vector<int32_t>* ids) const {
  std::vector<std::string> pieces{std::string(text)};
  std::vector<std::string> next;
  std::vector<std::pair<size_t, size_t>> spans;
  for (const PreTokenizerStep& step : pre_steps) {
    next.clear();
    for (std::string& piece : pieces) {
      if (step.kind == PreTokenizerStep::Kind::kByteLevel) {
        if (step.add_prefix_space && piece[0] != ' ') piece.insert(piece.begin(), ' ');
        if (!step.regex) {
          next.push_back(std::move(piece));
          continue;
        }
      }
      spans.clear();
      step.regex->find_all(piece, &spans);
      split_by_spans(piece, spans, step.behavior, step.invert, &next);
    }
    pieces.swap(next);
  }
  for (const std::string& piece : pieces) bpe(piece, ids);
}

void Tokenizer::Impl::bpe(const std::string& word, std::vector<int32_t>* ids) const {
  if (ignore_merges) {
    auto it = model_ids_by_bytes.find(word);
    if (it != model_ids_by_bytes.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  if (word.size() > WordCache::kMaxWordBytes) {
    bpe_uncached(word, ids);
    return;
  }
  if (cache.get(word, ids)) return;
  const size_t first = ids->size();
  bpe_uncached(word, ids);
  cache.put(word, std::vector<int32_t>(ids->begin() + first, ids->end()));
}

// `tokenizers`' Word::merge_all: a heap of candidate merges ordered by (rank, position); a
// popped candidate is stale when its left symbol was absorbed or its pair changed.
void Tokenizer::Impl::bpe_uncached(const std::string& word, std::vector<int32_t>* ids) const {
  struct Symbol {
    int32_t id, prev, next;
    bool alive;
  };
  struct Candidate {
    int32_t rank, pos, id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto push_symbol = [&symbols](int32_t id) {
    const int32_t n = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, n - 1, -1, true});
    if (n > 0) symbols[n - 1].next = n;
  };
  bool pending_unk = false;
  for (char c : word) {
    const int32_t id = byte_ids[static_cast<uint8_t>(c)];
    if (id >= 0) {
      if (pending_unk) push_symbol(unk_id);
      pending_unk = false;
      push_symbol(id);
    } else if (unk_id >= 0) {
      // Without unk_token the byte is dropped, as `tokenizers` does.
      if (pending_unk && !fuse_unk) push_symbol(unk_id);
      pending_unk = true;
    }
  }
  if (pending_unk) push_symbol(unk_id);
  if (symbols.empty()) return;

  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto consider = [&](int32_t pos) {
    const Symbol& left = symbols[pos];
    if (left.next < 0) return;
    auto it = merges.find(pair_key(left.id, symbols[left.next].id));
    if (it != merges.end()) queue.push({it->second.rank, pos, it->second.id});
  };
  for (int32_t pos = 0; pos + 1 < static_cast<int32_t>(symbols.size()); ++pos) consider(pos);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    const Symbol right = symbols[left.next];
    auto it = merges.find(pair_key(left.id, right.id));
    if (it == merges.end() || it->second.id != top.id) continue;
    symbols[left.next].alive = false;
    left.id = top.id;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(top.pos);
  }
  for (int32_t pos = 0; pos >= 0; pos = symbols[pos].next) ids->push_back(symbols[pos].id);
}

// ---- decode
// ----------------------------------------------------------------------------------------

std::string Tokenizer::Impl::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (id < 0 || id >= static_cast<int32_t>(tokens.size()) || !present[id]) continue;
    if (skip_special && special[id]) continue;
    bytes += token_bytes[id];
  }
  return utf8_valid(bytes) ? bytes : utf8_lossy(bytes);
}

// ---- Tokenizer
// ---------------------------------------------------------------------------------------

Tokenizer::Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

// PCRE2 giving up on a tokenizer's regex (or utf8proc failing) is the tokenizer file's fault,
// so the message names it.
std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  try {
    impl_->encode(text, /*split_special=*/true, &ids);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(impl_->origin + ": " + e.what());
  }
  return ids;
}

std::vector<int32_t> Tokenizer::encode_ordinary(std::string_view text) const {
  std::vector<int32_t> ids;
  try {
    impl_->encode(text, /*split_special=*/false, &ids);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(impl_->origin + ": " + e.what());
  }
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  return impl_->decode(ids, skip_special);
}

int32_t Tokenizer::token_to_id(std::string_view token) const {
  auto it = impl_->token_ids.find(std::string(token));
  return it == impl_->token_ids.end() ? -1 : it->second;
}

const std::string& Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= static_cast<int32_t>(impl_->tokens.size()) || !impl_->present[id]) {
    throw std::out_of_range("token id " + std::to_string(id) + " is not in the " +
                            std::to_string(impl_->tokens.size()) + "-id vocabulary of " +
                            impl_->origin);
  }
  return impl_->tokens[id];
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < static_cast<int32_t>(impl_->special.size()) && impl_->special[id];
}

int64_t Tokenizer::vocab_size() const {
  return static_cast<int64_t>(impl_->tokens.size());
}
int32_t Tokenizer::bos_id() const {
  return impl_->bos_id;
}
int32_t Tokenizer::eos_id() const {
  return impl_->eos_id;
}
int32_t Tokenizer::pad_id() const {
  return impl_->pad_id;
}
bool Tokenizer::add_bos() const {
  return impl_->add_bos;
}
const std::string& Tokenizer::chat_template() const {
  return impl_->chat_template;
}
std::string Tokenizer::fingerprint() const {
  return impl_->fingerprint;
}

}  // namespace ramstream::data
