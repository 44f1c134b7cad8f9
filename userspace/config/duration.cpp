#include "duration.hpp"

#include <cctype>
#include <cstdint>
#include <string_view>

namespace tapwire::config {

namespace {

struct Unit {
  std::string_view name;
  int64_t ns;
};
// parse_duration takes the longest name that matches, so "5ms" is 5 milliseconds.
constexpr Unit kUnits[] = {{"ns", 1},          {"us", 1000},           {"\xC2\xB5s", 1000},
                           {"ms", 1000000},    {"s", 1000000000},      {"m", 60ll * 1000000000},
                           {"h", 3600ll * 1000000000}};

}  // namespace

std::optional<std::chrono::nanoseconds> parse_duration(const std::string& raw) {
  std::string_view text = raw;
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) text.remove_prefix(1);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.remove_suffix(1);
  if (text == "0") return std::chrono::nanoseconds(0);
  if (text.empty()) return std::nullopt;

  unsigned __int128 total = 0;
  constexpr unsigned __int128 kMax = INT64_MAX;
  size_t i = 0;
  while (i < text.size()) {
    // <digits>[.<digits>]
    unsigned __int128 whole = 0, frac = 0, frac_scale = 1;
    size_t digits = 0;
    for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); i++, digits++) {
      whole = whole * 10 + static_cast<unsigned>(text[i] - '0');
      if (whole > kMax) return std::nullopt;
    }
    if (i < text.size() && text[i] == '.') {
      i++;
      for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); i++, digits++) {
        if (frac_scale < 1000000000000000000ull) {  // finer than 1e-18 of a unit cannot matter
          frac = frac * 10 + static_cast<unsigned>(text[i] - '0');
          frac_scale *= 10;
        }
      }
    }
    if (digits == 0) return std::nullopt;
    const Unit* unit = nullptr;
    for (const auto& u : kUnits) {
      if (text.substr(i, u.name.size()) == u.name && (!unit || u.name.size() > unit->name.size())) unit = &u;
    }
    if (!unit) return std::nullopt;  // a unit is required (except for a lone "0")
    i += unit->name.size();
    total += whole * static_cast<unsigned __int128>(unit->ns) + frac * static_cast<unsigned __int128>(unit->ns) / frac_scale;
    if (total > kMax) return std::nullopt;
  }
  return std::chrono::nanoseconds(static_cast<int64_t>(total));
}

std::string format_duration(std::chrono::nanoseconds d) {
  int64_t ns = d.count();
  if (ns == 0) return "0";
  for (auto it = std::rbegin(kUnits); it != std::rend(kUnits); ++it) {
    if (it->name == "\xC2\xB5s") continue;
    if (ns % it->ns == 0) return std::to_string(ns / it->ns) + std::string(it->name);
  }
  return std::to_string(ns) + "ns";
}

}  // namespace tapwire::config
