#include "data/dataset.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <utility>
#include <variant>

#include "data/dataset_internal.h"
#include "util/user_file.h"

namespace ramstream::data {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// Streams of derive_seed: one per use of the user's seed.
constexpr uint64_t kSplitStream = 1;
constexpr uint64_t kEpochStream = 2;

enum class Format { kText, kJsonl, kAlpaca, kShareGpt, kMessages };

const char* format_name(Format f) {
  switch (f) {
    case Format::kText:
      return "text";
    case Format::kJsonl:
      return "jsonl";
    case Format::kAlpaca:
      return "alpaca";
    case Format::kShareGpt:
      return "sharegpt";
    case Format::kMessages:
      return "messages";
  }
  return "?";
}

// Field names as they appear in the file, after DatasetOptions::columns.
struct Columns {
  std::map<std::string, std::string> names = {
      {"text", "text"},      {"instruction", "instruction"},     {"input", "input"},
      {"output", "output"},  {"conversations", "conversations"}, {"from", "from"},
      {"value", "value"},    {"messages", "messages"},           {"role", "role"},
      {"content", "content"}};
  const std::string& operator[](const std::string& field) const { return names.at(field); }
};

Result<Columns> make_columns(const std::map<std::string, std::string>& renames) {
  Columns cols;
  for (const auto& [field, name] : renames) {
    auto it = cols.names.find(field);
    if (it == cols.names.end()) {
      std::string known;
      for (const auto& kv : cols.names) known += (known.empty() ? "" : ", ") + kv.first;
      return Error{"data.columns: unknown field '" + field + "' (known: " + known + ")"};
    }
    if (name.empty()) return Error{"data.columns: empty name for field '" + field + "'"};
    it->second = name;
  }
  return cols;
}

// Data files are read whole; beyond this size the tokenised rows would not fit in memory either.
constexpr uint64_t kMaxDataFileBytes = uint64_t{16} << 30;

// `path` must be a regular file (a folder, FIFO or device is refused by name, not read).
Result<std::string> read_data_file(const std::string& path) {
  Result<std::string> content = read_user_file(path, "the dataset", kMaxDataFileBytes);
  if (!content.ok()) return content.error();
  std::string& text = content.value();
  if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);  // UTF-8 BOM
  return content;
}

bool is_blank(std::string_view line) {
  return std::all_of(line.begin(), line.end(), [](char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
  });
}

