#include "checkpoint/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/user_file.h"

namespace ramstream::checkpoint {

Result<std::shared_ptr<const MappedFile>> MappedFile::open(const std::string& path,
                                                           const char* what) {
  auto fail = [&](const std::string& problem) -> Error { return Error{path + ": " + problem}; };
  Status regular = check_regular_file(path, what);
  if (!regular.ok()) return regular.error();
  // O_NONBLOCK: should the path become a FIFO after the check, open must not wait for a writer.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return fail(std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return fail(std::string("cannot stat: ") + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return fail(std::string("is not a regular file, expected ") + what);
  }
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->size_ = static_cast<uint64_t>(st.st_size);
  if (f->size_ > 0) {  // mmap of 0 bytes fails
    void* map = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    const int map_err = errno;
    ::close(fd);  // the mapping keeps the file alive
    if (map == MAP_FAILED) return fail(std::string("mmap: ") + std::strerror(map_err));
    f->map_ = map;
    f->data_ = static_cast<const uint8_t*>(map);
  } else {
    ::close(fd);
  }
  return std::shared_ptr<const MappedFile>(std::move(f));
}

std::shared_ptr<const MappedFile> MappedFile::copy_of(const uint8_t* bytes, size_t size) {
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->owned_.assign(bytes, bytes + size);
  f->data_ = f->owned_.data();
  f->size_ = size;
  return f;
}

MappedFile::~MappedFile() {
  if (map_ != nullptr) ::munmap(map_, size_);
}

}  // namespace ramstream::checkpoint
