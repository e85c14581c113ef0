#include "planner/energy_meter.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <vector>

namespace ramstream::planner {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kMaxRangeUj = 262143328850;  // a typical Intel package range

// A powercap tree in a fresh temp folder, removed at the end of each test.
class FakePowercap : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "ramstream-powercap-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    root_ = pattern;
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(root_, ignored);
  }

  static void write(const fs::path& path, const std::string& text) {
    std::ofstream out(path, std::ios::trunc);
    out << text;
    ASSERT_TRUE(out.good()) << path;
  }

  // A zone folder as the kernel lays it out.
  fs::path add_zone(const std::string& entry, const std::string& name, uint64_t energy_uj,
                    uint64_t max_range_uj = kMaxRangeUj) {
    const fs::path zone = fs::path(root_) / entry;
    fs::create_directories(zone);
    write(zone / "name", name + "\n");
    write(zone / "energy_uj", std::to_string(energy_uj) + "\n");
    write(zone / "max_energy_range_uj", std::to_string(max_range_uj) + "\n");
    return zone;
  }

  void set_energy(const std::string& entry, uint64_t energy_uj) {
    write(fs::path(root_) / entry / "energy_uj", std::to_string(energy_uj) + "\n");
  }

  // Two packages, a core subzone of the first, the control-type folder the kernel also puts
  // there, and a third package whose energy_uj cannot be read (a folder, which stays unreadable
  // as a number even when the tests run as root).
  void add_typical_tree() {
    add_zone("intel-rapl:0", "package-0", 1000);
    add_zone("intel-rapl:0:0", "core", 500);
    add_zone("intel-rapl:1", "package-1", 2000);
    const fs::path broken = add_zone("intel-rapl:2", "package-2", 0);
    fs::remove(broken / "energy_uj");
    fs::create_directory(broken / "energy_uj");
    fs::create_directories(fs::path(root_) / "intel-rapl");
  }

  std::string root_;
};

TEST_F(FakePowercap, FindsPackageZonesOnlyInOrder) {
  add_typical_tree();
  std::string why;
  const std::vector<RaplZone> zones = find_rapl_zones(root_, &why);
  ASSERT_EQ(zones.size(), 2u) << why;
  EXPECT_EQ(zones[0].name, "package-0");
  EXPECT_EQ(zones[0].path, root_ + "/intel-rapl:0");
  EXPECT_EQ(zones[0].max_range_uj, kMaxRangeUj);
  EXPECT_EQ(zones[1].name, "package-1");
  EXPECT_EQ(zones[1].path, root_ + "/intel-rapl:1");
  // The skipped zone is reported even though others were usable.
  EXPECT_NE(why.find("intel-rapl:2/energy_uj"), std::string::npos) << why;
}

TEST_F(FakePowercap, OrdersPackagesByNumberNotByName) {
  add_zone("intel-rapl:10", "package-10", 1);
  add_zone("intel-rapl:2", "package-2", 1);
  std::string why;
  const std::vector<RaplZone> zones = find_rapl_zones(root_, &why);
  ASSERT_EQ(zones.size(), 2u) << why;
  EXPECT_EQ(zones[0].name, "package-2");
  EXPECT_EQ(zones[1].name, "package-10");
  EXPECT_TRUE(why.empty()) << why;
}

TEST_F(FakePowercap, MissingNameFallsBackToFolderName) {
  const fs::path zone = add_zone("intel-rapl:0", "package-0", 1);
  fs::remove(zone / "name");
  std::string why;
  const std::vector<RaplZone> zones = find_rapl_zones(root_, &why);
  ASSERT_EQ(zones.size(), 1u) << why;
  EXPECT_EQ(zones[0].name, "intel-rapl:0");
}

TEST_F(FakePowercap, NoPowercapFolder) {
  std::string why;
  EXPECT_TRUE(find_rapl_zones(root_ + "/absent", &why).empty());
  EXPECT_NE(why.find("no powercap folder"), std::string::npos) << why;
  EXPECT_NE(why.find(root_ + "/absent"), std::string::npos) << why;
}

