#include "kafka/kafka.hpp"

#include <algorithm>
#include <cstdio>

#include "parse.hpp"

namespace tapwire::proto {
namespace {

// API keys: name, newest version known (Kafka 3.7/3.8), first flexible
// version (-1: none). The protocol guide's table.
struct ApiInfo {
  const char* name;
  int16_t max_version;
  int16_t flexible_from;
};
constexpr ApiInfo kApis[] = {
    {"Produce", 11, 9},                      // 0
    {"Fetch", 16, 12},                       // 1
    {"ListOffsets", 8, 6},                   // 2
    {"Metadata", 12, 9},                     // 3
    {"LeaderAndIsr", 7, 4},                  // 4
    {"StopReplica", 4, 2},                   // 5
    {"UpdateMetadata", 8, 6},                // 6
    {"ControlledShutdown", 3, 3},            // 7
    {"OffsetCommit", 9, 8},                  // 8
    {"OffsetFetch", 9, 6},                   // 9
    {"FindCoordinator", 5, 3},               // 10
    {"JoinGroup", 9, 6},                     // 11
    {"Heartbeat", 4, 4},                     // 12
    {"LeaveGroup", 5, 4},                    // 13
    {"SyncGroup", 5, 4},                     // 14
    {"DescribeGroups", 5, 5},                // 15
    {"ListGroups", 5, 3},                    // 16
    {"SaslHandshake", 1, -1},                // 17
    {"ApiVersions", 4, 3},                   // 18
    {"CreateTopics", 7, 5},                  // 19
    {"DeleteTopics", 6, 4},                  // 20
    {"DeleteRecords", 2, 2},                 // 21
    {"InitProducerId", 5, 2},                // 22
    {"OffsetForLeaderEpoch", 4, 4},          // 23
    {"AddPartitionsToTxn", 5, 3},            // 24
    {"AddOffsetsToTxn", 4, 3},               // 25
    {"EndTxn", 4, 3},                        // 26
    {"WriteTxnMarkers", 1, 1},               // 27
    {"TxnOffsetCommit", 4, 3},               // 28
    {"DescribeAcls", 3, 2},                  // 29
    {"CreateAcls", 3, 2},                    // 30
    {"DeleteAcls", 3, 2},                    // 31
    {"DescribeConfigs", 4, 4},               // 32
    {"AlterConfigs", 2, 2},                  // 33
    {"AlterReplicaLogDirs", 2, 2},           // 34
    {"DescribeLogDirs", 4, 2},               // 35
    {"SaslAuthenticate", 2, 2},              // 36
    {"CreatePartitions", 3, 2},              // 37
    {"CreateDelegationToken", 3, 2},         // 38
    {"RenewDelegationToken", 2, 2},          // 39
    {"ExpireDelegationToken", 2, 2},         // 40
    {"DescribeDelegationToken", 3, 2},       // 41
    {"DeleteGroups", 2, 2},                  // 42
    {"ElectLeaders", 2, 2},                  // 43
    {"IncrementalAlterConfigs", 1, 1},       // 44
    {"AlterPartitionReassignments", 0, 0},   // 45
    {"ListPartitionReassignments", 0, 0},    // 46
    {"OffsetDelete", 0, -1},                 // 47
    {"DescribeClientQuotas", 1, 1},          // 48
    {"AlterClientQuotas", 1, 1},             // 49
    {"DescribeUserScramCredentials", 0, 0},  // 50
    {"AlterUserScramCredentials", 0, 0},     // 51
    {"Vote", 1, 0},                          // 52
    {"BeginQuorumEpoch", 1, 1},              // 53
    {"EndQuorumEpoch", 1, 1},                // 54
    {"DescribeQuorum", 2, 0},                // 55
    {"AlterPartition", 3, 0},                // 56
    {"UpdateFeatures", 1, 0},                // 57
    {"Envelope", 0, 0},                      // 58
    {"FetchSnapshot", 1, 0},                 // 59
    {"DescribeCluster", 1, 0},               // 60
    {"DescribeProducers", 0, 0},             // 61
    {"BrokerRegistration", 4, 0},            // 62
    {"BrokerHeartbeat", 1, 0},               // 63
    {"UnregisterBroker", 0, 0},              // 64
    {"DescribeTransactions", 0, 0},          // 65
    {"ListTransactions", 1, 0},              // 66
    {"AllocateProducerIds", 0, 0},           // 67
    {"ConsumerGroupHeartbeat", 0, 0},        // 68
    {"ConsumerGroupDescribe", 0, 0},         // 69
    {"ControllerRegistration", 0, 0},        // 70
    {"GetTelemetrySubscriptions", 0, 0},     // 71
    {"PushTelemetry", 0, 0},                 // 72
    {"AssignReplicasToDirs", 0, 0},          // 73
    {"ListClientMetricsResources", 0, 0},    // 74
    {"DescribeTopicPartitions", 0, 0},       // 75
};
constexpr int16_t kApiCount = static_cast<int16_t>(sizeof kApis / sizeof kApis[0]);
// Versions above the newest known that are still taken (newer clients).
constexpr int16_t kVersionSlack = 3;

enum Api : int16_t {
  kProduce = 0,
  kFetch = 1,
  kMetadata = 3,
  kOffsetCommit = 8,
  kOffsetFetch = 9,
  kFindCoordinator = 10,
  kJoinGroup = 11,
  kHeartbeat = 12,
  kLeaveGroup = 13,
  kSyncGroup = 14,
  kApiVersions = 18,
};

const char* const kErrors[] = {
    "NONE",
    "OFFSET_OUT_OF_RANGE",
    "CORRUPT_MESSAGE",
    "UNKNOWN_TOPIC_OR_PARTITION",
    "INVALID_FETCH_SIZE",
    "LEADER_NOT_AVAILABLE",
    "NOT_LEADER_OR_FOLLOWER",
    "REQUEST_TIMED_OUT",
    "BROKER_NOT_AVAILABLE",
    "REPLICA_NOT_AVAILABLE",
    "MESSAGE_TOO_LARGE",
    "STALE_CONTROLLER_EPOCH",
    "OFFSET_METADATA_TOO_LARGE",
    "NETWORK_EXCEPTION",
    "COORDINATOR_LOAD_IN_PROGRESS",
    "COORDINATOR_NOT_AVAILABLE",
    "NOT_COORDINATOR",
    "INVALID_TOPIC_EXCEPTION",
    "RECORD_LIST_TOO_LARGE",
    "NOT_ENOUGH_REPLICAS",
    "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
    "INVALID_REQUIRED_ACKS",
    "ILLEGAL_GENERATION",
    "INCONSISTENT_GROUP_PROTOCOL",
    "INVALID_GROUP_ID",
    "UNKNOWN_MEMBER_ID",
    "INVALID_SESSION_TIMEOUT",
    "REBALANCE_IN_PROGRESS",
    "INVALID_COMMIT_OFFSET_SIZE",
    "TOPIC_AUTHORIZATION_FAILED",
    "GROUP_AUTHORIZATION_FAILED",
    "CLUSTER_AUTHORIZATION_FAILED",
    "INVALID_TIMESTAMP",
    "UNSUPPORTED_SASL_MECHANISM",
    "ILLEGAL_SASL_STATE",
    "UNSUPPORTED_VERSION",
    "TOPIC_ALREADY_EXISTS",
    "INVALID_PARTITIONS",
    "INVALID_REPLICATION_FACTOR",
    "INVALID_REPLICA_ASSIGNMENT",
    "INVALID_CONFIG",
    "NOT_CONTROLLER",
    "INVALID_REQUEST",
    "UNSUPPORTED_FOR_MESSAGE_FORMAT",
    "POLICY_VIOLATION",
    "OUT_OF_ORDER_SEQUENCE_NUMBER",
    "DUPLICATE_SEQUENCE_NUMBER",
    "INVALID_PRODUCER_EPOCH",
    "INVALID_TXN_STATE",
    "INVALID_PRODUCER_ID_MAPPING",
    "INVALID_TRANSACTION_TIMEOUT",
    "CONCURRENT_TRANSACTIONS",
    "TRANSACTION_COORDINATOR_FENCED",
    "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
    "SECURITY_DISABLED",
    "OPERATION_NOT_ATTEMPTED",
    "KAFKA_STORAGE_ERROR",
    "LOG_DIR_NOT_FOUND",
    "SASL_AUTHENTICATION_FAILED",
    "UNKNOWN_PRODUCER_ID",
    "REASSIGNMENT_IN_PROGRESS",
    "DELEGATION_TOKEN_AUTH_DISABLED",
    "DELEGATION_TOKEN_NOT_FOUND",
    "DELEGATION_TOKEN_OWNER_MISMATCH",
    "DELEGATION_TOKEN_REQUEST_NOT_ALLOWED",
    "DELEGATION_TOKEN_AUTHORIZATION_FAILED",
    "DELEGATION_TOKEN_EXPIRED",
    "INVALID_PRINCIPAL_TYPE",
    "NON_EMPTY_GROUP",
    "GROUP_ID_NOT_FOUND",
    "FETCH_SESSION_ID_NOT_FOUND",
    "INVALID_FETCH_SESSION_EPOCH",
    "LISTENER_NOT_FOUND",
    "TOPIC_DELETION_DISABLED",
    "FENCED_LEADER_EPOCH",
    "UNKNOWN_LEADER_EPOCH",
    "UNSUPPORTED_COMPRESSION_TYPE",
    "STALE_BROKER_EPOCH",
    "OFFSET_NOT_AVAILABLE",
    "MEMBER_ID_REQUIRED",
    "PREFERRED_LEADER_NOT_AVAILABLE",
    "GROUP_MAX_SIZE_REACHED",
    "FENCED_INSTANCE_ID",
    "ELIGIBLE_LEADERS_NOT_AVAILABLE",
    "ELECTION_NOT_NEEDED",
    "NO_REASSIGNMENT_IN_PROGRESS",
    "GROUP_SUBSCRIBED_TO_TOPIC",
    "INVALID_RECORD",
    "UNSTABLE_OFFSET_COMMIT",
    "THROTTLING_QUOTA_EXCEEDED",
    "PRODUCER_FENCED",
    "RESOURCE_NOT_FOUND",
    "DUPLICATE_RESOURCE",
    "UNACCEPTABLE_CREDENTIAL",
    "INCONSISTENT_VOTER_SET",
    "INVALID_UPDATE_VERSION",
    "FEATURE_UPDATE_FAILED",
    "PRINCIPAL_DESERIALIZATION_FAILURE",
    "SNAPSHOT_NOT_FOUND",
    "POSITION_OUT_OF_RANGE",
    "UNKNOWN_TOPIC_ID",
    "DUPLICATE_BROKER_REGISTRATION",
    "BROKER_ID_NOT_REGISTERED",
    "INCONSISTENT_TOPIC_ID",
    "INCONSISTENT_CLUSTER_ID",
    "TRANSACTIONAL_ID_NOT_FOUND",
    "FETCH_SESSION_TOPIC_ID_ERROR",
    "INELIGIBLE_REPLICA",
    "NEW_LEADER_ELECTED",
    "OFFSET_MOVED_TO_TIERED_STORAGE",
    "FENCED_MEMBER_EPOCH",
    "UNRELEASED_INSTANCE_ID",
    "UNSUPPORTED_ASSIGNOR",
    "STALE_MEMBER_EPOCH",
    "MISMATCHED_ENDPOINT_TYPE",
    "UNSUPPORTED_ENDPOINT_TYPE",
    "UNKNOWN_CONTROLLER_ID",
    "UNKNOWN_SUBSCRIPTION_ID",
    "TELEMETRY_TOO_LARGE",
    "INVALID_REGISTRATION",
};

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
int16_t be16s(const uint8_t* p) { return static_cast<int16_t>((p[0] << 8) | p[1]); }

bool printable(uint8_t c) { return c >= 0x20 && c < 0x7f; }

// A bounds-checked cursor over a body. Reading past the end sets `short_`
// (the bytes are not there: a prefix was kept, or the body is malformed);
// a value no layout allows sets `bad_`. Once either is set every read
// returns zero, so callers check ok() at loop heads only.
class Reader {
 public:
  // `total`: the body's size on the wire (b may be a prefix of it): a
  // length past it is malformed, one past b only short (not kept).
  Reader(std::span<const uint8_t> b, size_t total, bool flexible)
      : b_(b), total_(std::max(total, b.size())), flex_(flexible) {}
  bool ok() const { return !short_ && !bad_; }
  bool is_short() const { return short_; }
  bool bad() const { return bad_; }
  void set_bad() { bad_ = true; }
  void set_flexible(bool f) { flex_ = f; }
  bool flexible() const { return flex_; }
  size_t left() const { return ok() ? b_.size() - off_ : 0; }

