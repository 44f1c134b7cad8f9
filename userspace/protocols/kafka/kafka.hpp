// The Kafka wire protocol (https://kafka.apache.org/protocol): every message
// is a 4-byte big-endian size then the body. A request's header is api_key
// i16, api_version i16, correlation_id i32, client_id (nullable i16 string),
// plus tagged fields in header v2 (the API's flexible versions); a
// response's is the correlation id, plus tagged fields in header v1 (the
// flexible versions, ApiVersions aside: its response header stays v0). A
// response's layout depends on its request's API and version.
//
// These functions parse one whole message body (or the prefix of it that
// was kept): the header, the topics and partitions of Produce, Fetch,
// Metadata, OffsetCommit and OffsetFetch requests, the group of the group
// APIs, and the error code of the responses. Record sets are sized, never
// kept. Everything read off the wire is checked against the bytes and a cap.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace tapwire::proto {

// A message larger than this is a protocol error (the broker's default
// socket.request.max.bytes is 100 MiB).
inline constexpr uint32_t kKafkaMaxMessage = 100u << 20;
// What detection and resynchronisation accept as a client id length.
inline constexpr size_t kKafkaMaxClientIdCheck = 512;
// Caps on what one record keeps.
inline constexpr size_t kKafkaMaxTopics = 64;
inline constexpr size_t kKafkaMaxPartitions = 64;  // per topic
inline constexpr size_t kKafkaMaxString = 256;  // client id, topic, group (topic names are at most 249)

// The API's name ("Produce"), or null when the key is unknown.
const char* kafka_api_name(int16_t api_key);
// Whether (api_key, api_version) is a known API and a version it has (or
// a few above the newest known, for newer clients).
bool kafka_version_known(int16_t api_key, int16_t api_version);
// The request body (and header v2) uses compact strings/arrays and tagged fields.
bool kafka_flexible(int16_t api_key, int16_t api_version);
// The error code's name in the protocol guide ("NONE", "NOT_LEADER_OR_FOLLOWER"),
// "ERROR_<n>" for codes it does not list.
std::string kafka_error_name(int16_t code);

struct KafkaTopic {
  std::string name;  // the topic name, or its id (8-4-4-4-12 hex) where the version names topics by id
  std::vector<int32_t> partitions;
};

struct KafkaRequest {
  int16_t api_key = -1;
  int16_t api_version = 0;
  int32_t correlation_id = 0;
  bool client_id_null = false;
  std::string client_id;
  std::string group_id;  // group APIs (FindCoordinator: its key)
  std::vector<KafkaTopic> topics;
  uint64_t record_bytes = 0;  // Produce: bytes of record sets (counted, not kept)
  uint32_t record_sets = 0;
  int16_t acks = -1;  // Produce: 0 means no response will come
  uint32_t size = 0;  // the body's size on the wire
  bool truncated = false;  // a cap cut the topics, partitions or a string; or only a prefix was kept
  bool malformed = false;  // the body did not parse as its API's layout
  bool cut_in_last_records = false;  // only the last record set (and tagged fields) was past the bytes kept
  uint64_t ts_first_ns = 0, ts_last_ns = 0;
  bool gap = false, incomplete = false, memory_shed = false, protocol_error = false;
  size_t heap_bytes() const;
};

struct KafkaResponse {
  int32_t correlation_id = 0;
  bool has_error = false;  // the error code was found
  int16_t error_code = 0;
  uint32_t size = 0;
  bool truncated = false, malformed = false;
  uint64_t ts_first_ns = 0, ts_last_ns = 0;
  bool gap = false, incomplete = false, memory_shed = false, protocol_error = false;
};

enum class KafkaCheck : uint8_t { No, Yes, NeedMore };

// Whether `b` starts with a plausible request: size in range, a known API
// and version, a client id whose length fits in the size and whose bytes
// are printable. NeedMore while too few bytes are there to tell.
KafkaCheck kafka_request_start(std::span<const uint8_t> b);

// Parses a request body (the bytes after the size; `body` may be a prefix
// of it when `size` is larger). False when even the header is not there or
// not plausible.
bool parse_kafka_request(std::span<const uint8_t> body, uint32_t size, KafkaRequest& out);
// Parses a response body to the request (api_key, api_version).
bool parse_kafka_response(std::span<const uint8_t> body, uint32_t size, int16_t api_key, int16_t api_version,
                          KafkaResponse& out);

}  // namespace tapwire::proto
