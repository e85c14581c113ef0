#include "memory/arena.h"

#include <numa.h>
#include <numaif.h>
#include <unistd.h>

#include <fstream>
#include <memory>
#include <vector>

#include <gtest/gtest.h>
#include "memory/log.h"
#include "memory/topology.h"

namespace ramstream::memory {
namespace {

constexpr uint64_t kMiB = 1ull << 20;

// Records every call and optionally fails the n-th registration (1-based), like a driver would.
class RecordingPinBackend : public PinBackend {
 public:
  struct Range {
    void* p;
    uint64_t bytes;
  };
  const char* name() const override { return "recording"; }
  Status register_range(void* p, uint64_t bytes) override {
    ++attempts;
    if (attempts == fail_at) return Error{"simulated cudaErrorMemoryAllocation"};
    registered.push_back({p, bytes});
    return Ok{};
  }
  void unregister_range(void* p) override { unregistered.push_back(p); }

  int fail_at = 0;
  int attempts = 0;
  std::vector<Range> registered;
  std::vector<void*> unregistered;
};

// Captures warnings and restores every process-wide test hook afterwards.
class ArenaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    set_warning_sink_for_testing([this](const std::string& m) { warnings_.push_back(m); });
  }
  void TearDown() override {
    set_warning_sink_for_testing(nullptr);
    set_pin_failure_for_testing(false);
    set_pin_backend_for_testing(nullptr);
    set_pin_chunk_bytes_for_testing(0);
  }
  std::string log() const {
    std::string s;
    for (const std::string& w : warnings_) s += w + "\n";
    return s;
  }
  int warnings() const { return static_cast<int>(warnings_.size()); }
  static HostArena make(uint64_t bytes, const ArenaOptions& opts, const std::string& what = "t") {
    Result<HostArena> r = HostArena::create(bytes, opts, what);
    EXPECT_TRUE(r.ok()) << r.error().message;
    return std::move(r).value();
  }
  static uint64_t page() { return static_cast<uint64_t>(sysconf(_SC_PAGESIZE)); }

  std::vector<std::string> warnings_;
};

bool thp_disabled() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return s.empty() || s.find("[never]") != std::string::npos;
}

TEST_F(ArenaTest, ExactSizePageRoundedZeroedWritable) {
  ArenaOptions opts;
  opts.huge_pages = false;
  HostArena a = make(100000, opts);
  EXPECT_EQ(a.size(), 100000u);
  EXPECT_EQ(a.mapped_bytes(), (100000 + page() - 1) / page() * page());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % page(), 0u);
  for (uint64_t i = 0; i < a.mapped_bytes(); ++i) ASSERT_EQ(a.data()[i], 0) << "byte " << i;
  for (uint64_t i = 0; i < a.size(); ++i) a.data()[i] = static_cast<uint8_t>(i * 7);
  EXPECT_EQ(a.data()[99999], static_cast<uint8_t>(99999 * 7));
  EXPECT_FALSE(a.huge_pages());
  EXPECT_EQ(warnings(), 0) << log();
}

TEST_F(ArenaTest, HugePagesAlignTo2MiBWithoutRoundingTheSize) {
  const uint64_t bytes = 5 * kMiB + 123;
  HostArena a = make(bytes, ArenaOptions{});
  EXPECT_EQ(a.size(), bytes);
  EXPECT_EQ(a.mapped_bytes(), (bytes + page() - 1) / page() * page());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % (2 * kMiB), 0u);
  if (!thp_disabled()) {
    EXPECT_TRUE(a.huge_pages());
  }
  a.data()[bytes - 1] = 42;
  EXPECT_EQ(a.data()[bytes - 1], 42);
}

TEST_F(ArenaTest, NumaBindingPlacesPagesOnTheNode) {
  if (numa_available() < 0) GTEST_SKIP() << "no NUMA support in this kernel";
  ArenaOptions opts;
  opts.numa_node = 0;
  opts.first_touch_threads = 2;
  HostArena a = make(8 * kMiB, opts);
  EXPECT_EQ(a.numa_node(), 0);
  std::vector<void*> pages;
  for (uint64_t off = 0; off < a.mapped_bytes(); off += page()) pages.push_back(a.data() + off);
  std::vector<int> status(pages.size(), -1);
  ASSERT_EQ(move_pages(0, pages.size(), pages.data(), nullptr, status.data(), 0), 0);
  for (size_t i = 0; i < status.size(); ++i) ASSERT_EQ(status[i], 0) << "page " << i;
  EXPECT_NE(a.describe().find("NUMA node 0"), std::string::npos) << a.describe();
}

TEST_F(ArenaTest, MissingNumaNodeWarnsAndContinuesUnbound) {
  ArenaOptions opts;
  opts.numa_node = 999;
  HostArena a = make(kMiB, opts, "kv pages");
  EXPECT_EQ(a.numa_node(), -1);
  a.data()[0] = 1;
  EXPECT_EQ(warnings(), 1) << log();
  EXPECT_NE(log().find("kv pages: not bound to NUMA node 999"), std::string::npos) << log();
}

