// The records of the identity stream (DATA_DIR/identity/, docs/IDENTITY.md):
// encoding for the sensor, checked decoding for every reader. Bodies are the
// structs of shm/segment_format.h and bpf/tapwire_abi.h.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "segment_format.h"
#include "tapwire_abi.h"
#include "workload_object.hpp"

namespace tapwire::identity {

inline constexpr size_t kMaxPathBytes = 4096;

struct SocketRecord {
  tw_sock_event ev{};  // ts_ns CLOCK_REALTIME
};

struct ProcessRecord {
  uint64_t ts_ns = 0;
  uint64_t cgroup_id = 0;
  uint32_t tgid = 0, ppid = 0;
  uint8_t type = 0;  // TW_IDENT_EXEC, TW_IDENT_EXIT, TW_PROC_SCAN
  uint8_t flags = 0;  // TW_IDENT_REC_F_DUMP
  std::string comm, exe;
};

struct CgroupRecord {
  uint64_t ts_ns = 0;
  uint64_t cgroup_id = 0;
  uint8_t flags = 0;
  std::string path;  // below the cgroup2 mount, starting with '/'
};

struct WorkloadRecord {
  uint64_t ts_ns = 0;
  uint8_t flags = 0;
  Workload workload;
};

struct DumpRecord {
  uint64_t ts_ns = 0;
  uint32_t phase = 0;  // TW_DUMP_BEGIN, TW_DUMP_END
  uint64_t records = 0;
};

using IdentityRecord = std::variant<SocketRecord, ProcessRecord, CgroupRecord, WorkloadRecord, DumpRecord>;

// Is this record type part of the identity stream?
inline bool is_identity_type(uint16_t type) { return type >= TW_REC_SOCKET && type <= TW_REC_DUMP; }

// nullopt (and *error) if the body is too short, a length runs past it, or
// a field is out of range. A body longer than its struct is valid (a later
// version may append fields); the known prefix is used.
std::optional<IdentityRecord> decode_identity(uint16_t type, std::span<const uint8_t> body, std::string* error = nullptr);

// Body bytes of each record type (the record type is the second element).
std::pair<std::vector<uint8_t>, uint16_t> encode(const IdentityRecord& r);

// The timestamp a record carries.
uint64_t record_ts(const IdentityRecord& r);
// Is it part of a state dump (applied whole, whatever its time)?
bool record_in_dump(const IdentityRecord& r);

// The comm of a kernel event (16 bytes, NUL-padded) as a string.
std::string comm_string(const char (&comm)[16]);

}  // namespace tapwire::identity
