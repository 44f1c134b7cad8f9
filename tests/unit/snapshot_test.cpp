// Snapshots (userspace/common/snapshot.cpp): create from a segment directory,
// the manifest, verify catching damage, pack/unpack round trip, bad inputs
// that must change nothing.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "temp_dir.hpp"
#include "segment.hpp"
#include "snapshot.hpp"

namespace {

namespace fs = std::filesystem;
namespace snap = tapwire::snapshot;
using tapwire::shm::SegmentWriter;

using tapwire::test_util::TempDir;

constexpr uint64_t kSec = 1000000000ull;
constexpr uint64_t kT0 = 1795398720ull * kSec;  // 2026-11-23T...

// One segment: an interface record, then `packets` packet-like records from
// ts to ts + packets seconds. Sealed unless `leave_open`.
void write_segment(const std::string& dir, uint64_t seq, uint64_t ts, int packets, const char* iface,
                   bool leave_open = false) {
  auto w = SegmentWriter::create(dir, seq, 1 << 20);
  tw_seg_iface i{};
  i.ifindex = 7;
  std::strncpy(i.name, iface, sizeof i.name - 1);
  i.ts_ns = ts;
  ASSERT_TRUE(w.append(TW_REC_IFACE, {reinterpret_cast<const uint8_t*>(&i), sizeof i}, {}, ts));
  for (int p = 0; p < packets; p++) {
    std::vector<uint8_t> body(200, static_cast<uint8_t>(seq * 31 + p));
    ASSERT_TRUE(w.append(TW_REC_PACKET, body, {}, ts + static_cast<uint64_t>(p) * kSec));
  }
  w.publish();
  if (!leave_open) w.seal();
}

std::string read_file(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// name -> content of every regular file under dir
std::map<std::string, std::string> tree(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) out[fs::relative(e.path(), dir).string()] = read_file(e.path());
  return out;
}

class SnapshotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    data = tmp.path() + "/data";
    seg = data + "/segments";
    fs::create_directories(seg);
    write_segment(seg, 0, kT0, 10, "eth0");             // [T0, T0+9s]
    write_segment(seg, 1, kT0 + 100 * kSec, 10, "eth1");  // [T0+100s, T0+109s]
    write_segment(seg, 2, kT0 + 200 * kSec, 10, "eth0");  // [T0+200s, T0+209s]
  }
  snap::CreateOptions opts(const std::string& name) {
    snap::CreateOptions o;
    o.data_dir = data;
    o.name = name;
    return o;
  }
  std::string snapshots() { return data + "/snapshots"; }
  // Only the finished snapshots, no leftovers.
  std::vector<std::string> entries() {
    std::vector<std::string> v;
    std::error_code ec;
    for (auto& e : fs::directory_iterator(snapshots(), ec)) v.push_back(e.path().filename().string());
    std::sort(v.begin(), v.end());
    return v;
  }
  TempDir tmp;
  std::string data, seg;
};

TEST_F(SnapshotTest, CreateEverythingWritesManifestAndLinks) {
  auto m = snap::create(opts("all"));
  const std::string dir = snapshots() + "/all";
  ASSERT_EQ(m.files.size(), 3u);
  auto j = nlohmann::json::parse(read_file(dir + "/manifest.json"));
  EXPECT_EQ(j["name"], "all");
  EXPECT_EQ(j["format"], "tapwire-snapshot/1");
  EXPECT_EQ(j["tapwire_version"], TAPWIRE_VERSION);
  EXPECT_EQ(j["from_ns"].get<uint64_t>(), kT0);
  EXPECT_EQ(j["to_ns"].get<uint64_t>(), kT0 + 209 * kSec + 1);
  EXPECT_EQ(j["interfaces"], nlohmann::json::array({"eth0", "eth1"}));
  EXPECT_TRUE(j["created"].get<std::string>().ends_with("Z"));
  ASSERT_EQ(j["files"].size(), 3u);
  for (size_t i = 0; i < 3; i++) {
    const auto& f = j["files"][i];
    const std::string name = f["name"];
    EXPECT_EQ(name, "segments/" + fs::path(tapwire::shm::segment_path(seg, i)).filename().string());
    EXPECT_EQ(f["size"].get<uint64_t>(), fs::file_size(dir + "/" + name));
    EXPECT_EQ(f["sha256"], snap::sha256_file(tapwire::shm::segment_path(seg, i)));
    struct stat a {}, b {};
    ASSERT_EQ(::stat((dir + "/" + name).c_str(), &a), 0);
    ASSERT_EQ(::stat(tapwire::shm::segment_path(seg, i).c_str(), &b), 0);
    EXPECT_EQ(a.st_ino, b.st_ino) << "hard link expected";
    EXPECT_EQ(a.st_mode & 0777, 0440u);
  }
  struct stat d {};
  ASSERT_EQ(::stat(dir.c_str(), &d), 0);
  EXPECT_EQ(d.st_mode & 0777, 0550u);
  EXPECT_TRUE(snap::verify_dir(dir).empty());
  auto l = snap::list(data);
  ASSERT_EQ(l.size(), 1u);
  EXPECT_TRUE(l[0].ok);
  EXPECT_EQ(l[0].name, "all");
  EXPECT_EQ(entries(), std::vector<std::string>{"all"});
}

