// WebSocket on the protocol interface: reached through an HTTP/1 upgrade
// (http1/session.hpp), one record per message, linked to the upgrade's call.
#pragma once

#include "protocol.hpp"
#include "websocket/websocket.hpp"

namespace tapwire::proto {

inline constexpr const char* kWebSocket = "ws";

struct WsRecord final : Message {
  WsMessage msg;
  explicit WsRecord(WsMessage&& m) : msg(std::move(m)) {}
  void write_json(JsonOut& out) const override;
  size_t heap_bytes() const override;
  size_t body_bytes() const override { return msg.payload.size(); }
};

}  // namespace tapwire::proto
