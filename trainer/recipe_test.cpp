#include "trainer/recipe.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>

#include <gtest/gtest.h>

namespace ramstream::trainer {
namespace {

namespace fs = std::filesystem;

const char* kMinimal = R"(output_dir: out/x
model:
  path: /models/m
data:
  path: d.jsonl
  columns:
    instruction: question
train:
  lr: 2.0e-4
  max_steps: 7
)";

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::string fresh_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("ramstream_recipe_test_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

TEST(Recipe, ParsesValuesAndAppliesOverridesInOrder) {
  Result<Recipe> r =
      parse_recipe(kMinimal, "r.yaml",
                   {"train.lr=1e-5", "train.lr=3e-5", "data.pack=false", "output_dir=\"o d\""});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r.value().model_path, "/models/m");
  EXPECT_DOUBLE_EQ(r.value().lr, 3e-5);
  EXPECT_EQ(r.value().max_steps, 7);
  EXPECT_FALSE(r.value().pack);
  EXPECT_EQ(r.value().output_dir, "o d");
  EXPECT_EQ(r.value().data_columns.at("instruction"), "question");
}

TEST(Recipe, UnknownKeyNamesLineAndSuggestsClosest) {
  const std::string text = std::string(kMinimal) + "eval:\n  evrey: 5\n";
  Result<Recipe> r = parse_recipe(text, "r.yaml", {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("r.yaml:12: unknown key 'eval.evrey'"), std::string::npos)
      << r.error().message;
  EXPECT_NE(r.error().message.find("did you mean 'eval.every'"), std::string::npos);

  Result<Recipe> o = parse_recipe(kMinimal, "r.yaml", {"train.lrr=1"});
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.error().message.find("did you mean 'train.lr'"), std::string::npos)
      << o.error().message;
  EXPECT_EQ(closest_recipe_key("lr"), "train.lr");
  EXPECT_EQ(closest_recipe_key("max_seq_length"), "data.max_seq_len");
  EXPECT_EQ(closest_recipe_key("completely.unrelated.thing"), "");
  EXPECT_EQ(closest_recipe_key(std::string(100000, 'x')), "");
}

TEST(Recipe, BadValuesAndYamlSyntax) {
  Result<Recipe> a = parse_recipe(kMinimal, "r.yaml", {"train.max_steps=ten"});
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.error().message.find("'train.max_steps': 'ten' is not an integer"), std::string::npos)
      << a.error().message;
  Result<Recipe> b = parse_recipe(kMinimal, "r.yaml", {"train.lr_schedule=exponential"});
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.error().message.find("constant | linear | cosine"), std::string::npos);
  Result<Recipe> c = parse_recipe("model:\n  path: [a\n", "bad.yaml", {});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message.find("bad.yaml:"), std::string::npos) << c.error().message;
  Result<Recipe> d = parse_recipe(kMinimal, "r.yaml", {"no_equals_sign"});
  ASSERT_FALSE(d.ok());
  Result<Recipe> e = parse_recipe("model:\n  path: m\n", "r.yaml", {});
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.error().message.find("'data.path' is required"), std::string::npos);
}

TEST(Recipe, StructuresNoRecipeHasAreErrorsWithTheLine) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"- a\n- b\n", "r.yaml:1: a recipe must be a mapping"},
      {"just text\n", "r.yaml:1: a recipe must be a mapping"},
      {std::string(kMinimal) + "---\nmodel:\n  path: x\n", "r.yaml:11: a second YAML document"},
      {std::string(kMinimal) + "log:\n  every: [1, 2]\n",
       "r.yaml:12: 'log.every' must be a single"},
      {std::string(kMinimal) + "log:\n  ? [1, 2]\n  : 3\n",
       "r.yaml:12: a key must be a plain name"},
      {std::string(kMinimal) + "log:\n  ~: 3\n", "r.yaml:12: a key must be a plain name"},
      {std::string(kMinimal) + "x: &l [1]\nlog:\n  every: *l\n",
       "r.yaml:11: 'x' must be a single value"},
  };
  for (const auto& [text, expected] : cases) {
    Result<Recipe> r = parse_recipe(text, "r.yaml", {});
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_TRUE(contains(r.error().message, expected)) << r.error().message << "\n" << text;
  }
}

