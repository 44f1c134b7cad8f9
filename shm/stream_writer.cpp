// StreamSegmentWriter: segments of version 2, one region per stream, filled
// with spans of the streams' memory as they are. FORMAT.md, "Version 2".
//
// The capture rings already hold records in the segment format (struct
// tw_seg_rec8), so a span of committed records goes from ring memory to the
// file with one write and no copy. With O_DIRECT the page cache is skipped
// too: the write is a DMA from the ring's pages. O_DIRECT wants the file
// offset, the memory address and the length aligned to the device's logical
// block; the writer keeps region offsets congruent with stream positions
// modulo TW_SEG_BLOCK, so whole blocks are always written from block-aligned
// ring memory. The block holding the last committed byte is written again
// with the next span (its head is still in the ring: the caller gives the
// ring back only up to the start of that block).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <utility>
#include <vector>

#include "segment.hpp"
#include "shm_util.hpp"
#include "tapwire_abi.h"

namespace tapwire::shm {
namespace {

using namespace detail;

constexpr uint64_t kBlock = TW_SEG_BLOCK;
constexpr uint64_t kTableOff = sizeof(tw_seg_header) + sizeof(tw_seg_streams);  // 128
// One write call moves at most this much (measured: 1-4 MB writes from ring
// memory cost the least CPU per byte).
constexpr uint64_t kMaxWrite = 2ull << 20;




// Writes the iovecs fully at `off`; false on an error (errno set).
bool pwritev_all(int fd, iovec* iov, int cnt, uint64_t off) {
  while (cnt > 0) {
    ssize_t n = pwritev(fd, iov, cnt, static_cast<off_t>(off));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = EIO;
      return false;
    }
    off += static_cast<uint64_t>(n);
    auto left = static_cast<size_t>(n);
    while (cnt > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      iov++;
      cnt--;
    }
    if (cnt > 0) {
      iov->iov_base = static_cast<uint8_t*>(iov->iov_base) + left;
      iov->iov_len -= left;
    }
  }
  return true;
}

}  // namespace

struct StreamSegmentWriter::Impl {
  struct Region {
    uint64_t base_pos;  // stream position of the region's offset 0 (block-aligned)
    uint64_t pos;  // stream position past the last byte written
    uint64_t capacity;
    uint64_t file_off;
    uint64_t records = 0;
    tw_seg_region* entry;  // in the mapped header
    tw_seg_block* table;  // in the mapped header
  };
  int fd = -1;  // buffered
  int dfd = -1;  // O_DIRECT, or -1 when the file system refuses it
  uint8_t* map = nullptr;  // the header (and the block tables), MAP_SHARED
  size_t map_len = 0;
  tw_seg_header* hdr = nullptr;
  tw_seg_streams* ext = nullptr;
  std::vector<Region> regions;
  std::string path;
  uint64_t seq = 0, created_ns = 0, file_size = 0;
  uint64_t count = 0, first_ts = 0, last_ts = 0, bytes = 0;
  uint64_t watermark = 0;
  bool dirty = false;

  void close_all() {
    if (map) munmap(map, map_len);
    map = nullptr;
    hdr = nullptr;
    ext = nullptr;
    if (dfd >= 0) close(dfd);
    if (fd >= 0) close(fd);
    dfd = fd = -1;
  }
  bool write_blocks(uint64_t file_off, iovec* iov, int cnt);
};

