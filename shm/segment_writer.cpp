// SegmentWriter: appends records to one segment file; recover_segment: seals
// a segment whose writer died. Format and publish protocol: FORMAT.md.
//
// The writer maps only the header page. Records are gathered in a staging
// buffer and written with pwrite, page-sized runs at a time: storing through
// a shared mapping of a fresh file faults every page in first (the kernel
// reads or zero-fills it only for us to overwrite it), which cost the sensor
// most of its CPU. Readers map the file; the page cache is the same, so what
// pwrite stored is what they see once `committed` says so.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <utility>
#include <vector>
#include <ctime>

#include "segment.hpp"
#include "shm_util.hpp"
#include "tapwire_abi.h"

namespace tapwire::shm {
namespace {

using namespace detail;

constexpr uint64_t kHeader = TW_SEG_HEADER_SIZE;
// A capacity this large is a bug in the caller, not a disk size.
constexpr uint64_t kMaxCapacity = 1ull << 48;
// Records are staged and written in runs of up to this many bytes.
constexpr size_t kStagingBytes = 1u << 20;
constexpr uint64_t kWritebackChunk = 8ull << 20;


uint64_t page_size() {
  static const uint64_t ps = [] {
    long v = sysconf(_SC_PAGESIZE);
    return v > 0 ? static_cast<uint64_t>(v) : 4096ull;
  }();
  return ps;
}



// Size the file keeps once sealed: the header plus the published records,
// rounded up to a page so that the mapping of the last page stays valid.
uint64_t sealed_file_size(uint64_t committed) { return kHeader + round_up(committed, page_size()); }


}  // namespace

std::string segment_path(const std::string& dir, uint64_t seq) {
  char name[32];
  std::snprintf(name, sizeof name, "%016" PRIx64 "%s", seq, TW_SEG_FILE_SUFFIX);
  if (dir.empty()) return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

struct SegmentWriter::Impl {
  int fd = -1;
  uint8_t* map = nullptr;  // the header page, MAP_SHARED
  size_t map_len = 0;
  tw_seg_header* hdr = nullptr;
  std::vector<uint8_t> staging;  // records appended but not yet written
  uint64_t written = 0;  // record-area bytes written to the file
  bool write_failed = false;  // a pwrite failed: nothing more is accepted
  std::string path;
  uint64_t seq = 0;
  uint64_t capacity = 0;
  uint64_t created_ns = 0;
  uint64_t cursor = 0;  // bytes appended
  uint64_t published = 0;  // bytes published (header's committed)
  uint64_t writeback_started = 0;  // record-area bytes handed to writeback
  uint64_t count = 0;  // records appended
  uint64_t staged_count = 0;  // of which still in staging
  uint64_t first_ts = 0;
  uint64_t last_ts = 0;
  bool sealed = false;

  bool flush();
  void unmap_and_close() {
    if (map) munmap(map, map_len);
    map = nullptr;
    hdr = nullptr;
    if (fd >= 0) close(fd);
    fd = -1;
  }
};

std::string segment_temp_path(const std::string& dir, uint64_t seq) {
  char name[40];
  std::snprintf(name, sizeof name, ".%016" PRIx64 "%s.tmp", seq, TW_SEG_FILE_SUFFIX);
  return (dir.empty() ? std::string() : dir.back() == '/' ? dir : dir + "/") + name;
}

int rename_segment_into_place(const std::string& tmp, const std::string& path) {
  if (renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE) == 0) return 0;
  const int err = errno;
  if (err != EINVAL && err != ENOSYS) return err;
  // A file system without RENAME_NOREPLACE: link() does not replace either.
  if (link(tmp.c_str(), path.c_str()) != 0) return errno;
  unlink(tmp.c_str());
  return 0;
}

SegmentWriter SegmentWriter::create(const std::string& dir, uint64_t seq, uint64_t capacity) {
  capacity &= ~static_cast<uint64_t>(TW_SEG_ALIGN - 1);
  const std::string path = segment_path(dir, seq);
  if (capacity == 0 || capacity > kMaxCapacity)
    throw SegmentError(path + ": invalid segment capacity " + std::to_string(capacity) + " bytes");

  // Built under a hidden temporary name and renamed into place once the
  // header is written, so that a reader never finds a half-made segment.
  const std::string tmp = segment_temp_path(dir, seq);

  const uint64_t size = kHeader + capacity;
  int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) throw SegmentError(path + ": cannot create segment file: " + errstr(errno));
  auto fail = [&](const std::string& what, int err) {
    close(fd);
    unlink(tmp.c_str());
    throw SegmentError(path + ": " + what + ": " + errstr(err));
  };
  // posix_fallocate returns the error rather than setting errno.
  if (int err = posix_fallocate(fd, 0, static_cast<off_t>(size)); err != 0)
    fail("cannot allocate " + std::to_string(size) + " bytes (free space in the data directory or lower the storage size)",
         err);
  void* m = mmap(nullptr, kHeader, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) fail("cannot map segment file", errno);

