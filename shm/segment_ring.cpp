// SegmentRing: the lock, recovery and retention of a segment directory.
// segment_ring.hpp; FORMAT.md ("The store").
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
#include "segment_ring.hpp"
#include "shm_util.hpp"

namespace tapwire::shm {
namespace {

using namespace detail;

constexpr const char* kDamagedDir = "damaged";
constexpr size_t kMaxDamaged = 16;


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

uint64_t SegmentRing::disk_size(const std::string& path) {
  struct stat st{};
  if (stat(path.c_str(), &st) != 0) return 0;
  const auto size = static_cast<uint64_t>(st.st_size);
  const uint64_t allocated = static_cast<uint64_t>(st.st_blocks) * 512;
  return allocated && allocated < size ? allocated : size;
}

SegmentRing::SegmentRing(std::string dir) : dir_(std::move(dir)) {
  if (dir_.empty()) throw SegmentError("segment store: no data directory given");
  while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
  if (!tapwire::mkdir_p(dir_, 0750, 0750)) {
    if (errno == ENOTDIR) throw SegmentError(dir_ + ": data directory is not a directory");
    throw SegmentError(dir_ + ": cannot create data directory: " + errstr(errno));
  }
  lock();
  try {
    scan();
  } catch (...) {
    close(lock_fd_);
    throw;
  }
}

SegmentRing::~SegmentRing() {
  if (lock_fd_ >= 0) close(lock_fd_);
}

void SegmentRing::lock() {
  const std::string path = dir_ + "/.writer.lock";
  lock_fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) throw SegmentError(path + ": cannot open lock file: " + errstr(errno));
  if (flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    std::string holder = "unknown";
    char buf[32] = {};
    if (err == EWOULDBLOCK) {
      ssize_t n = pread(lock_fd_, buf, sizeof buf - 1, 0);
      if (n > 0) {
        buf[n] = 0;
        long pid = std::strtol(buf, nullptr, 10);
        if (pid > 0) holder = std::to_string(pid);
      }
    }
    close(lock_fd_);
    lock_fd_ = -1;
    if (err == EWOULDBLOCK) throw SegmentError(dir_ + ": another tapwire-sensor is writing here (pid " + holder + ")");
    throw SegmentError(path + ": cannot lock: " + errstr(err));
  }
  const std::string pid = std::to_string(getpid()) + "\n";
  if (ftruncate(lock_fd_, 0) != 0 || pwrite(lock_fd_, pid.data(), pid.size(), 0) < 0) { /* informative only */
  }
}

// Moves a damaged segment into DIR/damaged/, which keeps the newest
// kMaxDamaged of them (they are not counted in storage_size).
void SegmentRing::set_aside(const SegmentInfo& info, const std::string& why) {
  const std::string dir = dir_ + "/" + kDamagedDir;
  if (mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST) {
    unlink(info.path.c_str());
  } else {
    const std::string to = dir + "/" + info.path.substr(info.path.rfind('/') + 1);
    if (rename(info.path.c_str(), to.c_str()) != 0) unlink(info.path.c_str());
    auto kept = list_segments(dir);
    for (size_t i = 0; i + kMaxDamaged < kept.size(); i++) unlink(kept[i].path.c_str());
  }
  damaged_.push_back(why);
}

// Seals what a dead writer left open and takes stock of the ring.
void SegmentRing::scan() {
  remove_stale_temporaries(dir_);
  for (const auto& info : list_segments(dir_)) {
    next_seq_ = std::max(next_seq_, info.seq + 1);
    // A segment whose header is damaged (a power loss before its pages
    // reached the disk, a zeroed or cut file) is moved to DIR/damaged/ and
    // counted: capture starts, and the file is kept for a look.
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
    add_sealed(info.seq, info.path);
  }
}

void SegmentRing::add_sealed(uint64_t seq, const std::string& path) {
  const uint64_t size = disk_size(path);
  sealed_.push_back({seq, path, size});
  sealed_bytes_ += size;
}

bool SegmentRing::delete_oldest() {
  if (sealed_.empty()) return false;
  const Sealed& s = sealed_.front();
  unlink(s.path.c_str());  // ENOENT: removed by someone else, forget it anyway
  sealed_bytes_ -= s.size;
  sealed_.pop_front();
  deleted_++;
  return true;
}

void SegmentRing::enforce(uint64_t limit, uint64_t extra) {
  while (sealed_bytes_ + extra > limit && delete_oldest()) {
  }
}

}  // namespace tapwire::shm