// Lines without their "\n" (and "\r" of CRLF files).
std::vector<std::string_view> split_lines(const std::string& content) {
  std::vector<std::string_view> lines;
  size_t start = 0;
  while (start < content.size()) {
    size_t end = content.find('\n', start);
    if (end == std::string::npos) end = content.size();
    std::string_view line(content.data() + start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    start = end + 1;
  }
  return lines;
}

std::string extension_of(const std::string& path) {
  std::string ext = fs::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  return ext;
}

char first_significant_char(const std::string& content) {
  for (char c : content) {
    if (!is_blank(std::string_view(&c, 1))) return c;
  }
  return '\0';
}

const char* json_type(const json& j) {
  return j.type_name();
}

// nlohmann's what() starts with "[json.exception.parse_error.101] "; the rest is the useful part.
std::string json_error_text(const std::exception& e) {
  std::string what = e.what();
  if (!what.empty() && what[0] == '[') {
    const size_t close = what.find("] ");
    if (close != std::string::npos) what.erase(0, close + 2);
  }
  // The text can quote the token it stopped at, which may be a whole long line.
  if (what.size() > 200) what = what.substr(0, 200) + "...";
  return what;
}

// ---- records -> RawExample ----------------------------------------------------------------------

// A conversion failure: the message without the "file:line: " prefix.
struct Bad {
  std::string what;
};

template <class T>
using Parsed = std::variant<T, Bad>;

Parsed<std::string> get_string(const json& obj, const std::string& key, bool required,
                               const std::string& where = "") {
  auto it = obj.find(key);
  if (it == obj.end() || (!required && it->is_null())) {
    if (required) return Bad{where + "missing key '" + key + "'"};
    return std::string();
  }
  if (!it->is_string()) {
    return Bad{where + "'" + key + "' must be a string, got " + json_type(*it)};
  }
  return it->get<std::string>();
}

// The message list of a messages/sharegpt record.
Parsed<std::vector<ChatMessage>> parse_turns(const json& obj, const std::string& list_key,
                                             const std::string& role_key,
                                             const std::string& content_key, bool sharegpt) {
  auto it = obj.find(list_key);
  if (it == obj.end()) return Bad{"missing key '" + list_key + "'"};
  if (!it->is_array()) {
    return Bad{"'" + list_key + "' must be an array, got " + json_type(*it)};
  }
  if (it->empty()) return Bad{"empty conversation: '" + list_key + "' has no messages"};
  std::vector<ChatMessage> messages;
  for (size_t k = 0; k < it->size(); ++k) {
    const json& turn = (*it)[k];
    const std::string where = list_key + "[" + std::to_string(k) + "]: ";
    if (!turn.is_object()) return Bad{where + "expected an object, got " + json_type(turn)};
    Parsed<std::string> role = get_string(turn, role_key, true, where);
    if (auto* bad = std::get_if<Bad>(&role)) return *bad;
    Parsed<std::string> content = get_string(turn, content_key, true, where);
    if (auto* bad = std::get_if<Bad>(&content)) return *bad;
    std::string r = std::get<std::string>(role);
    if (sharegpt) {
      if (r == "human" || r == "user") {
        r = "user";
      } else if (r == "gpt" || r == "assistant") {
        r = "assistant";
      } else if (r != "system") {
        return Bad{where + "unknown role " + quote_bounded(r, 40) + " in '" + role_key +
                   "' (expected human, gpt or system)"};
      }
    }
    messages.push_back({std::move(r), std::get<std::string>(std::move(content))});
  }
  // Roles in order, no empty message, a reply at the end (unknown roles of the messages format
  // are found here too).
  Status valid = validate_conversation(messages, list_key);
  if (!valid.ok()) return Bad{valid.error().message};
  return messages;
}

Parsed<RawExample> parse_record(const json& obj, Format format, const Columns& cols) {
  if (!obj.is_object()) return Bad{std::string("expected a JSON object, got ") + json_type(obj)};
  RawExample ex;
  switch (format) {
    case Format::kText:
    case Format::kJsonl: {
      Parsed<std::string> text = get_string(obj, cols["text"], true);
      if (auto* bad = std::get_if<Bad>(&text)) return *bad;
      ex.text = std::get<std::string>(std::move(text));
      if (ex.text.empty()) return Bad{"'" + cols["text"] + "' is empty"};
      return ex;
    }
    case Format::kAlpaca: {
      Parsed<std::string> instruction = get_string(obj, cols["instruction"], true);
      if (auto* bad = std::get_if<Bad>(&instruction)) return *bad;
      Parsed<std::string> input = get_string(obj, cols["input"], false);
      if (auto* bad = std::get_if<Bad>(&input)) return *bad;
      Parsed<std::string> output = get_string(obj, cols["output"], true);
      if (auto* bad = std::get_if<Bad>(&output)) return *bad;
      std::string user = std::get<std::string>(std::move(instruction));
      const std::string& in = std::get<std::string>(input);
      if (!in.empty()) user += "\n\n" + in;
      if (python_strip(user).empty()) {
        return Bad{"'" + cols["instruction"] + "' and '" + cols["input"] + "' are both empty"};
      }
      if (python_strip(std::get<std::string>(output)).empty()) {
        return Bad{"'" + cols["output"] + "' is empty"};
      }
      ex.messages = {{"user", std::move(user)},
                     {"assistant", std::get<std::string>(std::move(output))}};
      return ex;
    }
    case Format::kShareGpt:
    case Format::kMessages: {
      const bool sharegpt = format == Format::kShareGpt;
      Parsed<std::vector<ChatMessage>> turns =
          sharegpt ? parse_turns(obj, cols["conversations"], cols["from"], cols["value"], true)
                   : parse_turns(obj, cols["messages"], cols["role"], cols["content"], false);
      if (auto* bad = std::get_if<Bad>(&turns)) return *bad;
      ex.messages = std::get<std::vector<ChatMessage>>(std::move(turns));
      return ex;
    }
  }
  return Bad{"unknown format"};
}

// What the keys of a record say its format is.
Parsed<Format> format_from_keys(const json& obj, const Columns& cols) {
  if (!obj.is_object()) return Bad{std::string("expected a JSON object, got ") + json_type(obj)};
  if (obj.contains(cols["messages"])) return Format::kMessages;
  if (obj.contains(cols["conversations"])) return Format::kShareGpt;
  if (obj.contains(cols["instruction"])) return Format::kAlpaca;
  if (obj.contains(cols["text"])) return Format::kJsonl;
  std::string keys;
  size_t listed = 0;
  for (const auto& kv : obj.items()) {
    if (++listed > 8) {
      keys += ", ... (" + std::to_string(obj.size()) + " keys)";
      break;
    }
    keys += (keys.empty() ? "" : ", ") + quote_bounded(kv.key(), 40);
  }
  return Bad{"cannot tell the dataset format from the keys [" + keys + "]; expected '" +
             cols["messages"] + "', '" + cols["conversations"] + "', '" + cols["instruction"] +
             "' or '" + cols["text"] + "' (set data.format or data.columns)"};
}

Result<Format> format_from_name(const std::string& name) {
  if (name == "text") return Format::kText;
  if (name == "jsonl") return Format::kJsonl;
  if (name == "alpaca") return Format::kAlpaca;
  if (name == "sharegpt") return Format::kShareGpt;
  if (name == "messages") return Format::kMessages;
  return Error{"unknown dataset format '" + name +
               "' (expected auto, text, jsonl, alpaca, sharegpt or messages)"};
}

// One JSON value with the location used in errors ("12" for a line, "record 12" for an array).
struct JsonRecord {
  int64_t line = 0;
  std::string where;
  std::string text;  // the line (jsonl); empty for array elements, which are in `value`
  json value;
  bool parsed = false;
};

struct ReadResult {
  std::vector<RawExample> examples;
  int64_t skipped = 0;
  std::string first_skip;  // the message of the first skipped record
  Format format = Format::kText;
};

Result<ReadResult> read_text_documents(const DatasetOptions& opts, const std::string& content) {
  ReadResult out;
  out.format = Format::kText;
  const std::vector<std::string_view> lines = split_lines(content);
  RawExample doc;
  bool open = false;
  for (size_t k = 0; k <= lines.size(); ++k) {
    const bool blank = k == lines.size() || is_blank(lines[k]);
    if (blank) {
      if (open) out.examples.push_back(std::move(doc));
      doc = RawExample();
      open = false;
      continue;
    }
    if (!open) {
      doc.line = static_cast<int64_t>(k) + 1;
      open = true;
    } else {
      doc.text += '\n';
    }
    doc.text.append(lines[k].data(), lines[k].size());
  }
  if (out.examples.empty()) return Error{opts.path + ": empty dataset: no text documents"};
  return out;
}

Result<ReadResult> read_json_records(const DatasetOptions& opts, const std::string& content,
                                     std::optional<Format> format, const Columns& cols) {
  const std::string& path = opts.path;
  std::vector<JsonRecord> records;
  bool as_array = first_significant_char(content) == '[';
  if (as_array) {
    json all;
    try {
      all = json::parse(content);
    } catch (const json::exception& e) {
      return Error{path + ": invalid JSON: " + json_error_text(e)};
    }
    if (!all.is_array()) return Error{path + ": expected a JSON array of records"};
    for (size_t k = 0; k < all.size(); ++k) {
      JsonRecord r;
      r.line = static_cast<int64_t>(k) + 1;
      r.where = path + ": record " + std::to_string(k + 1) + ": ";
      r.value = std::move(all[k]);
      r.parsed = true;
      records.push_back(std::move(r));
    }
  } else {
    const std::vector<std::string_view> lines = split_lines(content);
    for (size_t k = 0; k < lines.size(); ++k) {
      if (is_blank(lines[k])) continue;
      JsonRecord r;
      r.line = static_cast<int64_t>(k) + 1;
      r.where = path + ":" + std::to_string(k + 1) + ": ";
      r.text = std::string(lines[k]);
      records.push_back(std::move(r));
    }
  }
  auto parse = [](JsonRecord& r) -> std::optional<std::string> {
    if (r.parsed) return std::nullopt;
    try {
      r.value = json::parse(r.text);
      r.parsed = true;
      r.text.clear();
      return std::nullopt;
    } catch (const json::exception& e) {
      return "invalid JSON: " + json_error_text(e);
    }
  };

  ReadResult out;
  auto fail = [&](const JsonRecord& r, const std::string& what) -> std::optional<Error> {
    if (!opts.skip_malformed) return Error{r.where + what};
    if (out.skipped++ == 0) out.first_skip = r.where + what;
    return std::nullopt;
  };

  if (!format) {
    // The first record that parses decides; bad ones before it are reported in the pass below.
    for (JsonRecord& r : records) {
      if (parse(r)) continue;
      Parsed<Format> f = format_from_keys(r.value, cols);
      if (auto* bad = std::get_if<Bad>(&f)) {
        if (!r.value.is_object() || opts.skip_malformed) continue;
        return Error{r.where + bad->what};
      }
      format = std::get<Format>(f);
      break;
    }
    if (!format) {
      if (records.empty()) return Error{path + ": empty dataset: no records"};
      format = Format::kJsonl;  // nothing parses: let the pass below report the first failure
    }
  }
  out.format = *format;
  for (JsonRecord& r : records) {
    if (std::optional<std::string> bad_json = parse(r)) {
      if (auto err = fail(r, *bad_json)) return *err;
      continue;
    }
    Parsed<RawExample> ex = parse_record(r.value, *format, cols);
    if (auto* bad = std::get_if<Bad>(&ex)) {
      if (auto err = fail(r, bad->what)) return *err;
      continue;
    }
    RawExample e = std::get<RawExample>(std::move(ex));
    e.line = r.line;
    out.examples.push_back(std::move(e));
    r.value = json();  // free as we go
  }
  if (out.examples.empty()) {
    if (out.skipped > 0) {
      return Error{path + ": empty dataset: all " + std::to_string(out.skipped) +
                   " records are malformed; first: " + out.first_skip};
    }
    return Error{path + ": empty dataset: no records"};
  }
  return out;
}

Result<ReadResult> read_from_content(const DatasetOptions& opts, const std::string& content) {
  Result<Columns> cols = make_columns(opts.columns);
  if (!cols.ok()) return cols.error();
  if (opts.format == "auto") {
    const std::string ext = extension_of(opts.path);
    const char first = first_significant_char(content);
    const bool text_ext = ext == ".txt" || ext == ".text" || ext == ".md";
    const bool json_ext = ext == ".jsonl" || ext == ".json";
    if (text_ext || (!json_ext && first != '{' && first != '[')) {
      return read_text_documents(opts, content);
    }
    return read_json_records(opts, content, std::nullopt, cols.value());
  }
  Result<Format> format = format_from_name(opts.format);
  if (!format.ok()) return format.error();
  if (format.value() == Format::kText) return read_text_documents(opts, content);
  return read_json_records(opts, content, format.value(), cols.value());
}

// ---- tokens
// ---------------------------------------------------------------------------------------

int32_t pad_id_of(const TextEncoder& encoder) {
  return encoder.eos_id() >= 0 ? encoder.eos_id() : 0;
}

// Cuts `ex` into pieces of at most `max_len` tokens; the label at each cut is dropped because the
// token it names lies in the next piece. A piece starts a document of its row (position 0): it
// cannot see the piece before it, which lies in another row.
void append_piece(TokenRow& row, const TokenRow& ex, size_t begin, size_t end) {
  row.ids.insert(row.ids.end(), ex.ids.begin() + begin, ex.ids.begin() + end);
  row.labels.insert(row.labels.end(), ex.labels.begin() + begin, ex.labels.begin() + end);
  for (size_t k = begin; k < end; ++k) row.positions.push_back(static_cast<int32_t>(k - begin));
  if (end < ex.ids.size()) row.labels.back() = kIgnoreLabel;
}

// Padding continues the positions of the row's last document (see dataset.h for why).
void pad_and_flush(std::vector<TokenRow>& rows, TokenRow& row, size_t max_len, int32_t pad) {
  if (row.ids.empty()) return;
  row.ids.resize(max_len, pad);
  row.labels.resize(max_len, kIgnoreLabel);
  while (row.positions.size() < max_len) row.positions.push_back(row.positions.back() + 1);
  rows.push_back(std::move(row));
  row = TokenRow();
}

struct PackStats {
  int64_t truncated = 0, untrained = 0;
  int64_t tokens = 0;  // real (non-padding) tokens placed in rows
};

// Rows of exactly max_len tokens from tokenised examples, as described in dataset.h.
std::vector<TokenRow> pack_rows(std::vector<TokenRow> examples, const std::vector<bool>& splittable,
                                size_t max_len, bool pack, int32_t pad, PackStats* stats) {
  std::vector<TokenRow> rows;
  TokenRow row;
  for (size_t e = 0; e < examples.size(); ++e) {
    TokenRow& ex = examples[e];
    if (ex.ids.empty()) continue;
    if (splittable[e]) {
      if (!pack) pad_and_flush(rows, row, max_len, pad);
      for (size_t begin = 0; begin < ex.ids.size();) {
        const size_t take = std::min(max_len - row.ids.size(), ex.ids.size() - begin);
        append_piece(row, ex, begin, begin + take);
        begin += take;
        stats->tokens += static_cast<int64_t>(take);
        if (row.ids.size() == max_len) pad_and_flush(rows, row, max_len, pad);
      }
      if (!pack) pad_and_flush(rows, row, max_len, pad);
      continue;
    }
    if (ex.ids.size() > max_len) {
      ex.ids.resize(max_len);
      ex.labels.resize(max_len);
      ex.labels.back() = kIgnoreLabel;
      ++stats->truncated;
      if (std::all_of(ex.labels.begin(), ex.labels.end(),
                      [](int32_t l) { return l == kIgnoreLabel; })) {
        ++stats->untrained;
      }
    }
    if (!pack || row.ids.size() + ex.ids.size() > max_len) pad_and_flush(rows, row, max_len, pad);
    append_piece(row, ex, 0, ex.ids.size());
    stats->tokens += static_cast<int64_t>(ex.ids.size());
    if (!pack || row.ids.size() == max_len) pad_and_flush(rows, row, max_len, pad);
  }
  pad_and_flush(rows, row, max_len, pad);
  return rows;
}

// ---- cache key
// ------------------------------------------------------------------------------------

void put(std::string& key, const std::string& name, const std::string& value) {
  key += name + "=" + std::to_string(value.size()) + ":" + value + "\n";
}

std::string cache_key(const DatasetOptions& opts, const std::string& content, Format format,
                      const TextEncoder& encoder, const ChatFormat& chat) {
  // v2: conversations validated, rows without a trained token dropped.
  std::string key = "ramstream dataset cache v2\n";
  put(key, "file.path", opts.path);  // only because warnings name it
  put(key, "file.size", std::to_string(content.size()));
  put(key, "file.hash",
      internal::hex64(internal::hash_bytes(content.data(), content.size(), 1)) +
          internal::hex64(internal::hash_bytes(content.data(), content.size(), 2)));
  put(key, "format", format_name(format));
  for (const auto& [field, name] : opts.columns) put(key, "column." + field, name);
  put(key, "system_prompt", opts.system_prompt);
  put(key, "train_on_prompt", std::to_string(opts.train_on_prompt));
  put(key, "skip_malformed", std::to_string(opts.skip_malformed));
  put(key, "max_seq_len", std::to_string(opts.max_seq_len));
  put(key, "pack", std::to_string(opts.pack));
  put(key, "val_size", std::to_string(opts.val_size));
  char fraction[32];
  std::snprintf(fraction, sizeof(fraction), "%a", opts.val_fraction);
  put(key, "val_fraction", fraction);
  put(key, "seed", std::to_string(opts.seed));
  put(key, "chat.kind", chat.kind == ChatFormat::Kind::kChatML ? "chatml" : "llama3");
  put(key, "chat.default_system", chat.default_system);
  put(key, "chat.system_preamble", chat.system_preamble);
  put(key, "chat.trim_content", std::to_string(chat.trim_content));
  put(key, "encoder", encoder.fingerprint());
  put(key, "encoder.bos", std::to_string(encoder.bos_id()));
  put(key, "encoder.eos", std::to_string(encoder.eos_id()));
  put(key, "encoder.add_bos", std::to_string(encoder.add_bos()));
  return key;
}

Status check_options(const DatasetOptions& opts) {
  if (opts.path.empty()) return Error{"data.path is not set"};
  if (opts.max_seq_len < 2) {
    return Error{"data.max_seq_len must be at least 2, got " + std::to_string(opts.max_seq_len)};
  }
  if (opts.val_size < 0) {
    return Error{"data.val_size must be >= 0, got " + std::to_string(opts.val_size)};
  }
  if (!(opts.val_fraction >= 0.0 && opts.val_fraction < 1.0)) {
    return Error{"data.val_fraction must be in [0, 1), got " + std::to_string(opts.val_fraction)};
  }
  return Ok{};
}

// What data.max_seq_len does to the conversations of `lengths` (tokens each), `untrained` of which
// keep no trained token, and which max_seq_len would keep 95% and all of them whole.
std::string truncation_report(std::vector<size_t> lengths, int64_t untrained, size_t max_len) {
  std::sort(lengths.begin(), lengths.end());
  const auto cut = static_cast<int64_t>(lengths.end() -
                                        std::upper_bound(lengths.begin(), lengths.end(), max_len));
  std::string text = "data.max_seq_len " + std::to_string(max_len) + " cuts " +
                     std::to_string(cut) + " of " + std::to_string(lengths.size()) +
                     " conversations, " + std::to_string(untrained) +
                     " of them losing their whole reply (nothing left to train on)";
  if (!lengths.empty()) {
    const size_t p95 = lengths[(lengths.size() * 95 + 99) / 100 - 1];
    text += "; they are " + std::to_string(lengths.front()) + " to " +
            std::to_string(lengths.back()) + " tokens long: max_seq_len " + std::to_string(p95) +
            " keeps 95% of them whole, " + std::to_string(lengths.back()) + " keeps all";
  }
  return text;
}

Result<Dataset> build_dataset(const DatasetOptions& opts, const TextEncoder& encoder,
                              const ChatFormat& chat_in, ReadResult read) {
  Dataset ds;
  ds.num_examples = static_cast<int64_t>(read.examples.size());
  ds.num_skipped = read.skipped;
  if (read.skipped > 0) {
    ds.warnings.push_back(opts.path + ": skipped " + std::to_string(read.skipped) +
                          " malformed record(s); first: " + read.first_skip);
  }
  ChatFormat chat = chat_in;
  if (!opts.system_prompt.empty()) chat.default_system = opts.system_prompt;

  const int64_t n = ds.num_examples;
  const int64_t num_val =
      opts.val_size > 0
          ? opts.val_size
          : static_cast<int64_t>(std::floor(opts.val_fraction * static_cast<double>(n)));
  if (num_val >= n) {
    return Error{opts.path + ": the validation split takes " + std::to_string(num_val) + " of " +
                 std::to_string(n) + " examples and leaves none for training"};
  }
  const std::vector<int64_t> perm =
      seeded_permutation(n, internal::derive_seed(opts.seed, kSplitStream));
  std::vector<int64_t> val_index(perm.begin(), perm.begin() + num_val);
  std::sort(val_index.begin(), val_index.end());

  const size_t max_len = static_cast<size_t>(opts.max_seq_len);
  const int32_t pad = pad_id_of(encoder);
  std::vector<size_t> conversation_lengths;  // tokens of each conversation, before truncation
  auto rows_of = [&](const std::vector<int64_t>& order, PackStats* stats) {
    std::vector<TokenRow> tokens;
    std::vector<bool> splittable;
    tokens.reserve(order.size());
    for (int64_t i : order) {
      const RawExample& ex = read.examples[static_cast<size_t>(i)];
      tokens.push_back(tokenize_example(ex, encoder, chat, opts.train_on_prompt));
      splittable.push_back(ex.messages.empty());
      if (!ex.messages.empty()) conversation_lengths.push_back(tokens.back().ids.size());
    }
    return pack_rows(std::move(tokens), splittable, max_len, opts.pack, pad, stats);
  };
  PackStats train, val;
  ds.train_rows = rows_of(std::vector<int64_t>(perm.begin() + num_val, perm.end()), &train);
  ds.val_rows = rows_of(val_index, &val);
  if (train.tokens == 0) {
    return Error{opts.path + ": the tokenizer turned all " + std::to_string(n - num_val) +
                 " training examples into no tokens at all; the tokenizer (its vocabulary or "
                 "pre-tokenizer), not the data, is at fault"};
  }
  ds.num_truncated = train.truncated + val.truncated;
  ds.train_tokens = train.tokens;
  // Rows with nothing to predict (conversations whose reply was cut off entirely) add no loss.
  ds.train_rows.erase(std::remove_if(ds.train_rows.begin(), ds.train_rows.end(),
                                     [](const TokenRow& row) {
                                       return std::all_of(
                                           row.labels.begin(), row.labels.end(),
                                           [](int32_t l) { return l == kIgnoreLabel; });
                                     }),
                      ds.train_rows.end());
  const int64_t untrained = train.untrained + val.untrained;
  const int64_t conversations = static_cast<int64_t>(conversation_lengths.size());
  if (ds.train_rows.empty() || 2 * untrained > conversations) {
    return Error{opts.path + ": " + truncation_report(conversation_lengths, untrained, max_len) +
                 "; raise data.max_seq_len or shorten the examples"};
  }
  if (ds.num_truncated > 0) {
    ds.warnings.push_back(opts.path + ": " +
                          truncation_report(conversation_lengths, untrained, max_len));
  }
  for (const TokenRow& row : ds.train_rows) {
    for (size_t k = 0; k < row.ids.size(); ++k) {
      if (row.labels[k] != kIgnoreLabel) ++ds.trained_tokens;
    }
  }
  for (int64_t i : val_index) ds.val_examples.push_back(read.examples[static_cast<size_t>(i)]);
  return ds;
}

}  // namespace