TEST_F(FakePowercap, NoPackageZone) {
  fs::create_directories(fs::path(root_) / "intel-rapl");
  fs::create_directories(fs::path(root_) / "intel-rapl:0:0");
  fs::create_directories(fs::path(root_) / "intel-rapl:x");
  fs::create_directories(fs::path(root_) / "dtpm");
  std::string why;
  EXPECT_TRUE(find_rapl_zones(root_, &why).empty());
  EXPECT_NE(why.find("no package zone"), std::string::npos) << why;
}

TEST_F(FakePowercap, NoReadableZoneGivesTheReason) {
  add_zone("intel-rapl:0", "package-0", 0);
  write(fs::path(root_) / "intel-rapl:0" / "energy_uj", "garbage\n");
  std::string why;
  EXPECT_TRUE(find_rapl_zones(root_, &why).empty());
  EXPECT_NE(why.find("intel-rapl:0/energy_uj: not a number: 'garbage\\x0a'"), std::string::npos)
      << why;
}

TEST_F(FakePowercap, UnreadableEnergyNamesTheRootRule) {
  if (::geteuid() == 0) GTEST_SKIP() << "root reads a file of mode 000";
  const fs::path zone = add_zone("intel-rapl:0", "package-0", 0);
  ASSERT_EQ(::chmod((zone / "energy_uj").c_str(), 0), 0);
  std::string why;
  EXPECT_TRUE(find_rapl_zones(root_, &why).empty());
  EXPECT_NE(why.find("not readable (root only since Linux 5.10)"), std::string::npos) << why;
}

TEST_F(FakePowercap, ReadsCounter) {
  add_zone("intel-rapl:0", "package-0", 123456789);
  std::string why;
  const std::vector<RaplZone> zones = find_rapl_zones(root_, &why);
  ASSERT_EQ(zones.size(), 1u) << why;
  Result<uint64_t> energy = read_rapl_uj(zones[0]);
  ASSERT_TRUE(energy.ok()) << energy.error().message;
  EXPECT_EQ(energy.value(), 123456789u);
  set_energy("intel-rapl:0", 0);
  energy = read_rapl_uj(zones[0]);
  ASSERT_TRUE(energy.ok()) << energy.error().message;
  EXPECT_EQ(energy.value(), 0u);
}

TEST_F(FakePowercap, RejectsMalformedCounters) {
  const fs::path zone_path = add_zone("intel-rapl:0", "package-0", 1);
  const RaplZone zone{zone_path.string(), "package-0", kMaxRangeUj};
  const std::string energy_file = (zone_path / "energy_uj").string();
  struct Case {
    std::string text;
    std::string expected;
  };
  const Case cases[] = {
      {"", "not a number: ''"},
      {"\n", "not a number: '\\x0a'"},
      {"12abc\n", "not a number: '12abc\\x0a'"},
      {"-5\n", "not a number: '-5\\x0a'"},
      {"+5\n", "not a number"},
      {" 5\n", "not a number"},
      {"5\n\n", "not a number"},
      {"0x10\n", "not a number"},
      {"99999999999999999999999\n", "does not fit 64 bits"},
      {std::string(65, '1'), "longer than 64 bytes"},
      {std::string(100000, '7'), "longer than 64 bytes"},
      {std::to_string(kMaxRangeUj + 1) + "\n", "exceeds max_energy_range_uj"},
  };
  for (const Case& c : cases) {
    write(energy_file, c.text);
    Result<uint64_t> energy = read_rapl_uj(zone);
    ASSERT_FALSE(energy.ok()) << "accepted " << c.text.substr(0, 30);
    EXPECT_NE(energy.error().message.find(energy_file + ": "), std::string::npos)
        << energy.error().message;
    EXPECT_NE(energy.error().message.find(c.expected), std::string::npos) << energy.error().message;
    EXPECT_LT(energy.error().message.size(), energy_file.size() + 200) << "message not bounded";
  }
  // The largest value sysfs can hold is fine, with or without a newline.
  write(energy_file, std::to_string(kMaxRangeUj));
  ASSERT_TRUE(read_rapl_uj(zone).ok());
}

