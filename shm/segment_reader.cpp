// SegmentReader: follows one segment file, mapped read-only, validating every
// record before returning it; list_segments. The file may come from anywhere
// (a snapshot copied off a node, a truncated download): no on-disk integer is
// trusted for a memory access or an allocation before it is checked.
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "segment.hpp"
#include "shm_util.hpp"
#include "tapwire_abi.h"

namespace tapwire::shm {
namespace {

using namespace detail;

constexpr uint64_t kHeader = TW_SEG_HEADER_SIZE;


// The mapping is read-only: only loads go through these (a plain aligned mov
// on x86-64 and aarch64, never a read-modify-write).
uint64_t load_acquire(const uint64_t& v) {
  return std::atomic_ref<uint64_t>(const_cast<uint64_t&>(v)).load(std::memory_order_acquire);
}
uint32_t load_acquire(const uint32_t& v) {
  return std::atomic_ref<uint32_t>(const_cast<uint32_t&>(v)).load(std::memory_order_acquire);
}

}  // namespace

struct SegmentReader::Impl {
  // Version 2: one cursor per region, merged by time.
  struct Region {
    tw_seg_region at_open;  // file_off, capacity, crc_off, start as checked at open
    const tw_seg_region* live;  // committed, records: loaded while following
    const tw_seg_block* table;
    uint64_t cursor;  // offset in the region of the next record
    uint64_t verified = 0;  // region bytes below this passed their block checksum
    uint64_t advised = 0;  // region bytes below this were asked for (MADV_WILLNEED)
    uint64_t avail;  // region bytes inside the mapping
    // The next record, once read: its timestamp, body, size.
    bool has_head = false;
    uint64_t head_ts = 0;
    uint16_t head_type = 0;
    std::span<const uint8_t> head_body;
    uint64_t head_size = 0;
  };
  int version = TW_SEG_VERSION;
  int fd = -1;  // version 2: kept to drop stale cached blocks (see verify())
  std::vector<Region> regions;
  const tw_seg_streams* ext = nullptr;
  uint64_t position = 0;  // version 2: Record::offset of the next record
  uint64_t header_size = TW_SEG_HEADER_SIZE;
  const uint8_t* map = nullptr;
  size_t map_len = 0;
  const tw_seg_header* hdr = nullptr;
  const uint8_t* area = nullptr;
  uint64_t avail = 0;  // record-area bytes inside the mapping (and the file)
  uint64_t capacity = 0;  // from the header at open; a header that changes it later is corrupt
  uint64_t seq = 0;
  uint64_t cursor = 0;  // offset of the next record
  bool corrupt = false;
  std::string path;
};

SegmentReader SegmentReader::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw SegmentError(path + ": cannot open segment file: " + errstr(errno));
  auto fail = [&](const std::string& why) {
    close(fd);
    throw SegmentError(path + ": " + why);
  };
  struct stat st{};
  if (fstat(fd, &st) != 0) fail("cannot stat segment file: " + errstr(errno));
  if (!S_ISREG(st.st_mode)) fail("not a tapwire segment file (not a regular file)");
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size == 0) fail("not a tapwire segment file (empty file)");

  // Validate a copy of the header, read with pread: no mapping of a file
  // that may be too short for one.
  tw_seg_header h{};
  const ssize_t got = pread(fd, &h, sizeof h, 0);
  if (got < 0) fail("cannot read segment header: " + errstr(errno));
  const size_t n = static_cast<size_t>(got);
  if (std::memcmp(h.magic, TW_SEG_MAGIC, std::min<size_t>(n, sizeof h.magic)) != 0)
    fail("not a tapwire segment file (bad magic)");
  if (n < sizeof h || size < kHeader)
    fail("not a tapwire segment file (truncated: " + std::to_string(size) + " bytes, the header alone is " +
         std::to_string(kHeader) + ")");
  if (h.version != TW_SEG_VERSION && h.version != TW_SEG_VERSION_STREAMS)
    fail("unsupported segment version " + std::to_string(h.version) + " (this build reads versions " +
         std::to_string(TW_SEG_VERSION) + " and " + std::to_string(TW_SEG_VERSION_STREAMS) +
         "); use a matching tapwire release");
  if (h.version == TW_SEG_VERSION_STREAMS) return open_streams(path, fd, h, size);
  if (h.header_size != TW_SEG_HEADER_SIZE)
    fail("corrupt segment header (header_size " + std::to_string(h.header_size) + ", expected " +
         std::to_string(TW_SEG_HEADER_SIZE) + ")");
  if (h.state != TW_SEG_OPEN && h.state != TW_SEG_SEALED)
    fail("corrupt segment header (state " + std::to_string(h.state) + ")");
  if (h.committed > h.capacity)
    fail("corrupt segment header (committed " + std::to_string(h.committed) + " beyond capacity " +
         std::to_string(h.capacity) + ")");

  // Map no more than the file holds (a sealed file is shrunk; a damaged one
  // may be short) and no more than the header's capacity.
  const uint64_t avail = std::min(h.capacity, size - kHeader);
  const uint64_t len = kHeader + avail;
  if (len > SIZE_MAX) fail("segment file too large to map");
  void* m = mmap(nullptr, static_cast<size_t>(len), PROT_READ, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) fail("cannot map segment file: " + errstr(errno));
  close(fd);  // the mapping keeps the file

  SegmentReader r;
  r.impl_ = new Impl;
  auto& s = *r.impl_;
  s.map = static_cast<const uint8_t*>(m);
  s.map_len = static_cast<size_t>(len);
  s.hdr = reinterpret_cast<const tw_seg_header*>(s.map);
  s.area = s.map + kHeader;
  s.avail = avail;
  s.capacity = h.capacity;
  s.seq = h.seq;
  s.path = path;
  return r;
}

