#include "util/json_read.h"

#include <string>
#include <unordered_set>
#include <vector>

#include "util/user_file.h"

namespace ramstream {
namespace {

using nlohmann::json;

// 1-based line and column of byte `offset` of `text` (columns count bytes, as editors that
// show byte columns do; close enough for ASCII JSON).
std::string line_col(std::string_view text, size_t offset, int64_t first_line) {
  offset = std::min(offset, text.size());
  int64_t line = first_line;
  size_t col = 1;
  for (size_t i = 0; i < offset; ++i) {
    if (text[i] == '\n') {
      ++line;
      col = 1;
    } else {
      ++col;
    }
  }
  return std::to_string(line) + ":" + std::to_string(col);
}

// Byte offset of the bracket that opens nesting level `depth` + 1, outside strings.
size_t offset_past_depth(std::string_view text, int depth) {
  int level = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++level > depth) return i;
    } else if (c == ']' || c == '}') {
      --level;
    }
  }
  return text.size();
}

// Builds the tree through nlohmann's own DOM builder, refusing too deep or too large documents
// as they stream in, and keeping a syntax error's position and wording instead of throwing.
class BoundedDomBuilder {
 public:
  enum class Failure { kNone, kSyntax, kTooDeep, kTooManyValues, kDuplicateKey };

  BoundedDomBuilder(json& root, const JsonLimits& limits) : dom_(root, false), limits_(limits) {}

  bool null() { return count() && dom_.null(); }
  bool boolean(bool v) { return count() && dom_.boolean(v); }
  bool number_integer(json::number_integer_t v) { return count() && dom_.number_integer(v); }
  bool number_unsigned(json::number_unsigned_t v) { return count() && dom_.number_unsigned(v); }
  // Numbers beyond double's range arrive as parse errors ("number overflow").
  bool number_float(json::number_float_t v, const json::string_t& token) {
    return count() && dom_.number_float(v, token);
  }
  bool string(json::string_t& v) { return count() && dom_.string(v); }
  bool binary(json::binary_t& v) { return count() && dom_.binary(v); }
  bool start_object(std::size_t n) {
    if (limits_.unique_keys) keys_.emplace_back();
    return enter() && dom_.start_object(n);
  }
  bool key(json::string_t& k) {
    if (limits_.unique_keys && !keys_.back().insert(k).second) {
      failure_ = Failure::kDuplicateKey;
      token_ = k;
      return false;
    }
    return dom_.key(k);
  }
  bool end_object() {
    --depth_;
    if (limits_.unique_keys) keys_.pop_back();
    return dom_.end_object();
  }
  bool start_array(std::size_t n) { return enter() && dom_.start_array(n); }
  bool end_array() {
    --depth_;
    return dom_.end_array();
  }
  template <class Exception>
  bool parse_error(std::size_t position, const std::string& last_token, const Exception& e) {
    failure_ = Failure::kSyntax;
    position_ = position;
    token_ = last_token;
    message_ = e.what();
    return false;
  }

  Failure failure() const { return failure_; }
  size_t position() const { return position_; }
  const std::string& token() const { return token_; }
  // nlohmann's wording without its "[json.exception.parse_error.101] parse error at line L,
  // column C: " prefix (we give our own position) and with the offending token cut short.
  std::string reason() const {
    std::string r = message_;
    if (r.rfind("[json.exception.", 0) == 0 && r.find("] ") != std::string::npos) {
      r = r.substr(r.find("] ") + 2);
    }
    const size_t column = r.find(", column ");
    const size_t colon = column == std::string::npos ? std::string::npos : r.find(": ", column);
    if (colon != std::string::npos) r = r.substr(colon + 2);
    const std::string quoted = "last read: '" + token_ + "'";
    const size_t at = r.find(quoted);
    if (at != std::string::npos)
      r.replace(at, quoted.size(), "last read: " + quote_bounded(token_, 40));
    if (r.size() > 300) r = r.substr(0, 300) + "...";
    return r;
  }

 private:
  bool count() {
    if (++values_ <= limits_.max_values) return true;
    failure_ = Failure::kTooManyValues;
    return false;
  }
  bool enter() {
    if (++depth_ > limits_.max_depth) {
      failure_ = Failure::kTooDeep;
      return false;
    }
    return count();
  }

  nlohmann::detail::json_sax_dom_parser<json> dom_;
  const JsonLimits& limits_;
  int depth_ = 0;
  std::vector<std::unordered_set<std::string>> keys_;  // per open object, with unique_keys
  uint64_t values_ = 0;
  Failure failure_ = Failure::kNone;
  size_t position_ = 0;
  std::string token_, message_;
};

}  // namespace

Result<json> parse_json(std::string_view text, const std::string& source, const JsonLimits& limits,
                        int64_t first_line) {
  json root;
  BoundedDomBuilder builder(root, limits);
  const bool ok = json::sax_parse(text.begin(), text.end(), &builder);
  if (ok && builder.failure() == BoundedDomBuilder::Failure::kNone) return root;
  switch (builder.failure()) {
    case BoundedDomBuilder::Failure::kTooDeep: {
      const size_t at = offset_past_depth(text, limits.max_depth);
      return Error{source + ":" + line_col(text, at, first_line) +
                   ": invalid JSON: arrays and objects nest deeper than " +
                   std::to_string(limits.max_depth) + " levels (corrupt or hostile)"};
    }
    case BoundedDomBuilder::Failure::kTooManyValues:
      return Error{source + ": invalid JSON: more than " + std::to_string(limits.max_values) +
                   " values, too many for what it should hold (corrupt or hostile)"};
    case BoundedDomBuilder::Failure::kDuplicateKey: {
      return Error{source + ": invalid JSON: key " + quote_bounded(builder.token()) +
                   " appears twice in one object"};
    }
    default: {
      // The error's byte count is one past the character that failed.
      const size_t at = builder.position() == 0 ? 0 : builder.position() - 1;
      return Error{source + ":" + line_col(text, at, first_line) +
                   ": invalid JSON: " + builder.reason()};
    }
  }
}

Result<json> read_json_file(const std::string& path, const char* what, const JsonLimits& limits) {
  Result<std::string> text = read_user_file(path, what, limits.max_bytes);
  if (!text.ok()) return text.error();
  return parse_json(text.value(), path, limits);
}

std::string describe_json(const json& v, size_t max_bytes) {
  switch (v.type()) {
    case json::value_t::string:
      return "a string " + quote_bounded(v.get_ref<const std::string&>(), max_bytes);
    case json::value_t::array:
      return "an array of " + std::to_string(v.size()) + (v.size() == 1 ? " value" : " values");
    case json::value_t::object:
      return "an object with " + std::to_string(v.size()) + (v.size() == 1 ? " key" : " keys");
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return v.get<bool>() ? "true" : "false";
    case json::value_t::discarded:
      return "nothing";
    default: {
      std::string n = v.dump();  // a number: flat and short
      if (n.size() > max_bytes) n = n.substr(0, max_bytes) + "...";
      return "the number " + n;
    }
  }
}

}  // namespace ramstream
