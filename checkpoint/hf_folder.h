// Saves our parameters as a Hugging Face model folder that transformers and vLLM load as is.
//
// The folder holds config.json (model_config_to_json, plus "dtype"/"torch_dtype" for the chosen
// dtype, bos/eos/pad token ids carried over from the source config.json, then `extra_config`
// merged in as an RFC 7396 merge patch: null deletes a key), the weights (model.safetensors, or
// shards plus model.safetensors.index.json over max_shard_bytes; HF names from model/hf_names.h;
// a tied model has no lm_head.weight, as transformers writes it), and every non-weight file of
// `copy_from_dir` (tokenizer.json, tokenizer_config.json, special_tokens_map.json,
// generation_config.json, chat_template.jinja, tokenizer.model, README.md, ...: all regular
// files at its top level except weights (*.safetensors, *.bin, *.pt, *.pth, *.ckpt, *.gguf,
// *.h5, *.msgpack, *.onnx, *.index.json), config.json and leftover temp names). Without a
// generation_config.json to copy, a minimal one is written when bos or eos ids are known.
//
// Weights stream from `params` (typically the fp32 master copy in host RAM) through one 16 MiB
// staging buffer, converting to `dtype` on the way: saving needs no second copy of the model.
// The whole folder is staged and published atomically (checkpoint/atomic_file.h): on any error
// `dir` keeps its previous content, no half-written folder is ever visible under its name, and
// the staging folder is removed. Missing parent folders are created; errors about the parent
// name it.
//
// A folder save_hf_folder writes holds kHfOutputMarker, ramstream_output.json:
//   {"written_by": "ramstream", "kind": "hf_model_folder", "files": ["config.json", ...]}
// listing every entry the save put there. An existing `dir` is replaced as a whole (not merged
// into) only when it is empty or such an output whose entries are all listed in its marker, so a
// save never deletes files it did not write: any other folder (a user's, a download, one of our
// outputs a user has added files to, a training checkpoint) is refused unless
// opts.replace_foreign.
//
//   HfSaveOptions opts;
//   opts.copy_from_dir = "/models/smollm2";  // tokenizer, chat template, generation config
//   Status st = save_hf_folder("out/step_000500", cfg, params, opts);
//   if (!st.ok()) std::cerr << st.error().message << "\n";
//   // Later: load_model_config(dir + "/config.json") and load_hf_weights(dir, ...) read it back.
//
// A caller that adds files of its own to the same folder (a training checkpoint) stages it itself
// and calls write_hf_folder_files() into the staging folder, then commits the whole.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "model/config.h"
#include "model/params.h"
#include "util/result.h"

namespace ramstream::checkpoint {

// The marker file of a folder save_hf_folder wrote (see above).
constexpr const char* kHfOutputMarker = "ramstream_output.json";

struct HfSaveOptions {
  at::ScalarType dtype = at::kBFloat16;  // on disk: kBFloat16, kHalf or kFloat
  uint64_t max_shard_bytes = 5ull << 30;
  std::string copy_from_dir;  // source HF folder for the non-weight files; empty: none
  // Writes more files into the folder being saved, before the weights (a tokenizer built in
  // memory: data::Tokenizer::save); its Error aborts the save.
  std::function<Status(const std::string& dir)> write_extra_files;
  // save_hf_folder replaces a non-empty `dir` that is not a previous output (`--force`).
  bool replace_foreign = false;
  nlohmann::json extra_config = nlohmann::json::object();  // merged into config.json
  // Called after each tensor is written; an Error aborts the save (progress, tests).
  std::function<Status(const std::string& hf_name)> after_tensor;
  // The order the weights are written in (and after_tensor called in): a permutation of
  // hf_param_names(cfg). Empty: HF order. Loaders do not care (the header and the index map
  // names); a checkpoint writer uses it to finish one stage's tensors before the next stage's.
  std::vector<std::string> tensor_order;
};

// {"bos_token_id", "eos_token_id", "pad_token_id"} for the ids >= 0: the extra_config that gives a
// model without a source config.json (a GGUF import) its token ids and a generation_config.json,
// so that generation stops at eos.
nlohmann::json token_ids_config(int64_t bos_id, int64_t eos_id, int64_t pad_id);

// True for the file names save_hf_folder copies from a source folder (see above; never the
// marker).
bool is_hf_non_weight_file(const std::string& file_name);

// Ok when save_hf_folder may replace `dir` without replace_foreign: it does not exist, is an
// empty folder, or is a previous output whose entries its marker all lists. Otherwise an Error
// naming `dir` and what is in the way (a file, or up to a few entries that are not ours).
Status check_replaceable_output(const std::string& dir);

Status save_hf_folder(const std::string& dir, const model::ModelConfig& cfg,
                      model::ModelParams& params, const HfSaveOptions& opts = {});

// The same files written into the existing folder `dir` with no staging of the folder (each
// file is still written atomically): for callers that stage and commit a larger folder
// themselves. Everything that can be checked is checked before the first file is written.
Status write_hf_folder_files(const std::string& dir, const model::ModelConfig& cfg,
                             model::ModelParams& params, const HfSaveOptions& opts = {});

}  // namespace ramstream::checkpoint