StreamSegmentWriter StreamSegmentWriter::create(const std::string& dir, uint64_t seq,
                                                std::span<const StreamSpec> specs) {
  const std::string path = segment_path(dir, seq);
  if (specs.empty() || specs.size() > TW_SEG_MAX_REGIONS)
    throw SegmentError(path + ": invalid number of regions " + std::to_string(specs.size()));
  // Layout: header page(s) holding the base header, the region table and the
  // block tables; then the regions, each block-aligned.
  uint64_t table_end = kTableOff + specs.size() * sizeof(tw_seg_region);
  std::vector<uint64_t> crc_off(specs.size()), caps(specs.size());
  for (size_t i = 0; i < specs.size(); i++) {
    caps[i] = specs[i].capacity / kBlock * kBlock;
    if (caps[i] < 4 * kBlock) throw SegmentError(path + ": region capacity too small");
    crc_off[i] = table_end;
    table_end += caps[i] / kBlock * sizeof(tw_seg_block);
  }
  const uint64_t header_size = round_up(table_end, kBlock);
  uint64_t size = header_size;
  std::vector<uint64_t> file_off(specs.size());
  for (size_t i = 0; i < specs.size(); i++) {
    file_off[i] = size;
    size += caps[i];
  }

  const std::string tmp = segment_temp_path(dir, seq);
  int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) throw SegmentError(path + ": cannot create segment file: " + errstr(errno));
  auto fail = [&](const std::string& what, int err) {
    close(fd);
    unlink(tmp.c_str());
    throw SegmentError(path + ": " + what + ": " + errstr(err));
  };
  if (int err = posix_fallocate(fd, 0, static_cast<off_t>(size)); err != 0)
    fail("cannot allocate " + std::to_string(size) + " bytes (free space in the data directory or lower the storage size)",
         err);
  // The header pages are written (zeros) before they are mapped, so that
  // touching them finds them in the page cache: a fault on a page that is
  // not there reads ahead, into the regions, and every direct write would
  // then have to throw those pages out again (perf showed it: a fifth of the
  // sensor's time under load).
  {
    std::vector<uint8_t> zeros(header_size, 0);
    iovec v{zeros.data(), zeros.size()};
    if (!pwritev_all(fd, &v, 1, 0)) fail("cannot write segment header", errno);
  }
  (void)posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
  void* m = mmap(nullptr, header_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) fail("cannot map segment file", errno);
  (void)madvise(m, header_size, MADV_RANDOM);
  // The same file, opened again for the data: O_DIRECT where the file system
  // takes it (tmpfs and some others do not: plain writes then).
  int dfd = ::open(tmp.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);

  auto* map = static_cast<uint8_t*>(m);
  auto* hdr = reinterpret_cast<tw_seg_header*>(map);
  auto* ext = reinterpret_cast<tw_seg_streams*>(map + sizeof(tw_seg_header));
  const uint64_t now = realtime_ns();
  std::memcpy(hdr->magic, TW_SEG_MAGIC, sizeof hdr->magic);
  hdr->version = TW_SEG_VERSION_STREAMS;
  hdr->header_size = static_cast<uint32_t>(header_size);
  hdr->capacity = size - header_size;
  hdr->seq = seq;
  hdr->created_ns = now;
  hdr->writer_pid = static_cast<uint32_t>(getpid());
  hdr->abi_version = TW_ABI_VERSION;
  ext->regions = static_cast<uint32_t>(specs.size());
  ext->block_size = kBlock;

  StreamSegmentWriter w;
  w.impl_ = new Impl;
  auto& s = *w.impl_;
  for (size_t i = 0; i < specs.size(); i++) {
    auto* e = reinterpret_cast<tw_seg_region*>(map + kTableOff + i * sizeof(tw_seg_region));
    const uint64_t start = specs[i].start_pos % kBlock;
    e->file_off = file_off[i];
    e->capacity = caps[i];
    e->crc_off = crc_off[i];
    e->start = start;
    e->committed = start;
    e->stream = specs[i].stream;
    s.regions.push_back({specs[i].start_pos - start, specs[i].start_pos, caps[i], file_off[i], 0, e,
                         reinterpret_cast<tw_seg_block*>(map + crc_off[i])});
  }
  aref(hdr->state).store(TW_SEG_OPEN, std::memory_order_release);

  if (int err = rename_segment_into_place(tmp, path); err != 0) {
    delete w.impl_;
    w.impl_ = nullptr;
    munmap(m, header_size);
    if (dfd >= 0) close(dfd);
    fail(err == EEXIST ? "segment file already exists" : "cannot rename segment file into place", err);
  }
  s.fd = fd;
  s.dfd = dfd;
  s.map = map;
  s.map_len = header_size;
  s.hdr = hdr;
  s.ext = ext;
  s.path = path;
  s.seq = seq;
  s.created_ns = now;
  s.file_size = size;
  return w;
}

StreamSegmentWriter::StreamSegmentWriter(StreamSegmentWriter&& o) noexcept : impl_(o.impl_) { o.impl_ = nullptr; }

StreamSegmentWriter& StreamSegmentWriter::operator=(StreamSegmentWriter&& o) noexcept {
  if (this != &o) {
    StreamSegmentWriter old(std::move(*this));
    impl_ = o.impl_;
    o.impl_ = nullptr;
  }
  return *this;
}

StreamSegmentWriter::~StreamSegmentWriter() {
  if (!impl_) return;
  if (impl_->hdr) publish(impl_->watermark);
  impl_->close_all();
  delete impl_;
}

size_t StreamSegmentWriter::regions() const { return impl_->regions.size(); }
uint64_t StreamSegmentWriter::position(size_t i) const { return impl_->regions[i].pos; }
uint64_t StreamSegmentWriter::limit(size_t i) const {
  const auto& r = impl_->regions[i];
  return r.base_pos + r.capacity;
}

bool StreamSegmentWriter::Impl::write_blocks(uint64_t off, iovec* iov, int cnt) {
  if (dfd >= 0) {
    if (pwritev_all(dfd, iov, cnt, off)) return true;
    // EINVAL: this file system (or device) wants another alignment. Plain
    // writes from here on; they go through the page cache.
    if (errno != EINVAL) return false;
    close(dfd);
    dfd = -1;
  }
  return pwritev_all(fd, iov, cnt, off);
}