TEST(Recipe, ScalarAndMappingAliasesAreExpanded) {
  const std::string text = std::string(kMinimal) +
                           "eval:\n  every: &n 5\n  max_rows: *n\n"
                           "checkpoint: &c\n  every: 20\n  keep_last_n: 4\n";
  Result<Recipe> r = parse_recipe(text, "r.yaml", {});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r.value().eval_every, 5);
  EXPECT_EQ(r.value().eval_max_rows, 5);
  // A mapping aliased under another section gives its keys there (here: unknown ones).
  Result<Recipe> m = parse_recipe(text + "log: *c\n", "r.yaml", {});
  ASSERT_FALSE(m.ok());
  EXPECT_TRUE(contains(m.error().message, "r.yaml:17: unknown key 'log.keep_last_n'"))
      << m.error().message;
}

// Class: a mapping that contains itself through an alias (endless when flattened).
TEST(Recipe, SelfReferencingAliasesAreErrorsNamingTheLine) {
  for (int depth = 0; depth < 6; ++depth) {
    for (bool flow : {false, true}) {
      // depth levels of mappings between the anchor and the alias that names it.
      std::string text = std::string(kMinimal) + "loop: &self\n";
      std::string indent = "  ";
      int line = 12;
      if (flow) {
        std::string inner = "*self";
        for (int d = 0; d < depth; ++d) inner = "{k" + std::to_string(d) + ": " + inner + "}";
        text += "  a: " + inner + "\n";
      } else {
        for (int d = 0; d < depth; ++d, ++line) {
          text += indent + "k" + std::to_string(d) + ":\n";
          indent += "  ";
        }
        text += indent + "a: *self\n";
      }
      if (flow) line = 12;
      Result<Recipe> r = parse_recipe(text, "self.yaml", {});
      ASSERT_FALSE(r.ok()) << text;
      EXPECT_TRUE(contains(r.error().message, "self.yaml:" + std::to_string(line) + ":"))
          << r.error().message << "\n"
          << text;
      EXPECT_TRUE(contains(r.error().message, "contains it")) << r.error().message;
    }
  }
  Result<Recipe> root = parse_recipe("&r\nmodel: *r\n", "root.yaml", {});
  ASSERT_FALSE(root.ok());
  EXPECT_TRUE(contains(root.error().message, "root.yaml:2:")) << root.error().message;
}

// A "billion laughs" of mappings: level i holds `width` aliases of level i-1.
std::string alias_bomb(int levels, int width) {
  std::string text = std::string(kMinimal) + "l0: &l0 {x: 1}\n";
  for (int level = 1; level <= levels; ++level) {
    text += "l" + std::to_string(level) + ": &l" + std::to_string(level) + " {";
    for (int w = 0; w < width; ++w) {
      text += (w ? ", " : "") + std::string("k") + std::to_string(w) + ": *l" +
              std::to_string(level - 1);
    }
    text += "}\n";
  }
  return text;
}

// Class: alias bombs built from mappings. Small ones expand (and are unknown keys); once the
// expansion passes the key budget it stops with the line of the alias that crossed it.
TEST(Recipe, AliasBombsOfGrowingSizeStayBounded) {
  bool hit_budget = false;
  for (int levels = 1; levels <= 12; ++levels) {
    const std::string text = alias_bomb(levels, 10);
    Result<Recipe> r = parse_recipe(text, "bomb.yaml", {});
    ASSERT_FALSE(r.ok());
    const std::string& msg = r.error().message;
    EXPECT_LT(msg.size(), 400u) << msg.substr(0, 400);
    if (contains(msg, "alias bomb")) {
      hit_budget = true;
      // The last line whose alias expansion crosses the budget is one of the level lines.
      EXPECT_TRUE(contains(msg, "bomb.yaml:")) << msg;
      const int line = std::atoi(msg.c_str() + msg.find("bomb.yaml:") + 10);
      EXPECT_GE(line, 12) << msg;
      EXPECT_LE(line, 11 + levels) << msg;
    } else {
      EXPECT_TRUE(contains(msg, "bomb.yaml:11: unknown key 'l0.x'")) << msg;
    }
    RecipeCheck check = validate_recipe("/nonexistent");  // nothing shared between calls
    EXPECT_EQ(check.total, 1u);
  }
  EXPECT_TRUE(hit_budget);
}

