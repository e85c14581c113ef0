// Building a Tokenizer from tokenizer.json (+ tokenizer_config.json) or GGUF metadata, and
// writing one back as tokenizer.json + tokenizer_config.json.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <unordered_set>

#include "checkpoint/atomic_file.h"
#include "checkpoint/gguf.h"
#include "data/tokenizer.h"
#include "data/tokenizer_impl.h"
#include "data/unicode_utf8.h"
#include "util/json_read.h"
#include "util/user_file.h"

namespace ramstream::data {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// The regexes of tokenizer.json files for each family (Hugging Face's spelling).
constexpr const char* kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Rust regex `\w` (Unicode): what `tokenizers` tests single_word tokens' neighbours with.
constexpr const char* kWordCharRegex = R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}])";

// Ids are dense in every real vocabulary; a hostile file must not make us allocate billions.
constexpr int64_t kMaxIdSlack = 1 << 16;
// Sizes far beyond any byte-level BPE tokenizer (Llama-3: 128256 tokens, 280147 merges; files of
// 10-20 MB), bounding what a hostile file can make us build.
constexpr uint64_t kMaxTokenizerJsonBytes = 128ull << 20;
constexpr uint64_t kMaxTokenizerJsonValues = 1ull << 23;
constexpr size_t kMaxVocabEntries = size_t{1} << 22;
constexpr size_t kMaxMerges = size_t{1} << 22;
constexpr size_t kMaxAddedTokens = size_t{1} << 20;
// Sequences of pre-tokenizers / normalizers / processors nest one or two levels in real files.
constexpr int kMaxSequenceDepth = 8;
constexpr size_t kMaxSequenceSteps = 64;
constexpr uint64_t kMaxChatTemplateBytes = 16ull << 20;

Result<std::shared_ptr<const TokenizerRegex>> compile_regex(const char* pattern) {
  return TokenizerRegex::compile(pattern);
}

// Error helpers: every message names the file and the key path.
struct Ctx {
  std::string file;
  Error fail(const std::string& key, const std::string& what) const {
    return Error{file + ": key '" + key + "': " + what};
  }
};

std::string type_name(const json& j) {
  return j.type_name();
}

Status read_bool(const Ctx& ctx, const json& obj, const char* name, const std::string& key,
                 bool fallback, bool* out) {
  auto it = obj.find(name);
  if (it == obj.end() || it->is_null()) {
    *out = fallback;
    return Ok{};
  }
  if (!it->is_boolean())
    return ctx.fail(key, std::string("expected a boolean, found ") + type_name(*it));
  *out = it->get<bool>();
  return Ok{};
}

// A string, {"content": "..."} (AddedToken as transformers saves it), or null/absent ("").
Status read_token_string(const Ctx& ctx, const json& obj, const char* name, const std::string& key,
                         std::string* out, bool* present) {
  *present = false;
  auto it = obj.find(name);
  if (it == obj.end() || it->is_null()) return Ok{};
  if (it->is_string()) {
    *out = it->get<std::string>();
  } else if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    *out = (*it)["content"].get<std::string>();
  } else {
    return ctx.fail(key, "expected a string or {\"content\": ...}, found " + type_name(*it));
  }
  *present = true;
  return Ok{};
}

// tokenizer.json and tokenizer_config.json through the bounded reader (util/json_read.h).
Result<json> read_tokenizer_file(const std::string& path, const char* what) {
  JsonLimits limits;
  limits.max_bytes = kMaxTokenizerJsonBytes;
  limits.max_values = kMaxTokenizerJsonValues;
  return read_json_file(path, what, limits);
}

// A JSON string for messages: quoted as in the file, cut to 80 bytes.
std::string shown(const std::string& s);

// ---- pre-tokenizer / normalizer / post-processor / decoder sections --------------------------

// A Sequence nested in Sequences `depth` deep, or with too many members, is refused (real files:
// one level, a few members); `key` names the list.
Status check_sequence(const Ctx& ctx, const json& list, const std::string& key, int depth) {
  if (depth >= kMaxSequenceDepth) {
    return ctx.fail(key, "Sequences nest deeper than " + std::to_string(kMaxSequenceDepth) +
                             " levels (corrupt or hostile)");
  }
  if (list.size() > kMaxSequenceSteps) {
    return ctx.fail(key, std::to_string(list.size()) + " members, more than the " +
                             std::to_string(kMaxSequenceSteps) + " supported");
  }
  return Ok{};
}

