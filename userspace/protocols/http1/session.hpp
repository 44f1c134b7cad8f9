// HTTP/1.x on the protocol interface: requests paired with responses in
// order on one connection (pipelining included), interim responses skipped,
// early responses (sent before the request was complete) paired with the
// request they answer. After a 101 to `Upgrade: websocket` or `h2c` the
// connection goes on as WebSocket or HTTP/2 when those dissectors are on.
#pragma once

#include <deque>
#include <memory>
#include <vector>

#include "http1.hpp"
#include "protocol.hpp"

namespace tapwire::proto {

inline constexpr const char* kHttp1 = "http";

// An HTTP/1 request or response as the record shows it.
struct HttpRecord final : Message {
  HttpMessage msg;
  explicit HttpRecord(HttpMessage&& m) : msg(std::move(m)) {}
  void write_json(JsonOut& out) const override;
  size_t heap_bytes() const override { return proto::heap_bytes(sizeof(HttpRecord)) + msg.heap; }
  size_t body_bytes() const override { return msg.body.size(); }
};

// Header fields as the record shows them: an object, names as given,
// repeated names joined with ", ".
void write_headers_json(JsonOut& out, const std::vector<Header>& headers);
// A message's body fields (docs/CALL_RECORD.md "HTTP bodies"): body (text,
// or base64 with body_encoding), content_encoding and body_decoded_size.
void write_body_fields(JsonOut& out, const std::string& body, bool binary, const std::string& content_encoding,
                       uint64_t decoded_size);

class Http1Protocol final : public StreamProtocol {
 public:
  Detection detect(std::span<const uint8_t> first, int side, const FlowView& flow) const override;
  std::unique_ptr<StreamSession> open(SessionContext& ctx) const override;
};

// The connection after an upgrade, provided by the protocol it switched to.
// `request` and `response` are the upgrade's messages; `link_key` the key
// of its call.
std::unique_ptr<StreamSession> open_websocket_upgrade(SessionContext& ctx, const HttpMessage& request,
                                                      const HttpMessage& response, uint64_t link_key);
std::unique_ptr<StreamSession> open_h2c_upgrade(SessionContext& ctx, const HttpMessage& request, uint64_t ts_ns);

}  // namespace tapwire::proto
