// Chat templates against Jinja: tests/fixtures/data/chat_reference.json holds real templates
// (SmolLM2's from the GGUF, Qwen2/2.5's and Llama-3/3.1/3.2's) and what transformers renders for
// a set of conversations (tests/fixtures/make_chat_reference.py).
#include "data/chat.h"

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace ramstream::data {
namespace {

using nlohmann::json;

const char* kReference = "tests/fixtures/data/chat_reference.json";

json load_reference() {
  std::ifstream in(kReference);
  EXPECT_TRUE(in.good()) << kReference;
  return json::parse(in);
}

std::vector<ChatMessage> messages_of(const json& list) {
  std::vector<ChatMessage> out;
  for (const json& m : list) out.push_back({m.at("role"), m.at("content")});
  return out;
}

ChatFormat detect(const std::string& name) {
  static const json ref = load_reference();
  Result<ChatFormat> f = detect_chat_format(ref.at("templates").at(name).get<std::string>());
  EXPECT_TRUE(f.ok()) << name << ": " << (f.ok() ? "" : f.error().message);
  return f.ok() ? f.value() : ChatFormat{};
}

TEST(ChatTemplate, RendersLikeJinjaForEveryReferenceCase) {
  const json ref = load_reference();
  ASSERT_GE(ref.at("cases").size(), 50u);
  std::map<std::string, int> checked;
  for (const json& c : ref.at("cases")) {
    const std::string name = c.at("template");
    const ChatFormat format = detect(name);
    const std::vector<ChatMessage> messages = messages_of(c.at("messages"));
    const std::string expected = c.at("expected");
    const std::string got = c.at("add_generation_prompt").get<bool>()
                                ? render_generation_prompt(format, messages)
                                : chat_text(render_chat(format, messages));
    EXPECT_EQ(got, expected) << name << " " << c.at("messages").dump();
    ++checked[name];
  }
  EXPECT_EQ(checked.size(), 6u);
  for (const auto& [name, n] : checked) EXPECT_GE(n, 10) << name;
}

TEST(ChatTemplate, DetectsDefaultSystemPrompts) {
  EXPECT_EQ(detect("smollm2").kind, ChatFormat::Kind::kChatML);
  EXPECT_EQ(detect("smollm2").default_system,
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  EXPECT_EQ(detect("qwen2").default_system, "You are a helpful assistant.");
  EXPECT_EQ(detect("qwen2_5").default_system,
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  EXPECT_FALSE(detect("qwen2_5").trim_content);
}

TEST(ChatTemplate, DetectsLlama3Variants) {
  const ChatFormat l30 = detect("llama3");
  EXPECT_EQ(l30.kind, ChatFormat::Kind::kLlama3);
  EXPECT_TRUE(l30.trim_content);
  EXPECT_EQ(l30.system_preamble, "");
  EXPECT_EQ(l30.default_system, "");
  const std::string dated = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n";
  EXPECT_EQ(detect("llama3_1").system_preamble, dated);
  EXPECT_EQ(detect("llama3_2").system_preamble, dated);  // strftime_now's fallback date
  EXPECT_TRUE(detect("llama3_1").trim_content);
}

TEST(ChatTemplate, PlainChatMLWithEscapedNewlines) {
  // The escaped-"\n" spelling (as in tokenizer_config.json sources) with no default system.
  const std::string tpl =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
      "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
      "{{ '<|im_start|>assistant\\n' }}{% endif %}";
  Result<ChatFormat> f = detect_chat_format(tpl);
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ(f.value().kind, ChatFormat::Kind::kChatML);
  EXPECT_EQ(f.value().default_system, "");
  EXPECT_EQ(render_generation_prompt(f.value(), {{"user", "hi"}}),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, RefusesUnknownEmptyAndReasoningTemplates) {
  Result<ChatFormat> empty = detect_chat_format("");
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.error().message.find("data.chat_format"), std::string::npos);

  Result<ChatFormat> mistral = detect_chat_format(
      "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
      "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + "
      "eos_token }}{% endif %}{% endfor %}");
  ASSERT_FALSE(mistral.ok());
  EXPECT_NE(mistral.error().message.find("neither ChatML"), std::string::npos);

  Result<ChatFormat> qwen3 =
      detect_chat_format("{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}");
  ASSERT_FALSE(qwen3.ok());
  EXPECT_NE(qwen3.error().message.find("<think>"), std::string::npos);
}

TEST(ChatTemplate, FormatsByName) {
  ASSERT_TRUE(chat_format_from_name("chatml").ok());
  EXPECT_EQ(chat_format_from_name("chatml").value().kind, ChatFormat::Kind::kChatML);
  ASSERT_TRUE(chat_format_from_name("llama3").ok());
  EXPECT_EQ(chat_format_from_name("llama3").value().system_preamble, "");
  ASSERT_TRUE(chat_format_from_name("llama3.1").ok());
  // "llama3.1" renders exactly what the Llama-3.1 template does.
  const ChatFormat by_name = chat_format_from_name("llama3.1").value();
  const ChatFormat detected = detect("llama3_1");
  EXPECT_EQ(by_name.system_preamble, detected.system_preamble);
  EXPECT_EQ(by_name.trim_content, detected.trim_content);
  Result<ChatFormat> bad = chat_format_from_name("vicuna");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("vicuna"), std::string::npos);
}

TEST(ChatTemplate, MarksAssistantContentAndEndOfTurnAsTrained) {
  const std::vector<ChatMessage> conv = {
      {"user", "2+2?"}, {"assistant", "4"}, {"user", "and 3+3?"}, {"assistant", "6"}};
  const std::vector<ChatSegment> chatml = render_chat(detect("qwen2"), conv);
  const std::vector<ChatSegment> want = {
      {"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n2+2?"
       "<|im_end|>\n<|im_start|>assistant\n",
       false},
      {"4<|im_end|>", true},
      {"\n<|im_start|>user\nand 3+3?<|im_end|>\n<|im_start|>assistant\n", false},
      {"6<|im_end|>", true},
      {"\n", false}};
  ASSERT_EQ(chatml.size(), want.size());
  for (size_t k = 0; k < want.size(); ++k) {
    EXPECT_EQ(chatml[k].text, want[k].text) << k;
    EXPECT_EQ(chatml[k].train, want[k].train) << k;
  }

  const std::vector<ChatSegment> llama = render_chat(detect("llama3"), conv);
  ASSERT_EQ(llama.size(), 4u);
  EXPECT_EQ(llama[0].text,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_FALSE(llama[0].train);
  EXPECT_EQ(llama[1].text, "4<|eot_id|>");
  EXPECT_TRUE(llama[1].train);
  EXPECT_EQ(llama[3].text, "6<|eot_id|>");
  EXPECT_TRUE(llama[3].train);
}

TEST(ChatTemplate, EmptyReplyStillTrainsItsEndOfTurn) {
  const std::vector<ChatSegment> segs =
      render_chat(detect("smollm2"), {{"user", "x"}, {"assistant", ""}});
  ASSERT_GE(segs.size(), 2u);
  EXPECT_EQ(segs[1].text, "<|im_end|>");
  EXPECT_TRUE(segs[1].train);
}

TEST(ChatTemplate, PythonStripMatchesJinjaTrim) {
  EXPECT_EQ(python_strip("  a b \n"), "a b");
  EXPECT_EQ(python_strip("\xC2\xA0x\xE3\x80\x80"), "x");      // NBSP, ideographic space
  EXPECT_EQ(python_strip("\xE2\x80\x83y\xE2\x80\xA8"), "y");  // em space, line separator
  EXPECT_EQ(python_strip("\x1c z\x1f"), "z");                 // ASCII separators count
  EXPECT_EQ(python_strip("\xE2\x80\x8B"
                         "z"),
            "\xE2\x80\x8B"
            "z");  // zero-width space does not
  EXPECT_EQ(python_strip("caf\xC3\xA9"), "caf\xC3\xA9");
  EXPECT_EQ(python_strip(" \t\n"), "");
  EXPECT_EQ(python_strip(""), "");
}

// ---- validate_conversation -------------------------------------------------------------------

// A well-formed conversation: an optional system message, then `pairs` user/assistant turns.
std::vector<ChatMessage> well_formed(bool system, int pairs) {
  std::vector<ChatMessage> m;
  if (system) m.push_back({"system", "Be brief."});
  for (int k = 0; k < pairs; ++k) {
    m.push_back({"user", "question " + std::to_string(k)});
    m.push_back({"assistant", "answer " + std::to_string(k)});
  }
  return m;
}

TEST(ChatValidation, AcceptsWellFormedConversations) {
  for (bool system : {false, true}) {
    for (int pairs = 1; pairs <= 4; ++pairs) {
      Status st = validate_conversation(well_formed(system, pairs));
      EXPECT_TRUE(st.ok()) << (st.ok() ? "" : st.error().message);
    }
  }
}

// Every kind of malformed conversation, generated over many shapes and positions: refused, the
// message names the first message at fault and what is wrong with it.
TEST(ChatValidation, RejectsEveryKindOfMalformedConversationNamingTheMessage) {
  enum Kind {
    kAssistantFirst,
    kSystemLate,
    kTwoUsers,
    kTwoAssistants,
    kUnknownRole,
    kEmpty,
    kNoReply,
    kKinds
  };
  const char* unknown_roles[] = {"bot", "User", "tool", "", "function", "gpt"};
  const char* blank_contents[] = {"", " ", "\t\n", "\xC2\xA0"};
  uint64_t rng = 12345;
  auto below = [&rng](size_t n) {
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<size_t>((rng >> 33) % n);
  };
  int checked = 0;
  for (int kind = 0; kind < kKinds; ++kind) {
    for (int variant = 0; variant < 24; ++variant) {
      const bool system = variant % 2 == 1;
      std::vector<ChatMessage> m = well_formed(system, 1 + variant / 2 % 4);
      const size_t first = system ? 1 : 0;  // index of the first user message
      size_t at = 0;
      std::string what;
      switch (kind) {
        case kAssistantFirst:
          m.erase(m.begin() + first);
          at = first;
          what = "starts with an assistant message";
          break;
        case kSystemLate:
          at = 1 + below(m.size());  // 1..size: anywhere after the start, the end included
          m.insert(m.begin() + at, {"system", "Late."});
          what = "a system message after the conversation started";
          break;
        case kTwoUsers:
        case kTwoAssistants: {
          const size_t pair = below((m.size() - first) / 2);
          const size_t i = first + 2 * pair + (kind == kTwoUsers ? 0 : 1);
          m.insert(m.begin() + i + 1, m[i]);
          at = i + 1;
          what = std::string("two ") + (kind == kTwoUsers ? "user" : "assistant") +
                 " messages in a row (messages[" + std::to_string(i) + "] and messages[" +
                 std::to_string(at) + "])";
          break;
        }
        case kUnknownRole:
          at = below(m.size());
          m[at].role = unknown_roles[below(std::size(unknown_roles))];
          what = "unknown role '" + m[at].role + "'";
          break;
        case kEmpty:
          at = below(m.size());
          m[at].content = blank_contents[below(std::size(blank_contents))];
          what = "empty " + m[at].role + " message";
          break;
        case kNoReply:
          m.pop_back();
          at = m.size() - 1;
          what = "ends with a user message";
          break;
      }
      Status st = validate_conversation(m);
      ASSERT_FALSE(st.ok()) << "kind " << kind << " variant " << variant;
      const std::string& msg = st.error().message;
      EXPECT_EQ(msg.rfind("messages[" + std::to_string(at) + "]: ", 0), 0u)
          << "kind " << kind << ": " << msg;
      EXPECT_NE(msg.find(what), std::string::npos) << "kind " << kind << ": " << msg;
      ++checked;
    }
  }
  EXPECT_EQ(checked, kKinds * 24);
}

TEST(ChatValidation, NamesTheListAndRefusesEmptyOrSystemOnly) {
  Status empty = validate_conversation({}, "conversations");
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.error().message.find("'conversations' has no messages"), std::string::npos);
  Status system_only = validate_conversation({{"system", "S"}}, "conversations");
  ASSERT_FALSE(system_only.ok());
  EXPECT_NE(system_only.error().message.find("only a system message"), std::string::npos);
  Status late =
      validate_conversation({{"user", "q"}, {"assistant", "a"}, {"user", "q2"}}, "conversations");
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.error().message.rfind("conversations[2]: ", 0), 0u) << late.error().message;
  // A long unknown role is quoted cut short, not echoed whole.
  Status long_role = validate_conversation({{std::string(5000, 'x'), "q"}, {"assistant", "a"}});
  ASSERT_FALSE(long_role.ok());
  EXPECT_LT(long_role.error().message.size(), 300u);
}

}  // namespace
}  // namespace ramstream::data
