// The subcommands of the `ramstream` binary that are more than a few lines, one file each, so that
// each can grow (and be tested) on its own; cli/main.cpp parses the command line and dispatches.
//
//   return ramstream::cli::inspect_command(model_dir);
#pragma once

#include <string>

namespace ramstream::cli {

// `ramstream inspect --model DIR|FILE.gguf`: architecture, parameter counts, memory per mode, and
// the checks `run` makes on the weights and the tokenizer; non-zero exit on any problem.
int inspect_command(const std::string& path);
// `ramstream convert --from FILE.gguf --to DIR [--dtype bf16|fp16|fp32] [--force]`: GGUF ->
// Hugging Face folder; `ramstream convert --from DIR --to FILE.gguf [--type f32|f16|bf16|q8_0]
// [--force]`: Hugging Face folder -> GGUF. The direction follows --from (a folder or a file).
struct ConvertArgs {
  std::string from, to;
  std::string dtype;   // GGUF -> HF weights; "" = bf16
  std::string type;    // HF -> GGUF weights; "" = f16
  bool force = false;  // replace a --to that is not a previous output of ours
};
int convert_command(const ConvertArgs& args);

}  // namespace ramstream::cli
