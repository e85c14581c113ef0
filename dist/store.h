// The c10d store a job meets at (internal to dist/): a TCPStore at MASTER_ADDR:MASTER_PORT or a
// FileStore (dist/env.h), for the back-ends' rendezvous and the heartbeats.
#pragma once

#include <string>

#include <torch/csrc/distributed/c10d/Store.hpp>

#include "dist/env.h"

namespace ramstream::dist::detail {

// A connection to the job's store; `server`: this process hosts the TCPStore.
c10::intrusive_ptr<c10d::Store> connect_store(const DistEnv& env, bool server, double timeout_s);
// "the TCPStore at host:port" or "the FileStore PATH", for messages.
std::string store_name(const DistEnv& env);
// Whether rank 0 of this job hosts the TCPStore (not the launcher, not a file).
bool rank0_hosts_store(const DistEnv& env);

}  // namespace ramstream::dist::detail
