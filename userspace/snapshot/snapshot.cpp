#include "snapshot.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <functional>
#include <set>
#include <sstream>
#include <thread>

#include "fs_util.hpp"
#include "segment.hpp"
#include "timefmt.hpp"
#include "units.hpp"

#ifndef TAPWIRE_VERSION
#define TAPWIRE_VERSION "unknown"
#endif

namespace tapwire::snapshot {
namespace {

namespace fs = std::filesystem;

std::string errno_str(int e = errno) { return std::strerror(e); }

bool exists(const std::string& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
}

// Makes every directory under (and including) `dir` writable by its owner,
// so that it can be removed; then removes it. Best effort.
void remove_tree(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(dir, ec))) return;
  ::chmod(dir.c_str(), 0750);
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (it->is_directory(ec) && !it->is_symlink(ec)) ::chmod(it->path().c_str(), 0750);
  }
  fs::remove_all(dir, ec);
}

// Removes a NAME.tmp directory when the scope ends, unless released.
struct TmpDir {
  std::string path;
  bool keep = false;
  ~TmpDir() {
    if (!keep && !path.empty()) remove_tree(path);
  }
};

void write_file_atomic(const std::string& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
  if (fd < 0) throw SnapshotError("cannot write", path, errno_str());
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      throw SnapshotError("cannot write", path, errno_str(e));
    }
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) throw SnapshotError("cannot write", path, errno_str());
}

std::string read_small_file(const std::string& path, size_t limit) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw SnapshotError("cannot read", path, errno_str());
  std::string s;
  char buf[65536];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    s.append(buf, static_cast<size_t>(in.gcount()));
    if (s.size() > limit) throw SnapshotError("file too large", path, "a manifest is at most " + format_size(limit));
  }
  return s;
}

// Sum of the sizes of the regular files under `dir` (hard links to the ring
// count in full: a snapshot keeps them alive after retention).
uint64_t tree_size(const std::string& dir) {
  uint64_t total = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    std::error_code ec2;
    if (it->is_regular_file(ec2) && !it->is_symlink(ec2)) total += it->file_size(ec2);
  }
  return total;
}

void make_read_only(const std::string& dir, const Manifest& m) {
  for (const auto& f : m.files) ::chmod((dir + "/" + f.name).c_str(), 0440);
  ::chmod((dir + "/manifest.json").c_str(), 0440);
  ::chmod((dir + "/segments").c_str(), 0550);
  ::chmod((dir + "/identity").c_str(), 0550);  // absent in a snapshot without identity: no harm
  ::chmod((dir + "/flows").c_str(), 0550);  // likewise without flows
  ::chmod(dir.c_str(), 0550);
}

// renameat2(RENAME_NOREPLACE): an existing NAME is never replaced.
void rename_noreplace(const std::string& from, const std::string& to, const std::string& name) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) != 0) {
    if (errno == EEXIST) throw SnapshotError("snapshot already exists", name, "choose another --name or delete it first");
    throw SnapshotError("cannot rename " + from, to, errno_str());
  }
}

void make_dirs(const std::string& dir, mode_t mode) {
  if (!mkdir_p(dir, mode)) throw SnapshotError("cannot create directory", dir, errno_str());
}

// A fresh NAME.tmp under DATA_DIR/snapshots (a stale one from a crashed
// create is removed first).
std::string fresh_tmp(const std::string& data_dir, const std::string& name) {
  const std::string base = snapshots_dir(data_dir);
  make_dirs(base, 0750);
  const std::string tmp = base + "/" + name + ".tmp";
  remove_tree(tmp);
  if (::mkdir(tmp.c_str(), 0750) != 0) throw SnapshotError("cannot create directory", tmp, errno_str());
  if (::mkdir((tmp + "/segments").c_str(), 0750) != 0)
    throw SnapshotError("cannot create directory", tmp + "/segments", errno_str());
  return tmp;
}

void copy_file(const std::string& src, const std::string& dst) {
  std::error_code ec;
  if (!fs::copy_file(src, dst, fs::copy_options::none, ec))
    throw SnapshotError("cannot copy segment", src, ec.message());
}

struct SegHeader {
  uint64_t seq = 0;
  std::string path;
  bool sealed = false;
  uint64_t first_ts = 0, last_ts = 0;
  uint64_t created_ns = 0;
};

bool read_header(const std::string& path, uint64_t seq, SegHeader& out) {
  try {
    auto r = shm::SegmentReader::open(path);
    out.seq = seq;
    out.path = path;
    out.sealed = r.sealed();
    out.first_ts = r.header().first_ts_ns;
    out.last_ts = r.header().last_ts_ns;
    out.created_ns = r.header().created_ns;
    return true;
  } catch (const shm::SegmentError&) {
    return false;  // deleted meanwhile, or not a segment: not part of any window
  }
}