Status parse_pre_tokenizer(const Ctx& ctx, const json& j, const std::string& key,
                           std::vector<PreTokenizerStep>* steps, int depth = 0) {
  if (!j.is_object()) return ctx.fail(key, "expected an object, found " + type_name(j));
  auto type_it = j.find("type");
  if (type_it == j.end() || !type_it->is_string()) return ctx.fail(key + ".type", "missing");
  const std::string type = type_it->get<std::string>();
  if (type == "Sequence") {
    auto list = j.find("pretokenizers");
    if (list == j.end() || !list->is_array()) {
      return ctx.fail(key + ".pretokenizers", "expected an array");
    }
    Status st = check_sequence(ctx, *list, key + ".pretokenizers", depth);
    for (size_t i = 0; st.ok() && i < list->size(); ++i) {
      st = parse_pre_tokenizer(ctx, (*list)[i], key + ".pretokenizers[" + std::to_string(i) + "]",
                               steps, depth + 1);
    }
    if (!st.ok()) return st.error();
    if (steps->size() > kMaxSequenceSteps) {
      return ctx.fail(
          key, "more than " + std::to_string(kMaxSequenceSteps) + " pre-tokenizer steps in all");
    }
    return Ok{};
  }
  PreTokenizerStep step;
  if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::kByteLevel;
    bool use_regex = true;
    // `tokenizers`' defaults when a key is absent: add_prefix_space and use_regex true.
    Status st = read_bool(ctx, j, "add_prefix_space", key + ".add_prefix_space", true,
                          &step.add_prefix_space);
    if (st.ok()) st = read_bool(ctx, j, "use_regex", key + ".use_regex", true, &use_regex);
    if (!st.ok()) return st.error();
    if (use_regex) {
      Result<std::shared_ptr<const TokenizerRegex>> re = compile_regex(kGpt2Regex);
      if (!re.ok()) return ctx.fail(key, re.error().message);
      step.regex = re.value();
    }
  } else if (type == "Digits") {
    bool individual = false;
    Status st =
        read_bool(ctx, j, "individual_digits", key + ".individual_digits", false, &individual);
    if (!st.ok()) return st.error();
    Result<std::shared_ptr<const TokenizerRegex>> re = compile_regex(kDigitsPattern);
    if (!re.ok()) return ctx.fail(key, re.error().message);
    step.regex = re.value();
    step.behavior = individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous;
  } else if (type == "Split") {
    auto pattern = j.find("pattern");
    if (pattern == j.end() || !pattern->is_object()) {
      return ctx.fail(key + ".pattern", "expected {\"Regex\": ...} or {\"String\": ...}");
    }
    Result<std::shared_ptr<const TokenizerRegex>> re = Error{""};
    if (pattern->contains("Regex") && (*pattern)["Regex"].is_string()) {
      re = TokenizerRegex::compile((*pattern)["Regex"].get<std::string>());
    } else if (pattern->contains("String") && (*pattern)["String"].is_string()) {
      re = TokenizerRegex::literal((*pattern)["String"].get<std::string>());
    } else {
      return ctx.fail(key + ".pattern", "expected {\"Regex\": ...} or {\"String\": ...}");
    }
    if (!re.ok()) return ctx.fail(key + ".pattern", re.error().message);
    step.regex = re.value();
    auto behavior = j.find("behavior");
    if (behavior == j.end() || !behavior->is_string()) {
      return ctx.fail(key + ".behavior", "missing");
    }
    const std::string b = behavior->get<std::string>();
    if (b == "Removed") {
      step.behavior = SplitBehavior::kRemoved;
    } else if (b == "Isolated") {
      step.behavior = SplitBehavior::kIsolated;
    } else if (b == "MergedWithPrevious") {
      step.behavior = SplitBehavior::kMergedWithPrevious;
    } else if (b == "MergedWithNext") {
      step.behavior = SplitBehavior::kMergedWithNext;
    } else if (b == "Contiguous") {
      step.behavior = SplitBehavior::kContiguous;
    } else {
      return ctx.fail(key + ".behavior", "unknown split behavior " + quote_bounded(b));
    }
    Status st = read_bool(ctx, j, "invert", key + ".invert", false, &step.invert);
    if (!st.ok()) return st.error();
  } else {
    return ctx.fail(key + ".type", "pre-tokenizer " + quote_bounded(type) +
                                       " is not supported (Sequence, Split, Digits, ByteLevel)");
  }
  steps->push_back(std::move(step));
  return Ok{};
}

Status parse_normalizer(const Ctx& ctx, const json& j, const std::string& key, bool* nfc,
                        int depth = 0) {
  if (j.is_null()) return Ok{};
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) {
    return ctx.fail(key, "expected null or an object with a type");
  }
  const std::string type = j["type"].get<std::string>();
  if (type == "NFC") {
    *nfc = true;
    return Ok{};
  }
  if (type == "Sequence") {
    auto list = j.find("normalizers");
    if (list == j.end() || !list->is_array()) {
      return ctx.fail(key + ".normalizers", "expected an array");
    }
    Status st = check_sequence(ctx, *list, key + ".normalizers", depth);
    for (size_t i = 0; st.ok() && i < list->size(); ++i) {
      st = parse_normalizer(ctx, (*list)[i], key + ".normalizers[" + std::to_string(i) + "]", nfc,
                            depth + 1);
    }
    if (!st.ok()) return st.error();
    return Ok{};
  }
  return ctx.fail(key + ".type",
                  "normalizer " + quote_bounded(type) + " is not supported (NFC only)");
}

// The special token TemplateProcessing puts first in a single sequence ("" when none).
Status parse_post_processor(const Ctx& ctx, const json& j, const std::string& key,
                            std::string* leading_special, int depth = 0) {
  if (j.is_null()) return Ok{};
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) {
    return ctx.fail(key, "expected null or an object with a type");
  }
  const std::string type = j["type"].get<std::string>();
  if (type == "ByteLevel") return Ok{};  // offsets only
  if (type == "Sequence") {
    auto list = j.find("processors");
    if (list == j.end() || !list->is_array()) {
      return ctx.fail(key + ".processors", "expected an array");
    }
    Status st = check_sequence(ctx, *list, key + ".processors", depth);
    for (size_t i = 0; st.ok() && i < list->size(); ++i) {
      st = parse_post_processor(ctx, (*list)[i], key + ".processors[" + std::to_string(i) + "]",
                                leading_special, depth + 1);
    }
    if (!st.ok()) return st.error();
    return Ok{};
  }
  if (type == "TemplateProcessing") {
    auto single = j.find("single");
    if (single == j.end() || !single->is_array()) {
      return ctx.fail(key + ".single", "expected an array");
    }
    if (!single->empty()) {
      const json& first = (*single)[0];
      if (first.is_object() && first.contains("SpecialToken")) {
        const json& st = first["SpecialToken"];
        if (!st.is_object() || !st.contains("id") || !st["id"].is_string()) {
          return ctx.fail(key + ".single[0].SpecialToken.id", "expected a string");
        }
        *leading_special = st["id"].get<std::string>();
      }
    }
    return Ok{};
  }
  return ctx.fail(key + ".type", "post-processor " + quote_bounded(type) +
                                     " is not supported (TemplateProcessing, ByteLevel)");
}

Status check_decoder(const Ctx& ctx, const json& j, const std::string& key) {
  if (j.is_object() && j.contains("type") && j["type"] == "ByteLevel") return Ok{};
  if (j.is_object() && j.contains("type") && j["type"] == "Sequence" && j.contains("decoders") &&
      j["decoders"].is_array() && j["decoders"].size() == 1) {
    return check_decoder(ctx, j["decoders"][0], key + ".decoders[0]");
  }
  return ctx.fail(key, "decoder " +
                           describe_json(j.is_object() && j.contains("type") ? j["type"] : j) +
                           " is not supported (ByteLevel only)");
}

// ---- tokenizer_config.json ----------------------------------------------------------------------

