#include "data/chat.h"

#include <cstdint>
#include <string_view>
#include <utility>

#include "util/user_file.h"

namespace ramstream::data {
namespace {

constexpr std::string_view kImStart = "<|im_start|>";
constexpr std::string_view kImEnd = "<|im_end|>";
constexpr std::string_view kBeginOfText = "<|begin_of_text|>";
constexpr std::string_view kStartHeader = "<|start_header_id|>";
constexpr std::string_view kEndHeader = "<|end_header_id|>";
constexpr std::string_view kEotId = "<|eot_id|>";

// The text a Jinja template can output: its raw text outside tags plus every string literal
// inside {{ }} and {% %}, with escapes decoded. Literals are what tell formats apart; how they
// are combined is not interpreted.
std::vector<std::string> template_literals(const std::string& src) {
  std::vector<std::string> out;
  std::string raw;
  size_t i = 0;
  while (i < src.size()) {
    const bool opens_tag = src[i] == '{' && i + 1 < src.size() &&
                           (src[i + 1] == '{' || src[i + 1] == '%' || src[i + 1] == '#');
    if (!opens_tag) {
      raw += src[i++];
      continue;
    }
    if (!raw.empty()) out.push_back(std::move(raw)), raw.clear();
    const char kind = src[i + 1];
    const std::string_view close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    i += 2;
    if (kind == '#') {  // comment: skip to its end
      const size_t end = src.find(close, i);
      i = end == std::string::npos ? src.size() : end + 2;
      continue;
    }
    while (i < src.size() && src.compare(i, 2, close) != 0) {
      const char c = src[i];
      if (c != '\'' && c != '"') {
        ++i;
        continue;
      }
      std::string lit;
      for (++i; i < src.size() && src[i] != c; ++i) {
        if (src[i] != '\\' || i + 1 >= src.size()) {
          lit += src[i];
          continue;
        }
        const char e = src[++i];
        switch (e) {
          case 'n':
            lit += '\n';
            break;
          case 't':
            lit += '\t';
            break;
          case 'r':
            lit += '\r';
            break;
          default:
            lit += e;
            break;  // \\, \', \" and anything rarer: the character itself
        }
      }
      ++i;  // closing quote
      out.push_back(std::move(lit));
    }
    i += 2;
  }
  if (!raw.empty()) out.push_back(std::move(raw));
  return out;
}

bool any_contains(const std::vector<std::string>& literals, std::string_view what) {
  for (const std::string& l : literals) {
    if (l.find(what) != std::string::npos) return true;
  }
  return false;
}

// SmolLM2 / Qwen2: '<|im_start|>system\n{default}<|im_end|>\n' as one literal, emitted when
// messages[0] is not a system message. A literal that stops after "system\n" is the branch that
// prints the conversation's own system message (Qwen2.5) and holds no default.
std::string chatml_default_system(const std::vector<std::string>& literals) {
  const std::string head = std::string(kImStart) + "system\n";
  for (const std::string& l : literals) {
    const size_t at = l.find(head);
    if (at == std::string::npos) continue;
    const size_t begin = at + head.size();
    const size_t end = l.find(kImEnd, begin);
    if (end != std::string::npos && end > begin) return l.substr(begin, end - begin);
  }
  return "";
}

// The first `set date_string = "..."` whose value is a literal (Llama-3.2 tries strftime_now
// first and falls back to the literal).
std::string llama3_default_date(const std::string& src) {
  const std::string_view key = "date_string";
  for (size_t at = src.find(key); at != std::string::npos; at = src.find(key, at + 1)) {
    size_t k = at + key.size();
    while (k < src.size() && src[k] == ' ') ++k;
    if (k >= src.size() || src[k] != '=') continue;
    ++k;
    while (k < src.size() && src[k] == ' ') ++k;
    if (k >= src.size() || (src[k] != '"' && src[k] != '\'')) continue;
    const size_t end = src.find(src[k], k + 1);
    if (end == std::string::npos) continue;
    return src.substr(k + 1, end - k - 1);
  }
  return "";
}

// `| name` or `|name` somewhere in the source.
bool uses_filter(const std::string& src, std::string_view name) {
  for (size_t at = src.find('|'); at != std::string::npos; at = src.find('|', at + 1)) {
    size_t k = at + 1;
    while (k < src.size() && src[k] == ' ') ++k;
    if (src.compare(k, name.size(), name) == 0) return true;
  }
  return false;
}

// Decodes one UTF-8 code point at s[i] (returns its length, 1 for an invalid byte).
size_t utf8_at(std::string_view s, size_t i, uint32_t* cp) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 1;
  if (i + len > s.size()) len = 1;
  if (len == 1) {
    *cp = c;
    return 1;
  }
  uint32_t v = c & (0x7f >> len);
  for (size_t k = 1; k < len; ++k) v = (v << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
  *cp = v;
  return len;
}

// Python's str.isspace: Unicode White_Space plus the ASCII separators 0x1c-0x1f.
bool python_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

void append(std::vector<ChatSegment>& segs, std::string text, bool train) {
  if (text.empty()) return;
  if (!segs.empty() && segs.back().train == train) {
    segs.back().text += text;
  } else {
    segs.push_back({std::move(text), train});
  }
}

std::vector<ChatMessage> with_default_system(const ChatFormat& format,
                                             const std::vector<ChatMessage>& messages) {
  if (messages.empty() || format.default_system.empty() || messages.front().role == "system") {
    return messages;
  }
  std::vector<ChatMessage> out;
  out.reserve(messages.size() + 1);
  out.push_back({"system", format.default_system});
  out.insert(out.end(), messages.begin(), messages.end());
  return out;
}

std::vector<ChatSegment> render_chatml(const ChatFormat& format,
                                       const std::vector<ChatMessage>& messages) {
  std::vector<ChatSegment> segs;
  for (const ChatMessage& m : with_default_system(format, messages)) {
    const bool reply = m.role == "assistant";
    append(segs, std::string(kImStart) + m.role + "\n", false);
    if (reply) {
      append(segs, m.content + std::string(kImEnd), true);
    } else {
      append(segs, m.content + std::string(kImEnd), false);
    }
    append(segs, "\n", false);
  }
  return segs;
}

std::string llama3_header(const std::string& role) {
  return std::string(kStartHeader) + role + std::string(kEndHeader) + "\n\n";
}

std::vector<ChatSegment> render_llama3(const ChatFormat& format,
                                       const std::vector<ChatMessage>& messages_in) {
  const std::vector<ChatMessage> messages = with_default_system(format, messages_in);
  auto content = [&](const std::string& c) { return format.trim_content ? python_strip(c) : c; };
  std::vector<ChatSegment> segs;
  if (messages.empty() && format.system_preamble.empty()) return segs;
  append(segs, std::string(kBeginOfText), false);
  size_t first = 0;
  if (!format.system_preamble.empty()) {
    std::string system;
    if (!messages.empty() && messages[0].role == "system")
      system = content(messages[first++].content);
    append(segs, llama3_header("system") + format.system_preamble + system + std::string(kEotId),
           false);
  }
  for (size_t k = first; k < messages.size(); ++k) {
    const ChatMessage& m = messages[k];
    append(segs, llama3_header(m.role), false);
    append(segs, content(m.content) + std::string(kEotId), m.role == "assistant");
  }
  return segs;
}

}  // namespace

std::string python_strip(std::string_view s) {
  size_t begin = 0;
  while (begin < s.size()) {
    uint32_t cp = 0;
    const size_t len = utf8_at(s, begin, &cp);
    if (!python_space(cp)) break;
    begin += len;
  }
  size_t end = begin;  // one past the last non-space code point
  for (size_t i = begin; i < s.size();) {
    uint32_t cp = 0;
    const size_t len = utf8_at(s, i, &cp);
    i += len;
    if (!python_space(cp)) end = i;
  }
  return std::string(s.substr(begin, end - begin));
}

Result<ChatFormat> detect_chat_format(const std::string& jinja_template) {
  if (jinja_template.empty()) {
    return Error{"model has no chat template; set data.chat_format (chatml, llama3, llama3.1)"};
  }
  const std::vector<std::string> literals = template_literals(jinja_template);
  ChatFormat format;
  if (any_contains(literals, kImStart)) {
    if (any_contains(literals, "<think>")) {
      return Error{
          "chat template renders <think> reasoning blocks (Qwen3 style), which ramstream does not "
          "reproduce; set data.chat_format=chatml to train on plain ChatML"};
    }
    format.kind = ChatFormat::Kind::kChatML;
    format.default_system = chatml_default_system(literals);
    return format;
  }
  if (any_contains(literals, kStartHeader)) {
    format.kind = ChatFormat::Kind::kLlama3;
    format.trim_content = uses_filter(jinja_template, "trim");
    for (const std::string& l : literals) {
      if (l.find("Cutting Knowledge Date:") == std::string::npos) continue;
      const std::string date = llama3_default_date(jinja_template);
      if (date.empty() || !any_contains(literals, "Today Date: ")) {
        return Error{
            "Llama-3 chat template has a \"Cutting Knowledge Date\" but no literal default "
            "date_string; set data.chat_format (llama3 or llama3.1)"};
      }
      format.system_preamble = l + "Today Date: " + date + "\n\n";
      break;
    }
    return format;
  }
  return Error{
      "chat template is neither ChatML (<|im_start|>) nor Llama-3 (<|start_header_id|>); set "
      "data.chat_format (chatml, llama3, llama3.1)"};
}

Result<ChatFormat> chat_format_from_name(const std::string& name) {
  ChatFormat format;
  if (name == "chatml") return format;
  if (name == "llama3" || name == "llama3.1") {
    format.kind = ChatFormat::Kind::kLlama3;
    format.trim_content = true;
    if (name == "llama3.1") {
      format.system_preamble = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n";
    }
    return format;
  }
  return Error{"unknown chat format '" + name + "' (expected chatml, llama3 or llama3.1)"};
}

std::vector<ChatSegment> render_chat(const ChatFormat& format,
                                     const std::vector<ChatMessage>& messages) {
  return format.kind == ChatFormat::Kind::kChatML ? render_chatml(format, messages)
                                                  : render_llama3(format, messages);
}

std::string render_generation_prompt(const ChatFormat& format,
                                     const std::vector<ChatMessage>& messages) {
  std::string text = chat_text(render_chat(format, messages));
  if (format.kind == ChatFormat::Kind::kChatML) {
    text += std::string(kImStart) + "assistant\n";
  } else {
    if (text.empty()) text = std::string(kBeginOfText);
    text += llama3_header("assistant");
  }
  return text;
}

Status validate_conversation(const std::vector<ChatMessage>& messages, std::string_view list_name) {
  const std::string list(list_name);
  auto at = [&](size_t k) { return list + "[" + std::to_string(k) + "]"; };
  if (messages.empty()) return Error{"empty conversation: '" + list + "' has no messages"};
  const ChatMessage* previous = nullptr;  // the last user or assistant message
  size_t previous_index = 0;
  for (size_t k = 0; k < messages.size(); ++k) {
    const ChatMessage& m = messages[k];
    if (m.role != "system" && m.role != "user" && m.role != "assistant") {
      return Error{at(k) + ": unknown role " + quote_bounded(m.role, 40) +
                   " (expected system, user or assistant)"};
    }
    if (python_strip(m.content).empty()) return Error{at(k) + ": empty " + m.role + " message"};
    if (m.role == "system") {
      if (k != 0) {
        return Error{at(k) + ": a system message after the conversation started; the system " +
                     "message must be the first and only one"};
      }
      continue;
    }
    if (previous == nullptr && m.role == "assistant") {
      return Error{at(k) + ": the conversation starts with an assistant message; a user message " +
                   "must come first"};
    }
    if (previous != nullptr && previous->role == m.role) {
      return Error{at(k) + ": two " + m.role + " messages in a row (" + at(previous_index) +
                   " and " + at(k) + "); user and assistant must alternate"};
    }
    previous = &m;
    previous_index = k;
  }
  if (previous == nullptr) return Error{list + ": only a system message, no user message"};
  if (previous->role != "assistant") {
    return Error{at(previous_index) + ": the conversation ends with a user message; it must end " +
                 "with the assistant's reply to train on"};
  }
  return Ok{};
}

std::string chat_text(const std::vector<ChatSegment>& segments) {
  std::string text;
  for (const ChatSegment& s : segments) text += s.text;
  return text;
}

}  // namespace ramstream::data
