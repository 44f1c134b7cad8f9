// One API call: a request paired with its response (or with none), as the
// dissector reports it. Serialized as the call record of DESIGN.md.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dns.hpp"
#include "endpoint_identity.hpp"
#include "http1.hpp"

namespace tapwire::dissect {

enum class Protocol : uint8_t { Http = 1, Dns = 2 };
const char* protocol_name(Protocol p);

// Anomalies, reported in the record's "flags" list by these names.
enum CallFlag : uint32_t {
  kFlagGap = 1u << 0,  // bytes of the request or response were lost in capture
  kFlagTruncated = 1u << 1,  // a message was cut (cap hit, or the stream ended inside it)
  kFlagOrphanResponse = 1u << 2,  // a response whose request was never seen
  kFlagTimeout = 1u << 3,  // the response never came within the expiry time
  kFlagClosed = 1u << 4,  // the connection closed before a response
  kFlagUpgrade = 1u << 5,  // the connection switched protocols (101 / CONNECT)
  kFlagBodyTruncated = 1u << 6,  // body longer than the bytes kept
  // State this call needed was dropped to keep the dissector within its
  // memory limit (out-of-order data, a kept body, a header block, the whole
  // connection or a waiting DNS query): parts of it may be missing.
  kFlagMemoryShed = 1u << 7,
  kFlagIncomplete = 1u << 8,  // the request or response was cut short: the stream ended (or was shed) inside it
  // A body's Content-Encoding could not be undone (corrupt, or a coding not
  // known): the record has the body as sent, base64.
  kFlagBodyDecodeError = 1u << 9,
};
std::vector<std::string> flag_names(uint32_t flags);

struct Endpoint {
  uint8_t ip_version = 4;
  uint8_t addr[16] = {};
  uint16_t port = 0;
  identity::EndpointIdentityPtr identity;  // who this end is, when known (docs/IDENTITY.md)
  std::string ip() const;  // text form
};

struct Call {
  Protocol protocol = Protocol::Http;
  uint64_t ts_ns = 0;  // first byte of the request (of the response for orphans)
  uint64_t end_ns = 0;  // last byte of the response; 0 without a response
  Endpoint src, dst;  // client, server
  uint8_t l4_proto = 6;  // IPPROTO_TCP or IPPROTO_UDP
  std::string node;  // the node whose sensor captured the call ("" if unknown)
  uint32_t flags = 0;
  // Stable identity of the call: the same traffic dissected live, from a
  // snapshot or from a pcap gives the same id (flow, TCP sequence number or
  // DNS transaction id, and request time), so a resumed dissector can tell
  // calls it already reported.
  uint64_t key = 0;
  std::optional<proto::HttpMessage> http_request, http_response;
  std::optional<proto::DnsMessage> dns_query, dns_response;

  bool has_response() const { return http_response.has_value() || dns_response.has_value(); }
  bool has_request() const { return http_request.has_value() || dns_query.has_value(); }
  std::string id() const;  // key as 16 hex digits
  int64_t duration_us() const;  // -1 without a response
};

// The call record (DESIGN.md) as JSON.
nlohmann::json to_json(const Call& c);
// An HTTP message's body fields, added to its record object `j`: "body"
// (text, or base64 with "body_encoding": "base64") when bytes were kept,
// "content_encoding" and "body_decoded_size" when a Content-Encoding was
// undone (proto::finish_body). CallDb::row_json rebuilds the same fields.
void put_body_json(nlohmann::json& j, const proto::HttpMessage& m);
// HTTP headers as the record shows them: an object, repeated names joined
// with ", ".
nlohmann::json headers_json(const std::vector<proto::Header>& hs);
// RFC 3339 UTC with nanoseconds.
std::string format_ts(uint64_t ns);

}  // namespace tapwire::dissect
