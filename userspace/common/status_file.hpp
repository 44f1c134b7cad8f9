// The sensor's status file, DATA_DIR/status.json: rewritten atomically
// (temporary file + rename) about once a second and at exit, read by
// `tapwire status` and by tests. Schema (all counters cumulative since start):
//
// {
//   "version": "0.1.0", "pid": 1234, "state": "capturing" | "stopped",
//   "started_ns": 0, "updated_ns": 0,                      // CLOCK_REALTIME
//   "interfaces": [{"name": "eth0", "ifindex": 2}],
//   "counters": {"packets_seen": 0, "packets_captured": 0, "bytes_captured": 0,
//                "records": 0, "filtered": 0, "not_tcp_udp": 0, "truncated": 0},
//   "drops": {"ringbuf_full": 0, ..., "storage_write_failed": 0},   // by reason, all CPUs
//   "drops_by_cpu": [{"cpu": 0, "ringbuf_full": 0, ...}],
//   "storage": {"dir": "...", "segments": 0, "bytes_stored": 0, "storage_size": 0,
//               "segment_size": 0, "segments_deleted": 0, "segments_damaged": 0,
//               "records_written": 0}
// }
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace tapwire {

std::string status_file_path(const std::string& data_dir);
// Writes `status` to DATA_DIR/status.json atomically. Returns false on error
// (the previous file, if any, stays intact).
bool write_status_file(const std::string& data_dir, const nlohmann::json& status);

// Replaces `path` with `text` atomically: a temporary file next to it
// (PATH.tmp), created with O_CREAT|O_EXCL|O_NOFOLLOW, then renamed over it.
// For files in the data dir, which the dissector's group may write: a name
// planted there (a link to another file, a FIFO) is removed, never followed
// or opened. Returns false with errno set; the previous file stays intact.
bool write_file_atomic(const std::string& path, const std::string& text, mode_t mode);
// Reads DATA_DIR/status.json; nullopt if it is missing or not valid JSON.
std::optional<nlohmann::json> read_status_file(const std::string& data_dir);

}  // namespace tapwire
