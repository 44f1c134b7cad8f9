// Sec-WebSocket-Extensions (RFC 6455 9.1) and the permessage-deflate
// extension (RFC 7692 7.1): what the opening handshake agreed on, which the
// frame parser needs to undo the compression.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tapwire::proto {

// One element of the header: an extension name and its parameters.
struct WsExtension {
  struct Param {
    std::string name;  // lower-cased
    std::string value;  // quotes removed; empty when the parameter has no value
    bool has_value = false;
  };
  std::string name;  // lower-cased
  std::vector<Param> params;
};

// The elements of a Sec-WebSocket-Extensions value (several fields joined
// with ", "), in order: extension *( ";" param ), params token [= token or
// quoted-string]. A malformed element is skipped, not the whole header. At
// most `max_elements` are returned (a client lists a handful of offers).
std::vector<WsExtension> parse_ws_extensions(std::string_view value, size_t max_elements = 16);

// permessage-deflate as agreed: how each side compresses.
struct WsDeflate {
  bool enabled = false;
  bool server_no_context_takeover = false;  // the server resets its compressor after each message
  bool client_no_context_takeover = false;  // the client does
  uint8_t server_max_window_bits = 15;  // 8..15: the window (2^n bytes) the server's compressor uses at most
  uint8_t client_max_window_bits = 15;
  // Parameters RFC 7692 rejects (unknown, repeated, a value out of range or
  // missing) were present: the endpoints should have failed the connection.
  // The values that could be read are kept: what the peers do decides.
  bool malformed = false;
};

// The first permessage-deflate element of a header value: in a request,
// the client's first offer (client_max_window_bits may come without a
// value there: it says the client supports the parameter); in a response,
// what the server accepted. nullopt: no permessage-deflate element.
std::optional<WsDeflate> parse_permessage_deflate(std::string_view value, bool response);

// What the handshake agreed: compression is on only when the server's
// response accepts permessage-deflate, with the response's parameters. The
// offer's client_no_context_takeover hint (RFC 7692 7.1.1.1) is not taken:
// with several offers there is no telling which one was accepted, and
// keeping a context the peer resets decodes just as well (its messages then
// refer to nothing before them), while resetting one it keeps breaks every
// message after the first. A response accepting what the request did not
// offer is `malformed`, and still taken.
WsDeflate negotiate_permessage_deflate(std::string_view request_value, std::string_view response_value);

}  // namespace tapwire::proto
