// Durations as users write them in tapwire.yaml: "5m", "2s", "1h30m", "250ms", "0".
#pragma once

#include <chrono>
#include <optional>
#include <string>

namespace tapwire::config {

// Go/Kubernetes-style: one or more <number><unit> terms, units ns, us (or µs),
// ms, s, m, h; the number may have a fraction ("1.5s"). "0" alone is zero.
// nullopt for anything else: no unit, a negative sign, overflow, junk.
std::optional<std::chrono::nanoseconds> parse_duration(const std::string& text);

// The largest unit that divides it exactly: 300s -> "5m", 1500ms -> "1500ms", 0 -> "0".
std::string format_duration(std::chrono::nanoseconds d);

}  // namespace tapwire::config