  auto* map = static_cast<uint8_t*>(m);
  auto* hdr = reinterpret_cast<tw_seg_header*>(map);
  const uint64_t now = realtime_ns();
  // The file is fresh and zero-filled by fallocate; only non-zero fields are set.
  std::memcpy(hdr->magic, TW_SEG_MAGIC, sizeof hdr->magic);
  hdr->version = TW_SEG_VERSION;
  hdr->header_size = TW_SEG_HEADER_SIZE;
  hdr->capacity = capacity;
  hdr->seq = seq;
  hdr->created_ns = now;
  hdr->writer_pid = static_cast<uint32_t>(getpid());
  hdr->abi_version = TW_ABI_VERSION;
  aref(hdr->state).store(TW_SEG_OPEN, std::memory_order_release);

  if (int err = rename_segment_into_place(tmp, path); err != 0) {
    munmap(m, kHeader);
    fail(err == EEXIST ? "segment file already exists" : "cannot rename segment file into place", err);
  }

  SegmentWriter w;
  w.impl_ = new Impl;
  auto& s = *w.impl_;
  s.fd = fd;
  s.map = map;
  s.map_len = kHeader;
  s.hdr = hdr;
  s.staging.reserve(kStagingBytes);
  s.path = path;
  s.seq = seq;
  s.capacity = capacity;
  s.created_ns = now;
  return w;
}

SegmentWriter::SegmentWriter(SegmentWriter&& o) noexcept : impl_(o.impl_) { o.impl_ = nullptr; }

SegmentWriter& SegmentWriter::operator=(SegmentWriter&& o) noexcept {
  if (this != &o) {
    SegmentWriter old(std::move(*this));  // releases what this held
    impl_ = o.impl_;
    o.impl_ = nullptr;
  }
  return *this;
}

SegmentWriter::~SegmentWriter() {
  if (!impl_) return;
  publish();
  impl_->unmap_and_close();
  delete impl_;
  impl_ = nullptr;
}

uint64_t SegmentWriter::record_size(uint64_t body_len) {
  return sizeof(tw_seg_rec_hdr) + ((body_len + TW_SEG_ALIGN - 1) & ~static_cast<uint64_t>(TW_SEG_ALIGN - 1));
}

namespace {

// Writes all of [data, data + len) at `off`, retrying short writes.
bool pwrite_all(int fd, const uint8_t* data, size_t len, uint64_t off) {
  while (len > 0) {
    ssize_t n = pwrite(fd, data, len, static_cast<off_t>(off));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    len -= static_cast<size_t>(n);
    off += static_cast<uint64_t>(n);
  }
  return true;
}

}  // namespace

bool SegmentWriter::append(uint16_t type, std::span<const uint8_t> a, std::span<const uint8_t> b, uint64_t ts_ns) {
  auto& s = *impl_;
  if (!s.hdr || s.write_failed || type == 0) return false;  // sealed; type 0 marks zero-filled space
  const uint64_t len = static_cast<uint64_t>(a.size()) + b.size();
  if (len > UINT32_MAX) return false;
  const uint64_t rs = record_size(len);
  if (rs > s.capacity - s.cursor) return false;
  if (s.staging.size() + rs > kStagingBytes && !s.flush()) return false;

  tw_seg_rec_hdr rh{};
  rh.len = static_cast<uint32_t>(len);
  rh.type = type;
  rh.crc32c = crc32c(b, crc32c(a));
  const size_t at = s.staging.size();
  // A record larger than the staging buffer grows it once; it is rare
  // (records are at most a 16 KiB chunk plus metadata from the sensor).
  s.staging.resize(at + rs);
  uint8_t* p = s.staging.data() + at;
  std::memcpy(p, &rh, sizeof rh);
  p += sizeof rh;
  if (!a.empty()) std::memcpy(p, a.data(), a.size());
  if (!b.empty()) std::memcpy(p + a.size(), b.data(), b.size());
  if (const uint64_t pad = rs - sizeof rh - len; pad) std::memset(p + len, 0, pad);

  s.cursor += rs;
  s.count++;
  s.staged_count++;
  if (ts_ns) {
    if (!s.first_ts || ts_ns < s.first_ts) s.first_ts = ts_ns;
    if (ts_ns > s.last_ts) s.last_ts = ts_ns;
  }
  return true;
}

bool SegmentWriter::Impl::flush() {
  if (staging.empty()) return !write_failed;
  if (write_failed || !pwrite_all(fd, staging.data(), staging.size(), kHeader + written)) {
    // What was staged is lost; what was written before stays published.
    write_failed = true;
    cursor = written;
    count -= staged_count;
    staged_count = 0;
    staging.clear();
    return false;
  }
  written += staging.size();
  staged_count = 0;
  staging.clear();
  return true;
}