// Class: deep nesting (yaml-cpp recurses per level; the flattener stops far earlier).
TEST(Recipe, DeepNestingIsRefusedWithTheLine) {
  for (int depth : {33, 100, 1000, 10000}) {
    std::string maps, lists;
    for (int d = 0; d < depth; ++d) maps += "{a: ";
    maps += "1";
    for (int d = 0; d < depth; ++d) maps += "}";
    lists = std::string(size_t(depth), '[') + std::string(size_t(depth), ']');
    for (const std::string& value : {maps, lists}) {
      Result<Recipe> r =
          parse_recipe(std::string(kMinimal) + "deep: " + value + "\n", "deep.yaml", {});
      ASSERT_FALSE(r.ok());
      if (value[0] == '{') {
        EXPECT_TRUE(contains(r.error().message, "deep.yaml:11: nested deeper than 32 levels"))
            << r.error().message.substr(0, 300);
      } else {  // a list is refused as a value before its depth matters
        EXPECT_TRUE(contains(r.error().message, "deep.yaml:11:")) << r.error().message;
      }
    }
  }
  std::string block = kMinimal;
  std::string indent;
  for (int d = 0; d < 40; ++d, indent += " ") block += indent + "k:\n";
  block += indent + "k: 1\n";
  Result<Recipe> r = parse_recipe(block, "block.yaml", {});
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(contains(r.error().message, "block.yaml:")) << r.error().message;
  EXPECT_TRUE(contains(r.error().message, "nested deeper")) << r.error().message;
}

// Class: duplicate keys, for every key of the schema; the message names both lines.
TEST(Recipe, DuplicateKeysNameBothLines) {
  for (const RecipeKeyInfo& k : recipe_schema()) {
    const size_t dot = k.key.find('.');
    std::string text;
    int first = 0, second = 0;
    if (dot == std::string::npos) {
      text = k.key + ": " + k.default_value + "\n# filler\n" + k.key + ": x\n";
      first = 1, second = 3;
    } else {
      const std::string sec = k.key.substr(0, dot), name = k.key.substr(dot + 1);
      text = sec + ":\n  " + name + ": " + k.default_value + "\n  # filler\n  " + name + ": " +
             k.default_value + "\n";
      first = 2, second = 4;
    }
    Result<Recipe> r = parse_recipe(text, "dup.yaml", {});
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_TRUE(contains(r.error().message, "dup.yaml:" + std::to_string(second) +
                                                ": duplicate key '" + k.key + "' (first at line " +
                                                std::to_string(first) + ")"))
        << r.error().message;
  }
  Result<Recipe> sections =
      parse_recipe(std::string(kMinimal) + "model:\n  compute: fp32\n", "dup.yaml", {});
  ASSERT_FALSE(sections.ok());
  EXPECT_TRUE(
      contains(sections.error().message, "dup.yaml:11: duplicate key 'model' (first at line 2)"))
      << sections.error().message;
}

// Bad values for one key: out of range, non-finite, not a number.
std::vector<std::string> bad_values(const RecipeKeyInfo& k) {
  std::vector<std::string> v;
  if (k.kind == RecipeKeyInfo::Kind::kInteger) {
    v = {std::to_string(static_cast<long long>(k.min) - 1),
         "99999999999999999999",
         "-99999999999999999999",
         "1.5",
         "0x10",
         "1e3",
         ""};
    if (k.max < 9.2e18) v.push_back(std::to_string(static_cast<long long>(k.max) + 1));
  } else if (k.kind == RecipeKeyInfo::Kind::kNumber) {
    v = {"inf", "-inf", "nan", "NaN", "infinity", "1e999", "-1e999", ".inf", "one"};
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", k.min - 1);
    v.push_back(buf);
    std::snprintf(buf, sizeof buf, "%.17g", k.max + 1);
    v.push_back(buf);
  }
  return v;
}

