// Training-state checkpoints: everything needed to resume a run exactly, saved atomically while
// training goes on, verified by checksums, and found again after a crash.
//
// Layout of one checkpoint, output_dir/step_NNNNNN/ (six digits, more when needed):
//   config.json, model*.safetensors, tokenizer and other non-weight files   the HF model folder
//                                                                           (checkpoint/hf_folder.h)
//   trainer_state/stage_SSS.safetensors   per engine stage: fp32 "master.<hf name>",
//                                         "exp_avg.<hf name>", "exp_avg_sq.<hf name>"
//   trainer_state/state.json              {"format": "ramstream.train_state", "version": 1,
//                                          "step", "config_hash", "trainer": {...caller's...},
//                                          "stages": [stage names], "files": {"<relative path>":
//                                          {"bytes", "crc32c"}}, "state_crc32c"}
// A store whose master weights are not all finite (a diverged run) is refused with an error, so
// such a state never becomes a checkpoint.
// state.json is written last and lists every other file of the folder with its size and CRC-32C
// (hex); "state_crc32c" is the CRC-32C of state.json's own content without that key (compact
// dump), so a flipped bit anywhere in the folder is found. The whole folder is staged under
// `step_NNNNNN.tmp-<pid>` and renamed into place (StagedDir, atomic_file.h) after an fsync of
// every file, so a crash at any point leaves the earlier checkpoints intact and at worst a stale
// temp folder, which list_checkpoints() ignores (as any name other than step_<digits>).
// With tied embeddings the HF folder has no lm_head.weight (it is the embedding) and the head
// stage's file holds only the final norm.
//
//   CheckpointOptions opt;  opt.keep_last_n = 3;  opt.hf.copy_from_dir = model_dir;
//   // Synchronous:
//   Status st = save_checkpoint(out, engine.step(), store, trainer_json, config_hash, opt);
//   // Overlapped with the next step (no second copy of the state in RAM):
//   AsyncCheckpointWriter writer(engine, store);
//   engine.synchronize();
//   writer.start(out, engine.step(), trainer_json, config_hash, opt);
//   engine.train_step(ids, targets);   // each stage's update waits until that stage is written
//   engine.synchronize();
//   Status done = writer.wait();       // at a step boundary, on the thread driving the engine
//   // Resume:
//   Result<CheckpointRef> latest = find_latest_valid_checkpoint(out, &problems);
//   Result<TrainStateMeta> meta = load_checkpoint(latest.value().path, store);
//   engine.set_step(meta.value().step);   // and restore the data cursor etc. from meta.trainer
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkpoint/crc32c.h"
#include "checkpoint/hf_folder.h"
#include "pipeline/engine.h"
#include "pipeline/param_store.h"
#include "util/result.h"

