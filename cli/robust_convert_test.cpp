// `ramstream convert` as a user (and an attacker) drives it, through the real binary
// (cli/cli_testing.h): broken tokenizer metadata in a GGUF is refused naming the file and the key
// (one generated file per kind of breakage), never converted "without a tokenizer"; --to never
// deletes what ramstream did not write (a user's folder, a download, an existing .gguf) unless
// --force; parents are created, an unusable parent is named; both directions leave no scratch
// file or folder behind when they fail.
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "checkpoint/gguf.h"
#include "checkpoint/gguf_test_util.h"
#include "cli/cli_testing.h"

namespace ramstream::cli::testing {
namespace {

namespace fs = std::filesystem;
using checkpoint::GgufFile;
using json = nlohmann::json;

const std::string kTinyGguf = checkpoint::testing::kTinyLlamaGguf;
const fs::path kChatModel = "tests/fixtures/tiny_chat_model";

class ConvertTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::absolute(::testing::TempDir()) /
           ("robust_convert_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    for (const auto& e : fs::recursive_directory_iterator(dir_, ec)) {
      fs::permissions(e.path(), fs::perms::owner_all, fs::perm_options::add, ec);
    }
    fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

// relative path -> content of every file under `dir` (and "<dir>/" entries for folders).
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const std::string rel = fs::relative(e.path(), dir).string();
    out[rel] = e.is_directory() ? "<dir>/" : read_all(e.path());
  }
  return out;
}

// Entries of `dir` whose names say scratch (our temp names, a tokenizer scratch folder).
std::vector<std::string> scratch_left(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.find(".tmp-") != std::string::npos || n.find(".old-") != std::string::npos ||
        n.find(".tokenizer-") != std::string::npos) {
      out.push_back(e.path().string());
    }
  }
  return out;
}

// ---- GGUF -> folder: tokenizer metadata present but broken -----------------------------------

