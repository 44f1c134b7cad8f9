// What tapwire-kube-watch keeps between events: the objects it reported
// (for deletes after a relist), the owner chain, retry delays, framing.
#include <gtest/gtest.h>

#include <set>

#include "kube_backoff.hpp"
#include "kube_frame.hpp"
#include "kube_objectset.hpp"
#include "kube_owners.hpp"

namespace k = tapwire::identity::kube;
using k::Json;

TEST(KubeObjectSet, RelistReportsWhatVanished) {
  k::ObjectSet set;
  set.begin_list();
  set.put({"5b9c0d1e-aaaa-4bbb-8ccc-000000000001", "shop", "a"});
  set.put({"5b9c0d1e-aaaa-4bbb-8ccc-000000000002", "shop", "b"});
  set.put({"NOT-A-UUID", "other", "c"});
  set.put({"5B9C0D1E-AAAA-4BBB-8CCC-000000000003", "shop", "d"});  // upper case: kept as given
  EXPECT_EQ(set.size(), 4u);
  set.sweep([](const k::ObjectRef& r) { ADD_FAILURE() << "vanished right after listing: " << r.name; });

  set.begin_list();
  set.put({"5b9c0d1e-aaaa-4bbb-8ccc-000000000002", "shop", "b"});
  std::set<std::string> gone;
  set.sweep([&](const k::ObjectRef& r) { gone.insert(r.uid + " " + r.namespace_ + "/" + r.name); });
  EXPECT_EQ(gone, (std::set<std::string>{"5b9c0d1e-aaaa-4bbb-8ccc-000000000001 shop/a", "NOT-A-UUID other/c",
                                         "5B9C0D1E-AAAA-4BBB-8CCC-000000000003 shop/d"}));
  EXPECT_EQ(set.size(), 1u);
  auto r = set.erase("5b9c0d1e-aaaa-4bbb-8ccc-000000000002");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->namespace_, "shop");
  EXPECT_FALSE(set.erase("5b9c0d1e-aaaa-4bbb-8ccc-000000000002"));
  EXPECT_EQ(set.size(), 0u);
}

TEST(KubeObjectSet, ManyObjectsComeBackExactly) {
  k::ObjectSet set;
  set.begin_list();
  for (int i = 0; i < 20000; ++i) {
    char uid[37];
    std::snprintf(uid, sizeof uid, "%08x-0000-4000-8000-%012x", i, i * 7);
    set.put({uid, "ns-" + std::to_string(i % 50), "pod-" + std::to_string(i)});
  }
  set.begin_list();
  size_t n = 0;
  set.sweep([&](const k::ObjectRef& r) {
    int i = std::stoi(r.name.substr(4));
    char uid[37];
    std::snprintf(uid, sizeof uid, "%08x-0000-4000-8000-%012x", i, i * 7);
    EXPECT_EQ(r.uid, uid);
    EXPECT_EQ(r.namespace_, "ns-" + std::to_string(i % 50));
    ++n;
  });
  EXPECT_EQ(n, 20000u);
}

namespace {
Json pod_of(const std::string& kind, const std::string& name, const std::string& uid, const std::string& hash = "") {
  Json p = {{"metadata",
             {{"name", "p"},
              {"uid", "pod-1"},
              {"ownerReferences", Json::array({{{"kind", kind}, {"name", name}, {"uid", uid}, {"controller", true}}})}}}};
  if (!hash.empty()) p["metadata"]["labels"] = {{"pod-template-hash", hash}};
  return p;
}
}  // namespace

TEST(KubeOwners, ChainThroughReplicaSetsAndJobs) {
  k::OwnerIndex idx(true, true);
  idx.put("rs-1", k::Owner{"Deployment", "web"});
  idx.put("rs-2", std::nullopt);
  idx.put("job-1", k::Owner{"CronJob", "nightly"});
  EXPECT_EQ(idx.resolve(pod_of("ReplicaSet", "web-5d8f7", "rs-1")).owner, (k::Owner{"Deployment", "web"}));
  EXPECT_EQ(idx.resolve(pod_of("ReplicaSet", "bare-x", "rs-2")).owner, (k::Owner{"ReplicaSet", "bare-x"}));
  EXPECT_EQ(idx.resolve(pod_of("Job", "nightly-1", "job-1")).owner, (k::Owner{"CronJob", "nightly"}));
  EXPECT_EQ(idx.resolve(pod_of("StatefulSet", "db", "ss")).owner, (k::Owner{"StatefulSet", "db"}));
  EXPECT_TRUE(idx.resolve(pod_of("StatefulSet", "db", "ss")).waiting_for.empty());
  EXPECT_FALSE(idx.resolve(Json{{"metadata", {{"name", "bare"}}}}).owner);
}

TEST(KubeOwners, PodBeforeItsJobIsSettledLater) {
  k::OwnerIndex idx(true, true);
  Json pod = pod_of("Job", "nightly-1", "job-1");
  auto res = idx.resolve(pod);
  EXPECT_EQ(res.owner, (k::Owner{"Job", "nightly-1"}));
  EXPECT_EQ(res.waiting_for, "job-1");
  k::OJson frame = {{"uid", "pod-1"}, {"owner", {{"kind", "Job"}, {"name", "nightly-1"}}}};
  idx.wait("pod-1", res.waiting_for, *k::controller_of(pod), frame, k::OwnerIndex::Clock::now());
  EXPECT_EQ(idx.waiting(), 1u);
  idx.put("job-1", k::Owner{"CronJob", "nightly"});
  auto again = idx.settle("job-1");
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0]["owner"]["kind"], "CronJob");
  EXPECT_EQ(again[0]["owner"]["name"], "nightly");
  EXPECT_EQ(idx.waiting(), 0u);
  EXPECT_TRUE(idx.settle("job-1").empty());
}

