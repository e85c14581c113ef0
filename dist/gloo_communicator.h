// The Gloo back-end of Communicator: PyTorch's c10d ProcessGroupGloo over TCP, on host buffers,
// rendezvous through a c10d TCPStore or FileStore (dist/env.h says which).
//
// Naming the rank at fault. Every rank runs a heartbeat thread that writes, through a store
// connection of its own, "<beat> <collective number> <label>" every heartbeat_s. When a
// collective throws (a peer closed its connection: it died) or times out (a peer stopped or hangs
// outside the collectives), the rank reads every heartbeat twice, 2.5 heartbeats apart, and names
// the ranks whose beat did not move (dead or stopped) and, failing that, the ranks that have not
// reached this collective (hung). When the store itself does not answer and rank 0 hosts it, the
// message says rank 0 is gone.
//
// reduce_scatter_sum runs as an all-reduce of a scratch copy (c10d's Gloo group has no
// reduce-scatter in libtorch 1.13), so it moves 2(N-1)/N of the buffer, as counted.
//
//   Result<std::unique_ptr<Communicator>> c = make_gloo_communicator(env, {});
#pragma once

#include <memory>
#include <string>

#include "dist/communicator.h"
#include "dist/env.h"
#include "util/result.h"

namespace ramstream::dist {

struct GlooOptions {
  // Address Gloo binds to: empty picks GLOO_SOCKET_IFNAME's interface when set, else
  // 127.0.0.1 when the store is on this machine (loopback or a FileStore), else this host's name.
  std::string hostname;
  double heartbeat_s = 0.5;
};

// Whether this build has the Gloo back-end (libtorch with c10d Gloo and its headers).
bool gloo_available();

// Connects to the store, starts the heartbeat and forms the group (waits for every rank up to
// env.timeout_s). Errors name the store address or file and what did not answer.
Result<std::unique_ptr<Communicator>> make_gloo_communicator(const DistEnv& env,
                                                             const GlooOptions& options);

// A TCPStore server the launcher hosts for its children (RAMSTREAM_AGENT_STORE=1), so the store
// outlives any rank. port 0 picks a free port; port() says which.
class StoreServer {
 public:
  virtual ~StoreServer() = default;
  virtual int port() const = 0;
};
Result<std::unique_ptr<StoreServer>> host_tcp_store(int port, double timeout_s);

}  // namespace ramstream::dist
