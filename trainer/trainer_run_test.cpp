// End to end on the tiny-debug recipe (tests/fixtures/tiny_chat_model + the bundled tasks): the
// loss falls, metrics and checkpoints are written, a run resumed from a mid-epoch checkpoint
// continues bitwise like an uninterrupted one, and SIGINT saves and stops cleanly.
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "checkpoint/train_state.h"
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

TEST(TrainerRun, SigintSavesACheckpointAndStops) {
  const std::string out = fresh_dir("sigint");
  auto t =
      Trainer::create(tiny(out, {"train.max_steps=1000000", "eval.every=0", "eval.accuracy=false",
                                 "checkpoint.every=0", "log.every=1000"}));
  ASSERT_TRUE(t.ok()) << t.error().message;
  std::thread interrupter([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    std::raise(SIGINT);
  });
  Result<TrainSummary> s = t.value()->train();
  interrupter.join();
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_TRUE(s.value().interrupted);
  EXPECT_GT(s.value().last_step, 0);
  EXPECT_LT(s.value().last_step, 1000000);
  EXPECT_EQ(s.value().last_checkpoint, checkpoint::checkpoint_dir(out, s.value().last_step));
  EXPECT_TRUE(checkpoint::verify_checkpoint(s.value().last_checkpoint).ok());
}

// A learning rate that blows the model up: the run stops with an error at the first non-finite
// loss, and every checkpoint on disk verifies and holds finite weights (saves run every step,
// overlapped with the next one, so the last save is in flight when the loss turns NaN).
TEST(TrainerRun, NonFiniteLossNeverReachesACheckpoint) {
  const std::string out = fresh_dir("nan");
  auto t = Trainer::create(
      tiny(out, {"train.lr=1e30", "train.max_grad_norm=0", "train.warmup_steps=0",
                 "train.max_steps=200", "eval.before=false", "eval.every=0", "checkpoint.every=1",
                 "checkpoint.keep_last_n=0", "log.every=1000"}));
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
  // The newest checkpoint's weights are finite: load it into a fresh trainer's store.
  auto again = Trainer::create(tiny(
      out, {"train.max_steps=0", "eval.before=false", "eval.at_end=true", "eval.accuracy=false"}));
  ASSERT_TRUE(again.ok()) << again.error().message;
  Result<TrainSummary> resumed = again.value()->train();
  ASSERT_TRUE(resumed.ok()) << resumed.error().message;
  EXPECT_TRUE(std::isfinite(resumed.value().after.val_loss)) << resumed.value().after.val_loss;
}

// With clipping and nan_policy skip, a step with a non-finite grad norm changes nothing; a run
// that only produces such steps gives up after 10 of them.
TEST(TrainerRun, NanPolicySkipDropsUpdatesThenGivesUp) {
  const std::string out = fresh_dir("nan_skip");
  auto t = Trainer::create(tiny(
      out, {"train.lr=1e30", "train.warmup_steps=0", "train.max_steps=200", "train.nan_policy=skip",
            "eval.before=false", "eval.every=0", "checkpoint.every=0", "log.every=1000"}));
  ASSERT_TRUE(t.ok()) << t.error().message;
  Result<TrainSummary> s = t.value()->train();
  ASSERT_FALSE(s.ok());
  std::printf("%s\n", s.error().message.c_str());
  EXPECT_NE(s.error().message.find("10 consecutive steps"), std::string::npos);
}

}  // namespace
}  // namespace ramstream::trainer
