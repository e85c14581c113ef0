// Chat templates: turn a conversation into text the way the model was trained to see it, with
// each piece marked as trained (assistant replies and their end-of-turn token) or not.
//
// Two formats, picked from the model's chat template (tokenizer_config.json or GGUF metadata):
//   ChatML (SmolLM2, Qwen2):  <|im_start|>{role}\n{content}<|im_end|>\n ... <|im_start|>assistant\n
//   Llama-3:  <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>
// A template that injects a default system prompt when the conversation has none (SmolLM2's,
// Qwen2's) has it detected and reproduced. Llama-3 templates trim every content (Python's
// str.strip, Unicode spaces included); Llama-3.1/3.2 ones always open with a system turn that
// starts "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n". Llama-3.2's
// template takes today's date from strftime_now when Hugging Face renders it; we always use the
// template's own fallback date ("26 Jul 2024") so that tokens do not change from day to day.
// Tool calls, tool messages and reasoning ("<think>", Qwen3) are not supported; a template with
// "<think>" is refused rather than rendered differently from Hugging Face.
//
// The rendering equals the Jinja rendering of SmolLM2's, Qwen2's, Qwen2.5's, Llama-3's,
// Llama-3.1's and Llama-3.2's templates for conversations of system/user/assistant messages
// (tests/fixtures/make_chat_reference.py, data/chat_test.cpp).
//
// Conversations read from data files are checked first (validate_conversation): the roles must be
// in the order the templates assume, as torchtune's message validation requires.
//
//   Result<ChatFormat> fmt = detect_chat_format(tokenizer.chat_template());
//   std::vector<ChatMessage> convo = {{"user", "2+2?"}, {"assistant", "4"}};
//   Status ok = validate_conversation(convo);   // "messages[1]: two user messages in a row"
//   std::vector<ChatSegment> segs = render_chat(fmt.value(), convo);
//   std::string prompt = render_generation_prompt(fmt.value(), {{"user", "2+2?"}});
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "util/result.h"

namespace ramstream::data {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

struct ChatFormat {
  enum class Kind { kChatML, kLlama3 } kind = Kind::kChatML;
  std::string default_system;  // inserted when a conversation has no system message; may be ""
  // Llama-3.1+: the text that opens the system turn, which is then always present (empty system
  // content when the conversation has none): "Cutting Knowledge Date: ...\nToday Date: ...\n\n".
  std::string system_preamble;
  bool trim_content = false;  // Llama-3: every content goes through Jinja's `trim`
};

// Errors for an empty template ("model has no chat template; set data.chat_format") and for one
// that is neither ChatML nor Llama-3. `name` forces a format instead: "chatml" (no default
// system prompt), "llama3" (Llama-3.0: trimmed contents) or "llama3.1" (also the dated system
// turn of Llama-3.1/3.2).
Result<ChatFormat> detect_chat_format(const std::string& jinja_template);
Result<ChatFormat> chat_format_from_name(const std::string& name);

struct ChatSegment {
  std::string text;
  bool train = false;  // true: assistant content plus its end-of-turn marker
};

// The whole conversation; concatenating the segments' text gives exactly what the model's Jinja
// template renders (add_generation_prompt = false).
std::vector<ChatSegment> render_chat(const ChatFormat& format,
                                     const std::vector<ChatMessage>& messages);
// The conversation followed by the assistant header: the prompt for generating the next reply.
std::string render_generation_prompt(const ChatFormat& format,
                                     const std::vector<ChatMessage>& messages);

// Ok when `messages` is a conversation to train on: every role is system, user or assistant; at
// most one system message, and only first; then user and assistant alternate, starting with the
// user; no content is empty (or only white space); the last message is the assistant's reply.
// Otherwise an error naming the first message at fault as `list_name[index]` and what is wrong,
// e.g. "messages[3]: two user messages in a row (messages[2] and messages[3])".
Status validate_conversation(const std::vector<ChatMessage>& messages,
                             std::string_view list_name = "messages");

// The segments' text, concatenated.
std::string chat_text(const std::vector<ChatSegment>& segments);
// Jinja's `trim` (Python's str.strip()): removes leading and trailing Unicode white space.
std::string python_strip(std::string_view text);

}  // namespace ramstream::data
