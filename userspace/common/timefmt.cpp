#include "timefmt.hpp"

#include <time.h>

#include <cstdio>

#include "clock.hpp"

namespace tapwire {
namespace {

constexpr uint64_t kNsPerSec = 1000000000ull;
using u128 = unsigned __int128;

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

void civil_from_days(int64_t z, int64_t& y, unsigned& m, unsigned& d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  d = doy - (153 * mp + 2) / 5 + 1;
  m = mp < 10 ? mp + 3 : mp - 9;
  y = static_cast<int64_t>(yoe) + era * 400 + (m <= 2);
}

unsigned days_in_month(int64_t y, unsigned m) {
  static constexpr unsigned kDays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return m == 2 && leap ? 29 : kDays[m - 1];
}

// Reads exactly `n` digits at s[pos..]; advances pos.
bool fixed_digits(std::string_view s, size_t& pos, size_t n, unsigned& out) {
  if (pos + n > s.size()) return false;
  unsigned v = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!is_digit(s[pos + i])) return false;
    v = v * 10 + static_cast<unsigned>(s[pos + i] - '0');
  }
  out = v;
  pos += n;
  return true;
}

bool expect(std::string_view s, size_t& pos, char c) {
  if (pos >= s.size() || s[pos] != c) return false;
  ++pos;
  return true;
}

// "123" or "123.456" scaled by `unit_ns`; false on syntax error or overflow.
bool scaled_number(std::string_view s, size_t& pos, uint64_t unit_ns, u128& out) {
  const size_t start = pos;
  u128 whole = 0;
  while (pos < s.size() && is_digit(s[pos])) {
    whole = whole * 10 + static_cast<unsigned>(s[pos] - '0');
    if (whole > UINT64_MAX) return false;
    ++pos;
  }
  const bool have_whole = pos > start;
  u128 frac_ns = 0;
  if (pos < s.size() && s[pos] == '.') {
    ++pos;
    const size_t fstart = pos;
    u128 scale = unit_ns;
    while (pos < s.size() && is_digit(s[pos])) {
      // Digits finer than a nanosecond are cut.
      if (scale >= 10) {
        scale /= 10;
        frac_ns += scale * static_cast<unsigned>(s[pos] - '0');
      }
      ++pos;
    }
    if (pos == fstart) return false;
  } else if (!have_whole) {
    return false;
  }
  out = whole * unit_ns + frac_ns;
  return out <= UINT64_MAX;
}

TimeParseResult fail(std::string why) { return TimeParseResult{std::nullopt, std::move(why)}; }
TimeParseResult ok(uint64_t ns) { return TimeParseResult{ns, {}}; }

uint64_t unit_to_ns(std::string_view unit) {
  if (unit == "ns") return 1;
  if (unit == "us") return 1000;
  if (unit == "ms") return 1000000;
  if (unit == "s") return kNsPerSec;
  if (unit == "m") return 60 * kNsPerSec;
  if (unit == "h") return 3600 * kNsPerSec;
  if (unit == "d") return 86400 * kNsPerSec;
  return 0;
}

TimeParseResult parse_relative(std::string_view s, uint64_t now_ns) {
  // s starts with '-': one or more <number><unit> groups, e.g. -1h30m.
  size_t pos = 1;
  u128 total = 0;
  if (pos >= s.size()) return fail("a relative time needs a number and a unit, e.g. -5m");
  while (pos < s.size()) {
    const size_t num_start = pos;
    while (pos < s.size() && (is_digit(s[pos]) || s[pos] == '.')) ++pos;
    const size_t unit_start = pos;
    while (pos < s.size() && s[pos] >= 'a' && s[pos] <= 'z') ++pos;
    const std::string_view unit = s.substr(unit_start, pos - unit_start);
    if (unit.empty()) return fail("a relative time needs a unit (ns, us, ms, s, m, h, d), e.g. -5m");
    const uint64_t unit_ns = unit_to_ns(unit);
    if (unit_ns == 0) return fail("unknown unit '" + std::string(unit) + "' (use ns, us, ms, s, m, h or d)");
    const std::string_view num = s.substr(num_start, unit_start - num_start);
    size_t npos = 0;
    u128 v = 0;
    if (num.empty() || !scaled_number(num, npos, unit_ns, v) || npos != num.size())
      return fail("bad number '" + std::string(num) + "' in relative time");
    total += v;
    if (total > UINT64_MAX) return fail("relative time is too large");
  }
  if (total > now_ns) return fail("relative time reaches before 1970");
  return ok(now_ns - static_cast<uint64_t>(total));
}