struct ConfigTokens {
  std::string bos, eos, pad, unk;
  bool has_bos = false, has_eos = false, has_pad = false, has_unk = false;
  bool has_add_bos = false, add_bos = false;
  std::string chat_template;
};

Status parse_tokenizer_config(const std::string& path, ConfigTokens* out) {
  Result<json> doc = read_tokenizer_file(path, "the tokenizer config (tokenizer_config.json)");
  if (!doc.ok()) return doc.error();
  const json& j = doc.value();
  const Ctx ctx{path};
  if (!j.is_object()) return Error{path + ": expected a JSON object, found " + describe_json(j)};
  Status st = read_token_string(ctx, j, "bos_token", "bos_token", &out->bos, &out->has_bos);
  if (st.ok()) st = read_token_string(ctx, j, "eos_token", "eos_token", &out->eos, &out->has_eos);
  if (st.ok()) st = read_token_string(ctx, j, "pad_token", "pad_token", &out->pad, &out->has_pad);
  if (st.ok()) st = read_token_string(ctx, j, "unk_token", "unk_token", &out->unk, &out->has_unk);
  if (!st.ok()) return st.error();
  auto add_bos = j.find("add_bos_token");
  if (add_bos != j.end() && !add_bos->is_null()) {
    if (!add_bos->is_boolean()) return ctx.fail("add_bos_token", "expected a boolean");
    out->has_add_bos = true;
    out->add_bos = add_bos->get<bool>();
  }
  auto tmpl = j.find("chat_template");
  if (tmpl != j.end() && !tmpl->is_null()) {
    if (tmpl->is_string()) {
      out->chat_template = tmpl->get<std::string>();
    } else if (tmpl->is_array()) {
      // Named templates (transformers 4.x): take "default", else the first.
      for (const json& t : *tmpl) {
        if (!t.is_object() || !t.contains("template") || !t["template"].is_string()) {
          return ctx.fail("chat_template", "expected [{\"name\", \"template\"}, ...]");
        }
        if (out->chat_template.empty() || (t.contains("name") && t["name"] == "default")) {
          out->chat_template = t["template"].get<std::string>();
        }
      }
    } else {
      return ctx.fail("chat_template", "expected a string, found " + type_name(*tmpl));
    }
  }
  return Ok{};
}

// A GGUF/tokenizer.json id that must fit int32 and a sane vocabulary size.
bool id_in_range(int64_t id) {
  return id >= 0 && id < (int64_t{1} << 30);
}

// Ill-formed UTF-8 (possible in GGUF strings) is written as U+FFFD instead of throwing.
std::string json_quoted(const std::string& s) {
  return json(s).dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string shown(const std::string& s) {
  constexpr size_t kMax = 80;
  if (s.size() <= kMax) return json_quoted(s);
  size_t n = kMax;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return json_quoted(s.substr(0, n)) + "... (" + std::to_string(s.size()) + " bytes)";
}

// Two FNV-1a 64-bit hashes with different offsets: a 128-bit identity for cache keys (not
// cryptographic; tokenizers are not adversaries of their own caches).
std::string fingerprint_of(const std::string& text) {
  uint64_t a = 0xcbf29ce484222325ull, b = 0x84222325cbf29ce4ull;
  for (unsigned char c : text) {
    a = (a ^ c) * 0x100000001b3ull;
    b = (b ^ c) * 0x100000001b3ull;
    b ^= b >> 29;
  }
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%016llx%016llx", static_cast<unsigned long long>(a),
                static_cast<unsigned long long>(b));
  return buf;
}

}  // namespace

// ---- Impl::finish
// --------------------------------------------------------------------------------

Status Tokenizer::Impl::finish(
    const std::vector<std::pair<std::string, std::string>>& merge_strings,
    const std::string& merges_key) {
  const Ctx ctx{origin};
  std::unordered_map<std::string, int32_t> model_map;
  model_map.reserve(model_vocab.size());
  int64_t max_id = -1;
  for (const auto& [token, id] : model_vocab) {
    model_map[token] = id;
    max_id = std::max<int64_t>(max_id, id);
  }
  for (const AddedTokenInfo& a : added) max_id = std::max<int64_t>(max_id, a.id);
  const int64_t entries = static_cast<int64_t>(model_vocab.size() + added.size());
  if (max_id >= entries + kMaxIdSlack) {
    return Error{origin + ": token id " + std::to_string(max_id) + " is far beyond the " +
                 std::to_string(entries) + " tokens defined: ids must be (nearly) dense"};
  }
  const size_t size = static_cast<size_t>(max_id + 1);
  tokens.assign(size, std::string());
  present.assign(size, 0);
  special.assign(size, 0);
  token_bytes.assign(size, std::string());
  for (const auto& [token, id] : model_vocab) {
    if (present[id] && tokens[id] != token) {
      return Error{origin + ": token id " + std::to_string(id) + " is used by both " +
                   shown(tokens[id]) + " and " + shown(token)};
    }
    tokens[id] = token;
    present[id] = 1;
  }
  for (const AddedTokenInfo& a : added) {
    tokens[a.id] = a.content;
    present[a.id] = 1;
    if (a.special) special[a.id] = 1;
  }
  token_ids = model_map;
  for (const AddedTokenInfo& a : added) token_ids[a.content] = a.id;

  model_ids_by_bytes.clear();
  std::string bytes;
  for (const auto& [token, id] : model_map) {
    if (byte_level_decode(token, &bytes)) model_ids_by_bytes[bytes] = id;
  }
  for (size_t id = 0; id < size; ++id) {
    if (!present[id]) continue;
    if (!byte_level_decode(tokens[id], &token_bytes[id])) token_bytes[id] = tokens[id];
  }
  for (int b = 0; b < 256; ++b) {
    std::string symbol;
    utf8_append(byte_to_symbol(static_cast<uint8_t>(b)), &symbol);
    auto it = model_map.find(symbol);
    byte_ids[b] = it == model_map.end() ? -1 : it->second;
  }

  merges.clear();
  merges.reserve(merge_strings.size());
  merge_pairs.clear();
  merge_pairs.reserve(merge_strings.size());
  for (size_t rank = 0; rank < merge_strings.size(); ++rank) {
    const auto& [left, right] = merge_strings[rank];
    const std::string key = merges_key + "[" + std::to_string(rank) + "]";
    auto l = model_map.find(left);
    auto r = model_map.find(right);
    auto m = model_map.find(left + right);
    if (l == model_map.end() || r == model_map.end()) {
      return ctx.fail(
          key, "token " + shown(l == model_map.end() ? left : right) + " is not in the vocabulary");
    }
    if (m == model_map.end()) {
      return ctx.fail(key, "merged token " + shown(left + right) + " is not in the vocabulary");
    }
    uint64_t pair = (static_cast<uint64_t>(static_cast<uint32_t>(l->second)) << 32) |
                    static_cast<uint32_t>(r->second);
    merges[pair] = MergeTarget{static_cast<int32_t>(rank), m->second};
    merge_pairs.emplace_back(l->second, r->second);
  }

  unk_id = -1;
  if (!unk_token.empty()) {
    auto it = model_map.find(unk_token);
    if (it == model_map.end()) {
      return ctx.fail("model.unk_token", "token " + shown(unk_token) + " is not in the vocabulary");
    }
    unk_id = it->second;
  }

  raw_matcher = AddedTokenMatcher();
  normalized_matcher = AddedTokenMatcher();
  for (size_t i = 0; i < added.size(); ++i) {
    const AddedTokenInfo& a = added[i];
    if (a.normalized) {
      normalized_matcher.add(nfc ? nfc_normalize(a.content) : a.content, static_cast<int32_t>(i));
    } else {
      raw_matcher.add(a.content, static_cast<int32_t>(i));
    }
  }
  Result<std::shared_ptr<const TokenizerRegex>> word = compile_regex(kWordCharRegex);
  if (!word.ok()) return Error{origin + ": " + word.error().message};
  word_char = word.value();

  // The pre-tokenizer must end in ByteLevel: BPE here works on bytes.
  if (pre_steps.empty() || pre_steps.back().kind != PreTokenizerStep::Kind::kByteLevel) {
    return ctx.fail("pre_tokenizer",
                    "not a byte-level BPE tokenizer: the pre-tokenizer must "
                    "end with ByteLevel");
  }
  for (size_t i = 0; i + 1 < pre_steps.size(); ++i) {
    if (pre_steps[i].kind == PreTokenizerStep::Kind::kByteLevel) {
      return ctx.fail("pre_tokenizer", "ByteLevel must be the last pre-tokenizer");
    }
  }
  return Ok{};
}

