// The part of a segment directory both stores share (SegmentStore for
// version-1 streams, CaptureStore for the per-CPU capture streams): the
// writer's lock, taking stock of the files at start (recovering what a dead
// writer left open, setting damaged files aside) and retention. Internal to
// tw_shm. FORMAT.md, "The store".
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "segment.hpp"

namespace tapwire::shm {

class SegmentRing {
 public:
  // Creates the directory, takes its lock, recovers and lists the segments.
  // Throws SegmentError.
  explicit SegmentRing(std::string dir);
  ~SegmentRing();
  SegmentRing(const SegmentRing&) = delete;
  SegmentRing& operator=(const SegmentRing&) = delete;

  const std::string& dir() const { return dir_; }
  uint64_t take_seq() { return next_seq_++; }
  // A segment just sealed joins the ring (its size read from the disk).
  void add_sealed(uint64_t seq, const std::string& path);
  // Deletes the oldest sealed segment; false if there is none.
  bool delete_oldest();
  // Deletes the oldest sealed segments while they, plus `extra` bytes, exceed
  // `limit`.
  void enforce(uint64_t limit, uint64_t extra);
  uint64_t sealed_bytes() const { return sealed_bytes_; }
  size_t sealed_count() const { return sealed_.size(); }
  uint64_t deleted() const { return deleted_; }
  uint64_t damaged_count() const { return damaged_.size(); }
  const std::vector<std::string>& damaged() const { return damaged_; }

  // Bytes a file takes on disk: its size, or less for a sparse file (a
  // sealed version-2 segment gives its regions' unused space back).
  static uint64_t disk_size(const std::string& path);

 private:
  struct Sealed {
    uint64_t seq;
    std::string path;
    uint64_t size;
  };
  std::string dir_;
  int lock_fd_ = -1;
  std::deque<Sealed> sealed_;  // oldest first
  uint64_t sealed_bytes_ = 0;
  uint64_t next_seq_ = 0;
  uint64_t deleted_ = 0;
  std::vector<std::string> damaged_;

  void lock();
  void scan();
  void set_aside(const SegmentInfo& info, const std::string& why);
};

}  // namespace tapwire::shm
