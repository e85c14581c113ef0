#include "dist/store.h"

#include <chrono>

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

namespace ramstream::dist::detail {

c10::intrusive_ptr<c10d::Store> connect_store(const DistEnv& env, bool server, double timeout_s) {
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000.0));
  if (!env.store_file.empty()) {
    // Each rank opens the file twice (its back-end's and its heartbeat's connection); the last of
    // all those users removes it.
    auto s = c10::make_intrusive<c10d::FileStore>(env.store_file, 2 * env.world_size);
    s->setTimeout(timeout);
    return s;
  }
  c10d::TCPStoreOptions o;
  o.port = static_cast<uint16_t>(env.master_port);
  o.isServer = server;
  o.numWorkers = env.world_size;
  o.waitWorkers = false;
  o.timeout = timeout;
  return c10::make_intrusive<c10d::TCPStore>(env.master_addr, o);
}

std::string store_name(const DistEnv& env) {
  return env.store_file.empty()
             ? "the TCPStore at " + env.master_addr + ":" + std::to_string(env.master_port)
             : "the FileStore " + env.store_file;
}

bool rank0_hosts_store(const DistEnv& env) {
  return env.store_file.empty() && !env.agent_store;
}

}  // namespace ramstream::dist::detail