// The directories of a snapshot, one per segment stream: packets, identity
// (docs/IDENTITY.md), flows (docs/FLOWS.md).
constexpr const char* kStreamDirs[] = {"segments", "identity", "flows"};

bool overlaps(const SegHeader& h, uint64_t from, uint64_t to) {
  if (h.first_ts == 0) return false;  // no records
  return h.first_ts < to && h.last_ts >= from;
}

// Names of the interfaces in the TW_REC_IFACE records of a segment.
std::set<std::string> segment_interfaces(const std::string& path) {
  std::set<std::string> names;
  auto r = shm::SegmentReader::open(path);
  while (auto rec = r.next()) {
    if (rec->type != TW_REC_IFACE || rec->body.size() < sizeof(tw_seg_iface)) continue;
    tw_seg_iface i;
    std::memcpy(&i, rec->body.data(), sizeof i);
    names.insert(std::string(i.name, strnlen(i.name, sizeof i.name)));
  }
  return names;
}

// Holds DATA_DIR/segments/.writer.lock if no writer does.
struct WriterLock {
  int fd = -1;
  ~WriterLock() {
    if (fd >= 0) ::close(fd);
  }
  // True if the lock is ours (no writer alive).
  bool try_lock(const std::string& seg_dir) {
    const std::string p = seg_dir + "/.writer.lock";
    fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw SnapshotError("cannot open the ring's lock file", p, errno_str() + "; run as the sensor's user");
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return true;
    if (errno == EWOULDBLOCK) return false;
    throw SnapshotError("cannot lock", p, errno_str());
  }
};

bool safe_relative(const std::string& p) {
  if (p.empty() || p[0] == '/' || p.find('\0') != std::string::npos) return false;
  std::stringstream ss(p);
  std::string part;
  while (std::getline(ss, part, '/'))
    if (part.empty() || part == "." || part == "..") return false;
  return true;
}

// "segments/F", "identity/F" or "flows/F": a file directly in one of the
// stream directories.
bool stream_file(const std::string& name) {
  for (const char* d : kStreamDirs) {
    const std::string prefix = std::string(d) + "/";
    if (name.size() > prefix.size() && name.compare(0, prefix.size(), prefix) == 0 &&
        name.find('/', prefix.size()) == std::string::npos)
      return true;
  }
  return false;
}

bool is_stream_dir(const std::string& rel) {
  return std::any_of(std::begin(kStreamDirs), std::end(kStreamDirs), [&](const char* d) { return rel == d; });
}

bool is_hex64(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

}  // namespace

// ------------------------------------------------------------- manifest ---

nlohmann::json Manifest::to_json() const {
  nlohmann::json files_j = nlohmann::json::array();
  for (const auto& f : files) files_j.push_back({{"name", f.name}, {"size", f.size}, {"sha256", f.sha256}});
  return {{"name", name},           {"created", created},     {"from_ns", from_ns},
          {"to_ns", to_ns},         {"interfaces", interfaces}, {"files", files_j},
          {"tapwire_version", tapwire_version}, {"format", format}};
}

Manifest Manifest::from_json(const nlohmann::json& j, const std::string& source) {
  Manifest m;
  try {
    m.format = j.at("format").get<std::string>();
    if (m.format != kFormat)
      throw SnapshotError("unsupported snapshot format", source,
                          "format is '" + m.format + "', this build reads '" + kFormat + "'");
    m.name = j.at("name").get<std::string>();
    m.created = j.at("created").get<std::string>();
    m.from_ns = j.at("from_ns").get<uint64_t>();
    m.to_ns = j.at("to_ns").get<uint64_t>();
    m.interfaces = j.at("interfaces").get<std::vector<std::string>>();
    m.tapwire_version = j.at("tapwire_version").get<std::string>();
    for (const auto& f : j.at("files")) {
      FileEntry e{f.at("name").get<std::string>(), f.at("size").get<uint64_t>(), f.at("sha256").get<std::string>()};
      if (!safe_relative(e.name) || !stream_file(e.name))
        throw SnapshotError("corrupt snapshot manifest", source,
                            "file name '" + e.name + "' is not a file in segments/, identity/ or flows/");
      if (!is_hex64(e.sha256))
        throw SnapshotError("corrupt snapshot manifest", source, "sha256 of " + e.name + " is not 64 hex digits");
      m.files.push_back(std::move(e));
    }
  } catch (const nlohmann::json::exception& e) {
    throw SnapshotError("corrupt snapshot manifest", source, std::string("missing or wrong field (") + e.what() + ")");
  }
  return m;
}