std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> perm(static_cast<size_t>(std::max<int64_t>(n, 0)));
  for (size_t k = 0; k < perm.size(); ++k) perm[k] = static_cast<int64_t>(k);
  internal::SplitMix64 rng(seed);
  for (size_t k = perm.size(); k > 1; --k) {
    std::swap(perm[k - 1], perm[rng.below(k)]);
  }
  return perm;
}

TokenRow tokenize_example(const RawExample& example, const TextEncoder& encoder,
                          const ChatFormat& chat, bool train_on_prompt) {
  TokenRow row;
  std::vector<bool> trained;  // per token: is it a target?
  const int32_t bos = encoder.bos_id();
  if (example.messages.empty()) {
    if (encoder.add_bos() && bos >= 0) row.ids.push_back(bos);
    const std::vector<int32_t> ids = encoder.encode(example.text);
    row.ids.insert(row.ids.end(), ids.begin(), ids.end());
    if (encoder.eos_id() >= 0) row.ids.push_back(encoder.eos_id());
    trained.assign(row.ids.size(), true);
  } else {
    for (const ChatSegment& seg : render_chat(chat, example.messages)) {
      const std::vector<int32_t> ids = encoder.encode(seg.text);
      row.ids.insert(row.ids.end(), ids.begin(), ids.end());
      trained.insert(trained.end(), ids.size(), seg.train || train_on_prompt);
    }
    if (encoder.add_bos() && bos >= 0 && (row.ids.empty() || row.ids.front() != bos)) {
      row.ids.insert(row.ids.begin(), bos);
      trained.insert(trained.begin(), train_on_prompt);
    }
  }
  row.labels.assign(row.ids.size(), kIgnoreLabel);
  for (size_t k = 0; k + 1 < row.ids.size(); ++k) {
    if (trained[k + 1]) row.labels[k] = row.ids[k + 1];
  }
  for (size_t k = 0; k < row.ids.size(); ++k) row.positions.push_back(static_cast<int32_t>(k));
  return row;
}

