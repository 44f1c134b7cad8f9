// Segment files (shm/): CRC-32C, writer, reader (in another process),
// recovery after a crash, corrupt and hostile files, the store's lock,
// rotation and retention.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "temp_dir.hpp"
#include "segment.hpp"

namespace tapwire::shm::detail {
// Both CRC paths, defined in shm/crc32c.cpp.
uint32_t crc32c_portable(const uint8_t* p, size_t n, uint32_t crc);
uint32_t crc32c_sse42(const uint8_t* p, size_t n, uint32_t crc);
bool crc32c_has_sse42();
}  // namespace tapwire::shm::detail

namespace {

using namespace tapwire::shm;
using Clock = std::chrono::steady_clock;

using tapwire::test_util::TempDir;

// Deterministic records: record i has a length, a type and bytes that depend
// only on i; the first 4 body bytes (when there are 4) hold i itself.
uint32_t body_len(uint32_t i) { return (i * 7919u) % 1500u; }
uint16_t rec_type(uint32_t i) { return static_cast<uint16_t>(10 + i % 4); }
std::vector<uint8_t> make_body(uint32_t i, uint32_t len) {
  std::vector<uint8_t> v(len);
  for (uint32_t j = 0; j < len; j++) v[j] = static_cast<uint8_t>(i * 131u + j * 7u + (j >> 8));
  if (len >= 4) std::memcpy(v.data(), &i, 4);
  return v;
}
std::vector<uint8_t> make_body(uint32_t i) { return make_body(i, body_len(i)); }

// Appends record i split in two spans (header part + payload, like the sensor).
template <class W>
bool append_rec(W& w, uint32_t i, uint32_t len) {
  auto body = make_body(i, len);
  const size_t cut = body.size() / 3;
  std::span<const uint8_t> all(body);
  return w.append(rec_type(i), all.subspan(0, cut), all.subspan(cut), 1000000000ull + i);
}
template <class W>
bool append_rec(W& w, uint32_t i) {
  return append_rec(w, i, body_len(i));
}

bool body_matches(const Record& r, uint32_t i, uint32_t len) {
  if (r.type != rec_type(i) || r.body.size() != len) return false;
  auto want = make_body(i, len);
  return len == 0 || std::memcmp(r.body.data(), want.data(), len) == 0;
}
bool body_matches(const Record& r, uint32_t i) { return body_matches(r, i, body_len(i)); }

uint64_t file_size(const std::string& path) {
  struct stat st{};
  return stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

void write_file(const std::string& path, const void* data, size_t n) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, data, n), static_cast<ssize_t>(n));
  close(fd);
}

void pwrite_at(const std::string& path, uint64_t off, const void* data, size_t n) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, data, n, static_cast<off_t>(off)), static_cast<ssize_t>(n));
  close(fd);
}

std::vector<uint8_t> read_all(const std::string& path) {
  std::vector<uint8_t> v(file_size(path));
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    if (pread(fd, v.data(), v.size(), 0) != static_cast<ssize_t>(v.size())) v.clear();
    close(fd);
  }
  return v;
}

// Waits for a child at most `timeout`, then kills it. Returns its wait status.
int wait_child(pid_t pid, std::chrono::seconds timeout) {
  const auto deadline = Clock::now() + timeout;
  int status = 0;
  while (true) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0 || Clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

// Blocks until one byte arrives on `fd` (or the timeout passes).
bool wait_byte(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) != 1) return false;
  char c;
  return read(fd, &c, 1) == 1;
}

// Reads every record of a segment that is not expected to change.
std::vector<Record> read_segment(SegmentReader& r, size_t max = 1000000) {
  std::vector<Record> out;
  while (out.size() < max) {
    auto rec = r.next();
    if (!rec) break;
    out.push_back(*rec);
  }
  return out;
}

// ------------------------------------------------------------------ crc ---

TEST(SegmentCrc, KnownVectors) {
  const std::string s = "123456789";
  std::span<const uint8_t> check(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  EXPECT_EQ(crc32c(check), 0xE3069283u);
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xff);
  EXPECT_EQ(crc32c(zeros), 0x8A9136AAu);  // RFC 3720 B.4
  EXPECT_EQ(crc32c(ones), 0x62A8AB43u);
  EXPECT_EQ(crc32c({}), 0u);
  // Chaining: crc of a then b equals crc of a||b.
  EXPECT_EQ(crc32c(check.subspan(4), crc32c(check.subspan(0, 4))), 0xE3069283u);
}

