// End to end on the tiny-debug recipe (tests/fixtures/tiny_chat_model + the bundled tasks): the
// loss falls, metrics and checkpoints are written, a run resumed from a mid-epoch checkpoint
// continues bitwise like an uninterrupted one, SIGINT / SIGTERM save and stop with 130 / 143, a
// finished run asked again does nothing, log lines show progress, impossible sizes are refused.
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "checkpoint/train_state.h"
#include "trainer/progress.h"
#include "trainer/trainer.h"

namespace ramstream::trainer {
namespace {

namespace fs = std::filesystem;

std::string fresh_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("ramstream_trainer_test_" + name);
  fs::remove_all(p);
  return p.string();
}

Recipe tiny(const std::string& out, std::vector<std::string> overrides) {
  overrides.push_back("output_dir=" + out);
  overrides.push_back("log.progress=lines");
  Result<Recipe> r = load_recipe("tiny-debug", overrides);
  if (!r.ok()) throw std::runtime_error(r.error().message);
  return r.value();
}

std::vector<nlohmann::json> read_metrics(const std::string& out) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(out + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

TEST(TrainerRun, TinyDebugLossFallsAndWritesMetricsAndCheckpoints) {
  const std::string out = fresh_dir("e2e");
  Result<std::unique_ptr<Trainer>> t = Trainer::create(tiny(out, {}));
  ASSERT_TRUE(t.ok()) << t.error().message;
  Result<TrainSummary> s = t.value()->train();
  ASSERT_TRUE(s.ok()) << s.error().message;
  std::printf("loss %.4f -> %.4f, val loss %.4f -> %.4f, accuracy %.3f -> %.3f, %.0f tok/s\n",
              s.value().first_loss, s.value().last_loss, s.value().before.val_loss,
              s.value().after.val_loss, s.value().before.accuracy, s.value().after.accuracy,
              s.value().tokens_per_s);
  EXPECT_LT(s.value().last_loss, 0.8 * s.value().first_loss);
  EXPECT_LT(s.value().after.val_loss, s.value().before.val_loss);
  EXPECT_GE(s.value().after.accuracy, 0.0);
  EXPECT_EQ(s.value().after.total, 16);

  int steps_logged = 0;
  for (const nlohmann::json& j : read_metrics(out)) {
    if (j.contains("event")) continue;
    ++steps_logged;
    for (const char* key : {"step", "loss", "lr", "grad_norm", "tokens_per_s", "host_rss_gib"}) {
      EXPECT_TRUE(j.contains(key)) << key;
    }
  }
  EXPECT_EQ(steps_logged, 6);  // log.every 5 over 30 steps
  ASSERT_EQ(s.value().last_checkpoint, checkpoint::checkpoint_dir(out, 30));
  EXPECT_TRUE(checkpoint::verify_checkpoint(s.value().last_checkpoint).ok());
  // keep_last_n 2: steps 20 and 30 remain (10 was saved, then removed).
  Result<std::vector<checkpoint::CheckpointRef>> all = checkpoint::list_checkpoints(out);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all.value().size(), 2u);
  EXPECT_EQ(all.value()[1].step, 20);
  EXPECT_TRUE(fs::exists(out + "/recipe.yaml"));
  EXPECT_TRUE(fs::exists(s.value().last_checkpoint + "/tokenizer.json"));
}

TEST(TrainerRun, ResumeMidEpochContinuesAtTheSameSample) {
  // The uninterrupted run: 16 steps. With batch 4 x accumulation 2 an epoch of the bundled data
  // is far longer than 8 steps, so a checkpoint at step 8 falls mid-epoch.
  const std::vector<std::string> common = {"train.max_steps=16", "eval.every=0",
                                           "eval.accuracy=false", "checkpoint.every=0",
                                           "log.every=1"};
  const std::string a = fresh_dir("straight");
  {
    auto t = Trainer::create(tiny(a, common));
    ASSERT_TRUE(t.ok()) << t.error().message;
    ASSERT_TRUE(t.value()->train().ok());
  }
  // A run that saved at step 8 and 16; its step-16 checkpoint is then dropped so that the next
  // Trainer resumes from step 8 (the schedule still ends at 16, as in the straight run).
  const std::string b = fresh_dir("resumed");
  {
    std::vector<std::string> first = common;
    first.push_back("checkpoint.every=8");
    auto t = Trainer::create(tiny(b, first));
    ASSERT_TRUE(t.ok()) << t.error().message;
    ASSERT_TRUE(t.value()->train().ok());
  }
  fs::remove_all(checkpoint::checkpoint_dir(b, 16));
  {
    auto t = Trainer::create(tiny(b, common));
    ASSERT_TRUE(t.ok()) << t.error().message;
    Result<TrainSummary> s = t.value()->train();
    ASSERT_TRUE(s.ok()) << s.error().message;
    EXPECT_EQ(s.value().first_step, 8);
    EXPECT_EQ(s.value().last_step, 16);
  }
  // Losses of steps 9..16: the straight run's against the resumed run's last 8 step lines.
  auto losses = [](const std::string& out) {
    std::vector<std::pair<int64_t, double>> v;
    for (const nlohmann::json& j : read_metrics(out)) {
      if (!j.contains("event")) v.emplace_back(j["step"].get<int64_t>(), j["loss"].get<double>());
    }
    return v;
  };
  const auto la = losses(a), lb = losses(b);
  ASSERT_EQ(la.size(), 16u);
  ASSERT_EQ(lb.size(), 24u);  // 16 from the first run, 8 from the resumed one
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(lb[16 + i].first, la[8 + i].first);
    EXPECT_EQ(lb[16 + i].second, la[8 + i].second) << "step " << la[8 + i].first;
  }
}

