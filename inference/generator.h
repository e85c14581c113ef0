// Offloaded generation on the streaming machinery (pipeline/stage_streamer.h): the decode
// schedule next to the Engine's training schedule, over the same stage plan and device.
//
// Prefill runs each prompt through the model layer by layer (all prompts of the batch pass a
// stage before the next stage is used), filling each sequence's KV cache (inference/kv_cache.h).
// Decode is layer-major over the batch (the FlexGen schedule): per step each stage is acquired
// once and applied to every active sequence, in micro-batches of `micro_batch` rows, so weight
// traffic per generated token falls as 1/batch. Stages that are resident stay on the device; the
// rest stream through the slots while the previous stage computes. KV caches take their pages
// from one pool per Generator (inference/kv_pages.h; pinned on CUDA) as sequences grow, and
// generate() gives a row's pages back as soon as the row ends. On the CPU backend the
// stages' views bind straight to the store (no copies) unless `stream_on_cpu` asks for the
// streaming path (tests).
//
//   Generator gen(*dev, store, GeneratorOptions{});            // store: weights-only ParamStore
//   DecodeBatch batch = gen.prefill({ids0, ids1}, /*context=*/512);
//   const float* l0 = batch.logits(0);                         // [vocab] of the last position
//   gen.decode(batch, {next0, next1}, {0, 1});                 // one token for rows 0 and 1
//   GenerateResult r = gen.generate(prompts, opts);            // the whole loop with sampling
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "autograd/rope.h"
#include "inference/kv_cache.h"
#include "inference/kv_mirror.h"
#include "inference/sampling.h"
#include "pipeline/device.h"
#include "pipeline/param_store.h"
#include "pipeline/stage_streamer.h"

namespace ramstream::inference {

struct GeneratorOptions {
  KvCacheConfig kv;
  int num_slots = 2;
  // Stages kept on the device: -1 = all that fit (CPU: bound to the store, no copies), else this
  // many from the first stage on (the rest stream).
  int64_t resident_stages = -1;
  // With resident_stages -1: device bytes the weights may take (-1: no limit). The first stages
  // that fit next to the streaming slots stay resident, the rest stream.
  int64_t weight_device_bytes = -1;
  bool stream_on_cpu = false;  // CPU backend: copy stages into slots like a GPU would
  int64_t micro_batch = 32;    // decode rows per stage application
  // The KV pages' cap in bytes (0: as much as host RAM allows); reaching it is an error that
  // names --kv-memory.
  int64_t kv_max_bytes = 0;
  // A device twin of the KV pages, decode attention on the device (inference/kv_mirror.h): -1 =
  // auto (CUDA: up to half the device memory free once the resident stages are loaded; CPU:
  // none), 0 = none (attention on the host pages), > 0 = at most this many bytes. h2o caches stay
  // on the host.
  int64_t kv_device_bytes = -1;
  // Tests: the twin's backend on any device (host memory standing in for a device).
  std::function<std::unique_ptr<KvMirrorBackend>()> kv_mirror_backend;
};

// The state of a batch of sequences between steps.
class DecodeBatch {
 public:
  int64_t size() const { return static_cast<int64_t>(kv.size()); }
  const float* logits(int64_t row) const { return logits_.data() + row * vocab_; }
  int64_t vocab() const { return vocab_; }
  int64_t position(int64_t row) const { return pos[static_cast<size_t>(row)]; }
  // KV bytes held by all rows (the payload; see SequenceKv::bytes).
  int64_t kv_bytes() const;
  // Frees a finished row's cache, its pages back to the pool; the row must not be decoded again.
  void release(int64_t row) { kv[static_cast<size_t>(row)].reset(); }

  std::vector<std::unique_ptr<SequenceKv>> kv;  // null once released
  std::vector<int64_t> pos;                     // next position of each row
  int64_t context = 0;

 private:
  friend class Generator;
  std::vector<float> logits_;  // [rows][vocab]
  int64_t vocab_ = 0;
};

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  SamplingOptions sampling;
  std::vector<int32_t> stop_ids;  // a row ends after producing one (it is kept)
  bool ignore_eos = false;        // generate exactly max_new_tokens (benchmarks)
  // Called for every token as it is chosen; returning false ends that row (stop strings).
  std::function<bool(int64_t row, int32_t token)> on_token;
};

struct GenerateResult {
  std::vector<std::vector<int32_t>> tokens;  // generated ids per prompt
  std::vector<std::string> stop;             // "eos", "stop" (on_token) or "length"
  int64_t prompt_tokens = 0, new_tokens = 0;
  double prefill_s = 0, decode_s = 0;
  int64_t decode_steps = 0;
  int64_t decode_weight_bytes = 0;  // weight bytes copied to the device while decoding
  int64_t kv_bytes = 0;             // every row's cache as it ended (payload)
  int64_t kv_pages = 0;   // the most pages the Generator's pool held at once while decoding
  int64_t kv_tokens = 0;  // positions in all caches at the end
};