Result<std::vector<RawExample>> read_examples(const DatasetOptions& opts) {
  if (Status st = check_options(opts); !st.ok()) return st.error();
  Result<std::string> content = read_data_file(opts.path);
  if (!content.ok()) return content.error();
  Result<ReadResult> read = read_from_content(opts, content.value());
  if (!read.ok()) return read.error();
  return std::move(read.value().examples);
}

Result<Dataset> load_dataset(const DatasetOptions& opts, const TextEncoder& encoder,
                             const ChatFormat& chat) {
  if (Status st = check_options(opts); !st.ok()) return st.error();
  Result<std::string> content = read_data_file(opts.path);
  if (!content.ok()) return content.error();
  Result<ReadResult> read = read_from_content(opts, content.value());
  if (!read.ok()) return read.error();
  // Reading is needed for the key anyway (format detection is part of it) and is cheap next to
  // tokenising; the cache saves the tokenisation.
  std::vector<std::string> cache_warnings;
  std::string cache_path, key;
  if (!opts.cache_dir.empty()) {
    if (encoder.fingerprint().empty()) {
      cache_warnings.push_back(
          "tokenised dataset cache disabled: the tokenizer has no fingerprint");
    } else {
      key = cache_key(opts, content.value(), read.value().format, encoder, chat);
      cache_path =
          (fs::path(opts.cache_dir) /
           ("dataset-" + internal::hex64(internal::hash_bytes(key.data(), key.size(), 0)) + ".bin"))
              .string();
      Dataset cached;
      Result<bool> hit = internal::read_cache(cache_path, key, &cached);
      if (hit.ok() && hit.value()) {
        cached.from_cache = true;
        cached.cache_path = cache_path;
        return cached;
      }
      if (!hit.ok()) {
        cache_warnings.push_back(hit.error().message + "; rebuilding it");
      }
    }
  }
  Result<Dataset> built = build_dataset(opts, encoder, chat, std::move(read.value()));
  if (!built.ok()) return built;
  Dataset& ds = built.value();
  if (!cache_path.empty()) {
    std::error_code ec;
    fs::create_directories(opts.cache_dir, ec);
    Status st = ec ? Status(Error{opts.cache_dir + ": cannot create: " + ec.message()})
                   : internal::write_cache(cache_path, key, ds);
    if (st.ok()) {
      ds.cache_path = cache_path;
    } else {
      cache_warnings.push_back("could not write the dataset cache: " + st.error().message);
    }
  }
  ds.warnings.insert(ds.warnings.end(), cache_warnings.begin(), cache_warnings.end());
  return built;
}