SegmentReader::SegmentReader(SegmentReader&& o) noexcept : impl_(o.impl_) { o.impl_ = nullptr; }

SegmentReader& SegmentReader::operator=(SegmentReader&& o) noexcept {
  if (this != &o) {
    SegmentReader old(std::move(*this));  // releases what this held
    impl_ = o.impl_;
    o.impl_ = nullptr;
  }
  return *this;
}

SegmentReader::~SegmentReader() {
  if (!impl_) return;
  munmap(const_cast<uint8_t*>(impl_->map), impl_->map_len);
  if (impl_->fd >= 0) close(impl_->fd);
  delete impl_;
  impl_ = nullptr;
}

std::optional<Record> SegmentReader::next() {
  auto& s = *impl_;
  if (s.corrupt) return std::nullopt;
  if (s.version == TW_SEG_VERSION_STREAMS) return next_streams();
  // Acquire: every record byte below this value is complete and visible.
  const uint64_t committed = load_acquire(s.hdr->committed);
  if (committed > s.capacity) {
    s.corrupt = true;
    return std::nullopt;
  }
  if (s.cursor >= committed) return std::nullopt;
  // Published bytes that the file does not hold (truncated copy) count as
  // corrupt once reading reaches them.
  const uint64_t limit = std::min(committed, s.avail);
  const uint64_t left = limit > s.cursor ? limit - s.cursor : 0;
  if (left < sizeof(tw_seg_rec_hdr)) {
    s.corrupt = true;
    return std::nullopt;
  }
  tw_seg_rec_hdr rh;
  std::memcpy(&rh, s.area + s.cursor, sizeof rh);
  const uint64_t rs = SegmentWriter::record_size(rh.len);
  // Type 0 is never written: a zero record header is zero-filled space (a
  // committed that points past the records), which would otherwise pass as an
  // empty record with a matching CRC.
  if (rs > left || rh.type == 0) {
    s.corrupt = true;
    return std::nullopt;
  }
  std::span<const uint8_t> body(s.area + s.cursor + sizeof rh, rh.len);
  if (crc32c(body) != rh.crc32c) {
    s.corrupt = true;
    return std::nullopt;
  }
  Record rec{rh.type, body, s.cursor};
  s.cursor += rs;
  return rec;
}


