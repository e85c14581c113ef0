// NVML is declared here rather than included: no NVML header is installed on the build machines,
// and the few entry points used are stable C symbols (the _v2 names since driver 325). Every
// signature below follows the public NVML reference; nvmlReturn_t is a C enum, i.e. an int.
#include "planner/energy_meter.h"

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <string_view>
#include <utility>

#include "util/text.h"
#include "util/user_file.h"

namespace ramstream::planner {

namespace {

using NvmlReturn = int;
using NvmlDevice = struct NvmlDeviceOpaque*;
struct NvmlMemory {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};

constexpr NvmlReturn kNvmlSuccess = 0;
constexpr NvmlReturn kNvmlErrorNotSupported = 3;
// NVML_DEVICE_NAME_V2_BUFFER_SIZE: the largest name NVML writes, terminator included.
constexpr unsigned kNvmlNameBufferSize = 96;

// Sysfs counters are at most 20 digits and a newline; anything longer is not a counter.
constexpr size_t kMaxCounterFileBytes = 64;

}  // namespace

struct Nvml::Api {
  std::string library;
  void* handle = nullptr;
  bool initialized = false;
  std::vector<NvmlDevice> devices;

  NvmlReturn (*init)() = nullptr;
  NvmlReturn (*shutdown)() = nullptr;
  const char* (*error_string)(NvmlReturn) = nullptr;
  NvmlReturn (*get_count)(unsigned*) = nullptr;
  NvmlReturn (*get_handle_by_index)(unsigned, NvmlDevice*) = nullptr;
  NvmlReturn (*get_name)(NvmlDevice, char*, unsigned) = nullptr;
  NvmlReturn (*get_memory_info)(NvmlDevice, NvmlMemory*) = nullptr;
  NvmlReturn (*get_enforced_power_limit)(NvmlDevice, unsigned*) = nullptr;
  NvmlReturn (*get_power_usage)(NvmlDevice, unsigned*) = nullptr;
  NvmlReturn (*get_total_energy)(NvmlDevice, unsigned long long*) = nullptr;

  ~Api() {
    if (initialized) shutdown();
    if (handle != nullptr) dlclose(handle);
  }