  bool skip(uint64_t n) { return take(n); }
  uint8_t u8() { return take(1) ? b_[off_ - 1] : 0; }
  int16_t i16() { return take(2) ? be16s(&b_[off_ - 2]) : 0; }
  int32_t i32() { return take(4) ? static_cast<int32_t>(be32(&b_[off_ - 4])) : 0; }
  void i64() { skip(8); }
  uint64_t uvarint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 35; shift += 7) {  // at most 5 bytes (an unsigned varint of 32 bits)
      const uint8_t c = u8();
      if (!ok()) return 0;
      v |= uint64_t{static_cast<uint8_t>(c & 0x7f)} << shift;
      if (!(c & 0x80)) return v;
    }
    bad_ = true;
    return 0;
  }
  // A string's length: -1 for null. Compact: uvarint length + 1.
  int64_t str_len() {
    if (flex_) return static_cast<int64_t>(uvarint()) - 1;
    return i16();
  }
  // A (nullable) string, the first `cap` bytes kept; sets *cut when longer.
  void str(std::string* out, size_t cap, bool* cut, bool* null = nullptr) {
    const int64_t n = str_len();
    if (!ok()) return;
    if (n < -1) {
      bad_ = true;
      return;
    }
    if (null) *null = n < 0;
    if (n <= 0) return;
    const size_t avail = b_.size() - off_;
    if (out) {
      const size_t k = std::min<size_t>({static_cast<size_t>(n), cap, avail});
      out->assign(reinterpret_cast<const char*>(&b_[off_]), k);
      if (k < static_cast<size_t>(n) && k == cap && cut) *cut = true;
    }
    skip(static_cast<uint64_t>(n));
  }
  void skip_str() { str(nullptr, 0, nullptr); }
  // Nullable bytes (record sets): returns the length, -1 for null.
  int64_t bytes() {
    int64_t n;
    if (flex_)
      n = static_cast<int64_t>(uvarint()) - 1;
    else
      n = i32();
    if (!ok()) return 0;
    if (n < -1) {
      bad_ = true;
      return 0;
    }
    if (n > 0) skip(static_cast<uint64_t>(n));  // past the bytes kept: short, but the length is known
    return n;
  }
  // An array's length: -1 for null. Every element takes at least a byte,
  // so a count beyond the bytes left is malformed (or cut, in a prefix).
  int64_t array_len() {
    int64_t n = flex_ ? static_cast<int64_t>(uvarint()) - 1 : i32();
    if (!ok()) return 0;
    if (n < -1) {
      bad_ = true;
      return 0;
    }
    return n;
  }
  void tagged() {
    if (!flex_) return;
    const uint64_t n = uvarint();
    for (uint64_t i = 0; i < n && ok(); i++) {
      uvarint();  // tag
      skip(uvarint());
    }
  }
  void skip_i32_array() {
    const int64_t n = array_len();
    if (n > 0) skip(4 * static_cast<uint64_t>(n));
  }

