#include "dist/nccl_communicator.h"

namespace ramstream::dist {

bool nccl_available() {
  return false;
}

Result<std::unique_ptr<Communicator>> make_nccl_communicator(const DistEnv& env, int) {
  return Error{"this ramstream was built without CUDA, so it has no NCCL back-end for a job of " +
               std::to_string(env.world_size) + " GPU processes"};
}

}  // namespace ramstream::dist
