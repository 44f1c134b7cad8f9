// Where flows come from: the sensor's flow stream (DATA_DIR/flows/ or a
// snapshot's flows/), or a pcap run through the tracker; and how they are
// named (identity stream, passive DNS).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "flow_record.hpp"
#include "flow_tracker.hpp"
#include "passive_dns.hpp"
#include "segment.hpp"

namespace tapwire::flows {

// The flow stream that goes with a segment directory: the sibling "flows"
// of DIR/segments, or DIR/flows (as identity_dir_for_segments).
std::string flows_dir_for_segments(const std::string& segments_dir);

// Reads TW_REC_FLOW records of a flow directory in segment order. follow:
// waits for new records and segments (the live stream); otherwise ends after
// the last record.
class FlowStream {
 public:
  FlowStream(std::string dir, bool follow);
  // The next record; nullopt when there is none (yet).
  std::optional<tw_seg_flow> next();
  uint64_t skipped() const { return skipped_; }  // records of the wrong size
  uint64_t segments_missed() const { return missed_; }
  std::string error() const { return error_; }  // a damaged segment, one line

 private:
  std::string dir_;
  bool follow_;
  uint64_t next_seq_ = 0, current_seq_ = 0, skipped_ = 0, missed_ = 0;
  bool started_ = false;
  std::optional<shm::SegmentReader> reader_;
  std::string error_;
  bool open_next();
};

// Every flow of a flow directory active in [from_ns, to_ns] (0 = unbounded),
// one record per flow_id: its last. Throws std::runtime_error if the directory
// is not there.
std::vector<tw_seg_flow> read_flow_dir(const std::string& dir, uint64_t from_ns, uint64_t to_ns,
                                       std::string* warning = nullptr);

// Flows of a pcap/pcapng file (the tracker, flows ended at the end of the
// file), in the order they ended; DNS answers in it go to `dns`. Throws
// std::runtime_error if it cannot be read.
std::vector<tw_seg_flow> flows_from_pcap(const std::string& path, const TrackerOptions& opts, PassiveDns* dns,
                                         std::string* warning = nullptr, TrackerStats* stats = nullptr);

// DNS answers (UDP from port 53) in the segments of `seg_dir` within
// [from_ns, to_ns] (0 = unbounded): segments outside the window are skipped
// by their header, packets by their capture metadata, before parsing.
void scan_segments_dns(const std::string& seg_dir, uint64_t from_ns, uint64_t to_ns, PassiveDns& dns);

// Whether a flow was active in [from_ns, to_ns] (0 = unbounded).
bool in_window(const tw_seg_flow& r, uint64_t from_ns, uint64_t to_ns);

// Names both ends of flows: identity at first_seen from `identity_dir` (the
// same resolution calls get; "" or missing = none), names from `dns` (may
// be null). Give it flows in first_seen order (the identity stream is read
// forward in time).
class FlowNamer {
 public:
  FlowNamer(const std::string& identity_dir, const PassiveDns* dns);
  ~FlowNamer();
  Flow name(const tw_seg_flow& r);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Sorts records by first_seen (stable).
void sort_by_first_seen(std::vector<tw_seg_flow>& recs);

// Flows with both ends named (FlowNamer), sorted by first_seen.
std::vector<Flow> annotate(const std::vector<tw_seg_flow>& recs, const std::string& identity_dir, const PassiveDns* dns);

}  // namespace tapwire::flows
