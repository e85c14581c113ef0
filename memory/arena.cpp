#include "memory/arena.h"

#include <numa.h>
#include <numaif.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "memory/log.h"
#include "memory/topology.h"

namespace ramstream::memory {

namespace {

constexpr uint64_t kHugePageBytes = 2ull << 20;
// Below this a first-touch thread costs more to start than the page faults it saves.
constexpr uint64_t kMinFirstTouchBytesPerThread = 16ull << 20;
constexpr int kMaxDefaultFirstTouchThreads = 8;

std::atomic<bool> g_pin_failure{false};
std::atomic<PinBackend*> g_pin_backend_override{nullptr};
std::atomic<uint64_t> g_pin_chunk_bytes{0};

uint64_t page_bytes() {
  static const uint64_t page = [] {
    const long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? static_cast<uint64_t>(p) : 4096ull;
  }();
  return page;
}

uint64_t round_up(uint64_t v, uint64_t to) {
  return (v + to - 1) / to * to;
}

std::string errno_str(int err) {
  return std::error_code(err, std::generic_category()).message();
}

std::vector<int> process_cpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0)
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}

// CPUs of `node` this process may run on; empty when the node has none (memory-only nodes) or
// libnuma cannot say.
std::vector<int> node_cpus(int node) {
  std::vector<int> cpus;
  struct bitmask* mask = numa_allocate_cpumask();
  if (!mask) return cpus;
  if (numa_node_to_cpus(node, mask) == 0) {
    for (int c : process_cpus())
      if (static_cast<unsigned>(c) < mask->size && numa_bitmask_isbitset(mask, c))
        cpus.push_back(c);
  }
  numa_free_cpumask(mask);
  return cpus;
}

// Sets the NUMA policy of [p, p + len) to prefer `node`; an empty string on success, else why not.
std::string bind_to_node(void* p, uint64_t len, int node) {
  if (numa_available() < 0) return "the kernel has no NUMA support (numa_available() < 0)";
  if (node > numa_max_node() || !numa_bitmask_isbitset(numa_all_nodes_ptr, node))
    return "node " + std::to_string(node) + " does not exist or is not allowed to this process";
  constexpr unsigned kBitsPerLong = 8 * sizeof(unsigned long);
  std::vector<unsigned long> mask(node / kBitsPerLong + 1, 0);
  mask[node / kBitsPerLong] |= 1ul << (node % kBitsPerLong);
  // The kernel reads maxnode - 1 bits (a long-standing off-by-one), hence the + 1.
  const unsigned long maxnode = mask.size() * kBitsPerLong + 1;
  if (mbind(p, len, MPOL_PREFERRED, mask.data(), maxnode, 0) != 0)
    return "mbind(MPOL_PREFERRED) failed: " + errno_str(errno);
  return {};
}

void bind_current_thread(const std::vector<int>& cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus)
    if (c < CPU_SETSIZE) CPU_SET(c, &set);
  // Best effort, result ignored: with the mbind policy in place, placement does not depend on
  // where we run.
  (void)sched_setaffinity(0, sizeof(set), &set);
}

// One write per page: the kernel zero-fills anonymous pages, so this commits memory that already
// reads as zeros, without a second pass over it.
void touch_pages(uint8_t* begin, uint8_t* end) {
  const uint64_t page = page_bytes();
  for (volatile uint8_t* q = begin; q < end; q += page) *q = 0;
}

void first_touch(uint8_t* p, uint64_t len, int node, int requested_threads) {
  std::vector<int> cpus = node >= 0 ? node_cpus(node) : std::vector<int>{};
  const bool bind = !cpus.empty();
  if (cpus.empty()) cpus = process_cpus();
  int threads = requested_threads;
  if (threads <= 0) {
    threads = std::min<int>(std::max<size_t>(cpus.size(), 1), kMaxDefaultFirstTouchThreads);
    threads = static_cast<int>(
        std::min<uint64_t>(threads, std::max<uint64_t>(1, len / kMinFirstTouchBytesPerThread)));
  }
  // Slices are whole huge pages so that no 2 MiB page is faulted by two threads.
  const uint64_t unit = len >= kHugePageBytes ? kHugePageBytes : page_bytes();
  const uint64_t units = (len + unit - 1) / unit;
  threads = static_cast<int>(std::min<uint64_t>(threads, units));
  if (threads <= 1 && !bind) {
    touch_pages(p, p + len);
    return;
  }
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    uint8_t* begin = p + std::min(len, units * t / threads * unit);
    uint8_t* end = p + std::min(len, units * (t + 1) / threads * unit);
    try {
      pool.emplace_back([begin, end, bind, &cpus] {
        if (bind) bind_current_thread(cpus);
        touch_pages(begin, end);
      });
    } catch (const std::system_error&) {
      touch_pages(begin, end);  // out of threads: slower, same result
    }
  }
  for (std::thread& t : pool) t.join();
}

