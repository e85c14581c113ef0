// The one way to read JSON a user gives us (model config.json, tokenizer.json and its config,
// generation_config.json, model.safetensors.index.json, a JSONL dataset line): the file must be a
// regular file no larger than a limit, the document may nest at most `max_depth` levels and hold
// at most `max_values` values, all checked while parsing, before the tree is built (deep trees
// overflow the stack in nlohmann's recursive copy and dump()). Errors name the file and, for
// syntax errors, line:column, and quote at most a few dozen bytes of the input.
//
//   Result<nlohmann::json> cfg = read_json_file(dir + "/config.json", "the model config");
//   if (!cfg.ok()) return cfg.error();  // "m/config.json:3:7: invalid JSON: syntax error ..."
//   Result<nlohmann::json> row = parse_json(line, path, JsonLimits{}, /*first_line=*/42);
//   msg += "expected a number, found " + describe_json(value);  // "a string 'abc'"
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "util/result.h"

namespace ramstream {

struct JsonLimits {
  uint64_t max_bytes = 64ull << 20;  // file size (read_json_file only)
  int max_depth = 64;                // nesting of arrays and objects; real files need < 10
  // Values in the document: each costs 16 bytes of tree plus its container's share (~50-80
  // bytes in all), so this bounds the memory a small but dense file can make the tree take.
  uint64_t max_values = 1ull << 22;
  // Refuse a key given twice in one object (the tree would silently keep the last).
  bool unique_keys = false;
};

// `text` as JSON. `source` names it in errors ("path" or "path" of a JSONL file whose line
// `first_line` `text` starts on).
Result<nlohmann::json> parse_json(std::string_view text, const std::string& source,
                                  const JsonLimits& limits = {}, int64_t first_line = 1);

// The JSON file `path`; `what` says what it should be in errors ("the model config").
Result<nlohmann::json> read_json_file(const std::string& path, const char* what,
                                      const JsonLimits& limits = {});

// A short, flat description of a value for error messages, never a dump of a whole tree:
// "a string 'abc'", "the number 1.5", "true", "null", "an array of 3 values",
// "an object with 2 keys" (strings and numbers cut to `max_bytes`).
std::string describe_json(const nlohmann::json& value, size_t max_bytes = 60);

}  // namespace ramstream