// Rows that pass through the stages together: row i of the batch is rows[i], fed token ids[i] at
// position pos[i] (internal to Generator).
struct DecodeRows {
  std::vector<int64_t> rows;
  std::vector<SequenceKv*> kv;
  std::vector<int64_t> ids, pos;
};

class Generator {
 public:
  Generator(pipeline::Device& dev, pipeline::ParamStore& store, const GeneratorOptions& options);
  ~Generator();

  // Runs the prompts (each non-empty, prompt + new tokens <= context <= the model's context)
  // through the model; each row's logits then hold those of its last prompt token.
  // row_context: per row, the positions it will reach (h2o sizes its budget from it; a row's
  // tokens must not depend on its batch); empty: `context` for every row.
  DecodeBatch prefill(const std::vector<std::vector<int32_t>>& prompts, int64_t context,
                      const std::vector<int64_t>& row_context = {});
  // Feeds tokens[i] to row rows[i] (each row at most once) and updates their logits.
  void decode(DecodeBatch& batch, const std::vector<int32_t>& tokens,
              const std::vector<int64_t>& rows);
  // Feeds `tokens` to row `row` as if decoded one by one (each attends to the cache, then enters
  // it: exactly the decode path), with each layer's GEMMs over all of them at once; the row's
  // logits are then those of the last. Chat uses it to add a turn without re-running the
  // conversation.
  void extend(DecodeBatch& batch, int64_t row, const std::vector<int32_t>& tokens);
  // Prefill + sampling loop. Prompts are run together (one batch); each row's cache is released
  // as the row ends.
  GenerateResult generate(const std::vector<std::vector<int32_t>>& prompts,
                          const GenerateOptions& options);
  // The sampling loop on a batch whose logits are ready (after prefill or extend); history[r]:
  // the tokens row r has seen so far (for the repetition penalty), extended with what it
  // generates. The caches are kept, holding every generated token but each row's last.
  GenerateResult generate_on(DecodeBatch& batch, std::vector<std::vector<int32_t>>& history,
                             const GenerateOptions& options);

  const GeneratorOptions& options() const { return options_; }
  // Decode rows per stage application from the next step on (the planner's choice; >= 1).
  void set_micro_batch(int64_t rows) { options_.micro_batch = rows < 1 ? 1 : rows; }
  int64_t weight_bytes_loaded() const { return streamer_->weight_bytes_loaded(); }
  const KvPagePool& kv_pool() const { return *kv_pool_; }
  // Stages resident under a weight budget of `budget` device bytes (GeneratorOptions).
  int64_t resident_stages_within(int64_t budget) const;
  // The KV pages' device twin; null when there is none.
  const KvDeviceMirror* kv_mirror() const { return kv_mirror_.get(); }
  std::string describe() const;

 private:
  // x [n,C] in the compute dtype -> logits [n,V] fp32 on the host, into batch rows `rows`.
  void head_logits(const pipeline::SlotViews& w, const at::Tensor& x, DecodeBatch& batch,
                   const std::vector<int64_t>& rows);
  at::Tensor block_prefill(const model::BlockParams& w, const at::Tensor& x, SequenceKv& kv,
                           int64_t layer);
  // x [n,C], row i of sequence kv[i] at position pos[i]. consecutive: the rows are successive
  // tokens of one sequence (extend), each attending before the next enters the cache.
  at::Tensor block_decode(const model::BlockParams& w, const at::Tensor& x,
                          const std::vector<SequenceKv*>& kv, const at::Tensor& pos, int64_t layer,
                          bool consecutive = false);
  void run_stages(std::vector<DecodeRows>& micro, DecodeBatch& batch, bool consecutive);
  // The sampling loop; release: free each row's cache as it ends.
  GenerateResult sample_loop(DecodeBatch& batch, std::vector<std::vector<int32_t>>& history,
                             const GenerateOptions& options, bool release);

  pipeline::Device& dev_;
  pipeline::ParamStore& store_;
  GeneratorOptions options_;
  model::ModelConfig cfg_;
  std::unique_ptr<pipeline::Stream> compute_, h2d_;
  std::unique_ptr<pipeline::StageStreamer> streamer_;
  std::shared_ptr<KvPagePool> kv_pool_;  // shared with the batches' caches, which may outlive us
  std::unique_ptr<KvDeviceMirror> kv_mirror_;
  bool kv_mirror_noted_ = false;  // its stop was reported
  autograd::RopeTables rope_;     // positions 0 .. model context - 1
};

}  // namespace ramstream::inference