void SegmentWriter::publish() {
  if (!impl_ || !impl_->hdr) return;
  auto& s = *impl_;
  s.flush();
  if (s.written == s.published) return;
  // The summary fields first, then the release store of committed: a reader
  // that acquires committed sees them at least as new as that commit.
  aref(s.hdr->record_count).store(s.count, std::memory_order_relaxed);
  aref(s.hdr->first_ts_ns).store(s.first_ts, std::memory_order_relaxed);
  aref(s.hdr->last_ts_ns).store(s.last_ts, std::memory_order_relaxed);
  aref(s.hdr->committed).store(s.written, std::memory_order_release);
  s.published = s.written;
  // Start writeback of what is published every kWritebackChunk bytes, so
  // that the fdatasync at seal() has little left to wait for.
  if (s.written - s.writeback_started >= kWritebackChunk) {
    sync_file_range(s.fd, static_cast<off64_t>(TW_SEG_HEADER_SIZE + s.writeback_started),
                    static_cast<off64_t>(s.written - s.writeback_started), SYNC_FILE_RANGE_WRITE);
    s.writeback_started = s.written;
  }
}

void SegmentWriter::seal() {
  if (!impl_ || !impl_->hdr) return;
  auto& s = *impl_;
  publish();
  // Sealed means durable: the records and the header that counts them reach
  // the disk before the segment says it is sealed (and snapshots link it).
  // If the disk fails it (EIO), readers still get the records from the page
  // cache; recovery at the next start checks each record's CRC anyway.
  (void)fdatasync(s.fd);
  aref(s.hdr->sealed_ns).store(realtime_ns(), std::memory_order_relaxed);
  aref(s.hdr->state).store(static_cast<uint32_t>(TW_SEG_SEALED), std::memory_order_release);
  int fd = s.fd;
  s.fd = -1;
  s.unmap_and_close();
  // Readers that mapped the whole capacity only touch bytes below committed,
  // which the shrunk file still holds. Failing to shrink wastes space only.
  if (ftruncate(fd, static_cast<off_t>(sealed_file_size(s.cursor))) != 0) { /* keep the larger file */
  }
  close(fd);
  s.sealed = true;
}

uint64_t SegmentWriter::seq() const { return impl_->seq; }
uint64_t SegmentWriter::used() const { return impl_->cursor; }
uint64_t SegmentWriter::capacity() const { return impl_->capacity; }
uint64_t SegmentWriter::record_count() const { return impl_->count; }
uint64_t SegmentWriter::created_ns() const { return impl_->created_ns; }
const std::string& SegmentWriter::path() const { return impl_->path; }

uint64_t recover_stream_segment(const std::string& path);  // stream_writer.cpp

uint64_t recover_segment(const std::string& path) {
  uint64_t end = 0, count = 0, first = 0, last = 0;
  bool was_sealed = false, corrupt = false;
  {
    SegmentReader r = SegmentReader::open(path);  // throws if not a segment
    if (r.version() == TW_SEG_VERSION_STREAMS) return recover_stream_segment(path);
    was_sealed = r.sealed();
    while (auto rec = r.next()) {
      end = rec->offset + SegmentWriter::record_size(rec->body.size());
      count++;
      if (uint64_t ts = record_timestamp(rec->type, rec->body)) {
        if (!first || ts < first) first = ts;
        if (ts > last) last = ts;
      }
    }
    corrupt = r.corrupt();
  }
  if (was_sealed && !corrupt) return count;

  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) throw SegmentError(path + ": cannot open segment for recovery: " + errstr(errno));
  struct stat st{};
  if (fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) < kHeader) {
    close(fd);
    throw SegmentError(path + ": segment changed during recovery");
  }
  void* m = mmap(nullptr, kHeader, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) {
    int err = errno;
    close(fd);
    throw SegmentError(path + ": cannot map segment header for recovery: " + errstr(err));
  }
  auto* hdr = static_cast<tw_seg_header*>(m);
  aref(hdr->record_count).store(count, std::memory_order_relaxed);
  aref(hdr->first_ts_ns).store(first, std::memory_order_relaxed);
  aref(hdr->last_ts_ns).store(last, std::memory_order_relaxed);
  aref(hdr->committed).store(end, std::memory_order_release);
  aref(hdr->sealed_ns).store(realtime_ns(), std::memory_order_relaxed);
  aref(hdr->state).store(static_cast<uint32_t>(TW_SEG_SEALED), std::memory_order_release);
  munmap(m, kHeader);
  const uint64_t want = sealed_file_size(end);
  if (want < static_cast<uint64_t>(st.st_size) && ftruncate(fd, static_cast<off_t>(want)) != 0) { /* keep it */
  }
  close(fd);
  return count;
}

}  // namespace tapwire::shm