TEST(KubeOwners, GuessThatWasRightIsNotRepeated) {
  k::OwnerIndex idx(true, true);
  Json pod = pod_of("ReplicaSet", "web-5d8f7", "rs-9", "5d8f7");
  auto res = idx.resolve(pod);
  EXPECT_EQ(res.owner, (k::Owner{"Deployment", "web"}));
  k::OJson frame = {{"uid", "pod-1"}, {"owner", {{"kind", "Deployment"}, {"name", "web"}}}};
  idx.wait("pod-1", res.waiting_for, *k::controller_of(pod), frame, k::OwnerIndex::Clock::now());
  idx.put("rs-9", k::Owner{"Deployment", "web"});
  EXPECT_TRUE(idx.settle("rs-9").empty());
}

TEST(KubeOwners, WaitingIsBounded) {
  k::OwnerIndex idx(true, false);
  auto t0 = k::OwnerIndex::Clock::now();
  k::Controller via{"ReplicaSet", "x", "rs"};
  for (size_t i = 0; i < k::OwnerIndex::kMaxWaiting + 10; ++i)
    idx.wait("pod-" + std::to_string(i), "rs", via, k::OJson::object(), t0);
  EXPECT_EQ(idx.waiting(), k::OwnerIndex::kMaxWaiting);
  EXPECT_EQ(idx.dropped(), 10u);
  // Once the old ones expire, new ones fit again.
  idx.wait("late", "rs", via, k::OJson::object(), t0 + k::OwnerIndex::kMaxWait + std::chrono::seconds(1));
  EXPECT_EQ(idx.waiting(), 1u);
  idx.forget("late");
  EXPECT_EQ(idx.waiting(), 0u);
}

TEST(KubeOwners, WaitingIsBoundedInBytesToo) {
  k::OwnerIndex idx(true, false);
  k::Controller via{"ReplicaSet", "x", "rs"};
  k::OJson big = {{"labels", {{"a", std::string(100000, 'v')}}}};
  for (int i = 0; i < 200; ++i) idx.wait("pod-" + std::to_string(i), "rs", via, big, k::OwnerIndex::Clock::now());
  EXPECT_LE(idx.waiting() * 100000, k::OwnerIndex::kMaxWaitingBytes);
  EXPECT_GT(idx.waiting(), 50u);
  EXPECT_EQ(idx.waiting() + idx.dropped(), 200u);
  size_t waiting = idx.waiting();
  idx.put("rs", std::nullopt);
  EXPECT_EQ(idx.settle("rs").size(), waiting);  // their frames had no owner yet: all are reported again
  EXPECT_EQ(idx.waiting(), 0u);
  idx.wait("again", "rs2", via, big, k::OwnerIndex::Clock::now());  // the bytes were given back
  EXPECT_EQ(idx.waiting(), 1u);
}

TEST(KubeOwners, UnwatchedControllersAreGuessedWithoutWaiting) {
  k::OwnerIndex idx(false, false);
  auto res = idx.resolve(pod_of("ReplicaSet", "web-5d8f7", "rs-1", "5d8f7"));
  EXPECT_EQ(res.owner, (k::Owner{"Deployment", "web"}));
  EXPECT_TRUE(res.waiting_for.empty());
}

TEST(KubeBackoff, DoublesToAMinuteWithJitter) {
  k::Backoff b(1.0, 42);
  double nominal = 1000;
  for (int i = 0; i < 12; ++i) {
    auto d = b.next().count();
    EXPECT_GE(d, static_cast<int64_t>(nominal * 0.75) - 1) << i;
    EXPECT_LE(d, std::min<int64_t>(static_cast<int64_t>(nominal * 1.25), 60000)) << i;
    nominal = std::min(nominal * 2, 60000.0);
  }
  b.reset();
  EXPECT_LE(b.next().count(), 1250);
  k::Backoff scaled(0.01, 7);
  EXPECT_LE(scaled.next().count(), 13);
  std::set<int64_t> seen;
  for (int i = 0; i < 20; ++i) {
    k::Backoff j(1.0, static_cast<uint64_t>(i));
    seen.insert(j.next().count());
  }
  EXPECT_GT(seen.size(), 10u);  // jittered: not all in step
}

TEST(KubeFrame, RoundTripAndBounds) {
  auto f = k::encode_frame(R"({"v":1})");
  ASSERT_TRUE(f);
  EXPECT_EQ(f->substr(0, 4), std::string("\x07\x00\x00\x00", 4));
  EXPECT_FALSE(k::encode_frame(""));
  EXPECT_FALSE(k::encode_frame(std::string(k::kMaxFrame + 1, 'x')));
  EXPECT_TRUE(k::encode_frame(std::string(k::kMaxFrame, 'x')));

  k::FrameReader r;
  std::string stream = *f + *k::encode_frame("second");
  for (char c : stream) r.feed(std::string_view(&c, 1));  // byte by byte
  EXPECT_EQ(r.next(), R"({"v":1})");
  EXPECT_EQ(r.next(), "second");
  EXPECT_FALSE(r.next());

  k::FrameReader bad;
  bad.feed(std::string("\xff\xff\xff\x7f", 4));
  EXPECT_FALSE(bad.next());
  EXPECT_TRUE(bad.failed());
  k::FrameReader zero;
  zero.feed(std::string("\0\0\0\0", 4));
  EXPECT_FALSE(zero.next());
  EXPECT_TRUE(zero.failed());
}
