// The identity feed (userspace/identity/identity_feed.cpp): an identity
// stream of several segments, each opening with a state dump as the sensor
// writes them, read into an IdentityTable at the pace of the traffic's time.
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

#include "temp_dir.hpp"
#include "identity_feed.hpp"
#include "identity_test_helpers.hpp"
#include "segment.hpp"

namespace {

using namespace tapwire::identity;
using namespace tapwire::identity::testing;
namespace shm = tapwire::shm;

using tapwire::test_util::TempDir;

// One identity segment written by hand, created (as its header says) at
// `created`: the feed picks its start by that time.
class Segment {
 public:
  Segment(const std::string& dir, uint64_t seq, uint64_t created)
      : w_(shm::SegmentWriter::create(dir, seq, 1u << 20)) {
    const int fd = ::open(w_.path().c_str(), O_RDWR);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(pwrite(fd, &created, sizeof created, offsetof(tw_seg_header, created_ns)),
              static_cast<ssize_t>(sizeof created));
    close(fd);
  }
  void add(const IdentityRecord& r) {
    auto [body, type] = encode(r);
    EXPECT_TRUE(w_.append(type, body, {}, record_ts(r)));
  }
  void add_raw(uint16_t type, const std::vector<uint8_t>& body, uint64_t ts) {
    EXPECT_TRUE(w_.append(type, body, {}, ts));
  }
  // The state dump that opens a segment, as the sensor writes it.
  void dump(uint64_t ts, std::vector<IdentityRecord> state) {
    add(dump_begin(ts));
    for (auto& r : state) {
      std::visit(
          [](auto& x) {
            using T = std::decay_t<decltype(x)>;
            if constexpr (std::is_same_v<T, SocketRecord>) x.ev.flags |= TW_SOCK_F_DUMP;
            else if constexpr (!std::is_same_v<T, DumpRecord>) x.flags |= TW_IDENT_REC_F_DUMP;
          },
          r);
      add(r);
    }
    add(dump_end(ts, state.size() + 1));
  }
  void publish() { w_.publish(); }
  void seal() { w_.seal(); }
  const std::string& path() const { return w_.path(); }

 private:
  shm::SegmentWriter w_;
};

PodSpec pod(const std::string& name, const char* addr) { return {.uid = "uid-" + name, .ns = "ns", .name = name, .ips = {addr}}; }

// The stream of the tests below:
//   segment 0, created at 0 s:   dump {A};          B at 10 s, C at 50 s, X at 55 s
//   (X is deleted while no sensor runs: no record says so)
//   segment 1, created at 100 s: dump {A, B, C};    D at 150 s, A deleted at 160 s
//   segment 2, created at 200 s: dump {B, C, D};    E at 250 s
// each with the Self object and pods' Sync in its dump.
struct Stream {
  TempDir tmp;
  std::string dir = tmp.path() + "/identity";
  std::vector<std::string> paths;

