// The NCCL back-end of Communicator, for device buffers (CUDA builds). NCCL's own API
// (ncclCommInitRank), its unique id passed from rank 0 to the others through the job's c10d
// store; one CUDA stream per communicator, on which every collective runs in issue order.
// Work::wait() polls that stream and, past the timeout, aborts the communicator
// (ncclCommAbort) and throws CommError, so a dead peer cannot hang the job; NCCL's asynchronous
// errors (ncclCommGetAsyncError) are reported the same way. Host buffers are accepted too (the
// trainer's flags and sums, host shards): they pass through device scratch and the call returns
// once done.
//
//   Result<std::unique_ptr<Communicator>> c = make_nccl_communicator(env, /*device=*/0);
//   c.value()->all_reduce_sum(dev_grads, n, DType::kFloat32, "grads")->wait();
#pragma once

#include <memory>

#include "dist/communicator.h"
#include "dist/env.h"
#include "util/result.h"

namespace ramstream::dist {

// Whether this build has the NCCL back-end (a CUDA build).
bool nccl_available();

// Joins the job on CUDA device `device`; the buffers given to its collectives are device memory
// of that device.
Result<std::unique_ptr<Communicator>> make_nccl_communicator(const DistEnv& env, int device);

}  // namespace ramstream::dist
