// Test helpers for GGUF files (test binaries only): rewrite a GGUF with its metadata edited, and
// the kinds of broken tokenizer metadata that must be refused (naming the file and the key)
// rather than converted "without a tokenizer".
//
//   rewrite_gguf(kTinyLlamaGguf, out, [](GgufMetadata& m) { set_key(m, "k", gguf_u32(1)); });
//   for (const GgufTokenizerBreakage& b : gguf_tokenizer_breakages()) { ... b.key ... }
#pragma once

#include <algorithm>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "checkpoint/gguf.h"
#include "checkpoint/gguf_writer.h"

namespace ramstream::checkpoint::testing {

// A small llama GGUF with a tokenizer: tokens a, b, ab, <s>; types 1, 1, 1, 3; merges "a b";
// bos = eos = 3; every tensor f32.
inline const std::string kTinyLlamaGguf = "tests/fixtures/fuzz/gguf/tiny_llama.gguf";

using GgufMetadata = std::vector<std::pair<std::string, GgufValue>>;

// `from`'s metadata after `edit`, with its tensors byte for byte, written to `to`.
inline Status rewrite_gguf(const std::string& from, const std::string& to,
                           const std::function<void(GgufMetadata&)>& edit) {
  Result<GgufFile> base = GgufFile::open(from);
  if (!base.ok()) return base.error();
  GgufMetadata kv;
  for (const std::string& key : base.value().keys()) kv.emplace_back(key, *base.value().find(key));
  edit(kv);
  GgufWriter w;
  for (auto& [key, value] : kv) w.add(key, value);
  for (const std::string& name : base.value().tensor_names()) {
    const GgufTensorInfo info = *base.value().info(name).value();
    const std::string bytes(reinterpret_cast<const char*>(base.value().data(info)), info.nbytes);
    w.add_tensor(name, info.type_id, info.ne,
                 [bytes](OutFile& f) { return f.write(bytes.data(), bytes.size()); });
  }
  return w.write(to);
}

inline void set_key(GgufMetadata& kv, const std::string& key, GgufValue v) {
  for (auto& [k, value] : kv) {
    if (k == key) {
      value = std::move(v);
      return;
    }
  }
  kv.emplace_back(key, std::move(v));
}

inline void erase_keys(GgufMetadata& kv, const std::function<bool(const std::string&)>& pred) {
  kv.erase(std::remove_if(kv.begin(), kv.end(), [&](const auto& p) { return pred(p.first); }),
           kv.end());
}

inline GgufValue gguf_i32(int32_t v) {
  GgufValue x;
  x.type = GgufValueType::kInt32;
  x.i = v;
  return x;
}

struct GgufTokenizerBreakage {
  const char* what;
  const char* key;  // the key the error must name
  std::function<void(GgufMetadata&)> edit;
};

// One edit of kTinyLlamaGguf per kind of broken tokenizer metadata.
inline std::vector<GgufTokenizerBreakage> gguf_tokenizer_breakages() {
  auto set = [](const char* key, GgufValue v) {
    return [key, v](GgufMetadata& m) { set_key(m, key, v); };
  };
  return {
      {"merge naming an unknown token", "tokenizer.ggml.merges[0]",
       set("tokenizer.ggml.merges", gguf_string_array({"zz b"}))},
      {"merge whose result is unknown", "tokenizer.ggml.merges[1]",
       set("tokenizer.ggml.merges", gguf_string_array({"a b", "b a"}))},
      {"merge without a space", "tokenizer.ggml.merges[0]",
       set("tokenizer.ggml.merges", gguf_string_array({"ab"}))},
      {"merges not strings", "tokenizer.ggml.merges",
       set("tokenizer.ggml.merges", gguf_i32_array({1}))},
      {"token_type shorter than tokens", "tokenizer.ggml.token_type",
       set("tokenizer.ggml.token_type", gguf_i32_array({1, 1, 1}))},
      {"token_type value not a llama.cpp type", "tokenizer.ggml.token_type",
       set("tokenizer.ggml.token_type", gguf_i32_array({1, 1, 9, 3}))},
      {"token_type not integers", "tokenizer.ggml.token_type",
       set("tokenizer.ggml.token_type", gguf_string_array({"a", "b", "c", "d"}))},
      {"scores longer than tokens", "tokenizer.ggml.scores",
       set("tokenizer.ggml.scores", gguf_f32_array({0.0f, 1.0f, 2.0f, 3.0f, 4.0f}))},
      {"bos id out of range", "tokenizer.ggml.bos_token_id",
       set("tokenizer.ggml.bos_token_id", gguf_u32(99))},
      {"bos id a string", "tokenizer.ggml.bos_token_id",
       set("tokenizer.ggml.bos_token_id", gguf_string("<s>"))},
      {"eos id one past the vocabulary", "tokenizer.ggml.eos_token_id",
       set("tokenizer.ggml.eos_token_id", gguf_u32(4))},
      {"negative pad id", "tokenizer.ggml.padding_token_id",
       set("tokenizer.ggml.padding_token_id", gguf_i32(-2))},
      {"unknown-token id out of range", "tokenizer.ggml.unknown_token_id",
       set("tokenizer.ggml.unknown_token_id", gguf_u32(1000))},
      {"unknown tokenizer model", "tokenizer.ggml.model",
       set("tokenizer.ggml.model", gguf_string("bert"))},
      {"SentencePiece model", "tokenizer.ggml.model",
       set("tokenizer.ggml.model", gguf_string("llama"))},
      {"no tokenizer model", "tokenizer.ggml.model",
       [](GgufMetadata& m) {
         erase_keys(m, [](const std::string& k) { return k == "tokenizer.ggml.model"; });
       }},
      {"unknown pre-tokenizer", "tokenizer.ggml.pre",
       set("tokenizer.ggml.pre", gguf_string("no-such-pre"))},
      {"tokens not strings", "tokenizer.ggml.tokens",
       set("tokenizer.ggml.tokens", gguf_i32_array({1, 2, 3, 4}))},
      {"add_bos_token not a bool", "tokenizer.ggml.add_bos_token",
       set("tokenizer.ggml.add_bos_token", gguf_u32(1))},
      {"chat template not a string", "tokenizer.chat_template",
       set("tokenizer.chat_template", gguf_u32(0))},
      {"a chat template without a vocabulary", "tokenizer.ggml.model",
       [](GgufMetadata& m) {
         erase_keys(m, [](const std::string& k) { return k.rfind("tokenizer.ggml.", 0) == 0; });
         set_key(m, "tokenizer.chat_template", gguf_string("{{ messages }}"));
       }},
  };
}

}  // namespace ramstream::checkpoint::testing
