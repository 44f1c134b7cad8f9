// Time arguments as users type them (--from/--to) and timestamps as tapwire
// prints them. Everything is nanoseconds since the Unix epoch, CLOCK_REALTIME.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tapwire {

struct TimeParseResult {
  std::optional<uint64_t> ns;  // set on success
  std::string error;  // why it failed, one short phrase; empty on success
};

// Accepts:
//   RFC 3339        2026-11-23T01:52:00Z, 2026-11-23T01:52:00.123456789+02:00
//                   ('t'/'z' in lower case and a space instead of 'T' too;
//                   fractions past nanoseconds are cut, not rounded)
//   Unix seconds    1795398720, 1795398720.25
//   relative        -30s, -5m, -2h, -1d, -250ms, -1h30m (before `now_ns`), now
// Times before the epoch are rejected.
TimeParseResult parse_time_arg(std::string_view text, uint64_t now_ns);

// CLOCK_REALTIME now.
uint64_t realtime_now_ns();

// 2026-11-23T01:52:00.123456789Z (always nine fraction digits, UTC).
std::string format_rfc3339_ns(uint64_t ns);

}  // namespace tapwire
