// Logging: one line per event, to stderr, with a UTC timestamp and a level.
//
//   QBD_LOG_INFO("volume {} part {}: {}", vol, part, state);
//
// Lines are written with one write(2) call, so lines from different threads never interleave.
// Thread-safety: safe from any thread.
#pragma once

#include <fmt/format.h>

#include <string_view>

namespace qbd {

enum class LogLevel { kDebug = 0, kInfo, kWarn, kError, kOff };  // kOff: nothing is logged

// Messages below `level` are dropped. Default kInfo.
void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
void LogLine(LogLevel level, std::string_view msg);

template <typename... Args>
void Log(LogLevel level, fmt::format_string<Args...> f, Args&&... args) {
  if (level < GetLogLevel()) return;
  LogLine(level, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace qbd

#define QBD_LOG_DEBUG(...) ::qbd::Log(::qbd::LogLevel::kDebug, __VA_ARGS__)
#define QBD_LOG_INFO(...) ::qbd::Log(::qbd::LogLevel::kInfo, __VA_ARGS__)
#define QBD_LOG_WARN(...) ::qbd::Log(::qbd::LogLevel::kWarn, __VA_ARGS__)
#define QBD_LOG_ERROR(...) ::qbd::Log(::qbd::LogLevel::kError, __VA_ARGS__)

// Always on: aborts with a message where continuing could corrupt data.
#define QBD_CHECK(cond, ...)                                                         \
  do {                                                                               \
    if (!(cond)) ::qbd::CheckFailed(#cond, __FILE__, __LINE__, fmt::format(__VA_ARGS__)); \
  } while (0)

namespace qbd {
[[noreturn]] void CheckFailed(const char* cond, const char* file, int line, const std::string& msg);
}  // namespace qbd
