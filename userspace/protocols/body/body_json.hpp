// A body as fields of a JSON record (nlohmann::json), for the dissector's
// output. Kept apart from body_text.hpp so that the parsers do not pull in
// nlohmann/json.hpp.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <span>

namespace tapwire::proto {

// {"body": "<text>"} when `is_text` and the bytes are UTF-8 (body_text()),
// else {"body": "<base64>", "body_encoding": "base64"}.
nlohmann::json body_json(std::span<const uint8_t> bytes, bool is_text);

}  // namespace tapwire::proto
