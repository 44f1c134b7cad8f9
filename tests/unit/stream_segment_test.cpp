// Version-2 segments (shm/stream_writer.cpp, FORMAT.md "Version 2"): spans of
// per-CPU rings written as they are, block checksums, readers merging the
// regions by time (also while following a writer in another process), a
// writer killed in the middle of its writes, recovery and damaged blocks.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "capture_store.hpp"
#include "segment.hpp"
#include "tapwire_abi.h"
#include "temp_dir.hpp"

namespace {

using namespace tapwire::shm;
using tapwire::test_util::TempDir;
using Clock = std::chrono::steady_clock;

// A stand-in for one CPU's capture ring: the same record format and the
// same rules as the programs (records never wrap: a skip record fills the
// end), in block-aligned memory.
struct FakeRing {
  uint64_t bytes;
  uint8_t* data;
  uint64_t prod = 0;
  explicit FakeRing(uint64_t b) : bytes(b), data(static_cast<uint8_t*>(std::aligned_alloc(TW_SEG_BLOCK, b))) {
    std::memset(data, 0xee, bytes);  // what a ring holds before a lap: never a valid record
  }
  ~FakeRing() { std::free(data); }
  FakeRing(const FakeRing&) = delete;
  FakeRing& operator=(const FakeRing&) = delete;
  StreamMemory mem() const { return {data, bytes}; }

