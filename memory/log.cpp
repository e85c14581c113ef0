#include "memory/log.h"

#include <cstdio>
#include <mutex>
#include <utility>

namespace ramstream::memory {

namespace {

std::mutex& sink_mutex() {
  static std::mutex mu;
  return mu;
}

WarningSink& sink() {
  static WarningSink s;
  return s;
}

}  // namespace

void log_warning(const std::string& message) {
  std::lock_guard<std::mutex> lock(sink_mutex());
  if (sink()) {
    sink()(message);
    return;
  }
  // One fprintf call, so that concurrent warnings from other libraries do not interleave in it.
  std::fprintf(stderr, "ramstream: warning: %s\n", message.c_str());
}

WarningSink set_warning_sink_for_testing(WarningSink s) {
  std::lock_guard<std::mutex> lock(sink_mutex());
  return std::exchange(sink(), std::move(s));
}

}  // namespace ramstream::memory