 private:
  bool take(uint64_t n) {
    if (!ok()) return false;
    if (n > total_ - off_) {
      bad_ = true;  // past the end of the message
      return false;
    }
    if (n > b_.size() - off_) {
      short_ = true;
      return false;
    }
    off_ += n;
    return true;
  }
  std::span<const uint8_t> b_;
  size_t total_;
  size_t off_ = 0;
  bool flex_ = false;
  bool short_ = false, bad_ = false;
};

std::string uuid_string(Reader& r) {
  uint8_t u[16];
  for (uint8_t& c : u) c = r.u8();
  char s[40];
  std::snprintf(s, sizeof s, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
                u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
  return s;
}

// One topic entry of a request: a new KafkaTopic, or null past the cap.
KafkaTopic* add_topic(KafkaRequest& q) {
  if (q.topics.size() >= kKafkaMaxTopics) {
    q.truncated = true;
    return nullptr;
  }
  return &q.topics.emplace_back();
}
void add_partition(KafkaRequest& q, KafkaTopic* t, int32_t p) {
  if (!t) return;
  if (t->partitions.size() >= kKafkaMaxPartitions) {
    q.truncated = true;
    return;
  }
  t->partitions.push_back(p);
}

void topic_name(Reader& r, KafkaRequest& q, KafkaTopic* t) { r.str(t ? &t->name : nullptr, kKafkaMaxString, &q.truncated); }

void produce_request(Reader& r, KafkaRequest& q) {
  const int v = q.api_version;
  if (v >= 3) r.skip_str();  // transactional_id
  q.acks = r.i16();
  r.i32();  // timeout_ms
  const int64_t nt = r.array_len();
  for (int64_t i = 0; i < nt && r.ok(); i++) {
    KafkaTopic* t = add_topic(q);
    topic_name(r, q, t);
    const int64_t np = r.array_len();
    for (int64_t k = 0; k < np && r.ok(); k++) {
      add_partition(q, t, r.i32());
      const int64_t n = r.bytes();
      if (r.bad() || (r.is_short() && n <= 0)) break;
      q.record_sets++;
      if (n > 0) q.record_bytes += static_cast<uint64_t>(n);
      // The last record set runs past the bytes kept: only tagged fields follow it.
      if (r.is_short()) q.cut_in_last_records = i + 1 == nt && k + 1 == np;
      r.tagged();
    }
    r.tagged();
  }
}

void fetch_request(Reader& r, KafkaRequest& q) {
  const int v = q.api_version;
  if (v <= 14) r.i32();  // replica_id (a tagged field from v15)
  r.i32();               // max_wait_ms
  r.i32();               // min_bytes
  if (v >= 3) r.i32();   // max_bytes
  if (v >= 4) r.u8();    // isolation_level
  if (v >= 7) {
    r.i32();  // session_id
    r.i32();  // session_epoch
  }
  const int64_t nt = r.array_len();
  for (int64_t i = 0; i < nt && r.ok(); i++) {
    KafkaTopic* t = add_topic(q);
    if (v >= 13) {
      std::string id = uuid_string(r);
      if (t) t->name = std::move(id);
    } else {
      topic_name(r, q, t);
    }
    const int64_t np = r.array_len();
    for (int64_t k = 0; k < np && r.ok(); k++) {
      add_partition(q, t, r.i32());
      if (v >= 9) r.i32();  // current_leader_epoch
      r.i64();              // fetch_offset
      if (v >= 12) r.i32();  // last_fetched_epoch
      if (v >= 5) r.i64();   // log_start_offset
      r.i32();               // partition_max_bytes
      r.tagged();
    }
    r.tagged();
  }
  // forgotten topics and rack id: not recorded
}

void metadata_request(Reader& r, KafkaRequest& q) {
  const int v = q.api_version;
  const int64_t nt = r.array_len();  // null (v1+): all topics
  for (int64_t i = 0; i < nt && r.ok(); i++) {
    KafkaTopic* t = add_topic(q);
    if (v >= 10) {
      std::string id = uuid_string(r);
      bool null = false;
      r.str(t ? &t->name : nullptr, kKafkaMaxString, &q.truncated, &null);
      if (t && null) t->name = std::move(id);  // named by id only
    } else {
      topic_name(r, q, t);
    }
    r.tagged();
  }
}

void offset_commit_request(Reader& r, KafkaRequest& q) {
  const int v = q.api_version;
  r.str(&q.group_id, kKafkaMaxString, &q.truncated);
  if (v >= 1) {
    r.i32();       // generation_id
    r.skip_str();  // member_id
  }
  if (v >= 7) r.skip_str();  // group_instance_id
  if (v >= 2 && v <= 4) r.i64();  // retention_time_ms
  const int64_t nt = r.array_len();
  for (int64_t i = 0; i < nt && r.ok(); i++) {
    KafkaTopic* t = add_topic(q);
    topic_name(r, q, t);
    const int64_t np = r.array_len();
    for (int64_t k = 0; k < np && r.ok(); k++) {
      add_partition(q, t, r.i32());
      r.i64();              // committed_offset
      if (v >= 6) r.i32();  // committed_leader_epoch
      if (v == 1) r.i64();  // commit_timestamp
      r.skip_str();         // committed_metadata
      r.tagged();
    }
    r.tagged();
  }
}

void offset_fetch_topics(Reader& r, KafkaRequest& q) {
  const int64_t nt = r.array_len();  // null: every topic of the group
  for (int64_t i = 0; i < nt && r.ok(); i++) {
    KafkaTopic* t = add_topic(q);
    topic_name(r, q, t);
    const int64_t np = r.array_len();
    for (int64_t k = 0; k < np && r.ok(); k++) add_partition(q, t, r.i32());
    r.tagged();
  }
}

void offset_fetch_request(Reader& r, KafkaRequest& q) {
  const int v = q.api_version;
  if (v <= 7) {
    r.str(&q.group_id, kKafkaMaxString, &q.truncated);
    offset_fetch_topics(r, q);
    return;
  }
  const int64_t ng = r.array_len();  // v8+: several groups
  for (int64_t g = 0; g < ng && r.ok(); g++) {
    if (g == 0)
      r.str(&q.group_id, kKafkaMaxString, &q.truncated);
    else
      r.skip_str();
    if (v >= 9) {
      r.skip_str();  // member_id
      r.i32();       // member_epoch
    }
    offset_fetch_topics(r, q);
    r.tagged();
  }
}

void find_coordinator_request(Reader& r, KafkaRequest& q) {
  if (q.api_version <= 3) {
    r.str(&q.group_id, kKafkaMaxString, &q.truncated);
    return;
  }
  r.u8();  // key_type
  const int64_t n = r.array_len();
  if (n > 0) r.str(&q.group_id, kKafkaMaxString, &q.truncated);
}

void parse_request_body(Reader& r, KafkaRequest& q) {
  switch (q.api_key) {
    case kProduce:
      return produce_request(r, q);
    case kFetch:
      return fetch_request(r, q);
    case kMetadata:
      return metadata_request(r, q);
    case kOffsetCommit:
      return offset_commit_request(r, q);
    case kOffsetFetch:
      return offset_fetch_request(r, q);
    case kFindCoordinator:
      return find_coordinator_request(r, q);
    case kJoinGroup:
    case kHeartbeat:
    case kLeaveGroup:
    case kSyncGroup:
      r.str(&q.group_id, kKafkaMaxString, &q.truncated);  // the first field of each
      return;
    default:
      return;
  }
}

// ----------------------------------------------------------- responses --

// The outcome: the top-level error where the API has one and it is not
// NONE, else the first partition (or topic) error that is not NONE, else NONE.
struct Errors {
  bool top_seen = false, part_seen = false;
  int16_t top = 0, part = 0;
  bool cut_in_last_records = false;  // only the last record set (and tagged fields) was not kept
  void top_level(int16_t e) {
    if (!top_seen || (top == 0 && e != 0)) top = e;
    top_seen = true;
  }
  void partition(int16_t e) {
    if (!part_seen || (part == 0 && e != 0)) part = e;
    part_seen = true;
  }
};

void produce_response(Reader& r, int v, Errors& e) {
  const int64_t nt = r.array_len();
  for (int64_t i = 0; i < nt && r.ok(); i++) {
    r.skip_str();  // name
    const int64_t np = r.array_len();
    for (int64_t k = 0; k < np && r.ok(); k++) {
      r.i32();  // index
      const int16_t err = r.i16();
      if (r.ok()) e.partition(err);
      r.i64();              // base_offset
      if (v >= 2) r.i64();  // log_append_time_ms
      if (v >= 5) r.i64();  // log_start_offset
      if (v >= 8) {
        const int64_t nb = r.array_len();  // record_errors
        for (int64_t b = 0; b < nb && r.ok(); b++) {
          r.i32();
          r.skip_str();
          r.tagged();
        }
        r.skip_str();  // error_message
      }
      r.tagged();
    }
    r.tagged();
  }
}

void fetch_response(Reader& r, int v, Errors& e) {
  if (v >= 1) r.i32();  // throttle_time_ms
  if (v >= 7) {
    const int16_t err = r.i16();
    if (r.ok()) e.top_level(err);
    r.i32();  // session_id
  }
  const int64_t nt = r.array_len();
  for (int64_t i = 0; i < nt && r.ok(); i++) {
    if (v >= 13)
      r.skip(16);  // topic_id
    else
      r.skip_str();
    const int64_t np = r.array_len();
    for (int64_t k = 0; k < np && r.ok(); k++) {
      r.i32();  // partition_index
      const int16_t err = r.i16();
      if (r.ok()) e.partition(err);
      r.i64();  // high_watermark
      if (v >= 4) r.i64();  // last_stable_offset
      if (v >= 5) r.i64();  // log_start_offset
      if (v >= 4) {
        const int64_t na = r.array_len();  // aborted_transactions
        for (int64_t a = 0; a < na && r.ok(); a++) {
          r.i64();
          r.i64();
          r.tagged();
        }
      }
      if (v >= 11) r.i32();  // preferred_read_replica
      const int64_t n = r.bytes();  // records
      if (r.is_short() && n > 0 && i + 1 == nt && k + 1 == np) e.cut_in_last_records = true;
      r.tagged();
    }
    r.tagged();
  }
}

void metadata_response(Reader& r, int v, Errors& e) {
  if (v >= 3) r.i32();  // throttle_time_ms
  const int64_t nb = r.array_len();
  for (int64_t i = 0; i < nb && r.ok(); i++) {
    r.i32();       // node_id
    r.skip_str();  // host
    r.i32();       // port
    if (v >= 1) r.skip_str();  // rack
    r.tagged();
  }
  if (v >= 2) r.skip_str();  // cluster_id
  if (v >= 1) r.i32();       // controller_id
  const int64_t nt = r.array_len();
  for (int64_t i = 0; i < nt && r.ok(); i++) {
    const int16_t err = r.i16();
    if (r.ok()) e.partition(err);
    r.skip_str();  // name
    if (v >= 10) r.skip(16);  // topic_id
    if (v >= 1) r.u8();       // is_internal
    const int64_t np = r.array_len();
    for (int64_t k = 0; k < np && r.ok(); k++) {
      const int16_t perr = r.i16();
      if (r.ok()) e.partition(perr);
      r.i32();  // partition_index
      r.i32();  // leader_id
      if (v >= 7) r.i32();  // leader_epoch
      r.skip_i32_array();   // replica_nodes
      r.skip_i32_array();   // isr_nodes
      if (v >= 5) r.skip_i32_array();  // offline_replicas
      r.tagged();
    }
    if (v >= 8) r.i32();  // topic_authorized_operations
    r.tagged();
  }
}

void offset_commit_response(Reader& r, int v, Errors& e) {
  if (v >= 3) r.i32();  // throttle_time_ms
  const int64_t nt = r.array_len();
  for (int64_t i = 0; i < nt && r.ok(); i++) {
    r.skip_str();
    const int64_t np = r.array_len();
    for (int64_t k = 0; k < np && r.ok(); k++) {
      r.i32();
      const int16_t err = r.i16();
      if (r.ok()) e.partition(err);
      r.tagged();
    }
    r.tagged();
  }
}

void offset_fetch_topics_response(Reader& r, int v, Errors& e) {
  const int64_t nt = r.array_len();
  for (int64_t i = 0; i < nt && r.ok(); i++) {
    r.skip_str();
    const int64_t np = r.array_len();
    for (int64_t k = 0; k < np && r.ok(); k++) {
      r.i32();              // partition_index
      r.i64();              // committed_offset
      if (v >= 5) r.i32();  // committed_leader_epoch
      r.skip_str();         // metadata
      const int16_t err = r.i16();
      if (r.ok()) e.partition(err);
      r.tagged();
    }
    r.tagged();
  }
}

void offset_fetch_response(Reader& r, int v, Errors& e) {
  if (v >= 3) r.i32();  // throttle_time_ms
  if (v <= 7) {
    offset_fetch_topics_response(r, v, e);
    if (v >= 2) {
      const int16_t err = r.i16();
      if (r.ok()) e.top_level(err);
    }
    return;
  }
  const int64_t ng = r.array_len();
  for (int64_t g = 0; g < ng && r.ok(); g++) {
    r.skip_str();  // group_id
    offset_fetch_topics_response(r, v, e);
    const int16_t err = r.i16();
    if (r.ok()) e.top_level(err);
    r.tagged();
  }
}

void find_coordinator_response(Reader& r, int v, Errors& e) {
  if (v >= 1) r.i32();  // throttle_time_ms
  if (v <= 3) {
    const int16_t err = r.i16();
    if (r.ok()) e.top_level(err);
    return;
  }
  const int64_t n = r.array_len();
  for (int64_t i = 0; i < n && r.ok(); i++) {
    r.skip_str();  // key
    r.i32();       // node_id
    r.skip_str();  // host
    r.i32();       // port
    const int16_t err = r.i16();
    if (r.ok()) e.partition(err);
    r.skip_str();  // error_message
    r.tagged();
  }
}

// JoinGroup, Heartbeat, LeaveGroup, SyncGroup: [throttle_time_ms] error_code.
void group_response(Reader& r, bool throttle, Errors& e) {
  if (throttle) r.i32();
  const int16_t err = r.i16();
  if (r.ok()) e.top_level(err);
}

void parse_response_body(Reader& r, int16_t key, int v, Errors& e) {
  switch (key) {
    case kProduce:
      return produce_response(r, v, e);
    case kFetch:
      return fetch_response(r, v, e);
    case kMetadata:
      return metadata_response(r, v, e);
    case kOffsetCommit:
      return offset_commit_response(r, v, e);
    case kOffsetFetch:
      return offset_fetch_response(r, v, e);
    case kFindCoordinator:
      return find_coordinator_response(r, v, e);
    case kJoinGroup:
      return group_response(r, v >= 2, e);
    case kHeartbeat:
    case kLeaveGroup:
    case kSyncGroup:
      return group_response(r, v >= 1, e);
    case kApiVersions:
      return group_response(r, false, e);  // error_code first, throttle after the keys
    default:
      return;
  }
}

}  // namespace