  // Appends a packet record whose payload is derived from (cpu, n); its
  // timestamp is `ts`. Returns the record's end position.
  uint64_t put(uint32_t cpu, uint32_t n, uint64_t ts) {
    const uint32_t payload = payload_len(cpu, n);
    const uint64_t size = (sizeof(tw_cring_rec) + sizeof(tw_pkt) + payload + 7) & ~7ull;
    uint64_t off = prod & (bytes - 1);
    if (off + size > bytes) {
      tw_cring_rec skip{static_cast<uint32_t>(bytes - off - sizeof(tw_cring_rec)) | TW_CRING_SKIP, 0, 0};
      std::memcpy(data + off, &skip, sizeof skip);
      prod += bytes - off;
      off = 0;
    }
    tw_cring_rec h{static_cast<uint32_t>(sizeof(tw_pkt) + payload), TW_REC_PACKET, 0};
    tw_pkt p{};
    p.ts_ns = ts;
    p.ifindex = cpu + 1;
    p.cap_len = payload;
    p.seq = n;
    std::memcpy(data + off, &h, sizeof h);
    std::memcpy(data + off + sizeof h, &p, sizeof p);
    for (uint32_t k = 0; k < payload; k++) data[off + sizeof h + sizeof p + k] = static_cast<uint8_t>(n * 31 + k + cpu);
    prod += size;
    return prod;
  }
  static uint32_t payload_len(uint32_t cpu, uint32_t n) { return (n * 7919u + cpu * 13u) % 1700u; }
};

// Checks a record returned by a reader against what FakeRing::put wrote.
bool packet_matches(const Record& r, uint32_t* cpu_out = nullptr, uint32_t* n_out = nullptr, uint64_t* ts_out = nullptr) {
  if (r.type != TW_REC_PACKET || r.body.size() < sizeof(tw_pkt)) return false;
  tw_pkt p;
  std::memcpy(&p, r.body.data(), sizeof p);
  const uint32_t cpu = p.ifindex - 1, n = p.seq;
  if (p.cap_len != FakeRing::payload_len(cpu, n) || r.body.size() != sizeof p + p.cap_len) return false;
  for (uint32_t k = 0; k < p.cap_len; k++)
    if (r.body[sizeof p + k] != static_cast<uint8_t>(n * 31 + k + cpu)) return false;
  if (cpu_out) *cpu_out = cpu;
  if (n_out) *n_out = n;
  if (ts_out) *ts_out = p.ts_ns;
  return true;
}

std::vector<StreamSpec> specs(uint32_t cpus, uint64_t cap) {
  std::vector<StreamSpec> s;
  for (uint32_t i = 0; i < cpus; i++) s.push_back({i, cap, 0});
  return s;
}

// Spans that wrap the ring's end (and start mid-block) are written whole;
// the reader merges two CPUs' regions into one time order.
TEST(StreamSegment, SpansThatWrapTheRingAreWrittenAndMergedByTime) {
  TempDir dir;
  FakeRing a(64 << 10), b(64 << 10);
  auto sp = specs(2, 4 << 20);
  auto w = StreamSegmentWriter::create(dir.path(), 1, sp);
  std::mt19937 rng(3);
  uint64_t ts = 1'000'000'000;
  uint32_t na = 0, nb = 0;
  uint64_t wraps = 0;
  for (int round = 0; round < 400; round++) {
    // Each round both "CPUs" add a few records with interleaved times, and
    // the writer takes them (less than a ring's worth each time, as the
    // sensor's drain does).
    const uint64_t pa = a.prod, pb = b.prod;
    for (int k = 0; k < 6; k++) {
      a.put(0, na++, ts += rng() % 1000);
      b.put(1, nb++, ts += rng() % 1000);
    }
    wraps += (pa & ~(a.bytes - 1)) != (a.prod & ~(a.bytes - 1));
    ASSERT_TRUE(w.write(0, a.mem(), a.prod, 6, 0, 0));
    ASSERT_TRUE(w.write(1, b.mem(), b.prod, 6, 0, 0));
    w.publish(ts);
    (void)pb;
  }
  EXPECT_GT(wraps, 10u) << "the rings went round";
  w.seal();
  auto r = SegmentReader::open(segment_path(dir.path(), 1));
  EXPECT_EQ(r.version(), int(TW_SEG_VERSION_STREAMS));
  uint64_t last = 0, n = 0;
  std::map<uint32_t, uint32_t> next;
  while (auto rec = r.next()) {
    uint32_t cpu, seq;
    uint64_t t;
    ASSERT_TRUE(packet_matches(*rec, &cpu, &seq, &t)) << "record " << n;
    EXPECT_GE(t, last) << "time order";
    EXPECT_EQ(seq, next[cpu]++) << "each CPU's records in order, none missing";
    last = t;
    n++;
  }
  EXPECT_FALSE(r.corrupt());
  EXPECT_TRUE(r.exhausted());
  EXPECT_EQ(n, 4800u);
  EXPECT_EQ(r.header().record_count, 4800u);
}

// A reader in another process follows a writer: records come in time order
// across the regions, never one above the watermark, all of them in the end.
TEST(StreamSegment, ReaderFollowingLiveStreamsSeesTimeOrder) {
  TempDir dir;
  constexpr uint32_t kCpus = 3, kPerCpu = 6000;
  std::vector<std::unique_ptr<FakeRing>> rings;
  for (uint32_t i = 0; i < kCpus; i++) rings.push_back(std::make_unique<FakeRing>(256 << 10));
  auto w = StreamSegmentWriter::create(dir.path(), 1, specs(kCpus, 16 << 20));
  const std::string path = w.path();
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int rc = 0;
    try {
      auto r = SegmentReader::open(path);
      if (write(ready[1], "r", 1) != 1) _exit(9);
      uint64_t n = 0, last = 0, waits = 0;
      const auto deadline = Clock::now() + std::chrono::seconds(60);
      while (Clock::now() < deadline) {
        auto rec = r.next();
        if (rec) {
          uint64_t t;
          if (!packet_matches(*rec, nullptr, nullptr, &t)) _exit(3);
          if (t < last) _exit(4);  // out of time order
          last = t;
          n++;
          continue;
        }
        if (r.corrupt()) _exit(5);
        if (r.exhausted()) break;
        waits++;
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
      if (n != uint64_t{kCpus} * kPerCpu) rc = 6;
      else if (waits == 0) rc = 7;  // it never waited: it did not follow anything
    } catch (...) {
      rc = 10;
    }
    _exit(rc);
  }
  char c;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  // The writer: each CPU's records are stamped a little before they are
  // taken, some of them late on one CPU and early on another, as on a real
  // machine; each pass takes what is at or below the watermark.
  std::mt19937 rng(11);
  uint64_t now = 5'000'000'000;
  std::vector<uint32_t> made(kCpus, 0);
  std::vector<uint64_t> clock(kCpus, 0);  // each CPU stamps in order, the CPUs interleave
  uint64_t watermark = 0;
  while (true) {
    bool all = true;
    for (uint32_t i = 0; i < kCpus; i++) {
      for (int k = 0; k < 5 && made[i] < kPerCpu; k++) {
        clock[i] = std::max(clock[i] + 1, now + rng() % 50);
        rings[i]->put(i, made[i], clock[i]);
        made[i]++;
      }
      now += 10;
      all &= made[i] == kPerCpu;
    }
    watermark = now - 100;
    for (uint32_t i = 0; i < kCpus; i++) {
      // Walk to the first record above the watermark, as the drain does.
      uint64_t pos = w.position(i), end = pos;
      while (end < rings[i]->prod) {
        const uint64_t off = end & (rings[i]->bytes - 1);
        tw_cring_rec h;
        std::memcpy(&h, rings[i]->data + off, sizeof h);
        const uint64_t body = h.len & ~TW_CRING_SKIP;
        if (!(h.len & TW_CRING_SKIP)) {
          uint64_t ts;
          std::memcpy(&ts, rings[i]->data + off + sizeof h, 8);
          if (ts > watermark && !all) break;
        }
        end += (sizeof h + body + 7) & ~7ull;
      }
      ASSERT_TRUE(w.write(i, rings[i]->mem(), end, 0, 0, 0));
    }
    w.publish(all ? now + 1000 : watermark);
    if (all) break;
    if (rng() % 8 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  w.seal();
  int status = 0;
  for (int i = 0; i < 900 && waitpid(pid, &status, WNOHANG) == 0; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  if (waitpid(pid, &status, WNOHANG) == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  close(ready[0]);
  close(ready[1]);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "reader: 3 bad record, 4 out of time order, 5 corrupt, 6 missing records, "
                                        "7 never waited, 10 exception";
}

// A writer killed at a random moment of its writes: a reader (and then
// recovery) never yields a torn or stale block. The writer rewrites the
// block it ends in with every span, so a kill during a write leaves a block
// that is half new; what readers take is below `committed` and matches its
// checksum, or it is not taken at all.
TEST(StreamSegment, WriterKilledMidWriteNeverYieldsATornBlock) {
  for (int trial = 0; trial < 6; trial++) {
    TempDir dir;
    // What the child has published, in shared memory: records per CPU.
    auto* published = static_cast<uint64_t*>(
        mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
    ASSERT_NE(published, MAP_FAILED);
    std::memset(published, 0, 4096);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      FakeRing a(1 << 20), b(1 << 20);
      auto w = StreamSegmentWriter::create(dir.path(), 7, specs(2, 64 << 20));
      std::mt19937 rng(trial);
      uint64_t ts = 1;
      uint32_t na = 0, nb = 0;
      for (;;) {
        const int k = 1 + static_cast<int>(rng() % 40);
        for (int j = 0; j < k; j++) {
          a.put(0, na++, ts++);
          if (j % 2) b.put(1, nb++, ts++);
        }
        if (!w.write(0, a.mem(), a.prod, 0, 0, 0) || !w.write(1, b.mem(), b.prod, 0, 0, 0)) _exit(1);
        w.publish(ts);
        __atomic_store_n(&published[0], na, __ATOMIC_RELEASE);
        __atomic_store_n(&published[1], nb, __ATOMIC_RELEASE);
        if (w.position(0) > (60ull << 20) || w.position(1) > (60ull << 20)) _exit(0);
      }
    }
    // Let it run for a while, then kill it in the middle of whatever it does.
    std::mt19937 rng(100 + trial);
    const auto until = Clock::now() + std::chrono::milliseconds(50 + rng() % 250);
    while (Clock::now() < until && __atomic_load_n(&published[0], __ATOMIC_ACQUIRE) < 1000)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 20000));
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    const uint64_t seen0 = published[0], seen1 = published[1];
    const std::string path = segment_path(dir.path(), 7);

    auto check = [&](const char* when, bool must_have_all) {
      auto r = SegmentReader::open(path);
      std::map<uint32_t, uint32_t> next;
      uint64_t last = 0;
      while (auto rec = r.next()) {
        uint32_t cpu, n;
        uint64_t t;
        ASSERT_TRUE(packet_matches(*rec, &cpu, &n, &t)) << when << ": a torn or stale record";
        ASSERT_EQ(n, next[cpu]++) << when;
        ASSERT_GE(t, last) << when;
        last = t;
      }
      EXPECT_FALSE(r.corrupt()) << when;
      if (must_have_all) {
        EXPECT_GE(next[0], seen0) << when << ": every published record is kept";
        EXPECT_GE(next[1], seen1) << when;
      }
    };
    check("after the kill", false);  // open: only what is at or below the watermark
    EXPECT_GT(recover_segment(path), 0u);
    check("after recovery", true);
    munmap(published, 4096);
  }
}

// A block whose bytes no longer match its checksum (a bit flipped on disk, a
// block that never reached it) stops the reader there; recovery cuts the
// region at that block and keeps every record before it.
TEST(StreamSegment, DamagedBlockStopsTheReaderAndRecoveryCutsThere) {
  TempDir dir;
  std::string path;
  {
    FakeRing a(4 << 20);
    auto w = StreamSegmentWriter::create(dir.path(), 1, specs(1, 8 << 20));
    for (uint32_t n = 0; n < 2000; n++) a.put(0, n, 100 + n);
    ASSERT_LT(a.prod, a.bytes);
    ASSERT_TRUE(w.write(0, a.mem(), a.prod, 2000, 100, 2099));
    w.publish(UINT64_MAX - 1);
    path = w.path();
  }  // not sealed: as a writer that died
  tw_seg_region reg;
  {
    int fd = open(path.c_str(), O_RDONLY);
    ASSERT_EQ(pread(fd, &reg, sizeof reg, 128), static_cast<ssize_t>(sizeof reg));
    close(fd);
  }
  const uint64_t bad_block = 40;
  ASSERT_LT(bad_block * TW_SEG_BLOCK, reg.committed);
  {
    int fd = open(path.c_str(), O_RDWR);
    uint8_t byte;
    const off_t at = static_cast<off_t>(reg.file_off + bad_block * TW_SEG_BLOCK + 100);
    ASSERT_EQ(pread(fd, &byte, 1, at), 1);
    byte ^= 0x10;
    ASSERT_EQ(pwrite(fd, &byte, 1, at), 1);
    close(fd);
  }
  const uint64_t block_end = reg.file_off + bad_block * TW_SEG_BLOCK;
  auto read_all = [&](bool& corrupt) {
    auto r = SegmentReader::open(path);
    uint64_t n = 0;
    const auto* base = reinterpret_cast<const uint8_t*>(&r.header());
    while (auto rec = r.next()) {
      EXPECT_TRUE(packet_matches(*rec));
      EXPECT_LE(static_cast<uint64_t>(rec->body.data() + rec->body.size() - base), block_end)
          << "a record from the damaged block";
      n++;
    }
    corrupt = r.corrupt();
    return n;
  };
  bool corrupt = false;
  const uint64_t before = read_all(corrupt);
  EXPECT_TRUE(corrupt);
  EXPECT_GT(before, 100u);
  EXPECT_LT(before, 2000u);
  EXPECT_EQ(recover_segment(path), before) << "recovery keeps the records before the damaged block";
  EXPECT_EQ(read_all(corrupt), before);
  EXPECT_FALSE(corrupt);
}

}  // namespace
