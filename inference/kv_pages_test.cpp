// KV pages: records across page boundaries, pages given back as arrays shrink, the pool growing
// in chunks up to its cap (sequences taking and returning pages: kv_cache_test.cpp).
#include "inference/kv_pages.h"

#include <cstring>
#include <vector>

#include <gtest/gtest.h>

namespace ramstream::inference {
namespace {

std::shared_ptr<KvPagePool> small_pool(int64_t max_bytes = 0) {
  return std::make_shared<KvPagePool>(256, /*pin=*/false, max_bytes);  // 4 records of 64 B
}

void put(uint8_t* rec, int32_t value) {
  for (int i = 0; i < 16; ++i) std::memcpy(rec + 4 * i, &value, 4);
}

int32_t get(const uint8_t* rec) {
  int32_t v;
  std::memcpy(&v, rec + 60, 4);  // the record's last word
  return v;
}

TEST(KvPages, PageSizeHoldsEightRecordsAndIsAPowerOfTwo) {
  EXPECT_EQ(KvPagePool::page_bytes_for(256), 4096);
  EXPECT_EQ(KvPagePool::page_bytes_for(1280), 16384);  // kivi4 key group, D 64
  EXPECT_EQ(KvPagePool::page_bytes_for(2560), 32768);  // kivi4 key group, D 128
  EXPECT_THROW(KvPagePool(3000, false), std::invalid_argument);
}

TEST(KvPages, RecordsSurvivePageBoundariesAndPagesGoBack) {
  auto pool = small_pool();
  PagedArray a(pool, 64);
  for (int32_t i = 0; i < 23; ++i) put(a.push_back(), i);
  EXPECT_EQ(a.size(), 23);
  EXPECT_EQ(a.pages_held(), 6);  // ceil(23 / 4)
  EXPECT_EQ(pool->pages_in_use(), 6);
  for (int32_t i = 0; i < 23; ++i) ASSERT_EQ(get(a.at(i)), i);
  a.pop_front(9);  // records 9.. remain; two whole pages freed
  EXPECT_EQ(a.pages_held(), 4);
  EXPECT_EQ(pool->pages_in_use(), 4);
  for (int32_t i = 0; i < 14; ++i) ASSERT_EQ(get(a.at(i)), i + 9);
  // The kernels' page table reads the same records.
  const kernels::PagedRecords view = a.records();
  for (int32_t i = 0; i < 14; ++i) ASSERT_EQ(get(view.at(i)), i + 9);
  std::vector<uint8_t> g(static_cast<size_t>(7 * 64));
  a.gather(2, 7, g.data());  // crosses two page boundaries
  for (int32_t i = 0; i < 7; ++i) ASSERT_EQ(get(g.data() + 64 * i), i + 11);
  a.truncate(5);
  EXPECT_EQ(a.pages_held(), 2);  // records 9..13 sit in the 1st (from slot 1) and 2nd page
  for (int32_t i = 0; i < 5; ++i) ASSERT_EQ(get(a.at(i)), i + 9);
  a.clear();
  EXPECT_EQ(pool->pages_in_use(), 0);
  EXPECT_GE(pool->peak_pages_in_use(), 6);
}

TEST(KvPages, ThePoolGrowsInChunksUpToItsCap) {
  auto pool = small_pool();
  std::vector<uint8_t*> pages;
  for (int i = 0; i < 64 + 128 + 1; ++i) pages.push_back(pool->allocate());
  EXPECT_EQ(pool->chunks(), 3);  // 64, 128, then 256 pages
  EXPECT_EQ(pool->reserved_bytes(), (64 + 128 + 256) * 256);
  for (uint8_t* p : pages) pool->free(p);
  EXPECT_EQ(pool->pages_in_use(), 0);
  // Freed pages are reused before the pool grows.
  for (int i = 0; i < 100; ++i) pages[static_cast<size_t>(i)] = pool->allocate();
  EXPECT_EQ(pool->chunks(), 3);
  for (int i = 0; i < 100; ++i) pool->free(pages[static_cast<size_t>(i)]);

  auto capped = small_pool(/*max_bytes=*/100 * 256);
  for (int i = 0; i < 100; ++i) capped->allocate();
  try {
    capped->allocate();
    FAIL() << "the cap was not enforced";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("--kv-memory"), std::string::npos) << e.what();
  }
  EXPECT_EQ(capped->describe(),
            "KV pages: 100 of 100 pages of 256 B in use (peak 100), 2 chunks, 0.0 MiB reserved");
}

}  // namespace
}  // namespace ramstream::inference
