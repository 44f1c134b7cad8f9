#include "units.hpp"

#include <cctype>
#include <cstdio>

namespace tapwire {

std::optional<uint64_t> parse_size(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) i++;
  if (i == text.size() || !std::isdigit(static_cast<unsigned char>(text[i]))) return std::nullopt;
  uint64_t v = 0;
  for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); i++) {
    uint64_t d = static_cast<uint64_t>(text[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) i++;
  std::string unit;
  for (; i < text.size(); i++) unit += static_cast<char>(std::tolower(static_cast<unsigned char>(text[i])));
  int shift;
  if (unit.empty() || unit == "b")
    shift = 0;
  else if (unit == "k" || unit == "ki" || unit == "kb" || unit == "kib")
    shift = 10;
  else if (unit == "m" || unit == "mi" || unit == "mb" || unit == "mib")
    shift = 20;
  else if (unit == "g" || unit == "gi" || unit == "gb" || unit == "gib")
    shift = 30;
  else if (unit == "t" || unit == "ti" || unit == "tb" || unit == "tib")
    shift = 40;
  else
    return std::nullopt;
  if (shift && v > (UINT64_MAX >> shift)) return std::nullopt;
  return v << shift;
}

std::string format_size(uint64_t bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    u++;
  }
  char buf[32];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  else
    std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
  return buf;
}

}  // namespace tapwire
