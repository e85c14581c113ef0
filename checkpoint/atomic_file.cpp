#include "checkpoint/atomic_file.h"

#include <fcntl.h>
#include <stdio.h>  // renameat2 (glibc >= 2.28)
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <filesystem>
#include <system_error>
#include <vector>

namespace ramstream::checkpoint {
namespace {

namespace fs = std::filesystem;

Error errno_error(const std::string& path, const std::string& what, int err) {
  return Error{path + ": " + what + ": " + std::strerror(err)};
}

std::string pid_suffix(const char* kind) {
  return std::string(".") + kind + "-" + std::to_string(::getpid());
}

std::string parent_of(const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

// fs::path("out/") has an empty filename; "out/" and "out" must name the same target.
std::string strip_trailing_slashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

}  // namespace

Status OutFile::write(const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd_, p, bytes);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_error(path_, "write failed after " + std::to_string(size_) + " bytes", errno);
    }
    p += n;
    bytes -= static_cast<size_t>(n);
    size_ += static_cast<uint64_t>(n);
  }
  return Ok{};
}

Status prepare_parent_folder(const std::string& path) {
  const std::string parent = parent_of(strip_trailing_slashes(path));
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) return Error{parent + ": cannot create the parent folder: " + ec.message()};
  if (!fs::is_directory(parent, ec)) return Error{parent + ": the parent is not a folder"};
  if (::access(parent.c_str(), W_OK | X_OK) != 0) {
    return errno_error(parent, "cannot write into the parent folder", errno);
  }
  return Ok{};
}

Status fsync_path(const std::string& path) {
  // O_RDONLY works for folders and files alike; fsync needs no write access.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_error(path, "cannot open for fsync", errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return errno_error(path, "fsync failed", err);
  return Ok{};
}

Status fsync_tree(const std::string& dir) {
  std::error_code ec;
  std::vector<std::string> dirs;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::file_status st = it->symlink_status(ec);
    if (ec) break;
    if (fs::is_directory(st)) {
      dirs.push_back(it->path().string());
    } else if (fs::is_regular_file(st)) {
      Status s = fsync_path(it->path().string());
      if (!s.ok()) return s;
    }
  }
  if (ec) return Error{dir + ": cannot list for fsync: " + ec.message()};
  // Deepest first, so each folder is synced after its entries.
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    Status s = fsync_path(*it);
    if (!s.ok()) return s;
  }
  return fsync_path(dir);
}

Status write_file_atomic(const std::string& path, const std::function<Status(OutFile&)>& body) {
  const std::string tmp = path + pid_suffix("tmp");
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno_error(tmp, "cannot create", errno);
  OutFile out(fd, tmp);
  Status st = Ok{};
  try {
    st = body(out);
  } catch (const std::exception& e) {
    st = Error{tmp + ": write aborted: " + e.what()};
  }
  if (st.ok() && ::fsync(fd) != 0) st = errno_error(tmp, "fsync failed", errno);
  // close() can report a deferred write error (NFS); treat it like a failed write.
  if (::close(fd) != 0 && st.ok()) st = errno_error(tmp, "close failed", errno);
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    st = errno_error(path, "cannot rename " + tmp + " over it", errno);
  }
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  return fsync_path(parent_of(path));
}

Status write_file_atomic(const std::string& path, const std::string& bytes) {
  return write_file_atomic(path, [&](OutFile& f) { return f.write(bytes.data(), bytes.size()); });
}

StagedDir::StagedDir(std::string target, std::string staging)
    : target_(std::move(target)), staging_(std::move(staging)) {}

StagedDir::StagedDir(StagedDir&& other) noexcept
    : target_(std::move(other.target_)), staging_(std::move(other.staging_)), done_(other.done_) {
  other.done_ = true;
}

StagedDir::~StagedDir() {
  if (done_) return;
  std::error_code ec;
  fs::remove_all(staging_, ec);  // best effort: a leftover is harmless (see the header)
}

Result<StagedDir> StagedDir::create(const std::string& target_in) {
  const std::string target = strip_trailing_slashes(target_in);
  if (target.empty() || target == "/" || target == "." || target == "..") {
    return Error{"'" + target_in + "': not a usable folder name to save into"};
  }
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(target, ec);
  if (fs::exists(st) && !fs::is_directory(st)) {
    return Error{target + ": exists and is not a folder; refusing to replace it"};
  }
  Status parent_ok = prepare_parent_folder(target);
  if (!parent_ok.ok()) return parent_ok.error();
  const std::string staging = target + pid_suffix("tmp");
  fs::remove_all(staging, ec);  // a stale one from a crashed run of a process with our pid
  if (ec) return Error{staging + ": cannot remove stale staging folder: " + ec.message()};
  if (::mkdir(staging.c_str(), 0755) != 0) {
    return errno_error(staging, "cannot create staging folder", errno);
  }
  return StagedDir(target, staging);
}

Status StagedDir::commit() {
  if (done_) return Error{target_ + ": staging folder already committed"};
  Status st = fsync_tree(staging_);
  if (!st.ok()) return st;
  const std::string parent = parent_of(target_);
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(target_, ec))) {
    if (::rename(staging_.c_str(), target_.c_str()) != 0) {
      return errno_error(target_, "cannot rename " + staging_ + " to it", errno);
    }
    done_ = true;
    return fsync_path(parent);
  }
  if (::renameat2(AT_FDCWD, staging_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE) == 0) {
    done_ = true;
    st = fsync_path(parent);
    if (!st.ok()) return st;
    fs::remove_all(staging_, ec);  // now the old content
    if (ec) return Error{staging_ + ": saved, but cannot remove the old content: " + ec.message()};
    return fsync_path(parent);
  }
  if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP) {
    return errno_error(target_, "cannot swap in " + staging_, errno);
  }
  // No atomic swap on this filesystem: move the old folder aside first.
  const std::string old = target_ + pid_suffix("old");
  fs::remove_all(old, ec);
  if (::rename(target_.c_str(), old.c_str()) != 0) {
    return errno_error(target_, "cannot move the previous folder aside to " + old, errno);
  }
  if (::rename(staging_.c_str(), target_.c_str()) != 0) {
    const int err = errno;
    ::rename(old.c_str(), target_.c_str());  // put the previous content back
    return errno_error(target_, "cannot rename " + staging_ + " to it", err);
  }
  done_ = true;
  st = fsync_path(parent);
  if (!st.ok()) return st;
  fs::remove_all(old, ec);
  if (ec) return Error{old + ": saved, but cannot remove the old content: " + ec.message()};
  return fsync_path(parent);
}

}  // namespace ramstream::checkpoint