TEST_F(ArenaTest, ZeroBytesIsAnError) {
  Result<HostArena> r = HostArena::create(0, ArenaOptions{}, "grad staging");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("grad staging"), std::string::npos) << r.error().message;
}

TEST_F(ArenaTest, RefusesUpFrontWhenRamIsTooSmall) {
  const uint64_t too_much = host_memory_available_bytes() + (1ull << 40);
  Status st = check_host_memory(too_much, "param store");
  ASSERT_FALSE(st.ok());
  const std::string& m = st.error().message;
  EXPECT_EQ(m.rfind("param store needs " + format_bytes(too_much) + " of host RAM; ", 0), 0u) << m;
  EXPECT_NE(m.find(" available (MemAvailable)"), std::string::npos) << m;
  EXPECT_TRUE(check_host_memory(4096, "param store").ok());

  Result<HostArena> r = HostArena::create(too_much, ArenaOptions{}, "param store");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message.rfind("param store needs ", 0), 0u) << r.error().message;
  // Refused by size alone: even an absurd request is a clean error, not an mmap attempt.
  EXPECT_FALSE(HostArena::create(~0ull, ArenaOptions{}, "param store").ok());
}

TEST_F(ArenaTest, MoveTransfersOwnership) {
  HostArena a = make(3 * page(), ArenaOptions{});
  uint8_t* p = a.data();
  p[0] = 9;
  HostArena b(std::move(a));
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): checking the moved-from state
  EXPECT_EQ(a.size(), 0u);
  EXPECT_EQ(b.data(), p);
  HostArena c;
  c = std::move(b);
  EXPECT_EQ(c.data(), p);
  EXPECT_EQ(c.data()[0], 9);
  EXPECT_EQ(c.size(), 3 * page());
}