// ---- DataLoader
// -------------------------------------------------------------------------------------

DataLoader::DataLoader(std::vector<TokenRow> rows, int64_t batch, uint64_t seed)
    : rows_(std::move(rows)), batch_(batch), seed_(seed) {
  if (rows_.empty()) throw std::invalid_argument("DataLoader: no rows");
  if (batch_ < 1) throw std::invalid_argument("DataLoader: batch must be >= 1");
  for (const TokenRow& r : rows_) {
    if (r.ids.size() != rows_[0].ids.size() || r.labels.size() != r.ids.size()) {
      throw std::invalid_argument("DataLoader: rows of different lengths");
    }
    if (!r.positions.empty() && r.positions.size() != r.ids.size()) {
      throw std::invalid_argument("DataLoader: a row has " + std::to_string(r.positions.size()) +
                                  " positions for " + std::to_string(r.ids.size()) + " tokens");
    }
  }
  seek(DataCursor{});
}

void DataLoader::seek(const DataCursor& cursor) {
  if (cursor.epoch < 0 || cursor.index < 0 || cursor.index > rows_per_epoch()) {
    throw std::invalid_argument("DataLoader::seek: cursor (epoch " + std::to_string(cursor.epoch) +
                                ", index " + std::to_string(cursor.index) + ") outside " +
                                std::to_string(rows_per_epoch()) + " rows per epoch");
  }
  cursor_ = cursor;
  if (cursor_.index == rows_per_epoch()) cursor_ = {cursor_.epoch + 1, 0};
  order_ = seeded_permutation(
      rows_per_epoch(),
      internal::derive_seed(seed_,
                            kEpochStream + 0x100000000ULL * static_cast<uint64_t>(cursor_.epoch)));
}

Batch DataLoader::next() {
  Batch b;
  b.batch = batch_;
  b.seq_len = static_cast<int64_t>(rows_[0].ids.size());
  b.ids.reserve(static_cast<size_t>(b.batch * b.seq_len));
  b.targets.reserve(static_cast<size_t>(b.batch * b.seq_len));
  b.positions.reserve(static_cast<size_t>(b.batch * b.seq_len));
  for (int64_t k = 0; k < batch_; ++k) {
    const TokenRow& row = rows_[static_cast<size_t>(order_[static_cast<size_t>(cursor_.index)])];
    b.ids.insert(b.ids.end(), row.ids.begin(), row.ids.end());
    b.targets.insert(b.targets.end(), row.labels.begin(), row.labels.end());
    if (row.positions.empty()) {
      for (int64_t t = 0; t < b.seq_len; ++t) b.positions.push_back(t);
    } else {
      b.positions.insert(b.positions.end(), row.positions.begin(), row.positions.end());
    }
    if (++cursor_.index == rows_per_epoch()) seek(DataCursor{cursor_.epoch + 1, 0});
  }
  return b;
}

}  // namespace ramstream::data