// ---- tokenizer.json ----------------------------------------------------------------------------

Result<Tokenizer> Tokenizer::from_tokenizer_json(const std::string& path) {
  Result<json> doc = read_tokenizer_file(path, "the tokenizer (tokenizer.json)");
  if (!doc.ok()) return doc.error();
  const json& j = doc.value();
  const Ctx ctx{path};
  if (!j.is_object()) return Error{path + ": expected a JSON object, found " + describe_json(j)};
  auto impl = std::make_shared<Impl>();
  impl->origin = path;

  // model
  auto model_it = j.find("model");
  if (model_it == j.end() || !model_it->is_object()) return ctx.fail("model", "missing");
  const json& model = *model_it;
  if (model.contains("type")) {
    if (!model["type"].is_string() || model["type"] != "BPE") {
      return ctx.fail("model.type", "model " + describe_json(model["type"]) +
                                        " is not supported (byte-level BPE only)");
    }
  } else if (!model.contains("merges")) {
    return ctx.fail("model.type", "missing, and no merges: not a BPE model");
  }
  auto vocab_it = model.find("vocab");
  if (vocab_it == model.end() || !vocab_it->is_object()) {
    return ctx.fail("model.vocab", "expected an object {token: id}");
  }
  if (vocab_it->empty()) {
    return ctx.fail("model.vocab", "empty: the tokenizer defines no tokens");
  }
  if (vocab_it->size() > kMaxVocabEntries) {
    return ctx.fail("model.vocab", std::to_string(vocab_it->size()) + " tokens, more than the " +
                                       std::to_string(kMaxVocabEntries) + " supported");
  }
  impl->model_vocab.reserve(vocab_it->size());
  for (auto it = vocab_it->begin(); it != vocab_it->end(); ++it) {
    if (!it.value().is_number_integer() || !id_in_range(it.value().get<int64_t>())) {
      return ctx.fail("model.vocab." + it.key().substr(0, 80),
                      "expected a token id, found " + describe_json(it.value()));
    }
    impl->model_vocab.emplace_back(it.key(), static_cast<int32_t>(it.value().get<int64_t>()));
  }
  std::sort(impl->model_vocab.begin(), impl->model_vocab.end(),
            [](const auto& a, const auto& b) { return a.second < b.second; });

  std::vector<std::pair<std::string, std::string>> merge_strings;
  auto merges_it = model.find("merges");
  if (merges_it == model.end() || !merges_it->is_array()) {
    return ctx.fail("model.merges", "expected an array");
  }
  if (merges_it->size() > kMaxMerges) {
    return ctx.fail("model.merges", std::to_string(merges_it->size()) + " merges, more than the " +
                                        std::to_string(kMaxMerges) + " supported");
  }
  merge_strings.reserve(merges_it->size());
  for (size_t i = 0; i < merges_it->size(); ++i) {
    const json& m = (*merges_it)[i];
    const std::string key = "model.merges[" + std::to_string(i) + "]";
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return ctx.fail(key, "expected \"left right\" (one space), found " + describe_json(m));
      }
      merge_strings.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merge_strings.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return ctx.fail(
          key, "expected \"left right\" or [\"left\", \"right\"], found " + describe_json(m));
    }
  }
  {
    auto dropout = model.find("dropout");
    if (dropout != model.end() && !dropout->is_null() &&
        !(dropout->is_number() && dropout->get<double>() == 0.0)) {
      return ctx.fail("model.dropout", "BPE dropout is for training only; expected null");
    }
    for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      auto a = model.find(affix);
      if (a != model.end() && !a->is_null() && !(a->is_string() && a->get<std::string>().empty())) {
        return ctx.fail(std::string("model.") + affix,
                        "not supported in byte-level BPE, found " + describe_json(*a));
      }
    }
    bool byte_fallback = false;
    Status st =
        read_bool(ctx, model, "byte_fallback", "model.byte_fallback", false, &byte_fallback);
    if (st.ok() && byte_fallback) {
      return ctx.fail("model.byte_fallback", "not supported (SentencePiece-style BPE)");
    }
    if (st.ok()) st = read_bool(ctx, model, "fuse_unk", "model.fuse_unk", false, &impl->fuse_unk);
    if (st.ok()) {
      st = read_bool(ctx, model, "ignore_merges", "model.ignore_merges", false,
                     &impl->ignore_merges);
    }
    if (!st.ok()) return st.error();
    bool has_unk = false;
    st = read_token_string(ctx, model, "unk_token", "model.unk_token", &impl->unk_token, &has_unk);
    if (!st.ok()) return st.error();
  }

  // added tokens: the id is the model's when the content is in its vocabulary (as `tokenizers`
  // assigns it), else the one written.
  std::unordered_map<std::string, int32_t> model_map;
  std::unordered_map<int32_t, const std::string*> model_by_id;
  for (const auto& [token, id] : impl->model_vocab) {
    model_map[token] = id;
    model_by_id[id] = &token;
  }
  auto added_it = j.find("added_tokens");
  if (added_it != j.end() && !added_it->is_null()) {
    if (!added_it->is_array()) return ctx.fail("added_tokens", "expected an array");
    if (added_it->size() > kMaxAddedTokens) {
      return ctx.fail("added_tokens", std::to_string(added_it->size()) + " tokens, more than the " +
                                          std::to_string(kMaxAddedTokens) + " supported");
    }
    std::unordered_set<std::string> seen;
    std::unordered_map<int32_t, std::string> added_ids;
    for (size_t i = 0; i < added_it->size(); ++i) {
      const json& a = (*added_it)[i];
      const std::string key = "added_tokens[" + std::to_string(i) + "]";
      if (!a.is_object()) return ctx.fail(key, "expected an object");
      AddedTokenInfo info;
      if (!a.contains("content") || !a["content"].is_string()) {
        return ctx.fail(key + ".content", "expected a string");
      }
      info.content = a["content"].get<std::string>();
      if (!a.contains("id") || !a["id"].is_number_integer() ||
          !id_in_range(a["id"].get<int64_t>())) {
        return ctx.fail(key + ".id", "expected a token id");
      }
      info.id = static_cast<int32_t>(a["id"].get<int64_t>());
      // Every flag is required, as `tokenizers` requires it.
      for (auto [name, flag] : {std::pair<const char*, bool*>{"special", &info.special},
                                {"single_word", &info.single_word},
                                {"lstrip", &info.lstrip},
                                {"rstrip", &info.rstrip},
                                {"normalized", &info.normalized}}) {
        if (!a.contains(name) || !a[name].is_boolean()) {
          return ctx.fail(key + "." + name, "expected a boolean");
        }
        *flag = a[name].get<bool>();
      }
      if (info.content.empty() || !seen.insert(info.content).second) continue;
      auto in_model = model_map.find(info.content);
      if (in_model != model_map.end()) {
        info.id = in_model->second;
      } else if (auto owner = model_by_id.find(info.id); owner != model_by_id.end()) {
        return ctx.fail(key + ".id", "id " + std::to_string(info.id) + " of " +
                                         shown(info.content) + " belongs to " +
                                         shown(*owner->second));
      }
      auto [other, inserted] = added_ids.emplace(info.id, info.content);
      if (!inserted) {
        return ctx.fail(key + ".id", "id " + std::to_string(info.id) + " is used by " +
                                         shown(other->second) + " too");
      }
      impl->added.push_back(std::move(info));
    }
  }

  // normalizer / pre_tokenizer / post_processor / decoder
  const json null_json;
  auto section = [&](const char* name) -> const json& {
    auto it = j.find(name);
    return it == j.end() ? null_json : *it;
  };
  Status st = parse_normalizer(ctx, section("normalizer"), "normalizer", &impl->nfc);
  if (!st.ok()) return st.error();
  if (section("pre_tokenizer").is_null()) {
    return ctx.fail("pre_tokenizer", "missing: not a byte-level BPE tokenizer");
  }
  st = parse_pre_tokenizer(ctx, section("pre_tokenizer"), "pre_tokenizer", &impl->pre_steps);
  if (!st.ok()) return st.error();
  std::string template_bos;
  st = parse_post_processor(ctx, section("post_processor"), "post_processor", &template_bos);
  if (!st.ok()) return st.error();
  st = check_decoder(ctx, section("decoder"), "decoder");
  if (!st.ok()) return st.error();
  impl->normalizer_json = section("normalizer");
  impl->pre_tokenizer_json = section("pre_tokenizer");
  impl->post_processor_json = section("post_processor");
  impl->decoder_json = section("decoder");

  st = impl->finish(merge_strings, "model.merges");
  if (!st.ok()) return st.error();

  // tokenizer_config.json (and transformers 5's chat_template.jinja) beside it.
  const fs::path dir = fs::path(path).parent_path();
  ConfigTokens config;
  const fs::path config_path = dir / "tokenizer_config.json";
  std::error_code ec;
  if (fs::exists(config_path, ec)) {
    st = parse_tokenizer_config(config_path.string(), &config);
    if (!st.ok()) return st.error();
  }
  const fs::path jinja_path = dir / "chat_template.jinja";
  if (config.chat_template.empty() && fs::exists(jinja_path, ec)) {
    Result<std::string> text =
        read_user_file(jinja_path.string(), "the chat template", kMaxChatTemplateBytes);
    if (!text.ok()) return text.error();
    config.chat_template = std::move(text).value();
  }
  const Ctx config_ctx{config_path.string()};
  auto resolve = [&](bool has, const std::string& token, const char* key, int32_t* id) -> Status {
    if (!has) return Ok{};
    auto it = impl->token_ids.find(token);
    if (it == impl->token_ids.end()) {
      return config_ctx.fail(key, "token " + shown(token) + " is not in the vocabulary of " + path);
    }
    *id = it->second;
    return Ok{};
  };
  st = resolve(config.has_bos, config.bos, "bos_token", &impl->bos_id);
  if (st.ok()) st = resolve(config.has_eos, config.eos, "eos_token", &impl->eos_id);
  if (st.ok()) st = resolve(config.has_pad, config.pad, "pad_token", &impl->pad_id);
  if (st.ok()) st = resolve(config.has_unk, config.unk, "unk_token", &impl->unk_config_id);
  if (!st.ok()) return st.error();
  int32_t template_bos_id = -1;
  if (!template_bos.empty()) {
    auto it = impl->token_ids.find(template_bos);
    if (it == impl->token_ids.end()) {
      return ctx.fail("post_processor.single[0]",
                      "token " + shown(template_bos) + " is not in the vocabulary");
    }
    template_bos_id = it->second;
  }
  if (impl->bos_id < 0) impl->bos_id = template_bos_id;
  impl->add_bos =
      config.has_add_bos ? config.add_bos : template_bos_id >= 0 && template_bos_id == impl->bos_id;
  impl->chat_template = config.chat_template;
  impl->fingerprint = fingerprint_of(impl->tokenizer_json());
  return Tokenizer(std::move(impl));
}

