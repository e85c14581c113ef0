// Where this process stands in a job: rank, world size and the rendezvous, read from the
// variables a launcher sets. `ramstream launch` sets them; so do torchrun (RANK, WORLD_SIZE,
// LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and Slurm's srun (SLURM_PROCID,
// SLURM_NTASKS, SLURM_LOCALID, read when RANK is not set). No variable at all: a single process.
//
// The rendezvous is a c10d TCPStore at MASTER_ADDR:MASTER_PORT, hosted by rank 0 unless the
// launcher hosts it (RAMSTREAM_AGENT_STORE=1, or torchrun's TORCHELASTIC_USE_AGENT_STORE=True),
// or a c10d FileStore at RAMSTREAM_STORE_FILE (all ranks on one machine or a shared file system).
// RAMSTREAM_DIST_TIMEOUT_S bounds every collective and the rendezvous (default 300 s).
//
//   Result<DistEnv> env = dist_env_from(environ_map());
//   if (!env.ok()) die(env.error().message);   // "RANK=3 is not below WORLD_SIZE=2"
//   if (env.value().world_size > 1) ...
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "util/result.h"

namespace ramstream::dist {

struct DistEnv {
  int rank = 0, world_size = 1;
  int local_rank = 0, local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool agent_store = false;  // the launcher hosts the TCPStore; rank 0 connects as a client
  std::string store_file;    // non-empty: a FileStore instead of the TCPStore
  double timeout_s = 300;
  std::string launcher = "none";  // which variables were read: none | env | slurm

  bool distributed() const { return world_size > 1; }
  std::string describe() const;  // "rank 1 of 4 (local 1 of 2), store 10.0.0.1:29500"
};

// Reads the variables above from `vars` (name -> value). Errors name the variable and its value.
Result<DistEnv> dist_env_from(const std::map<std::string, std::string>& vars);
// The process environment as a map (the variables dist_env_from reads, and a few more).
std::map<std::string, std::string> environ_map();

}  // namespace ramstream::dist