uint64_t Manifest::total_size() const {
  uint64_t t = 0;
  for (const auto& f : files) t += f.size;
  return t;
}

// ---------------------------------------------------------------- basics ---

void check_name(const std::string& name) {
  const char* hint = "a name is 1-200 characters, without '/', not starting with '.' nor ending with '.tmp'";
  if (name.empty()) throw SnapshotError("invalid snapshot name", "''", hint);
  if (name.size() > 200 || name.find('/') != std::string::npos || name.find('\0') != std::string::npos ||
      name[0] == '.' || (name.size() >= 4 && name.compare(name.size() - 4, 4, ".tmp") == 0))
    throw SnapshotError("invalid snapshot name", "'" + name + "'", hint);
}

std::string snapshots_dir(const std::string& data_dir) { return data_dir + "/snapshots"; }
std::string snapshot_dir(const std::string& data_dir, const std::string& name) {
  return snapshots_dir(data_dir) + "/" + name;
}

std::string sha256_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) throw SnapshotError("cannot read", path, errno_str());
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    ::close(fd);
    throw SnapshotError("cannot hash", path, "OpenSSL SHA-256 is unavailable");
  }
  std::vector<unsigned char> buf(1 << 20);
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      throw SnapshotError("cannot read", path, errno_str(e));
    }
    if (n == 0) break;
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(n));
  }
  ::close(fd);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; i++) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

// ---------------------------------------------------------------- create ---