bool StreamSegmentWriter::write(size_t i, StreamMemory mem, uint64_t end, uint64_t records, uint64_t first_ts,
                                uint64_t last_ts) {
  auto& s = *impl_;
  if (!s.hdr || i >= s.regions.size()) return false;
  auto& r = s.regions[i];
  if (end <= r.pos) return end == r.pos;
  if (end > r.base_pos + r.capacity || end - r.pos > mem.bytes) return false;
  const uint64_t mask = mem.bytes - 1;
  const uint64_t from = r.pos / kBlock * kBlock, to = round_up(end, kBlock);
  // At most half the ring per write, so that a write's memory is at most two
  // pieces, the end of the ring and its start.
  const uint64_t most = std::max(kBlock, std::min(kMaxWrite, mem.bytes / 2 / kBlock * kBlock));
  for (uint64_t p = from; p < to;) {
    const uint64_t n = std::min(most, to - p);
    const uint64_t off = p & mask;
    const uint64_t first = std::min(n, mem.bytes - off);
    iovec iov[2] = {{const_cast<uint8_t*>(mem.data + off), first}, {const_cast<uint8_t*>(mem.data), n - first}};
    iovec* v = iov;
    if (!s.write_blocks(r.file_off + (p - r.base_pos), v, n > first ? 2 : 1)) return false;
    p += n;
  }
  // The blocks' checksums, once their bytes are in the file: a block's entry
  // covers its bytes up to `end`, and is written again while the block grows.
  for (uint64_t b = from; b < end; b += kBlock) {
    const uint64_t len = std::min(kBlock, end - b);
    tw_seg_block blk{crc32c({mem.data + (b & mask), static_cast<size_t>(len)}), static_cast<uint32_t>(len)};
    uint64_t word;
    std::memcpy(&word, &blk, sizeof word);
    aref(*reinterpret_cast<uint64_t*>(&r.table[(b - r.base_pos) / kBlock])).store(word, std::memory_order_relaxed);
  }
  s.bytes += end - r.pos;
  r.pos = end;
  r.records += records;
  s.count += records;
  if (first_ts && (!s.first_ts || first_ts < s.first_ts)) s.first_ts = first_ts;
  if (last_ts > s.last_ts) s.last_ts = last_ts;
  s.dirty = true;
  return true;
}

void StreamSegmentWriter::publish(uint64_t watermark_ns) {
  auto& s = *impl_;
  if (!s.hdr) return;
  watermark_ns = std::max(watermark_ns, s.watermark);
  if (!s.dirty && watermark_ns == s.watermark) return;
  uint64_t total = 0;
  for (auto& r : s.regions) {
    aref(r.entry->records).store(r.records, std::memory_order_relaxed);
    aref(r.entry->committed).store(r.pos - r.base_pos, std::memory_order_release);
    total += r.pos - r.base_pos - r.entry->start;
  }
  aref(s.hdr->record_count).store(s.count, std::memory_order_relaxed);
  aref(s.hdr->first_ts_ns).store(s.first_ts, std::memory_order_relaxed);
  aref(s.hdr->last_ts_ns).store(s.last_ts, std::memory_order_relaxed);
  aref(s.hdr->committed).store(total, std::memory_order_release);
  // Last: a reader that acquires the watermark sees every region's
  // committed at least as new.
  aref(s.ext->watermark_ns).store(watermark_ns, std::memory_order_release);
  s.watermark = watermark_ns;
  s.dirty = false;
}

void StreamSegmentWriter::seal() {
  auto& s = *impl_;
  if (!s.hdr) return;
  publish(s.watermark);
  // Sealed means durable: the data (written directly, but perhaps still in
  // the device's cache), the block tables and the header.
  (void)fdatasync(s.fd);
  aref(s.hdr->sealed_ns).store(realtime_ns(), std::memory_order_relaxed);
  aref(s.hdr->state).store(static_cast<uint32_t>(TW_SEG_SEALED), std::memory_order_release);
  (void)msync(s.map, s.map_len, MS_SYNC);
  // The regions' unused tails go back to the file system; the file keeps its
  // size (readers mapped it whole) and reads zeros there.
  for (auto& r : s.regions) {
    const uint64_t used = round_up(r.pos - r.base_pos, kBlock);
    if (used < r.capacity)
      (void)fallocate(s.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(r.file_off + used),
                      static_cast<off_t>(r.capacity - used));
  }
  s.close_all();
}