TEST_F(ConvertTest, BrokenGgufTokenizerIsRefusedNamingFileAndKey) {
  // Every kind is checked through the library in gguf_writer_test; here every seventh goes
  // through the binary (each run costs a process start of about a second).
  std::vector<checkpoint::testing::GgufTokenizerBreakage> breakages;
  const auto all = checkpoint::testing::gguf_tokenizer_breakages();
  for (size_t k = 0; k < all.size(); k += 7) breakages.push_back(all[k]);
  for (size_t k = 0; k < breakages.size(); ++k) {
    const std::string gguf = path("broken_" + std::to_string(k) + ".gguf");
    ASSERT_TRUE(checkpoint::testing::rewrite_gguf(kTinyGguf, gguf, breakages[k].edit).ok());
    const std::string out = path("out_" + std::to_string(k));
    const CliRun r = run_cli({"convert", "--from", gguf, "--to", out});
    EXPECT_TRUE(r.clean_failure()) << r.describe();
    EXPECT_NE(r.err.find(gguf), std::string::npos) << "file not named: " << r.describe();
    EXPECT_NE(r.err.find("'" + std::string(breakages[k].key) + "'"), std::string::npos)
        << breakages[k].what << ": key " << breakages[k].key << " not named: " << r.describe();
    EXPECT_EQ(r.err.find("no tokenizer"), std::string::npos) << r.describe();
    EXPECT_FALSE(fs::exists(out)) << r.describe();
  }
  EXPECT_TRUE(scratch_left(dir_).empty());

  // No tokenizer metadata at all: converts, and says so.
  const std::string bare = path("bare.gguf");
  ASSERT_TRUE(checkpoint::testing::rewrite_gguf(kTinyGguf, bare, [](auto& m) {
                checkpoint::testing::erase_keys(
                    m, [](const std::string& k) { return k.rfind("tokenizer.", 0) == 0; });
              }).ok());
  const CliRun r = run_cli({"convert", "--from", bare, "--to", path("bare_out")});
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_NE(r.out.find("no tokenizer"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(path("bare_out/config.json")));
  EXPECT_FALSE(fs::exists(path("bare_out/tokenizer.json")));
}

// ---- GGUF -> folder: --to is never someone else's data ---------------------------------------

TEST_F(ConvertTest, ToFolderThatIsNotOursIsRefusedAndKept) {
  const std::string ours = path("ours");
  ASSERT_EQ(run_cli({"convert", "--from", kTinyGguf, "--to", ours}).exit_code, 0);
  // Kinds of folder in the way, each generated fresh (markers that are not ours, malformed or
  // listing too little: hf_folder_test).
  const std::vector<std::pair<const char*, std::function<void(const fs::path&)>>> kinds = {
      {"user files",
       [](const fs::path& d) {
         write_file(d / "notes.txt", "my notes");
         write_file(d / "data/train.jsonl", "{\"text\": \"x\"}\n");
       }},
      {"our output plus a user file",
       [&](const fs::path& d) {
         fs::copy(ours, d, fs::copy_options::recursive);
         write_file(d / "eval_results.json", "{}");
       }},
  };
  for (size_t k = 0; k < kinds.size(); ++k) {
    const fs::path target = dir_ / ("target_" + std::to_string(k));
    kinds[k].second(target);
    const auto before = snapshot(target);
    const CliRun r = run_cli({"convert", "--from", kTinyGguf, "--to", target.string()});
    EXPECT_TRUE(r.clean_failure()) << kinds[k].first << ": " << r.describe();
    EXPECT_NE(r.err.find(target.string()), std::string::npos) << r.describe();
    EXPECT_NE(r.err.find("--force"), std::string::npos) << r.describe();
    EXPECT_EQ(snapshot(target), before) << kinds[k].first;
  }
  // A file where the folder would go: refused even with --force.
  write_file(dir_ / "a_file", "precious");
  const CliRun file = run_cli({"convert", "--from", kTinyGguf, "--to", path("a_file"), "--force"});
  EXPECT_TRUE(file.clean_failure()) << file.describe();
  EXPECT_NE(file.err.find("not a folder"), std::string::npos) << file.describe();
  EXPECT_EQ(read_all(dir_ / "a_file"), "precious");
  // A folder holding the source GGUF is never replaced, --force or not.
  write_file(dir_ / "src/model.gguf", read_all(kTinyGguf));
  const CliRun inside =
      run_cli({"convert", "--from", path("src/model.gguf"), "--to", path("src"), "--force"});
  EXPECT_TRUE(inside.clean_failure()) << inside.describe();
  EXPECT_NE(inside.err.find("holds the source"), std::string::npos) << inside.describe();
  EXPECT_EQ(read_all(dir_ / "src/model.gguf"), read_all(kTinyGguf));
  EXPECT_TRUE(scratch_left(dir_).empty());
}

TEST_F(ConvertTest, ForceReplacesAndOwnOutputsAreReplacedWithoutIt) {
  const fs::path target = dir_ / "target";
  write_file(target / "notes.txt", "my notes");
  const CliRun forced =
      run_cli({"convert", "--from", kTinyGguf, "--to", target.string(), "--force"});
  ASSERT_EQ(forced.exit_code, 0) << forced.describe();
  EXPECT_FALSE(fs::exists(target / "notes.txt"));
  EXPECT_TRUE(fs::exists(target / "config.json"));
  EXPECT_TRUE(fs::exists(target / "tokenizer.json"));
  const json marker = json::parse(read_all(target / "ramstream_output.json"));
  EXPECT_EQ(marker["written_by"], "ramstream");
  // Converting again over our own output needs no --force.
  const CliRun again =
      run_cli({"convert", "--from", kTinyGguf, "--to", target.string(), "--dtype", "fp16"});
  EXPECT_EQ(again.exit_code, 0) << again.describe();
  EXPECT_TRUE(scratch_left(dir_).empty());
}

TEST_F(ConvertTest, ParentsAreCreatedAndAnUnusableParentIsNamed) {
  const std::string deep = path("a/b/c/out");
  ASSERT_EQ(run_cli({"convert", "--from", kTinyGguf, "--to", deep}).exit_code, 0);
  EXPECT_TRUE(fs::exists(deep + "/config.json"));
  const std::string gguf_deep = path("x/y/z/m.gguf");
  ASSERT_EQ(run_cli({"convert", "--from", deep, "--to", gguf_deep}).exit_code, 0);
  EXPECT_TRUE(GgufFile::open(gguf_deep).ok());

  // A parent path through a regular file cannot be created; one without write permission cannot
  // be written (root ignores permissions, so that case needs another user).
  write_file(dir_ / "plain_file", "x");
  std::vector<std::pair<std::string, std::string>> cases = {
      {path("plain_file/sub/out"), path("plain_file/sub")}};
  if (::geteuid() != 0) {
    fs::create_directories(dir_ / "read_only");
    fs::permissions(dir_ / "read_only", fs::perms::owner_read | fs::perms::owner_exec);
    cases.emplace_back(path("read_only/out"), path("read_only"));
  }
  for (const auto& [to, parent] : cases) {
    for (const std::string& from : {kTinyGguf, deep}) {
      const std::string target = from == deep ? to + ".gguf" : to;
      const CliRun r = run_cli({"convert", "--from", from, "--to", target});
      EXPECT_TRUE(r.clean_failure()) << r.describe();
      EXPECT_NE(r.err.find(parent + ": "), std::string::npos)
          << "parent not named: " << r.describe();
      EXPECT_EQ(r.err.find(".tmp-"), std::string::npos) << "names a scratch path: " << r.describe();
    }
  }
  EXPECT_TRUE(scratch_left(dir_).empty());
}

// ---- folder -> GGUF --------------------------------------------------------------------------

TEST_F(ConvertTest, FolderToGgufWritesWhatOurReaderReads) {
  {
    const std::string out = path("chat-q8_0.gguf");
    const CliRun r =
        run_cli({"convert", "--from", kChatModel.string(), "--to", out, "--type", "q8_0"});
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    EXPECT_NE(r.out.find("tokenizer 384 tokens, pre 'gpt-2'"), std::string::npos) << r.out;
    const GgufFile f = GgufFile::open(out).value_or_throw();
    EXPECT_EQ(f.get_string("general.name").value(), "tiny_chat_model");
    EXPECT_EQ(f.get_string("tokenizer.ggml.model").value(), "gpt2");
    EXPECT_EQ(f.get_int("tokenizer.ggml.eos_token_id").value(), 2);
    EXPECT_TRUE(f.find("tokenizer.chat_template") != nullptr);
    EXPECT_TRUE(checkpoint::gguf_model_config(f).ok());
  }
  // And back to a folder, whose tokenizer survives.
  const CliRun back = run_cli({"convert", "--from", path("chat-q8_0.gguf"), "--to", path("back")});
  ASSERT_EQ(back.exit_code, 0) << back.describe();
  EXPECT_NE(back.out.find("tokenizer.json (384 tokens)"), std::string::npos) << back.out;
}

TEST_F(ConvertTest, FolderToGgufNeverOverwritesWithoutForce) {
  const std::string out = path("m.gguf");
  write_file(out, "an older model");
  const CliRun r = run_cli({"convert", "--from", kChatModel.string(), "--to", out});
  EXPECT_TRUE(r.clean_failure()) << r.describe();
  EXPECT_NE(r.err.find(out + ": exists"), std::string::npos) << r.describe();
  EXPECT_NE(r.err.find("--force"), std::string::npos) << r.describe();
  EXPECT_EQ(read_all(out), "an older model");
  const CliRun forced = run_cli({"convert", "--from", kChatModel.string(), "--to", out, "--force"});
  ASSERT_EQ(forced.exit_code, 0) << forced.describe();
  EXPECT_TRUE(GgufFile::open(out).ok());
  // A folder at --to is never replaced by a file.
  fs::create_directories(dir_ / "folder.gguf/inside");
  const CliRun folder =
      run_cli({"convert", "--from", kChatModel.string(), "--to", path("folder.gguf"), "--force"});
  EXPECT_TRUE(folder.clean_failure()) << folder.describe();
  EXPECT_NE(folder.err.find("is a folder"), std::string::npos) << folder.describe();
  EXPECT_TRUE(fs::exists(dir_ / "folder.gguf/inside"));
  EXPECT_TRUE(scratch_left(dir_).empty());
}

TEST_F(ConvertTest, OptionsOfTheOtherDirectionAreUsageErrors) {
  const std::vector<std::vector<std::string>> cases = {
      {"convert", "--from", kTinyGguf, "--to", path("o1"), "--type", "q8_0"},
      {"convert", "--from", kChatModel.string(), "--to", path("o2.gguf"), "--dtype", "fp32"},
  };
  for (const auto& args : cases) {
    const CliRun r = run_cli(args);
    EXPECT_EQ(r.exit_code, 2) << r.describe();
    EXPECT_TRUE(r.err.find("--type") != std::string::npos ||
                r.err.find("--dtype") != std::string::npos)
        << r.describe();
  }
  EXPECT_TRUE(fs::is_empty(dir_));
}

// A folder whose tokenizer.json is present but cannot become GGUF metadata: refused naming it,
// nothing written (generated from the fixture, one breakage each; more in gguf_writer_test).
TEST_F(ConvertTest, FolderWithBrokenTokenizerIsRefused) {
  const json good = json::parse(read_all(kChatModel / "tokenizer.json"));
  const std::vector<std::pair<std::string, std::function<void(json&)>>> breakages = {
      {"pre_tokenizer", [](json& t) { t["pre_tokenizer"]["add_prefix_space"] = true; }},
      {"more than the model's vocabulary",
       [](json& t) {
         t["added_tokens"].push_back({{"id", 400},
                                      {"content", "<extra>"},
                                      {"single_word", false},
                                      {"lstrip", false},
                                      {"rstrip", false},
                                      {"normalized", false},
                                      {"special", true}});
       }},
  };
  for (size_t k = 0; k < breakages.size(); ++k) {
    const fs::path src = dir_ / ("model_" + std::to_string(k));
    fs::copy(kChatModel, src, fs::copy_options::recursive);
    json t = good;
    breakages[k].second(t);
    write_file(src / "tokenizer.json", t.dump());
    const std::string out = path("out_" + std::to_string(k) + ".gguf");
    const CliRun r = run_cli({"convert", "--from", src.string(), "--to", out});
    EXPECT_TRUE(r.clean_failure()) << r.describe();
    EXPECT_NE(r.err.find((src / "tokenizer.json").string()), std::string::npos) << r.describe();
    EXPECT_NE(r.err.find(breakages[k].first), std::string::npos) << r.describe();
    EXPECT_FALSE(fs::exists(out));
  }
  EXPECT_TRUE(scratch_left(dir_).empty());
}

}  // namespace
}  // namespace ramstream::cli::testing