  explicit Stream(bool seal_last = true) {
    std::filesystem::create_directories(dir);
    auto base = [] {
      return std::vector<IdentityRecord>{self_up(at(0), "node-1", {"10.0.0.5"}), sync(at(0), "pods", "synced")};
    };
    {
      Segment s(dir, 1, at(0));
      auto st = base();
      st.push_back(pod_up(at(0), pod("a", "10.244.0.1")));
      s.dump(at(0), st);
      s.add(pod_up(at(10), pod("b", "10.244.0.2")));
      s.add(pod_up(at(50), pod("c", "10.244.0.3")));
      s.add(pod_up(at(55), pod("x", "10.244.0.9")));
      s.seal();
      paths.push_back(s.path());
    }
    {
      Segment s(dir, 2, at(100));
      auto st = base();
      st.push_back(pod_up(at(0), pod("a", "10.244.0.1")));
      st.push_back(pod_up(at(10), pod("b", "10.244.0.2")));
      st.push_back(pod_up(at(50), pod("c", "10.244.0.3")));
      s.dump(at(100), st);
      s.add(pod_up(at(150), pod("d", "10.244.0.4")));
      s.add(pod_del(at(160), "uid-a"));
      s.seal();
      paths.push_back(s.path());
    }
    {
      Segment s(dir, 3, at(200));
      auto st = base();
      st.push_back(pod_up(at(10), pod("b", "10.244.0.2")));
      st.push_back(pod_up(at(50), pod("c", "10.244.0.3")));
      st.push_back(pod_up(at(150), pod("d", "10.244.0.4")));
      s.dump(at(200), st);
      s.add(pod_up(at(250), pod("e", "10.244.0.5")));
      if (seal_last) s.seal();
      paths.push_back(s.path());
    }
  }
};

std::string names(const IdentityTable& t) {
  std::string out;
  for (auto& p : t.pods()) out += p.name;
  return out;
}

// As `tapwire workloads --at T` reads it: a fresh table, lookahead 0.
std::string pods_at(const std::string& dir, uint64_t ts) {
  IdentityTable t;
  IdentityFeed f(dir, false, 0);
  f.advance(t, ts);
  return names(t);
}

TEST(IdentityFeed, WorkloadsAtATime) {
  Stream s;
  EXPECT_EQ(pods_at(s.dir, at(5)), "a");
  EXPECT_EQ(pods_at(s.dir, at(10)), "ab");
  EXPECT_EQ(pods_at(s.dir, at(54.9)), "abc");
  // After segment 0's last record: segment 1's dump (at 100 s) must not be
  // applied yet: x was alive at 60 s, whatever the dump says later.
  EXPECT_EQ(pods_at(s.dir, at(60)), "abcx");
  EXPECT_EQ(pods_at(s.dir, at(99)), "abcx");
  EXPECT_EQ(pods_at(s.dir, at(100)), "abc");
  EXPECT_EQ(pods_at(s.dir, at(155)), "abcd");
  EXPECT_EQ(pods_at(s.dir, at(170)), "bcd");
  EXPECT_EQ(pods_at(s.dir, at(300)), "bcde");
  // Before the stream: nothing known yet.
  EXPECT_EQ(pods_at(s.dir, at(-50)), "");
}

TEST(IdentityFeed, StartsAtTheNewestSegmentCreatedAtOrBeforeTheFirstTime) {
  Stream s;
  {
    IdentityTable t;
    IdentityFeed f(s.dir, false, 0);
    f.advance(t, at(120));
    EXPECT_EQ(f.stats().segments, 1u);  // segment 1 only: its dump tells the state at 100 s
    EXPECT_EQ(f.stats().records, 7u);  // begin, Self, Sync, a, b, c, end
    EXPECT_EQ(names(t), "abc");
    EXPECT_EQ(t.node(), "node-1");
    EXPECT_EQ(t.kube_state()["pods"].state, "synced");
  }
  {
    IdentityTable t;
    IdentityFeed f(s.dir, false, 0);
    f.advance(t, at(100));  // created exactly then
    EXPECT_EQ(f.stats().segments, 1u);
    EXPECT_EQ(names(t), "abc");
  }
  {
    // Earlier than every segment: the oldest, whose dump applies once its time comes.
    IdentityTable t;
    IdentityFeed f(s.dir, false, 0);
    f.advance(t, at(-50));
    EXPECT_EQ(f.stats().records, 0u);
    f.advance(t, at(1));
    EXPECT_EQ(names(t), "a");
    EXPECT_EQ(f.stats().segments, 1u);
  }
  {
    IdentityTable t;
    IdentityFeed f(s.dir, false, 0);
    f.advance_all(t);
    EXPECT_EQ(f.stats().segments, 1u);  // the newest: everything from its dump on
    EXPECT_EQ(names(t), "bcde");
  }
}

TEST(IdentityFeed, ReadsAheadAtMostTheLookahead) {
  Stream s;
  IdentityTable t;
  IdentityFeed f(s.dir, false, 30 * kSec);
  f.advance(t, at(120));  // up to 150 s: d, not a's delete at 160 s
  EXPECT_EQ(names(t), "abcd");
  f.advance(t, at(129.9));
  EXPECT_EQ(names(t), "abcd");
  f.advance(t, at(130));  // 160 s exactly
  EXPECT_EQ(names(t), "bcd");
  EXPECT_EQ(f.stats().segments, 2u);  // segment 2 is open, its dump (200 s) held back
  const uint64_t before = f.stats().records;
  f.advance(t, at(140));  // nothing new up to 170 s
  EXPECT_EQ(f.stats().records, before);
  EXPECT_EQ(names(t), "bcd");
  f.advance(t, at(1000));
  EXPECT_EQ(names(t), "bcde");
  EXPECT_EQ(f.stats().segments, 2u);
  EXPECT_EQ(f.stats().segments_missed, 0u);
  EXPECT_TRUE(f.error().empty());
}

TEST(IdentityFeed, ReadingOnThroughEverySegment) {
  // From the first segment on, the table goes through every record and
  // every dump; x, never restated, ends at segment 1's dump.
  Stream s;
  IdentityTable t;
  IdentityFeed f(s.dir, false, 0);
  f.advance(t, at(1));
  EXPECT_EQ(names(t), "a");
  f.advance(t, at(99));
  EXPECT_EQ(names(t), "abcx");
  f.advance(t, at(101));
  EXPECT_EQ(names(t), "abc");
  EXPECT_EQ(t.stats().dumps, 2u);
  // Resolution by address still knows x for the time it lived.
  auto x = t.resolve(6, ip("10.244.0.9"), 80, ip("10.0.0.5"), 1, at(70));
  ASSERT_TRUE(x);
  EXPECT_EQ(x->pod, "x");
  EXPECT_EQ(t.resolve(6, ip("10.244.0.9"), 80, ip("10.0.0.5"), 1, at(110)), nullptr);
  f.advance(t, at(300));
  EXPECT_EQ(names(t), "bcde");
  EXPECT_EQ(f.stats().segments, 3u);
}

TEST(IdentityFeed, FollowsALiveSegment) {
  TempDir tmp;
  const std::string dir = tmp.path();
  IdentityTable t;
  IdentityFeed f(dir, /*follow=*/true, 0);
  Segment s0(dir, 1, at(0));
  s0.dump(at(0), {self_up(at(0), "node-1", {})});
  s0.add(pod_up(at(5), pod("a", "10.244.0.1")));
  s0.publish();
  f.advance(t, at(10));
  EXPECT_EQ(names(t), "a");
  // Appended but not published: invisible.
  s0.add(pod_up(at(15), pod("b", "10.244.0.2")));
  f.advance(t, at(20));
  EXPECT_EQ(names(t), "a");
  s0.publish();
  f.advance(t, at(20));
  EXPECT_EQ(names(t), "ab");
  // Published but later than the time asked for: waits.
  s0.add(pod_up(at(40), pod("c", "10.244.0.3")));
  s0.publish();
  f.advance(t, at(30));
  EXPECT_EQ(names(t), "ab");
  f.advance(t, at(40));
  EXPECT_EQ(names(t), "abc");
  // The sensor rotates: the sealed segment is read to its end, then the next.
  s0.add(pod_del(at(45), "uid-a"));
  s0.seal();
  f.advance(t, at(50));
  EXPECT_EQ(names(t), "bc");
  // No next segment yet; the directory is listed again only after a second
  // of traffic time.
  Segment s1(dir, 2, at(50));
  s1.dump(at(50), {self_up(at(0), "node-1", {}), pod_up(at(15), pod("b", "10.244.0.2"))});
  s1.publish();
  f.advance(t, at(50.5));
  EXPECT_EQ(names(t), "bc");
  f.advance(t, at(51.1));
  EXPECT_EQ(names(t), "b");  // c was not restated: gone by 50 s
  EXPECT_EQ(f.stats().segments, 2u);
}

TEST(IdentityFeed, SkipsASegmentDeletedByRetention) {
  Stream s;
  IdentityTable t;
  IdentityFeed f(s.dir, false, 0);
  f.advance(t, at(5));  // segment 0, its dump and nothing more
  EXPECT_EQ(names(t), "a");
  ASSERT_TRUE(std::filesystem::remove(s.paths[1]));
  f.advance(t, at(300));
  EXPECT_EQ(f.stats().segments_missed, 1u);
  EXPECT_EQ(f.stats().segments, 2u);
  // a's delete was in the lost segment; segment 2's dump does not restate a: gone.
  EXPECT_EQ(names(t), "bcde");
  EXPECT_TRUE(f.error().empty());
}

TEST(IdentityFeed, ACorruptSegmentStopsThatSegmentOnly) {
  Stream s;
  // Damage the last record of segment 1 (a's delete): its CRC no longer matches.
  {
    uint64_t last = 0;
    {
      auto r = shm::SegmentReader::open(s.paths[1]);
      while (auto rec = r.next()) last = rec->offset;
    }
    const off_t pos = static_cast<off_t>(TW_SEG_HEADER_SIZE + last + sizeof(tw_seg_rec_hdr) + 20);  // in the JSON
    const int fd = ::open(s.paths[1].c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    uint8_t b = 0;
    ASSERT_EQ(pread(fd, &b, 1, pos), 1);
    b ^= 0x20;
    ASSERT_EQ(pwrite(fd, &b, 1, pos), 1);
    close(fd);
  }
  IdentityTable t;
  IdentityFeed f(s.dir, false, 0);
  f.advance(t, at(155));
  EXPECT_EQ(names(t), "abcd");
  f.advance(t, at(170));
  EXPECT_EQ(names(t), "abcd");  // the delete was lost with the damage
  EXPECT_EQ(f.stats().corrupt, 1u);
  EXPECT_NE(f.error().find(s.paths[1]), std::string::npos) << f.error();
  EXPECT_NE(f.error().find("damaged"), std::string::npos) << f.error();
  // The next segment is read as usual.
  f.advance(t, at(300));
  EXPECT_EQ(names(t), "bcde");
  EXPECT_EQ(f.stats().segments, 2u);
}

TEST(IdentityFeed, ASegmentThatIsNoSegmentIsSkipped) {
  Stream s;
  {
    // Segment 1's magic overwritten.
    const int fd = ::open(s.paths[1].c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, "XXXXXXXX", 8, 0), 8);
    close(fd);
  }
  IdentityTable t;
  IdentityFeed f(s.dir, false, 0);
  f.advance(t, at(5));
  f.advance(t, at(300));
  EXPECT_EQ(names(t), "bcde");
  EXPECT_EQ(f.stats().corrupt, 1u);
  EXPECT_NE(f.error().find(s.paths[1]), std::string::npos) << f.error();
}

TEST(IdentityFeed, InvalidAndForeignRecordsAreSkipped) {
  TempDir tmp;
  Segment seg(tmp.path(), 1, at(0));
  seg.dump(at(0), {self_up(at(0), "node-1", {})});
  std::vector<uint8_t> bad(16, 0);  // a workload record whose JSON is not there
  seg.add_raw(TW_REC_WORKLOAD, bad, at(1));
  seg.add_raw(TW_REC_IFACE, std::vector<uint8_t>(32, 0), at(1));  // not identity: ignored
  seg.add_raw(999, {1, 2, 3}, at(1));  // unknown type: ignored
  seg.add(pod_up(at(2), pod("a", "10.244.0.1")));
  seg.seal();
  IdentityTable t;
  IdentityFeed f(tmp.path(), false, 0);
  f.advance_all(t);
  EXPECT_EQ(names(t), "a");
  EXPECT_EQ(f.stats().invalid, 1u);
  EXPECT_EQ(f.stats().records, 4u);  // begin, Self, end, a
}

TEST(IdentityFeed, AMissingDirectoryIsAnEmptyFeed) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/identity";
  IdentityTable t;
  IdentityFeed f(dir, /*follow=*/true, 0);
  f.advance(t, at(5));
  EXPECT_EQ(f.stats().records, 0u);
  EXPECT_EQ(f.stats().segments, 0u);
  EXPECT_TRUE(f.error().empty());
  EXPECT_TRUE(t.pods().empty());
  // It appears later (a sensor starts): picked up once the directory is
  // looked at again, a second of traffic time on.
  std::filesystem::create_directories(dir);
  {
    Segment s(dir, 1, at(0));
    s.dump(at(0), {pod_up(at(0), pod("a", "10.244.0.1"))});
    s.seal();
  }
  f.advance(t, at(5.5));
  EXPECT_EQ(names(t), "");
  f.advance(t, at(6.1));
  EXPECT_EQ(names(t), "a");
  // A directory that never exists: nothing, however long.
  IdentityFeed never("/nonexistent/tapwire/identity", false, 0);
  IdentityTable t2;
  never.advance_all(t2);
  EXPECT_EQ(never.stats().records, 0u);
  EXPECT_EQ(identity_dir_of("/var/lib/tapwire"), "/var/lib/tapwire/identity");
}

}  // namespace