  // "nvmlDeviceGetName(gpu 0): Not Supported (NVML error 3)"
  Error failure(const std::string& call, NvmlReturn code) const {
    const char* text = error_string != nullptr ? error_string(code) : nullptr;
    return Error{call + ": " + (text != nullptr ? text : "unknown error") + " (NVML error " +
                 std::to_string(code) + ")"};
  }
};

namespace {

template <class Fn>
bool resolve(void* handle, const char* symbol, Fn* out) {
  void* address = dlsym(handle, symbol);
  if (address == nullptr) return false;
  *out = reinterpret_cast<Fn>(address);
  return true;
}

Error device_index_error(int index, size_t count) {
  return Error{"NVML: no GPU " + std::to_string(index) + " (" + std::to_string(count) +
               " devices)"};
}

}  // namespace

Nvml::Nvml(std::unique_ptr<Api> api) : api_(std::move(api)) {}
Nvml::~Nvml() = default;

Result<std::unique_ptr<Nvml>> Nvml::open(const std::string& library) {
  auto api = std::make_unique<Api>();
  api->library = library;
  dlerror();
  api->handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (api->handle == nullptr) {
    const char* reason = dlerror();
    const std::string detail = reason != nullptr ? reason : "dlopen failed";
    if (detail.find("No such file") != std::string::npos) {
      return Error{library + " not found (no NVIDIA driver on this machine)"};
    }
    return Error{library + " could not be loaded: " + detail};
  }

  // nvmlInit_v2 first: a library that is not NVML at all then fails on the most basic name.
  const char* missing = nullptr;
  auto need = [&](const char* symbol, auto* out) {
    if (missing == nullptr && !resolve(api->handle, symbol, out)) missing = symbol;
  };
  need("nvmlInit_v2", &api->init);
  need("nvmlShutdown", &api->shutdown);
  need("nvmlErrorString", &api->error_string);
  need("nvmlDeviceGetCount_v2", &api->get_count);
  need("nvmlDeviceGetHandleByIndex_v2", &api->get_handle_by_index);
  need("nvmlDeviceGetName", &api->get_name);
  need("nvmlDeviceGetMemoryInfo", &api->get_memory_info);
  need("nvmlDeviceGetEnforcedPowerLimit", &api->get_enforced_power_limit);
  need("nvmlDeviceGetPowerUsage", &api->get_power_usage);
  need("nvmlDeviceGetTotalEnergyConsumption", &api->get_total_energy);
  if (missing != nullptr) {
    return Error{library + " lacks " + missing + " (not NVML, or too old a driver)"};
  }

  if (NvmlReturn rc = api->init(); rc != kNvmlSuccess) return api->failure("nvmlInit_v2", rc);
  api->initialized = true;

  unsigned count = 0;
  if (NvmlReturn rc = api->get_count(&count); rc != kNvmlSuccess) {
    return api->failure("nvmlDeviceGetCount_v2", rc);
  }
  for (unsigned i = 0; i < count; ++i) {
    NvmlDevice device = nullptr;
    if (NvmlReturn rc = api->get_handle_by_index(i, &device); rc != kNvmlSuccess) {
      return api->failure("nvmlDeviceGetHandleByIndex_v2(" + std::to_string(i) + ")", rc);
    }
    api->devices.push_back(device);
  }
  return std::unique_ptr<Nvml>(new Nvml(std::move(api)));
}

int Nvml::device_count() const {
  return static_cast<int>(api_->devices.size());
}

Result<NvmlGpuInfo> Nvml::device_info(int index) const {
  if (index < 0 || index >= device_count()) return device_index_error(index, api_->devices.size());
  const NvmlDevice device = api_->devices[index];
  const std::string gpu = "(gpu " + std::to_string(index) + ")";
  NvmlGpuInfo info;
  info.index = index;

  char name[kNvmlNameBufferSize] = {};
  if (NvmlReturn rc = api_->get_name(device, name, sizeof name); rc != kNvmlSuccess) {
    return api_->failure("nvmlDeviceGetName" + gpu, rc);
  }
  name[sizeof name - 1] = '\0';
  info.name = name;

  NvmlMemory memory{};
  if (NvmlReturn rc = api_->get_memory_info(device, &memory); rc != kNvmlSuccess) {
    return api_->failure("nvmlDeviceGetMemoryInfo" + gpu, rc);
  }
  info.memory_total_bytes = memory.total;

  // Some boards (and MIG or vGPU setups) report no power; that leaves the figure at 0 rather
  // than losing the name and memory a profile needs.
  unsigned milliwatts = 0;
  if (NvmlReturn rc = api_->get_enforced_power_limit(device, &milliwatts); rc == kNvmlSuccess) {
    info.power_limit_w = milliwatts / 1000.0;
  } else if (rc != kNvmlErrorNotSupported) {
    return api_->failure("nvmlDeviceGetEnforcedPowerLimit" + gpu, rc);
  }
  if (NvmlReturn rc = api_->get_power_usage(device, &milliwatts); rc == kNvmlSuccess) {
    info.power_now_w = milliwatts / 1000.0;
  } else if (rc != kNvmlErrorNotSupported) {
    return api_->failure("nvmlDeviceGetPowerUsage" + gpu, rc);
  }
  return info;
}

Result<uint64_t> Nvml::total_energy_mj(int index) const {
  if (index < 0 || index >= device_count()) return device_index_error(index, api_->devices.size());
  unsigned long long millijoules = 0;
  if (NvmlReturn rc = api_->get_total_energy(api_->devices[index], &millijoules);
      rc != kNvmlSuccess) {
    return api_->failure("nvmlDeviceGetTotalEnergyConsumption(gpu " + std::to_string(index) + ")",
                         rc);
  }
  return static_cast<uint64_t>(millijoules);
}

// ---------------------------------------------------------------------------------------------
// RAPL through powercap.

namespace {

// At most kMaxCounterFileBytes of a sysfs attribute. O_NONBLOCK so that a FIFO planted in a tree
// cannot hang the caller before fstat rejects it.
Result<std::string> read_bounded(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == EACCES || err == EPERM) {
      return Error{path + ": not readable (root only since Linux 5.10)"};
    }
    return Error{path + ": " + std::strerror(err)};
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Error{path + ": not a regular file"};
  }
  std::string text;
  char buffer[kMaxCounterFileBytes + 1];
  while (text.size() <= kMaxCounterFileBytes) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      // Without CAP_SYS_ADMIN, some kernels let open succeed and refuse at read time.
      if (err == EACCES || err == EPERM) {
        return Error{path + ": not readable (root only since Linux 5.10)"};
      }
      return Error{path + ": " + std::strerror(err)};
    }
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  if (text.size() > kMaxCounterFileBytes) {
    return Error{path + ": longer than " + std::to_string(kMaxCounterFileBytes) +
                 " bytes, not a powercap attribute"};
  }
  return text;
}

