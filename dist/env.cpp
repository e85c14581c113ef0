#include "dist/env.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>

extern char** environ;

namespace ramstream::dist {
namespace {

bool lookup(const std::map<std::string, std::string>& vars, const std::string& name,
            std::string* value) {
  auto it = vars.find(name);
  if (it == vars.end() || it->second.empty()) return false;
  *value = it->second;
  return true;
}

// An integer variable in [lo, hi]; absent: `fallback`.
Result<int> int_var(const std::map<std::string, std::string>& vars, const std::string& name,
                    int fallback, int lo, int hi) {
  std::string s;
  if (!lookup(vars, name, &s)) return fallback;
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno != 0 || end == s.c_str() || *end != '\0' || v < lo || v > hi) {
    return Error{name + "='" + s.substr(0, 40) + "' is not an integer in [" + std::to_string(lo) +
                 ", " + std::to_string(hi) + "]"};
  }
  return static_cast<int>(v);
}

bool truthy(const std::string& v) {
  return v == "1" || v == "true" || v == "True" || v == "TRUE";
}

}  // namespace

std::string DistEnv::describe() const {
  std::string s = "rank " + std::to_string(rank) + " of " + std::to_string(world_size) +
                  " (local " + std::to_string(local_rank) + " of " +
                  std::to_string(local_world_size) + "), store ";
  if (!store_file.empty()) return s + "file " + store_file;
  return s + master_addr + ":" + std::to_string(master_port) +
         (agent_store ? " (launcher's)" : " (rank 0's)");
}

Result<DistEnv> dist_env_from(const std::map<std::string, std::string>& vars) {
  DistEnv e;
  std::string unused;
  const bool torch_style = lookup(vars, "RANK", &unused) || lookup(vars, "WORLD_SIZE", &unused);
  const bool slurm = !torch_style && lookup(vars, "SLURM_PROCID", &unused) &&
                     lookup(vars, "SLURM_NTASKS", &unused);
  const std::string rank_var = slurm ? "SLURM_PROCID" : "RANK";
  const std::string world_var = slurm ? "SLURM_NTASKS" : "WORLD_SIZE";
  const std::string local_var = slurm ? "SLURM_LOCALID" : "LOCAL_RANK";
  const std::string local_world_var = slurm ? "SLURM_NTASKS_PER_NODE" : "LOCAL_WORLD_SIZE";
  if (!torch_style && !slurm) return e;
  e.launcher = slurm ? "slurm" : "env";

  Result<int> world = int_var(vars, world_var, 1, 1, 1 << 20);
  if (!world.ok()) return world.error();
  e.world_size = world.value();
  Result<int> rank = int_var(vars, rank_var, 0, 0, 1 << 20);
  if (!rank.ok()) return rank.error();
  e.rank = rank.value();
  if (e.rank >= e.world_size) {
    return Error{rank_var + "=" + std::to_string(e.rank) + " is not below " + world_var + "=" +
                 std::to_string(e.world_size)};
  }
  Result<int> local = int_var(vars, local_var, e.rank, 0, 1 << 20);
  if (!local.ok()) return local.error();
  e.local_rank = local.value();
  // SLURM_NTASKS_PER_NODE may read "2(x3)"; only a plain number is taken.
  Result<int> local_world = int_var(vars, local_world_var, e.world_size, 1, 1 << 20);
  e.local_world_size = local_world.ok() ? local_world.value() : e.world_size;
  if (e.local_rank >= e.local_world_size) {
    return Error{local_var + "=" + std::to_string(e.local_rank) + " is not below the " +
                 std::to_string(e.local_world_size) + " processes of this node (" +
                 local_world_var + ")"};
  }

  std::string addr;
  if (lookup(vars, "MASTER_ADDR", &addr)) e.master_addr = addr;
  Result<int> port = int_var(vars, "MASTER_PORT", 29500, 1, 65535);
  if (!port.ok()) return port.error();
  e.master_port = port.value();
  std::string flag;
  e.agent_store = (lookup(vars, "RAMSTREAM_AGENT_STORE", &flag) && truthy(flag)) ||
                  (lookup(vars, "TORCHELASTIC_USE_AGENT_STORE", &flag) && truthy(flag));
  lookup(vars, "RAMSTREAM_STORE_FILE", &e.store_file);
  Result<int> timeout = int_var(vars, "RAMSTREAM_DIST_TIMEOUT_S", 300, 1, 24 * 3600);
  if (!timeout.ok()) return timeout.error();
  e.timeout_s = timeout.value();
  if (slurm && !lookup(vars, "MASTER_ADDR", &addr)) {
    return Error{
        "SLURM_PROCID is set but MASTER_ADDR is not: export MASTER_ADDR (the first node "
        "of the allocation) and MASTER_PORT in the batch script"};
  }
  return e;
}

std::map<std::string, std::string> environ_map() {
  std::map<std::string, std::string> vars;
  for (char** p = environ; p && *p; ++p) {
    const char* eq = std::strchr(*p, '=');
    if (eq) vars.emplace(std::string(*p, static_cast<size_t>(eq - *p)), std::string(eq + 1));
  }
  return vars;
}

}  // namespace ramstream::dist
