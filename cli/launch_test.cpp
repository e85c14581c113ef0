// `ramstream launch` end to end on the tiny model, Gloo over loopback: a 2-rank run equals one
// process accumulating both shards; a run saved on 2 ranks resumes on 1 and on 3 ranks as the
// uninterrupted run continues; a rank killed mid-run makes the job fail within the timeout naming
// it, and the same command run again resumes from the newest checkpoint.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli/cli_testing.h"
#include "dist/gloo_communicator.h"

namespace ramstream::cli::testing {
namespace {

namespace fs = std::filesystem;

std::string scratch(const std::string& name) {
  const std::string d = "/tmp/ramstream_launch_test_" + std::to_string(getpid()) + "_" + name;
  fs::remove_all(d);
  return d;
}

// The tiny recipe with fp32 compute (the same layout on every machine; a later model.compute in
// `more` wins), no evaluations, a loss logged every step.
std::vector<std::string> tiny(const std::string& out, int steps, int accum,
                              std::vector<std::string> more = {}) {
  std::vector<std::string> a = {"run",
                                "tiny-debug",
                                "output_dir=" + out,
                                "train.max_steps=" + std::to_string(steps),
                                "train.grad_accum=" + std::to_string(accum),
                                "train.batch_size=2",
                                "model.compute=fp32",
                                "log.every=1",
                                "eval.every=0",
                                "eval.before=false",
                                "eval.at_end=false"};
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

std::vector<std::string> launched(int nproc, std::vector<std::string> run_args) {
  std::vector<std::string> a = {"launch",    "--nproc", std::to_string(nproc),
                                "--timeout", "20",      "--"};
  a.insert(a.end(), run_args.begin(), run_args.end());
  return a;
}

// step -> loss from metrics.jsonl.
std::map<int64_t, double> losses(const std::string& out) {
  std::map<int64_t, double> m;
  std::ifstream in(out + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("loss") && j.contains("step")) m[j["step"].get<int64_t>()] = j["loss"];
  }
  return m;
}

void expect_close(const std::map<int64_t, double>& got, const std::map<int64_t, double>& want,
                  int64_t from, int64_t to, double rel) {
  for (int64_t s = from; s <= to; ++s) {
    ASSERT_TRUE(got.count(s)) << "step " << s << " missing";
    ASSERT_TRUE(want.count(s)) << "step " << s << " missing in the reference";
    EXPECT_NEAR(got.at(s), want.at(s), rel * std::abs(want.at(s))) << "step " << s;
  }
}

class LaunchRun : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!dist::gloo_available()) GTEST_SKIP() << "built without c10d Gloo";
  }
  CliLimits limits() {
    CliLimits l;
    l.seconds = 240;
    return l;
  }
};

// One process accumulating 2 micro-batches sums them into one buffer as it goes; 2 ranks sum two
// separately computed grads: fp32 roundings apart (dist_test bounds the weights), so the losses
// agree to ~1e-8 relative over 10 steps; 1e-6 is the bound.
TEST_F(LaunchRun, TwoRanksEqualOneProcessAccumulatingBothShards) {
  const std::string one = scratch("one"), two = scratch("two");
  CliRun a = run_cli(tiny(one, 10, 2), limits());
  ASSERT_EQ(a.exit_code, 0) << a.describe();
  CliRun b = run_cli(launched(2, tiny(two, 10, 1)), limits());
  ASSERT_EQ(b.exit_code, 0) << b.describe();
  EXPECT_NE(b.out.find("data parallel, rank 0 of 2"), std::string::npos) << b.out;
  // Rank 0 speaks for the job: one summary.
  const size_t done = b.out.find("done: steps 0..10");
  ASSERT_NE(done, std::string::npos) << b.out;
  EXPECT_EQ(b.out.find("done: steps 0..10", done + 1), std::string::npos) << b.out;
  expect_close(losses(two), losses(one), 1, 10, 1e-6);
  EXPECT_TRUE(fs::exists(two + "/step_000010/trainer_state"));
}

// The global batch stays 6 micro-batches: 1 x 6, 2 x 3, 3 x 2; a constant learning rate, so that
// stopping at step 8 of 16 changes no schedule.
TEST_F(LaunchRun, SavedOnTwoRanksResumesOnOneAndOnThree) {
  const std::string full = scratch("full"), two = scratch("saved2");
  const std::vector<std::string> lr = {"train.lr_schedule=constant", "train.warmup_steps=0"};
  CliRun ref = run_cli(tiny(full, 16, 6, lr), limits());
  ASSERT_EQ(ref.exit_code, 0) << ref.describe();
  CliRun first = run_cli(launched(2, tiny(two, 8, 3, lr)), limits());
  ASSERT_EQ(first.exit_code, 0) << first.describe();
  ASSERT_TRUE(fs::exists(two + "/step_000008"));
  for (int ranks : {1, 3}) {
    const std::string cont = scratch("resume" + std::to_string(ranks));
    fs::copy(two, cont, fs::copy_options::recursive);
    std::vector<std::string> args = tiny(cont, 16, 6 / ranks, lr);
    CliRun r = run_cli(ranks == 1 ? args : launched(ranks, args), limits());
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    EXPECT_NE(r.out.find("resumed from " + cont + "/step_000008"), std::string::npos) << r.out;
    expect_close(losses(cont), losses(full), 1, 16, 1e-5);
    fs::remove_all(cont);
  }
}