// Cuts [0, mapped) into registration chunks of at most max_chunk bytes that end only at split
// points (or at the end); without split points, at multiples of max_chunk.
Status plan_pin_chunks(uint64_t mapped, uint64_t max_chunk, uint64_t page,
                       const std::vector<uint64_t>& splits,
                       std::vector<std::pair<uint64_t, uint64_t>>* chunks) {
  for (size_t i = 0; i < splits.size(); ++i) {
    if (splits[i] % page != 0 || (i > 0 && splits[i] <= splits[i - 1])) {
      return Error{"pin split points must be ascending multiples of the page size (" +
                   std::to_string(page) + " B); got " + std::to_string(splits[i]) + " at index " +
                   std::to_string(i)};
    }
  }
  uint64_t start = 0;
  size_t next = 0;  // first split point > start
  while (start < mapped) {
    uint64_t end = std::min(mapped, start + max_chunk);
    if (end < mapped && !splits.empty()) {
      while (next < splits.size() && splits[next] <= start) ++next;
      size_t j = next;
      while (j + 1 < splits.size() && splits[j + 1] <= end) ++j;
      if (j >= splits.size() || splits[j] > end) {
        return Error{"a region at offset " + format_bytes(start) +
                     " is larger than one registration chunk (" + format_bytes(max_chunk) + ")"};
      }
      end = splits[j];
    }
    chunks->emplace_back(start, end - start);
    start = end;
  }
  return Ok{};
}

}  // namespace

Status check_host_memory(uint64_t need_bytes, const std::string& what) {
  const uint64_t available = host_memory_available_bytes();
  if (need_bytes <= available) return Ok{};
  return Error{what + " needs " + format_bytes(need_bytes) + " of host RAM; " +
               format_bytes(available) + " available (MemAvailable)"};
}

Result<HostArena> HostArena::create(uint64_t bytes, const ArenaOptions& opts,
                                    const std::string& what) {
  if (bytes == 0) return Error{what + ": cannot create an arena of 0 bytes"};
  if (Status st = check_host_memory(bytes, what); !st.ok()) return st.error();
  const uint64_t page = page_bytes();
  // Past the check above `bytes` is at most the size of RAM, so these cannot overflow.
  const uint64_t mapped = round_up(bytes, page);
  const uint64_t align = opts.huge_pages && mapped >= kHugePageBytes ? kHugePageBytes : page;
  const uint64_t reserve = mapped + (align > page ? align - page : 0);

  void* raw = mmap(nullptr, reserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) {
    return Error{what + ": mmap of " + format_bytes(reserve) + " failed: " + errno_str(errno)};
  }
  // Over-reserve, then unmap the unaligned head and the tail, so the base is 2 MiB aligned.
  uint8_t* base = static_cast<uint8_t*>(raw);
  uint8_t* aligned = reinterpret_cast<uint8_t*>(round_up(reinterpret_cast<uintptr_t>(base), align));
  if (aligned > base) munmap(base, aligned - base);
  if (base + reserve > aligned + mapped)
    munmap(aligned + mapped, base + reserve - (aligned + mapped));

  HostArena arena;
  arena.data_ = aligned;
  arena.size_ = bytes;
  arena.mapped_bytes_ = mapped;
  arena.what_ = what;

  if (opts.numa_node >= 0) {
    const std::string why = bind_to_node(aligned, mapped, opts.numa_node);
    if (why.empty()) {
      arena.numa_node_ = opts.numa_node;
    } else {
      log_warning(what + ": not bound to NUMA node " + std::to_string(opts.numa_node) + " (" + why +
                  "); continuing with the default placement");
    }
  }
  if (opts.huge_pages && mapped >= kHugePageBytes) {
    // Fails only when THP is compiled out; describe() then says "small pages".
    arena.huge_pages_ = madvise(aligned, mapped, MADV_HUGEPAGE) == 0;
  }
  first_touch(aligned, mapped, arena.numa_node_, opts.first_touch_threads);

  PinBackend* backend = g_pin_backend_override.load();
  if (!backend) backend = cuda_pin_backend();
  if (opts.pin && backend) {
    const uint64_t chunk_setting = g_pin_chunk_bytes.load();
    const uint64_t max_chunk = round_up(chunk_setting ? chunk_setting : kMaxPinChunkBytes, page);
    std::vector<std::pair<uint64_t, uint64_t>> chunks;
    std::string failure;
    if (Status st = plan_pin_chunks(mapped, max_chunk, page, opts.pin_split_points, &chunks);
        !st.ok()) {
      failure = st.error().message;
    }
    const bool inject_failure = g_pin_failure.load();
    size_t registered = 0;
    for (; failure.empty() && registered < chunks.size(); ++registered) {
      const auto [off, len] = chunks[registered];
      if (inject_failure && registered + 1 == chunks.size()) {
        failure = "failure injected by set_pin_failure_for_testing";
      } else if (Status st = backend->register_range(aligned + off, len); !st.ok()) {
        failure = st.error().message;
      }
      if (!failure.empty()) {
        failure = "chunk " + std::to_string(registered + 1) + "/" + std::to_string(chunks.size()) +
                  " (" + format_bytes(len) + " at offset " + format_bytes(off) + "): " + failure;
        break;
      }
    }
    if (failure.empty()) {
      arena.pinned_bytes_ = mapped;
      arena.pin_chunks_ = std::move(chunks);
      arena.pin_backend_ = backend;
    } else {
      while (registered > 0) backend->unregister_range(aligned + chunks[--registered].first);
      arena.pin_fallback_reason_ = "could not pin " + format_bytes(mapped) + " with " +
                                   backend->name() + ", " + failure +
                                   "; using pageable memory, so host-device copies of it are "
                                   "staged by the driver and slower";
      log_warning(what + ": " + arena.pin_fallback_reason_);
    }
  }
  return Result<HostArena>(std::move(arena));
}