TimeParseResult parse_unix(std::string_view s) {
  size_t pos = 0;
  u128 v = 0;
  if (!scaled_number(s, pos, kNsPerSec, v) || pos != s.size()) return fail("bad Unix time (expected seconds, e.g. 1795398720.5)");
  return ok(static_cast<uint64_t>(v));
}

TimeParseResult parse_rfc3339(std::string_view s) {
  static const char* kSyntax = "not a time: expected RFC 3339 (2026-11-23T01:52:00Z), Unix seconds or a relative time (-5m)";
  size_t pos = 0;
  unsigned year, month, day, hour, minute, second;
  if (!fixed_digits(s, pos, 4, year) || !expect(s, pos, '-') || !fixed_digits(s, pos, 2, month) ||
      !expect(s, pos, '-') || !fixed_digits(s, pos, 2, day))
    return fail(kSyntax);
  if (pos >= s.size() || (s[pos] != 'T' && s[pos] != 't' && s[pos] != ' '))
    return fail("RFC 3339 time needs a time of day and a zone, e.g. 2026-11-23T01:52:00Z");
  ++pos;
  if (!fixed_digits(s, pos, 2, hour) || !expect(s, pos, ':') || !fixed_digits(s, pos, 2, minute) ||
      !expect(s, pos, ':') || !fixed_digits(s, pos, 2, second))
    return fail("bad time of day (expected HH:MM:SS)");
  uint64_t frac_ns = 0;
  if (pos < s.size() && s[pos] == '.') {
    ++pos;
    const size_t fstart = pos;
    uint64_t scale = kNsPerSec;
    while (pos < s.size() && is_digit(s[pos])) {
      if (scale >= 10) {
        scale /= 10;
        frac_ns += scale * static_cast<unsigned>(s[pos] - '0');
      }
      ++pos;
    }
    if (pos == fstart) return fail("bad fraction of a second");
  }
  if (pos >= s.size()) return fail("RFC 3339 time needs a zone: Z or an offset like +02:00");
  int64_t offset_s = 0;
  if (s[pos] == 'Z' || s[pos] == 'z') {
    ++pos;
  } else if (s[pos] == '+' || s[pos] == '-') {
    const int sign = s[pos] == '-' ? -1 : 1;
    ++pos;
    unsigned oh, om;
    if (!fixed_digits(s, pos, 2, oh) || !expect(s, pos, ':') || !fixed_digits(s, pos, 2, om) || oh > 23 || om > 59)
      return fail("bad zone offset (expected +HH:MM or -HH:MM)");
    offset_s = sign * static_cast<int64_t>(oh * 3600 + om * 60);
  } else {
    return fail("RFC 3339 time needs a zone: Z or an offset like +02:00");
  }
  if (pos != s.size()) return fail("unexpected text after the time");
  if (month < 1 || month > 12) return fail("month out of range");
  if (day < 1 || day > days_in_month(year, month)) return fail("day out of range for the month");
  if (hour > 23 || minute > 59 || second > 60) return fail("time of day out of range");
  // A leap second (:60) counts as the first second of the next minute.
  const int64_t secs = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset_s;
  if (secs < 0) return fail("time is before 1970");
  const u128 ns = static_cast<u128>(secs) * kNsPerSec + frac_ns;
  if (ns > UINT64_MAX) return fail("time is too far in the future");
  return ok(static_cast<uint64_t>(ns));
}

}  // namespace

TimeParseResult parse_time_arg(std::string_view text, uint64_t now_ns) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  if (text.empty()) return fail("empty time");
  if (text == "now") return ok(now_ns);
  if (text.front() == '-') return parse_relative(text, now_ns);
  bool numeric = true;
  for (char c : text) numeric = numeric && (is_digit(c) || c == '.');
  if (numeric) return parse_unix(text);
  return parse_rfc3339(text);
}

uint64_t realtime_now_ns() { return clock_ns(CLOCK_REALTIME); }

std::string format_rfc3339_ns(uint64_t ns) {
  const uint64_t secs = ns / kNsPerSec;
  const uint64_t frac = ns % kNsPerSec;
  int64_t y;
  unsigned m, d;
  civil_from_days(static_cast<int64_t>(secs / 86400), y, m, d);
  const uint64_t sod = secs % 86400;
  char buf[48];
  std::snprintf(buf, sizeof buf, "%04lld-%02u-%02uT%02u:%02u:%02u.%09lluZ", static_cast<long long>(y), m, d,
                static_cast<unsigned>(sod / 3600), static_cast<unsigned>(sod / 60 % 60), static_cast<unsigned>(sod % 60),
                static_cast<unsigned long long>(frac));
  return buf;
}

}  // namespace tapwire
