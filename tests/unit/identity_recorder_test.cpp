// The sensor's identity recorder (userspace/sensor/identity_recorder.cpp):
// the stream it writes, read back through IdentityFeed into an
// IdentityTable; the dump at each new segment; dumps larger than a segment;
// segments that grow with the state.
#include <gtest/gtest.h>

#include <ctime>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "temp_dir.hpp"
#include "identity_feed.hpp"
#include "identity_recorder.hpp"
#include "identity_table.hpp"
#include "identity_test_helpers.hpp"
#include "segment.hpp"

namespace {

using namespace tapwire::identity;
using namespace tapwire::identity::testing;
using tapwire::sensor::IdentityRecorder;
using tapwire::sensor::IdentityRecorderOptions;
namespace shm = tapwire::shm;

using tapwire::test_util::TempDir;

uint64_t realtime_now() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * kSec + static_cast<uint64_t>(ts.tv_nsec);
}

const std::string kWebUid = "11111111-2222-4333-8444-555555555555";
const std::string kApiUid = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";

struct Recorder {
  TempDir tmp;
  std::string dir = tmp.path() + "/identity";
  std::map<uint64_t, std::string> cgroups = {{101, container_cgroup(kWebUid, container_id(1))},
                                             {102, container_cgroup(kApiUid, container_id(2))},
                                             {103, "/system.slice/cron.service"}};
  IdentityRecorder rec;

  explicit Recorder(IdentityRecorderOptions o = {})
      : rec(with_dir(o, tmp.path() + "/identity"), [this](uint64_t id) -> std::optional<std::string> {
          auto it = cgroups.find(id);
          if (it == cgroups.end()) return std::nullopt;
          return it->second;
        }) {}
  static IdentityRecorderOptions with_dir(IdentityRecorderOptions o, const std::string& d) {
    o.dir = d;
    return o;
  }

  // web (10.244.1.7, process 500) -> api:8080 (10.244.2.9, process 600),
  // Service api; a cron job (700) that ran and went; a pod that was deleted.
  void world() {
    rec.set_self(SelfObject{"node-1", {ip("10.0.0.5")}}, at(0));
    rec.workload(pod_up(0, {.uid = kWebUid, .ns = "shop", .name = "web-5d8f", .ips = {"10.244.1.7"},
                            .containers = {{"web", container_id(1), "containerd"}}})
                     .workload,
                 at(0));
    rec.workload(pod_up(0, {.uid = kApiUid, .ns = "shop", .name = "api-7d9c", .ips = {"10.244.2.9"},
                            .owner_kind = "Deployment", .owner_name = "api",
                            .containers = {{"api", container_id(2), "containerd"}}})
                     .workload,
                 at(0));
    rec.workload(pod_up(0, {.uid = "old", .ns = "shop", .name = "old-1", .ips = {"10.244.9.9"}}).workload, at(0));
    rec.workload(service_up(0, "svc-api", "shop", "api", {"10.96.0.12"}).workload, at(0));
    rec.workload(slice_up(0, "es-api", "shop", "api", {"10.244.2.9"}).workload, at(0));
    rec.workload(sync(0, "pods", "synced").workload, at(0));
    rec.process(process(at(1), 500, TW_PROC_SCAN, "web", "/usr/bin/web", 101));
    rec.process(process(at(1), 600, TW_PROC_SCAN, "api", "/app/api", 102));
    rec.process(process(at(2), 700, TW_IDENT_EXEC, "backup", "/usr/bin/backup", 103));
    rec.socket(sock_event({.ts = at(10), .cookie = 1, .cgroup = 101, .tgid = 500, .local = "10.244.1.7", .lport = 40000,
                           .remote = "10.244.2.9", .rport = 8080, .comm = "worker-1"},
                          TW_IDENT_SOCK_OPEN));
    rec.socket(sock_event({.ts = at(10), .cookie = 2, .cgroup = 102, .tgid = 600, .local = "10.244.2.9", .lport = 8080,
                           .remote = "10.244.1.7", .rport = 40000, .comm = "api"},
                          TW_IDENT_SOCK_OPEN));
    rec.socket(sock_event({.ts = at(11), .cookie = 3, .cgroup = 103, .tgid = 700, .local = "10.0.0.5", .lport = 50000,
                           .remote = "10.0.0.6", .rport = 22, .comm = "backup"},
                          TW_IDENT_SOCK_OPEN));
    rec.socket(sock_event({.ts = at(12), .cookie = 3, .tgid = 700, .local = "10.0.0.5"}, TW_IDENT_SOCK_CLOSE));
    rec.process(process(at(13), 700, TW_IDENT_EXIT, "", ""));
    rec.workload(pod_del(0, "old").workload, at(14));
    rec.publish();
  }

  uint64_t newest_seq() const {
    auto segs = shm::list_segments(dir);
    return segs.empty() ? 0 : segs.back().seq;
  }
};

