// The capture directory's writer: version-2 segments with one region per
// CPU (that CPU's capture ring, written as it is) and a control region for
// the sensor's own records (interfaces, losses). FORMAT.md, "Version 2".
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "segment.hpp"

namespace tapwire::shm {

class CaptureStore {
 public:
  // `streams`: one per capture ring (index = CPU). Takes the directory's lock,
  // recovers and sets aside as SegmentStore does. Throws SegmentError.
  CaptureStore(StoreOptions opts, uint32_t streams);
  ~CaptureStore();  // seals the open segment
  CaptureStore(const CaptureStore&) = delete;
  CaptureStore& operator=(const CaptureStore&) = delete;

  // Called each time a segment is opened: the sensor appends its interface
  // records there (append_control).
  void on_open(std::function<void(CaptureStore&)> cb);

  // Stream position of stream i past its last stored (or dropped) byte. Set
  // once, before anything is stored, to where the ring's consumer stands.
  uint64_t position(uint32_t i) const;
  void set_position(uint32_t i, uint64_t pos);
  // The first position the ring must still hold: the start of the block
  // that the next write rewrites.
  uint64_t hold_position(uint32_t i) const { return position(i) / TW_SEG_BLOCK * TW_SEG_BLOCK; }
  // The highest stream position the open segment can take for stream i,
  // opening one if needed; 0 if none can be opened (the disk is full).
  uint64_t limit(uint32_t i);
  // Writes stream i's bytes [position(i), end) from its memory (FORMAT.md:
  // whole blocks, the one holding position(i) again). On failure the span is
  // dropped: the open segment is sealed and the position moves to `end`.
  bool write(uint32_t i, StreamMemory mem, uint64_t end, uint64_t records, uint64_t first_ts, uint64_t last_ts);
  // Gives up stream i's bytes up to `end` without storing them (counted by
  // the caller): the open segment is sealed (its region cannot have a gap).
  void drop(uint32_t i, uint64_t end);

  // A record of the sensor's own (TW_REC_IFACE, TW_REC_LOSS) for the control
  // region; written with the next publish().
  bool append_control(uint16_t type, std::span<const uint8_t> body, uint64_t ts_ns);
  // Writes the control records, then makes every region's writes visible
  // with the watermark: every record at or below it is stored.
  void publish(uint64_t watermark_ns);
  // Seals the open segment now; the next limit() opens a new one.
  void rotate();
  // Rotates if the open segment is older than max_segment_age_ns.
  void tick(uint64_t now_ns);
  bool has_open() const;
  bool direct() const;  // the open (or last) segment is written with O_DIRECT

  StoreStats stats() const;
  const StoreOptions& options() const;
  const std::vector<std::string>& damaged() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tapwire::shm