TEST(SegmentCrc, PortableMatchesSse42) {
  std::mt19937 rng(42);
  std::vector<uint8_t> buf(5000);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  const bool hw = detail::crc32c_has_sse42();
  for (size_t len = 0; len < 300; len++) {
    for (size_t off : {0, 1, 3, 7}) {
      const uint32_t seed = static_cast<uint32_t>(rng());
      const uint32_t p = detail::crc32c_portable(buf.data() + off, len, seed);
      if (hw) {
        ASSERT_EQ(p, detail::crc32c_sse42(buf.data() + off, len, seed)) << len << " " << off;
      }
      if (len == 0) {
        ASSERT_EQ(p, seed);
      }
    }
  }
  EXPECT_EQ(detail::crc32c_portable(buf.data(), buf.size(), 0),
            crc32c(buf));
}

// --------------------------------------------------------------- writer ---

TEST(SegmentWriter, RecordSizeAndFullSegment) {
  EXPECT_EQ(SegmentWriter::record_size(0), 16u);
  EXPECT_EQ(SegmentWriter::record_size(1), 24u);
  EXPECT_EQ(SegmentWriter::record_size(8), 24u);
  EXPECT_EQ(SegmentWriter::record_size(9), 32u);

  TempDir dir;
  auto w = SegmentWriter::create(dir.path(), 7, 4096);
  EXPECT_EQ(w.path(), dir.path() + "/0000000000000007.twseg");
  EXPECT_EQ(file_size(w.path()), 4096u + 4096u);  // fully allocated
  std::vector<uint8_t> big(4096 - 16);  // exactly fills the area
  std::vector<uint8_t> one(1);
  EXPECT_FALSE(w.append(TW_REC_LOSS, big, one, 1));  // one byte too many: nothing written
  EXPECT_EQ(w.used(), 0u);
  EXPECT_TRUE(w.append(TW_REC_LOSS, big, {}, 5));
  EXPECT_EQ(w.used(), 4096u);
  EXPECT_FALSE(w.append(TW_REC_LOSS, {}, {}, 6));
  EXPECT_EQ(w.record_count(), 1u);

  // Unpublished records are invisible.
  auto r = SegmentReader::open(w.path());
  EXPECT_FALSE(r.next());
  EXPECT_FALSE(r.sealed());
  EXPECT_FALSE(r.exhausted());
  w.publish();
  auto rec = r.next();
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->type, TW_REC_LOSS);
  EXPECT_EQ(rec->body.size(), big.size());
  EXPECT_EQ(rec->offset, 0u);
  EXPECT_EQ(r.header().record_count, 1u);
  EXPECT_EQ(r.header().first_ts_ns, 5u);
  EXPECT_EQ(r.header().last_ts_ns, 5u);
  EXPECT_FALSE(r.exhausted());
  w.seal();
  EXPECT_TRUE(r.sealed());
  EXPECT_TRUE(r.exhausted());
  EXPECT_FALSE(r.corrupt());
  EXPECT_FALSE(w.append(TW_REC_LOSS, {}, {}, 6));  // sealed
  EXPECT_EQ(file_size(w.path()), 4096u + 4096u);
  // Creating the same sequence number again is refused.
  EXPECT_THROW(SegmentWriter::create(dir.path(), 7, 4096), SegmentError);
}

TEST(SegmentWriter, HeaderAndSealedSize) {
  TempDir dir;
  auto w = SegmentWriter::create(dir.path(), 0x1234abcd, 1 << 20);
  for (uint32_t i = 0; i < 100; i++) ASSERT_TRUE(append_rec(w, i));
  w.seal();
  const uint64_t used = w.used();
  EXPECT_EQ(file_size(w.path()), 4096u + (used + 4095) / 4096 * 4096);
  auto r = SegmentReader::open(dir.path() + "/000000001234abcd.twseg");
  const auto& h = r.header();
  EXPECT_EQ(std::memcmp(h.magic, TW_SEG_MAGIC, 8), 0);
  EXPECT_EQ(h.version, TW_SEG_VERSION);
  EXPECT_EQ(h.header_size, 4096u);
  EXPECT_EQ(h.capacity, 1u << 20);
  EXPECT_EQ(h.seq, 0x1234abcdu);
  EXPECT_EQ(h.state, static_cast<uint32_t>(TW_SEG_SEALED));
  EXPECT_EQ(h.writer_pid, static_cast<uint32_t>(getpid()));
  EXPECT_EQ(h.committed, used);
  EXPECT_EQ(h.record_count, 100u);
  EXPECT_EQ(h.first_ts_ns, 1000000000ull);
  EXPECT_EQ(h.last_ts_ns, 1000000000ull + 99);
  EXPECT_GE(h.sealed_ns, h.created_ns);
  EXPECT_EQ(r.seq(), 0x1234abcdu);
  auto recs = read_segment(r);
  ASSERT_EQ(recs.size(), 100u);
  for (uint32_t i = 0; i < 100; i++) {
    EXPECT_TRUE(body_matches(recs[i], i)) << i;
    EXPECT_EQ(recs[i].offset % 8, 0u);
  }
  EXPECT_TRUE(r.exhausted());
}