// Class: non-finite and out-of-range numbers, for every numeric key, from the file and from an
// override; the ends of each range are accepted.
TEST(Recipe, NumericKeysRefuseNonFiniteAndOutOfRangeValues) {
  int checked = 0;
  for (const RecipeKeyInfo& k : recipe_schema()) {
    if (k.kind != RecipeKeyInfo::Kind::kInteger && k.kind != RecipeKeyInfo::Kind::kNumber) continue;
    const size_t dot = k.key.find('.');
    ASSERT_NE(dot, std::string::npos) << k.key;  // every numeric key sits in a section
    const std::string section = k.key.substr(0, dot), name = k.key.substr(dot + 1);
    for (const std::string& bad : bad_values(k)) {
      ++checked;
      const std::string text = "output_dir: o\n" + section + ":\n  " + name + ": '" + bad + "'\n";
      Result<Recipe> r = parse_recipe(text, "num.yaml", {});
      ASSERT_FALSE(r.ok()) << k.key << " = " << bad;
      EXPECT_TRUE(contains(r.error().message, "num.yaml:3: '" + k.key + "': '" + bad + "' is not"))
          << r.error().message;
      Result<Recipe> o = parse_recipe(kMinimal, "num.yaml", {k.key + "=" + bad});
      ASSERT_FALSE(o.ok()) << k.key << " = " << bad;
      EXPECT_TRUE(
          contains(o.error().message, "override '" + k.key + "=" + bad + "': '" + k.key + "'"))
          << o.error().message;
    }
    if (k.kind == RecipeKeyInfo::Kind::kInteger) {
      std::vector<std::string> ends = {std::to_string(static_cast<long long>(k.min))};
      if (k.max < 9e18) ends.push_back(std::to_string(static_cast<long long>(k.max)));
      for (const std::string& v : ends) {
        // Accepted by the key itself (a product with other sizes may still be too large).
        Result<Recipe> r = parse_recipe(kMinimal, "num.yaml", {k.key + "=" + v});
        EXPECT_TRUE(r.ok() || contains(r.error().message, "tokens per"))
            << k.key << "=" << v << ": " << r.error().message;
      }
    }
    if (k.kind == RecipeKeyInfo::Kind::kNumber && contains(k.allowed, "[")) {
      char lo[64];
      std::snprintf(lo, sizeof lo, "%.17g", k.min);
      Result<Recipe> r = parse_recipe(kMinimal, "num.yaml", {k.key + "=" + lo});
      // train.nan_policy and friends are untouched, so only the value itself can fail here.
      EXPECT_TRUE(r.ok()) << k.key << "=" << lo << ": " << r.error().message;
    }
  }
  EXPECT_GT(checked, 200);
  // Every numeric key at once: validate lists one problem per key, each naming it.
  std::vector<std::string> overrides;
  for (const RecipeKeyInfo& k : recipe_schema()) {
    if (k.kind == RecipeKeyInfo::Kind::kNumber) overrides.push_back(k.key + "=nan");
    if (k.kind == RecipeKeyInfo::Kind::kInteger) {
      overrides.push_back(k.key + "=-99999999999999999999");
    }
  }
  const RecipeCheck check = validate_recipe("tiny-debug", overrides, 1000);
  EXPECT_EQ(check.total, overrides.size());
  for (const std::string& o : overrides) {
    bool named = false;
    for (const std::string& p : check.problems) named |= contains(p, "override '" + o + "'");
    EXPECT_TRUE(named) << o;
  }
}

TEST(Recipe, SizesWhoseProductOverflowsAreRefused) {
  Result<Recipe> micro =
      parse_recipe(kMinimal, "r.yaml", {"train.batch_size=1048576", "data.max_seq_len=1048576"});
  ASSERT_FALSE(micro.ok());
  EXPECT_TRUE(contains(micro.error().message, "'train.batch_size' x 'data.max_seq_len'"))
      << micro.error().message;
  Result<Recipe> step =
      parse_recipe(kMinimal, "r.yaml",
                   {"train.batch_size=4096", "data.max_seq_len=4096", "train.grad_accum=1048576"});
  ASSERT_FALSE(step.ok());
  EXPECT_TRUE(contains(step.error().message, "tokens per step")) << step.error().message;
  const std::string in_file =
      std::string(kMinimal) + "  batch_size: 1048576\n" + "  grad_accum: 1048576\n";
  Result<Recipe> f = parse_recipe(in_file, "f.yaml", {"data.max_seq_len=1048576"});
  ASSERT_FALSE(f.ok());
  EXPECT_TRUE(contains(f.error().message, "f.yaml:11:")) << f.error().message;
}