namespace ramstream::checkpoint {

struct CheckpointOptions {
  // The model folder: dtype, tokenizer files to copy, progress. hf.after_tensor is called after
  // each HF weight is written (an Error aborts the save); hf.tensor_order is set by the save.
  HfSaveOptions hf;
  // > 0: once the new checkpoint is committed, delete the older step_* folders (steps below the
  // new one) beyond the n - 1 newest, so n remain. Folders of later steps are left alone.
  int keep_last_n = 0;
  // The order stages are written in (a permutation of 0..num_stages-1); it fixes the order of
  // the tensors in the HF weight files. Empty: engine.update_order() for AsyncCheckpointWriter
  // (so the next step's first updates wait least), stage order for save_checkpoint(). Two saves
  // of the same state with the same order produce identical files.
  std::vector<int64_t> stage_order;
  // A store whose optimizer state is sharded over ranks (ParamStore::sharded(), synchronous
  // saves only): called on the saving thread once per stage, in stage order, before that
  // stage's trainer_state file is written; returns the stage's whole m and v ([numel] fp32,
  // valid until the next call), e.g. gathered from every rank. The file format is that of an
  // unsharded store, so any number of ranks resumes from it.
  std::function<std::pair<at::Tensor, at::Tensor>(int64_t stage)> gather_moments;
  // A store whose masters are sharded too (ParamStore::masters_sharded(): the bf16 layout): every
  // stage's whole fp32 masters, gathered before the save (the HF folder is written from them).
  std::vector<at::Tensor> whole_masters;
};

// What the last save wrote and how long it took.
struct CheckpointStats {
  uint64_t bytes = 0;            // every file of the committed folder
  double seconds = 0;            // from start to commit (and clean-up)
  double gate_wait_seconds = 0;  // async: time the optimizer spent waiting for the writer
};

struct TrainStateMeta {
  int64_t step = 0;
  std::string config_hash;
  nlohmann::json trainer;  // data cursor, RNG states, LR-schedule state: owned by the caller
};

struct CheckpointRef {
  std::string path;  // output_dir/step_NNNNNN
  int64_t step = 0;
};

// "output_dir/step_000123".
std::string checkpoint_dir(const std::string& output_dir, int64_t step);

// crc32c(data, bytes, crc): CRC-32C of a byte range, declared in checkpoint/crc32c.h.

// Saves the store (master, m, v) and an HF model folder of the masters as step `step`. No step
// may be in flight (call engine.synchronize() first). `stats`, when given, receives the figures.
Status save_checkpoint(const std::string& output_dir, int64_t step, pipeline::ParamStore& store,
                       const nlohmann::json& trainer, const std::string& config_hash,
                       const CheckpointOptions& opts, CheckpointStats* stats = nullptr);

// The same save on a background thread, overlapped with training, with no second copy of the
// state: the writer streams straight from the store while the next step runs, and the engine's
// update gate (Engine::set_update_gate) holds each stage's next update until that stage is
// written: its HF weights and its trainer_state file (master, m, v) have been handed to the
// file system (write() returned; the fsync of the whole folder comes at the commit, after every
// stage is released). Stages are written in engine.update_order() and the HF weights are
// ordered the same way, so the first update of the next step waits only for the first stage.
//
// Threading: start(), wait() and the destructor run on the thread that drives the engine, at a
// step boundary (no train_step() running). start() synchronizes the engine (so the saved state
// is that of step `step`) and installs the gate; wait() joins the writer, synchronizes the engine
// (cheap when the caller already did) so no optimizer task can still be inside the gate, and only
// then removes it. Steps taken between start() and wait() are fine: their updates pass the gate
// as stages are released. If the save fails, every stage is released at once (training never
// deadlocks) and wait() returns the error. The engine and store must outlive the writer.
class AsyncCheckpointWriter {
 public:
  AsyncCheckpointWriter(pipeline::Engine& engine, pipeline::ParamStore& store);
  ~AsyncCheckpointWriter();  // waits for a save in progress (its status is dropped)
  // A save still in progress is waited for first; its error, if any, is reported by the next
  // wait() together with that of the new save.
  void start(const std::string& output_dir, int64_t step, nlohmann::json trainer,
             std::string config_hash, CheckpointOptions opts);
  // True while the writer thread runs.
  bool busy() const;
  // The status of the save started last (Ok when none is pending); removes the gate.
  Status wait();
  // Figures of the last save that wait() collected.
  CheckpointStats last_stats() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Step folders of output_dir (step_* names only, temp folders ignored), newest first.
Result<std::vector<CheckpointRef>> list_checkpoints(const std::string& output_dir);
// Checks state.json and every file's size and CRC-32C. The error names the folder and the file.
Status verify_checkpoint(const std::string& path);
// The newest checkpoint that verifies; each one skipped is described in `problems` (path and
// reason). An error when there is none.
Result<CheckpointRef> find_latest_valid_checkpoint(const std::string& output_dir,
                                                   std::vector<std::string>* problems);
// Verifies, then loads master, m and v into `store` bitwise (refreshing working copies). Errors
// name the file and tensor: a model config that differs from the store's (config.json), a stage
// count or shape mismatch, a missing tensor. Everything is checked before the store is written,
// so on error the store is unchanged. The caller then calls engine.set_step(meta.step) and
// restores its own state from meta.trainer.
Result<TrainStateMeta> load_checkpoint(const std::string& path, pipeline::ParamStore& store);

struct LoadCheckpointOptions {
  std::string expected_config_hash;  // non-empty: refuse a checkpoint saved with another hash
  // false: check file sizes but skip the CRCs (the caller just ran verify_checkpoint() or
  // find_latest_valid_checkpoint() on it, and reading every byte twice is slow for big models).
  bool verify_checksums = true;
};
Result<TrainStateMeta> load_checkpoint(const std::string& path, pipeline::ParamStore& store,
                                       const LoadCheckpointOptions& opts);

}  // namespace ramstream::checkpoint