void expect_world_resolves(IdentityTable& t) {
  auto web = t.resolve(IPPROTO_TCP, ip("10.244.1.7"), 40000, ip("10.244.2.9"), 8080, at(20));
  ASSERT_TRUE(web);
  EXPECT_EQ(web->pid, 500u);
  EXPECT_EQ(web->process, "web");
  EXPECT_EQ(web->exe, "/usr/bin/web");
  EXPECT_EQ(web->container, "web");
  EXPECT_EQ(web->pod, "web-5d8f");
  EXPECT_EQ(web->workload_kind, "Pod");
  EXPECT_EQ(web->node, "node-1");
  auto api = t.resolve(IPPROTO_TCP, ip("10.244.2.9"), 8080, ip("10.244.1.7"), 40000, at(20));
  ASSERT_TRUE(api);
  EXPECT_EQ(api->pid, 600u);
  EXPECT_EQ(api->container, "api");
  EXPECT_EQ(api->workload_kind + "/" + api->workload_name, "Deployment/api");
  EXPECT_EQ(api->service, "api");
  EXPECT_EQ(t.node(), "node-1");
  std::vector<std::string> names;
  for (auto& p : t.pods()) names.push_back(p.name);
  EXPECT_EQ(names, (std::vector<std::string>{"api-7d9c", "web-5d8f"}));
}

TEST(IdentityRecorder, TheStreamResolvesBothEnds) {
  Recorder r;
  r.world();
  IdentityTable t;
  IdentityFeed f(r.dir, false, 0);
  f.advance_all(t);
  EXPECT_EQ(f.stats().invalid, 0u);
  expect_world_resolves(t);
  // The cron job's socket, for the time it lived.
  auto cron = t.resolve(IPPROTO_TCP, ip("10.0.0.5"), 50000, ip("10.0.0.6"), 22, at(11.5));
  ASSERT_TRUE(cron);
  EXPECT_EQ(cron->exe, "/usr/bin/backup");
  EXPECT_EQ(t.kube_state()["pods"].state, "synced");
  EXPECT_EQ(r.rec.stats().live_sockets, 2u);
  EXPECT_EQ(r.rec.stats().live_processes, 2u);
  EXPECT_EQ(r.rec.stats().cgroups, 3u);
  EXPECT_EQ(r.rec.stats().objects, 4u);  // 2 pods, the service, the slice
}

TEST(IdentityRecorder, EachNewSegmentOpensWithADumpOfTheLiveState) {
  Recorder r;
  r.world();
  const uint64_t first = r.newest_seq();
  r.rec.rotate();
  r.rec.workload(pod_up(0, {.uid = "new", .ns = "shop", .name = "new-1", .ips = {"10.244.3.3"}}).workload, at(30));
  r.rec.publish();
  ASSERT_EQ(r.newest_seq(), first + 1);
  EXPECT_EQ(r.rec.stats().dumps, 2u);
  EXPECT_EQ(r.rec.stats().dumps_incomplete, 0u);

  // What the new segment's dump restates: the live state, nothing that ended.
  auto reader = shm::SegmentReader::open(shm::segment_path(r.dir, first + 1));
  std::vector<IdentityRecord> recs;
  while (auto rec = reader.next()) {
    auto d = decode_identity(rec->type, rec->body);
    ASSERT_TRUE(d);
    recs.push_back(*d);
  }
  ASSERT_GE(recs.size(), 3u);
  ASSERT_TRUE(std::holds_alternative<DumpRecord>(recs.front()));
  EXPECT_EQ(std::get<DumpRecord>(recs.front()).phase, TW_DUMP_BEGIN);
  size_t end = 0;
  std::set<uint64_t> cookies, cgroups;
  std::set<uint32_t> tgids;
  std::set<std::string> objects;
  bool self = false;
  for (size_t i = 1; i < recs.size() && !end; i++) {
    std::visit(
        [&](const auto& x) {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, DumpRecord>) {
            EXPECT_EQ(x.phase, TW_DUMP_END);
            EXPECT_EQ(x.records, i);  // everything before it, begin included
            end = i;
          } else {
            EXPECT_TRUE(record_in_dump(x)) << i;
            if constexpr (std::is_same_v<T, SocketRecord>) cookies.insert(x.ev.cookie);
            if constexpr (std::is_same_v<T, ProcessRecord>) tgids.insert(x.tgid);
            if constexpr (std::is_same_v<T, CgroupRecord>) cgroups.insert(x.cgroup_id);
            if constexpr (std::is_same_v<T, WorkloadRecord>) {
              if (x.workload.state_key() == "Self") self = true;
              else objects.insert(x.workload.state_key());
            }
          }
        },
        recs[i]);
  }
  ASSERT_GT(end, 0u);
  EXPECT_EQ(cookies, (std::set<uint64_t>{1, 2}));
  EXPECT_EQ(tgids, (std::set<uint32_t>{500, 600}));
  EXPECT_EQ(cgroups, (std::set<uint64_t>{101, 102, 103}));  // cgroups are not ended: all that were seen
  // The new pod too: the recorder takes it in before its record opens the segment.
  EXPECT_EQ(objects, (std::set<std::string>{"Pod/" + kWebUid, "Pod/" + kApiUid, "Pod/new", "Service/svc-api",
                                            "EndpointSlice/es-api"}));
  EXPECT_TRUE(self);
  // Then the event that opened the segment.
  ASSERT_EQ(recs.size(), end + 2);
  EXPECT_EQ(std::get<WorkloadRecord>(recs.back()).workload.state_key(), "Pod/new");

  // That segment alone is enough to name both ends.
  IdentityTable t;
  IdentityFeed f(r.dir, false, 0);
  f.advance_all(t);  // starts at the newest segment
  EXPECT_EQ(f.stats().segments, 1u);
  EXPECT_EQ(t.stats().dumps, 1u);
  EXPECT_EQ(t.stats().dumps_incomplete, 0u);
  std::vector<std::string> names;
  for (auto& p : t.pods()) names.push_back(p.name);
  EXPECT_EQ(names, (std::vector<std::string>{"api-7d9c", "new-1", "web-5d8f"}));
  auto web = t.resolve(IPPROTO_TCP, ip("10.244.1.7"), 40000, ip("10.244.2.9"), 8080, at(20));
  ASSERT_TRUE(web);
  EXPECT_EQ(web->exe, "/usr/bin/web");
  EXPECT_EQ(web->container, "web");
}