// Class: huge recipes for validate: every problem counted, the first max_shown listed.
TEST(Recipe, ValidateCapsItsListAndCountsEveryProblem) {
  const std::string dir = fresh_dir("huge");
  std::string text = kMinimal;
  const size_t n = 20000;
  for (size_t i = 0; i < n; ++i) text += "unknown_" + std::to_string(i) + ": 1\n";
  write_file(dir + "/huge.yaml", text);
  const RecipeCheck check = validate_recipe(dir + "/huge.yaml", {}, 50);
  EXPECT_EQ(check.problems.size(), 50u);
  EXPECT_EQ(check.total, n + 2);  // the unknown keys and the two missing files
  EXPECT_TRUE(contains(check.problems[0], "huge.yaml:11: unknown key 'unknown_0'"))
      << check.problems[0];
  EXPECT_FALSE(check.ok());
}

TEST(Recipe, ValidateListsEveryProblem) {
  // The bundled recipes have no schema problem; only files that are not here yet (the default
  // model, placeholder /models paths) may be missing.
  for (const BundledRecipe& b : bundled_recipes()) {
    for (const std::string& p : validate_recipe(b.name).problems) {
      EXPECT_TRUE(contains(p, "model.path: ") || contains(p, "data.path: ")) << b.name << ": " << p;
    }
  }
  EXPECT_TRUE(validate_recipe("tiny-debug").ok());
  const RecipeCheck missing = validate_recipe("/nonexistent/recipe.yaml");
  ASSERT_EQ(missing.problems.size(), 1u);
  EXPECT_TRUE(contains(missing.problems[0], "/nonexistent/recipe.yaml")) << missing.problems[0];
  const RecipeCheck several = validate_recipe(
      "tiny-debug", {"train.lr=inf", "engine.num_slots=1000000000", "train.max_steps=-1", "x=1"});
  EXPECT_EQ(several.total, 4u);
}

// Class: a folder, a character device, a FIFO or a huge file where the recipe file is expected.
TEST(Recipe, RecipeFileMustBeARegularFileOfBoundedSize) {
  const std::string dir = fresh_dir("kinds");
  const std::string fifo = dir + "/fifo.yaml";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  const std::string big = dir + "/big.yaml";
  write_file(big, "");
  fs::resize_file(big, uint64_t(17) << 20);
  fs::create_directories(dir + "/folder.yaml");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {dir + "/folder.yaml", "is a folder"},
      {"/dev/zero", "not a regular file"},
      {fifo, "not a regular file"},
      {big, "larger than 16 MiB"},
      {dir + "/missing.yaml", "no such file and no bundled recipe"}};
  for (const auto& [path, expected] : cases) {
    Result<Recipe> r = load_recipe(path, {});
    ASSERT_FALSE(r.ok()) << path;
    EXPECT_TRUE(contains(r.error().message, path)) << r.error().message;
    EXPECT_TRUE(contains(r.error().message, expected)) << r.error().message;
    const RecipeCheck c = validate_recipe(path);
    ASSERT_EQ(c.problems.size(), 1u);
    EXPECT_EQ(c.problems[0], r.error().message);
  }
}

