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
// Where segment `seq` is built before it is renamed into place:
// DIR/.<seq>.twseg.tmp (a writer that starts deletes those left behind).
std::string segment_temp_path(const std::string& dir, uint64_t seq);
// Renames a built segment into place without replacing a file of that name
// (renameat2 RENAME_NOREPLACE, or link + unlink on file systems without it).
// Returns 0 or the errno (EEXIST: a segment of that number exists).
int rename_segment_into_place(const std::string& tmp, const std::string& path);

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

// One segment of version 2 (FORMAT.md, "Version 2: per-CPU streams"): a
// region per stream, each filled with spans of that stream's memory (a
// capture ring) written as they are, with O_DIRECT where the file system
// takes it. A stream's bytes are addressed by their position in the stream
// (the ring's monotonic byte count); a region starts at a stream position and
// holds the stream's bytes from there on. Not thread-safe; single writer.
struct StreamSpec {
  uint32_t stream;  // CPU number, or TW_SEG_STREAM_CONTROL
  uint64_t capacity;  // bytes, rounded down to TW_SEG_BLOCK
  uint64_t start_pos;  // stream position of the region's first record
};

// A stream's memory: `bytes` (a power of two, a multiple of TW_SEG_BLOCK)
// at `data` (TW_SEG_BLOCK-aligned); position p lives at data + (p & (bytes - 1)).
struct StreamMemory {
  const uint8_t* data;
  uint64_t bytes;
};

class StreamSegmentWriter {
 public:
  // Creates DIR/<seq>.twseg, fully allocated. Throws SegmentError.
  static StreamSegmentWriter create(const std::string& dir, uint64_t seq, std::span<const StreamSpec> regions);
  StreamSegmentWriter(StreamSegmentWriter&&) noexcept;
  StreamSegmentWriter& operator=(StreamSegmentWriter&&) noexcept;
  StreamSegmentWriter(const StreamSegmentWriter&) = delete;
  StreamSegmentWriter& operator=(const StreamSegmentWriter&) = delete;
  ~StreamSegmentWriter();  // publishes; does not seal

  size_t regions() const;
  // Stream position past the last byte written to region i.
  uint64_t position(size_t i) const;
  // The highest stream position region i can take: a span ending at or below
  // it fits.
  uint64_t limit(size_t i) const;
  // Writes the stream's bytes [position(i), end) into region i (whole
  // blocks: the block holding position(i) is written again, so the stream's
  // memory must still hold it), then their block checksums. `records`,
  // `first_ts`, `last_ts` describe the records in the span (the caller walked
  // them). Invisible to readers until publish(). False if the span does not
  // fit or the write failed (nothing of it is published then).
  bool write(size_t i, StreamMemory mem, uint64_t end, uint64_t records, uint64_t first_ts, uint64_t last_ts);
  // Makes what was written visible: the regions' committed offsets, then the
  // watermark (every record at or below it is in), with release order.
  void publish(uint64_t watermark_ns);
  // Publishes, waits for the disk, marks the segment sealed and gives the
  // regions' unused space back to the file system.
  void seal();

  bool direct() const;  // writes go through O_DIRECT
  uint64_t seq() const;
  uint64_t created_ns() const;
  uint64_t record_count() const;
  uint64_t bytes_written() const;  // stream bytes written (whole blocks counted once)
  uint64_t file_size() const;
  const std::string& path() const;

 private:
  StreamSegmentWriter() = default;
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
  // Version 1: of the record header within the record area. Version 2: the
  // sum of record_size() of the records returned before it (the segment's
  // records in time order); either way, the next record's offset is at least
  // offset + SegmentWriter::record_size(body.size()).
  uint64_t offset;
};

// The timestamp a record carries in its body (packet, interface, loss and
// the identity and flow records), 0 for types that carry none or a body too
// short for it.
uint64_t record_timestamp(uint16_t type, std::span<const uint8_t> body);

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
  int version() const;  // TW_SEG_VERSION or TW_SEG_VERSION_STREAMS

 private:
  SegmentReader() = default;
  static SegmentReader open_streams(const std::string& path, int fd, const tw_seg_header& h, uint64_t size);
  std::optional<Record> next_streams();
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