uint64_t record_timestamp(uint16_t type, std::span<const uint8_t> body) {
  size_t at = 0, need = 8;
  switch (type) {
    case TW_REC_PACKET:
      need = sizeof(tw_pkt);
      break;
    case TW_REC_IFACE:
      at = offsetof(tw_seg_iface, ts_ns);
      need = sizeof(tw_seg_iface);
      break;
    case TW_REC_LOSS:
    case TW_REC_SOCKET:
    case TW_REC_PROCESS:
    case TW_REC_CGROUP:
    case TW_REC_WORKLOAD:
    case TW_REC_DUMP:
    case TW_REC_FLOW:
      break;  // ts_ns first
    default:
      return 0;
  }
  if (body.size() < need) return 0;
  uint64_t ts;
  std::memcpy(&ts, body.data() + at, sizeof ts);
  return ts;
}

// ------------------------------------------------------------ version 2 ---

SegmentReader SegmentReader::open_streams(const std::string& path, int fd, const tw_seg_header& h, uint64_t size) {
  auto fail = [&](const std::string& why) {
    close(fd);
    throw SegmentError(path + ": " + why);
  };
  const uint64_t hs = h.header_size;
  if (hs < kHeader || hs % TW_SEG_BLOCK != 0 || hs > (64ull << 20))
    fail("corrupt segment header (header_size " + std::to_string(hs) + ")");
  if (size < hs) fail("not a tapwire segment file (truncated inside its header)");
  if (h.capacity > (1ull << 48)) fail("corrupt segment header (capacity " + std::to_string(h.capacity) + ")");
  std::vector<uint8_t> head(hs);
  if (pread(fd, head.data(), hs, 0) != static_cast<ssize_t>(hs)) fail("cannot read segment header: " + errstr(errno));
  tw_seg_streams ext;
  std::memcpy(&ext, head.data() + sizeof(tw_seg_header), sizeof ext);
  const uint64_t table = sizeof(tw_seg_header) + sizeof(tw_seg_streams);
  if (ext.block_size != TW_SEG_BLOCK || ext.regions == 0 || ext.regions > TW_SEG_MAX_REGIONS ||
      table + uint64_t{ext.regions} * sizeof(tw_seg_region) > hs)
    fail("corrupt segment header (regions " + std::to_string(ext.regions) + ", block size " +
         std::to_string(ext.block_size) + ")");
  const uint64_t end = hs + h.capacity;
  std::vector<Impl::Region> regions(ext.regions);
  for (uint32_t i = 0; i < ext.regions; i++) {
    tw_seg_region e;
    std::memcpy(&e, head.data() + table + i * sizeof e, sizeof e);
    const bool ok = e.file_off % TW_SEG_BLOCK == 0 && e.file_off >= hs && e.capacity % TW_SEG_BLOCK == 0 &&
                    e.capacity > 0 && e.capacity <= end && e.file_off <= end - e.capacity && e.crc_off % 8 == 0 &&
                    e.crc_off >= table && e.crc_off <= hs && (hs - e.crc_off) / sizeof(tw_seg_block) >= e.capacity / TW_SEG_BLOCK &&
                    e.start < TW_SEG_BLOCK;
    if (!ok) fail("corrupt segment header (region " + std::to_string(i) + ")");
    regions[i].at_open = e;
    regions[i].cursor = e.start;
  }
  const uint64_t len = std::min(size, end);
  if (len > SIZE_MAX) fail("segment file too large to map");
  void* m = mmap(nullptr, static_cast<size_t>(len), PROT_READ, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) fail("cannot map segment file: " + errstr(errno));
  // No read-ahead past what is committed: pages read there before the
  // writer's direct write would have to be thrown out again (and could be
  // stale). The reader asks for each region's committed bytes instead.
  (void)madvise(m, static_cast<size_t>(len), MADV_RANDOM);

  SegmentReader r;
  r.impl_ = new Impl;
  auto& s = *r.impl_;
  s.version = TW_SEG_VERSION_STREAMS;
  s.fd = fd;
  s.map = static_cast<const uint8_t*>(m);
  s.map_len = static_cast<size_t>(len);
  s.hdr = reinterpret_cast<const tw_seg_header*>(s.map);
  s.ext = reinterpret_cast<const tw_seg_streams*>(s.map + sizeof(tw_seg_header));
  s.header_size = hs;
  s.capacity = h.capacity;
  s.seq = h.seq;
  s.path = path;
  for (uint32_t i = 0; i < ext.regions; i++) {
    auto& g = regions[i];
    g.live = reinterpret_cast<const tw_seg_region*>(s.map + table + i * sizeof(tw_seg_region));
    g.table = reinterpret_cast<const tw_seg_block*>(s.map + g.at_open.crc_off);
    g.avail = len > g.at_open.file_off ? std::min(g.at_open.capacity, len - g.at_open.file_off) : 0;
  }
  s.regions = std::move(regions);
  return r;
}

