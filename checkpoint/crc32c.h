// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): the checksum of training-state
// checkpoints (checkpoint/train_state.h), as used by iSCSI, ext4 and RocksDB.
//
// On x86-64 CPUs with SSE4.2 the crc32 instruction does the work (three independent streams
// interleaved to hide its latency, then combined); elsewhere a portable slice-by-8 table
// version runs. The choice is made once at run time; both give the same value.
//
//   uint32_t c = crc32c(buf, n);              // whole buffer
//   uint32_t d = crc32c(more, m, c);          // continued: equals crc32c of buf followed by more
//   crc32c("123456789", 9) == 0xE3069283
#pragma once

#include <cstddef>
#include <cstdint>

namespace ramstream::checkpoint {

// `crc` is the value returned for the bytes before `data` (0 to start).
uint32_t crc32c(const void* data, size_t bytes, uint32_t crc = 0);

// The table version, whatever the CPU has (tests compare the two).
uint32_t crc32c_portable(const void* data, size_t bytes, uint32_t crc = 0);
// True when crc32c() uses the SSE4.2 instruction.
bool crc32c_hardware();

}  // namespace ramstream::checkpoint
