// HostArena: one big host allocation made the way the streaming engine needs it: exact size
// (no power-of-two rounding), placed on a NUMA node, backed by transparent huge pages, faulted in
// up front by threads running on that node, and page-locked for async GPU copies.
//
// Order of work in create(), each step for a reason:
//   1. check_host_memory(): refuse up front, with the estimate, when MemAvailable is too small,
//      instead of an OOM kill halfway through loading a model.
//   2. mmap(MAP_PRIVATE | MAP_ANONYMOUS), base aligned to 2 MiB when huge pages are asked for.
//   3. mbind(MPOL_PREFERRED) to opts.numa_node: pages are placed at first touch, so the policy
//      must come before it. PREFERRED, not BIND: node sizes are misreported on some VMs (see
//      topology.h) and BIND turns that into an OOM kill; PREFERRED spills to another node instead.
//      Failure is a warning, not an error: the arena works unbound, only slower.
//   4. madvise(MADV_HUGEPAGE): THP runs in madvise mode on the target machines.
//   5. first touch: threads bound to the node's CPUs write every page (the kernel hands out
//      zeroed pages, so the arena reads as zeros), committing the memory now rather than during a
//      training step.
//   6. pin: cudaHostRegister in chunks of <= 64 GiB ending only at the caller's split points
//      (region boundaries), every return code checked. If any chunk fails, the chunks done are
//      unregistered and the arena stays pageable, with ONE warning saying what and why; pinned()
//      tells callers which copy path they get (the engine refuses a pageable store on CUDA
//      unless told otherwise).
//
// Guarantees: data() is aligned to the system page size (4 KiB), and to 2 MiB when
// opts.huge_pages and size >= 2 MiB; the arena reads as zeros after create(); size() is exactly
// what was requested; mapped_bytes() - size() < one page.
//
//   ArenaOptions opts;
//   opts.numa_node = Topology::probe().gpu_node;
//   Result<HostArena> a = HostArena::create(18ull << 30, opts, "param store");
//   if (!a.ok()) return a.error();  // "param store needs 18.0 GiB of host RAM; 12.1 GiB ..."
//   HostArena store = std::move(a).value();
//   float* master = reinterpret_cast<float*>(store.data());
//   if (!store.pinned()) { /* stage H2D copies through a pinned BlockPool */ }
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "memory/pin_backend.h"
#include "util/result.h"

namespace ramstream::memory {

struct ArenaOptions {
  int numa_node = -1;  // OS index of the node to place the pages on; -1 leaves placement alone
  bool huge_pages = true;
  bool pin = true;  // page-lock for CUDA; ignored (pinned() == false) without CUDA
  // Threads faulting the pages in. 0 = number of CPUs of the node (of the process when unbound),
  // capped at 8 and at one per 16 MiB.
  int first_touch_threads = 0;
  // Offsets (bytes from data(), page-aligned, ascending) at which a registration chunk may end.
  // A copy that spans two registrations is not a pinned copy to the driver, so a caller whose
  // copies each cover one region passes the region starts here; chunks then never split a
  // region. Empty: fixed chunks of kMaxPinChunkBytes.
  std::vector<uint64_t> pin_split_points;
};

// Ok when `need_bytes` fits in MemAvailable, else an Error such as
// "param store needs 18.3 GiB of host RAM; 12.1 GiB available (MemAvailable)".
Status check_host_memory(uint64_t need_bytes, const std::string& what);

class HostArena {
 public:
  static Result<HostArena> create(uint64_t bytes, const ArenaOptions& opts,
                                  const std::string& what);

  HostArena() = default;  // empty: data() == nullptr, size() == 0
  ~HostArena();
  HostArena(HostArena&& other) noexcept;
  HostArena& operator=(HostArena&& other) noexcept;
  HostArena(const HostArena&) = delete;
  HostArena& operator=(const HostArena&) = delete;

  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }                  // exactly as requested
  uint64_t mapped_bytes() const { return mapped_bytes_; }  // size() rounded up to whole pages
  uint64_t pinned_bytes() const { return pinned_bytes_; }  // mapped_bytes() or 0
  bool pinned() const { return pinned_bytes_ != 0; }
  // Node the pages were bound to, or -1 when unbound (not asked, or mbind failed).
  int numa_node() const { return numa_node_; }
  // MADV_HUGEPAGE accepted (asked for, arena of 2 MiB or more, THP not disabled).
  bool huge_pages() const { return huge_pages_; }
  const std::string& what() const { return what_; }
  // Why pinning was asked for but not done (the text of the one warning); empty otherwise.
  const std::string& pin_fallback_reason() const { return pin_fallback_reason_; }
  // The registered chunks as (offset, bytes) from data(); empty when not pinned.
  const std::vector<std::pair<uint64_t, uint64_t>>& pin_chunks() const { return pin_chunks_; }

  // "param store: 18.3 GiB requested, 18.3 GiB mapped, 18.3 GiB pinned (cudaHostRegister, 1
  // chunk), NUMA node 0, huge pages".
  std::string describe() const;

 private:
  void release();

  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  uint64_t mapped_bytes_ = 0;
  uint64_t pinned_bytes_ = 0;
  std::vector<std::pair<uint64_t, uint64_t>> pin_chunks_;
  PinBackend* pin_backend_ = nullptr;  // the backend that pinned it, used to unpin
  int numa_node_ = -1;
  bool huge_pages_ = false;
  std::string what_;
  std::string pin_fallback_reason_;
};

// Test hooks. Process-wide; set them while no create() runs on another thread.
//
// Makes registration fail through whatever backend is active: the LAST chunk of each arena fails,
// so an arena of several chunks also exercises the rollback of the chunks already registered. On
// a CUDA machine the earlier chunks are really registered and unregistered.
void set_pin_failure_for_testing(bool fail);
// Replaces the pin backend; nullptr restores the default (cuda_pin_backend()). Returns the
// previous override. A backend must outlive every arena pinned through it. Pass
// noop_pin_backend() for a fake-pinned mode on CPU-only builds.
PinBackend* set_pin_backend_for_testing(PinBackend* backend);
// Registration chunk size; 0 restores kMaxPinChunkBytes. Lets tests build multi-chunk arenas of
// a few MiB.
void set_pin_chunk_bytes_for_testing(uint64_t bytes);

}  // namespace ramstream::memory
