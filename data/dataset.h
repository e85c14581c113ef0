// Datasets for fine-tuning: read a file in one of the common formats, render conversations with
// the model's chat template, tokenize, mask prompts from the loss, pack into fixed-length rows,
// split off a validation set and shuffle deterministically; the tokenised result is cached.
//
// Formats (DatasetOptions::format; "auto" looks at the extension and the first record):
//   text      plain text file; documents separated by blank lines; every token trained
//   jsonl     {"text": "..."} per line; every token trained
//   alpaca    {"instruction", "input" (optional), "output"}: user = instruction [+ "\n\n" + input]
//   sharegpt  {"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}
//   messages  {"messages": [{"role": ..., "content": ...}, ...]} (OpenAI style)
// `columns` renames fields, e.g. {"instruction": "question", "output": "answer"}. The fields:
// text, instruction, input, output, conversations, from, value, messages, role, content.
// The json formats accept .jsonl (one object per line; blank lines skipped) or .json (one array
// of objects). "auto": .txt/.text/.md are text; otherwise a file starting with '{' or '[' is json
// whose format is told by the keys of its first record (messages, conversations, instruction,
// text, in that order of preference); anything else is text.
//
// Tokens and loss mask (what Hugging Face TRL / torchtune do with these templates):
//   * chat formats: the conversation is rendered by data/chat.h and each segment encoded on its
//     own, so a reply is tokenised exactly as at inference time, after a generation prompt that
//     was encoded by itself. Segments meet at special tokens or after the header's "\n", where
//     byte-level BPE pre-tokenizers split anyway: the ids equal those of the whole rendered text
//     except when a ChatML reply starts with white space, which the whole-text encoding merges
//     with the "\n" before it (Llama-3 templates trim replies). Only tokens of assistant content
//     and the end-of-turn marker that closes it (<|im_end|>, <|eot_id|>) are predicted:
//     labels[i] = ids[i+1] when token i+1 is one of them, else kIgnoreLabel. The "\n" after
//     <|im_end|> and every header are not trained. With the SmolLM2 tokenizer, ids and labels of
//     all 4000 bundled tasks equal transformers' apply_chat_template ids with the assistant spans
//     masked through offset mapping.
//     train_on_prompt = true predicts every next token.
//   * text / jsonl: [bos] + text + [eos]; every next token is predicted. bos only when
//     encoder.add_bos() (Llama-3 yes; SmolLM2, Qwen2 no, as their tokenizers do).
//   * bos before a conversation only when encoder.add_bos() and the rendering does not already
//     start with bos (Llama-3's template writes <|begin_of_text|> itself; SmolLM2's bos is
//     <|im_start|>, which every conversation starts with anyway).
// Rows are max_seq_len long and labels never cross a row or an example: labels[i] is ids[i+1]
// of the same row and the same example, or kIgnoreLabel. Padding is eos (0 when the model has
// none) with kIgnoreLabel.
// Positions: positions[i] is token i's place in its document, 0 where a document (or the piece of
// a text document that a row holds) starts, else positions[i-1] + 1. The model sees a packed row
// as its documents one by one: RoPE at these positions, and token i attends only to tokens
// i - positions[i] .. i (autograd/positions.h). Padding continues the positions of the document
// before it: it comes after every real token of its row and carries no label, so nothing reads
// it, and a row holding one example stays 0..T-1 (plain causal attention, the fast path).
//   * pack = true: examples are concatenated in (shuffled) order. A conversation never straddles
//     two rows: when it does not fit in what is left of a row, the row is padded and it starts the
//     next one (torchtune's split_across_pack = false). Text documents are cut at row ends and
//     continue in the next row (split_across_pack = true), so only the last row is padded.
//   * pack = false: one conversation per row; a long text document fills several rows.
//   * A conversation longer than max_seq_len keeps its first max_seq_len tokens and is counted in
//     num_truncated (with a warning naming the max_seq_len that keeps 95% / all of them whole); a
//     text document is never truncated, only split. Rows left with no trained token are dropped.
//     When more than half of the conversations lose their whole reply, or no training row keeps
//     a trained token, load_dataset refuses with that advice instead of training on (almost)
//     nothing.
// Validation: a seeded permutation of the examples (before tokenisation) gives the validation
// examples (its first val_size) and the training order (the rest); val_rows are packed the same
// way, val_examples keep them untokenised in file order.
//
//   DatasetOptions opt;  opt.path = "data/bundled/tasks_train.jsonl";  opt.max_seq_len = 256;
//   Result<Dataset> ds = load_dataset(opt, tokenizer, chat_format);
//   DataLoader loader(ds.value().train_rows, /*batch=*/8, /*seed=*/42);
//   Batch b = loader.next();   // b.ids / b.targets / b.positions: [batch * seq_len] int64
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "data/chat.h"
#include "data/tokenizer.h"
#include "util/result.h"