// A whole decimal number with an optional trailing newline, nothing else.
Result<uint64_t> read_counter(const std::string& path) {
  Result<std::string> text = read_bounded(path);
  if (!text.ok()) return text.error();
  std::string_view digits = text.value();
  if (!digits.empty() && digits.back() == '\n') digits.remove_suffix(1);
  uint64_t value = 0;
  const char* end = digits.data() + digits.size();
  const auto [stop, ec] = std::from_chars(digits.data(), end, value);
  if (digits.empty() || ec != std::errc() || stop != end) {
    const char* why =
        ec == std::errc::result_out_of_range ? "does not fit 64 bits" : "not a number";
    return Error{path + ": " + why + ": " + quote_bounded(text.value())};
  }
  return value;
}

// The N of "intel-rapl:N"; -1 for anything else (subzones "intel-rapl:N:M", the control type
// folder "intel-rapl", other powercap drivers).
long package_number(const std::string& entry) {
  static constexpr std::string_view kPrefix = "intel-rapl:";
  if (entry.size() <= kPrefix.size() || entry.compare(0, kPrefix.size(), kPrefix) != 0) return -1;
  const char* begin = entry.data() + kPrefix.size();
  const char* end = entry.data() + entry.size();
  long number = -1;
  const auto [stop, ec] = std::from_chars(begin, end, number);
  if (ec != std::errc() || stop != end || *begin == '-' || *begin == '+') return -1;
  return number;
}

}  // namespace

std::vector<RaplZone> find_rapl_zones(const std::string& root, std::string* why) {
  std::string ignored;
  if (why == nullptr) why = &ignored;
  why->clear();

  DIR* dir = ::opendir(root.c_str());
  if (dir == nullptr) {
    *why = "no powercap folder (" + root + ": " + std::strerror(errno) + ")";
    return {};
  }
  std::vector<std::pair<long, std::string>> packages;
  while (const dirent* entry = ::readdir(dir)) {
    const long number = package_number(entry->d_name);
    if (number >= 0) packages.emplace_back(number, entry->d_name);
  }
  ::closedir(dir);
  if (packages.empty()) {
    *why = "no package zone (intel-rapl:N) in " + root;
    return {};
  }
  // readdir order is arbitrary; package order must match between runs and match the names.
  std::sort(packages.begin(), packages.end());

  std::vector<RaplZone> zones;
  std::vector<std::string> skipped;
  for (const auto& [number, entry] : packages) {
    RaplZone zone;
    zone.path = root + "/" + entry;
    Result<uint64_t> range = read_counter(zone.path + "/max_energy_range_uj");
    if (!range.ok()) {
      skipped.push_back(range.error().message);
      continue;
    }
    zone.max_range_uj = range.value();
    Result<uint64_t> energy = read_rapl_uj(zone);
    if (!energy.ok()) {
      skipped.push_back(energy.error().message);
      continue;
    }
    // The name only labels the zone in messages, so a missing one is not worth losing it over.
    Result<std::string> name = read_bounded(zone.path + "/name");
    zone.name = name.ok() ? trim(name.value()) : entry;
    if (zone.name.empty()) zone.name = entry;
    zones.push_back(std::move(zone));
  }
  if (!skipped.empty()) {
    // One reason is enough for a one-line description; the zones of a machine fail alike.
    std::string reason = skipped.front();
    if (skipped.size() > 1) reason += " (and " + std::to_string(skipped.size() - 1) + " more)";
    *why = zones.empty() ? reason
                         : "skipped " + std::to_string(skipped.size()) + " zone(s): " + reason;
  }
  return zones;
}

Result<uint64_t> read_rapl_uj(const RaplZone& zone) {
  const std::string path = zone.path + "/energy_uj";
  Result<uint64_t> energy = read_counter(path);
  if (!energy.ok()) return energy;
  // A value past the range would make counter_delta's wraparound arithmetic wrong.
  if (zone.max_range_uj != 0 && energy.value() > zone.max_range_uj) {
    return Error{path + ": " + std::to_string(energy.value()) + " exceeds max_energy_range_uj " +
                 std::to_string(zone.max_range_uj)};
  }
  return energy;
}

uint64_t counter_delta(uint64_t a, uint64_t b, uint64_t max_range) {
  if (b >= a) return b - a;
  // a past the range means the range is unknown; all that is certain is the count since 0.
  if (a > max_range) return b;
  return (max_range - a) + b;
}

// ---------------------------------------------------------------------------------------------
// EnergyMeter.

EnergyMeter::EnergyMeter() = default;
EnergyMeter::EnergyMeter(EnergyMeter&&) noexcept = default;
EnergyMeter& EnergyMeter::operator=(EnergyMeter&&) noexcept = default;
EnergyMeter::~EnergyMeter() = default;

