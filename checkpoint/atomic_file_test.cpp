#include "checkpoint/atomic_file.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <gtest/gtest.h>

namespace ramstream::checkpoint {
namespace {

namespace fs = std::filesystem;

std::string read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class AtomicFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("ramstream_atomic_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::vector<std::string> listing(const fs::path& d) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(d)) names.push_back(e.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }
  fs::path dir_;
};

TEST_F(AtomicFileTest, FileIsReplacedOnlyOnSuccess) {
  const std::string p = (dir_ / "state.json").string();
  ASSERT_TRUE(write_file_atomic(p, std::string("first")).ok());
  EXPECT_EQ(read_all(p), "first");
  ASSERT_TRUE(write_file_atomic(p, std::string("second")).ok());
  EXPECT_EQ(read_all(p), "second");

  Status st = write_file_atomic(p, [](OutFile& f) -> Status {
    Status w = f.write("partial", 7);
    if (!w.ok()) return w;
    return Error{"producer failed"};
  });
  EXPECT_FALSE(st.ok());
  st = write_file_atomic(p, [](OutFile&) -> Status { throw std::runtime_error("thrown"); });
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("thrown"), std::string::npos);
  EXPECT_EQ(read_all(p), "second");
  EXPECT_EQ(listing(dir_), std::vector<std::string>{"state.json"});

  st = write_file_atomic((dir_ / "missing" / "x").string(), std::string("x"));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("missing/x"), std::string::npos) << st.error().message;
  EXPECT_NE(st.error().message.find("No such file"), std::string::npos) << st.error().message;
}

TEST_F(AtomicFileTest, StagedDirAppearsWholeAndReplacesWhole) {
  const fs::path target = dir_ / "nested" / "ckpt";
  {
    Result<StagedDir> s = StagedDir::create(target.string());
    ASSERT_TRUE(s.ok()) << s.error().message;
    EXPECT_EQ(s.value().path(), target.string() + ".tmp-" + std::to_string(::getpid()));
    ASSERT_TRUE(write_file_atomic(s.value().path() + "/a", std::string("A1")).ok());
    fs::create_directories(s.value().path() + "/sub");
    ASSERT_TRUE(write_file_atomic(s.value().path() + "/sub/b", std::string("B1")).ok());
    EXPECT_FALSE(fs::exists(target));  // nothing visible before commit
    ASSERT_TRUE(s.value().commit().ok());
    EXPECT_FALSE(s.value().commit().ok());  // once only
  }
  EXPECT_EQ(read_all(target / "a"), "A1");
  EXPECT_EQ(read_all(target / "sub" / "b"), "B1");
  EXPECT_EQ(listing(dir_ / "nested"), std::vector<std::string>{"ckpt"});

  // Replacing: the old folder's files do not survive, and no sibling is left behind.
  {
    Result<StagedDir> s = StagedDir::create(target.string() + "/");  // trailing slash: same target
    ASSERT_TRUE(s.ok()) << s.error().message;
    ASSERT_TRUE(write_file_atomic(s.value().path() + "/c", std::string("C2")).ok());
    ASSERT_TRUE(s.value().commit().ok());
  }
  EXPECT_EQ(listing(target), std::vector<std::string>{"c"});
  EXPECT_EQ(listing(dir_ / "nested"), std::vector<std::string>{"ckpt"});

  // Abandoned (error path): the target keeps its content and the staging folder is removed.
  {
    Result<StagedDir> s = StagedDir::create(target.string());
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(write_file_atomic(s.value().path() + "/d", std::string("D3")).ok());
  }
  EXPECT_EQ(listing(target), std::vector<std::string>{"c"});
  EXPECT_EQ(listing(dir_ / "nested"), std::vector<std::string>{"ckpt"});
}

TEST_F(AtomicFileTest, StagedDirRefusesNonFolderTargets) {
  std::ofstream(dir_ / "file") << "x";
  Result<StagedDir> s = StagedDir::create((dir_ / "file").string());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("not a folder"), std::string::npos) << s.error().message;
  EXPECT_EQ(read_all(dir_ / "file"), "x");
  EXPECT_FALSE(StagedDir::create("").ok());
  EXPECT_FALSE(StagedDir::create("/").ok());
}

TEST_F(AtomicFileTest, FsyncTreeReportsMissingPaths) {
  fs::create_directories(dir_ / "t" / "u");
  std::ofstream(dir_ / "t" / "u" / "f") << "x";
  EXPECT_TRUE(fsync_tree((dir_ / "t").string()).ok());
  Status st = fsync_path((dir_ / "gone").string());
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("gone"), std::string::npos);
}

}  // namespace
}  // namespace ramstream::checkpoint