// ---- GGUF
// ------------------------------------------------------------------------------------------

namespace {

struct GgufPre {
  const char* names[3];
  enum class Family { kGpt2, kLlama3, kQwen2, kDigitsGpt2 } family;
};

// llama.cpp's tokenizer.ggml.pre names (llama-vocab.cpp) whose Hugging Face tokenizer.json is
// known; each maps to that file's normalizer and pre-tokenizer.
constexpr GgufPre kGgufPres[] = {
    {{"gpt-2", "default", ""}, GgufPre::Family::kGpt2},
    {{"llama-bpe", "llama3", "llama-v3"}, GgufPre::Family::kLlama3},
    {{"qwen2", nullptr, nullptr}, GgufPre::Family::kQwen2},
    {{"smollm", "starcoder", nullptr}, GgufPre::Family::kDigitsGpt2},
};

json byte_level_json(bool use_regex) {
  return json{{"type", "ByteLevel"},
              {"add_prefix_space", false},
              {"trim_offsets", true},
              {"use_regex", use_regex}};
}

json split_json(const char* regex) {
  return json{{"type", "Split"},
              {"pattern", {{"Regex", regex}}},
              {"behavior", "Isolated"},
              {"invert", false}};
}

// What a GGUF pre-tokenizer family stands for in tokenizer.json terms (from_gguf builds it,
// to_gguf recognises it).
struct GgufPreSpec {
  json pre_tokenizer;
  bool ignore_merges = false;
  bool nfc = false;
};

GgufPreSpec gguf_pre_spec(GgufPre::Family family) {
  GgufPreSpec spec;
  switch (family) {
    case GgufPre::Family::kGpt2:
      spec.pre_tokenizer = byte_level_json(true);
      break;
    case GgufPre::Family::kLlama3:
      spec.pre_tokenizer = {
          {"type", "Sequence"},
          {"pretokenizers", json::array({split_json(kLlama3Regex), byte_level_json(false)})}};
      spec.ignore_merges = true;
      break;
    case GgufPre::Family::kQwen2:
      spec.pre_tokenizer = {
          {"type", "Sequence"},
          {"pretokenizers", json::array({split_json(kQwen2Regex), byte_level_json(false)})}};
      spec.nfc = true;
      break;
    case GgufPre::Family::kDigitsGpt2:
      spec.pre_tokenizer = {
          {"type", "Sequence"},
          {"pretokenizers", json::array({json{{"type", "Digits"}, {"individual_digits", true}},
                                         byte_level_json(true)})}};
      break;
  }
  return spec;
}

// `j` without ByteLevel's trim_offsets, which moves offsets and never changes ids.
json without_trim_offsets(json j) {
  if (j.is_object()) {
    j.erase("trim_offsets");
    for (auto& [key, value] : j.items()) value = without_trim_offsets(value);
  } else if (j.is_array()) {
    for (json& value : j) value = without_trim_offsets(value);
  }
  return j;
}

}  // namespace