// A reader in another process follows a writer that is appending: every
// record arrives, intact and in order, and the reader sees the seal.
TEST(SegmentReader, FollowsWriterInAnotherProcess) {
  TempDir dir;
  constexpr uint32_t kRecords = 20000;
  auto w = SegmentWriter::create(dir.path(), 1, 32 << 20);
  const std::string path = w.path();
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);

  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Child: the reader. Exit codes say what went wrong (no gtest here).
    int rc = 0;
    try {
      auto r = SegmentReader::open(path);
      if (write(ready[1], "r", 1) != 1) _exit(9);
      uint32_t n = 0;
      uint64_t empty_polls = 0;
      const auto deadline = Clock::now() + std::chrono::seconds(60);
      while (Clock::now() < deadline) {
        auto rec = r.next();
        if (rec) {
          if (n >= kRecords) _exit(2);  // more records than written
          if (!body_matches(*rec, n)) _exit(3);
          n++;
          continue;
        }
        if (r.corrupt()) _exit(4);
        if (r.exhausted()) break;
        empty_polls++;
        sched_yield();
      }
      if (n != kRecords) rc = 5;
      else if (!r.sealed() || !r.exhausted()) rc = 6;
      else if (r.header().record_count != kRecords) rc = 7;
      else if (empty_polls == 0) rc = 8;  // it never had to wait: it did not follow anything
    } catch (...) {
      rc = 10;
    }
    _exit(rc);
  }
  ASSERT_TRUE(wait_byte(ready[0], 10000));
  std::mt19937 rng(7);
  for (uint32_t i = 0; i < kRecords; i++) {
    ASSERT_TRUE(append_rec(w, i));
    if (rng() % 16 == 0) w.publish();
    if (i % 1000 == 999) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  w.seal();
  const int status = wait_child(pid, std::chrono::seconds(90));
  close(ready[0]);
  close(ready[1]);
  ASSERT_TRUE(WIFEXITED(status)) << "reader child did not exit (status " << status << ")";
  EXPECT_EQ(WEXITSTATUS(status), 0) << "reader child failed, see exit codes in the test";
}

// ------------------------------------------------------------- recovery ---

// The writer is killed with records appended but not published: the
// reader and recovery see exactly the published ones.
TEST(SegmentRecovery, KilledWriterKeepsPublishedRecords) {
  TempDir dir;
  constexpr uint32_t kPublished = 500, kUnpublished = 50;
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    try {
      auto w = SegmentWriter::create(dir.path(), 3, 1 << 20);
      for (uint32_t i = 0; i < kPublished; i++) {
        if (!append_rec(w, i)) _exit(2);
        if (i % 10 == 0) w.publish();
      }
      w.publish();
      for (uint32_t i = kPublished; i < kPublished + kUnpublished; i++)
        if (!append_rec(w, i)) _exit(3);
      if (write(ready[1], "k", 1) != 1) _exit(4);
      for (int i = 0; i < 3000; i++) usleep(10000);  // bounded: killed long before
    } catch (...) {
      _exit(5);
    }
    _exit(6);
  }
  ASSERT_TRUE(wait_byte(ready[0], 10000));
  kill(pid, SIGKILL);
  int status = wait_child(pid, std::chrono::seconds(10));
  close(ready[0]);
  close(ready[1]);
  ASSERT_TRUE(WIFSIGNALED(status));
  const std::string path = segment_path(dir.path(), 3);

  {  // Before recovery: open, the published records, nothing more.
    auto r = SegmentReader::open(path);
    EXPECT_FALSE(r.sealed());
    auto recs = read_segment(r);
    EXPECT_EQ(recs.size(), kPublished);
    EXPECT_FALSE(r.corrupt());
    EXPECT_FALSE(r.exhausted());
  }
  EXPECT_EQ(recover_segment(path), kPublished);
  auto r = SegmentReader::open(path);
  EXPECT_TRUE(r.sealed());
  auto recs = read_segment(r);
  ASSERT_EQ(recs.size(), kPublished);
  for (uint32_t i = 0; i < kPublished; i++) ASSERT_TRUE(body_matches(recs[i], i)) << i;
  EXPECT_TRUE(r.exhausted());
  EXPECT_FALSE(r.corrupt());
  EXPECT_EQ(r.header().record_count, kPublished);
  EXPECT_EQ(r.header().first_ts_ns, 0u);  // types 10..13 carry no timestamp recovery knows
  EXPECT_EQ(file_size(path), 4096u + (r.header().committed + 4095) / 4096 * 4096);
  // Recovering a sealed, valid segment again changes nothing.
  EXPECT_EQ(recover_segment(path), kPublished);
}

