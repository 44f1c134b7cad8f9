// The protocol interface. A protocol is one folder under
// userspace/protocols/ and one line in registry.cpp: it detects itself from
// the first bytes of a connection (or from a datagram), parses each
// direction resumably, pairs requests with responses (by order, stream id or
// correlation id) and reports each call as a CallContent: its summary
// fields (the DB's filter columns), the request and response as the record
// shows them, flags and timing. The engine (userspace/dissector/) owns
// flows, TCP reassembly, memory limits, identity and ids; the DB, JSON
// lines, HAR, `tapwire calls` filters and metrics take every protocol's
// calls through this interface without knowing the protocol.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "flow_key.hpp"
#include "parse.hpp"
#include "json_out.hpp"

namespace tapwire::proto {

// Anomalies, reported in the record's "flags" list by these names
// (flag_names()).
enum CallFlag : uint32_t {
  kFlagGap = 1u << 0,  // bytes of the request or response were lost in capture
  kFlagTruncated = 1u << 1,  // a message was cut (cap hit, or the stream ended inside it)
  kFlagOrphanResponse = 1u << 2,  // a response whose request was never seen
  kFlagTimeout = 1u << 3,  // the response never came within the expiry time
  kFlagClosed = 1u << 4,  // the connection closed before a response
  kFlagUpgrade = 1u << 5,  // the connection switched protocols (101 / CONNECT)
  kFlagBodyTruncated = 1u << 6,  // body longer than the bytes kept
  // State this call needed was dropped to keep the dissector within its
  // memory limit: parts of it may be missing.
  kFlagMemoryShed = 1u << 7,
  kFlagIncomplete = 1u << 8,  // the request or response was cut short: the stream ended (or was shed) inside it
  // A body's Content-Encoding could not be undone: the record has the body as sent, base64.
  kFlagBodyDecodeError = 1u << 9,
  kFlagReset = 1u << 10,  // the stream was reset (HTTP/2 RST_STREAM) or cut by GOAWAY
  // Header fields were lost: HPACK entries never seen (joined mid-connection),
  // a header block that failed to decode or was too large.
  kFlagHeadersLost = 1u << 11,
  kFlagProtocolError = 1u << 12,  // the peer broke the protocol (the message object says how)
};
std::vector<std::string> flag_names(uint32_t flags);

// One side of a call as its protocol parsed it.
class Message {
 public:
  virtual ~Message() = default;
  // The record's "request" or "response" object, as one JSON object.
  virtual void write_json(JsonOut& out) const = 0;
  // Heap bytes it holds, its own allocation included (the engine's memory budget).
  virtual size_t heap_bytes() const = 0;
  // Body bytes it keeps (the DB's size bound checks on them).
  virtual size_t body_bytes() const { return 0; }
  // Drops its kept body to stay within memory; returns the bytes freed.
  virtual size_t shed_body() { return 0; }
};
using MessagePtr = std::shared_ptr<Message>;  // shared: a Call is copied cheaply

// A call as a protocol reports it. The engine adds both ends, their
// identity, the node and the id.
struct CallContent {
  const char* protocol = "";  // the record's "protocol": a registry name ("http", "dns", ...)
  uint64_t ts_ns = 0;  // first byte of the request (of the response when there is none)
  uint64_t end_ns = 0;  // last byte of the response; 0 without one
  uint32_t flags = 0;
  // Distinguishes calls of one flow (with the time): the engine hashes it
  // into the id. Protocols take it from SessionContext::next_seq().
  uint64_t key_extra = 0;
  // Summary: the columns every protocol fills and filters use. method: what
  // was asked (HTTP method, DNS qtype, gRPC method, WebSocket opcode, Redis
  // command); path: of what (HTTP target, DNS name, gRPC /service/method);
  // status: the outcome as a number (HTTP status, DNS rcode, grpc-status),
  // -1 when there is none.
  std::string method, path;
  int status = -1;
  // The key of a call this one belongs to (a WebSocket message's upgrade); 0: none.
  uint64_t link_key = 0;
  // The call is one message in one direction (a WebSocket message): its
  // duration is from its first byte to its last.
  bool one_message = false;
  MessagePtr request, response;

