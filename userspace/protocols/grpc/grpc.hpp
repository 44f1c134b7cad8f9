// gRPC over HTTP/2 (grpc/doc/PROTOCOL-HTTP2.md), on top of Http2Parser's
// exchanges: a call is an exchange whose content-type is application/grpc
// (or application/grpc+proto, +json, ;params). Service and method come from
// :path, the status from grpc-status/grpc-message in the trailers (or in the
// response headers of a Trailers-Only response), and each direction's DATA is
// split into length-prefixed messages: 1 byte compressed flag, 4 bytes
// big-endian length, the message; messages freely span DATA frames.
//
// Counting every message needs every DATA byte, more than an exchange keeps:
// give the parser grpc_tap_factory() and each gRPC stream gets a framer fed
// as the bytes arrive. Without it, grpc_call() frames the kept bodies and
// says so when they were cut (`unframed`).
//
// Message contents: GrpcMessageDecoder is the seam for schema-based
// decoding (libprotobuf with descriptors, later); SchemalessGrpcDecoder
// reads the protobuf wire format without a schema (protobuf_wire.hpp).
// gRPC-Web (its trailers travel in the body) is not handled here.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "grpc/protobuf_wire.hpp"
#include "http2/http2.hpp"

namespace tapwire::proto {

struct GrpcLimits {
  size_t max_messages_kept = 8;  // messages kept per direction (the first ones); all are counted
  size_t max_message_kept = 64 * 1024;  // bytes kept of each kept message
};

struct GrpcMessage {
  bool compressed = false;  // the compressed flag: data is in the grpc-encoding of its direction
  uint32_t length = 0;  // length from its prefix
  std::string data;  // its first max_message_kept bytes
  bool truncated = false;  // data is shorter than length (the cap, or the stream ended inside it)
};

// One direction of a call.
struct GrpcMessages {
  uint64_t count = 0;  // complete messages
  uint64_t bytes = 0;  // their lengths added up (prefixes excluded)
  uint64_t compressed = 0;  // complete messages with the compressed flag
  uint32_t largest = 0;  // the longest complete message
  std::vector<GrpcMessage> kept;  // the first max_messages_kept messages (the last may be incomplete)
  bool incomplete = false;  // the direction ended inside a message prefix or body
  bool bad_flag = false;  // a compressed-flag byte other than 0 or 1: framing is doubtful from there on
  bool unframed = false;  // bytes of the direction were not seen (kept body cut, stream partial): counts are a lower bound
};

// Splits one direction's DATA bytes into messages; resumable at any byte.
class GrpcFramer {
 public:
  explicit GrpcFramer(GrpcLimits limits = {}) : lim_(limits) {}
  // Returns the bytes it copied into kept messages, at most `budget` (a
  // message cut short by the budget keeps no more of itself: data stays a prefix).
  size_t feed(std::span<const uint8_t> bytes, size_t budget = SIZE_MAX);
  void finish();  // the direction ended: a message in progress is incomplete
  const GrpcMessages& messages() const { return out_; }
  GrpcMessages& messages() { return out_; }
  size_t memory_bytes() const;  // the kept messages' bytes included

 private:
  GrpcLimits lim_;
  GrpcMessages out_;
  uint8_t prefix_[5] = {};
  size_t have_ = 0;  // prefix bytes of the message in progress
  uint32_t left_ = 0;  // body bytes of the message in progress still to come
  bool in_body_ = false;
  size_t cur_ = SIZE_MAX;  // index in kept of the message in progress, if it is kept
  bool cur_cut_ = false;  // the budget ran out inside it

  void complete();
};

struct GrpcCall {
  uint32_t stream_id = 0;
  std::string service, method;  // "/helloworld.Greeter/SayHello" -> "helloworld.Greeter", "SayHello"
  std::string content_type;
  std::string request_encoding, response_encoding;  // grpc-encoding of each direction ("" = identity)
  std::string timeout;  // grpc-timeout as sent
  int status = -1;  // grpc-status; -1 when none was seen (stream reset, cut, or still open)
  std::string message;  // grpc-message, percent-decoded
  bool trailers_only = false;  // the status came in the response headers (Trailers-Only)
  bool framed_live = false;  // messages were counted by a tap from every DATA byte
  GrpcMessages request, response;
};

// content-type application/grpc, application/grpc+<subtype>, application/grpc;<params> (any case).
bool is_grpc_content_type(std::string_view content_type);
// Is the exchange a gRPC call (by its request's content-type, else its response's)?
bool is_grpc(const Http2Exchange& ex);
// "/package.Service/Method" -> service, method; false when :path has not that shape.
bool split_grpc_path(std::string_view path, std::string& service, std::string& method);
// grpc-message is percent-encoded (PROTOCOL-HTTP2.md); malformed escapes are kept as they are.
std::string grpc_percent_decode(std::string_view s);

// The call an exchange carries (call it for exchanges is_grpc accepts).
// Messages come from the exchange's tap when grpc_tap_factory made one,
// else from its kept bodies.
GrpcCall grpc_call(const Http2Exchange& ex, const GrpcLimits& limits = {});

// For Http2Parser: a tap that frames both directions of each gRPC stream as it streams.
Http2TapFactory grpc_tap_factory(GrpcLimits limits = {});

// What a message says, as JSON. The schema seam: a decoder with the
// service's descriptors can name fields and types; this interface is all
// the rest of the pipeline sees.
class GrpcMessageDecoder {
 public:
  virtual ~GrpcMessageDecoder() = default;
  // null when it cannot tell (compressed, not protobuf).
  virtual nlohmann::json decode(std::string_view service, std::string_view method, bool request,
                                const GrpcMessage& m) const = 0;
};

// Protobuf wire format without a schema: {"fields": decode_protobuf's
// array} (+ "truncated": true past max_fields), or null for compressed,
// cut, or non-protobuf messages.
class SchemalessGrpcDecoder final : public GrpcMessageDecoder {
 public:
  explicit SchemalessGrpcDecoder(ProtobufLimits limits = {}) : lim_(limits) {}
  nlohmann::json decode(std::string_view service, std::string_view method, bool request,
                        const GrpcMessage& m) const override;

 private:
  ProtobufLimits lim_;
};

}  // namespace tapwire::proto