bool StreamSegmentWriter::direct() const { return impl_->dfd >= 0; }
uint64_t StreamSegmentWriter::seq() const { return impl_->seq; }
uint64_t StreamSegmentWriter::created_ns() const { return impl_->created_ns; }
uint64_t StreamSegmentWriter::record_count() const { return impl_->count; }
uint64_t StreamSegmentWriter::bytes_written() const { return impl_->bytes; }
uint64_t StreamSegmentWriter::file_size() const { return impl_->file_size; }
const std::string& StreamSegmentWriter::path() const { return impl_->path; }

}  // namespace tapwire::shm

namespace tapwire::shm {

// Recovery of a version-2 segment (called by recover_segment): each region
// keeps the longest prefix of records that lie in blocks matching their
// checksums and below its committed offset; then the segment is sealed.
uint64_t recover_stream_segment(const std::string& path) {
  bool was_sealed = false;
  {
    SegmentReader r = SegmentReader::open(path);  // validates the header and the region table
    was_sealed = r.sealed();
    uint64_t n = 0;
    while (r.next()) n++;
    if (was_sealed && !r.corrupt()) return n;
  }
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) throw SegmentError(path + ": cannot open segment for recovery: " + errstr(errno));
  struct stat st{};
  tw_seg_header h{};
  if (fstat(fd, &st) != 0 || pread(fd, &h, sizeof h, 0) != static_cast<ssize_t>(sizeof h)) {
    close(fd);
    throw SegmentError(path + ": segment changed during recovery");
  }
  const uint64_t len = std::min<uint64_t>(static_cast<uint64_t>(st.st_size), h.header_size + h.capacity);
  void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) {
    int err = errno;
    close(fd);
    throw SegmentError(path + ": cannot map segment for recovery: " + errstr(err));
  }
  auto* map = static_cast<uint8_t*>(m);
  auto* hdr = reinterpret_cast<tw_seg_header*>(map);
  auto* ext = reinterpret_cast<tw_seg_streams*>(map + sizeof(tw_seg_header));
  uint64_t total = 0, count = 0, first = 0, last = 0;
  for (uint32_t i = 0; i < ext->regions; i++) {  // checked by SegmentReader::open
    auto* e = reinterpret_cast<tw_seg_region*>(map + kTableOff + i * sizeof(tw_seg_region));
    const uint8_t* data = map + e->file_off;
    const auto* table = reinterpret_cast<const tw_seg_block*>(map + e->crc_off);
    const uint64_t avail = len > e->file_off ? std::min(e->capacity, len - e->file_off) : 0;
    // Bytes that match their blocks' checksums, from the region's start.
    uint64_t good = 0;
    const uint64_t committed = std::min(e->committed, avail);
    while (good < committed) {
      const tw_seg_block b = table[good / kBlock];
      if (b.len == 0 || b.len > kBlock || good + b.len > avail || crc32c({data + good, b.len}) != b.crc32c) break;
      good += b.len;
      if (b.len < kBlock) break;
    }
    good = std::min(good, committed);
    uint64_t at = e->start, records = 0;
    while (at + sizeof(tw_seg_rec8) <= good) {
      tw_seg_rec8 rh;
      std::memcpy(&rh, data + at, sizeof rh);
      const uint64_t blen = rh.len & ~TW_SEG_REC8_SKIP;
      const uint64_t size = sizeof rh + ((blen + 7) & ~uint64_t{7});
      if (size > good - at || (!(rh.len & TW_SEG_REC8_SKIP) && rh.type == 0)) break;
      if (!(rh.len & TW_SEG_REC8_SKIP)) {
        records++;
        if (uint64_t ts = record_timestamp(rh.type, {data + at + sizeof rh, static_cast<size_t>(blen)})) {
          if (!first || ts < first) first = ts;
          if (ts > last) last = ts;
        }
      }
      at += size;
    }
    e->committed = std::max<uint64_t>(at, e->start);
    e->records = records;
    count += records;
    total += e->committed - e->start;
    const uint64_t used = round_up(e->committed, kBlock);
    if (used < e->capacity)
      (void)fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(e->file_off + used),
                      static_cast<off_t>(e->capacity - used));
  }
  aref(hdr->record_count).store(count, std::memory_order_relaxed);
  aref(hdr->first_ts_ns).store(first, std::memory_order_relaxed);
  aref(hdr->last_ts_ns).store(last, std::memory_order_relaxed);
  aref(hdr->committed).store(total, std::memory_order_release);
  aref(ext->watermark_ns).store(UINT64_MAX, std::memory_order_release);
  aref(hdr->sealed_ns).store(realtime_ns(), std::memory_order_relaxed);
  aref(hdr->state).store(static_cast<uint32_t>(TW_SEG_SEALED), std::memory_order_release);
  (void)msync(map, len, MS_SYNC);
  munmap(m, len);
  close(fd);
  return count;
}

}  // namespace tapwire::shm
