#include "inference/kv_pages.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <utility>

namespace ramstream::inference {
namespace {

std::string mib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", double(bytes) / double(1 << 20));
  return buf;
}

void add_to_mirror(const memory::BlockPool& chunk, KvDeviceMirror& mirror) {
  mirror.add_chunk(static_cast<const uint8_t*>(chunk.block_at(0)),
                   static_cast<int64_t>(chunk.capacity() * chunk.block_bytes()));
}

}  // namespace

KvPagePool::KvPagePool(int64_t page_bytes, bool pin, int64_t max_bytes)
    : page_bytes_(page_bytes), max_bytes_(max_bytes), pin_(pin) {
  if (page_bytes < 64 || (page_bytes & (page_bytes - 1)) != 0) {
    throw std::invalid_argument("KvPagePool: page size " + std::to_string(page_bytes) +
                                " is not a power of two >= 64");
  }
}

KvPagePool::~KvPagePool() = default;

int64_t KvPagePool::page_bytes_for(int64_t largest_record) {
  int64_t p = 4096;
  while (p < 8 * largest_record) p *= 2;
  return p;
}

uint8_t* KvPagePool::allocate() {
  for (auto& c : chunks_) {
    if (void* p = c->allocate()) {
      peak_in_use_ = std::max(peak_in_use_, ++in_use_);
      return static_cast<uint8_t*>(p);
    }
  }
  int64_t pages = std::min(kMaxChunkPages, kFirstChunkPages << std::min<size_t>(chunks_.size(), 6));
  if (max_bytes_ > 0) {
    pages = std::min(pages, max_bytes_ / page_bytes_ - reserved_pages_);
    if (pages <= 0) {
      throw std::runtime_error("KV cache: all " + std::to_string(reserved_pages_) + " pages (" +
                               mib(reserved_bytes()) + ") in use, the cap of " + mib(max_bytes_) +
                               " (--kv-memory) is reached: lower the batch or the context, or "
                               "pick a smaller cache (kivi2, kivi4, h2o)");
    }
  }
  memory::ArenaOptions opts;
  opts.huge_pages = false;  // chunks are small; THP would round each up to 2 MiB
  opts.pin = pin_;
  Result<std::unique_ptr<memory::BlockPool>> r = memory::BlockPool::create(
      static_cast<uint64_t>(page_bytes_), static_cast<uint64_t>(pages), opts, "KV pages",
      /*thread_cache_size=*/0);
  if (!r.ok()) {
    throw std::runtime_error("KV cache: cannot grow past " + mib(reserved_bytes()) + ": " +
                             r.error().message);
  }
  chunks_.push_back(std::move(r).value());
  reserved_pages_ += pages;
  if (mirror_) add_to_mirror(*chunks_.back(), *mirror_);
  peak_in_use_ = std::max(peak_in_use_, ++in_use_);
  return static_cast<uint8_t*>(chunks_.back()->allocate());
}

void KvPagePool::free(uint8_t* page) {
  if (!page) return;
  for (auto& c : chunks_) {
    if (c->owns(page)) {
      c->free(page);
      --in_use_;
      return;
    }
  }
  throw std::logic_error("KvPagePool::free: not a page of this pool");
}

void KvPagePool::set_mirror(KvDeviceMirror* mirror) {
  mirror_ = mirror;
  if (mirror_) {
    for (const auto& c : chunks_) add_to_mirror(*c, *mirror_);
  }
}

bool KvPagePool::pinned() const {
  return !chunks_.empty() && chunks_.front()->arena().pinned();
}

std::string KvPagePool::describe() const {
  return "KV pages: " + std::to_string(in_use_) + " of " + std::to_string(reserved_pages_) +
         " pages of " +
         (page_bytes_ >= 1024 ? std::to_string(page_bytes_ >> 10) + " KiB"
                              : std::to_string(page_bytes_) + " B") +
         " in use (peak " + std::to_string(peak_in_use_) + "), " + std::to_string(chunks_.size()) +
         " chunks, " + mib(reserved_bytes()) + " reserved" + (pinned() ? ", pinned" : "");
}

PagedArray::PagedArray(std::shared_ptr<KvPagePool> pool, int64_t record_bytes)
    : pool_(std::move(pool)), record_bytes_(record_bytes) {
  if (record_bytes <= 0 || record_bytes % 4 != 0 || record_bytes > pool_->page_bytes()) {
    throw std::invalid_argument("PagedArray: record of " + std::to_string(record_bytes) +
                                " bytes for pages of " + std::to_string(pool_->page_bytes()));
  }
  per_page_ = pool_->page_bytes() / record_bytes;
}

PagedArray::~PagedArray() {
  release_all();
}

PagedArray::PagedArray(PagedArray&& o) noexcept
    : pool_(std::move(o.pool_)),
      record_bytes_(o.record_bytes_),
      per_page_(o.per_page_),
      pages_(std::move(o.pages_)),
      first_(o.first_),
      size_(o.size_) {
  o.pages_.clear();
  o.first_ = o.size_ = 0;
}

PagedArray& PagedArray::operator=(PagedArray&& o) noexcept {
  if (this != &o) {
    release_all();
    pool_ = std::move(o.pool_);
    record_bytes_ = o.record_bytes_;
    per_page_ = o.per_page_;
    pages_ = std::move(o.pages_);
    first_ = o.first_;
    size_ = o.size_;
    o.pages_.clear();
    o.first_ = o.size_ = 0;
  }
  return *this;
}

void PagedArray::release_all() {
  for (uint8_t* p : pages_) pool_->free(p);
  pages_.clear();
  first_ = size_ = 0;
}

uint8_t* PagedArray::push_back() {
  const int64_t j = first_ + size_;
  if (j / per_page_ >= static_cast<int64_t>(pages_.size())) pages_.push_back(pool_->allocate());
  ++size_;
  return at(size_ - 1);
}

void PagedArray::pop_front(int64_t n) {
  n = std::min(n, size_);
  first_ += n;
  size_ -= n;
  if (size_ == 0) {
    release_all();
    return;
  }
  const int64_t drop = first_ / per_page_;
  for (int64_t i = 0; i < drop; ++i) pool_->free(pages_[static_cast<size_t>(i)]);
  pages_.erase(pages_.begin(), pages_.begin() + drop);
  first_ -= drop * per_page_;
}

void PagedArray::truncate(int64_t n) {
  if (n >= size_) return;
  size_ = std::max<int64_t>(0, n);
  if (size_ == 0) {
    release_all();
    return;
  }
  const int64_t keep = (first_ + size_ + per_page_ - 1) / per_page_;
  for (size_t i = static_cast<size_t>(keep); i < pages_.size(); ++i) pool_->free(pages_[i]);
  pages_.resize(static_cast<size_t>(keep));
}

void PagedArray::gather(int64_t i, int64_t n, uint8_t* out) const {
  while (n > 0) {
    const int64_t j = first_ + i;
    const int64_t run = std::min(n, per_page_ - j % per_page_);
    std::memcpy(out, at(i), static_cast<size_t>(run * record_bytes_));
    out += run * record_bytes_;
    i += run;
    n -= run;
  }
}

kernels::PagedRecords PagedArray::records() const {
  return kernels::PagedRecords{pages_.data(), per_page_, record_bytes_, first_};
}

}  // namespace ramstream::inference
