// HTTP/2 (h2c) and gRPC on the protocol interface: one call per stream.
// Detected from the client preface (prior knowledge), reached from HTTP/1
// by `Upgrade: h2c` (the upgrade's request becomes stream 1). A stream
// whose content-type is application/grpc is a `grpc` call, others `http2`.
#pragma once

#include <memory>

#include "grpc/grpc.hpp"
#include "http2/http2.hpp"
#include "protocol.hpp"

namespace tapwire::proto {

inline constexpr const char* kHttp2 = "http2";
inline constexpr const char* kGrpc = "grpc";

// One side of an HTTP/2 stream; bodies decoded as HTTP/1's are.
struct Http2Record final : Message {
  bool is_request = true;
  // Request: pseudo-headers; response: status and 1xx statuses.
  std::string method, path, authority, scheme, protocol;
  uint32_t stream_id = 0;
  bool pushed = false;
  uint32_t promised_on = 0;
  int status = 0;
  std::vector<int> interim;
  std::vector<Header> headers, trailers;
  uint64_t body_size = 0;
  std::string body;  // decoded when a content-encoding was undone
  bool body_binary = false;
  std::string content_encoding;
  uint64_t body_decoded_size = 0;
  std::string rst_stream;  // the RST_STREAM error this side sent ("" if none)

  void write_json(JsonOut& out) const override;
  size_t heap_bytes() const override;
  size_t body_bytes() const override { return body.size(); }
};

// One side of a gRPC call.
struct GrpcRecord final : Message {
  bool is_request = true;
  std::string service, method, path, authority, encoding, timeout;
  uint32_t stream_id = 0;
  int http_status = 0;
  int grpc_status = -1;
  std::string grpc_message;
  std::vector<Header> headers, trailers;
  GrpcMessages messages;
  std::string rst_stream;

  void write_json(JsonOut& out) const override;
  size_t heap_bytes() const override;
  size_t body_bytes() const override;
};

// The name of a gRPC status code (grpc/doc/statuscodes.md): 0 "OK", 5
// "NOT_FOUND", ...; "UNKNOWN_<n>" past 16.
std::string grpc_status_name(int code);
// The name of an HTTP/2 error code (RFC 9113 7): 8 "CANCEL", ...
std::string http2_error_name(uint32_t code);

// Message contents for gRPC records: schemaless unless tap.grpc.protoPaths
// gave a schema. Set once at start-up, before dissection runs.
void set_grpc_decoder(std::shared_ptr<const GrpcMessageDecoder> decoder);

class Http2Protocol final : public StreamProtocol {
 public:
  Detection detect(std::span<const uint8_t> first, int side, const FlowView& flow) const override;
  std::unique_ptr<StreamSession> open(SessionContext& ctx) const override;
};

}  // namespace tapwire::proto