// The writer is killed at an arbitrary moment while appending and publishing;
// the store recovers the segment on start and continues with the next seq.
TEST(SegmentRecovery, KilledAtRandomMomentStoreRecovers) {
  constexpr uint32_t kLen = 200, kMax = 60000;
  const StoreOptions opts{"", 256 << 20, 4 << 20, 3600ull * 1000000000ull};
  for (int round = 0; round < 3; round++) {
    TempDir dir;
    StoreOptions o = opts;
    o.dir = dir.path();
    int ready[2];
    ASSERT_EQ(pipe(ready), 0);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      try {
        SegmentStore store(o);
        for (uint32_t i = 0; i < kMax; i++) {
          if (!append_rec(store, i, kLen)) _exit(2);
          if (i % 7 == 0) store.publish();
          if (i == 1000 && write(ready[1], "k", 1) != 1) _exit(3);
        }
        store.publish();
        for (int i = 0; i < 3000; i++) usleep(10000);  // bounded: killed long before
      } catch (...) {
        _exit(5);
      }
      _exit(6);
    }
    ASSERT_TRUE(wait_byte(ready[0], 10000));
    if (round > 0) std::this_thread::sleep_for(std::chrono::microseconds(500 + round * 1500));
    kill(pid, SIGKILL);
    int status = wait_child(pid, std::chrono::seconds(10));
    close(ready[0]);
    close(ready[1]);
    ASSERT_TRUE(WIFSIGNALED(status));

    auto before = list_segments(dir.path());
    ASSERT_FALSE(before.empty());
    {
      SegmentStore store(o);  // recovers what the dead writer left open
      ASSERT_TRUE(store.append(TW_REC_LOSS, {}, {}, 0));
    }
    auto after = list_segments(dir.path());
    ASSERT_EQ(after.size(), before.size() + 1);
    ASSERT_EQ(after.back().seq, before.back().seq + 1);  // next seq is max + 1
    // Every record the dead writer published is intact and in order.
    uint32_t expect = 0;
    for (size_t k = 0; k + 1 < after.size(); k++) {
      auto r = SegmentReader::open(after[k].path);
      ASSERT_TRUE(r.sealed());
      auto recs = read_segment(r);
      ASSERT_FALSE(r.corrupt());
      ASSERT_TRUE(r.exhausted());
      ASSERT_EQ(r.header().record_count, recs.size());
      for (auto& rec : recs) {
        ASSERT_TRUE(body_matches(rec, expect, kLen)) << expect;
        expect++;
      }
    }
    EXPECT_GE(expect, 995u);  // published (i % 7 == 0) before the child signalled at 1000
    EXPECT_LE(expect, kMax);
  }
}

class SegmentCorrupt : public ::testing::Test {
 protected:
  void SetUp() override {
    auto w = SegmentWriter::create(dir.path(), 1, 1 << 20);
    for (uint32_t i = 0; i < 20; i++) ASSERT_TRUE(append_rec(w, i));
    w.seal();
    path = w.path();
    auto r = SegmentReader::open(path);
    for (auto& rec : read_segment(r)) offsets.push_back(rec.offset);
    ASSERT_EQ(offsets.size(), 20u);
    committed = r.header().committed;
  }
  TempDir dir;
  std::string path;
  std::vector<uint64_t> offsets;
  uint64_t committed = 0;
};

TEST_F(SegmentCorrupt, FlippedByteStopsReaderAndRecoveryKeepsPrefix) {
  ASSERT_GT(body_len(7), 2u);
  auto bytes = read_all(path);
  const uint64_t at = 4096 + offsets[7] + 16 + 1;
  uint8_t b = bytes[at] ^ 0x20;
  pwrite_at(path, at, &b, 1);
  {
    auto r = SegmentReader::open(path);
    auto recs = read_segment(r);
    EXPECT_EQ(recs.size(), 7u);
    EXPECT_TRUE(r.corrupt());
    EXPECT_TRUE(r.exhausted());  // nothing more will come
    EXPECT_FALSE(r.next());
  }
  EXPECT_EQ(recover_segment(path), 7u);
  auto r = SegmentReader::open(path);
  auto recs = read_segment(r);
  ASSERT_EQ(recs.size(), 7u);
  for (uint32_t i = 0; i < 7; i++) EXPECT_TRUE(body_matches(recs[i], i));
  EXPECT_FALSE(r.corrupt());
  EXPECT_TRUE(r.exhausted());
  EXPECT_EQ(r.header().committed, offsets[7]);
  EXPECT_EQ(r.header().record_count, 7u);
}

TEST_F(SegmentCorrupt, HugeRecordLengthIsRejected) {
  const uint32_t len = 0xFFFFFFF0u;
  pwrite_at(path, 4096 + offsets[3], &len, 4);
  auto r = SegmentReader::open(path);
  EXPECT_EQ(read_segment(r).size(), 3u);
  EXPECT_TRUE(r.corrupt());
  EXPECT_EQ(recover_segment(path), 3u);
}