// dist.shard_optimizer: the same losses as the replicated optimizer on the same ranks (bitwise),
// and its checkpoint (written in the unsharded format) resumes on 3 sharded ranks and on one
// process as the uninterrupted run continues. `compute` picks the store layout (fp32: 4 + 12/N
// B/param, bf16: 2 + 12/N with the master shards gathered for the save).
void check_sharded_runs(const std::string& compute) {
  std::vector<std::string> lr = {"train.lr_schedule=constant", "train.warmup_steps=0",
                                 "model.compute=" + compute};
  std::vector<std::string> sharded_lr = lr;
  sharded_lr.push_back("dist.shard_optimizer=true");
  const std::string full = scratch("sh_full"), whole = scratch("sh_whole"), two = scratch("sh_two");
  CliLimits limits;
  limits.seconds = 240;
  CliRun ref = run_cli(tiny(full, 16, 6, lr), limits);
  ASSERT_EQ(ref.exit_code, 0) << ref.describe();
  CliRun replicated = run_cli(launched(2, tiny(whole, 8, 3, lr)), limits);
  ASSERT_EQ(replicated.exit_code, 0) << replicated.describe();
  CliRun first = run_cli(launched(2, tiny(two, 8, 3, sharded_lr)), limits);
  ASSERT_EQ(first.exit_code, 0) << first.describe();
  EXPECT_NE(first.out.find("optimizer state sharded (ZeRO-2)"), std::string::npos) << first.out;
  EXPECT_EQ(losses(two), losses(whole));
  // bf16: the losses of a different rank count are bf16 roundings apart, not fp32 ones.
  const double rel = compute == "bf16" ? 2e-3 : 1e-5;
  for (int ranks : {3, 1}) {
    const std::string cont = scratch("sh_resume" + std::to_string(ranks));
    fs::copy(two, cont, fs::copy_options::recursive);
    std::vector<std::string> args = tiny(cont, 16, 6 / ranks, sharded_lr);
    CliRun r = run_cli(ranks == 1 ? args : launched(ranks, args), limits);
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    EXPECT_NE(r.out.find("resumed from " + cont + "/step_000008"), std::string::npos) << r.out;
    expect_close(losses(cont), losses(full), 1, 16, rel);
    fs::remove_all(cont);
  }
}

TEST_F(LaunchRun, ShardedOptimizerMatchesReplicatedAndResumesOnOtherRankCounts) {
  check_sharded_runs("fp32");
}

TEST_F(LaunchRun, ShardedBf16LayoutMatchesReplicatedAndResumesOnOtherRankCounts) {
  check_sharded_runs("bf16");
}

std::string read_all(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST_F(LaunchRun, AKilledRankFailsTheJobNamingItAndTheRelaunchResumes) {
  const std::string out = scratch("killed");
  const std::vector<std::string> args =
      launched(2, tiny(out, 400, 1, {"checkpoint.every=5", "checkpoint.keep_last_n=3"}));
  const std::string log_out = out + ".stdout", log_err = out + ".stderr";
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = fork();
  if (pid == 0) {
    freopen(log_out.c_str(), "w", stdout);
    freopen(log_err.c_str(), "w", stderr);
    std::vector<std::string> full = {cli_binary()};
    full.insert(full.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : full) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  // Once rank 0 has logged step 12, SIGKILL rank 1 (its pid from the launcher's start line).
  pid_t victim = -1;
  for (int i = 0; i < 2400 && victim < 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::smatch m;
    const std::string err = read_all(log_err), so = read_all(log_out);
    const std::regex pid_re("rank 1 pid ([0-9]+)");
    if (so.find("step 12/400") != std::string::npos && std::regex_search(err, m, pid_re)) {
      victim = static_cast<pid_t>(std::stoi(m[1]));
    }
  }
  ASSERT_GT(victim, 0) << read_all(log_err) << read_all(log_out);
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  const auto killed_at = std::chrono::steady_clock::now();
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  const double after_kill =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - killed_at).count();
  const std::string err = read_all(log_err);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 128 + SIGKILL) << status << err;
  EXPECT_NE(err.find("rank 1 (pid " + std::to_string(victim) + ") was killed by signal 9"),
            std::string::npos)
      << err;
  // Rank 0 noticed on its own (a closed connection), naming rank 1, well before the 20 s
  // collective timeout and the launcher's grace.
  EXPECT_NE(err.find("ramstream run (rank 0): "), std::string::npos) << err;
  EXPECT_NE(err.find("rank 0: collective #"), std::string::npos) << err;
  EXPECT_NE(err.find("rank 1 has died or stopped"), std::string::npos) << err;
  EXPECT_LT(after_kill, 20.0);
  (void)t0;

  // The same command again resumes from the newest checkpoint the killed run committed (which one
  // depends on how far it got before the kill landed; committed folders appear atomically), and
  // trains on to a nearby end to keep the test short.
  int64_t newest = -1;
  for (const fs::directory_entry& d : fs::directory_iterator(out)) {
    const std::string name = d.path().filename().string();
    if (name.rfind("step_", 0) == 0 && name.find('.') == std::string::npos) {
      newest = std::max<int64_t>(newest, std::stoll(name.substr(5)));
    }
  }
  ASSERT_GE(newest, 5) << "no checkpoint before the kill";
  char expected[64];
  std::snprintf(expected, sizeof expected, "/step_%06lld", static_cast<long long>(newest));
  std::vector<std::string> again =
      launched(2, tiny(out, static_cast<int>(newest) + 5, 1,
                       {"checkpoint.every=5", "checkpoint.keep_last_n=3"}));
  CliRun r = run_cli(again, limits());
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_NE(r.out.find("resumed from " + out + expected), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("done: steps "), std::string::npos) << r.out;
  fs::remove(log_out);
  fs::remove(log_err);
}

}  // namespace
}  // namespace ramstream::cli::testing