namespace {

// Seals the open segments of `dir` a snapshot needs: the sensor rotates when
// it runs (it holds the directory's lock), or, with no sensor alive, recovery
// seals what a dead writer left open (holding its lock meanwhile: a sensor
// starting then fails to lock instead of writing behind our back).
void seal_open(const std::string& dir, const std::vector<SegHeader>& open_ones,
               const std::function<void()>& request_rotate, const std::string& what) {
  WriterLock lock;
  if (lock.try_lock(dir)) {
    for (const auto& h : open_ones) {
      try {
        shm::recover_segment(h.path);
      } catch (const shm::SegmentError& e) {
        throw SnapshotError("cannot seal the open " + what, h.path, e.what());
      }
    }
    return;
  }
  if (!request_rotate)
    throw SnapshotError("cannot seal the open " + what, open_ones.front().path, "tapwire-sensor is writing it; ask it to rotate");
  request_rotate();
  for (const auto& h : open_ones) {
    bool sealed = false;
    for (int i = 0; i < 100 && !sealed; i++) {
      SegHeader now;
      if (!read_header(h.path, h.seq, now)) break;
      sealed = now.sealed;
      if (!sealed) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (!sealed)
      throw SnapshotError("the open " + what + " was not sealed", h.path, "tapwire-sensor did not rotate it within 5 s; retry");
  }
}

// The segments pick() chooses in a side stream of `dir` (identity, flows),
// sealed: the open ones are sealed (seal_open) and the choice made again,
// without a segment the rotation opened (it starts after the window).
template <class Pick>
std::vector<SegHeader> pick_sealed(const std::string& dir, const Pick& pick, const CreateOptions& o,
                                   const std::string& what) {
  auto chosen = pick();
  std::vector<SegHeader> open_ones;
  for (const auto& h : chosen)
    if (!h.sealed) open_ones.push_back(h);
  if (open_ones.empty()) return chosen;
  seal_open(dir, open_ones, o.request_rotate, what);
  auto again = pick();
  std::erase_if(again, [](const SegHeader& h) { return !h.sealed; });
  return again;
}

// The identity segments a window [from, to] needs, sealed: the newest one
// created at or before `from` (its dump tells the state then; the oldest
// there is when none is that old) and every later one created before `to`.
std::vector<SegHeader> identity_segments(const CreateOptions& o, uint64_t from, uint64_t to) {
  const std::string dir = o.data_dir + "/identity";
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return {};
  auto pick = [&] {
    std::vector<SegHeader> all;
    for (const auto& s : shm::list_segments(dir)) {
      SegHeader h;
      if (read_header(s.path, s.seq, h) && h.created_ns <= to) all.push_back(h);
    }
    size_t start = 0;
    for (size_t i = 0; i < all.size(); i++)
      if (all[i].created_ns <= from) start = i;
    return std::vector<SegHeader>(all.begin() + static_cast<std::ptrdiff_t>(start), all.end());
  };
  return pick_sealed(dir, pick, o, "identity segment");
}

// The flow segments (docs/FLOWS.md) whose records overlap the window
// [from, to], sealed first like the packet segments. A flow's records are
// cumulative: the last one of each flow_id in them holds its state then.
// The sensor writes a flow's records after its packets (a new flow within a
// second, a changed one within tap.flows.interval, 10 s by default): the
// window reaches that much further for them.
constexpr uint64_t kFlowRecordLagNs = 15ull * 1000000000ull;
std::vector<SegHeader> flow_segments(const CreateOptions& o, uint64_t from, uint64_t to) {
  to = to > UINT64_MAX - kFlowRecordLagNs ? UINT64_MAX : to + kFlowRecordLagNs;
  const std::string dir = o.data_dir + "/flows";
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return {};
  auto pick = [&] {
    std::vector<SegHeader> all;
    for (const auto& s : shm::list_segments(dir)) {
      SegHeader h;
      if (read_header(s.path, s.seq, h) && overlaps(h, from, to)) all.push_back(h);
    }
    return all;
  };
  return pick_sealed(dir, pick, o, "flow segment");
}

}  // namespace

Manifest create(const CreateOptions& o) {
  check_name(o.name);
  if (o.from_ns >= o.to_ns)
    throw SnapshotError("empty time window",
                        "--from " + format_rfc3339_ns(o.from_ns) + " is not before --to " +
                            (o.to_ns == UINT64_MAX ? std::string("(end)") : format_rfc3339_ns(o.to_ns)),
                        "give a --from earlier than --to");
  const std::string final_dir = snapshot_dir(o.data_dir, o.name);
  if (exists(final_dir)) throw SnapshotError("snapshot already exists", o.name, "choose another --name or delete it first");
  const std::string seg_dir = o.data_dir + "/segments";
  std::error_code ec;
  if (!fs::is_directory(seg_dir, ec))
    throw SnapshotError("no segments directory", seg_dir,
                        "tapwire-sensor has not stored traffic in this data directory; check --data-dir");

  // 1. The segments of the window.
  std::vector<SegHeader> chosen;
  std::vector<SegHeader> open_ones;
  for (const auto& s : shm::list_segments(seg_dir)) {
    SegHeader h;
    if (!read_header(s.path, s.seq, h) || !overlaps(h, o.from_ns, o.to_ns)) continue;
    chosen.push_back(h);
    if (!h.sealed) open_ones.push_back(h);
  }

  // 2. Seal the open one(s): the sensor rotates, or, with no sensor alive,
  // recovery seals what a dead writer left open (holding its lock).
  if (!open_ones.empty()) {
    seal_open(seg_dir, open_ones, o.request_rotate, "segment");
    // Sealing can change the timestamps (recovery cuts a damaged tail).
    for (auto& h : chosen) read_header(h.path, h.seq, h);
    std::erase_if(chosen, [&](const SegHeader& h) { return !overlaps(h, o.from_ns, o.to_ns); });
  }

  // 3. The interface filter, on what each segment captured.
  std::set<std::string> interfaces;
  std::vector<SegHeader> kept;
  for (const auto& h : chosen) {
    std::set<std::string> names;
    try {
      names = segment_interfaces(h.path);
    } catch (const shm::SegmentError& e) {
      throw SnapshotError("segment vanished while creating the snapshot", h.path,
                          "retention deleted it; retry with a later --from");
    }
    if (!o.interfaces.empty() &&
        std::none_of(o.interfaces.begin(), o.interfaces.end(), [&](const std::string& i) { return names.count(i); }))
      continue;
    interfaces.insert(names.begin(), names.end());
    kept.push_back(h);
  }
  if (kept.empty()) {
    std::string window = (o.from_ns ? format_rfc3339_ns(o.from_ns) : std::string("(start)")) + " to " +
                         (o.to_ns == UINT64_MAX ? std::string("(end)") : format_rfc3339_ns(o.to_ns));
    if (!o.interfaces.empty()) {
      window += " on";
      for (const auto& i : o.interfaces) window += " " + i;
    }
    throw SnapshotError("no captured data in the window", window,
                        "check the times ('tapwire status' shows what the ring holds) and --interface");
  }

  // 4. The identity stream (docs/IDENTITY.md): the identity segment whose
  // state dump covers the window's start, and every one after it until the
  // window's end, sealed first like the packet segments.
  uint64_t win_from = UINT64_MAX, win_to = 0;
  for (const auto& h : kept) {
    win_from = std::min(win_from, h.first_ts);
    win_to = std::max(win_to, h.last_ts);
  }
  if (o.from_ns) win_from = std::max(win_from, o.from_ns);
  if (o.to_ns != UINT64_MAX) win_to = std::min(win_to, o.to_ns);
  std::vector<SegHeader> ident = identity_segments(o, win_from, win_to);
  // 4b. The flow stream (docs/FLOWS.md): the flow segments overlapping the window.
  std::vector<SegHeader> flow_segs = flow_segments(o, win_from, win_to);
  std::vector<std::pair<SegHeader, std::string>> files;
  for (const auto& h : kept) files.emplace_back(h, "segments/");
  for (const auto& h : ident) files.emplace_back(h, "identity/");
  for (const auto& h : flow_segs) files.emplace_back(h, "flows/");

  // 5. The storage limit of all snapshots together.
  uint64_t need = 0;
  for (const auto& [h, sub] : files) {
    struct stat st {};
    if (::stat(h.path.c_str(), &st) == 0) need += static_cast<uint64_t>(st.st_size);
  }
  const uint64_t used = fs::is_directory(snapshots_dir(o.data_dir), ec) ? tree_size(snapshots_dir(o.data_dir)) : 0;
  if (used + need > o.storage_size)
    throw SnapshotError("snapshot storage limit exceeded", o.name,
                        "needs " + format_size(need) + ", " + format_size(used) + " of " + format_size(o.storage_size) +
                            " (tap.snapshots.storageSize) already used; delete snapshots or narrow the window");

  // 6. Link (or copy) into NAME.tmp, hash, write the manifest, rename.
  TmpDir tmp{fresh_tmp(o.data_dir, o.name)};
  Manifest m;
  m.name = o.name;
  m.created = format_rfc3339_ns(realtime_now_ns());
  uint64_t first = UINT64_MAX, last = 0;
  for (const auto& h : kept) {
    first = std::min(first, h.first_ts);
    last = std::max(last, h.last_ts);
  }
  m.from_ns = o.from_ns ? o.from_ns : first;
  m.to_ns = o.to_ns != UINT64_MAX ? o.to_ns : last + 1;
  m.interfaces.assign(interfaces.begin(), interfaces.end());
  m.tapwire_version = TAPWIRE_VERSION;
  if (!ident.empty()) make_dirs(tmp.path + "/identity", 0750);
  if (!flow_segs.empty()) make_dirs(tmp.path + "/flows", 0750);
  for (const auto& [h, sub] : files) {
    const std::string rel = sub + fs::path(h.path).filename().string();
    const std::string dst = tmp.path + "/" + rel;
    if (::link(h.path.c_str(), dst.c_str()) != 0) {
      int e = errno;
      if (e == ENOENT)
        throw SnapshotError("segment vanished while creating the snapshot", h.path,
                            "retention deleted it; retry with a later --from");
      if (e != EXDEV && e != EPERM && e != EMLINK && e != ENOTSUP) throw SnapshotError("cannot link", h.path, errno_str(e));
      copy_file(h.path, dst);
    }
    struct stat st {};
    if (::stat(dst.c_str(), &st) != 0) throw SnapshotError("cannot stat", dst, errno_str());
    m.files.push_back({rel, static_cast<uint64_t>(st.st_size), sha256_file(dst)});
  }
  write_file_atomic(tmp.path + "/manifest.json", m.to_json().dump(2) + "\n");
  make_read_only(tmp.path, m);
  rename_noreplace(tmp.path, final_dir, o.name);
  tmp.keep = true;
  return m;
}

// ------------------------------------------------------------------ list ---

std::vector<SnapshotInfo> list(const std::string& data_dir) {
  std::vector<SnapshotInfo> out;
  const std::string base = snapshots_dir(data_dir);
  std::error_code ec;
  if (!fs::is_directory(base, ec)) return out;
  for (const auto& e : fs::directory_iterator(base, ec)) {
    const std::string name = e.path().filename().string();
    std::error_code ec2;
    if (name.empty() || name[0] == '.' || !e.is_directory(ec2) ||
        (name.size() >= 4 && name.compare(name.size() - 4, 4, ".tmp") == 0))
      continue;
    SnapshotInfo info;
    info.name = name;
    info.dir = e.path().string();
    try {
      const std::string mp = info.dir + "/manifest.json";
      auto j = nlohmann::json::parse(read_small_file(mp, 64u << 20));
      info.manifest = Manifest::from_json(j, mp);
      info.ok = true;
    } catch (const SnapshotError& err) {
      info.error = err.what();
    } catch (const nlohmann::json::exception& err) {
      info.error = std::string("manifest.json is not JSON (") + err.what() + ")";
    }
    out.push_back(std::move(info));
  }
  std::sort(out.begin(), out.end(), [](const SnapshotInfo& a, const SnapshotInfo& b) { return a.name < b.name; });
  return out;
}

// ---------------------------------------------------------------- verify ---

std::vector<Problem> verify_dir(const std::string& dir, Manifest* manifest_out) {
  std::vector<Problem> problems;
  Manifest m;
  const std::string mp = dir + "/manifest.json";
  try {
    auto j = nlohmann::json::parse(read_small_file(mp, 64u << 20));
    m = Manifest::from_json(j, mp);
  } catch (const SnapshotError& e) {
    problems.push_back({"manifest.json", e.what_part + ": " + e.hint_part});
    return problems;
  } catch (const nlohmann::json::exception& e) {
    problems.push_back({"manifest.json", std::string("not valid JSON (") + e.what() + ")"});
    return problems;
  }
  std::set<std::string> listed{"manifest.json"};
  for (const auto& f : m.files) {
    listed.insert(f.name);
    const std::string p = dir + "/" + f.name;
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0) {
      problems.push_back({f.name, "missing"});
      continue;
    }
    if (!S_ISREG(st.st_mode)) {
      problems.push_back({f.name, "not a regular file"});
      continue;
    }
    if (static_cast<uint64_t>(st.st_size) != f.size) {
      problems.push_back({f.name, "size " + std::to_string(st.st_size) + " bytes, manifest says " +
                                      std::to_string(f.size) + " (truncated or modified)"});
      continue;
    }
    try {
      const std::string h = sha256_file(p);
      if (h != f.sha256) problems.push_back({f.name, "sha256 mismatch (modified or corrupt): " + h + ", manifest says " + f.sha256});
    } catch (const SnapshotError& e) {
      problems.push_back({f.name, e.hint_part});
    }
  }
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    std::error_code ec2;
    if (it->is_directory(ec2) && !it->is_symlink(ec2)) {
      const std::string sub = fs::relative(it->path(), dir, ec2).string();
      if (sub == kDissectionsDir) {  // derived results, not part of the snapshot
        it.disable_recursion_pending();
        continue;
      }
      if (!is_stream_dir(sub)) {
        problems.push_back({fs::relative(it->path(), dir, ec2).string(), "unexpected directory"});
        it.disable_recursion_pending();
      }
      continue;
    }
    const std::string rel = fs::relative(it->path(), dir, ec2).string();
    if (!listed.count(rel)) problems.push_back({rel, "extra file, not in the manifest"});
  }
  if (manifest_out) *manifest_out = m;
  return problems;
}

