// tapwire segment files: a bounded ring of mmap'd files with one writer (the
// sensor) and any number of readers in other processes. Format: shm/FORMAT.md.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "segment_format.h"

namespace tapwire::shm {

// Setup errors (open, create, lock, not a segment) are thrown as this, with a
// one-line message naming the file and what to do.
class SegmentError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

uint32_t crc32c(std::span<const uint8_t> data, uint32_t crc = 0);

// Path of segment `seq` inside `dir`: DIR/<seq as 16 hex digits>.twseg
std::string segment_path(const std::string& dir, uint64_t seq);

// ---------------------------------------------------------------- writer ---

// One segment file, mapped read-write. Not thread-safe; single writer.
class SegmentWriter {
 public:
  // Creates DIR/<seq>.twseg with `capacity` bytes of record area, fully
  // allocated up front (posix_fallocate) so that a full disk is an error here
  // rather than a SIGBUS later. Throws SegmentError.
  static SegmentWriter create(const std::string& dir, uint64_t seq, uint64_t capacity);
  SegmentWriter(SegmentWriter&&) noexcept;
  SegmentWriter& operator=(SegmentWriter&&) noexcept;
  SegmentWriter(const SegmentWriter&) = delete;
  SegmentWriter& operator=(const SegmentWriter&) = delete;
  ~SegmentWriter();  // publishes and unmaps; does not seal

  // Space a record with a body of `body_len` bytes takes (header + padding).
  static uint64_t record_size(uint64_t body_len);
  // Appends one record whose body is `a` followed by `b`; `ts_ns` feeds the
  // header's first/last timestamps. Invisible to readers until publish().
  // Returns false, writing nothing, if the record does not fit.
  bool append(uint16_t type, std::span<const uint8_t> a, std::span<const uint8_t> b, uint64_t ts_ns);
  // Makes every appended record visible to readers (one release store).
  void publish();
  // Publishes, marks the segment sealed and shrinks the file to what it holds.
  void seal();

  uint64_t seq() const;
  uint64_t used() const;  // record-area bytes appended (published or not)
  uint64_t capacity() const;
  uint64_t record_count() const;
  uint64_t created_ns() const;
  const std::string& path() const;

 private:
  SegmentWriter() = default;
  struct Impl;
  Impl* impl_ = nullptr;
};

// Makes a segment left open by a writer that died consistent: keeps the
// longest valid prefix of its published records (framing and CRC checked),
// then seals it. Returns the number of records kept. Throws SegmentError if
// the file is not a segment.
uint64_t recover_segment(const std::string& path);

struct StoreOptions {
  std::string dir;  // created if missing
  uint64_t storage_size = 1ull << 30;  // total bytes of segment files at most
  uint64_t segment_size = 64ull << 20;  // file size of one segment; shrunk to storage_size / 4 if larger
  uint64_t max_segment_age_ns = 60ull * 1000000000ull;  // rotate after this long even if not full
};

struct StoreStats {
  uint64_t segments = 0;  // files in the ring, the open one included
  uint64_t bytes_stored = 0;  // sum of their sizes on disk
  uint64_t segments_deleted = 0;  // by retention, since start
  uint64_t records_written = 0;
  uint64_t bytes_written = 0;  // record bytes, headers included
  uint64_t append_failures = 0;  // records that could not be stored (counted as a drop)
  uint64_t segments_damaged = 0;  // found damaged at start and moved to DIR/damaged/
};

// The writer's side of a segment directory: takes an exclusive lock
// (DIR/.writer.lock), recovers segments a previous writer left open, moves
// damaged ones (not a segment any more: zeroed or cut header) to
// DIR/damaged/, rotates
// to a new segment when the open one is full or old, and deletes the oldest
// sealed segments while the total exceeds storage_size.
class SegmentStore {
 public:
  explicit SegmentStore(StoreOptions opts);  // throws SegmentError
  ~SegmentStore();  // seals the open segment
  SegmentStore(const SegmentStore&) = delete;
  SegmentStore& operator=(const SegmentStore&) = delete;

  // Called with the new writer each time a segment is opened, before any
  // other record goes into it (the sensor writes its interface records here).
  void on_open(std::function<void(SegmentWriter&)> cb);

  // Appends a record to the open segment, rotating first if it does not fit
  // or the segment is older than max_segment_age_ns. Returns false (and
  // counts append_failures) if it cannot be stored at all.
  bool append(uint16_t type, std::span<const uint8_t> a, std::span<const uint8_t> b, uint64_t ts_ns);
  void publish();
  // Seals the open segment (if any) now; the next append opens a new one.
  void rotate();
  // Rotates if the open segment is older than max_segment_age_ns.
  void tick(uint64_t now_ns);

  StoreStats stats() const;
  const StoreOptions& options() const;
  // Why each segment set aside at start was (one line each, naming the file).
  const std::vector<std::string>& damaged() const;

 private:
  struct Impl;
  Impl* impl_;
};

// ---------------------------------------------------------------- reader ---

struct Record {
  uint16_t type;
  std::span<const uint8_t> body;  // valid while the reader that returned it lives
  uint64_t offset;  // of the record header within the record area
};

// One segment file, mapped read-only. Follows a writer in another process:
// next() returns records as they are published.
class SegmentReader {
 public:
  // Throws SegmentError if the file cannot be opened or is not a segment
  // ("PATH: not a tapwire segment file (bad magic)").
  static SegmentReader open(const std::string& path);
  SegmentReader(SegmentReader&&) noexcept;
  SegmentReader& operator=(SegmentReader&&) noexcept;
  SegmentReader(const SegmentReader&) = delete;
  SegmentReader& operator=(const SegmentReader&) = delete;
  ~SegmentReader();

  // The next published record, or nullopt when there is none yet (or the
  // segment is sealed and exhausted, or a record failed validation: see
  // corrupt()). Records are validated (framing, CRC) before being returned.
  std::optional<Record> next();
  bool sealed() const;  // acquire load of the header's state
  // True once every record has been returned and the segment is sealed.
  bool exhausted() const;
  // True if a published record failed validation; reading stops there.
  bool corrupt() const;
  const tw_seg_header& header() const;  // fields may change while open
  uint64_t seq() const;
  const std::string& path() const;

 private:
  SegmentReader() = default;
  struct Impl;
  Impl* impl_ = nullptr;
};

struct SegmentInfo {
  uint64_t seq;
  std::string path;
};

// Segment files in `dir`, oldest first (by sequence number).
std::vector<SegmentInfo> list_segments(const std::string& dir);

}  // namespace tapwire::shm
