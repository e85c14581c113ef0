// The robustness harness itself (cli/cli_testing.h) and the top-level behaviour every command
// shares: an unknown command, a missing file, a folder where a file is expected.
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "cli/cli_testing.h"

namespace ramstream::cli::testing {
namespace {

TEST(CliHarness, ReportsExitCodeAndOutput) {
  const CliRun r = run_cli({"--version"});
  ASSERT_TRUE(r.exited()) << r.describe();
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_NE(r.out.find("ramstream"), std::string::npos) << r.describe();
}

TEST(CliRobustness, FolderWhereARecipeFileIsExpected) {
  const std::string dir = ::testing::TempDir() + "/robust_recipe_dir.yaml";
  std::filesystem::create_directories(dir);
  for (const char* cmd : {"validate", "run"}) {
    const CliRun r = run_cli({cmd, dir});
    EXPECT_TRUE(r.clean_failure()) << r.describe();
    EXPECT_NE(r.err.find(dir), std::string::npos) << r.describe();
    EXPECT_NE(r.err.find("folder"), std::string::npos) << r.describe();
  }
}

}  // namespace
}  // namespace ramstream::cli::testing