TEST_F(SegmentCorrupt, CommittedBeyondCapacityIsRejected) {
  const uint64_t bad = (1 << 20) + 8;
  pwrite_at(path, offsetof(tw_seg_header, committed), &bad, 8);
  try {
    SegmentReader::open(path);
    FAIL() << "expected SegmentError";
  } catch (const SegmentError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("beyond capacity"), std::string::npos) << e.what();
  }
  EXPECT_THROW(recover_segment(path), SegmentError);
  // Huge values do not overflow anything either.
  const uint64_t huge = ~0ull;
  pwrite_at(path, offsetof(tw_seg_header, committed), &huge, 8);
  pwrite_at(path, offsetof(tw_seg_header, capacity), &huge, 8);
  auto r = SegmentReader::open(path);  // committed <= capacity: only the file counts
  auto recs = read_segment(r);
  EXPECT_EQ(recs.size(), 20u);
  EXPECT_TRUE(r.corrupt());  // the published bytes the file lacks
}

TEST_F(SegmentCorrupt, FileShorterThanCommittedReadsWhatIsThere) {
  // Cut the file in the middle of record 12 (a truncated copy).
  ASSERT_EQ(truncate(path.c_str(), static_cast<off_t>(4096 + offsets[12] + 20)), 0);
  auto r = SegmentReader::open(path);
  auto recs = read_segment(r);
  EXPECT_EQ(recs.size(), 12u);
  EXPECT_TRUE(r.corrupt());
  EXPECT_EQ(recover_segment(path), 12u);
  auto r2 = SegmentReader::open(path);
  EXPECT_EQ(read_segment(r2).size(), 12u);
  EXPECT_FALSE(r2.corrupt());
  EXPECT_TRUE(r2.exhausted());
}

// Random damage anywhere in the file never makes the reader read out of
// bounds (ASan build) nor return a record whose body was altered.
TEST_F(SegmentCorrupt, RandomDamageIsSafe) {
  const auto good = read_all(path);
  const std::string bad = dir.path() + "/bad.twseg";
  std::mt19937 rng(1234);
  for (int iter = 0; iter < 1500; iter++) {
    auto bytes = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; k++) {
      // Half the damage in the first header bytes, half in the records.
      uint64_t at = (rng() % 2) ? rng() % 96 : 4096 + rng() % committed;
      bytes[at] = static_cast<uint8_t>(rng());
    }
    if (rng() % 8 == 0) bytes.resize(rng() % bytes.size());
    write_file(bad, bytes.data(), bytes.size());
    try {
      auto r = SegmentReader::open(bad);
      uint32_t n = 0;
      while (auto rec = r.next()) {
        ASSERT_LT(n, 20u);
        // The CRC covers the body (not the type): a returned body is the original.
        ASSERT_EQ(rec->offset, offsets[n]);
        auto want = make_body(n);
        ASSERT_EQ(rec->body.size(), want.size());
        if (!want.empty()) {
          ASSERT_EQ(std::memcmp(rec->body.data(), want.data(), want.size()), 0);
        }
        n++;
      }
      recover_segment(bad);
      auto r2 = SegmentReader::open(bad);
      EXPECT_LE(read_segment(r2, 100).size(), 20u);
      EXPECT_FALSE(r2.corrupt());
    } catch (const SegmentError&) {
      // rejected: fine
    }
  }
}

// ------------------------------------------------------------ not a segment