// Raises `sig` once metrics.jsonl of `out` has a step line (so at least one step has run).
std::thread raise_after_first_step(const std::string& out, int sig) {
  return std::thread([out, sig] {
    for (int i = 0; i < 6000; ++i) {  // at most a minute
      for (const nlohmann::json& j : read_metrics(out)) {
        if (!j.contains("event")) {
          std::raise(sig);
          return;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  });
}

TEST(TrainerRun, SigintAndSigtermSaveACheckpointAndStopWithTheirExitStatus) {
  for (int sig : {SIGINT, SIGTERM}) {
    const std::string out = fresh_dir("signal" + std::to_string(sig));
    auto t =
        Trainer::create(tiny(out, {"train.max_steps=1000000", "eval.every=0", "eval.accuracy=false",
                                   "checkpoint.every=0", "log.every=1"}));
    ASSERT_TRUE(t.ok()) << t.error().message;
    std::thread interrupter = raise_after_first_step(out, sig);
    Result<TrainSummary> s = t.value()->train();
    interrupter.join();
    ASSERT_TRUE(s.ok()) << s.error().message;
    EXPECT_TRUE(s.value().interrupted);
    EXPECT_EQ(s.value().stop_signal, sig);
    EXPECT_EQ(s.value().exit_status(), 128 + sig);
    EXPECT_GT(s.value().last_step, 0);
    EXPECT_LT(s.value().last_step, 1000000);
    EXPECT_EQ(s.value().last_checkpoint, checkpoint::checkpoint_dir(out, s.value().last_step));
    EXPECT_TRUE(checkpoint::verify_checkpoint(s.value().last_checkpoint).ok());
    const std::string text = summary_text(s.value());
    EXPECT_NE(text.find(sig == SIGINT ? "interrupted by SIGINT" : "interrupted by SIGTERM"),
              std::string::npos)
        << text;
    EXPECT_FALSE(stop_requested());  // cleared for whatever the process does next
  }
}

// The log written by a Trainer into memory.
struct CapturedLog {
  char* data = nullptr;
  size_t size = 0;
  FILE* file = open_memstream(&data, &size);
  ~CapturedLog() {
    std::fclose(file);
    std::free(data);
  }
  std::string text() {
    std::fflush(file);
    return std::string(data, size);
  }
};

// A run whose checkpoint is at train.max_steps, asked again: says so, trains and evaluates
// nothing (metrics.jsonl gains no eval), exit status 0; eval.force evaluates the final model; a
// higher train.max_steps trains on from the checkpoint.
TEST(TrainerRun, AFinishedRunSaysSoAndDoesNotEvaluateAgain) {
  const std::string out = fresh_dir("finished");
  const std::vector<std::string> quick = {"train.max_steps=3", "eval.every=0",
                                          "eval.accuracy=false", "checkpoint.every=0"};
  auto count_evals = [&] {
    int n = 0;
    for (const nlohmann::json& j : read_metrics(out)) n += j.value("event", "") == "eval";
    return n;
  };
  {
    auto t = Trainer::create(tiny(out, quick));
    ASSERT_TRUE(t.ok()) << t.error().message;
    Result<TrainSummary> s = t.value()->train();
    ASSERT_TRUE(s.ok()) << s.error().message;
    EXPECT_FALSE(s.value().already_finished);
    EXPECT_GT(s.value().wall_seconds, 0);
  }
  const int evals = count_evals();
  ASSERT_EQ(evals, 2);  // before and after
  {
    CapturedLog log;
    auto t = Trainer::create(tiny(out, quick), log.file);
    ASSERT_TRUE(t.ok()) << t.error().message;
    Result<TrainSummary> s = t.value()->train();
    ASSERT_TRUE(s.ok()) << s.error().message;
    EXPECT_TRUE(s.value().already_finished);
    EXPECT_EQ(s.value().first_step, 3);
    EXPECT_EQ(s.value().last_step, 3);
    EXPECT_EQ(s.value().exit_status(), 0);
    EXPECT_LT(s.value().after.val_loss, 0);  // not evaluated
    EXPECT_EQ(count_evals(), evals);
    EXPECT_NE(log.text().find("already finished at step 3; nothing to do"), std::string::npos)
        << log.text();
    EXPECT_NE(summary_text(s.value()).find("done: nothing to do, already finished at step 3"),
              std::string::npos);
  }
  {
    std::vector<std::string> forced = quick;
    forced.push_back("eval.force=true");
    auto t = Trainer::create(tiny(out, forced));
    ASSERT_TRUE(t.ok()) << t.error().message;
    Result<TrainSummary> s = t.value()->train();
    ASSERT_TRUE(s.ok()) << s.error().message;
    EXPECT_TRUE(s.value().already_finished);
    EXPECT_GE(s.value().after.val_loss, 0);
    EXPECT_EQ(count_evals(), evals + 1);
  }
  {
    std::vector<std::string> more = quick;
    more.push_back("train.max_steps=5");
    auto t = Trainer::create(tiny(out, more));
    ASSERT_TRUE(t.ok()) << t.error().message;
    Result<TrainSummary> s = t.value()->train();
    ASSERT_TRUE(s.ok()) << s.error().message;
    EXPECT_FALSE(s.value().already_finished);
    EXPECT_EQ(s.value().first_step, 3);
    EXPECT_EQ(s.value().last_step, 5);
  }
}

TEST(TrainerRun, ExitStatusIs128PlusTheStopSignal) {
  TrainSummary s;
  EXPECT_EQ(s.exit_status(), 0);
  s.interrupted = true;
  s.stop_signal = SIGINT;
  EXPECT_EQ(s.exit_status(), 130);
  s.stop_signal = SIGTERM;
  EXPECT_EQ(s.exit_status(), 143);
}

// Step lines carry percent, elapsed and ETA; with a zero interval a long evaluation reports its
// rows as it goes.
TEST(TrainerRun, LogLinesShowProgressAndEvaluationsReportRows) {
  const std::string out = fresh_dir("progress");
  CapturedLog log;
  auto t = Trainer::create(
      tiny(out, {"train.max_steps=4", "log.every=1", "eval.every=0", "eval.max_rows=16",
                 "eval.accuracy=true", "eval.max_examples=8", "checkpoint.every=0"}),
      log.file);
  ASSERT_TRUE(t.ok()) << t.error().message;
  t.value()->set_progress_interval(0);
  Result<TrainSummary> s = t.value()->train();
  ASSERT_TRUE(s.ok()) << s.error().message;
  const std::string text = log.text();
  for (int step = 1; step <= 4; ++step) {
    const std::string want =
        "step " + std::to_string(step) + "/4 (" + std::to_string(25 * step) + "%), elapsed ";
    EXPECT_NE(text.find(want), std::string::npos) << want << "\n" << text;
  }
  EXPECT_NE(text.find("step 4/4 (100%), elapsed "), std::string::npos);
  EXPECT_NE(text.find(", eta "), std::string::npos);
  // Whole batches of 4 of the first eval.max_rows validation rows, before and after training;
  // then the generations.
  const int64_t rows = std::min<int64_t>(16, int64_t(t.value()->dataset().val_rows.size())) / 4 * 4;
  ASSERT_GE(rows, 8);
  for (const char* when : {"eval before: ", "eval after: "}) {
    for (int64_t done = 4; done <= rows; done += 4) {
      const std::string want =
          std::string(when) + std::to_string(done) + "/" + std::to_string(rows) + " rows (";
      EXPECT_NE(text.find(want), std::string::npos) << want << "\n" << text;
    }
    EXPECT_NE(text.find(std::string(when) + "8/8 examples (100%)"), std::string::npos) << text;
  }
  EXPECT_NE(summary_text(s.value()).find(", wall "), std::string::npos);
}

// plan=auto: the planner picks the engine's settings for the recipe's rows per step on the
// profile given; the start-up table shows the choice next to the recipe's, every logged step its
// prediction next to the measured time, and metrics.jsonl carries both.
TEST(TrainerRun, PlanAutoRunsThePlannersChoiceAndLogsPredictedAndMeasured) {
  const std::string out = fresh_dir("plan");
  CapturedLog log;
  auto t = Trainer::create(
      tiny(out, {"plan=auto", "plan_hardware=epyc-2core-avx512", "train.max_steps=4", "log.every=2",
                 "eval.every=0", "eval.accuracy=false", "checkpoint.every=0"}),
      log.file);
  ASSERT_TRUE(t.ok()) << t.error().message;
  Result<TrainSummary> s = t.value()->train();
  ASSERT_TRUE(s.ok()) << s.error().message;
  const std::string text = log.text();
  EXPECT_NE(text.find("plan         auto (time): micro_batch "), std::string::npos) << text;
  EXPECT_NE(text.find("on epyc-2core-avx512; the recipe's "), std::string::npos) << text;
  // The rows per step stay the recipe's 4 x 2.
  EXPECT_NE(text.find(" = 1024 tokens/step"), std::string::npos) << text;
  EXPECT_NE(text.find(" (predicted "), std::string::npos) << text;
  int steps = 0;
  for (const nlohmann::json& j : read_metrics(out)) {
    if (j.contains("event")) {
      if (j["event"] == "done") {
        EXPECT_GT(j["predicted_tokens_per_s"].get<double>(), 0);
      }
      continue;
    }
    ++steps;
    EXPECT_GT(j.at("predicted_ms").get<double>(), 0);
    EXPECT_GT(j.at("predicted_energy_j").get<double>(), 0);
    EXPECT_GT(j.at("ms").get<double>(), 0);
  }
  EXPECT_EQ(steps, 2);
}

TEST(TrainerRun, PlanProblemsAreStartUpErrors) {
  const std::string out = fresh_dir("plan_bad");
  auto t = Trainer::create(tiny(out, {"plan=auto", "plan_hardware=/nonexistent/hw.yaml"}));
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.error().message.find("plan_hardware /nonexistent/hw.yaml: /nonexistent/hw.yaml: no "
                                   "such file"),
            std::string::npos)
      << t.error().message;
  // No plan asked for: the missing profile costs the prediction only.
  auto none =
      Trainer::create(tiny(out, {"plan_hardware=/nonexistent/hw.yaml", "train.max_steps=1"}));
  EXPECT_TRUE(none.ok()) << none.error().message;
  Result<Recipe> bad = load_recipe("tiny-debug", {"plan=fastest"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("plan"), std::string::npos) << bad.error().message;
}

TEST(TrainerRun, ProgressTextAndDurations) {
  EXPECT_EQ(progress_text(16, 64, 4.0, "rows"), "16/64 rows (25%), elapsed 4.0s, eta 12s");
  EXPECT_EQ(progress_text(0, 10, 0.0), "0/10 (0%), elapsed 0.0s, eta ?");
  // Resumed at 10: 5 steps in 10 s, 15 to go.
  EXPECT_EQ(progress_text(15, 30, 10.0, "", 10), "15/30 (50%), elapsed 10s, eta 30s");
  EXPECT_EQ(format_duration(0.42), "0.4s");
  EXPECT_EQ(format_duration(185), "3m05s");
  EXPECT_EQ(format_duration(3725), "1h02m");
  EXPECT_EQ(format_duration(-1), "?");
}

// Start-up refusals: a max_seq_len beyond the model's positions names both keys; engine.num_slots
// beyond the stages is clamped with a warning; a batch beyond memory is refused with the estimate.
TEST(TrainerRun, RefusesImpossibleSizesAtStartUp) {
  const std::string out = fresh_dir("sizes");
  Result<std::unique_ptr<Trainer>> long_seq = Trainer::create(tiny(out, {"data.max_seq_len=4096"}));
  ASSERT_FALSE(long_seq.ok());
  EXPECT_NE(long_seq.error().message.find("data.max_seq_len 4096 is beyond the model's "
                                          "max_position_embeddings 512"),
            std::string::npos)
      << long_seq.error().message;

  for (int64_t slots : {5, 64, 1000000000}) {
    CapturedLog log;
    Recipe r = tiny(out, {});
    r.num_slots = slots;  // the API takes what a recipe file would refuse (> 64)
    Result<std::unique_ptr<Trainer>> t = Trainer::create(r, log.file);
    ASSERT_TRUE(t.ok()) << t.error().message;
    EXPECT_NE(log.text().find("engine.num_slots " + std::to_string(slots) +
                              " is more than the model's 4 stages"),
              std::string::npos)
        << log.text();
  }

  for (int64_t batch : {int64_t{1} << 20, int64_t{1} << 40}) {
    Recipe r = tiny(out, {"train.grad_accum=1024"});
    r.batch_size = batch;
    Result<std::unique_ptr<Trainer>> t = Trainer::create(r);
    ASSERT_FALSE(t.ok());
    EXPECT_NE(t.error().message.find("train.batch_size " + std::to_string(batch)),
              std::string::npos)
        << t.error().message;
    EXPECT_NE(t.error().message.find("lower train.batch_size"), std::string::npos);
  }
}

// A tokenizer that cannot encode plain text is reported as the model's problem (its
// tokenizer.json), not as data with no tokens.
TEST(TrainerRun, TokenizerProblemsAreNotBlamedOnTheData) {
  const std::string model = fresh_dir("bad_tokenizer_model");
  fs::copy("tests/fixtures/tiny_chat_model", model, fs::copy_options::recursive);
  nlohmann::json tok = nlohmann::json::parse(std::ifstream(model + "/tokenizer.json"));
  nlohmann::json specials = nlohmann::json::object();
  for (const nlohmann::json& a : tok["added_tokens"])
    specials[a["content"].get<std::string>()] = a["id"];
  tok["model"]["vocab"] = specials;  // no byte-level symbols left
  tok["model"]["merges"] = nlohmann::json::array();
  std::ofstream(model + "/tokenizer.json") << tok.dump();
  Result<std::unique_ptr<Trainer>> t =
      Trainer::create(tiny(fresh_dir("bad_tokenizer"), {"model.path=" + model}));
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.error().message.find(model + "/tokenizer.json: the tokenizer turns plain text"),
            std::string::npos)
      << t.error().message;
  EXPECT_EQ(t.error().message.find("tasks_train"), std::string::npos) << t.error().message;
}

// The estimate covers at least what the engine holds after a step (it adds the temporaries).
TEST(TrainerRun, EngineMemoryEstimateCoversTheEngineBuffers) {
  const std::string out = fresh_dir("estimate");
  for (const char* activations : {"recompute", "keep"}) {
    const Recipe r =
        tiny(out, {"train.max_steps=1", "eval.before=false", "eval.at_end=false",
                   "checkpoint.at_end=false", std::string("engine.activations=") + activations});
    auto t = Trainer::create(r);
    ASSERT_TRUE(t.ok()) << t.error().message;
    ASSERT_TRUE(t.value()->train().ok());
    const EngineMemory m = estimate_engine_memory(t.value()->model_config(), r, 4, false);
    EXPECT_GE(m.device_bytes, double(t.value()->engine().device_bytes())) << activations;
  }
  const Recipe bf16 = tiny(out, {"train.max_steps=1", "eval.before=false", "eval.at_end=false",
                                 "checkpoint.at_end=false", "model.compute=bf16"});
  auto t = Trainer::create(bf16);
  ASSERT_TRUE(t.ok()) << t.error().message;
  ASSERT_TRUE(t.value()->train().ok());
  const EngineMemory m = estimate_engine_memory(t.value()->model_config(), bf16, 2, false);
  EXPECT_GE(m.device_bytes, double(t.value()->engine().device_bytes())) << "bf16";
}

std::string read_all(std::FILE* f) {
  std::string text;
  std::rewind(f);
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
  return text;
}

// model.compute bf16 on the CPU: the bf16 store layout (bf16 working copy, 14 B/param), bf16
// GEMMs, and the run learns like the fp32 one; auto says which dtype it chose and why.
TEST(TrainerRun, Bf16ComputeOnTheCpuUsesTheBf16StoreAndLearns) {
  std::FILE* log = std::tmpfile();
  ASSERT_NE(log, nullptr);
  const std::string out = fresh_dir("bf16");
  Result<std::unique_ptr<Trainer>> t =
      Trainer::create(tiny(out, {"model.compute=bf16", "eval.accuracy=false"}), log);
  ASSERT_TRUE(t.ok()) << t.error().message;
  EXPECT_EQ(t.value()->engine().device().compute_dtype(), at::kBFloat16);
  Result<TrainSummary> s = t.value()->train();
  ASSERT_TRUE(s.ok()) << s.error().message;
  std::printf("bf16: loss %.4f -> %.4f, val loss %.4f -> %.4f\n", s.value().first_loss,
              s.value().last_loss, s.value().before.val_loss, s.value().after.val_loss);
  EXPECT_LT(s.value().last_loss, 0.8 * s.value().first_loss);
  EXPECT_LT(s.value().after.val_loss, s.value().before.val_loss);
  EXPECT_TRUE(checkpoint::verify_checkpoint(s.value().last_checkpoint).ok());
  const std::string text = read_all(log);
  EXPECT_NE(text.find("dtype        bf16 (set by model.compute)"), std::string::npos) << text;
  // 14 B/param (fp32 master, m, v + bf16 working copy; the fp32 layout with clipping is 16), plus
  // the tiny model's padding.
  const size_t at = text.find(" B/param)");
  ASSERT_NE(at, std::string::npos) << text;
  const double per_param = std::atof(text.c_str() + text.rfind('(', at) + 1);
  EXPECT_GE(per_param, 14.0) << text;
  EXPECT_LT(per_param, 15.0) << text;
  std::fclose(log);

  log = std::tmpfile();
  ASSERT_NE(log, nullptr);
  Result<std::unique_ptr<Trainer>> a =
      Trainer::create(tiny(fresh_dir("auto"), {"train.max_steps=1"}), log);
  ASSERT_TRUE(a.ok()) << a.error().message;
  const std::string auto_text = read_all(log);
  const bool chose_bf16 = a.value()->engine().device().compute_dtype() == at::kBFloat16;
  EXPECT_NE(auto_text.find(std::string("dtype        model.compute auto -> ") +
                           (chose_bf16 ? "bf16: bf16 GEMM" : "fp32")),
            std::string::npos)
      << auto_text;
  std::fclose(log);
}

// A learning rate that blows the model up: the run stops with an error at the first non-finite
// loss, and every checkpoint on disk verifies and holds finite weights (saves run every step,
// overlapped with the next one, so the last save is in flight when the loss turns NaN).
TEST(TrainerRun, NonFiniteLossNeverReachesACheckpoint) {
  const std::string out = fresh_dir("nan");
  // Beyond what a recipe accepts (train.lr <= 1), which the C++ API leaves to the caller.
  Recipe r = tiny(out, {"train.max_grad_norm=0", "train.warmup_steps=0", "train.max_steps=200",
                        "eval.before=false", "eval.every=0", "checkpoint.every=1",
                        "checkpoint.keep_last_n=0", "log.every=1000"});
  r.lr = 1e30;
  auto t = Trainer::create(r);
  ASSERT_TRUE(t.ok()) << t.error().message;
  Result<TrainSummary> s = t.value()->train();
  ASSERT_FALSE(s.ok());
  std::printf("%s\n", s.error().message.c_str());
  // Either the loss turned non-finite, or a save found diverged weights first.
  EXPECT_TRUE(s.error().message.find("stopping without saving") != std::string::npos ||
              s.error().message.find("non-finite weights") != std::string::npos);
  Result<std::vector<checkpoint::CheckpointRef>> all = checkpoint::list_checkpoints(out);
  ASSERT_TRUE(all.ok()) << all.error().message;
  ASSERT_FALSE(all.value().empty());
  for (const checkpoint::CheckpointRef& ref : all.value()) {
    ASSERT_TRUE(checkpoint::verify_checkpoint(ref.path).ok()) << ref.path;
  }
  // The newest checkpoint's weights are finite: load it into a fresh trainer's store (a run
  // already past train.max_steps, evaluated on request).
  auto again = Trainer::create(tiny(
      out, {"train.max_steps=0", "eval.before=false", "eval.force=true", "eval.accuracy=false"}));
  ASSERT_TRUE(again.ok()) << again.error().message;
  Result<TrainSummary> resumed = again.value()->train();
  ASSERT_TRUE(resumed.ok()) << resumed.error().message;
  EXPECT_TRUE(resumed.value().already_finished);
  EXPECT_GE(resumed.value().after.val_loss, 0);
  EXPECT_TRUE(std::isfinite(resumed.value().after.val_loss)) << resumed.value().after.val_loss;
}

// With clipping and nan_policy skip, a step with a non-finite grad norm changes nothing; a run
// that only produces such steps gives up after 10 of them.
TEST(TrainerRun, NanPolicySkipDropsUpdatesThenGivesUp) {
  const std::string out = fresh_dir("nan_skip");
  Recipe r =
      tiny(out, {"train.warmup_steps=0", "train.max_steps=200", "train.nan_policy=skip",
                 "eval.before=false", "eval.every=0", "checkpoint.every=0", "log.every=1000"});
  r.lr = 1e30;
  auto t = Trainer::create(r);
  ASSERT_TRUE(t.ok()) << t.error().message;
  Result<TrainSummary> s = t.value()->train();
  ASSERT_FALSE(s.ok());
  std::printf("%s\n", s.error().message.c_str());
  EXPECT_NE(s.error().message.find("10 consecutive steps"), std::string::npos);
}

}  // namespace
}  // namespace ramstream::trainer
