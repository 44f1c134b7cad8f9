// Sizes as users write them: "1GiB", "64MiB", "512k", "1G", "4096".
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace tapwire {

// Binary multiples (K/Ki/KB/KiB = 1024, M..., G..., T...), case-insensitive;
// nullopt for anything else, for negative numbers and for overflow.
std::optional<uint64_t> parse_size(const std::string& text);
// 1536 -> "1.5 KiB"
std::string format_size(uint64_t bytes);

}  // namespace tapwire