// ---------------------------------------------------------------- remove ---

void remove(const std::string& data_dir, const std::string& name) {
  check_name(name);
  const std::string dir = snapshot_dir(data_dir, name);
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw SnapshotError("no such snapshot", name, "not in " + snapshots_dir(data_dir) + "/ (see 'tapwire snapshot list')");
  remove_tree(dir);
  if (exists(dir)) throw SnapshotError("cannot delete snapshot", dir, "check its permissions");
}

// ------------------------------------------------------------ pack/unpack ---

namespace {

struct ArchiveWriter {
  archive* a = archive_write_new();
  ~ArchiveWriter() {
    if (a) archive_write_free(a);
  }
};
struct ArchiveReader {
  archive* a = archive_read_new();
  ~ArchiveReader() {
    if (a) archive_read_free(a);
  }
};

void add_entry(archive* a, const std::string& arc_name, const std::string& path, bool dir, const std::string& out) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) throw SnapshotError("cannot read", path, errno_str());
  std::unique_ptr<archive_entry, decltype(&archive_entry_free)> e(archive_entry_new(), archive_entry_free);
  archive_entry_set_pathname(e.get(), arc_name.c_str());
  archive_entry_set_filetype(e.get(), dir ? AE_IFDIR : AE_IFREG);
  archive_entry_set_perm(e.get(), dir ? 0750 : 0640);
  archive_entry_set_size(e.get(), dir ? 0 : st.st_size);
  archive_entry_set_mtime(e.get(), st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
  if (archive_write_header(a, e.get()) != ARCHIVE_OK)
    throw SnapshotError("cannot write the pack", out, archive_error_string(a) ? archive_error_string(a) : "libarchive error");
  if (dir) return;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) throw SnapshotError("cannot read", path, errno_str());
  std::vector<char> buf(1 << 20);
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e2 = errno;
      ::close(fd);
      throw SnapshotError("cannot read", path, errno_str(e2));
    }
    if (n == 0) break;
    if (archive_write_data(a, buf.data(), static_cast<size_t>(n)) != n) {
      ::close(fd);
      throw SnapshotError("cannot write the pack", out, archive_error_string(a) ? archive_error_string(a) : "write failed");
    }
  }
  ::close(fd);
}

}  // namespace

