// SegmentStore: the writer's side of a segment directory (lock, recovery,
// rotation, retention). See segment.hpp and FORMAT.md ("Retention").
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <deque>
#include <functional>
#include <optional>

#include "fs_util.hpp"
#include "segment.hpp"
#include "shm_util.hpp"
#include "segment_ring.hpp"

namespace tapwire::shm {
namespace {

using namespace detail;

constexpr uint64_t kMinSegment = 64ull << 10;
constexpr uint64_t kPage = 4096;
// After a segment could not be created (disk full), appends fail fast for
// this long instead of retrying file creation for every record.
constexpr uint64_t kCreateRetryNs = 1000000000ull;


}  // namespace

struct SegmentStore::Impl {
  StoreOptions opts;
  uint64_t segment_size = 0;  // file size of a segment while open
  std::optional<SegmentRing> ring;
  std::optional<SegmentWriter> open;
  uint64_t retry_after_ns = 0;
  std::function<void(SegmentWriter&)> on_open;
  StoreStats st;

  uint64_t capacity() const { return segment_size - TW_SEG_HEADER_SIZE; }
  uint64_t stored() const { return ring->sealed_bytes() + (open ? segment_size : 0); }

  // Deletes the oldest sealed segments while the ring, plus `extra` bytes
  // about to be created, exceeds storage_size. Never touches the open one.
  void enforce_retention(uint64_t extra) { ring->enforce(opts.storage_size, extra + (open ? segment_size : 0)); }

  bool open_segment() {
    const uint64_t now = coarse_realtime_ns();
    if (now < retry_after_ns) return false;
    enforce_retention(segment_size);
    for (int attempt = 0; attempt < 2 && !open; attempt++) {
      try {
        open.emplace(SegmentWriter::create(ring->dir(), ring->take_seq(), capacity()));
      } catch (const SegmentError&) {
        // ENOSPC and friends: make room once, then give up for a while.
        if (attempt == 0) ring->delete_oldest();
      }
    }
    if (!open) {
      retry_after_ns = now + kCreateRetryNs;
      return false;
    }
    retry_after_ns = 0;
    if (on_open) {
      on_open(*open);
      st.records_written += open->record_count();
      st.bytes_written += open->used();
    }
    return true;
  }

  void seal_open() {
    if (!open) return;
    open->seal();
    const uint64_t seq = open->seq();
    const std::string path = open->path();
    open.reset();
    ring->add_sealed(seq, path);
    enforce_retention(0);
  }

  bool too_old(uint64_t now_ns) const {
    if (!open || opts.max_segment_age_ns == 0) return false;
    const uint64_t created = open->created_ns();
    return now_ns > created && now_ns - created >= opts.max_segment_age_ns;
  }
};

static uint64_t store_segment_size(const StoreOptions& o) {
  uint64_t seg = o.segment_size;
  if (seg > o.storage_size / 4) seg = o.storage_size / 4;
  seg = seg / kPage * kPage;
  return std::max(seg, kMinSegment);
}

SegmentStore::SegmentStore(StoreOptions opts) : impl_(new Impl) {
  auto& s = *impl_;
  s.opts = std::move(opts);
  try {
    s.segment_size = store_segment_size(s.opts);
    s.opts.segment_size = s.segment_size;
    s.ring.emplace(s.opts.dir);
    s.opts.dir = s.ring->dir();
    s.enforce_retention(0);
  } catch (...) {
    delete impl_;
    impl_ = nullptr;
    throw;
  }
}

SegmentStore::~SegmentStore() {
  if (!impl_) return;
  try {
    impl_->seal_open();
  } catch (...) {
  }
  delete impl_;
}

void SegmentStore::on_open(std::function<void(SegmentWriter&)> cb) { impl_->on_open = std::move(cb); }

bool SegmentStore::append(uint16_t type, std::span<const uint8_t> a, std::span<const uint8_t> b, uint64_t ts_ns) {
  auto& s = *impl_;
  const uint64_t len = static_cast<uint64_t>(a.size()) + b.size();
  const uint64_t rs = SegmentWriter::record_size(len);
  if (len > UINT32_MAX || rs > s.capacity()) {  // can never fit a segment
    s.st.append_failures++;
    return false;
  }
  if (s.too_old(coarse_realtime_ns())) s.seal_open();
  bool ok = false;
  if (s.open || s.open_segment()) {
    ok = s.open->append(type, a, b, ts_ns);
    if (!ok) {  // full: rotate
      s.seal_open();
      ok = s.open_segment() && s.open->append(type, a, b, ts_ns);
    }
  }
  if (!ok) {
    s.st.append_failures++;
    return false;
  }
  s.st.records_written++;
  s.st.bytes_written += rs;
  return true;
}

void SegmentStore::publish() {
  if (impl_->open) impl_->open->publish();
}

void SegmentStore::rotate() { impl_->seal_open(); }

void SegmentStore::tick(uint64_t now_ns) {
  if (impl_->too_old(now_ns)) impl_->seal_open();
}

StoreStats SegmentStore::stats() const {
  StoreStats out = impl_->st;
  out.segments = impl_->ring->sealed_count() + (impl_->open ? 1 : 0);
  out.bytes_stored = impl_->stored();
  out.segments_deleted = impl_->ring->deleted();
  out.segments_damaged = impl_->ring->damaged_count();
  return out;
}

const StoreOptions& SegmentStore::options() const { return impl_->opts; }

const std::vector<std::string>& SegmentStore::damaged() const { return impl_->ring->damaged(); }

}  // namespace tapwire::shm
