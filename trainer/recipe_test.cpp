#include "trainer/recipe.h"

#include <gtest/gtest.h>

namespace ramstream::trainer {
namespace {

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

TEST(Recipe, ValidateListsEveryProblem) {
  for (const BundledRecipe& b : bundled_recipes()) {
    EXPECT_TRUE(validate_recipe(b.name).empty()) << b.name;
  }
  EXPECT_FALSE(validate_recipe("/nonexistent/recipe.yaml").empty());
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
  }
  const std::vector<std::string> keys = recipe_keys();
  EXPECT_NE(std::find(keys.begin(), keys.end(), "train.grad_accum"), keys.end());
}

}  // namespace
}  // namespace ramstream::trainer