TEST(Recipe, MessagesNeverEchoUnboundedInput) {
  const std::string huge(1 << 18, 'z');
  const std::vector<std::string> texts = {
      std::string(kMinimal) + huge + ": 1\n",
      std::string(kMinimal) + "  max_steps_" + huge + ": 1\n",
      std::string(kMinimal) + "log:\n  every: " + huge + "\n",
      std::string(kMinimal) + "log:\n  progress: " + huge + "\n",
      std::string(kMinimal) + "log:\n  every: " + huge + "\n  every: 2\n",
  };
  for (const std::string& t : texts) {
    Result<Recipe> r = parse_recipe(t, "big.yaml", {});
    ASSERT_FALSE(r.ok());
    EXPECT_LT(r.error().message.size(), 400u) << r.error().message.substr(0, 400);
    EXPECT_TRUE(contains(r.error().message, "big.yaml:1")) << r.error().message.substr(0, 400);
  }
  Result<Recipe> o = parse_recipe(kMinimal, "r.yaml", {"train.lr=" + huge});
  ASSERT_FALSE(o.ok());
  EXPECT_LT(o.error().message.size(), 400u);
}

TEST(Recipe, BundledPathsResolveAgainstTheDataDirAndUserPathsAgainstTheWorkingDir) {
  const std::string data_dir = bundled_data_dir();
  ASSERT_FALSE(data_dir.empty());
  EXPECT_TRUE(fs::is_directory(data_dir + "/data/bundled")) << data_dir;
  Result<Recipe> tiny = load_recipe("tiny-debug", {});
  ASSERT_TRUE(tiny.ok()) << tiny.error().message;
  EXPECT_EQ(tiny.value().model_path, data_dir + "/tests/fixtures/tiny_chat_model");
  EXPECT_EQ(tiny.value().data_path, data_dir + "/data/bundled/tasks_train.jsonl");
  EXPECT_EQ(tiny.value().output_dir, "out/tiny-debug");  // outputs go to the working directory
  EXPECT_TRUE(recipe_path_problems(tiny.value()).empty());

  // From another working directory the bundled recipe still finds its files.
  struct RestoreCwd {
    fs::path cwd = fs::current_path();
    ~RestoreCwd() { fs::current_path(cwd); }
  };
  std::optional<RestoreCwd> restore(std::in_place);
  fs::current_path(fresh_dir("cwd"));
  EXPECT_TRUE(validate_recipe("tiny-debug").ok());
  // Overrides and a user's file are relative to the working directory.
  Result<Recipe> over = load_recipe("tiny-debug", {"data.path=mine.jsonl"});
  ASSERT_TRUE(over.ok());
  EXPECT_EQ(over.value().data_path, "mine.jsonl");
  write_file("user.yaml",
             "model:\n  path: tests/fixtures/tiny_chat_model\ndata:\n  path: d.jsonl\n");
  Result<Recipe> user = load_recipe("user.yaml", {});
  ASSERT_TRUE(user.ok());
  EXPECT_EQ(user.value().model_path, "tests/fixtures/tiny_chat_model");
  restore.reset();

  // RAMSTREAM_DATA_DIR moves the bundled data.
  ::setenv("RAMSTREAM_DATA_DIR", "/elsewhere", 1);
  Result<Recipe> moved = load_recipe("tiny-debug", {});
  const RecipeCheck check = validate_recipe("tiny-debug");
  ::unsetenv("RAMSTREAM_DATA_DIR");
  ASSERT_TRUE(moved.ok());
  EXPECT_EQ(moved.value().data_path, "/elsewhere/data/bundled/tasks_train.jsonl");
  ASSERT_EQ(check.total, 2u);
  EXPECT_TRUE(contains(check.problems[0], "/elsewhere/tests/fixtures/tiny_chat_model"));
  EXPECT_TRUE(contains(check.problems[0], "RAMSTREAM_DATA_DIR")) << check.problems[0];
}

