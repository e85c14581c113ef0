// Progress of long work as text for a log without a TTY: how much is done of the total, the
// percent, the time elapsed and the estimated time left (from the mean rate so far). Used for the
// training steps and for evaluations; pure functions of their inputs, so the caller owns the clock.
//
//   ProgressClock clock;                                      // starts now
//   std::fprintf(log, "eval: %s\n", progress_text(16, 64, clock.seconds(), "rows").c_str());
//   // -> "eval: 16/64 rows (25%), elapsed 4.0s, eta 12s"
//   format_duration(3725)                                     // -> "1h02m"
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

namespace ramstream::trainer {

// Seconds as a person reads them: "0.4s", "42s", "3m05s", "1h02m"; "?" when not finite or < 0.
inline std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  char buf[32];
  if (seconds < 10) {
    std::snprintf(buf, sizeof buf, "%.1fs", seconds);
  } else if (seconds < 60) {
    std::snprintf(buf, sizeof buf, "%.0fs", seconds);
  } else if (seconds < 3600) {
    const long long s = std::llround(seconds);
    std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  } else {
    const long long m = std::llround(seconds / 60);
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", m / 60, m % 60);
  }
  return buf;
}

// "done/total unit (pct%), elapsed E, eta R": the time left assumes the rate so far of the units
// done since the clock started, `done - done_before` (a resumed run starts at done_before); eta is
// "?" while none is done. `unit` may be "" (then "3/10 (30%), ...").
inline std::string progress_text(int64_t done, int64_t total, double elapsed_seconds,
                                 const std::string& unit = "", int64_t done_before = 0) {
  const double pct = total > 0 ? 100.0 * double(done) / double(total) : 100.0;
  const int64_t timed = done - done_before;
  const double eta = timed > 0 ? elapsed_seconds / double(timed) * double(total - done) : NAN;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%lld/%lld", (long long)done, (long long)total);
  std::string text = buf;
  if (!unit.empty()) text += " " + unit;
  std::snprintf(buf, sizeof buf, " (%.0f%%)", std::floor(pct));
  text += buf;
  return text + ", elapsed " + format_duration(elapsed_seconds) + ", eta " + format_duration(eta);
}

// Monotonic seconds since construction (or the last restart()).
class ProgressClock {
 public:
  ProgressClock() : start_(std::chrono::steady_clock::now()) {}
  void restart() { start_ = std::chrono::steady_clock::now(); }
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

}  // namespace ramstream::trainer