TEST_F(ArenaTest, PinsInChunksAndUnpinsInReverse) {
  RecordingPinBackend rec;
  set_pin_backend_for_testing(&rec);
  set_pin_chunk_bytes_for_testing(kMiB);
  const uint64_t bytes = 3 * kMiB + kMiB / 2;
  uint8_t* base = nullptr;
  {
    HostArena a = make(bytes, ArenaOptions{}, "param store");
    base = a.data();
    EXPECT_TRUE(a.pinned());
    EXPECT_EQ(a.pinned_bytes(), a.mapped_bytes());
    ASSERT_EQ(rec.registered.size(), 4u);
    for (size_t i = 0; i < 4; ++i) {
      EXPECT_EQ(rec.registered[i].p, base + i * kMiB);
      EXPECT_EQ(rec.registered[i].bytes, i < 3 ? kMiB : a.mapped_bytes() - 3 * kMiB);
    }
    EXPECT_TRUE(rec.unregistered.empty());
    EXPECT_NE(a.describe().find("pinned (recording, 4 chunks)"), std::string::npos) << a.describe();
  }
  ASSERT_EQ(rec.unregistered.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(rec.unregistered[i], base + (3 - i) * kMiB);
  EXPECT_EQ(warnings(), 0) << log();
}

TEST_F(ArenaTest, FailedChunkRollsBackAndFallsBackToPageableWithOneWarning) {
  RecordingPinBackend rec;
  rec.fail_at = 2;
  set_pin_backend_for_testing(&rec);
  set_pin_chunk_bytes_for_testing(kMiB);
  {
    HostArena a = make(3 * kMiB, ArenaOptions{}, "param store");
    EXPECT_FALSE(a.pinned());
    EXPECT_EQ(a.pinned_bytes(), 0u);
    ASSERT_EQ(rec.registered.size(), 1u);
    ASSERT_EQ(rec.unregistered.size(), 1u);
    EXPECT_EQ(rec.unregistered[0], a.data());
    EXPECT_EQ(rec.attempts, 2);  // stops at the first failure
    EXPECT_EQ(warnings(), 1) << log();
    EXPECT_NE(log().find("param store: could not pin 3.0 MiB with recording, chunk 2/3"),
              std::string::npos)
        << log();
    EXPECT_NE(log().find("simulated cudaErrorMemoryAllocation"), std::string::npos) << log();
    EXPECT_NE(a.pin_fallback_reason().find("chunk 2/3"), std::string::npos);
    a.data()[a.size() - 1] = 5;  // still usable, as pageable memory
    EXPECT_EQ(a.data()[a.size() - 1], 5);
  }
  EXPECT_EQ(rec.unregistered.size(), 1u);  // nothing pinned left to undo
  EXPECT_EQ(warnings(), 1) << log();
}

// With split points (region starts), chunks end only there: no copy of one region ever spans two
// registrations, which the driver would not treat as one pinned range.
TEST_F(ArenaTest, ChunksEndOnlyAtSplitPoints) {
  RecordingPinBackend rec;
  set_pin_backend_for_testing(&rec);
  set_pin_chunk_bytes_for_testing(kMiB);
  const uint64_t p = page();
  ArenaOptions o;
  // Regions of 0.75, 0.5, 0.25, 1.0 and 0.5 MiB (page multiples).
  uint64_t off = 0;
  for (uint64_t len : {3 * kMiB / 4, kMiB / 2, kMiB / 4, kMiB, kMiB / 2}) {
    if (off > 0) o.pin_split_points.push_back(off);
    off += len / p * p;
  }
  HostArena a = make(off, o, "param store");
  ASSERT_TRUE(a.pinned());
  // Greedy: [0.75], [0.5 + 0.25], [1.0], [0.5].
  const std::vector<std::pair<uint64_t, uint64_t>> want = {{0, 3 * kMiB / 4},
                                                           {3 * kMiB / 4, 3 * kMiB / 4},
                                                           {3 * kMiB / 2, kMiB},
                                                           {5 * kMiB / 2, kMiB / 2}};
  EXPECT_EQ(a.pin_chunks(), want);
  ASSERT_EQ(rec.registered.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(rec.registered[i].p, a.data() + want[i].first);
    EXPECT_EQ(rec.registered[i].bytes, want[i].second);
  }
  // A region larger than a chunk cannot be registered whole: pageable, with the reason.
  ArenaOptions big;
  big.pin_split_points = {2 * kMiB};
  HostArena b = make(3 * kMiB, big, "param store");
  EXPECT_FALSE(b.pinned());
  EXPECT_NE(b.pin_fallback_reason().find("larger than one registration chunk"), std::string::npos)
      << b.pin_fallback_reason();
}

TEST_F(ArenaTest, FailureHookFailsTheLastChunk) {
  RecordingPinBackend rec;
  set_pin_backend_for_testing(&rec);
  set_pin_chunk_bytes_for_testing(kMiB);
  set_pin_failure_for_testing(true);
  HostArena a = make(4 * kMiB, ArenaOptions{});
  EXPECT_FALSE(a.pinned());
  EXPECT_EQ(rec.registered.size(), 3u);
  EXPECT_EQ(rec.unregistered.size(), 3u);
  EXPECT_EQ(rec.unregistered.front(), a.data() + 2 * kMiB);
  EXPECT_EQ(warnings(), 1) << log();
  EXPECT_NE(log().find("chunk 4/4"), std::string::npos) << log();
  EXPECT_NE(log().find("set_pin_failure_for_testing"), std::string::npos) << log();
}

TEST_F(ArenaTest, FakePinningOnCpuBuilds) {
  set_pin_backend_for_testing(noop_pin_backend());
  HostArena a = make(kMiB, ArenaOptions{});
  EXPECT_TRUE(a.pinned());
  EXPECT_EQ(a.pinned_bytes(), kMiB);
  set_pin_failure_for_testing(true);
  HostArena b = make(kMiB, ArenaOptions{});
  EXPECT_FALSE(b.pinned());
  EXPECT_EQ(warnings(), 1) << log();
}

TEST_F(ArenaTest, NoPinWhenNotAsked) {
  RecordingPinBackend rec;
  set_pin_backend_for_testing(&rec);
  ArenaOptions opts;
  opts.pin = false;
  HostArena a = make(kMiB, opts);
  EXPECT_FALSE(a.pinned());
  EXPECT_EQ(rec.attempts, 0);
  EXPECT_EQ(warnings(), 0) << log();
}

// The default backend: real cudaHostRegister in 1 MiB chunks on a CUDA machine; on a CPU build
// (or without a device) nothing is pinned and nothing is said, even with the failure hook on.
TEST_F(ArenaTest, DefaultBackendPinsOrStaysQuiet) {
  set_pin_chunk_bytes_for_testing(kMiB);  // on a GPU: 3 real registrations, then a real rollback
  HostArena a = make(4 * kMiB, ArenaOptions{});
  EXPECT_EQ(a.pinned(), cuda_pin_backend() != nullptr);
  set_pin_failure_for_testing(true);
  HostArena b = make(4 * kMiB, ArenaOptions{}, "staging");
  EXPECT_FALSE(b.pinned());
  EXPECT_EQ(warnings(), cuda_pin_backend() ? 1 : 0) << log();
  // The rollback left the CUDA runtime clean: the next arena pins normally.
  set_pin_failure_for_testing(false);
  HostArena c = make(4 * kMiB, ArenaOptions{});
  EXPECT_EQ(c.pinned(), cuda_pin_backend() != nullptr);
}

TEST_F(ArenaTest, DescribeReportsRequestedMappedPinned) {
  ArenaOptions opts;
  opts.huge_pages = false;
  HostArena a = make(5000, opts, "ckpt");
  const std::string d = a.describe();
  EXPECT_EQ(d.rfind("ckpt: ", 0), 0u) << d;
  EXPECT_NE(d.find("(5000 B) requested"), std::string::npos) << d;
  const std::string mapped = std::to_string(a.mapped_bytes());
  EXPECT_NE(d.find("(" + mapped + " B) mapped"), std::string::npos) << d;
  EXPECT_NE(d.find(a.pinned() ? "pinned (" : "not pinned"), std::string::npos) << d;
}

}  // namespace
}  // namespace ramstream::memory
