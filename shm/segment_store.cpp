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

namespace tapwire::shm {
namespace {

constexpr uint64_t kMinSegment = 64ull << 10;
constexpr uint64_t kPage = 4096;
// After a segment could not be created (disk full), appends fail fast for
// this long instead of retrying file creation for every record.
constexpr uint64_t kCreateRetryNs = 1000000000ull;
constexpr const char* kDamagedDir = "damaged";
constexpr size_t kMaxDamaged = 16;

std::string errstr(int err) { return std::strerror(err); }

uint64_t coarse_realtime_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME_COARSE, &ts);  // vDSO: no syscall per record
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

uint64_t file_size(const std::string& path) {
  struct stat st{};
  return stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

// Temporary files of a writer that died inside SegmentWriter::create.
void remove_stale_temporaries(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (!d) return;
  const std::string tail = std::string(TW_SEG_FILE_SUFFIX) + ".tmp";
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name.size() > tail.size() + 1 && name[0] == '.' && name.compare(name.size() - tail.size(), tail.size(), tail) == 0)
      unlinkat(dirfd(d), name.c_str(), 0);
  }
  closedir(d);
}

}  // namespace

struct SegmentStore::Impl {
  struct Sealed {
    uint64_t seq;
    std::string path;
    uint64_t size;  // st_size
  };

  StoreOptions opts;
  uint64_t segment_size = 0;  // file size of a segment while open
  int lock_fd = -1;
  std::deque<Sealed> sealed;  // oldest first
  uint64_t sealed_bytes = 0;
  std::optional<SegmentWriter> open;
  uint64_t next_seq = 0;
  uint64_t retry_after_ns = 0;
  std::function<void(SegmentWriter&)> on_open;
  StoreStats st;
  std::vector<std::string> damaged;  // one line per segment set aside at start

  uint64_t capacity() const { return segment_size - TW_SEG_HEADER_SIZE; }
  uint64_t stored() const { return sealed_bytes + (open ? segment_size : 0); }

