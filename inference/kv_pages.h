// KV pages: the memory the KV caches of decoding sequences live in. A KvPagePool hands out
// fixed-size host pages from memory/'s BlockPool (so NUMA-placed and, with a CUDA device,
// page-locked for async copies), adding chunks as sequences grow up to an optional cap; a
// PagedArray is one head's growing run of fixed-size records (key groups, value tokens, window
// rows) over such pages, read by the attention kernels through its page table
// (kernels::PagedRecords).
//
// Chunks double in size (64 pages, 128, ... up to 4096 a chunk), so a short run commits little
// memory and a long one makes few allocations; pages freed by finished or shrinking sequences
// are reused before a new chunk is made. Not thread-safe: one thread grows the caches (the
// Generator's); attention reads them from many.
//
//   auto pool = std::make_shared<KvPagePool>(KvPagePool::page_bytes_for(1280), /*pin=*/false);
//   PagedArray rows(pool, 64 * 4);          // records of 64 floats
//   float* r = reinterpret_cast<float*>(rows.push_back());
//   kernels::PagedRecords view = rows.records();
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "inference/kv_mirror.h"
#include "kernels/kv_quant.h"
#include "memory/block_pool.h"

namespace ramstream::inference {

class KvPagePool {
 public:
  static constexpr int64_t kFirstChunkPages = 64;
  static constexpr int64_t kMaxChunkPages = 4096;

  // page_bytes: a power of two >= 64. pin: page-lock for a CUDA device. max_bytes: 0 = grow
  // while host RAM lasts, else never hold more than this (allocate() then throws, naming it).
  KvPagePool(int64_t page_bytes, bool pin, int64_t max_bytes = 0);
  ~KvPagePool();
  KvPagePool(const KvPagePool&) = delete;
  KvPagePool& operator=(const KvPagePool&) = delete;

  // The page size for records of at most `largest_record` bytes: a power of two of at least
  // 4 KiB holding 8 of them, so at most 1/8 of a page is lost to the tail.
  static int64_t page_bytes_for(int64_t largest_record);

  // A page (64-byte aligned, contents undefined); throws std::runtime_error when the cap or host
  // RAM is reached, saying how much the KV cache holds.
  uint8_t* allocate();
  void free(uint8_t* page);

  int64_t page_bytes() const { return page_bytes_; }
  int64_t pages_in_use() const { return in_use_; }
  int64_t peak_pages_in_use() const { return peak_in_use_; }
  int64_t reserved_bytes() const { return reserved_pages_ * page_bytes_; }
  int64_t chunks() const { return static_cast<int64_t>(chunks_.size()); }
  bool pinned() const;
  // "KV pages: 12 of 128 pages of 16 KiB in use (peak 40), 2 chunks, 2.0 MiB reserved, pinned".
  std::string describe() const;

  // A device twin of every chunk (kv_mirror.h), told of each record written; null: none.
  void set_mirror(KvDeviceMirror* mirror);
  void mark_written(const uint8_t* p, int64_t bytes) {
    if (mirror_) mirror_->mark(p, bytes);
  }

 private:
  int64_t page_bytes_, max_bytes_;
  bool pin_;
  std::vector<std::unique_ptr<memory::BlockPool>> chunks_;
  int64_t reserved_pages_ = 0, in_use_ = 0, peak_in_use_ = 0;
  KvDeviceMirror* mirror_ = nullptr;
};

// Records of `record_bytes` (a multiple of 4, at most a page) appended at the back, dropped at the
// front or the back; record i stays where it is until dropped.
class PagedArray {
 public:
  PagedArray(std::shared_ptr<KvPagePool> pool, int64_t record_bytes);
  ~PagedArray();
  PagedArray(PagedArray&& other) noexcept;
  PagedArray& operator=(PagedArray&& other) noexcept;
  PagedArray(const PagedArray&) = delete;
  PagedArray& operator=(const PagedArray&) = delete;

  int64_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  int64_t record_bytes() const { return record_bytes_; }
  int64_t pages_held() const { return static_cast<int64_t>(pages_.size()); }

  // Writable access marks the record written (the pool's device twin copies it).
  uint8_t* at(int64_t i) {
    uint8_t* p = locate(i);
    pool_->mark_written(p, record_bytes_);
    return p;
  }
  const uint8_t* at(int64_t i) const { return locate(i); }
  float* row(int64_t i) { return reinterpret_cast<float*>(at(i)); }
  const float* row(int64_t i) const { return reinterpret_cast<const float*>(locate(i)); }

  // A new last record (contents undefined).
  uint8_t* push_back();
  // Drops the first n records, giving back pages that hold no live record.
  void pop_front(int64_t n);
  // Keeps the first n records.
  void truncate(int64_t n);
  void clear() { truncate(0); }
  // Copies records [i, i + n) into `out` (n * record_bytes bytes), across pages.
  void gather(int64_t i, int64_t n, uint8_t* out) const;

  // The page table the kernels read; valid until the next push_back/pop_front/truncate.
  kernels::PagedRecords records() const;

 private:
  uint8_t* locate(int64_t i) const {
    const int64_t j = first_ + i;
    return pages_[static_cast<size_t>(j / per_page_)] + (j % per_page_) * record_bytes_;
  }
  void release_all();

  std::shared_ptr<KvPagePool> pool_;
  int64_t record_bytes_ = 0, per_page_ = 1;
  std::vector<uint8_t*> pages_;
  int64_t first_ = 0, size_ = 0;  // first_: offset of record 0 in pages_[0]
};

}  // namespace ramstream::inference
