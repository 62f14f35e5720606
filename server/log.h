// Structured logging: one JSON object per line on stderr per event, e.g.
//   {"ts":"2024-05-01T12:00:00.123Z","level":"info","event":"startup",...}
// Lines are written whole under a lock, so concurrent events never interleave.
#pragma once

#include <string_view>

#include <nlohmann/json.hpp>

namespace lpdetr::server {

enum class LogLevel { kInfo, kWarning, kError };

void LogEvent(LogLevel level, std::string_view event, nlohmann::json fields = nlohmann::json::object());

}  // namespace lpdetr::server
