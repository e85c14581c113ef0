// This build has no CUDA toolkit: no device twin of the KV pages (kv_mirror.h).
#include "inference/kv_mirror.h"

namespace ramstream::inference {

std::unique_ptr<KvMirrorBackend> make_cuda_mirror_backend(void* /*stream*/) {
  return nullptr;
}

}  // namespace ramstream::inference
