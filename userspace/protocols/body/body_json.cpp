#include "body_json.hpp"

#include <nlohmann/json.hpp>

#include "body_text.hpp"

namespace tapwire::proto {

nlohmann::json body_json(std::span<const uint8_t> bytes, bool is_text) {
  BodyText t = body_text(bytes, is_text);
  nlohmann::json j = nlohmann::json::object();
  j["body"] = std::move(t.value);
  if (t.base64) j["body_encoding"] = "base64";
  return j;
}

}  // namespace tapwire::proto