TEST(Recipe, PathProblemsNameTheKeyAndWhatIsWrong) {
  const std::string dir = fresh_dir("paths");
  fs::create_directories(dir + "/folder");
  fs::create_directories(dir + "/model_without_config");
  write_file(dir + "/weights.bin", "x");
  write_file(dir + "/d.jsonl", "{}\n");
  const auto problems = [&](const std::string& model, const std::string& data) {
    Recipe r;
    r.model_path = model;
    r.data_path = data;
    return recipe_path_problems(r);
  };
  const std::string good_model = bundled_data_dir() + "/tests/fixtures/tiny_chat_model";
  EXPECT_TRUE(problems(good_model, dir + "/d.jsonl").empty());
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {problems(dir + "/models/SmolLM2-135M-Instruct.Q4_1.gguf", dir + "/d.jsonl"),
       "run scripts/fetch_default_model.sh"},
      {problems(dir + "/other.gguf", dir + "/d.jsonl"), "model.path: " + dir + "/other.gguf"},
      {problems(dir + "/weights.bin", dir + "/d.jsonl"), "neither a model folder nor a .gguf"},
      {problems(dir + "/model_without_config", dir + "/d.jsonl"),
       "model_without_config/config.json"},
      {problems(good_model, dir + "/folder"), "data.path: " + dir + "/folder: is a folder"},
      {problems(good_model, "/dev/zero"), "data.path: /dev/zero: is not a regular file"},
      {problems(good_model, dir + "/none.jsonl"), "data.path: " + dir + "/none.jsonl"},
  };
  for (const auto& [found, expected] : cases) {
    ASSERT_EQ(found.size(), 1u) << expected;
    EXPECT_TRUE(contains(found[0], expected)) << found[0];
  }
  EXPECT_FALSE(contains(cases[1].first[0], "fetch_default_model"));
}

TEST(Recipe, DescribeShowsEveryKeyAndParsesBackToTheSameRecipe) {
  Result<Recipe> r = load_recipe(
      "tiny-debug", {"data.system_prompt=Say \"hi\": then # stop", "data.columns.output=answer",
                     "train.lr=3.14159265358979e-5", "data.cache_dir="});
  ASSERT_TRUE(r.ok()) << r.error().message;
  r.value().system_prompt += "\nsecond line\ttab";
  const std::string text = describe_recipe(r.value());
  for (const RecipeKeyInfo& k : recipe_schema()) {
    const std::string name = k.key.substr(k.key.find('.') + 1);
    EXPECT_TRUE(contains(
        text, "\n" + std::string(k.key.find('.') == std::string::npos ? "" : "  ") + name + ": "))
        << k.key;
    EXPECT_TRUE(contains(text, "# " + k.doc + "\n")) << k.key;
    EXPECT_TRUE(contains(text, "# " + k.allowed + "; default ")) << k.key;
  }
  EXPECT_TRUE(contains(text, "  columns:\n    output: answer\n")) << text;
  Result<Recipe> again = parse_recipe(text, "shown", {});
  ASSERT_TRUE(again.ok()) << again.error().message << "\n" << text;
  EXPECT_EQ(recipe_to_yaml(again.value()), recipe_to_yaml(r.value()));
  EXPECT_EQ(again.value().system_prompt, r.value().system_prompt);
  EXPECT_DOUBLE_EQ(again.value().lr, 3.14159265358979e-5);
}

TEST(Recipe, BundledRecipesParseAndRoundTripThroughYaml) {
  ASSERT_GE(bundled_recipes().size(), 5u);
  for (const BundledRecipe& b : bundled_recipes()) {
    Result<Recipe> r = load_recipe(b.name, {});
    ASSERT_TRUE(r.ok()) << b.name << ": " << r.error().message;
    EXPECT_EQ(b.text.rfind("# " + b.name + ":", 0), 0u) << b.name << " header";
    EXPECT_NE(b.text.find("ramstream run"), std::string::npos) << b.name << " launch command";
    EXPECT_NE(b.text.find("Memory"), std::string::npos) << b.name << " memory note";
    Result<Recipe> again = parse_recipe(recipe_to_yaml(r.value()), "resolved", {});
    ASSERT_TRUE(again.ok()) << again.error().message;
    EXPECT_EQ(recipe_to_yaml(again.value()), recipe_to_yaml(r.value()));
    // `ls` prints the first header line: a whole sentence that fits a line.
    const std::string what = recipe_description(b);
    ASSERT_FALSE(what.empty()) << b.name;
    EXPECT_EQ(what.back(), '.') << b.name << ": " << what;
    EXPECT_LE(what.size() + b.name.size() + 4, 100u) << b.name;
  }
  const std::vector<std::string> keys = recipe_keys();
  EXPECT_NE(std::find(keys.begin(), keys.end(), "train.grad_accum"), keys.end());
  EXPECT_EQ(recipe_schema().size(), keys.size());
}

}  // namespace
}  // namespace ramstream::trainer
