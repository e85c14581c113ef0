// Crash-safe writes: a file or a whole folder appears under its final name complete or not at all.
//
// Files: the bytes go to `<path>.tmp-<pid>`, which is fsynced, renamed over `path`, and then the
// parent folder is fsynced so the rename itself is durable. A crash leaves either the old file or
// the new one at `path`, plus at worst a stale `<path>.tmp-<pid>`.
//
//   Status st = write_file_atomic("out/state.json", [&](OutFile& f) {
//     return f.write(text.data(), text.size());
//   });
//
// Folders: write everything into StagedDir::path() (`<target>.tmp-<pid>/`), then commit():
//   1. fsync every file and folder under the staging folder (the staging folder last).
//   2a. target absent: rename(staging, target), fsync the parent.
//         crash before the rename: target absent, a stale `<target>.tmp-<pid>/` remains.
//         crash after it: target complete (new).
//   2b. target present: renameat2(staging, target, RENAME_EXCHANGE) swaps the two names in one
//       step, fsync the parent, then remove the old content (now under the staging name) and
//       fsync the parent again.
//         crash before the swap: target holds the old content, intact; stale staging remains.
//         crash after the swap: target holds the new content; the old content (possibly partly
//         deleted) remains under `<target>.tmp-<pid>/`.
//       Filesystems without RENAME_EXCHANGE get two renames instead: target to
//       `<target>.old-<pid>`, then staging to target. A crash between the two leaves no target
//       but two complete folders, `<target>.old-<pid>/` (old) and `<target>.tmp-<pid>/` (new);
//       rename either back by hand.
// Leftover `.tmp-<pid>` / `.old-<pid>` siblings are never read by loaders and are safe to delete.
// A StagedDir destroyed without commit() removes its staging folder, so a failed save leaves the
// target exactly as it was. One writer per target at a time (the temp names use only the pid).
//
//   Result<StagedDir> stage = StagedDir::create("out/step_000500");
//   if (!stage.ok()) return stage.error();
//   ... write files under stage.value().path() ...
//   return stage.value().commit();
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>

#include "util/result.h"

namespace ramstream::checkpoint {

// A file open for writing; every failure is an Error naming the path and errno text.
class OutFile {
 public:
  OutFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  Status write(const void* data, size_t bytes);
  // Bytes written so far.
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  int fd_;
  std::string path_;
  uint64_t size_ = 0;
};

// Writes `path` through `body` as described above. An Error from `body` (or an exception it
// throws, turned into an Error) removes the temp file and leaves `path` untouched.
Status write_file_atomic(const std::string& path, const std::function<Status(OutFile&)>& body);
Status write_file_atomic(const std::string& path, const std::string& bytes);

// Creates the missing parent folders of `path` (a file or folder about to be written) and checks
// that the parent is a folder this process can create entries in; errors name the parent.
Status prepare_parent_folder(const std::string& path);

// fsync of one file or folder.
Status fsync_path(const std::string& path);
// fsync of every regular file and folder under `dir`, children before parents, `dir` last.
Status fsync_tree(const std::string& dir);

class StagedDir {
 public:
  // Creates an empty `<target>.tmp-<pid>/` (removing a stale one of the same name) and the
  // target's parent folders. Refuses a target that exists and is not a folder.
  static Result<StagedDir> create(const std::string& target);

  StagedDir(StagedDir&& other) noexcept;
  StagedDir& operator=(StagedDir&&) = delete;
  StagedDir(const StagedDir&) = delete;
  ~StagedDir();

  const std::string& path() const { return staging_; }
  const std::string& target() const { return target_; }
  // Publishes the staging folder as `target` (sequence above). Call once.
  Status commit();

 private:
  StagedDir(std::string target, std::string staging);
  std::string target_;
  std::string staging_;
  bool done_ = false;  // committed or moved from: nothing to clean up
};

}  // namespace ramstream::checkpoint