Result<Tokenizer> Tokenizer::from_gguf(const checkpoint::GgufTokenizer& meta,
                                       const std::string& origin) {
  const Ctx ctx{origin};
  if (meta.model == "llama") {
    return ctx.fail("tokenizer.ggml.model",
                    "SentencePiece ('llama') tokenizers are not supported; only byte-level BPE "
                    "('gpt2')");
  }
  if (meta.model != "gpt2") {
    return ctx.fail("tokenizer.ggml.model", "tokenizer model '" + meta.model +
                                                "' is not supported; only byte-level BPE "
                                                "('gpt2')");
  }
  const GgufPre* pre = nullptr;
  std::string supported;
  for (const GgufPre& p : kGgufPres) {
    for (const char* name : p.names) {
      if (!name) continue;
      if (meta.pre == name) pre = &p;
      if (*name) supported += std::string(supported.empty() ? "" : ", ") + "'" + name + "'";
    }
  }
  if (!pre) {
    return ctx.fail("tokenizer.ggml.pre",
                    "pre-tokenizer '" + meta.pre + "' is not supported (known: " + supported + ")");
  }
  auto impl = std::make_shared<Impl>();
  impl->origin = origin;
  const GgufPreSpec spec = gguf_pre_spec(pre->family);
  const json& pre_json = spec.pre_tokenizer;
  impl->ignore_merges = spec.ignore_merges;
  impl->nfc = spec.nfc;
  if (spec.nfc) impl->normalizer_json = {{"type", "NFC"}};
  Status st = parse_pre_tokenizer(ctx, pre_json, "pre_tokenizer", &impl->pre_steps);
  if (!st.ok()) return st.error();
  impl->pre_tokenizer_json = pre_json;
  impl->decoder_json = byte_level_json(true);

  // Vocabulary as transformers spells it: a token with a character outside the byte alphabet is
  // respelled from its UTF-8 bytes; a later duplicate wins.
  const int64_t n = static_cast<int64_t>(meta.tokens.size());
  if (n == 0) return ctx.fail("tokenizer.ggml.tokens", "empty vocabulary");
  if (n >= (int64_t{1} << 30)) return ctx.fail("tokenizer.ggml.tokens", "too many tokens");
  std::vector<std::string> spelled(meta.tokens.size());
  std::vector<uint8_t> in_alphabet(meta.tokens.size());
  std::unordered_map<std::string, int32_t> vocab;
  vocab.reserve(meta.tokens.size());
  std::string bytes;
  for (int64_t id = 0; id < n; ++id) {
    const std::string& token = meta.tokens[id];
    in_alphabet[id] = byte_level_decode(token, &bytes);
    spelled[id] = in_alphabet[id] ? token : byte_level_encode(token);
    vocab[spelled[id]] = static_cast<int32_t>(id);
  }
  for (int64_t id = 0; id < n; ++id) {
    if (vocab[spelled[id]] == id) impl->model_vocab.emplace_back(spelled[id], id);
  }

  std::vector<std::pair<std::string, std::string>> merge_strings;
  merge_strings.reserve(meta.merges.size());
  for (size_t i = 0; i < meta.merges.size(); ++i) {
    const std::string& s = meta.merges[i];
    const size_t space = s.find(' ');
    if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
      return ctx.fail("tokenizer.ggml.merges[" + std::to_string(i) + "]",
                      "expected \"left right\" (one space), found " + json_quoted(s));
    }
    merge_strings.emplace_back(s.substr(0, space), s.substr(space + 1));
  }

  // Control tokens (type 3) are special; user-defined ones (type 4) are matched whole but not
  // special; bos/eos/pad/unk are special too (transformers registers them so). Tokens outside
  // the byte alphabet are left to BPE, as transformers does (llama.cpp mislabels some).
  const bool has_types = !meta.token_type.empty();
  if (has_types && static_cast<int64_t>(meta.token_type.size()) != n) {
    return ctx.fail("tokenizer.ggml.token_type", "length differs from tokenizer.ggml.tokens");
  }
  std::vector<uint8_t> role(meta.tokens.size(), 0);  // 1 special, 2 user-defined
  for (int64_t id = 0; id < n && has_types; ++id) {
    if (meta.token_type[id] == 3) role[id] = 1;
    if (meta.token_type[id] == 4) role[id] = 2;
  }
  for (const auto& [key, id] :
       {std::pair<const char*, int64_t>{"tokenizer.ggml.bos_token_id", meta.bos_id},
        {"tokenizer.ggml.eos_token_id", meta.eos_id},
        {"tokenizer.ggml.padding_token_id", meta.pad_id},
        {"tokenizer.ggml.unknown_token_id", meta.unk_id}}) {
    if (id >= n || id < -1) {
      return ctx.fail(key, "token id " + std::to_string(id) + " outside the " + std::to_string(n) +
                               "-token vocabulary");
    }
    if (id >= 0) role[id] = 1;
  }
  for (int64_t id = 0; id < n; ++id) {
    if (!role[id] || !in_alphabet[id] || vocab[spelled[id]] != id) continue;
    AddedTokenInfo info;
    info.content = meta.tokens[id];
    info.id = static_cast<int32_t>(id);
    info.special = role[id] == 1;
    info.normalized = false;
    impl->added.push_back(std::move(info));
  }

  st = impl->finish(merge_strings, "tokenizer.ggml.merges");
  if (!st.ok()) return st.error();
  impl->bos_id = static_cast<int32_t>(meta.bos_id);
  impl->eos_id = static_cast<int32_t>(meta.eos_id);
  impl->pad_id = static_cast<int32_t>(meta.pad_id);
  impl->unk_config_id = static_cast<int32_t>(meta.unk_id);
  impl->add_bos = meta.add_bos.value_or(false) && meta.bos_id >= 0;
  impl->chat_template = meta.chat_template;
  if (impl->add_bos) {
    const std::string& bos = impl->tokens[impl->bos_id];
    impl->post_processor_json = {
        {"type", "TemplateProcessing"},
        {"single", json::array({json{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
                                json{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"pair", json::array({json{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
                              json{{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                              json{{"SpecialToken", {{"id", bos}, {"type_id", 1}}}},
                              json{{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
        {"special_tokens",
         {{bos, {{"id", bos}, {"ids", json::array({impl->bos_id})}, {"tokens", {bos}}}}}}};
  }
  impl->fingerprint = fingerprint_of(impl->tokenizer_json());
  return Tokenizer(std::move(impl));
}

Result<checkpoint::GgufTokenizer> Tokenizer::to_gguf(int64_t vocab_size) const {
  const Impl& m = *impl_;
  const Ctx ctx{m.origin};
  checkpoint::GgufTokenizer out;
  out.model = "gpt2";
  const json pre = without_trim_offsets(m.pre_tokenizer_json);
  for (const GgufPre& p : kGgufPres) {
    const GgufPreSpec spec = gguf_pre_spec(p.family);
    if (without_trim_offsets(spec.pre_tokenizer) == pre && spec.ignore_merges == m.ignore_merges &&
        spec.nfc == m.nfc) {
      out.pre = p.names[0];
      break;
    }
  }
  if (out.pre.empty()) {
    return ctx.fail("pre_tokenizer",
                    "this normalizer + pre-tokenizer (+ ignore_merges) is none of llama.cpp's "
                    "that GGUF can name (gpt-2, llama-bpe, qwen2, smollm): " +
                        quote_bounded(m.pre_tokenizer_json.dump(), 200));
  }
  const int64_t n = static_cast<int64_t>(m.tokens.size());
  if (n > vocab_size) {
    return Error{m.origin + ": the tokenizer has " + std::to_string(n) +
                 " tokens, more than the model's vocabulary of " + std::to_string(vocab_size)};
  }
  std::vector<uint8_t> added_plain(m.tokens.size(), 0);
  for (const AddedTokenInfo& a : m.added) {
    if (!a.special) added_plain[a.id] = 1;
  }
  out.tokens.reserve(static_cast<size_t>(vocab_size));
  out.token_type.reserve(static_cast<size_t>(vocab_size));
  for (int64_t id = 0; id < vocab_size; ++id) {
    if (id >= n || !m.present[id]) {
      // What llama.cpp's converter writes for ids without a token (padded embeddings).
      out.tokens.push_back("[PAD" + std::to_string(id) + "]");
      out.token_type.push_back(checkpoint::kGgufTokenUnused);
      continue;
    }
    out.tokens.push_back(m.tokens[id]);
    out.token_type.push_back(m.special[id]     ? checkpoint::kGgufTokenControl
                             : added_plain[id] ? checkpoint::kGgufTokenUserDefined
                                               : checkpoint::kGgufTokenNormal);
  }
  std::unordered_map<int32_t, const std::string*> model_token;
  for (const auto& [token, id] : m.model_vocab) model_token[id] = &token;
  out.merges.reserve(m.merge_pairs.size());
  for (size_t rank = 0; rank < m.merge_pairs.size(); ++rank) {
    const std::string& left = *model_token.at(m.merge_pairs[rank].first);
    const std::string& right = *model_token.at(m.merge_pairs[rank].second);
    if (left.find(' ') != std::string::npos || right.find(' ') != std::string::npos) {
      return ctx.fail("model.merges[" + std::to_string(rank) + "]",
                      "a token with a space cannot be written as a GGUF merge \"left right\": " +
                          quote_bounded(left) + " " + quote_bounded(right));
    }
    out.merges.push_back(left + " " + right);
  }
  out.bos_id = m.bos_id;
  out.eos_id = m.eos_id;
  out.pad_id = m.pad_id;
  out.unk_id = m.unk_config_id >= 0 ? m.unk_config_id : m.unk_id;
  out.add_bos = m.add_bos;
  out.chat_template = m.chat_template;
  return out;
}

Result<Tokenizer> Tokenizer::from_model(const std::string& path) {
  std::error_code ec;
  const fs::path p(path);
  if (fs::is_directory(p, ec)) {
    const fs::path json_path = p / "tokenizer.json";
    if (!fs::exists(json_path, ec)) {
      return Error{path + ": no tokenizer.json in this folder (pass a .gguf file for GGUF models)"};
    }
    return from_tokenizer_json(json_path.string());
  }
  Status regular = check_regular_file(path, "a model folder, a tokenizer.json or a .gguf file");
  if (!regular.ok()) return regular.error();
  char magic[4] = {};
  {
    std::ifstream in(path, std::ios::binary);
    in.read(magic, 4);
  }
  if (std::string(magic, 4) == "GGUF") {
    Result<checkpoint::GgufFile> file = checkpoint::GgufFile::open(path);
    if (!file.ok()) return file.error();
    Result<checkpoint::GgufTokenizer> meta = checkpoint::gguf_tokenizer(file.value());
    if (!meta.ok()) return meta.error();
    return from_gguf(meta.value(), path);
  }
  return from_tokenizer_json(path);
}

std::string Tokenizer::Impl::tokenizer_json() const {
  const Impl& m = *this;
  // Written by hand around the vocabulary and merges: nlohmann's ordered_json
  // is quadratic in the number of keys.
  std::string out;
  out.reserve(m.model_vocab.size() * 24 + m.merge_pairs.size() * 24 + 4096);
  out += "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[";
  std::vector<const AddedTokenInfo*> added;
  for (const AddedTokenInfo& a : m.added) added.push_back(&a);
  std::stable_sort(added.begin(), added.end(),
                   [](const AddedTokenInfo* a, const AddedTokenInfo* b) { return a->id < b->id; });
  for (size_t i = 0; i < added.size(); ++i) {
    const AddedTokenInfo& a = *added[i];
    out += i ? "," : "";
    out += "{\"id\":" + std::to_string(a.id) + ",\"content\":" + json_quoted(a.content) +
           ",\"single_word\":" + (a.single_word ? "true" : "false") +
           ",\"lstrip\":" + (a.lstrip ? "true" : "false") +
           ",\"rstrip\":" + (a.rstrip ? "true" : "false") +
           ",\"normalized\":" + (a.normalized ? "true" : "false") +
           ",\"special\":" + (a.special ? "true" : "false") + "}";
  }
  out += "],\"normalizer\":" + m.normalizer_json.dump();
  out += ",\"pre_tokenizer\":" + m.pre_tokenizer_json.dump();
  out += ",\"post_processor\":" + m.post_processor_json.dump();
  out += ",\"decoder\":" + m.decoder_json.dump();
  out += ",\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":";
  out += m.unk_token.empty() ? "null" : json_quoted(m.unk_token);
  out += ",\"continuing_subword_prefix\":null,\"end_of_word_suffix\":null,\"fuse_unk\":";
  out += m.fuse_unk ? "true" : "false";
  out += ",\"byte_fallback\":false,\"ignore_merges\":";
  out += m.ignore_merges ? "true" : "false";
  out += ",\"vocab\":{";
  std::unordered_map<int32_t, const std::string*> model_token;
  for (size_t i = 0; i < m.model_vocab.size(); ++i) {
    const auto& [token, id] = m.model_vocab[i];
    model_token[id] = &token;
    out += i ? "," : "";
    out += json_quoted(token) + ":" + std::to_string(id);
  }
  out += "},\"merges\":[";
  for (size_t i = 0; i < m.merge_pairs.size(); ++i) {
    out += i ? ",[" : "[";
    out += json_quoted(*model_token.at(m.merge_pairs[i].first)) + "," +
           json_quoted(*model_token.at(m.merge_pairs[i].second)) + "]";
  }
  out += "]}}\n";

  return out;
}

// ---- save
// ------------------------------------------------------------------------------------------

Status Tokenizer::save(const std::string& dir) const {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return Error{dir + ": not an existing folder"};
  const Impl& m = *impl_;
  const std::string out = m.tokenizer_json();

  json config = json::object();
  auto token_or_null = [&](int32_t id) -> json {
    if (id < 0 || id >= static_cast<int32_t>(m.tokens.size()) || !m.present[id]) return nullptr;
    return m.tokens[id];
  };
  config["add_bos_token"] = m.add_bos;
  config["add_eos_token"] = false;
  config["bos_token"] = token_or_null(m.bos_id);
  config["eos_token"] = token_or_null(m.eos_id);
  config["pad_token"] = token_or_null(m.pad_id);
  config["unk_token"] = token_or_null(m.unk_config_id);
  if (!m.chat_template.empty()) config["chat_template"] = m.chat_template;
  config["clean_up_tokenization_spaces"] = false;
  config["tokenizer_class"] = "PreTrainedTokenizerFast";

  const std::string base = (fs::path(dir) / "").string();
  Status st = checkpoint::write_file_atomic(base + "tokenizer.json", out);
  if (!st.ok()) return st.error();
  return checkpoint::write_file_atomic(
      base + "tokenizer_config.json",
      config.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
}

}  // namespace ramstream::data
