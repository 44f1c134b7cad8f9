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

#include "segment.hpp"

namespace tapwire::shm {
namespace {

constexpr uint64_t kHeader = TW_SEG_HEADER_SIZE;

std::string errstr(int err) { return std::strerror(err); }

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
  if (h.version != TW_SEG_VERSION)
    fail("unsupported segment version " + std::to_string(h.version) + " (this build reads version " +
         std::to_string(TW_SEG_VERSION) + "); use a matching tapwire release");
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
  delete impl_;
  impl_ = nullptr;
}

std::optional<Record> SegmentReader::next() {
  auto& s = *impl_;
  if (s.corrupt) return std::nullopt;
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

bool SegmentReader::sealed() const { return load_acquire(impl_->hdr->state) == TW_SEG_SEALED; }

bool SegmentReader::exhausted() const {
  if (impl_->corrupt) return true;
  // state before committed: once SEALED is acquired, committed is final.
  if (!sealed()) return false;
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