const char* kafka_api_name(int16_t api_key) {
  return api_key >= 0 && api_key < kApiCount ? kApis[api_key].name : nullptr;
}

bool kafka_version_known(int16_t api_key, int16_t api_version) {
  return api_key >= 0 && api_key < kApiCount && api_version >= 0 &&
         api_version <= kApis[api_key].max_version + kVersionSlack;
}

bool kafka_flexible(int16_t api_key, int16_t api_version) {
  if (api_key < 0 || api_key >= kApiCount) return false;
  const int16_t f = kApis[api_key].flexible_from;
  return f >= 0 && api_version >= f;
}

std::string kafka_error_name(int16_t code) {
  if (code == -1) return "UNKNOWN_SERVER_ERROR";
  if (code >= 0 && static_cast<size_t>(code) < sizeof kErrors / sizeof kErrors[0]) return kErrors[code];
  return "ERROR_" + std::to_string(code);
}

size_t KafkaRequest::heap_bytes() const {
  size_t n = string_heap_bytes(client_id) + string_heap_bytes(group_id) + vector_heap_bytes(topics);
  for (const KafkaTopic& t : topics) n += string_heap_bytes(t.name) + vector_heap_bytes(t.partitions);
  return n;
}

KafkaCheck kafka_request_start(std::span<const uint8_t> b) {
  // size(4) api_key(2) api_version(2) correlation_id(4) client_id length(2)
  if (!b.empty() && b[0] > (kKafkaMaxMessage >> 24)) return KafkaCheck::No;
  if (b.size() < 4) return KafkaCheck::NeedMore;
  const uint32_t size = be32(b.data());
  if (size < 10 || size > kKafkaMaxMessage) return KafkaCheck::No;
  if (b.size() < 8) {
    if (b.size() >= 5 && b[4] != 0) return KafkaCheck::No;  // api keys < 256
    return KafkaCheck::NeedMore;
  }
  if (!kafka_version_known(be16s(&b[4]), be16s(&b[6]))) return KafkaCheck::No;
  if (b.size() < 14) return KafkaCheck::NeedMore;
  const int16_t n = be16s(&b[12]);
  if (n < -1 || static_cast<size_t>(n > 0 ? n : 0) > kKafkaMaxClientIdCheck || 10u + (n > 0 ? n : 0) > size)
    return KafkaCheck::No;
  for (size_t i = 0; i < static_cast<size_t>(n > 0 ? n : 0); i++) {
    if (14 + i >= b.size()) return KafkaCheck::NeedMore;
    if (!printable(b[14 + i])) return KafkaCheck::No;
  }
  return KafkaCheck::Yes;
}

