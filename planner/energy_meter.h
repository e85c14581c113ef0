// Energy counters for measuring what a run costs: NVML's total-energy counter on NVIDIA GPUs
// (libnvidia-ml.so.1 loaded with dlopen, so a binary built here runs where there is no driver)
// and Linux RAPL through powercap (/sys/class/powercap/intel-rapl:*/energy_uj; readable only by
// root since Linux 5.10, so usually absent on VMs and for users). When neither is readable the
// meter says so and callers report modelled energy only.
//
//   EnergyMeter meter = EnergyMeter::open();            // never fails; may hold no counter
//   std::printf("%s\n", meter.describe().c_str());     // "energy: NVML gpu0 (H200); RAPL none ..."
//   EnergyMeter::Reading a = meter.read();
//   ... work ...
//   EnergyMeter::Reading b = meter.read();
//   double joules = meter.joules_between(a, b);        // NaN when no counter is available
//
// NVML: nvmlDeviceGetTotalEnergyConsumption (mJ since the driver loaded, Volta and newer); the
// counter updates every 20-100 ms, so windows shorter than ~0.1 s are not meaningful.
// RAPL: the package zones (intel-rapl:N, not their subzones, which the package already counts)
// in uJ, with wraparound at max_energy_range_uj.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "util/result.h"

namespace ramstream::planner {

// What NVML says about one GPU (the probe's figures for a HardwareProfile).
struct NvmlGpuInfo {
  int index = 0;
  std::string name;
  uint64_t memory_total_bytes = 0;
  // 0 where NVML answers "not supported" (some boards, MIG and vGPU); other errors fail the call.
  double power_limit_w = 0;  // nvmlDeviceGetEnforcedPowerLimit
  double power_now_w = 0;    // nvmlDeviceGetPowerUsage (a 1 s average on Ampere and newer)
};

// libnvidia-ml.so.1 through dlopen: nvmlInit_v2 once, nvmlShutdown at destruction.
class Nvml {
 public:
  // Error naming the library (not found, a symbol missing) or the failing NVML call and its code.
  static Result<std::unique_ptr<Nvml>> open(const std::string& library = "libnvidia-ml.so.1");
  ~Nvml();
  Nvml(const Nvml&) = delete;
  Nvml& operator=(const Nvml&) = delete;

  int device_count() const;
  Result<NvmlGpuInfo> device_info(int index) const;
  // Millijoules since the driver loaded.
  Result<uint64_t> total_energy_mj(int index) const;

 private:
  struct Api;
  explicit Nvml(std::unique_ptr<Api> api);
  std::unique_ptr<Api> api_;
};

// One RAPL package zone.
struct RaplZone {
  std::string path;  // e.g. /sys/class/powercap/intel-rapl:0
  std::string name;  // its `name` file, e.g. "package-0"
  uint64_t max_range_uj = 0;
};

// The readable package zones under `root` (tests pass a fake tree); an empty list when there is
// none or none is readable, with the reason in *why (e.g. "energy_uj not readable (root only
// since Linux 5.10)").
std::vector<RaplZone> find_rapl_zones(const std::string& root, std::string* why);
Result<uint64_t> read_rapl_uj(const RaplZone& zone);
// b - a on a counter that wraps at max_range (b < a means one wrap; with a > max_range, b).
uint64_t counter_delta(uint64_t a, uint64_t b, uint64_t max_range);

class EnergyMeter {
 public:
  struct Reading {
    std::vector<uint64_t> gpu_mj;   // per NVML device, in order
    std::vector<uint64_t> rapl_uj;  // per RAPL zone, in order
    bool valid = false;             // every counter was read
  };

  // NVML (all devices) and RAPL under `rapl_root`, whichever are readable.
  static EnergyMeter open(const std::string& rapl_root = "/sys/class/powercap");
  EnergyMeter(EnergyMeter&&) noexcept;
  EnergyMeter& operator=(EnergyMeter&&) noexcept;
  ~EnergyMeter();

  bool has_gpu() const;
  bool has_cpu() const;
  bool available() const { return has_gpu() || has_cpu(); }
  Reading read() const;
  // Joules of all counters between two readings (GPU + CPU package); NaN when !available() or a
  // reading is invalid.
  double joules_between(const Reading& a, const Reading& b) const;
  // One side only; NaN when that side has no counter (not 0, which would read as a measurement).
  double gpu_joules_between(const Reading& a, const Reading& b) const;
  double cpu_joules_between(const Reading& a, const Reading& b) const;
  // One line: which counters are used, or why none ("energy: no counter (NVML: ...; RAPL: ...);
  // energy is modelled only").
  std::string describe() const;

 private:
  EnergyMeter();
  std::unique_ptr<Nvml> nvml_;
  std::vector<RaplZone> zones_;
  std::string nvml_why_, rapl_why_;
};

}  // namespace ramstream::planner