namespace {

// A block whose bytes do not match its checksum through the mapping may be
// a stale page: O_DIRECT writes invalidate the page cache after the fact,
// and a page faulted in during the write can outlive that. Dropping the page
// (our mapping of it, then the cache) makes the next access read the disk.
void drop_cached(const uint8_t* addr, int fd, uint64_t off, uint64_t len) {
  static const uint64_t page = [] {
    long v = sysconf(_SC_PAGESIZE);
    return v > 0 ? static_cast<uint64_t>(v) : 4096ull;
  }();
  const auto a = reinterpret_cast<uintptr_t>(addr);
  const uintptr_t lo = a / page * page, hi = (a + len + page - 1) / page * page;
  madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
  posix_fadvise(fd, static_cast<off_t>(off / page * page), static_cast<off_t>(hi - lo), POSIX_FADV_DONTNEED);
}

}  // namespace

std::optional<Record> SegmentReader::next_streams() {
  auto& s = *impl_;
  // state first: once SEALED is acquired, every region's committed is final.
  const bool sealed_now = sealed();
  const uint64_t watermark = sealed_now ? UINT64_MAX : load_acquire(s.ext->watermark_ns);

  auto verify = [&](Impl::Region& g, uint64_t upto) {
    while (g.verified < upto) {
      const uint64_t b = g.verified / TW_SEG_BLOCK * TW_SEG_BLOCK;
      const uint64_t word = std::atomic_ref<uint64_t>(*const_cast<uint64_t*>(
                                                           reinterpret_cast<const uint64_t*>(&g.table[b / TW_SEG_BLOCK])))
                                .load(std::memory_order_acquire);
      tw_seg_block blk;
      std::memcpy(&blk, &word, sizeof blk);
      const uint64_t want = std::min(upto, b + TW_SEG_BLOCK);
      if (blk.len == 0 || blk.len > TW_SEG_BLOCK || b + blk.len < want || b + blk.len > g.avail) return false;
      const uint8_t* p = s.map + g.at_open.file_off + b;
      bool good = crc32c({p, blk.len}) == blk.crc32c;
      for (int tries = 0; !good && tries < 3; tries++) {
        drop_cached(p, s.fd, g.at_open.file_off + b, TW_SEG_BLOCK);
        good = crc32c({p, blk.len}) == blk.crc32c;
      }
      if (!good) return false;
      g.verified = b + blk.len;
    }
    return true;
  };
  // Reads region g's next record into its head; false if there is none yet
  // (or the region is damaged: s.corrupt).
  auto read_head = [&](Impl::Region& g) {
    for (;;) {
      const uint64_t committed = load_acquire(g.live->committed);
      if (committed > g.at_open.capacity) {
        s.corrupt = true;
        return false;
      }
      if (g.cursor >= committed) return false;
      const uint64_t limit = std::min(committed, g.avail);
      if (limit > g.advised) {  // read-ahead of exactly what was published
        static const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
        const uint64_t from = (g.at_open.file_off + g.advised) / page * page;
        const uint64_t to = g.at_open.file_off + limit;
        (void)madvise(const_cast<uint8_t*>(s.map) + from, to - from, MADV_WILLNEED);
        g.advised = limit;
      }
      if (limit < g.cursor + sizeof(tw_seg_rec8) || !verify(g, g.cursor + sizeof(tw_seg_rec8))) {
        s.corrupt = true;
        return false;
      }
      const uint8_t* at = s.map + g.at_open.file_off + g.cursor;
      tw_seg_rec8 rh;
      std::memcpy(&rh, at, sizeof rh);
      const uint64_t len = rh.len & ~TW_SEG_REC8_SKIP;
      const uint64_t size = sizeof rh + ((len + 7) & ~uint64_t{7});
      if (size > limit - g.cursor || !verify(g, g.cursor + size) ||
          (!(rh.len & TW_SEG_REC8_SKIP) && rh.type == 0)) {
        s.corrupt = true;
        return false;
      }
      g.cursor += size;
      if (rh.len & TW_SEG_REC8_SKIP) continue;
      g.has_head = true;
      g.head_type = rh.type;
      g.head_body = {at + sizeof rh, static_cast<size_t>(len)};
      g.head_ts = record_timestamp(rh.type, g.head_body);
      return true;
    }
  };

  Impl::Region* best = nullptr;
  for (auto& g : s.regions) {
    if (!g.has_head && !read_head(g)) {
      if (s.corrupt) return std::nullopt;
      continue;
    }
    if (g.head_ts <= watermark && (!best || g.head_ts < best->head_ts)) best = &g;
  }
  if (!best) return std::nullopt;
  best->has_head = false;
  Record rec{best->head_type, best->head_body, s.position};
  s.position += SegmentWriter::record_size(best->head_body.size());
  return rec;
}

