// Robustness of the recipe front door: generated malformed recipes, one test per class of failure,
// fed to the real `ramstream` binary (validate, run, show, cp and the command dispatch) under time
// and memory limits (cli/cli_testing.h). Each must fail cleanly (exit != 0, no signal, in time)
// with a message that names the file and the line or key at fault, and never print unbounded
// input back.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cli/cli_testing.h"
#include "trainer/recipe.h"

namespace ramstream::cli::testing {
namespace {

namespace fs = std::filesystem;
using trainer::RecipeKeyInfo;

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::string temp_dir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/robust_recipe_" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string write_file(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

// What every malformed recipe must give, plus each of `needles` on stderr.
void expect_clean_failure(const CliRun& r, const std::vector<std::string>& needles) {
  EXPECT_TRUE(r.clean_failure()) << r.describe();
  for (const std::string& n : needles) EXPECT_TRUE(contains(r.err, n)) << n << "\n" << r.describe();
  EXPECT_LT(r.err_bytes, 64u << 10) << r.describe();
}

// A valid start (4 lines) so that the problem under test is the one reported.
const char* kHead = "model:\n  path: /nonexistent/m\ndata:\n  path: /nonexistent/d.jsonl\n";
constexpr int kHeadLines = 4;

// Every run of the binary costs about a second of libtorch start-up, so each class is a few
// generated instances here (its many variants are unit tests in trainer/recipe_test.cpp), and
// classes validate reports in a list (duplicates, values) put every variant in one file.

// Class: a mapping that contains itself through an alias; flattening it would never end.
TEST(RobustRecipe, SelfReferencingAliases) {
  const std::string dir = temp_dir("self");
  for (const auto& [depth, flow] : {std::pair{3, false}, std::pair{5, true}}) {
    std::string text = std::string(kHead) + "train: &self\n";
    int line = kHeadLines + 2;
    if (flow) {
      std::string inner = "*self";
      for (int d = 0; d < depth; ++d) inner = "{k" + std::to_string(d) + ": " + inner + "}";
      text += "  lr: " + inner + "\n";
    } else {
      std::string indent = "  ";
      for (int d = 0; d < depth; ++d, ++line, indent += "  ") {
        text += indent + "k" + std::to_string(d) + ":\n";
      }
      text += indent + "lr: *self\n";
    }
    const std::string path = write_file(dir + "/self_" + std::to_string(depth) + ".yaml", text);
    expect_clean_failure(run_cli({flow ? "run" : "validate", path}),
                         {path + ":" + std::to_string(line) + ":", "contains it"});
  }
}

// Class: alias bombs ("billion laughs") built from mappings: level i holds ten aliases of level
// i-1. A small one expands (into unknown keys, each named); a large one stops at the key budget
// with the line of the alias that crossed it.
TEST(RobustRecipe, AliasBombsOfGrowingSize) {
  const std::string dir = temp_dir("bomb");
  for (int levels : {3, 9}) {
    std::string text = std::string(kHead) + "l0: &l0 {x: 1}\n";
    for (int level = 1; level <= levels; ++level) {
      text += "l" + std::to_string(level) + ": &l" + std::to_string(level) + " {";
      for (int w = 0; w < 10; ++w) {
        text += (w ? ", " : "") + std::string("k") + std::to_string(w) + ": *l" +
                std::to_string(level - 1);
      }
      text += "}\n";
    }
    const std::string path = write_file(dir + "/bomb_" + std::to_string(levels) + ".yaml", text);
    const std::string expected =
        levels == 3 ? ":" + std::to_string(kHeadLines + 2) + ": unknown key 'l1.k0.x'"
                    // level 5 is the first with more keys (10^5) than the budget (2^16)
                    : ":" + std::to_string(kHeadLines + 1 + 5) + ": aliases expand to more than";
    expect_clean_failure(run_cli({"validate", path}), {path + expected});
  }
}

// Class: deep nesting, 10^4 flow mappings and 10^5 flow lists.
TEST(RobustRecipe, DeepNesting) {
  const std::string dir = temp_dir("deep");
  const std::string line = ":" + std::to_string(kHeadLines + 1) + ":";
  std::string maps;
  for (int d = 0; d < 10000; ++d) maps += "{a: ";
  maps += "1" + std::string(10000, '}');
  const std::string m = write_file(dir + "/maps.yaml", std::string(kHead) + "deep: " + maps + "\n");
  expect_clean_failure(run_cli({"validate", m}), {m + line + " nested deeper than 32 levels"});
  const std::string lists = std::string(100000, '[') + std::string(100000, ']');
  const std::string l =
      write_file(dir + "/lists.yaml", std::string(kHead) + "deep: " + lists + "\n");
  expect_clean_failure(run_cli({"run", l}), {l + line});
}

// Keys of the schema grouped by section, so a generated file writes each section once.
std::map<std::string, std::vector<RecipeKeyInfo>> keys_by_section() {
  std::map<std::string, std::vector<RecipeKeyInfo>> out;
  for (const RecipeKeyInfo& k : trainer::recipe_schema()) {
    const size_t dot = k.key.find('.');
    out[dot == std::string::npos ? "" : k.key.substr(0, dot)].push_back(k);
  }
  return out;
}

// Class: duplicate keys, every key of the schema twice (in two files, so that each stays inside
// validate's list of 50); both lines named.
TEST(RobustRecipe, DuplicateKeys) {
  const std::string dir = temp_dir("dup");
  std::string text[2];
  int line[2] = {0, 0};
  std::vector<std::string> needles[2];
  int n = 0;
  for (const auto& [section, keys] : keys_by_section()) {
    const std::string indent = section.empty() ? "" : "  ";
    bool opened[2] = {false, false};
    for (const RecipeKeyInfo& k : keys) {
      const int f = n++ % 2;
      if (!section.empty() && !opened[f]) {
        text[f] += section + ":\n";
        ++line[f];
        opened[f] = true;
      }
      const std::string name = k.key.substr(section.empty() ? 0 : section.size() + 1);
      const std::string value = k.default_value.empty() ? "x" : k.default_value;
      text[f] += indent + name + ": " + value + "\n" + indent + name + ": " + value + "\n";
      line[f] += 2;
      needles[f].push_back(":" + std::to_string(line[f]) + ": duplicate key '" + k.key +
                           "' (first at line " + std::to_string(line[f] - 1) + ")");
    }
  }
  for (int f = 0; f < 2; ++f) {
    ASSERT_LE(needles[f].size(), 40u);
    const std::string path = write_file(dir + "/dup_" + std::to_string(f) + ".yaml", text[f]);
    for (std::string& needle : needles[f]) needle = path + needle;
    expect_clean_failure(run_cli({"validate", path}), needles[f]);
  }
}

// Class: non-finite and out-of-range values for every numeric key of the schema: in one file,
// each key with one of the bad values in turn, and as overrides of a bundled recipe.
TEST(RobustRecipe, NonFiniteAndOutOfRangeValuesForEveryNumericKey) {
  const std::string dir = temp_dir("numbers");
  using Bad = std::string (*)(const RecipeKeyInfo&);
  const std::vector<Bad> variants = {
      [](const RecipeKeyInfo&) { return std::string("inf"); },
      [](const RecipeKeyInfo&) { return std::string("nan"); },
      [](const RecipeKeyInfo&) { return std::string("-1e999"); },
      [](const RecipeKeyInfo& k) { return std::to_string(static_cast<long long>(k.min) - 1); },
      [](const RecipeKeyInfo& k) {
        return k.max >= 9e18 ? std::string("99999999999999999999")
                             : std::to_string(static_cast<long long>(k.max) + 1);
      },
  };
  std::string text;
  int line = 0;
  size_t n = 0;
  std::vector<std::string> needles, overrides = {"validate", "tiny-debug"}, override_needles;
  for (const auto& [section, keys] : keys_by_section()) {
    std::string block;
    for (const RecipeKeyInfo& k : keys) {
      if (k.kind != RecipeKeyInfo::Kind::kInteger && k.kind != RecipeKeyInfo::Kind::kNumber) {
        continue;
      }
      const std::string bad = variants[n++ % variants.size()](k);
      if (block.empty()) ++line;  // the section's own line
      block += "  " + k.key.substr(section.size() + 1) + ": " + bad + "\n";
      ++line;
      needles.push_back(":" + std::to_string(line) + ": '" + k.key + "': '" + bad + "' is not");
      const std::string o = k.key + "=" + variants[n % variants.size()](k);
      overrides.push_back(o);
      override_needles.push_back("override '" + o + "': '" + k.key + "'");
    }
    if (!block.empty()) text += section + ":\n" + block;
  }
  ASSERT_GE(needles.size(), 20u);
  ASSERT_LE(needles.size(), 45u);  // all inside validate's list of 50
  const std::string path = write_file(dir + "/numbers.yaml", text);
  for (std::string& needle : needles) needle = path + needle;
  expect_clean_failure(run_cli({"validate", path}), needles);
  expect_clean_failure(run_cli(overrides), override_needles);
}

// Class: a folder, a character device or a FIFO where the recipe file is expected (none may be
// read: /dev/zero never ends, a FIFO blocks). The smoke test has the folder for validate and run.
TEST(RobustRecipe, RecipeThatIsNotARegularFile) {
  const std::string dir = temp_dir("kinds");
  const std::string folder = dir + "/folder.yaml";
  fs::create_directories(folder);
  const std::string fifo = dir + "/fifo.yaml";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  expect_clean_failure(run_cli({"show", folder}), {folder + ": is a folder"});
  expect_clean_failure(run_cli({"run", "/dev/zero"}), {"/dev/zero: is not a regular file"});
  expect_clean_failure(run_cli({"validate", fifo}), {fifo + ": is not a regular file"});
}

// Class: huge recipes. validate of 10^6 unknown keys lists 50 problems, counts the rest, and
// finishes inside the time limit.
TEST(RobustRecipe, HugeRecipesGiveBoundedOutputInBoundedTime) {
  const std::string dir = temp_dir("huge");
  const size_t n = 1000000;
  std::string text = kHead;
  text.reserve(n * 12);
  for (size_t i = 0; i < n; ++i) text += "k" + std::to_string(i) + ": 1\n";
  const std::string path = write_file(dir + "/huge.yaml", text);
  CliLimits limits;
  limits.seconds = 60;
  const CliRun v = run_cli({"validate", path}, limits);
  // The problems: the million unknown keys, then the two missing files.
  expect_clean_failure(v, {path + ":" + std::to_string(kHeadLines + 1) + ": unknown key 'k0'",
                           path + ":" + std::to_string(kHeadLines + 50) + ": unknown key 'k49'",
                           "... and " + std::to_string(n + 2 - 50) + " more problems"});
  EXPECT_LT(v.err_bytes, 8u << 10) << v.describe();
}

// Class: an unknown subcommand: "unknown command 'x'" and the list of commands, for a typo and
// for a name of control bytes and 10^5 characters (quoted back cut short, bytes escaped).
TEST(RobustRecipe, UnknownCommand) {
  const std::vector<std::pair<std::string, std::string>> names = {
      {"validat", "unknown command 'validat'"},
      {"\x1b[2J" + std::string(100000, 'q'), "unknown command '\\x1b[2Jqqq"}};
  for (const auto& [name, expected] : names) {
    const CliRun r = run_cli({name, "arg"});
    EXPECT_TRUE(r.clean_failure()) << r.describe();
    EXPECT_EQ(r.exit_code, 2) << r.describe();
    EXPECT_TRUE(contains(r.err, expected)) << r.describe();
    for (const char* cmd : {"run", "ls", "show", "cp", "validate", "inspect", "convert"}) {
      EXPECT_TRUE(contains(r.err, "\n  " + std::string(cmd) + " ")) << cmd << "\n" << r.describe();
    }
    EXPECT_LT(r.err_bytes, 4096u) << r.describe();
    EXPECT_FALSE(contains(r.err, "\x1b")) << r.describe();
  }
}

// `cp` into places it cannot write: through a symlink loop, into a missing folder, over a file
// that exists; never a std::filesystem_error escaping, never a file replaced.
TEST(RobustRecipe, CopyIntoPlacesItCannotWrite) {
  const std::string dir = temp_dir("cp");
  fs::create_symlink(dir + "/loop_a", dir + "/loop_b");
  fs::create_symlink(dir + "/loop_b", dir + "/loop_a");
  const std::string exists = write_file(dir + "/exists.yaml", "keep me\n");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {dir + "/loop_a/inside.yaml", dir + "/loop_a/inside.yaml: Too many levels of symbolic links"},
      {dir + "/no/such/folder/x.yaml", "no folder " + dir + "/no/such/folder"},
      {exists, exists + " exists"},
  };
  for (const auto& [dest, needle] : cases) {
    expect_clean_failure(run_cli({"cp", "tiny-debug", dest}), {"ramstream cp: ", needle});
  }
  std::ifstream in(exists);
  const std::string kept((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(kept, "keep me\n");
}

// Bundled recipes work from any working directory; a copy's relative paths are the user's.
TEST(RobustRecipe, BundledRecipesWorkFromAnyWorkingDirectory) {
  const std::string dir = temp_dir("cwd");
  const CliRun s = run_cli({"show", "tiny-debug"}, {}, dir);
  EXPECT_TRUE(s.exited() && s.exit_code == 0) << s.describe();
  EXPECT_TRUE(contains(s.out, "/data/bundled/tasks_train.jsonl\n")) << s.out;
  EXPECT_FALSE(contains(s.out, "path: data/bundled")) << s.out;
  EXPECT_EQ(s.err, "");
  const CliRun c = run_cli({"cp", "tiny-debug", "."}, {}, dir);
  EXPECT_TRUE(c.exited() && c.exit_code == 0) << c.describe();
  EXPECT_TRUE(fs::is_regular_file(dir + "/tiny-debug.yaml"));
  EXPECT_TRUE(contains(c.out, "note: data.path 'data/bundled/tasks_train.jsonl' is now relative"))
      << c.out;
}

}  // namespace
}  // namespace ramstream::cli::testing