void pack(const std::string& data_dir, const std::string& name, const std::string& out) {
  check_name(name);
  const std::string dir = snapshot_dir(data_dir, name);
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw SnapshotError("no such snapshot", name, "not in " + snapshots_dir(data_dir) + "/ (see 'tapwire snapshot list')");
  Manifest m;
  auto problems = verify_dir(dir, &m);
  if (!problems.empty())
    throw SnapshotError("snapshot is corrupt", name + ": " + problems.front().file + ": " + problems.front().what,
                        "run 'tapwire snapshot verify " + name + "'; a corrupt snapshot is not packed");
  const std::string tmp = out + ".tmp";
  ArchiveWriter w;
  archive_write_set_format_pax_restricted(w.a);
  if (archive_write_add_filter_zstd(w.a) != ARCHIVE_OK)
    throw SnapshotError("cannot write the pack", out, "this libarchive has no zstd support");
  if (archive_write_open_filename(w.a, tmp.c_str()) != ARCHIVE_OK)
    throw SnapshotError("cannot create the pack file", tmp,
                        std::string(archive_error_string(w.a) ? archive_error_string(w.a) : "open failed") +
                            "; check that its directory exists and is writable");
  try {
    add_entry(w.a, name + "/", dir, true, out);
    add_entry(w.a, name + "/manifest.json", dir + "/manifest.json", false, out);
    add_entry(w.a, name + "/segments/", dir + "/segments", true, out);
    for (const char* sub : {"identity", "flows"}) {
      const std::string prefix = std::string(sub) + "/";
      if (std::any_of(m.files.begin(), m.files.end(), [&](const FileEntry& f) { return f.name.rfind(prefix, 0) == 0; }))
        add_entry(w.a, name + "/" + prefix, dir + "/" + sub, true, out);
    }
    for (const auto& f : m.files) add_entry(w.a, name + "/" + f.name, dir + "/" + f.name, false, out);
    if (archive_write_close(w.a) != ARCHIVE_OK)
      throw SnapshotError("cannot write the pack", out, archive_error_string(w.a) ? archive_error_string(w.a) : "close failed");
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  if (::rename(tmp.c_str(), out.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw SnapshotError("cannot rename the pack into place", out, errno_str(e));
  }
}

std::string unpack(const std::string& file, const std::string& data_dir, const std::string& new_name,
                   uint64_t storage_size) {
  const std::string not_pack_hint = "give a file written by 'tapwire snapshot pack'";
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) throw SnapshotError("cannot open the pack file", file, errno_str());
  if (!S_ISREG(st.st_mode)) throw SnapshotError("not a snapshot pack", file, "not a regular file");
  if (!new_name.empty()) check_name(new_name);

  ArchiveReader r;
  archive_read_support_filter_zstd(r.a);
  archive_read_support_filter_none(r.a);
  archive_read_support_format_tar(r.a);
  if (archive_read_open_filename(r.a, file.c_str(), 1 << 16) != ARCHIVE_OK)
    throw SnapshotError("not a snapshot pack", file, not_pack_hint);

  std::string src_name;  // NAME inside the pack
  std::string target;
  std::unique_ptr<TmpDir> tmp;
  uint64_t total = 0;
  const uint64_t used = tree_size(snapshots_dir(data_dir));
  bool saw_manifest = false;
  for (;;) {
    archive_entry* e = nullptr;
    int rc = archive_read_next_header(r.a, &e);
    if (rc == ARCHIVE_EOF) break;
    if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN)
      throw SnapshotError("not a snapshot pack", file,
                          std::string(archive_error_string(r.a) ? archive_error_string(r.a) : "unreadable") +
                              " (truncated or not a .tar.zst); " + not_pack_hint);
    const char* pn = archive_entry_pathname(e);
    std::string path = pn ? pn : "";
    while (path.size() > 1 && path.back() == '/') path.pop_back();
    const auto type = archive_entry_filetype(e);
    if (!safe_relative(path))
      throw SnapshotError("unsafe path in snapshot pack", file + ": '" + path + "'",
                          "absolute paths, '..' and empty components are refused; " + not_pack_hint);
    const auto slash = path.find('/');
    const std::string top = path.substr(0, slash);
    const std::string rel = slash == std::string::npos ? "" : path.substr(slash + 1);
    if (src_name.empty()) {
      try {
        check_name(top);
      } catch (const SnapshotError&) {
        throw SnapshotError("not a snapshot pack", file, "its top directory '" + top + "' is not a snapshot name");
      }
      src_name = top;
      target = new_name.empty() ? src_name : new_name;
      if (exists(snapshot_dir(data_dir, target)))
        throw SnapshotError("snapshot already exists", target, "unpack with --name NEW or delete it first");
      tmp = std::make_unique<TmpDir>();
      tmp->path = fresh_tmp(data_dir, target);
    } else if (top != src_name) {
      throw SnapshotError("not a snapshot pack", file, "entries under both '" + src_name + "/' and '" + top + "/'");
    }
    if (type == AE_IFDIR) {
      if (rel.empty() || is_stream_dir(rel)) continue;
      throw SnapshotError("unexpected directory in snapshot pack", file + ": '" + path + "'", not_pack_hint);
    }
    if (type != AE_IFREG || archive_entry_hardlink(e) || archive_entry_symlink(e))
      throw SnapshotError("unexpected entry in snapshot pack", file + ": '" + path + "'",
                          "only regular files are allowed; " + not_pack_hint);
    if (rel != "manifest.json" && !stream_file(rel))
      throw SnapshotError("unexpected file in snapshot pack", file + ": '" + path + "'",
                          "a pack holds NAME/manifest.json, NAME/segments/*, NAME/identity/* and NAME/flows/*; " +
                              not_pack_hint);
    if (rel == "manifest.json") saw_manifest = true;
    const int64_t size = archive_entry_size(e);
    total += size > 0 ? static_cast<uint64_t>(size) : 0;
    if (used + total > storage_size)
      throw SnapshotError("snapshot storage limit exceeded", file,
                          "unpacking needs more than " + format_size(total) + ", " + format_size(used) + " of " +
                              format_size(storage_size) + " (tap.snapshots.storageSize) already used");
    const std::string dst = tmp->path + "/" + rel;
    for (const char* sub : {"identity", "flows"}) {
      const std::string prefix = std::string(sub) + "/";
      if (rel.rfind(prefix, 0) == 0 && ::mkdir((tmp->path + "/" + sub).c_str(), 0750) != 0 && errno != EEXIST)
        throw SnapshotError("cannot create directory", tmp->path + "/" + sub, errno_str());
    }
    int fd = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
    if (fd < 0) {
      const int e2 = errno;
      if (e2 == EEXIST) throw SnapshotError("duplicate file in snapshot pack", file + ": '" + path + "'", not_pack_hint);
      throw SnapshotError("cannot write", dst, errno_str(e2));
    }
    const void* buf;
    size_t len;
    la_int64_t off;
    uint64_t written = 0;
    for (;;) {
      int drc = archive_read_data_block(r.a, &buf, &len, &off);
      if (drc == ARCHIVE_EOF) break;
      if (drc != ARCHIVE_OK && drc != ARCHIVE_WARN) {
        ::close(fd);
        throw SnapshotError("not a snapshot pack", file,
                            std::string(archive_error_string(r.a) ? archive_error_string(r.a) : "unreadable data") +
                                " (truncated?); " + not_pack_hint);
      }
      if (off < 0 || static_cast<uint64_t>(off) != written) {  // sparse holes: not written by pack
        ::close(fd);
        throw SnapshotError("unexpected entry in snapshot pack", file + ": '" + path + "'", "sparse files are not allowed");
      }
      const char* p = static_cast<const char*>(buf);
      size_t left = len;
      while (left) {
        ssize_t n = ::write(fd, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
          int e2 = errno;
          ::close(fd);
          throw SnapshotError("cannot write", dst, errno_str(e2));
        }
        p += n;
        left -= static_cast<size_t>(n);
      }
      written += len;
    }
    if (::fsync(fd) != 0 || ::close(fd) != 0) throw SnapshotError("cannot write", dst, errno_str());
  }
  if (!tmp || !saw_manifest) throw SnapshotError("not a snapshot pack", file, "it holds no NAME/manifest.json; " + not_pack_hint);

  Manifest m;
  auto problems = verify_dir(tmp->path, &m);
  if (!problems.empty())
    throw SnapshotError("corrupt snapshot pack", file + ": " + problems.front().file + ": " + problems.front().what,
                        "the pack was damaged (or modified) after 'tapwire snapshot pack'; copy it again");
  if (target != m.name) {
    m.name = target;
    const std::string mp = tmp->path + "/manifest.json";
    ::unlink(mp.c_str());
    write_file_atomic(mp, m.to_json().dump(2) + "\n");
  }
  make_read_only(tmp->path, m);
  rename_noreplace(tmp->path, snapshot_dir(data_dir, target), target);
  tmp->keep = true;
  return target;
}

}  // namespace tapwire::snapshot