TEST_F(SnapshotTest, WindowAndInterfaceSelectSegments) {
  auto o = opts("mid");
  o.from_ns = kT0 + 50 * kSec;
  o.to_ns = kT0 + 150 * kSec;
  auto m = snap::create(o);
  ASSERT_EQ(m.files.size(), 1u);
  EXPECT_EQ(m.files[0].name, "segments/0000000000000001.twseg");
  EXPECT_EQ(m.from_ns, o.from_ns);
  EXPECT_EQ(m.to_ns, o.to_ns);
  EXPECT_EQ(m.interfaces, std::vector<std::string>{"eth1"});

  auto o2 = opts("eth0only");
  o2.interfaces = {"eth0"};
  auto m2 = snap::create(o2);
  ASSERT_EQ(m2.files.size(), 2u);
  EXPECT_EQ(m2.interfaces, std::vector<std::string>{"eth0"});
}

TEST_F(SnapshotTest, OpenSegmentIsSealedWhenNoWriterRuns) {
  write_segment(seg, 3, kT0 + 300 * kSec, 5, "eth0", /*leave_open=*/true);
  auto r0 = tapwire::shm::SegmentReader::open(tapwire::shm::segment_path(seg, 3));
  ASSERT_FALSE(r0.sealed());
  auto m = snap::create(opts("withopen"));
  EXPECT_EQ(m.files.size(), 4u);
  auto r = tapwire::shm::SegmentReader::open(tapwire::shm::segment_path(seg, 3));
  EXPECT_TRUE(r.sealed());
  EXPECT_TRUE(snap::verify_dir(snapshots() + "/withopen").empty());
}

TEST_F(SnapshotTest, OpenSegmentWithLiveWriterAsksForRotation) {
  write_segment(seg, 3, kT0 + 300 * kSec, 5, "eth0", /*leave_open=*/true);
  int fd = ::open((seg + "/.writer.lock").c_str(), O_RDWR | O_CREAT, 0640);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX), 0);  // a "sensor" holds the lock (flock is per open file)
  auto o = opts("live");
  bool asked = false;
  o.request_rotate = [&] {
    asked = true;
    tapwire::shm::recover_segment(tapwire::shm::segment_path(seg, 3));  // what the sensor's rotate does: seal
  };
  auto m = snap::create(o);
  EXPECT_TRUE(asked);
  EXPECT_EQ(m.files.size(), 4u);
  // A sensor that cannot be reached: error, nothing created.
  write_segment(seg, 4, kT0 + 400 * kSec, 5, "eth0", true);
  auto o2 = opts("unreachable");
  o2.request_rotate = [] { throw snap::SnapshotError("cannot reach", "sock", "hint"); };
  EXPECT_THROW(snap::create(o2), snap::SnapshotError);
  EXPECT_EQ(entries(), std::vector<std::string>{"live"});
  ::close(fd);
}

TEST_F(SnapshotTest, VerifyCatchesFlippedByteMissingAndExtraFiles) {
  snap::create(opts("s"));
  const std::string dir = snapshots() + "/s";
  const std::string f = dir + "/segments/0000000000000001.twseg";
  ::chmod(f.c_str(), 0640);
  {
    std::fstream io(f, std::ios::in | std::ios::out | std::ios::binary);
    io.seekg(5000);
    char c;
    io.get(c);
    io.seekp(4200);
    io.put(static_cast<char>(c ^ 0x01));
  }
  auto p = snap::verify_dir(dir);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].file, "segments/0000000000000001.twseg");
  EXPECT_NE(p[0].what.find("sha256 mismatch"), std::string::npos);

  ::chmod(dir.c_str(), 0750);
  ::chmod((dir + "/segments").c_str(), 0750);
  fs::remove(dir + "/segments/0000000000000002.twseg");
  std::ofstream(dir + "/segments/extra.twseg") << "x";
  p = snap::verify_dir(dir);
  std::map<std::string, std::string> by_file;
  for (auto& x : p) by_file[x.file] = x.what;
  EXPECT_EQ(by_file.size(), 3u);
  EXPECT_EQ(by_file["segments/0000000000000002.twseg"], "missing");
  EXPECT_NE(by_file["segments/extra.twseg"].find("extra file"), std::string::npos);

  // Truncated file: a size mismatch.
  fs::resize_file(f, 4096);
  p = snap::verify_dir(dir);
  bool truncated = false;
  for (auto& x : p)
    if (x.file == "segments/0000000000000001.twseg" && x.what.find("truncated") != std::string::npos) truncated = true;
  EXPECT_TRUE(truncated);

  // Unreadable manifest.
  ::chmod((dir + "/manifest.json").c_str(), 0640);
  std::ofstream(dir + "/manifest.json", std::ios::trunc) << "{not json";
  p = snap::verify_dir(dir);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].file, "manifest.json");
}