int SegmentReader::version() const { return impl_->version; }

bool SegmentReader::sealed() const { return load_acquire(impl_->hdr->state) == TW_SEG_SEALED; }

bool SegmentReader::exhausted() const {
  if (impl_->corrupt) return true;
  // state before committed: once SEALED is acquired, committed is final.
  if (!sealed()) return false;
  if (impl_->version == TW_SEG_VERSION_STREAMS) {
    for (auto& r : impl_->regions)
      if (r.has_head || r.cursor < std::min(load_acquire(r.live->committed), r.at_open.capacity)) return false;
    return true;
  }
  return impl_->cursor >= load_acquire(impl_->hdr->committed);
}

bool SegmentReader::corrupt() const { return impl_->corrupt; }
const tw_seg_header& SegmentReader::header() const { return *impl_->hdr; }
uint64_t SegmentReader::seq() const { return impl_->seq; }
const std::string& SegmentReader::path() const { return impl_->path; }

std::vector<SegmentInfo> list_segments(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (!d) throw SegmentError(dir + ": cannot list segment directory: " + errstr(errno));
  std::vector<SegmentInfo> out;
  const size_t suffix_len = std::strlen(TW_SEG_FILE_SUFFIX);
  while (dirent* e = readdir(d)) {
    const char* name = e->d_name;
    if (std::strlen(name) != 16 + suffix_len || std::strcmp(name + 16, TW_SEG_FILE_SUFFIX) != 0) continue;
    uint64_t seq = 0;
    bool ok = true;
    for (int i = 0; i < 16 && ok; i++) {
      const char c = name[i];
      if (c >= '0' && c <= '9')
        seq = seq << 4 | static_cast<uint64_t>(c - '0');
      else if (c >= 'a' && c <= 'f')
        seq = seq << 4 | static_cast<uint64_t>(c - 'a' + 10);
      else
        ok = false;
    }
    if (ok) out.push_back({seq, segment_path(dir, seq)});
  }
  closedir(d);
  std::sort(out.begin(), out.end(), [](const SegmentInfo& a, const SegmentInfo& b) { return a.seq < b.seq; });
  return out;
}

}  // namespace tapwire::shm