  void lock() {
    const std::string path = opts.dir + "/.writer.lock";
    lock_fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_fd < 0) throw SegmentError(path + ": cannot open lock file: " + errstr(errno));
    if (flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      std::string holder = "unknown";
      char buf[32] = {};
      if (err == EWOULDBLOCK) {
        ssize_t n = pread(lock_fd, buf, sizeof buf - 1, 0);
        if (n > 0) {
          buf[n] = 0;
          long pid = std::strtol(buf, nullptr, 10);
          if (pid > 0) holder = std::to_string(pid);
        }
      }
      close(lock_fd);
      lock_fd = -1;
      if (err == EWOULDBLOCK)
        throw SegmentError(opts.dir + ": another tapwire-sensor is writing here (pid " + holder + ")");
      throw SegmentError(path + ": cannot lock: " + errstr(err));
    }
    const std::string pid = std::to_string(getpid()) + "\n";
    if (ftruncate(lock_fd, 0) != 0 || pwrite(lock_fd, pid.data(), pid.size(), 0) < 0) { /* informative only */
    }
  }

  // Moves a damaged segment into DIR/damaged/, which keeps the newest
  // kMaxDamaged of them (they are not counted in storage_size).
  void set_aside(const SegmentInfo& info, const std::string& why) {
    const std::string dir = opts.dir + "/" + kDamagedDir;
    if (mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST) {
      unlink(info.path.c_str());
    } else {
      const std::string to = dir + "/" + info.path.substr(info.path.rfind('/') + 1);
      if (rename(info.path.c_str(), to.c_str()) != 0) unlink(info.path.c_str());
      auto kept = list_segments(dir);
      for (size_t i = 0; i + kMaxDamaged < kept.size(); i++) unlink(kept[i].path.c_str());
    }
    st.segments_damaged++;
    damaged.push_back(why);
  }

  // Seals what a dead writer left open and takes stock of the ring.
  void scan() {
    remove_stale_temporaries(opts.dir);
    for (const auto& info : list_segments(opts.dir)) {
      next_seq = std::max(next_seq, info.seq + 1);
      // A segment whose header is damaged (a power loss before its pages
      // reached the disk, a zeroed or cut file) is moved to DIR/damaged/
      // and counted: capture starts, and the file is kept for a look.
      try {
        bool is_open = false;
        {
          SegmentReader r = SegmentReader::open(info.path);  // throws with the file and the reason
          is_open = !r.sealed();
        }
        if (is_open) recover_segment(info.path);
      } catch (const SegmentError& e) {
        set_aside(info, e.what());
        continue;
      }
      const uint64_t size = file_size(info.path);
      sealed.push_back({info.seq, info.path, size});
      sealed_bytes += size;
    }
  }

  bool delete_oldest() {
    if (sealed.empty()) return false;
    const Sealed& s = sealed.front();
    unlink(s.path.c_str());  // ENOENT: removed by someone else, forget it anyway
    sealed_bytes -= s.size;
    sealed.pop_front();
    st.segments_deleted++;
    return true;
  }

  // Deletes the oldest sealed segments while the ring, plus `extra` bytes
  // about to be created, exceeds storage_size. Never touches the open one.
  void enforce_retention(uint64_t extra) {
    while (stored() + extra > opts.storage_size && delete_oldest()) {
    }
  }

  bool open_segment() {
    const uint64_t now = coarse_realtime_ns();
    if (now < retry_after_ns) return false;
    enforce_retention(segment_size);
    for (int attempt = 0; attempt < 2 && !open; attempt++) {
      try {
        open.emplace(SegmentWriter::create(opts.dir, next_seq++, capacity()));
      } catch (const SegmentError&) {
        // ENOSPC and friends: make room once, then give up for a while.
        if (attempt == 0) delete_oldest();
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
    const uint64_t size = file_size(open->path());
    sealed.push_back({open->seq(), open->path(), size});
    sealed_bytes += size;
    open.reset();
    enforce_retention(0);
  }

  bool too_old(uint64_t now_ns) const {
    if (!open || opts.max_segment_age_ns == 0) return false;
    const uint64_t created = open->created_ns();
    return now_ns > created && now_ns - created >= opts.max_segment_age_ns;
  }
};

SegmentStore::SegmentStore(StoreOptions opts) : impl_(new Impl) {
  auto& s = *impl_;
  s.opts = std::move(opts);
  try {
    if (s.opts.dir.empty()) throw SegmentError("segment store: no data directory given");
    while (s.opts.dir.size() > 1 && s.opts.dir.back() == '/') s.opts.dir.pop_back();
    uint64_t seg = s.opts.segment_size;
    if (seg > s.opts.storage_size / 4) seg = s.opts.storage_size / 4;
    seg = seg / kPage * kPage;
    s.segment_size = std::max(seg, kMinSegment);
    s.opts.segment_size = s.segment_size;
    if (!tapwire::mkdir_p(s.opts.dir, 0750, 0750)) {
      if (errno == ENOTDIR) throw SegmentError(s.opts.dir + ": data directory is not a directory");
      throw SegmentError(s.opts.dir + ": cannot create data directory: " + errstr(errno));
    }
    s.lock();
    s.scan();
    s.enforce_retention(0);
  } catch (...) {
    if (s.lock_fd >= 0) close(s.lock_fd);
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
  if (impl_->lock_fd >= 0) close(impl_->lock_fd);
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
  out.segments = impl_->sealed.size() + (impl_->open ? 1 : 0);
  out.bytes_stored = impl_->stored();
  return out;
}

const StoreOptions& SegmentStore::options() const { return impl_->opts; }

const std::vector<std::string>& SegmentStore::damaged() const { return impl_->damaged; }

}  // namespace tapwire::shm