TEST_F(SnapshotTest, PackUnpackRoundTrip) {
  snap::create(opts("orig"));
  const std::string pack = tmp.path() + "/orig.tar.zst";
  snap::pack(data, "orig", pack);
  ASSERT_TRUE(fs::exists(pack));
  EXPECT_FALSE(fs::exists(pack + ".tmp"));
  {  // zstd magic
    std::string head = read_file(pack).substr(0, 4);
    EXPECT_EQ(head, std::string("\x28\xb5\x2f\xfd", 4));
  }
  const std::string other = tmp.path() + "/other";
  EXPECT_EQ(snap::unpack(pack, other, ""), "orig");
  EXPECT_TRUE(snap::verify_dir(other + "/snapshots/orig").empty());
  EXPECT_EQ(tree(other + "/snapshots/orig"), tree(snapshots() + "/orig"));
  // Under a new name: manifest renamed, segments identical.
  EXPECT_EQ(snap::unpack(pack, other, "copy"), "copy");
  {
    auto j = nlohmann::json::parse(read_file(other + "/snapshots/copy/manifest.json"));
    EXPECT_EQ(j["name"], "copy");
  }
  auto a = tree(other + "/snapshots/copy"), b = tree(snapshots() + "/orig");
  a.erase("manifest.json");
  b.erase("manifest.json");
  EXPECT_EQ(a, b);
  // Same name again: error, nothing changed.
  EXPECT_THROW(snap::unpack(pack, other, ""), snap::SnapshotError);
  std::vector<std::string> names;
  for (auto& e : fs::directory_iterator(other + "/snapshots")) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"copy", "orig"}));
}

