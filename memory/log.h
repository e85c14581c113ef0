// Warnings of memory/: a NUMA binding or a pinning that was asked for and did not happen. They go
// through one function so that tests can capture them and the project's logger can take them over
// by changing log.cpp alone.
//
// spdlog is deliberately not used in memory/: the CUDA libtorch 2.x puts its own fmt 12 headers on
// the include path of every target linking it (through ramstream_util), and Debian's spdlog 1.10
// does not compile against them.
//
//   log_warning("param store: could not pin 18.3 GiB ...");  // "ramstream: warning: ..." on stderr
//   std::vector<std::string> seen;
//   set_warning_sink_for_testing([&](const std::string& m) { seen.push_back(m); });
#pragma once

#include <functional>
#include <string>

namespace ramstream::memory {

void log_warning(const std::string& message);

using WarningSink = std::function<void(const std::string&)>;
// Routes warnings to `sink` instead of stderr; an empty sink restores stderr. Returns the
// previous sink.
WarningSink set_warning_sink_for_testing(WarningSink sink);

}  // namespace ramstream::memory