HostArena::~HostArena() {
  release();
}

HostArena::HostArena(HostArena&& other) noexcept {
  *this = std::move(other);
}

HostArena& HostArena::operator=(HostArena&& other) noexcept {
  if (this == &other) return *this;
  release();
  data_ = std::exchange(other.data_, nullptr);
  size_ = std::exchange(other.size_, 0);
  mapped_bytes_ = std::exchange(other.mapped_bytes_, 0);
  pinned_bytes_ = std::exchange(other.pinned_bytes_, 0);
  pin_chunks_ = std::exchange(other.pin_chunks_, {});
  pin_backend_ = std::exchange(other.pin_backend_, nullptr);
  numa_node_ = std::exchange(other.numa_node_, -1);
  huge_pages_ = std::exchange(other.huge_pages_, false);
  what_ = std::move(other.what_);
  pin_fallback_reason_ = std::move(other.pin_fallback_reason_);
  return *this;
}

void HostArena::release() {
  if (!data_) return;
  if (pinned_bytes_ != 0 && pin_backend_) {
    for (size_t i = pin_chunks_.size(); i-- > 0;)
      pin_backend_->unregister_range(data_ + pin_chunks_[i].first);
  }
  if (munmap(data_, mapped_bytes_) != 0)
    log_warning(what_ + ": munmap failed: " + errno_str(errno));
  data_ = nullptr;
  size_ = mapped_bytes_ = pinned_bytes_ = 0;
  pin_chunks_.clear();
  pin_backend_ = nullptr;
  numa_node_ = -1;
  huge_pages_ = false;
}

std::string HostArena::describe() const {
  auto amount = [](uint64_t b) { return format_bytes(b) + " (" + std::to_string(b) + " B)"; };
  std::string s = (what_.empty() ? std::string("arena") : what_) + ": " + amount(size_) +
                  " requested, " + amount(mapped_bytes_) + " mapped, ";
  if (pinned()) {
    const size_t chunks = pin_chunks_.size();
    s += amount(pinned_bytes_) + " pinned (" + pin_backend_->name() + ", " +
         std::to_string(chunks) + (chunks == 1 ? " chunk)" : " chunks)");
  } else {
    s += pin_fallback_reason_.empty() ? "not pinned" : "not pinned (pinning failed)";
  }
  s += numa_node_ >= 0 ? ", NUMA node " + std::to_string(numa_node_) : ", no NUMA binding";
  s += huge_pages_ ? ", huge pages" : ", small pages";
  return s;
}

void set_pin_failure_for_testing(bool fail) {
  g_pin_failure.store(fail);
}

PinBackend* set_pin_backend_for_testing(PinBackend* backend) {
  return g_pin_backend_override.exchange(backend);
}

void set_pin_chunk_bytes_for_testing(uint64_t bytes) {
  g_pin_chunk_bytes.store(bytes);
}

}  // namespace ramstream::memory
