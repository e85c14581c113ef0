// How host ranges get page-locked, behind a small interface so that the arena's pinning and its
// fallback path run (and are tested) the same way on CUDA and CPU-only builds. This header and
// pin_backend.cpp are the only places in memory/ that touch the CUDA runtime; without
// RAMSTREAM_WITH_CUDA they compile to "no CUDA" answers, so callers need no #ifdefs.
//
//   if (PinBackend* pin = cuda_pin_backend()) {
//     Status st = pin->register_range(p, bytes);  // on failure the CUDA error is already cleared
//     if (st.ok()) { /* ... */ pin->unregister_range(p); }
//   }
#pragma once

#include <cstdint>
#include <string>

#include "util/result.h"

namespace ramstream::memory {

// The driver's page table for one registration is capped (R580+ drivers refuse 2^39 bytes in one
// call whatever RAM is free; vLLM PR #51081), so big ranges are registered in chunks of this size.
constexpr uint64_t kMaxPinChunkBytes = 64ull << 30;

class PinBackend {
 public:
  virtual ~PinBackend() = default;
  virtual const char* name() const = 0;
  // Page-locks [p, p + bytes). On failure returns an Error saying why, and leaves no pending
  // error behind (a stale CUDA error would later surface as a bogus OOM in an unrelated call).
  virtual Status register_range(void* p, uint64_t bytes) = 0;
  // Undoes register_range(p, ...) for the same p. Failures are logged, not returned: callers are
  // destructors and rollbacks that could do nothing else with them.
  virtual void unregister_range(void* p) = 0;
};

// cudaHostRegister / cudaHostUnregister when CUDA is compiled in and device 0 exists and supports
// host registration; nullptr otherwise (a CPU build, or a CUDA build on a machine without GPU).
PinBackend* cuda_pin_backend();

// Registers nothing and always succeeds: a fake-pinned mode for tests on CPU-only machines.
PinBackend* noop_pin_backend();

// PCI bus id of CUDA device `device` in sysfs form ("0000:3b:00.0", lower case); empty without
// CUDA compiled in or without that device.
std::string cuda_device_pci_bus_id(int device);

}  // namespace ramstream::memory