  bool has_request() const { return request != nullptr; }
  bool has_response() const { return response != nullptr; }
  // The message as its concrete type, or null.
  template <class T>
  const T* req() const {
    return dynamic_cast<const T*>(request.get());
  }
  template <class T>
  const T* resp() const {
    return dynamic_cast<const T*>(response.get());
  }
  int64_t duration_us() const;  // -1 without both a request and a response (one_message aside)
};

// Heap bytes a call holds while it waits (both messages).
size_t content_heap_bytes(const CallContent& c);

// ------------------------------------------------------------- metrics --

// Counters a protocol owns, exported by name (DATA_DIR/dissector.json and
// Prometheus): calls, parse errors and durations by protocol come from the
// engine; these are the breakdowns only the protocol knows (HTTP methods,
// DNS rcodes, gRPC statuses). `breakdowns[name][label]`: a counter family
// ("http_methods": {"GET": 3}).
struct ProtocolCounters {
  std::map<std::string, std::map<std::string, uint64_t>> breakdowns;
  uint64_t parse_errors = 0;
};

// ------------------------------------------------------------- streams --

enum class Dir : uint8_t { ClientToServer = 0, ServerToClient = 1 };
inline int dir_index(Dir d) { return static_cast<int>(d); }
inline Dir other(Dir d) { return d == Dir::ClientToServer ? Dir::ServerToClient : Dir::ClientToServer; }

// Limits every session applies (tap.dissection.*, --max-body, ...).
struct DissectLimits {
  size_t max_body_kept = 64 * 1024;  // body (payload, message) bytes kept per message
  size_t max_header_bytes = 64 * 1024;  // a header block
  size_t max_headers = 128;  // header fields kept per message
  size_t max_pending = 256;  // requests waiting for their response, per connection
  uint64_t request_timeout_ns = 60ull * 1000000000ull;  // a request without response this long expires
  size_t dns_max_records = 256;
  size_t dns_max_name_hops = 32;
  uint64_t dns_timeout_ns = 10ull * 1000000000ull;
  size_t max_dns_pending = 100000;  // DNS queries waiting for an answer, all flows together
  uint64_t icmp_timeout_ns = 10ull * 1000000000ull;  // an echo request without reply this long expires
  size_t icmp_max_pending = 10000;  // echo requests waiting for a reply, all flows together
};

// What the engine gives a session.
class SessionContext {
 public:
  virtual ~SessionContext() = default;
  virtual void emit(CallContent&& c) = 0;  // a finished call
  virtual uint64_t next_seq() = 0;  // the flow's call counter, incremented
  // The id key the engine will give a call of this flow with this
  // (ts_ns, key_extra): for links (a WebSocket message to its upgrade).
  virtual uint64_t key_of(uint64_t ts_ns, uint64_t key_extra) const = 0;
  virtual ProtocolCounters& counters(std::string_view protocol) = 0;
  // A protocol this session may hand the connection to (an HTTP/1 upgrade
  // to WebSocket or h2c), when it is enabled.
  virtual bool enabled(std::string_view protocol) const = 0;
  virtual const DissectLimits& limits() const = 0;
};

// One TCP connection of a protocol, both directions. Each direction's bytes
// come in order; a gap is bytes lost in capture. Every call it reports goes
// through the context's emit(), the last ones at close() at the latest.
class StreamSession {
 public:
  virtual ~StreamSession() = default;
  virtual void data(Dir d, std::span<const uint8_t> bytes, uint64_t ts_ns) = 0;
  virtual void gap(Dir d, uint64_t len) = 0;
  virtual void end(Dir d, uint64_t ts_ns) = 0;  // that direction's FIN
  // The connection is gone: everything pending comes out, flagged `why`
  // (kFlagClosed, kFlagTimeout, kFlagMemoryShed).
  virtual void close(uint32_t why, uint64_t ts_ns) = 0;
  // Requests older than the request timeout at packet time `now_ns` come out unanswered.
  virtual void expire(uint64_t now_ns) { (void)now_ns; }
  virtual size_t memory_bytes() const = 0;  // heap held, all of it
  virtual size_t buffered_bytes() const { return 0; }  // of which: unparsed stream bytes
  // Memory pressure, in the engine's order: kept bodies first, then
  // unparsed buffers. Return the bytes freed (about); what loses something
  // is flagged memory_shed.
  virtual size_t shed_bodies() { return 0; }
  virtual size_t shed_buffers(uint64_t ts_ns) {
    (void)ts_ns;
    return 0;
  }
  // The engine dropped bytes of this direction (detection buffer or
  // out-of-order data): the next message of that direction is flagged memory_shed.
  virtual void mark_shed(Dir d) { (void)d; }
};

// The two ends of a flow and what detection saw.
struct FlowView {
  uint16_t port[2] = {0, 0};  // by side (0, 1)
};

struct Detection {
  bool matched = false;
  bool need_more = false;  // cannot tell yet
  int client_side = -1;  // side (0 or 1) of the client
};

// A protocol carried over TCP.
class StreamProtocol {
 public:
  virtual ~StreamProtocol() = default;
  // The first bytes `side` sent (all that detection held of that side).
  virtual Detection detect(std::span<const uint8_t> first, int side, const FlowView& flow) const = 0;
  virtual std::unique_ptr<StreamSession> open(SessionContext& ctx) const = 0;
};

// ------------------------------------------------------------ datagrams --

// Where a packet was read (the engine's SourcePosition): resume points.
struct Position {
  uint64_t segment = 0, offset = 0;
  auto operator<=>(const Position&) const = default;
};

// One datagram: a UDP payload, or a whole ICMP or ICMPv6 message (the
// key's l4 says which).
struct Datagram {
  std::span<const uint8_t> payload;
  size_t wire_len = 0;  // its length on the wire: the payload may be its beginning only (cut by the capture)
  uint64_t ts_ns = 0;
  const dissect::FlowKey* key = nullptr;  // the flow's canonical key
  int src_side = 0;  // side of the key that sent it
  Position pos;
};

class DatagramContext {
 public:
  virtual ~DatagramContext() = default;
  // A finished call; `client_side` is the key's side of the client.
  virtual void emit(CallContent&& c, const dissect::FlowKey& key, int client_side) = 0;
  virtual ProtocolCounters& counters(std::string_view protocol) = 0;
  virtual const DissectLimits& limits() const = 0;
};

// A protocol carried over UDP. Its state (queries waiting for answers)
// spans all flows, so there is one session per engine.
class DatagramSession {
 public:
  virtual ~DatagramSession() = default;
  // Returns false when the datagram is not this protocol's.
  virtual bool datagram(const Datagram& d) = 0;
  virtual void expire(uint64_t now_ns) = 0;
  virtual void close_all() = 0;  // end of input: everything pending comes out
  virtual size_t memory_bytes() const = 0;
  // Memory pressure: gives up the oldest waiting query (flagged
  // memory_shed); false when none is left.
  virtual bool shed_one() = 0;
  virtual size_t pending() const = 0;
  virtual uint64_t overflows() const { return 0; }  // state given up because a cap was reached
  // The position of the oldest datagram whose state is still held, if any.
  virtual bool oldest(Position& out) const = 0;
};

class DatagramProtocol {
 public:
  virtual ~DatagramProtocol() = default;
  virtual std::unique_ptr<DatagramSession> open(DatagramContext& ctx) const = 0;
};

// -------------------------------------------------------------- registry --

struct ProtocolInfo {
  const char* name;  // the record's protocol ("http", "http2", "grpc", "ws", "dns", "icmp", ...)
  // The tap.enabledDissectors / --dissectors name that switches it
  // (Kubeshark's: "http" covers HTTP/1, HTTP/2 and gRPC).
  const char* dissector;
  const StreamProtocol* stream = nullptr;  // detected on TCP (null: only reached through another)
  const DatagramProtocol* datagram = nullptr;  // on UDP (on ICMP and ICMPv6 with `icmp`)
  bool icmp = false;  // its datagrams are the ICMP and ICMPv6 messages, not UDP payloads
};

// Every protocol, in detection order (registry.cpp).
const std::vector<ProtocolInfo>& protocols();
const ProtocolInfo* find_protocol(std::string_view name);
// The dissector names tap.enabledDissectors accepts, in order.
std::vector<std::string> dissector_names();

}  // namespace tapwire::proto
