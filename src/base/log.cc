#include "base/log.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>

namespace keel::log {
namespace {

// %* in the pattern: "warning: ", "error: ", "debug: " or nothing for plain information.
class LevelPrefix : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    std::string_view prefix;
    switch (msg.level) {
      case spdlog::level::trace:
      case spdlog::level::debug: prefix = "debug: "; break;
      case spdlog::level::warn: prefix = "warning: "; break;
      case spdlog::level::err:
      case spdlog::level::critical: prefix = "error: "; break;
      default: break;
    }
    dest.append(prefix.data(), prefix.data() + prefix.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<LevelPrefix>();
  }
};

std::unique_ptr<spdlog::formatter> keel_formatter(bool timestamps) {
  auto formatter = std::make_unique<spdlog::pattern_formatter>();
  formatter->add_flag<LevelPrefix>('*').set_pattern(timestamps ? "%Y-%m-%d %H:%M:%S.%e keel: %*%v"
                                                               : "keel: %*%v");
  return formatter;
}

}  // namespace

void init(Level level, bool timestamps) {
  // A plain (uncoloured) stderr sink: no terminal ioctls, so it works under every seccomp list.
  auto logger = std::make_shared<spdlog::logger>("keel", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_formatter(keel_formatter(timestamps));
  logger->set_level(level == Level::kQuiet     ? spdlog::level::warn
                    : level == Level::kVerbose ? spdlog::level::debug
                                               : spdlog::level::info);
  logger->flush_on(spdlog::level::trace);  // every line at once: stderr is a log file for VMMs
  spdlog::set_default_logger(std::move(logger));
}

void add_timestamps() { spdlog::default_logger()->set_formatter(keel_formatter(true)); }

}  // namespace keel::log