TEST_F(FakePowercap, RejectsFolderAndFifo) {
  const fs::path zone_path = add_zone("intel-rapl:0", "package-0", 1);
  const RaplZone zone{zone_path.string(), "package-0", kMaxRangeUj};
  fs::remove(zone_path / "energy_uj");
  fs::create_directory(zone_path / "energy_uj");
  Result<uint64_t> energy = read_rapl_uj(zone);
  ASSERT_FALSE(energy.ok());
  EXPECT_NE(energy.error().message.find("not a regular file"), std::string::npos)
      << energy.error().message;

  fs::remove(zone_path / "energy_uj");
  ASSERT_EQ(::mkfifo((zone_path / "energy_uj").c_str(), 0600), 0);
  energy = read_rapl_uj(zone);  // must return, not wait for a writer
  ASSERT_FALSE(energy.ok());
  EXPECT_NE(energy.error().message.find("not a regular file"), std::string::npos)
      << energy.error().message;
}

TEST(CounterDelta, HandlesWraparound) {
  EXPECT_EQ(counter_delta(100, 250, 1000), 150u);
  EXPECT_EQ(counter_delta(100, 100, 1000), 0u);
  EXPECT_EQ(counter_delta(900, 50, 1000), 150u);  // 100 to the top, then 50 from zero
  EXPECT_EQ(counter_delta(1000, 0, 1000), 0u);
  EXPECT_EQ(counter_delta(kMaxRangeUj - 5, 10, kMaxRangeUj), 15u);
  // A start past the range cannot be unwrapped; count from zero rather than underflow.
  EXPECT_EQ(counter_delta(2000, 30, 1000), 30u);
}

TEST_F(FakePowercap, MeterMeasuresCpuJoulesWithWraparound) {
  add_typical_tree();
  set_energy("intel-rapl:1", kMaxRangeUj - 1000000);  // 1 J before the wrap
  const EnergyMeter meter = EnergyMeter::open(root_);
  ASSERT_TRUE(meter.has_cpu()) << meter.describe();
  ASSERT_TRUE(meter.available());

  const EnergyMeter::Reading a = meter.read();
  ASSERT_TRUE(a.valid);
  ASSERT_EQ(a.rapl_uj.size(), 2u);
  EXPECT_EQ(a.rapl_uj[0], 1000u);
  EXPECT_EQ(a.rapl_uj[1], kMaxRangeUj - 1000000);

  set_energy("intel-rapl:0", 1000 + 2500000);  // +2.5 J
  set_energy("intel-rapl:1", 500000);          // wrapped: 1 J + 0.5 J
  set_energy("intel-rapl:0:0", 99999999);      // a subzone, already inside package-0
  const EnergyMeter::Reading b = meter.read();
  ASSERT_TRUE(b.valid);
  EXPECT_DOUBLE_EQ(meter.cpu_joules_between(a, b), 4.0);
  EXPECT_DOUBLE_EQ(meter.cpu_joules_between(a, a), 0.0);
  if (!meter.has_gpu()) {
    EXPECT_DOUBLE_EQ(meter.joules_between(a, b), 4.0);
    EXPECT_TRUE(std::isnan(meter.gpu_joules_between(a, b)));
  } else {
    EXPECT_GE(meter.joules_between(a, b), 4.0);
  }

  const std::string line = meter.describe();
  EXPECT_EQ(line.rfind("energy: NVML ", 0), 0u) << line;
  EXPECT_NE(line.find("RAPL package-0, package-1"), std::string::npos) << line;
  EXPECT_EQ(line.find("modelled only"), std::string::npos) << line;
  EXPECT_EQ(line.find('\n'), std::string::npos) << line;
}

