// Host-to-device copy bandwidth from three kinds of host memory, measured in one run on one GPU:
// a ramstream HostArena (mmap + NUMA binding + cudaHostRegister in chunks), plain pageable
// memory, and cudaHostAlloc. Built only with CUDA; needs a GPU to run.
//
//   build/bin/h2d_bench --json [--mib 1024] [--iters 10]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "memory/arena.h"
#include "memory/topology.h"

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "h2d_bench: %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

// Median GB/s of `iters` copies of `bytes` from src to dst on one stream, timed with events.
double h2d_gbps(void* dst, const void* src, size_t bytes, int iters, cudaStream_t stream) {
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "event");
  check(cudaEventCreate(&b), "event");
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream), "warm-up copy");
  std::vector<double> gbps;
  for (int i = 0; i < iters; ++i) {
    check(cudaEventRecord(a, stream), "record");
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream), "copy");
    check(cudaEventRecord(b, stream), "record");
    check(cudaEventSynchronize(b), "sync");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, a, b), "elapsed");
    gbps.push_back(double(bytes) / (double(ms) * 1e6));
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(gbps.begin(), gbps.end());
  return gbps[gbps.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  size_t mib = 1024;
  int iters = 10;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    if (s == "--json")
      json = true;
    else if (s == "--mib" && i + 1 < argc)
      mib = std::strtoull(argv[++i], nullptr, 10);
    else if (s == "--iters" && i + 1 < argc)
      iters = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: h2d_bench [--json] [--mib N] [--iters N]\n");
      return 2;
    }
  }
  const size_t bytes = mib << 20;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::fprintf(stderr, "h2d_bench: no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "properties");
  void* dev = nullptr;
  check(cudaMalloc(&dev, bytes), "cudaMalloc");
  cudaStream_t stream;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");

  const ramstream::memory::Topology topo = ramstream::memory::Topology::probe();
  ramstream::memory::ArenaOptions opts;
  opts.numa_node = topo.gpu_node;
  opts.pin = true;
  auto arena = ramstream::memory::HostArena::create(bytes, opts, "h2d_bench arena");
  if (!arena.ok()) {
    std::fprintf(stderr, "h2d_bench: %s\n", arena.error().message.c_str());
    return 1;
  }
  std::memset(arena.value().data(), 1, bytes);
  const double arena_gbps = h2d_gbps(dev, arena.value().data(), bytes, iters, stream);

  std::vector<char> pageable(bytes, 1);
  const double pageable_gbps = h2d_gbps(dev, pageable.data(), bytes, iters, stream);

  void* host_alloc = nullptr;
  check(cudaHostAlloc(&host_alloc, bytes, cudaHostAllocDefault), "cudaHostAlloc");
  std::memset(host_alloc, 1, bytes);
  const double host_alloc_gbps = h2d_gbps(dev, host_alloc, bytes, iters, stream);

  std::printf("h2d_bench: %s, %zu MiB copies, median of %d, GPU NUMA node %d, arena %s\n",
              prop.name, mib, iters, topo.gpu_node, arena.value().describe().c_str());
  std::printf("%-28s %8.2f GB/s\n", "ramstream pinned arena", arena_gbps);
  std::printf("%-28s %8.2f GB/s\n", "pageable (std::vector)", pageable_gbps);
  std::printf("%-28s %8.2f GB/s\n", "cudaHostAlloc", host_alloc_gbps);
  if (json) {
    std::printf(
        "{\"bench\":\"h2d\",\"device\":\"%s\",\"mib\":%zu,\"arena_pinned\":%s,"
        "\"arena_gbps\":%.3f,\"pageable_gbps\":%.3f,\"cuda_host_alloc_gbps\":%.3f,"
        "\"arena_vs_host_alloc\":%.4f,\"arena_vs_pageable\":%.4f}\n",
        prop.name, mib, arena.value().pinned() ? "true" : "false", arena_gbps, pageable_gbps,
        host_alloc_gbps, arena_gbps / host_alloc_gbps, arena_gbps / pageable_gbps);
  }
  cudaFreeHost(host_alloc);
  cudaFree(dev);
  cudaStreamDestroy(stream);
  return 0;
}
