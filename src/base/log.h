// Logging: thin wrapper over spdlog so that call sites stay short. keel's own messages go to
// stderr, never to stdout, where `keel run` writes the guest's console. One style for every
// message keel prints: "keel: TEXT", "keel: warning: TEXT", "keel: error: TEXT" (and
// "keel: debug: TEXT" with -v); the daemon and a VMM with a log file put a timestamp in front.
#pragma once

#include <spdlog/spdlog.h>

namespace keel::log {

using spdlog::debug;
using spdlog::error;
using spdlog::info;
using spdlog::warn;

enum class Level { kQuiet, kNormal, kVerbose };  // -q: warnings and errors; -v: debug too

// Makes spdlog's default logger write to stderr in keel's style (replacing its default, which
// writes to stdout). Call first thing in main(); again to change the level or the timestamps.
void init(Level level = Level::kNormal, bool timestamps = false);
// Puts the date and time in front of every line from now on, at the level init() set: the
// daemon's log and a VMM's log file are read later.
void add_timestamps();

}  // namespace keel::log