TEST_F(FakePowercap, MeterMarksReadingInvalidWhenACounterFails) {
  add_zone("intel-rapl:0", "package-0", 1000);
  const EnergyMeter meter = EnergyMeter::open(root_);
  ASSERT_TRUE(meter.has_cpu()) << meter.describe();
  const EnergyMeter::Reading a = meter.read();
  ASSERT_TRUE(a.valid);
  write(fs::path(root_) / "intel-rapl:0" / "energy_uj", "oops\n");
  const EnergyMeter::Reading b = meter.read();
  EXPECT_FALSE(b.valid);
  EXPECT_TRUE(std::isnan(meter.cpu_joules_between(a, b)));
  EXPECT_TRUE(std::isnan(meter.joules_between(a, b)));
  EXPECT_TRUE(std::isnan(meter.joules_between(EnergyMeter::Reading{}, a)));
  // Readings of another meter (another zone count) are not mixed in.
  EnergyMeter::Reading foreign = a;
  foreign.rapl_uj.push_back(5);
  EXPECT_TRUE(std::isnan(meter.cpu_joules_between(a, foreign)));
}

TEST_F(FakePowercap, MeterSurvivesMove) {
  add_zone("intel-rapl:0", "package-0", 1000);
  EnergyMeter first = EnergyMeter::open(root_);
  EnergyMeter meter = std::move(first);
  ASSERT_TRUE(meter.has_cpu());
  const EnergyMeter::Reading a = meter.read();
  set_energy("intel-rapl:0", 3000);
  EXPECT_DOUBLE_EQ(meter.cpu_joules_between(a, meter.read()), 0.002);
}

TEST_F(FakePowercap, MeterWithoutCountersSaysWhy) {
  const EnergyMeter meter = EnergyMeter::open(root_ + "/absent");
  EXPECT_FALSE(meter.has_cpu());
  if (meter.has_gpu()) GTEST_SKIP() << "NVML works here: " << meter.describe();
  EXPECT_FALSE(meter.available());
  const EnergyMeter::Reading a = meter.read();
  EXPECT_TRUE(std::isnan(meter.joules_between(a, meter.read())));
  EXPECT_TRUE(std::isnan(meter.cpu_joules_between(a, a)));
  const std::string line = meter.describe();
  EXPECT_EQ(line.rfind("energy: no counter (NVML: ", 0), 0u) << line;
  EXPECT_NE(line.find("; RAPL: no powercap folder"), std::string::npos) << line;
  EXPECT_NE(line.find("); energy is modelled only"), std::string::npos) << line;
}

TEST(Nvml, MissingLibraryIsNamed) {
  Result<std::unique_ptr<Nvml>> nvml = Nvml::open("libramstream-no-such-nvml.so.1");
  ASSERT_FALSE(nvml.ok());
  EXPECT_NE(nvml.error().message.find("libramstream-no-such-nvml.so.1 not found"),
            std::string::npos)
      << nvml.error().message;
}

TEST(Nvml, LibraryWithoutNvmlNamesTheMissingSymbol) {
  Result<std::unique_ptr<Nvml>> nvml = Nvml::open("libm.so.6");
  ASSERT_FALSE(nvml.ok());
  EXPECT_NE(nvml.error().message.find("libm.so.6 lacks nvmlInit_v2"), std::string::npos)
      << nvml.error().message;
}

TEST(Nvml, RealDriverWhenPresent) {
  Result<std::unique_ptr<Nvml>> opened = Nvml::open();
  if (!opened.ok()) {
    EXPECT_FALSE(opened.error().message.empty());
    GTEST_SKIP() << "no NVML here: " << opened.error().message;
  }
  const Nvml& nvml = *opened.value();
  ASSERT_GE(nvml.device_count(), 1);
  Result<NvmlGpuInfo> info = nvml.device_info(0);
  ASSERT_TRUE(info.ok()) << info.error().message;
  EXPECT_EQ(info.value().index, 0);
  EXPECT_FALSE(info.value().name.empty());
  EXPECT_GT(info.value().memory_total_bytes, 0u);
  EXPECT_GE(info.value().power_limit_w, 0.0);
  Result<uint64_t> energy = nvml.total_energy_mj(0);
  ASSERT_TRUE(energy.ok()) << energy.error().message;
  EXPECT_GT(energy.value(), 0u);

  EXPECT_FALSE(nvml.device_info(-1).ok());
  EXPECT_FALSE(nvml.device_info(nvml.device_count()).ok());
  EXPECT_FALSE(nvml.total_energy_mj(nvml.device_count()).ok());
}

}  // namespace
}  // namespace ramstream::planner
