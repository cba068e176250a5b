// Logging: thin wrapper over spdlog so that call sites stay short. Logs go to stderr so they never
// mix with the guest's serial console on stdout.
#pragma once

#include <spdlog/spdlog.h>

namespace keel::log {

using spdlog::debug;
using spdlog::error;
using spdlog::info;
using spdlog::warn;

}  // namespace keel::log
