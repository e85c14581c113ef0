// `ramstream run` on bad data and in the situations a person meets: generated conversations with
// every kind of role-order error (refused naming file:line, or skipped and counted), data whose
// every reply is cut by data.max_seq_len, a max_seq_len far beyond the model's positions, a folder
// or a device as data.path, Ctrl-C / SIGTERM in the middle of a run, and a finished run asked to
// run again. All on the tiny-debug recipe (seconds per run), outputs in a temporary folder.
#include <signal.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli/cli_testing.h"

namespace ramstream::cli::testing {
namespace {

namespace fs = std::filesystem;

using Turns = std::vector<std::pair<std::string, std::string>>;

std::string temp_dir(const std::string& name) {
  const fs::path p = fs::path(::testing::TempDir()) / ("ramstream_robust_data_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

std::string write_file(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

std::string messages_line(const Turns& turns) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& [role, content] : turns) list.push_back({{"role", role}, {"content", content}});
  return nlohmann::json{{"messages", list}}.dump() + "\n";
}

// `ramstream run tiny-debug` with its outputs in `out` and quick settings, then `extra`.
CliRun run_tiny(const std::string& out, const std::vector<std::string>& extra,
                const CliLimits& limits = {}) {
  std::vector<std::string> args = {"run",
                                   "tiny-debug",
                                   "output_dir=" + out,
                                   "log.progress=lines",
                                   "eval.accuracy=false",
                                   "eval.every=0",
                                   "checkpoint.every=0"};
  args.insert(args.end(), extra.begin(), extra.end());
  return run_cli(args, limits);
}

// A small pseudo-random generator, so every run of the test sees the same variants.
struct Lcg {
  uint64_t state;
  size_t below(size_t n) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<size_t>((state >> 33) % n);
  }
};

// One malformed conversation of each kind, as (turns, index of the message at fault, what).
struct BadConversation {
  Turns turns;
  size_t at;
  std::string what;
};

// The first kinds generated_bad_conversations returns: roles out of order.
constexpr size_t kRoleOrderKinds = 4;

// One of each kind, on a generated conversation (with or without a system message, 1-3 turns):
// an assistant first, a late system message, two user and two assistant messages in a row, then
// an unknown role, an empty message and a conversation that does not end with the reply.
std::vector<BadConversation> generated_bad_conversations(Lcg& rng) {
  auto conversation = [&rng](size_t* first, size_t* pairs) {
    Turns ok;
    if (rng.below(2) == 1) ok.push_back({"system", "Answer briefly."});
    *first = ok.size();
    *pairs = 1 + rng.below(3);
    for (size_t k = 0; k < *pairs; ++k) {
      ok.push_back({"user", "What is " + std::to_string(k) + " plus 1?"});
      ok.push_back({"assistant", std::to_string(k + 1)});
    }
    return ok;
  };
  std::vector<BadConversation> out;
  size_t first = 0, pairs = 0;
  Turns t = conversation(&first, &pairs);
  t.erase(t.begin() + first);
  out.push_back({t, first, "starts with an assistant message"});
  t = conversation(&first, &pairs);
  const size_t late = 1 + rng.below(t.size());
  t.insert(t.begin() + late, {"system", "Late."});
  out.push_back({t, late, "a system message after"});
  t = conversation(&first, &pairs);
  size_t user = first + 2 * rng.below(pairs);
  t.insert(t.begin() + user + 1, t[user]);
  out.push_back({t, user + 1, "two user messages in a row"});
  t = conversation(&first, &pairs);
  user = first + 2 * rng.below(pairs);
  t.insert(t.begin() + user + 2, t[user + 1]);
  out.push_back({t, user + 2, "two assistant messages in a row"});
  t = conversation(&first, &pairs);
  const size_t unknown = rng.below(t.size());
  const char* roles[] = {"tool", "Assistant", "bot", ""};
  t[unknown].first = roles[rng.below(std::size(roles))];
  out.push_back({t, unknown, "unknown role"});
  t = conversation(&first, &pairs);
  const size_t empty = rng.below(t.size());
  const char* blanks[] = {"", "  \n", "\t"};
  t[empty].second = blanks[rng.below(std::size(blanks))];
  out.push_back({t, empty, "empty " + t[empty].first + " message"});
  t = conversation(&first, &pairs);
  t.pop_back();
  out.push_back({t, t.size() - 1, "ends with a user message"});
  return out;
}

// Every kind of role-order error (the first four kinds) at a generated line among good
// conversations: refused, naming file:line, the message at fault and what is wrong. With
// data.skip_malformed every kind (unknown roles, empty messages and a missing reply too) is
// skipped, counted in the start-up log, and the run trains on the rest. (Each of the other kinds
// refused at its line: data/dataset_test.cpp, which costs no process start per case.)
TEST(RobustData, ConversationsWithRolesOutOfOrderAreRefusedOrSkipped) {
  const std::string dir = temp_dir("roles");
  Lcg rng{2024};
  const std::vector<BadConversation> bad = generated_bad_conversations(rng);
  const std::string good = messages_line({{"user", "What is 2 plus 2?"}, {"assistant", "4"}});
  std::string mixed;
  for (size_t k = 0; k < bad.size(); ++k) {
    const size_t before = rng.below(4);
    std::string text;
    for (size_t i = 0; i < before; ++i) text += good;
    text += messages_line(bad[k].turns) + good;
    mixed += messages_line(bad[k].turns) + good + good + good;
    if (k >= kRoleOrderKinds) continue;
    const std::string file = write_file(dir + "/bad" + std::to_string(k) + ".jsonl", text);
    const CliRun r = run_tiny(dir + "/out", {"data.path=" + file});
    EXPECT_TRUE(r.clean_failure()) << r.describe();
    const std::string where =
        file + ":" + std::to_string(before + 1) + ": messages[" + std::to_string(bad[k].at) + "]: ";
    EXPECT_NE(r.err.find(where), std::string::npos) << "want " << where << "\n" << r.describe();
    EXPECT_NE(r.err.find(bad[k].what), std::string::npos) << bad[k].what << "\n" << r.describe();
  }
  const std::string file = write_file(dir + "/mixed.jsonl", mixed);
  const CliRun r = run_tiny(dir + "/out_skip",
                            {"data.path=" + file, "data.skip_malformed=true", "data.val_size=4",
                             "train.max_steps=1", "eval.before=false", "eval.at_end=false"});
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_NE(r.out.find(std::to_string(bad.size()) + " malformed records skipped"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find(std::to_string(3 * bad.size()) + " examples"), std::string::npos) << r.out;
}

// Prompts long enough that, for each max_seq_len tried, no reply survives truncation: refused at
// start-up (no stack trace, no step run) with how many were cut and the max_seq_len that keeps
// them all, which then trains.
TEST(RobustData, DataWhoseEveryReplyIsCutIsRefusedNamingAMaxSeqLenThatKeepsIt) {
  const std::string dir = temp_dir("cut");
  const char* words[] = {"alpha", "river", "seven", "blue", "market", "quiet", "number", "stone"};
  Lcg rng{7};
  std::string text;
  for (int i = 0; i < 48; ++i) {
    std::string prompt = "Repeat after me:";
    const size_t n = 40 + rng.below(40);
    for (size_t w = 0; w < n; ++w) prompt += std::string(" ") + words[rng.below(std::size(words))];
    text += messages_line({{"user", prompt}, {"assistant", "ok"}});
  }
  const std::string file = write_file(dir + "/long.jsonl", text);
  int64_t keeps_all = -1;
  for (int max_seq_len : {8, 64}) {
    const CliRun r = run_tiny(dir + "/out", {"data.path=" + file, "data.val_size=4",
                                             "data.max_seq_len=" + std::to_string(max_seq_len)});
    EXPECT_TRUE(r.clean_failure()) << r.describe();
    EXPECT_NE(r.err.find(file + ": data.max_seq_len " + std::to_string(max_seq_len) +
                         " cuts 48 of 48 conversations, 48 of them losing their whole reply"),
              std::string::npos)
        << r.describe();
    EXPECT_EQ(r.err.find("libtorch"), std::string::npos) << r.describe();
    EXPECT_EQ(r.out.find("step 1/"), std::string::npos) << r.out;
    const std::string marker = "keeps 95% of them whole, ";
    const size_t at = r.err.find(marker);
    ASSERT_NE(at, std::string::npos) << r.describe();
    const int64_t value = std::stoll(r.err.substr(at + marker.size()));
    EXPECT_GT(value, max_seq_len);
    if (keeps_all >= 0) {
      EXPECT_EQ(value, keeps_all) << "the advice depends on the data only";
    }
    keeps_all = value;
  }
  ASSERT_GT(keeps_all, 0);
  ASSERT_LE(keeps_all, 512) << "the generated prompts must fit the tiny model's positions";
  const CliRun r =
      run_tiny(dir + "/out_ok", {"data.path=" + file, "data.val_size=4",
                                 "data.max_seq_len=" + std::to_string(keeps_all),
                                 "train.max_steps=1", "eval.before=false", "eval.at_end=false"});
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_EQ(r.out.find("examples truncated"), std::string::npos) << r.out;
}

// A max_seq_len beyond the model's max_position_embeddings (512 for the tiny model) is refused
// up front, naming both keys and values, before any memory is taken for it.
TEST(RobustData, MaxSeqLenBeyondThePositionsOfTheModelIsRefused) {
  const std::string dir = temp_dir("positions");
  for (int64_t max_seq_len : {int64_t{513}, int64_t{1} << 20}) {
    const CliRun r = run_tiny(dir + "/out", {"data.max_seq_len=" + std::to_string(max_seq_len)});
    EXPECT_TRUE(r.clean_failure()) << r.describe();
    EXPECT_NE(r.err.find("data.max_seq_len " + std::to_string(max_seq_len) +
                         " is beyond the model's max_position_embeddings 512"),
              std::string::npos)
        << r.describe();
  }
}

// engine.num_slots beyond the stages of the model is clamped with a warning; a batch far beyond
// memory is refused with the estimate, not a bad_alloc.
TEST(RobustData, SlotsAreClampedAndImpossibleBatchesRefused) {
  const std::string dir = temp_dir("sizes");
  const CliRun slots = run_tiny(dir + "/out_slots", {"engine.num_slots=17", "train.max_steps=1",
                                                     "eval.before=false", "eval.at_end=false"});
  EXPECT_EQ(slots.exit_code, 0) << slots.describe();
  EXPECT_NE(slots.out.find("engine.num_slots 17 is more than the model's 4 stages"),
            std::string::npos)
      << slots.out;
  // Tokens per micro-batch within what a recipe accepts, 4096 micro-batches of checkpoints per
  // step: ~50 TB of activations.
  const CliRun batch =
      run_tiny(dir + "/out_batch", {"train.batch_size=131072", "train.grad_accum=4096"});
  EXPECT_TRUE(batch.clean_failure()) << batch.describe();
  EXPECT_NE(batch.err.find("train.batch_size 131072"), std::string::npos) << batch.describe();
  EXPECT_NE(batch.err.find("of host RAM"), std::string::npos) << batch.describe();
  EXPECT_EQ(batch.err.find("bad_alloc"), std::string::npos) << batch.describe();
}

// A folder or a device where a data file is expected: refused, naming the path and the key.
TEST(RobustData, AFolderOrADeviceAsTheDataIsNamedClearly) {
  const std::string dir = temp_dir("not_a_file");
  const std::string folder = dir + "/data.jsonl";
  fs::create_directories(folder);
  for (const auto& [key, path] :
       {std::pair<std::string, std::string>{"data.path", folder}, {"data.val_path", "/dev/zero"}}) {
    const CliRun r = run_tiny(dir + "/out", {key + "=" + path});
    EXPECT_TRUE(r.clean_failure()) << r.describe();
    EXPECT_NE(r.err.find(path), std::string::npos) << r.describe();
    EXPECT_NE(r.err.find(key), std::string::npos) << r.describe();
    const bool named = r.err.find("folder") != std::string::npos ||
                       r.err.find("not a regular file") != std::string::npos;
    EXPECT_TRUE(named) << r.describe();
    EXPECT_EQ(r.err.find("invalid JSON"), std::string::npos) << r.describe();
  }
}

bool has_checkpoint(const std::string& out) {
  if (!fs::is_directory(out)) return false;
  for (const fs::directory_entry& e : fs::directory_iterator(out)) {
    if (e.path().filename().string().rfind("step_", 0) == 0) return true;
  }
  return false;
}

// Ctrl-C (SIGINT) once a step was logged: a checkpoint is saved and the exit status is 130;
// SIGTERM gives 143; a second signal while the first is handled exits at once.
TEST(RobustData, InterruptedRunsSaveAndExitWith128PlusTheSignal) {
  const std::string dir = temp_dir("signals");
  const std::vector<std::string> long_run = {"train.max_steps=1000000", "log.every=1",
                                             "eval.before=false"};
  struct Case {
    std::vector<int> signals;
    int exit_code;
    bool saves;
  };
  for (const Case& c :
       {Case{{SIGINT}, 130, true}, Case{{SIGTERM}, 143, true}, Case{{SIGINT, SIGTERM}, 0, false}}) {
    const std::string out =
        dir + "/out" + std::to_string(c.signals.size()) + "_" + std::to_string(c.exit_code);
    CliLimits limits;
    limits.signal_after = "step 2/";
    limits.signals = c.signals;
    const CliRun r = run_tiny(out, long_run, limits);
    ASSERT_TRUE(r.exited()) << r.describe();
    if (!c.saves) {
      // Two signals: whichever is handled second ends the process with 128 + itself, at once,
      // without waiting for the step and the save.
      EXPECT_TRUE(r.exit_code == 130 || r.exit_code == 143) << r.describe();
      EXPECT_EQ(r.out.find("done:"), std::string::npos) << r.out;
      continue;
    }
    EXPECT_EQ(r.exit_code, c.exit_code) << r.describe();
    EXPECT_TRUE(has_checkpoint(out)) << r.describe();
    EXPECT_NE(r.out.find("interrupted"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("done: steps 0.."), std::string::npos) << r.out;
  }
}

// A finished run asked to run again says so and exits 0 without evaluating again (eval.force and
// a higher train.max_steps are in trainer/trainer_run_test.cpp).
TEST(RobustData, AFinishedRunRunAgainSaysSoAndDoesNotEvaluate) {
  const std::string out = temp_dir("finished") + "/out";
  const std::vector<std::string> quick = {"train.max_steps=2", "log.every=1"};
  const CliRun first = run_tiny(out, quick);
  ASSERT_EQ(first.exit_code, 0) << first.describe();
  ASSERT_NE(first.out.find("eval after"), std::string::npos) << first.out;
  EXPECT_NE(first.out.find("wall "), std::string::npos) << first.out;

  const CliRun again = run_tiny(out, quick);
  ASSERT_EQ(again.exit_code, 0) << again.describe();
  EXPECT_NE(again.out.find("already finished at step 2; nothing to do"), std::string::npos)
      << again.out;
  EXPECT_EQ(again.out.find("eval after"), std::string::npos) << again.out;
  EXPECT_EQ(again.out.find("step 3/"), std::string::npos) << again.out;
  EXPECT_NE(again.out.find("done: nothing to do, already finished at step 2"), std::string::npos)
      << again.out;
}

}  // namespace
}  // namespace ramstream::cli::testing