bool parse_kafka_request(std::span<const uint8_t> body, uint32_t size, KafkaRequest& q) {
  q.size = size;
  if (body.size() < 10) return false;
  q.api_key = be16s(&body[0]);
  q.api_version = be16s(&body[2]);
  q.correlation_id = static_cast<int32_t>(be32(&body[4]));
  if (!kafka_version_known(q.api_key, q.api_version)) return false;
  // The header's client id is an i16 string in every header version.
  Reader r(body.subspan(8), size > 8 ? size - 8 : 0, false);
  r.str(&q.client_id, kKafkaMaxString, &q.truncated, &q.client_id_null);
  if (!r.ok()) return !r.bad() && body.size() < size;  // cut inside the client id: only a prefix was kept
  const bool flex = kafka_flexible(q.api_key, q.api_version);
  r.set_flexible(flex);
  r.tagged();  // header v2
  parse_request_body(r, q);
  if (r.bad() || (r.is_short() && body.size() >= size)) q.malformed = true;
  if (r.is_short() && body.size() < size && !q.cut_in_last_records) q.truncated = true;
  return true;
}

bool parse_kafka_response(std::span<const uint8_t> body, uint32_t size, int16_t api_key, int16_t api_version,
                          KafkaResponse& out) {
  out.size = size;
  if (body.size() < 4) return false;
  out.correlation_id = static_cast<int32_t>(be32(body.data()));
  const bool flex = kafka_flexible(api_key, api_version);
  Reader r(body.subspan(4), size > 4 ? size - 4 : 0, flex);
  if (api_key != kApiVersions) r.tagged();  // header v1; ApiVersions answers with header v0
  // An ApiVersions request newer than the broker gets a v0 response
  // (UNSUPPORTED_VERSION): its error code comes first either way.
  Errors e;
  parse_response_body(r, api_key, api_version, e);
  if (e.top_seen && e.top != 0) {
    out.has_error = true;
    out.error_code = e.top;
  } else if (e.part_seen && e.part != 0) {
    out.has_error = true;
    out.error_code = e.part;
  } else if (e.top_seen || e.part_seen) {
    out.has_error = true;
    out.error_code = 0;
  }
  if (r.bad() || (r.is_short() && body.size() >= size)) out.malformed = true;
  if (r.is_short() && body.size() < size && !e.cut_in_last_records) out.truncated = true;
  return true;
}

}  // namespace tapwire::proto