EnergyMeter EnergyMeter::open(const std::string& rapl_root) {
  EnergyMeter meter;
  Result<std::unique_ptr<Nvml>> nvml = Nvml::open();
  if (!nvml.ok()) {
    meter.nvml_why_ = nvml.error().message;
  } else if (nvml.value()->device_count() == 0) {
    meter.nvml_why_ = "no GPU";
  } else {
    // A pre-Volta board has no energy counter; finding out now keeps read() always valid.
    for (int i = 0; i < nvml.value()->device_count() && meter.nvml_why_.empty(); ++i) {
      Result<uint64_t> energy = nvml.value()->total_energy_mj(i);
      if (!energy.ok()) meter.nvml_why_ = energy.error().message;
    }
    if (meter.nvml_why_.empty()) meter.nvml_ = std::move(nvml).value();
  }
  meter.zones_ = find_rapl_zones(rapl_root, &meter.rapl_why_);
  return meter;
}

bool EnergyMeter::has_gpu() const {
  return nvml_ != nullptr;
}
bool EnergyMeter::has_cpu() const {
  return !zones_.empty();
}

EnergyMeter::Reading EnergyMeter::read() const {
  Reading reading;
  reading.valid = true;
  if (nvml_ != nullptr) {
    for (int i = 0; i < nvml_->device_count(); ++i) {
      Result<uint64_t> energy = nvml_->total_energy_mj(i);
      reading.valid = reading.valid && energy.ok();
      reading.gpu_mj.push_back(energy.ok() ? energy.value() : 0);
    }
  }
  for (const RaplZone& zone : zones_) {
    Result<uint64_t> energy = read_rapl_uj(zone);
    reading.valid = reading.valid && energy.ok();
    reading.rapl_uj.push_back(energy.ok() ? energy.value() : 0);
  }
  return reading;
}

double EnergyMeter::gpu_joules_between(const Reading& a, const Reading& b) const {
  const size_t count = nvml_ != nullptr ? static_cast<size_t>(nvml_->device_count()) : 0;
  if (count == 0 || !a.valid || !b.valid || a.gpu_mj.size() != count || b.gpu_mj.size() != count) {
    return std::numeric_limits<double>::quiet_NaN();
  }
  uint64_t millijoules = 0;
  for (size_t i = 0; i < count; ++i) {
    // The counter is 64-bit from driver load, so going back means the driver was reloaded.
    if (b.gpu_mj[i] < a.gpu_mj[i]) return std::numeric_limits<double>::quiet_NaN();
    millijoules += b.gpu_mj[i] - a.gpu_mj[i];
  }
  return millijoules / 1e3;
}

double EnergyMeter::cpu_joules_between(const Reading& a, const Reading& b) const {
  const size_t count = zones_.size();
  if (count == 0 || !a.valid || !b.valid || a.rapl_uj.size() != count ||
      b.rapl_uj.size() != count) {
    return std::numeric_limits<double>::quiet_NaN();
  }
  uint64_t microjoules = 0;
  for (size_t i = 0; i < count; ++i) {
    microjoules += counter_delta(a.rapl_uj[i], b.rapl_uj[i], zones_[i].max_range_uj);
  }
  return microjoules / 1e6;
}

double EnergyMeter::joules_between(const Reading& a, const Reading& b) const {
  if (!available()) return std::numeric_limits<double>::quiet_NaN();
  double joules = 0;
  if (has_gpu()) joules += gpu_joules_between(a, b);
  if (has_cpu()) joules += cpu_joules_between(a, b);
  return joules;  // NaN propagates from either part
}

std::string EnergyMeter::describe() const {
  if (!available()) {
    return "energy: no counter (NVML: " + nvml_why_ + "; RAPL: " + rapl_why_ +
           "); energy is modelled only";
  }
  std::string line = "energy: NVML ";
  if (has_gpu()) {
    for (int i = 0; i < nvml_->device_count(); ++i) {
      Result<NvmlGpuInfo> info = nvml_->device_info(i);
      line += (i > 0 ? ", gpu" : "gpu") + std::to_string(i);
      if (info.ok()) line += " (" + info.value().name + ")";
    }
  } else {
    line += "none (" + nvml_why_ + ")";
  }
  line += "; RAPL ";
  if (has_cpu()) {
    for (size_t i = 0; i < zones_.size(); ++i) line += (i > 0 ? ", " : "") + zones_[i].name;
    if (!rapl_why_.empty()) line += " (" + rapl_why_ + ")";
  } else {
    line += "none (" + rapl_why_ + ")";
  }
  return line;
}

}  // namespace ramstream::planner