// n live sockets of node processes, 112 bytes of dump each.
void many_sockets(IdentityRecorder& rec, uint32_t n, uint64_t first_cookie = 1000) {
  for (uint32_t i = 0; i < n; i++)
    rec.socket(sock_event({.ts = at(100), .cookie = first_cookie + i, .tgid = 1, .local = "10.0.0.5",
                           .lport = static_cast<uint16_t>(1024 + i % 60000), .remote = "10.0.0.6", .rport = 443},
                          TW_IDENT_SOCK_OPEN));
}

TEST(IdentityRecorder, AStateLargerThanASegmentGivesAnIncompleteDumpNotARotationLoop) {
  // 256 KiB of storage: segments of 64 KiB at most, a dump of 48 KiB at
  // most; 1000 live sockets need about 110 KiB.
  IdentityRecorderOptions o;
  o.storage_size = 256u << 10;
  o.segment_size = 64u << 10;
  Recorder r(o);
  r.world();
  many_sockets(r.rec, 1000);
  r.rec.publish();
  EXPECT_GE(r.rec.stats().dumps_incomplete, 1u);
  EXPECT_EQ(r.rec.stats().write_failures, 0u);
  // From now on a few events and ticks make no new segment: the dump fills
  // 3/4 of one, the events the rest, and a tick cannot grow segments past
  // a quarter of the storage.
  const uint64_t seq = r.newest_seq();
  for (int i = 0; i < 10; i++) {
    r.rec.tick(realtime_now());
    r.rec.workload(sync(0, "pods", i % 2 ? "synced" : "lost").workload, at(200 + i));
  }
  r.rec.publish();
  EXPECT_LE(r.newest_seq(), seq + 1);
  EXPECT_EQ(r.rec.store().options().segment_size, 64u << 10);

  // A reader starting at an incomplete dump: it counts fewer records than
  // the end marker and ends nothing by it.
  IdentityTable t;
  IdentityFeed f(r.dir, false, 0);
  f.advance_all(t);
  EXPECT_EQ(t.stats().dumps_incomplete, 1u);
  EXPECT_EQ(f.stats().invalid, 0u);
}

TEST(IdentityRecorder, SegmentsGrowToFitTheStateOnTick) {
  IdentityRecorderOptions o;
  o.storage_size = 64u << 20;
  o.segment_size = 64u << 10;
  Recorder r(o);
  r.world();
  many_sockets(r.rec, 2000);  // about 220 KiB of dump
  r.rec.publish();
  const auto incomplete = r.rec.stats().dumps_incomplete;
  EXPECT_GE(incomplete, 1u);  // while segments were small
  r.rec.tick(realtime_now());
  const uint64_t size = r.rec.store().options().segment_size;
  EXPECT_GE(size, 2u * 2000u * 112u);  // twice the dump at least
  EXPECT_LE(size, o.storage_size / 4);
  // The next segment (opened by the next record) holds a complete dump.
  const auto dumps = r.rec.stats().dumps;
  r.rec.workload(sync(0, "pods", "synced").workload, at(300));
  r.rec.publish();
  EXPECT_EQ(r.rec.stats().dumps, dumps + 1);
  EXPECT_EQ(r.rec.stats().dumps_incomplete, incomplete);
  // Ticking again with the same state changes nothing.
  const uint64_t seq = r.newest_seq();
  r.rec.tick(realtime_now());
  r.rec.workload(sync(0, "pods", "lost").workload, at(301));
  EXPECT_EQ(r.rec.store().options().segment_size, size);
  EXPECT_EQ(r.newest_seq(), seq);
  // And that segment names the sockets from its dump alone.
  r.rec.publish();
  IdentityTable t;
  IdentityFeed f(r.dir, false, 0);
  f.advance_all(t);
  EXPECT_EQ(t.stats().dumps_incomplete, 0u);
  EXPECT_EQ(t.stats().sockets, 2002u);
  expect_world_resolves(t);
}

}  // namespace