TEST(SegmentReader, NotASegmentGivesClearError) {
  TempDir dir;
  auto expect_error = [](const std::string& path, const std::string& what) {
    try {
      SegmentReader::open(path);
      ADD_FAILURE() << path << ": opened, expected an error containing " << what;
    } catch (const SegmentError& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
      EXPECT_NE(msg.find(what), std::string::npos) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  };
  std::mt19937 rng(99);
  std::vector<uint8_t> junk(10000);
  for (auto& b : junk) b = static_cast<uint8_t>(rng());
  const std::string random = dir.path() + "/random.twseg";
  write_file(random, junk.data(), junk.size());
  expect_error(random, "not a tapwire segment file (bad magic)");

  const std::string empty = dir.path() + "/empty.twseg";
  write_file(empty, "", 0);
  expect_error(empty, "empty file");

  expect_error(dir.path() + "/missing.twseg", "No such file");
  expect_error(dir.path(), "not a regular file");

  // A valid segment with another version number.
  std::string valid;
  {
    auto w = SegmentWriter::create(dir.path(), 1, 65536);
    valid = w.path();
    append_rec(w, 1);
    w.seal();
  }
  auto bytes = read_all(valid);
  const uint32_t v = 99;
  std::memcpy(bytes.data() + offsetof(tw_seg_header, version), &v, 4);
  const std::string other = dir.path() + "/version.twseg";
  write_file(other, bytes.data(), bytes.size());
  expect_error(other, "unsupported segment version 99");

  // Header cut short, and a wrong header size.
  const std::string shortf = dir.path() + "/short.twseg";
  write_file(shortf, read_all(valid).data(), 100);
  expect_error(shortf, "truncated");
  bytes = read_all(valid);
  const uint32_t hs = 512;
  std::memcpy(bytes.data() + offsetof(tw_seg_header, header_size), &hs, 4);
  write_file(other, bytes.data(), bytes.size());
  expect_error(other, "header_size 512");

  EXPECT_THROW(recover_segment(random), SegmentError);
  EXPECT_THROW(recover_segment(empty), SegmentError);
}

TEST(SegmentReader, ListSegmentsSortsAndIgnoresOtherFiles) {
  TempDir dir;
  for (uint64_t seq : {0x11ull, 0x2ull, 0xabcdef0123ull}) SegmentWriter::create(dir.path(), seq, 65536);
  for (const char* name : {".writer.lock", "0000000000000003.twseg.tmp", "000000000000000G.twseg",
                           "000000000000000A.twseg", "00000000000004.twseg", "notes.txt"})
    write_file(dir.path() + "/" + name, "x", 1);
  auto l = list_segments(dir.path());
  ASSERT_EQ(l.size(), 3u);
  EXPECT_EQ(l[0].seq, 0x2u);
  EXPECT_EQ(l[1].seq, 0x11u);
  EXPECT_EQ(l[2].seq, 0xabcdef0123u);
  EXPECT_EQ(l[2].path, dir.path() + "/000000abcdef0123.twseg");
  EXPECT_THROW(list_segments(dir.path() + "/nope"), SegmentError);
}

// ---------------------------------------------------------------- store ---

TEST(SegmentStore, RetentionDeletesOldestFirst) {
  TempDir dir;
  constexpr uint64_t kStorage = 1 << 20;
  constexpr uint32_t kRecords = 6000;
  {
    SegmentStore store({dir.path(), kStorage, 256 << 10, 3600ull * 1000000000ull});
    for (uint32_t i = 0; i < kRecords; i++) {
      ASSERT_TRUE(append_rec(store, i, 1000));
      if (i % 10 == 0) store.publish();
      ASSERT_LE(store.stats().bytes_stored, kStorage);
    }
    auto st = store.stats();
    EXPECT_GT(st.segments_deleted, 0u);
    EXPECT_EQ(st.records_written, kRecords);
    EXPECT_EQ(st.append_failures, 0u);
    EXPECT_EQ(st.bytes_written, kRecords * SegmentWriter::record_size(1000));
    auto l = list_segments(dir.path());
    EXPECT_EQ(st.segments, l.size());
    uint64_t total = 0;
    for (auto& s : l) total += file_size(s.path);
    EXPECT_LE(total, kStorage);
    EXPECT_EQ(total, st.bytes_stored);
    EXPECT_GT(l.front().seq, 0u);  // the oldest went
  }
  // What is left is the newest records, contiguous, ending with the last one.
  auto l = list_segments(dir.path());
  ASSERT_GE(l.size(), 3u);
  uint64_t total = 0;
  for (size_t k = 1; k < l.size(); k++) EXPECT_EQ(l[k].seq, l[k - 1].seq + 1);
  int64_t prev = -1;
  for (auto& s : l) {
    total += file_size(s.path);
    auto r = SegmentReader::open(s.path);
    EXPECT_TRUE(r.sealed());
    for (auto& rec : read_segment(r)) {
      uint32_t i;
      std::memcpy(&i, rec.body.data(), 4);
      if (prev >= 0) {
        ASSERT_EQ(i, static_cast<uint32_t>(prev + 1));
      }
      ASSERT_TRUE(body_matches(rec, i, 1000));
      prev = i;
    }
  }
  EXPECT_EQ(prev, static_cast<int64_t>(kRecords) - 1);
  EXPECT_LE(total, kStorage);
}

TEST(SegmentStore, SegmentSizeShrinksToQuarterOfStorage) {
  TempDir dir;
  {
    SegmentStore store({dir.path(), 1 << 20, 64 << 20, 3600ull * 1000000000ull});
    EXPECT_EQ(store.options().segment_size, 256u << 10);
    ASSERT_TRUE(append_rec(store, 1));
    EXPECT_EQ(file_size(segment_path(dir.path(), 0)), 256u << 10);
  }
  {
    SegmentStore store({dir.path() + "/small/a", 100 << 10, 64 << 20, 3600ull * 1000000000ull});
    EXPECT_EQ(store.options().segment_size, 64u << 10);  // at least 64 KiB
    std::vector<uint8_t> too_big(64 << 10);
    EXPECT_FALSE(store.append(TW_REC_PACKET, too_big, {}, 1));
    EXPECT_EQ(store.stats().append_failures, 1u);
    EXPECT_TRUE(store.append(TW_REC_PACKET, std::span(too_big).subspan(0, 1000), {}, 1));
  }
}

TEST(SegmentStore, SecondWriterOnSameDirectoryFails) {
  TempDir dir;
  {
    SegmentStore first({dir.path()});
    try {
      SegmentStore second({dir.path()});
      FAIL() << "second store opened";
    } catch (const SegmentError& e) {
      EXPECT_EQ(std::string(e.what()),
                dir.path() + ": another tapwire-sensor is writing here (pid " + std::to_string(getpid()) + ")");
    }
  }
  // Held by another process: its pid is named. Released when it exits.
  int ready[2], done[2];
  ASSERT_EQ(pipe(ready), 0);
  ASSERT_EQ(pipe(done), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    try {
      SegmentStore s({dir.path()});
      if (write(ready[1], "l", 1) != 1) _exit(2);
      wait_byte(done[0], 20000);
    } catch (...) {
      _exit(3);
    }
    _exit(0);
  }
  ASSERT_TRUE(wait_byte(ready[0], 10000));
  try {
    SegmentStore second({dir.path()});
    ADD_FAILURE() << "second store opened";
  } catch (const SegmentError& e) {
    EXPECT_NE(std::string(e.what()).find("(pid " + std::to_string(pid) + ")"), std::string::npos) << e.what();
  }
  ASSERT_EQ(write(done[1], "d", 1), 1);
  int status = wait_child(pid, std::chrono::seconds(10));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  for (int fd : {ready[0], ready[1], done[0], done[1]}) close(fd);
  EXPECT_NO_THROW(SegmentStore({dir.path()}));
}

TEST(SegmentStore, RotatesByAgeOnTick) {
  TempDir dir;
  const uint64_t sec = 1000000000ull;
  SegmentStore store({dir.path(), 64 << 20, 1 << 20, 10 * sec});
  store.tick(~0ull);  // nothing open: nothing to do
  EXPECT_EQ(store.stats().segments, 0u);
  ASSERT_TRUE(append_rec(store, 0));
  store.publish();
  uint64_t created;
  {
    auto r = SegmentReader::open(segment_path(dir.path(), 0));
    created = r.header().created_ns;
  }
  store.tick(created + 5 * sec);
  EXPECT_EQ(store.stats().segments, 1u);
  EXPECT_FALSE(SegmentReader::open(segment_path(dir.path(), 0)).sealed());
  store.tick(created + 10 * sec);
  {
    auto r = SegmentReader::open(segment_path(dir.path(), 0));
    EXPECT_TRUE(r.sealed());
    auto recs = read_segment(r);
    ASSERT_EQ(recs.size(), 1u);
    EXPECT_TRUE(body_matches(recs[0], 0));
  }
  EXPECT_EQ(store.stats().segments, 1u);
  ASSERT_TRUE(append_rec(store, 1));  // opens the next one
  EXPECT_EQ(store.stats().segments, 2u);
  EXPECT_EQ(list_segments(dir.path()).back().seq, 1u);
  store.rotate();
  store.rotate();  // nothing open: no-op
  EXPECT_TRUE(SegmentReader::open(segment_path(dir.path(), 1)).sealed());
}

TEST(SegmentStore, OnOpenRecordsComeFirstInEachSegment) {
  TempDir dir;
  int opened = 0;
  {
    SegmentStore store({dir.path(), 4 << 20, 64 << 10, 3600ull * 1000000000ull});
    store.on_open([&](SegmentWriter& w) {
      opened++;
      tw_seg_iface ifc{};
      ifc.ifindex = 2;
      std::strcpy(ifc.name, "eth0");
      ifc.ts_ns = 1;
      w.append(TW_REC_IFACE, {reinterpret_cast<const uint8_t*>(&ifc), sizeof ifc}, {}, ifc.ts_ns);
    });
    for (uint32_t i = 0; i < 1000; i++) ASSERT_TRUE(append_rec(store, i, 500));
    EXPECT_EQ(store.stats().records_written, 1000u + static_cast<uint64_t>(opened));
  }
  auto l = list_segments(dir.path());
  ASSERT_GE(l.size(), 5u);
  EXPECT_EQ(static_cast<size_t>(opened), l.size());
  uint32_t next = 0;
  for (auto& s : l) {
    auto r = SegmentReader::open(s.path);
    auto recs = read_segment(r);
    ASSERT_GE(recs.size(), 2u);
    EXPECT_EQ(recs[0].type, TW_REC_IFACE);
    ASSERT_EQ(recs[0].body.size(), sizeof(tw_seg_iface));
    tw_seg_iface ifc;
    std::memcpy(&ifc, recs[0].body.data(), sizeof ifc);
    EXPECT_STREQ(ifc.name, "eth0");
    for (size_t k = 1; k < recs.size(); k++) {
      ASSERT_NE(recs[k].type, TW_REC_IFACE);
      ASSERT_TRUE(body_matches(recs[k], next, 500));
      next++;
    }
  }
  EXPECT_EQ(next, 1000u);
}

TEST(SegmentStore, RestartContinuesSequenceAndCleansTemporaries) {
  TempDir dir;
  {
    SegmentStore store({dir.path()});
    ASSERT_TRUE(append_rec(store, 0));
    store.rotate();
    ASSERT_TRUE(append_rec(store, 1));
  }
  write_file(dir.path() + "/.0000000000000009.twseg.tmp", "x", 1);
  {
    SegmentStore store({dir.path()});
    EXPECT_EQ(store.stats().segments, 2u);
    ASSERT_TRUE(append_rec(store, 2));
    EXPECT_EQ(store.stats().segments, 3u);
  }
  auto l = list_segments(dir.path());
  ASSERT_EQ(l.size(), 3u);
  EXPECT_EQ(l[2].seq, 2u);
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/.0000000000000009.twseg.tmp"));
}

// A reader in another process follows the store across rotations the way
// the dissector does: next segment by sequence once the current is sealed.
TEST(SegmentStore, ReaderInAnotherProcessFollowsRotations) {
  TempDir dir;
  constexpr uint32_t kRecords = 5000;
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  SegmentStore store({dir.path(), 64 << 20, 128 << 10, 3600ull * 1000000000ull});
  ASSERT_TRUE(append_rec(store, 0));  // the first segment exists before the reader starts
  store.publish();
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int rc = 0;
    try {
      uint64_t seq = 0;
      uint32_t n = 0;
      const auto deadline = Clock::now() + std::chrono::seconds(60);
      auto r = SegmentReader::open(segment_path(dir.path(), seq));
      if (write(ready[1], "r", 1) != 1) _exit(9);
      while (n < kRecords && Clock::now() < deadline) {
        if (auto rec = r.next()) {
          if (!body_matches(*rec, n)) _exit(3);
          n++;
        } else if (r.corrupt()) {
          _exit(4);
        } else if (r.exhausted()) {
          // The next segment is created after this one is sealed.
          while (access(segment_path(dir.path(), seq + 1).c_str(), F_OK) != 0 && Clock::now() < deadline)
            sched_yield();
          r = SegmentReader::open(segment_path(dir.path(), ++seq));
        } else {
          sched_yield();
        }
      }
      if (n != kRecords) rc = 5;
      else if (seq < 3) rc = 6;
    } catch (...) {
      rc = 10;
    }
    _exit(rc);
  }
  ASSERT_TRUE(wait_byte(ready[0], 10000));
  for (uint32_t i = 1; i < kRecords; i++) {
    ASSERT_TRUE(append_rec(store, i));
    if (i % 5 == 0) store.publish();
  }
  store.rotate();
  const int status = wait_child(pid, std::chrono::seconds(90));
  close(ready[0]);
  close(ready[1]);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace

// A segment whose header was zeroed (power loss before its pages reached the
// disk) is set aside in DIR/damaged/ and counted; the store opens, keeps the
// good segments and goes on writing.
TEST(SegmentStore, DamagedSegmentIsSetAsideAndCaptureStarts) {
  TempDir dir;
  {
    SegmentStore store({dir.path()});
    ASSERT_TRUE(append_rec(store, 0));
    store.rotate();
    ASSERT_TRUE(append_rec(store, 1));
    store.rotate();
  }
  auto before = list_segments(dir.path());
  ASSERT_EQ(before.size(), 2u);
  {
    std::vector<uint8_t> zeros(TW_SEG_HEADER_SIZE, 0);
    int fd = ::open(before[0].path.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, zeros.data(), zeros.size(), 0), static_cast<ssize_t>(zeros.size()));
    close(fd);
  }
  SegmentStore store({dir.path()});
  EXPECT_EQ(store.stats().segments_damaged, 1u);
  ASSERT_EQ(store.damaged().size(), 1u);
  EXPECT_NE(store.damaged()[0].find(before[0].path), std::string::npos) << store.damaged()[0];
  EXPECT_EQ(store.stats().segments, 1u);
  ASSERT_TRUE(append_rec(store, 2));
  auto after = list_segments(dir.path());
  ASSERT_EQ(after.size(), 2u);
  EXPECT_EQ(after[0].seq, before[1].seq);
  EXPECT_GT(after[1].seq, before[1].seq);
  EXPECT_EQ(list_segments(dir.path() + "/damaged").size(), 1u);
}