TEST_F(SnapshotTest, BadInputsChangeNothing) {
  snap::create(opts("exists"));
  const auto before = tree(data);
  auto expect_error = [&](auto fn, const std::string& what) {
    try {
      fn();
      ADD_FAILURE() << "no error for " << what;
    } catch (const snap::SnapshotError& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
    EXPECT_EQ(entries(), std::vector<std::string>{"exists"});
    EXPECT_EQ(tree(data), before);
  };
  expect_error([&] { snap::create(opts("exists")); }, "already exists");
  expect_error([&] { snap::create(opts("a/b")); }, "invalid snapshot name");
  expect_error([&] { snap::create(opts(".hidden")); }, "invalid snapshot name");
  expect_error([&] { snap::create(opts("")); }, "invalid snapshot name");
  expect_error([&] {
    auto o = opts("empty");
    o.from_ns = o.to_ns = kT0;
    snap::create(o);
  }, "empty time window");
  expect_error([&] {
    auto o = opts("inverted");
    o.from_ns = kT0 + 10 * kSec;
    o.to_ns = kT0;
    snap::create(o);
  }, "empty time window");
  expect_error([&] {
    auto o = opts("nodata");
    o.from_ns = kT0 + 20 * kSec;
    o.to_ns = kT0 + 30 * kSec;
    snap::create(o);
  }, "no captured data");
  expect_error([&] {
    auto o = opts("noiface");
    o.interfaces = {"wlan9"};
    snap::create(o);
  }, "no captured data");
  expect_error([&] {
    auto o = opts("toobig");
    o.storage_size = 4096;
    snap::create(o);
  }, "storage limit");

  // Pack files that are not one.
  const std::string junk = tmp.path() + "/junk.tar.zst";
  std::ofstream(junk) << "this is not an archive at all";
  expect_error([&] { snap::unpack(junk, data, "x"); }, "not a snapshot pack");
  const std::string empty = tmp.path() + "/empty.tar.zst";
  std::ofstream(empty).close();
  expect_error([&] { snap::unpack(empty, data, "x"); }, "not a snapshot pack");
  // A truncated pack.
  const std::string good = tmp.path() + "/good.tar.zst";
  snap::pack(data, "exists", good);
  std::string bytes = read_file(good);
  const std::string cut = tmp.path() + "/cut.tar.zst";
  std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  expect_error([&] { snap::unpack(cut, data, "cut"); }, "snapshot pack");
  // Unpack onto an existing name.
  expect_error([&] { snap::unpack(good, data, ""); }, "already exists");
  // A corrupt snapshot is not packed.
  const std::string f = snapshots() + "/exists/segments/0000000000000000.twseg";
  ::chmod(f.c_str(), 0640);
  {
    std::fstream io(f, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(4200);
    io.put('\x7f');
  }
  EXPECT_THROW(snap::pack(data, "exists", tmp.path() + "/bad.tar.zst"), snap::SnapshotError);
  EXPECT_FALSE(fs::exists(tmp.path() + "/bad.tar.zst"));
  EXPECT_FALSE(fs::exists(tmp.path() + "/bad.tar.zst.tmp"));
}

TEST_F(SnapshotTest, UnpackRefusesUnsafePaths) {
  // A tar with an absolute path and one with '..', written with the system tar.
  const std::string src = tmp.path() + "/src";
  fs::create_directories(src + "/evil/segments");
  std::ofstream(src + "/evil/manifest.json") << "{}";
  std::ofstream(tmp.path() + "/outside") << "x";
  const std::string dotdot = tmp.path() + "/dotdot.tar.zst";
  std::string cmd = "cd " + src + " && tar --zstd -cf " + dotdot + " evil/manifest.json evil/../../outside 2>/dev/null";
  // tar and zstd are build dependencies (scripts/install-deps.sh): their absence is a failure, not a skip.
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "tar --zstd failed: install tar and zstd (make deps)";
  EXPECT_THROW(snap::unpack(dotdot, data, ""), snap::SnapshotError);
  const std::string abs = tmp.path() + "/abs.tar.zst";
  cmd = "tar --zstd -P -cf " + abs + " " + src + "/evil/manifest.json 2>/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  EXPECT_THROW(snap::unpack(abs, data, ""), snap::SnapshotError);
  const std::string link = tmp.path() + "/link.tar.zst";
  fs::create_symlink("/etc/passwd", src + "/evil/segments/0000000000000000.twseg");
  cmd = "cd " + src + " && tar --zstd -cf " + link + " evil 2>/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  EXPECT_THROW(snap::unpack(link, data, ""), snap::SnapshotError);
  std::error_code ec;
  EXPECT_FALSE(fs::exists(data + "/snapshots/evil", ec));
  EXPECT_FALSE(fs::exists(data + "/snapshots/evil.tmp", ec));
}

}  // namespace

// The flow stream (DATA_DIR/flows/): the flow segments overlapping the
// window go along, are verified, packed and unpacked like the others.
TEST_F(SnapshotTest, CarriesTheFlowSegmentsOfTheWindow) {
  const std::string flows = data + "/flows";
  fs::create_directories(flows);
  auto flow_segment = [&](uint64_t seq, uint64_t ts) {
    auto w = SegmentWriter::create(flows, seq, 1 << 20);
    tw_seg_flow f{};
    f.ts_ns = ts;
    f.key.ip_version = 4;
    f.key.l4_proto = 6;
    f.st.first_ns = ts - kSec;
    f.flow_id = tw_flow_id(&f.key, f.st.first_ns);
    ASSERT_TRUE(w.append(TW_REC_FLOW, {reinterpret_cast<const uint8_t*>(&f), sizeof f}, {}, ts));
    w.publish();
    w.seal();
  };
  flow_segment(0, kT0 + 5 * kSec);  // in the window
  flow_segment(1, kT0 + 150 * kSec);  // not
  auto o = opts("win");
  o.from_ns = kT0;
  o.to_ns = kT0 + 20 * kSec;
  auto m = snap::create(o);
  std::vector<std::string> names;
  for (auto& f : m.files) names.push_back(f.name);
  EXPECT_EQ(names, (std::vector<std::string>{"segments/" + fs::path(tapwire::shm::segment_path(seg, 0)).filename().string(),
                                             "flows/" + fs::path(tapwire::shm::segment_path(flows, 0)).filename().string()}));
  const std::string dir = snapshots() + "/win";
  EXPECT_TRUE(snap::verify_dir(dir).empty());
  const std::string pack = tmp.path() + "/win.tar.zst";
  snap::pack(data, "win", pack);
  const std::string other = tmp.path() + "/other";
  EXPECT_EQ(snap::unpack(pack, other, ""), "win");
  EXPECT_TRUE(snap::verify_dir(other + "/snapshots/win").empty());
  EXPECT_EQ(tree(other + "/snapshots/win"), tree(dir));
  // A flipped byte in a flow segment is caught.
  const std::string f = other + "/snapshots/win/" + names[1];
  ::chmod(f.c_str(), 0640);
  {
    std::fstream io(f, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(4200);
    io.put('\x55');
  }
  auto problems = snap::verify_dir(other + "/snapshots/win");
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].file, names[1]);
}