namespace ramstream::data {

constexpr int32_t kIgnoreLabel = -100;  // same value as autograd::kIgnoreIndex

struct DatasetOptions {
  std::string path;
  std::string format = "auto";  // auto | text | jsonl | alpaca | sharegpt | messages
  std::map<std::string, std::string> columns;
  std::string system_prompt;     // overrides the template's default system prompt when set
  bool train_on_prompt = false;  // false: only assistant replies carry a loss
  // false: a malformed record is an error naming file:line; true: skipped and counted. Malformed
  // includes conversations that fail validate_conversation (data/chat.h): roles out of order, an
  // empty message, no reply at the end.
  bool skip_malformed = false;
  int64_t max_seq_len = 512;
  bool pack = true;  // concatenate examples into rows of max_seq_len (else one example per row)
  // Validation split: val_size examples if > 0, else val_fraction of them (rounded down).
  int64_t val_size = 0;
  double val_fraction = 0.0;
  uint64_t seed = 0;      // split and shuffle
  std::string cache_dir;  // "" disables the tokenised cache
};

// One example before tokenisation: the conversation, and (for chat formats) the final assistant
// reply alone, which exact-match evaluation compares generations against.
struct RawExample {
  std::vector<ChatMessage> messages;  // chat formats
  std::string text;                   // text / jsonl formats
  int64_t line = 0;                   // 1-based line (jsonl) or record index (json), for errors
};

// Tokens of one example, or one packed row: ids[i] is the input token and labels[i] the token it
// must predict (ids[i+1] of the same example) or kIgnoreLabel; positions[i] its position in its
// document (see above; empty means 0..n-1, one document).
struct TokenRow {
  std::vector<int32_t> ids;
  std::vector<int32_t> labels;
  std::vector<int32_t> positions;
};

struct Dataset {
  std::vector<TokenRow> train_rows, val_rows;    // each exactly max_seq_len long (padded)
  std::vector<RawExample> val_examples;          // the validation examples, untokenised
  int64_t num_examples = 0, num_skipped = 0;     // read / malformed and skipped
  int64_t num_truncated = 0;                     // examples longer than max_seq_len (cut)
  int64_t train_tokens = 0, trained_tokens = 0;  // non-padding tokens in train rows / labels
  bool from_cache = false;
  std::string cache_path;  // the cache file used or written; "" when the cache is off
  // For the caller to log: skipped records (with the first reason), a cache that was corrupt or
  // could not be written, examples left with no trained token after truncation.
  std::vector<std::string> warnings;
};

// Reads and parses the file only (for the validation set's raw examples and for tests).
Result<std::vector<RawExample>> read_examples(const DatasetOptions& opts);
// Everything above. Errors: a missing file or one that is not a regular file (a folder, a device),
// unknown format, malformed record (file:line and what is wrong) unless skip_malformed, an empty
// dataset, a validation split that leaves no training row, replies cut away by max_seq_len (see
// above), a tokenizer that turns every example into no tokens.
//
// Cache (opts.cache_dir set and encoder.fingerprint() not ""): `<cache_dir>/dataset-<hash>.bin`
// keyed by the file's size and content hash, every option above that changes tokens, the chat
// format and the encoder's fingerprint, bos, eos and add_bos. It holds the whole Dataset and is
// written atomically; a corrupt or unreadable one is rebuilt with a warning.
Result<Dataset> load_dataset(const DatasetOptions& opts, const TextEncoder& encoder,
                             const ChatFormat& chat);

// Tokens of one example before packing: bos, the rendered conversation or text, eos (text), and
// labels per the rules above (last label kIgnoreLabel). Not truncated.
TokenRow tokenize_example(const RawExample& example, const TextEncoder& encoder,
                          const ChatFormat& chat, bool train_on_prompt);

// The permutation of 0..n-1 used for the split, the training order and every epoch: Fisher-Yates
// driven by splitmix64, so it is the same on every platform and standard library.
std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed);

struct Batch {
  int64_t batch = 0, seq_len = 0;
  std::vector<int64_t> ids, targets, positions;  // [batch * seq_len] row-major
};

// Position in the stream of batches; saved in checkpoints so a resumed run continues with the
// same sample.
struct DataCursor {
  int64_t epoch = 0;
  int64_t index = 0;  // next row within the epoch's permutation
};

// Endless batches over `rows`, reshuffled every epoch by (seed, epoch); deterministic. A batch
// may span two epochs; cursor() always names the next row (index < rows_per_epoch()).
//
//   DataCursor saved = loader.cursor();           // store in the checkpoint
//   DataLoader resumed(rows, batch, seed);  resumed.seek(saved);   // same batches from here on
class DataLoader {
 public:
  // Throws std::invalid_argument for no rows, rows of different lengths, positions that are
  // neither empty nor one per token, or batch < 1.
  DataLoader(std::vector<TokenRow> rows, int64_t batch, uint64_t seed);
  Batch next();
  DataCursor cursor() const { return cursor_; }
  // Throws std::invalid_argument for a negative epoch or an index outside [0, rows_per_epoch()].
  void seek(const DataCursor& cursor);
  int64_t rows_per_epoch() const { return static_cast<int64_t>(rows_.size()); }

 private:
  std::vector<TokenRow> rows_;
  int64_t batch_;
  uint64_t seed_;
  DataCursor cursor_;
  std::vector<int64_t> order_;  // permutation of the current epoch
};

}  // namespace ramstream::data
