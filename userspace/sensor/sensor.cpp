#include "sensor.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <liburing.h>
#include <systemd/sd-daemon.h>
#include <poll.h>
#include <signal.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <sys/fsuid.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <algorithm>
#include <optional>
#include <set>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "control_socket.hpp"
#include "dissector_supervisor.hpp"
#include "identity_collector.hpp"
#include "identity_recorder.hpp"
#include "interfaces.hpp"
#include "kube_watcher.hpp"
#include "socket_owner.hpp"
#include "metrics_exporter.hpp"
#include "ring_drain.hpp"
#include "segment.hpp"
#include "status_file.hpp"
#include "tapwire_abi.hpp"
#include "tc_attach.hpp"
#include "units.hpp"

namespace tapwire::sensor {
namespace {

uint64_t clock_ns(clockid_t c) {
  timespec ts{};
  clock_gettime(c, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// Drops counted in userspace, after the kernel handed a record over.
// Bounds one drain pass so that signals and timers are still served under
// a flood; the rest waits for the next pass (a few microseconds later).
constexpr uint64_t kMaxRecordsPerDrain = 1u << 16;
// How long a record waits in its ring so that records of other CPUs stamped
// before it get there first (the time between stamping and committing a
// record is microseconds; softirq processing can stretch it).
constexpr uint64_t kHoldbackNs = 2'000'000;

enum UserDrop { kRecordInvalid = 0, kStorageWriteFailed = 1, kUserDropMax };
constexpr std::array<const char*, kUserDropMax> kUserDropNames = {"record_invalid", "storage_write_failed"};

// io_uring user_data: what completed.
enum Event : uint64_t {
  kEvRing = 1,
  kEvSignal = 2,
  kEvNetlink = 3,
  kEvTimer = 4,
  kEvControl = 5,
  kEvClient = 6,
  kEvIdentity = 7,
  kEvKube = 8,
};
uint64_t tag(Event e, uint32_t index = 0) { return (static_cast<uint64_t>(e) << 32) | index; }

void mkdir_p(const std::string& dir) {
  std::string path;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = dir.find('/', pos + 1);
    path = dir.substr(0, pos);
    if (path.empty()) continue;
    // Parents as `mkdir -p` makes them: the dissector's user must pass through.
    if (mkdir(path.c_str(), pos == std::string::npos ? 0750 : 0755) != 0 && errno != EEXIST)
      throw std::runtime_error("cannot create data dir " + dir + ": " + std::strerror(errno) +
                               ": choose a writable --data-dir");
  }
  struct stat st{};
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw std::runtime_error("data dir " + dir + " is not a directory: choose another --data-dir");
  if (access(dir.c_str(), W_OK | X_OK) != 0)
    throw std::runtime_error("data dir " + dir + " is not writable: " + std::strerror(errno) +
                             ": choose a writable --data-dir");
}

bool have_cap(int cap) {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct caps[2] = {};
  return syscall(SYS_capget, &hdr, caps) == 0 && (caps[cap / 32].effective & (1u << (cap % 32)));
}

// The files the dissector writes in DATA_DIR (its own user's).
constexpr const char* kDissectorFiles[] = {"dissection.db", "dissection.db-wal", "dissection.db-shm",
                                           "dissection.db-journal", "dissector.json", "dissector.json.tmp",
                                           "dissector.checkpoint", "dissector.checkpoint.tmp"};

// DATA_DIR is shared with the dissector, which runs as another user in
// group G: root:G, mode 3770 like the systemd unit's StateDirectoryMode.
// The group may create its files (the DB, dissector.json, the checkpoint);
// sticky, it may not remove or replace the sensor's; setgid, everything
// made in it (segments/, identity/) belongs to G, readable by G only (0750
// directories, 0640 files). What an earlier run left in another group is
// moved to G; the dissector's files left by a dissector that ran as root
// are given to its user. A directory the sensor does not own is the
// operator's: left alone, with one line if G cannot write it.
void share_data_dir(const std::string& dir, const DissectorAccount& a) {
  int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  struct stat st {};
  if (dfd < 0 || fstat(dfd, &st) != 0) {
    if (dfd >= 0) close(dfd);
    throw std::runtime_error("cannot open data dir " + dir + ": " + std::strerror(errno));
  }
  if (st.st_uid != geteuid()) {
    if (st.st_gid != a.gid || (st.st_mode & 070) != 070)
      std::fprintf(stderr, "tapwire-sensor: data dir %s is not group %s's to write (owner uid %u, mode %04o): "
                   "the dissector (%s) cannot write its DB there\n", dir.c_str(), a.group.c_str(),
                   static_cast<unsigned>(st.st_uid), static_cast<unsigned>(st.st_mode & 07777), a.user.c_str());
    close(dfd);
    return;
  }
  // Giving a file one's own group needs membership (or CAP_CHOWN, which the
  // sensor's units do not grant): the file system gid makes this thread a
  // member of G for the moment (CAP_SETGID, which the sensor has to start
  // its children as other users). Nothing else runs yet.
  const int saved_fsgid = setfsgid(a.gid);
  std::vector<std::string> failed;
  auto group_of = [&](int at, const char* name, mode_t keep_bits) {
    struct stat s {};
    if (fstatat(at, name, &s, AT_SYMLINK_NOFOLLOW) != 0 || s.st_uid != geteuid()) return;
    if (!S_ISREG(s.st_mode) && !S_ISDIR(s.st_mode)) return;
    if (s.st_gid != a.gid && fchownat(at, name, static_cast<uid_t>(-1), a.gid, AT_SYMLINK_NOFOLLOW) != 0)
      failed.push_back(name);
    if (S_ISDIR(s.st_mode) && (s.st_mode & 07777) != ((s.st_mode & 0777) | keep_bits))
      fchmodat(at, name, (s.st_mode & 0777) | keep_bits, 0);
  };
  if (st.st_gid != a.gid && fchown(dfd, static_cast<uid_t>(-1), a.gid) != 0) failed.push_back(dir);
  if ((st.st_mode & 07777) != 03770 && fchmod(dfd, 03770) != 0) failed.push_back(dir);
  for (const char* sub : {"segments", "identity"}) {
    group_of(dfd, sub, S_ISGID);
    int sfd = openat(dfd, sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR* d = sfd >= 0 ? fdopendir(sfd) : nullptr;
    if (!d) {
      if (sfd >= 0) close(sfd);
      continue;
    }
    while (dirent* e = readdir(d))
      if (e->d_name[0] != '.') group_of(sfd, e->d_name, 0);
    closedir(d);
  }
  setfsgid(static_cast<gid_t>(saved_fsgid));
  std::vector<std::string> foreign;
  for (const char* name : kDissectorFiles) {
    struct stat s {};
    if (fstatat(dfd, name, &s, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(s.st_mode) || s.st_uid == a.uid) continue;
    if (!have_cap(CAP_CHOWN) || fchownat(dfd, name, a.uid, a.gid, AT_SYMLINK_NOFOLLOW) != 0) foreign.push_back(name);
  }
  close(dfd);
  if (!failed.empty())
    std::fprintf(stderr, "tapwire-sensor: cannot give %s to group %s (%zu file(s)): the dissector may not read them\n",
                 failed.front().c_str(), a.group.c_str(), failed.size());
  if (!foreign.empty())
    std::fprintf(stderr, "tapwire-sensor: %s/%s belongs to another user than the dissector's (%s): chown %s:%s it "
                 "or remove it\n", dir.c_str(), foreign.front().c_str(), a.user.c_str(), a.user.c_str(), a.group.c_str());
}

// The directory holding this binary: its companions (tapwire-dissector,
// tapwire-kube-watch) are found next to it.
std::string self_dir() {
  char self[4096] = {};
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  std::string path = n > 0 ? std::string(self, static_cast<size_t>(n)) : std::string("./x");
  return path.substr(0, path.rfind('/'));
}

// This node's name: the option, else $NODE_NAME (the DaemonSet's downward
// API), else the hostname.
std::string resolve_node_name(const std::string& configured) {
  if (!configured.empty()) return configured;
  if (const char* env = getenv("NODE_NAME"); env && *env) return env;
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return host;
}

// The addresses of this network namespace's interfaces (the node's own).
std::vector<identity::IpKey> local_addresses() {
  std::vector<identity::IpKey> out;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return out;
  for (ifaddrs* a = list; a && out.size() < identity::kMaxAddresses; a = a->ifa_next) {
    if (!a->ifa_addr || (a->ifa_flags & IFF_LOOPBACK)) continue;
    if (a->ifa_addr->sa_family == AF_INET)
      out.push_back(identity::IpKey::from_wire(4, reinterpret_cast<const uint8_t*>(
                                                      &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr)));
    else if (a->ifa_addr->sa_family == AF_INET6)
      out.push_back(identity::IpKey::from_wire(6, reinterpret_cast<const uint8_t*>(
                                                      &reinterpret_cast<sockaddr_in6*>(a->ifa_addr)->sin6_addr)));
  }
  freeifaddrs(list);
  return out;
}

struct IfaceCounters {
  uint64_t packets[2] = {0, 0};  // by direction
  uint64_t bytes[2] = {0, 0};
};

}  // namespace

struct Sensor::Impl {
  SensorOptions opts;
  std::optional<InterfaceSelector> selector;
  std::unique_ptr<shm::SegmentStore> store;
  std::unique_ptr<BpfCapture> bpf;
  std::unique_ptr<TcAttacher> tc;
  std::unique_ptr<LinkMonitor> links;
  std::unique_ptr<MetricsExporter> exporter;
  std::unique_ptr<DissectorSupervisor> supervisor;
  std::unique_ptr<ControlServer> control;
  std::unique_ptr<IdentityCollector> ident;
  std::unique_ptr<IdentityRecorder> recorder;
  std::unique_ptr<KubeWatcher> kube;
  std::unique_ptr<SocketOwnerResolver> owners;  // sockets older than the hooks
  std::string ident_error;  // why process identity is off, if it failed to start
  std::string node_name;
  PodTargets targets;
  bool targets_dirty = false;
  int kube_fd_armed = -1;  // the watcher's stdout the ring polls
  std::map<std::string, nlohmann::json> kube_sync;  // resource -> last Sync
  nlohmann::json kube_stats = nullptr;  // last Stats of the watcher
  uint64_t kube_sync_failures = 0;
  std::vector<BpfRingReader> rings;
  std::map<uint32_t, Interface> attached;  // ifindex -> interface
  std::map<uint32_t, IfaceCounters> per_iface;  // node-based: pointers stay valid
  IfaceCounters* last_counters = nullptr;
  uint32_t last_ifindex = 0;
  io_uring uring{};
  bool uring_ready = false;
  int sigfd = -1;
  __kernel_timespec timer_ts{};
  uint64_t started_ns = 0;
  uint64_t mono_to_real = 0;
  std::array<uint64_t, kUserDropMax> user_drops{};
  std::array<uint64_t, TW_DROP__MAX> drops_logged{};  // kernel drops already in loss records
  bool stop = false;
  int exit_code = 0;
  // --print
  uint64_t print_window_start = 0, printed_in_window = 0, suppressed = 0;
  uint64_t last_tick_mono = 0, last_rescan_mono = 0;
  uint64_t last_print_packets = 0, last_print_bytes = 0;

  ~Impl() {
    if (uring_ready) io_uring_queue_exit(&uring);
    if (sigfd >= 0) close(sigfd);
  }

  void setup() {
    selector.emplace(opts.interfaces);
    mkdir_p(opts.data_dir);
    // A root sensor runs the dissector as an unprivileged user (a sensor
    // that is not root cannot switch, and needs not share).
    std::optional<DissectorAccount> account;
    if (geteuid() == 0) {
      account = resolve_dissector_account(opts.dissector_user, opts.dissector_group);
      share_data_dir(opts.data_dir, *account);
    } else if (!opts.dissector_user.empty() || !opts.dissector_group.empty()) {
      std::fprintf(stderr, "tapwire-sensor: --dissector-user/--dissector-group need a root sensor; the dissector "
                   "runs as this sensor's user\n");
    }
    shm::StoreOptions so;
    so.dir = opts.data_dir + "/segments";
    so.storage_size = opts.storage_size;
    so.segment_size = opts.segment_size;
    so.max_segment_age_ns = opts.segment_max_age_s * 1000000000ull;
    try {
      store = std::make_unique<shm::SegmentStore>(so);
    } catch (const shm::SegmentError& e) {
      std::string what = e.what();
      if (what.find(TW_SEG_FILE_SUFFIX ":") != std::string::npos)  // about one file in the ring
        what += ": move that file out of " + so.dir + " (or choose another --data-dir) and start again";
      throw std::runtime_error(what);
    }
    store->on_open([this](shm::SegmentWriter& w) { write_iface_records(w); });

    bpf = std::make_unique<BpfCapture>(opts.ring_bytes, opts.ring_bytes / 8);
    bpf->set_filters(opts.filters);
    const std::string state = opts.data_dir + "/tc-state.json";
    if (int n = TcAttacher::cleanup_leftovers(state); n > 0)
      std::fprintf(stderr, "tapwire-sensor: removed %d filter(s) left by a previous run\n", n);
    auto mode = parse_attach_mode(opts.attach);
    if (!mode) throw std::runtime_error("--attach must be tc, tcx or auto, not '" + opts.attach + "'");
    tc = std::make_unique<TcAttacher>(bpf->ingress_prog_fd(), bpf->egress_prog_fd(), state, *mode);
    for (int fd : bpf->ring_fds()) rings.emplace_back(fd, bpf->ring_bytes());
    links = std::make_unique<LinkMonitor>();
    setup_identity();

    if (!opts.metrics_address.empty()) {
      try {
        exporter = std::make_unique<MetricsExporter>(opts.metrics_address);
      } catch (const std::exception& e) {
        if (opts.metrics_address_explicit) throw;
        std::fprintf(stderr, "tapwire-sensor: %s; capturing without metrics\n", e.what());
      }
    }

    SupervisorOptions sup;
    sup.data_dir = opts.data_dir;
    sup.stop_after_ns = opts.dissection_stop_after_ns;
    sup.dissector_path = opts.dissector_path;
    sup.extra_args = opts.dissector_args;
    sup.account = account;
    if (sup.dissector_path.empty()) sup.dissector_path = self_dir() + "/tapwire-dissector";
    supervisor = std::make_unique<DissectorSupervisor>(sup);
    control = std::make_unique<ControlServer>(
        opts.control_socket.empty() ? opts.data_dir + "/control.sock" : opts.control_socket,
        [this](const nlohmann::json& req) { return control_request(req); });

    sigfd = signalfd(-1, &blocked_set(), SFD_CLOEXEC | SFD_NONBLOCK);
    if (sigfd < 0) throw std::runtime_error(std::string("cannot create a signalfd: ") + std::strerror(errno));
    if (int rc = io_uring_queue_init(64, &uring, 0); rc < 0)
      throw std::runtime_error(std::string("cannot set up io_uring: ") + std::strerror(-rc));
    uring_ready = true;

    mono_to_real = clock_ns(CLOCK_REALTIME) - clock_ns(CLOCK_MONOTONIC);
    started_ns = clock_ns(CLOCK_REALTIME);
    rescan_interfaces();
    if (!opts.raw_capture)
      std::fprintf(stderr, "tapwire-sensor: raw capture disabled (tap.capture.raw.enabled: false): capturing nothing\n");
    else if (attached.empty())
      std::fprintf(stderr, "tapwire-sensor: no interface matches yet; waiting for one to appear\n");
  }

  // ------------------------------------------------------------- identity --

  void setup_identity() {
    node_name = resolve_node_name(opts.node_name);
    targets.set_rules(opts.targets);  // throws on a bad regex
    const bool kube_on = opts.kubernetes == "true" ||
                         (opts.kubernetes == "auto" && (!opts.kubeconfig.empty() || getenv("KUBERNETES_SERVICE_HOST")));
    if (opts.targets.active() && !kube_on)
      throw std::runtime_error(
          "pod targeting (tap.regex, tap.namespaces, tap.excludedNamespaces) needs Kubernetes identity: give "
          "--kubeconfig or run the sensor in a cluster (tap.kubernetes.enabled)");
    if (!opts.identity) return;
    try {
      ident = std::make_unique<IdentityCollector>();
    } catch (const std::exception& e) {
      // Capture goes on without process identity; status and metrics say why.
      ident_error = e.what();
      std::fprintf(stderr, "tapwire-sensor: process identity off: %s\n", e.what());
    }
    IdentityRecorderOptions ro;
    ro.dir = opts.data_dir + "/identity";
    ro.storage_size = opts.identity_storage_size;
    ro.segment_size = std::min<uint64_t>(32ull << 20, opts.identity_storage_size / 4);
    try {
      recorder = std::make_unique<IdentityRecorder>(ro, [this](uint64_t id) -> std::optional<std::string> {
        return ident ? ident->cgroup_path(id) : std::nullopt;
      });
    } catch (const shm::SegmentError& e) {
      throw std::runtime_error(std::string(e.what()) + ": choose another --data-dir");
    }
    const uint64_t now = clock_ns(CLOCK_REALTIME);
    recorder->set_self({node_name, local_addresses()}, now);
    if (ident) {
      owners = std::make_unique<SocketOwnerResolver>(ident->cgroup2_mount());
      for (auto& p : ident->scan_processes()) {
        identity::ProcessRecord r;
        r.ts_ns = now;
        r.cgroup_id = p.cgroup_id;
        r.tgid = p.tgid;
        r.ppid = p.ppid;
        r.type = TW_PROC_SCAN;
        r.comm = p.comm;
        r.exe = p.exe;
        recorder->process(r);
      }
    }
    if (kube_on) {
      KubeWatcherOptions ko;
      ko.watcher_path = opts.kube_watch_path.empty() ? self_dir() + "/tapwire-kube-watch" : opts.kube_watch_path;
      if (!opts.kubeconfig.empty()) ko.args = {"--kubeconfig", opts.kubeconfig};
      ko.args.insert(ko.args.end(), {"--node", node_name});
      ko.args.insert(ko.args.end(), opts.kube_watch_args.begin(), opts.kube_watch_args.end());
      kube = std::make_unique<KubeWatcher>(ko);
    }
    bpf->set_targeting(opts.targets.active());
    recorder->publish();
  }

  void drain_identity() {
    if (!ident || !recorder) return;
    const uint64_t now = clock_ns(CLOCK_MONOTONIC);
    size_t n = ident->drain(
        [this, now](const tw_sock_event& ev) {
          if (ev.type == TW_IDENT_SOCK_OPEN && ev.tgid == 0 && owners) {
            // Created before the hooks: its owner from /proc, as `ss -p` finds it.
            tw_sock_event known = ev;
            if (auto path = ident->cgroup_path(ev.cgroup_id)) owners->resolve(known, *path, now);
            recorder->socket(known);
            return;
          }
          recorder->socket(ev);
        },
                            [this](const tw_exec_event& ev) {
                              identity::ProcessRecord r;
                              r.ts_ns = ev.ts_ns;
                              r.cgroup_id = ev.cgroup_id;
                              r.tgid = ev.tgid;
                              r.ppid = ev.ppid;
                              r.type = ev.type;
                              r.comm = identity::comm_string(ev.comm);
                              r.exe.assign(ev.filename, std::min<size_t>(ev.filename_len, sizeof ev.filename));
                              recorder->process(r);
                            },
                            1u << 16);
    if (n) recorder->publish();
  }

  void on_workload(identity::Workload&& w) {
    const uint64_t now = clock_ns(CLOCK_REALTIME);
    if (auto* pod = std::get_if<identity::PodObject>(&w.object)) {
      if (w.op == identity::WorkloadOp::Delete)
        targets.remove(pod->uid);
      else
        targets.upsert(*pod);
      targets_dirty = true;
    } else if (auto* sync = std::get_if<identity::SyncObject>(&w.object)) {
      // One line when identity from the API becomes unknown or known again,
      // not one per resource and retry (the watcher logs the details).
      const std::string before = kube_state();
      auto& last = kube_sync[sync->resource];
      if (sync->state == "lost" && (last.is_null() || last.value("state", "") != "lost")) kube_sync_failures++;
      last = {{"state", sync->state}, {"error", sync->error}, {"since_ns", now}};
      const std::string after = kube_state();
      if (after != before && after == "unknown" && sync->state == "lost")
        std::fprintf(stderr,
                     "tapwire-sensor: Kubernetes identity unknown (capture goes on): %s: %s; retrying with backoff\n",
                     sync->resource.c_str(), sync->error.c_str());
      else if (after != before && after == "synced")
        std::fprintf(stderr, "tapwire-sensor: Kubernetes identity synced (%zu pods)\n", targets.pods());
    } else if (auto* stats = std::get_if<identity::StatsObject>(&w.object)) {
      kube_stats = {{"requests", stats->requests}, {"events", stats->events}, {"relists", stats->relists}};
      return;  // counters, not identity: not recorded
    }
    if (recorder) recorder->workload(w, now);
  }

  // Brings the kernel's target set to what the rules select now, address by
  // address (each update is atomic for the programs): additions first, so a
  // pod that moves between addresses is never uncaptured in between.
  void apply_targets() {
    targets_dirty = false;
    auto changes = targets.take_changes();
    std::stable_partition(changes.begin(), changes.end(), [](const auto& c) { return c.second; });
    for (auto& [a, on] : changes) {
      auto* raw = reinterpret_cast<const uint8_t*>(a.second.data());
      if (on)
        bpf->add_target(a.first, raw);
      else
        bpf->remove_target(a.first, raw);
    }
    bpf->set_targeting(opts.targets.active());
  }

  void arm_kube() {
    if (!kube || kube->fd() < 0 || kube->fd() == kube_fd_armed) return;
    kube_fd_armed = kube->fd();
    arm_poll(kube_fd_armed, tag(kEvKube, static_cast<uint32_t>(kube_fd_armed)), false);
  }

  nlohmann::json identity_status() const {
    using nlohmann::json;
    json j = {{"enabled", opts.identity}, {"node", node_name}};
    if (!ident_error.empty()) j["error"] = ident_error;
    if (ident) {
      auto c = ident->counters();
      json emitted = json::object(), drops = json::object();
      for (unsigned t = 0; t < c.emitted.size(); t++)
        if (!ident_event_name(t).empty()) emitted[std::string(ident_event_name(t))] = c.emitted[t];
      for (size_t r = 0; r < c.drops.size(); r++) drops[std::string(kIdentDropNames[r])] = c.drops[r];
      drops["invalid_record"] = c.invalid_records;
      j["events"] = emitted;
      j["drops"] = drops;
      j["cgroup2"] = ident->cgroup2_mount();
      if (owners) j["owners"] = {{"lookups", owners->lookups()}, {"found", owners->found()}};
    }
    if (recorder) {
      auto& r = recorder->stats();
      auto st = recorder->store().stats();
      j["stream"] = {{"dir", recorder->store().options().dir},
                     {"records", r.records},
                     {"dumps", r.dumps},
                     {"dumps_incomplete", r.dumps_incomplete},
                     {"write_failures", r.write_failures},
                     {"evicted", r.evicted},
                     {"segments", st.segments},
                     {"bytes_stored", st.bytes_stored},
                     {"storage_size", recorder->store().options().storage_size}};
      j["live"] = {{"sockets", r.live_sockets}, {"processes", r.live_processes}, {"cgroups", r.cgroups},
                   {"objects", r.objects}};
    }
    json k = {{"enabled", kube != nullptr}};
    if (kube) {
      k["watcher"] = kube->status();
      json res = json::object();
      for (auto& [name, sync] : kube_sync) res[name] = sync;
      k["resources"] = res;
      k["state"] = kube_state();
      k["sync_failures"] = kube_sync_failures;
      k["stats"] = kube_stats;
    }
    j["kubernetes"] = k;
    j["targets"] = targets.status();
    return j;
  }

  // "synced" once every resource's list completed and none is lost now;
  // "unknown" otherwise (identity from the API cannot be trusted then).
  std::string kube_state() const {
    if (!kube) return "off";
    for (const char* needed : {"pods", "services", "endpointslices", "nodes"})
      if (!kube_sync.count(needed)) return "unknown";
    for (auto& [name, s] : kube_sync)
      if (s.value("state", "") != "synced") return "unknown";
    return "synced";
  }

  static const sigset_t& blocked_set() {
    static sigset_t set = [] {
      sigset_t s;
      sigemptyset(&s);
      for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2, SIGCHLD}) sigaddset(&s, sig);
      return s;
    }();
    return set;
  }

  // ------------------------------------------------------------ interfaces --

  void attach(const Interface& i) {
    if (attached.count(i.ifindex)) return;
    bpf->set_interface(i.ifindex, i.has_l2);
    tc->attach(i.ifindex, i.name);
    attached[i.ifindex] = i;
    if (store) {
      auto rec = iface_record(i);
      store->append(TW_REC_IFACE, {reinterpret_cast<const uint8_t*>(&rec), sizeof rec}, {}, rec.ts_ns);
    }
    std::fprintf(stderr, "tapwire-sensor: capturing on %s (ifindex %u, %s)\n", i.name.c_str(), i.ifindex,
                 tc->mode() == AttachMode::kTcx ? "tcx link" : "TC filter");
  }

  void detach(uint32_t ifindex, const char* why) {
    auto it = attached.find(ifindex);
    if (it == attached.end()) return;
    tc->detach(ifindex);
    bpf->forget_interface(ifindex);
    std::fprintf(stderr, "tapwire-sensor: stopped capturing on %s (%s)\n", it->second.name.c_str(), why);
    attached.erase(it);
  }

  void rescan_interfaces() {
    auto now = list_interfaces();
    std::map<uint32_t, Interface> present;
    for (auto& i : now) present[i.ifindex] = i;
    std::vector<uint32_t> gone;
    for (auto& [idx, i] : attached)
      if (!present.count(idx) || present[idx].name != i.name) gone.push_back(idx);
    for (auto idx : gone) detach(idx, "interface gone or renamed");
    if (!opts.raw_capture) return;  // tap.capture.raw.enabled: false
    for (auto& i : now) {
      if (!selector->matches(i) || attached.count(i.ifindex)) continue;
      try {
        attach(i);
      } catch (const std::exception& e) {
        // An interface that came and went between listing and attaching is
        // not worth stopping for; anything else at start-up is.
        if (started_ns && last_tick_mono) {
          std::fprintf(stderr, "tapwire-sensor: %s\n", e.what());
          continue;
        }
        throw;
      }
    }
  }

  static tw_seg_iface iface_record(const Interface& i) {
    tw_seg_iface rec{};
    rec.ifindex = i.ifindex;
    std::strncpy(rec.name, i.name.c_str(), sizeof rec.name - 1);
    rec.ts_ns = clock_ns(CLOCK_REALTIME);
    return rec;
  }

  void write_iface_records(shm::SegmentWriter& w) {
    for (auto& [idx, i] : attached) {
      auto rec = iface_record(i);
      w.append(TW_REC_IFACE, {reinterpret_cast<const uint8_t*>(&rec), sizeof rec}, {}, rec.ts_ns);
    }
  }

  // ------------------------------------------------------------- draining --

  void on_record(std::span<const uint8_t> rec) {
    if (rec.size() < sizeof(tw_pkt)) {
      user_drops[kRecordInvalid]++;
      return;
    }
    tw_pkt hdr;
    std::memcpy(&hdr, rec.data(), sizeof hdr);
    if (hdr.cap_len != rec.size() - sizeof(tw_pkt) || hdr.direction > TW_DIR_EGRESS) {
      user_drops[kRecordInvalid]++;
      return;
    }
    hdr.ts_ns += mono_to_real;
    auto payload = rec.subspan(sizeof(tw_pkt));
    if (!store->append(TW_REC_PACKET, {reinterpret_cast<const uint8_t*>(&hdr), sizeof hdr}, payload, hdr.ts_ns)) {
      user_drops[kStorageWriteFailed]++;
      return;
    }
    if (hdr.ifindex != last_ifindex || !last_counters) {  // one map lookup per run of same-interface records
      last_counters = &per_iface[hdr.ifindex];
      last_ifindex = hdr.ifindex;
    }
    auto& c = *last_counters;
    if (!(hdr.flags & TW_PKT_F_CONTINUATION)) c.packets[hdr.direction]++;
    c.bytes[hdr.direction] += hdr.cap_len;
    if (opts.print) print_packet(hdr);
  }

  // Merges the per-CPU rings by timestamp, so that a segment holds records
  // in time order (as far as they have arrived): a flow's two directions are
  // often handled by different CPUs.
  // Returns true if it stopped at kMaxRecordsPerDrain with more waiting.
  // Records younger than kHoldbackNs stay in their ring until the next pass:
  // a packet stamped earlier on another CPU may still be on its way into
  // that CPU's ring, and taking the younger one first would put the segment
  // out of time order. `everything` (at shutdown) takes all.
  bool drain_all(bool everything = false) {
    const size_t n = rings.size();
    const uint64_t watermark = everything ? UINT64_MAX : clock_ns(CLOCK_MONOTONIC) - kHoldbackNs;
    std::vector<std::span<const uint8_t>> heads(n);
    for (size_t i = 0; i < n; i++) heads[i] = rings[i].peek();
    bool more = true;
    for (uint64_t done = 1; done <= kMaxRecordsPerDrain; done++) {
      size_t best = n;
      uint64_t best_ts = UINT64_MAX;
      for (size_t i = 0; i < n; i++) {
        if (heads[i].empty()) continue;
        uint64_t ts = 0;
        if (heads[i].size() >= sizeof(uint64_t)) std::memcpy(&ts, heads[i].data(), sizeof ts);
        if (ts < best_ts || best == n) {
          best = i;
          best_ts = ts;
        }
      }
      if (best == n || best_ts > watermark) {
        more = false;
        break;
      }
      on_record(heads[best]);
      rings[best].advance();
      heads[best] = rings[best].peek();
      if ((done & 255) == 0)
        for (auto& r : rings) r.release();
    }
    for (auto& r : rings) r.release();
    store->publish();
    return more;
  }

  // ------------------------------------------------------------- io_uring --

  io_uring_sqe* sqe() {
    io_uring_sqe* s = io_uring_get_sqe(&uring);
    if (!s) {
      io_uring_submit(&uring);
      s = io_uring_get_sqe(&uring);
    }
    if (!s) throw std::runtime_error("io_uring submission queue full");
    return s;
  }

  void arm_poll(int fd, uint64_t data, bool multishot) {
    io_uring_sqe* s = sqe();
    if (multishot)
      io_uring_prep_poll_multishot(s, fd, POLLIN);
    else
      io_uring_prep_poll_add(s, fd, POLLIN);
    io_uring_sqe_set_data64(s, data);
  }

  void arm_timer() {
    timer_ts.tv_sec = 0;
    timer_ts.tv_nsec = static_cast<long long>(opts.drain_interval_ms) * 1000000ll;
    io_uring_sqe* s = sqe();
    io_uring_prep_timeout(s, &timer_ts, 0, 0);
    io_uring_sqe_set_data64(s, tag(kEvTimer));
  }

  void handle_signals() {
    signalfd_siginfo si{};
    const uint64_t now = clock_ns(CLOCK_MONOTONIC);
    while (read(sigfd, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
      switch (si.ssi_signo) {
        case SIGINT:
        case SIGTERM:
          stop = true;
          break;
        case SIGUSR1:
          supervisor->enable(now, "SIGUSR1");
          break;
        case SIGUSR2:
          supervisor->disable("SIGUSR2");
          break;
        case SIGCHLD:
          supervisor->on_child_exit(now);
          if (kube) kube->on_child_exit(now);
          break;
        case SIGHUP:
          std::fprintf(stderr, "tapwire-sensor: SIGHUP: %s\n", reload_config().dump().c_str());
          break;
      }
    }
  }

  // Reads the file again (with the same flags on top). A rejected file
  // changes nothing. Filters, snap length, interfaces, the idle stop and the
  // dissector's settings apply at once; the rest at the next start.
  nlohmann::json reload_config() {
    sd_notify(0, "RELOADING=1");
    nlohmann::json r = reload_config_now();
    sd_notify(0, "READY=1");
    return r;
  }

  nlohmann::json reload_config_now() {
    if (!opts.reload || opts.config_path.empty())
      return {{"ok", false}, {"error", "no configuration file to reload: the sensor was started without --config"}};
    config::TapwireConfig cfg;
    try {
      cfg = opts.reload();
    } catch (const config::ConfigError& e) {
      std::fprintf(stderr, "tapwire-sensor: config reload rejected, keeping the current configuration: %s\n", e.what());
      return {{"ok", false}, {"error", std::string("rejected, the current configuration stays: ") + e.what()}};
    }
    SensorOptions next = opts;
    apply_config(cfg, next);
    std::optional<InterfaceSelector> sel;
    try {
      sel.emplace(next.interfaces);
      if (next.targets.active() && !kube)
        throw std::runtime_error("pod targeting needs Kubernetes identity, which this sensor was not started with");
      PodTargets check;
      check.set_rules(next.targets);  // a bad regex refuses the file before anything changes
      // The new filters and the interfaces that stay selected, in one step:
      // the interfaces that go stop being captured at the same instant.
      std::set<uint32_t> keep;
      for (auto& [idx, i] : attached)
        if (sel->matches(i)) keep.insert(idx);
      bpf->set_filters(next.filters, &keep);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "tapwire-sensor: config reload rejected, keeping the current configuration: %s\n", e.what());
      return {{"ok", false}, {"error", std::string("rejected, the current configuration stays: ") + e.what()}};
    }
    nlohmann::json restart = nlohmann::json::array();
    auto later = [&](bool differs, const char* key) {
      if (differs) restart.push_back(key);
    };
    later(next.data_dir != opts.data_dir, "tap.dataDir");
    later(next.storage_size != opts.storage_size, "tap.capture.raw.storageSize");
    later(next.segment_size != opts.segment_size, "tap.capture.raw.segmentSize");
    later(next.segment_max_age_s != opts.segment_max_age_s, "tap.capture.raw.segmentMaxAge");
    later(next.ring_bytes != opts.ring_bytes, "tap.capture.raw.ringSize");
    later(next.metrics_address != opts.metrics_address, "tap.metrics.address");
    later(next.control_socket != opts.control_socket, "tap.controlSocket");
    later(next.raw_capture != opts.raw_capture, "tap.capture.raw.enabled");
    later(next.identity != opts.identity, "tap.identity.enabled");
    later(next.identity_storage_size != opts.identity_storage_size, "tap.identity.storageSize");
    later(next.node_name != opts.node_name, "tap.nodeName");
    later(next.kubernetes != opts.kubernetes || next.kubeconfig != opts.kubeconfig, "tap.kubernetes");
    if (!(next.targets == opts.targets)) {
      targets.set_rules(next.targets);
      opts.targets = next.targets;
      apply_targets();
    }
    selector = std::move(sel);
    opts.interfaces = next.interfaces;
    opts.filters = next.filters;
    opts.dissection_stop_after_ns = next.dissection_stop_after_ns;
    opts.dissector_args = next.dissector_args;
    supervisor->set_stop_after(next.dissection_stop_after_ns);
    supervisor->set_extra_args(next.dissector_args);
    // Interfaces that no longer match go, new matches come.
    std::vector<uint32_t> gone;
    for (auto& [idx, i] : attached)
      if (!selector->matches(i)) gone.push_back(idx);
    for (auto idx : gone) detach(idx, "no longer selected by the configuration");
    if (opts.raw_capture) rescan_interfaces();
    std::fprintf(stderr, "tapwire-sensor: configuration reloaded from %s%s\n", opts.config_path.c_str(),
                 restart.empty() ? "" : (" (at the next start: " + restart.dump() + ")").c_str());
    return {{"ok", true}, {"reloaded", opts.config_path}, {"restart_needed", restart}};
  }

  nlohmann::json control_request(const nlohmann::json& req) {
    const std::string cmd = req["cmd"].get<std::string>();
    const std::string action = req.value("action", "");
    const uint64_t now = clock_ns(CLOCK_MONOTONIC);
    if (cmd == "status") return {{"ok", true}, {"status", status_json("capturing")}};
    if (cmd == "activity") {
      supervisor->activity(now);
      return {{"ok", true}, {"dissection", supervisor->status(now)}};
    }
    if (cmd == "dissection") {
      if (action == "enable")
        supervisor->enable(now, "control socket");
      else if (action == "disable")
        supervisor->disable("control socket");
      else if (action != "status")
        return {{"ok", false}, {"error", "dissection: action must be enable, disable or status"}};
      return {{"ok", true}, {"dissection", supervisor->status(now)}};
    }
    if (cmd == "config") {
      if (action != "reload") return {{"ok", false}, {"error", "config: action must be reload"}};
      return reload_config();
    }
    if (cmd == "segment") {  // `tapwire snapshot create` seals the open segment this way
      if (action != "rotate") return {{"ok", false}, {"error", "segment: action must be rotate"}};
      if (!store) return {{"ok", false}, {"error", "segment: no segment store (raw capture disabled)"}};
      store->rotate();
      if (recorder) recorder->rotate();  // the identity stream too: a snapshot links sealed files only
      return {{"ok", true}};
    }
    if (cmd == "targets") return targets_request(req, action);
    if (cmd == "identity") return {{"ok", true}, {"identity", identity_status()}};
    return {{"ok", false},
            {"error", "unknown cmd '" + cmd + "': status, dissection, activity, config, segment, targets or identity"}};
  }

  // {"cmd":"targets","action":"get"} or {"cmd":"targets","action":"set","regex":R,
  // "namespaces":[..],"excludedNamespaces":[..]}: the rules until the next reload.
  nlohmann::json targets_request(const nlohmann::json& req, const std::string& action) {
    if (action == "get" || action.empty())
      return {{"ok", true}, {"targets", identity_status()["targets"]}};
    if (action != "set") return {{"ok", false}, {"error", "targets: action must be get or set"}};
    TargetRules r = opts.targets;
    try {
      if (req.contains("regex")) r.regex = req.at("regex").get<std::string>();
      if (req.contains("namespaces")) r.namespaces = req.at("namespaces").get<std::vector<std::string>>();
      if (req.contains("excludedNamespaces"))
        r.excluded = req.at("excludedNamespaces").get<std::vector<std::string>>();
    } catch (const nlohmann::json::exception&) {
      return {{"ok", false},
              {"error", "targets: regex must be a string, namespaces and excludedNamespaces lists of strings"}};
    }
    for (auto* list : {&r.namespaces, &r.excluded})
      if (list->size() > 1000) return {{"ok", false}, {"error", "targets: at most 1000 namespaces"}};
    if (r.active() && !kube)
      return {{"ok", false}, {"error", "targets: pod targeting needs Kubernetes identity (start with --kubeconfig)"}};
    try {
      targets.set_rules(r);
    } catch (const std::exception& e) {
      return {{"ok", false}, {"error", std::string("targets: ") + e.what()}};
    }
    opts.targets = r;
    apply_targets();
    std::fprintf(stderr, "tapwire-sensor: pod targeting set by the control socket: %s\n",
                 targets.status().dump().c_str());
    return {{"ok", true}, {"targets", identity_status()["targets"]}};
  }

  void handle_links() {
    bool changed = false;
    for (auto& e : links->read_events()) {
      if (!e.added) {
        detach(e.ifindex, "interface removed");
        continue;
      }
      changed = true;
    }
    if (changed) rescan_interfaces();
  }

  void tick(uint64_t now_mono) {
    mono_to_real = clock_ns(CLOCK_REALTIME) - now_mono;
    uint64_t now_real = now_mono + mono_to_real;
    write_loss_records(now_real);
    store->tick(now_real);
    supervisor->tick(now_mono);
    control->expire_clients();  // control clients silent for too long are cut off
    if (recorder) {
      recorder->tick(now_real);
      recorder->publish();
    }
    if (kube) {
      kube->tick(now_mono);
      arm_kube();
    }
    if (now_mono - last_rescan_mono >= 5000000000ull) {  // netlink can lose events (ENOBUFS)
      rescan_interfaces();
      last_rescan_mono = now_mono;
    }
    write_status("capturing");
    if (opts.print) print_summary(now_mono);
  }

  // Kernel drops become TW_REC_LOSS records, so that whoever reads the
  // segments knows data is missing around that time.
  void write_loss_records(uint64_t now_real) {
    auto per_cpu = bpf->read_counters();
    for (uint32_t r = 0; r < TW_DROP__MAX; r++) {
      uint64_t total = 0;
      for (auto& c : per_cpu) total += c.drop[r];
      if (total <= drops_logged[r]) continue;
      tw_seg_loss loss{};
      loss.ts_ns = now_real;
      loss.reason = r;
      loss.count = total - drops_logged[r];
      if (store->append(TW_REC_LOSS, {reinterpret_cast<const uint8_t*>(&loss), sizeof loss}, {}, now_real))
        drops_logged[r] = total;
    }
    store->publish();
  }

  nlohmann::json status_json(const char* state) const {
    using nlohmann::json;
    auto per_cpu = bpf->read_counters();
    json counters = json::object(), drops = json::object(), by_cpu = json::array();
    for (uint32_t s = 0; s < TW_STAT__MAX; s++) {
      uint64_t t = 0;
      for (auto& c : per_cpu) t += c.stat[s];
      counters[std::string(abi::kStatNames[s])] = t;
    }
    for (uint32_t r = 0; r < TW_DROP__MAX; r++) {
      uint64_t t = 0;
      for (auto& c : per_cpu) t += c.drop[r];
      drops[std::string(abi::kDropReasonNames[r])] = t;
    }
    for (uint32_t r = 0; r < kUserDropMax; r++) drops[kUserDropNames[r]] = user_drops[r];
    for (size_t cpu = 0; cpu < per_cpu.size(); cpu++) {
      json c = {{"cpu", cpu}};
      for (uint32_t r = 0; r < TW_DROP__MAX; r++) c[std::string(abi::kDropReasonNames[r])] = per_cpu[cpu].drop[r];
      by_cpu.push_back(c);
    }
    json ifaces = json::array();
    for (auto& [idx, i] : attached) {
      json j = {{"name", i.name}, {"ifindex", idx}};
      if (auto it = per_iface.find(idx); it != per_iface.end()) {
        j["ingress"] = {{"packets", it->second.packets[0]}, {"bytes", it->second.bytes[0]}};
        j["egress"] = {{"packets", it->second.packets[1]}, {"bytes", it->second.bytes[1]}};
      }
      ifaces.push_back(j);
    }
    auto st = store->stats();
    json storage = {{"dir", store->options().dir},
                    {"segments", st.segments},
                    {"bytes_stored", st.bytes_stored},
                    {"storage_size", store->options().storage_size},
                    {"segment_size", store->options().segment_size},
                    {"segments_deleted", st.segments_deleted},
                    {"records_written", st.records_written}};
    json ring = json::array();
    for (size_t i = 0; i < rings.size(); i++)
      ring.push_back({{"cpu", i}, {"pending_bytes", rings[i].pending()}, {"size_bytes", bpf->ring_bytes()}});
    return {{"version", TAPWIRE_VERSION},
            {"pid", getpid()},
            {"state", state},
            {"started_ns", started_ns},
            {"updated_ns", clock_ns(CLOCK_REALTIME)},
            {"interfaces", ifaces},
            {"attach", tc ? attach_mode_name(tc->mode()) : "none"},
            {"rule_generation", {{"active", bpf->active_generation()}, {"switches", bpf->generation_switches()}}},
            {"counters", counters},
            {"drops", drops},
            {"drops_by_cpu", by_cpu},
            {"rings", ring},
            {"storage", storage},
            {"dissection", supervisor ? supervisor->status(clock_ns(CLOCK_MONOTONIC)) : nlohmann::json(nullptr)},
            {"control_socket", control ? control->path() : std::string()},
            {"identity", identity_status()}};
  }

  // The dissector's metrics file, if a dissector is writing one now. The
  // dissector is the less trusted process (it parses the wire, as another
  // user) and may write anything there: no link is followed, nothing but a
  // regular file is read (a FIFO would block the sensor), at most 1 MiB, and
  // parsed without exceptions; the exporter checks every field's type.
  nlohmann::json dissector_metrics() const {
    constexpr size_t kMaxBytes = 1 << 20;
    const std::string path = opts.data_dir + "/dissector.json";
    int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return nullptr;
    struct stat st {};
    std::string text;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size <= static_cast<off_t>(kMaxBytes) &&
        time(nullptr) - st.st_mtime <= 10) {
      text.resize(kMaxBytes + 1);
      size_t got = 0;
      while (got < text.size()) {
        ssize_t n = ::read(fd, text.data() + got, text.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += static_cast<size_t>(n);
      }
      text.resize(got > kMaxBytes ? 0 : got);  // grew past the cap while read: not trusted
    }
    ::close(fd);
    if (text.empty()) return nullptr;
    auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false, /*ignore_comments=*/false);
    return j.is_object() ? j : nlohmann::json(nullptr);
  }

  void write_status(const char* state) {
    nlohmann::json status = status_json(state);
    if (exporter) {
      exporter->set_sensor_status(status);
      exporter->set_dissector_metrics(dissector_metrics());
    }
    if (!write_status_file(opts.data_dir, status))
      std::fprintf(stderr, "tapwire-sensor: cannot write %s: %s\n", status_file_path(opts.data_dir).c_str(),
                   std::strerror(errno));
  }

  // ---------------------------------------------------------------- print --

  void print_packet(const tw_pkt& p) {
    if (p.flags & TW_PKT_F_CONTINUATION) return;
    uint64_t sec = p.ts_ns / 1000000000ull;
    if (sec != print_window_start) {
      if (suppressed) std::printf("  ... and %" PRIu64 " more packets\n", suppressed);
      print_window_start = sec;
      printed_in_window = 0;
      suppressed = 0;
    }
    if (++printed_in_window > 20) {
      suppressed++;
      return;
    }
    char src[64], dst[64];
    auto addr = [](const tw_pkt& pk, const uint8_t* a, uint16_t port, char* out, size_t n) {
      char ip[48];
      inet_ntop(pk.ip_version == 4 ? AF_INET : AF_INET6, a, ip, sizeof ip);
      std::snprintf(out, n, pk.ip_version == 4 ? "%s:%u" : "[%s]:%u", ip, port);
    };
    addr(p, p.saddr, p.sport, src, sizeof src);
    addr(p, p.daddr, p.dport, dst, sizeof dst);
    char flags[8] = {};
    int f = 0;
    if (p.tcp_flags & TW_TCP_SYN) flags[f++] = 'S';
    if (p.tcp_flags & TW_TCP_FIN) flags[f++] = 'F';
    if (p.tcp_flags & TW_TCP_RST) flags[f++] = 'R';
    if (p.tcp_flags & TW_TCP_PSH) flags[f++] = 'P';
    if (p.tcp_flags & TW_TCP_ACK) flags[f++] = '.';
    time_t t = static_cast<time_t>(sec);
    tm tmv{};
    localtime_r(&t, &tmv);
    auto it = attached.find(p.ifindex);
    std::printf("%02d:%02d:%02d.%06u %s %-7s %s %s > %s %s%s%s len %u%s\n", tmv.tm_hour, tmv.tm_min, tmv.tm_sec,
                static_cast<unsigned>((p.ts_ns % 1000000000ull) / 1000),
                it != attached.end() ? it->second.name.c_str() : "?", std::string(abi::direction_name(p.direction)).c_str(),
                p.l4_proto == 6 ? "TCP" : "UDP", src, dst, p.l4_proto == 6 ? "[" : "", p.l4_proto == 6 ? flags : "",
                p.l4_proto == 6 ? "]" : "", p.payload_len, (p.flags & TW_PKT_F_TRUNCATED) ? " (truncated)" : "");
  }

  void print_summary(uint64_t now_mono) {
    (void)now_mono;
    auto per_cpu = bpf->read_counters();
    uint64_t pk = 0, by = 0, dr = 0;
    for (auto& c : per_cpu) {
      pk += c.stat[TW_STAT_PACKETS_CAPTURED];
      by += c.stat[TW_STAT_BYTES_CAPTURED];
      for (auto d : c.drop) dr += d;
    }
    for (auto d : user_drops) dr += d;
    auto st = store->stats();
    std::printf("-- %" PRIu64 " packets/s, %s/s payload | total %" PRIu64 " packets, %s | drops %" PRIu64
                " | %" PRIu64 " segments, %s stored\n",
                pk - last_print_packets, format_size(by - last_print_bytes).c_str(), pk, format_size(by).c_str(), dr,
                st.segments, format_size(st.bytes_stored).c_str());
    std::fflush(stdout);
    last_print_packets = pk;
    last_print_bytes = by;
  }

  // ----------------------------------------------------------------- loop --

  int run() {
    for (uint32_t i = 0; i < rings.size(); i++) arm_poll(rings[i].fd(), tag(kEvRing, i), true);
    arm_poll(sigfd, tag(kEvSignal), false);
    arm_poll(links->fd(), tag(kEvNetlink), false);
    arm_poll(control->listen_fd(), tag(kEvControl), false);
    if (ident) arm_poll(ident->ring_fd(), tag(kEvIdentity), true);
    if (kube) {
      kube->start(clock_ns(CLOCK_MONOTONIC));
      arm_kube();
    }
    apply_targets();
    arm_timer();
    if (opts.dissection) supervisor->enable(clock_ns(CLOCK_MONOTONIC), "configuration (tap.capture.stopped: false)");
    sd_notify(0, "READY=1\nSTATUS=capturing");  // systemd Type=notify; a no-op elsewhere
    last_tick_mono = last_rescan_mono = clock_ns(CLOCK_MONOTONIC);
    write_status("capturing");

    bool more = false;
    while (!stop) {
      // With records still waiting, look at completions without sleeping.
      int rc = more ? io_uring_submit(&uring) : io_uring_submit_and_wait(&uring, 1);
      if (rc < 0 && rc != -EINTR && rc != -ETIME)
        throw std::runtime_error(std::string("io_uring wait failed: ") + std::strerror(-rc));
      io_uring_cqe* cqe;
      unsigned head, seen = 0;
      io_uring_for_each_cqe(&uring, head, cqe) {
        seen++;
        uint64_t data = io_uring_cqe_get_data64(cqe);
        auto ev = static_cast<Event>(data >> 32);
        switch (ev) {
          case kEvRing:
            if (!(cqe->flags & IORING_CQE_F_MORE))
              arm_poll(rings[data & 0xffffffff].fd(), data, true);
            break;
          case kEvSignal:
            handle_signals();
            arm_poll(sigfd, data, false);
            break;
          case kEvNetlink:
            handle_links();
            arm_poll(links->fd(), data, false);
            break;
          case kEvTimer:
            arm_timer();
            break;
          case kEvControl:
            for (int id : control->accept_pending())
              arm_poll(ControlServer::id_fd(id), tag(kEvClient, static_cast<uint32_t>(id)), false);
            arm_poll(control->listen_fd(), data, false);
            break;
          case kEvClient: {
            int id = static_cast<int>(data & 0xffffffff);
            if (control->serve(id)) arm_poll(ControlServer::id_fd(id), data, false);
            break;
          }
          case kEvIdentity:
            if (!(cqe->flags & IORING_CQE_F_MORE)) arm_poll(ident->ring_fd(), data, true);
            break;
          case kEvKube: {
            const int fd = static_cast<int>(data & 0xffffffff);
            if (kube && fd == kube_fd_armed) {
              kube_fd_armed = -1;
              kube->on_readable([this](identity::Workload&& w) { on_workload(std::move(w)); });
              arm_kube();
            }
            break;
          }
        }
      }
      io_uring_cq_advance(&uring, seen);
      // Identity first: a socket's owner is announced before its packets
      // reach the capture hooks, and is then published before them.
      drain_identity();
      more = drain_all();
      if (targets_dirty) apply_targets();
      uint64_t now = clock_ns(CLOCK_MONOTONIC);
      if (now - last_tick_mono >= 1000000000ull) {
        tick(now);
        last_tick_mono = now;
      }
    }
    shutdown();
    return exit_code;
  }

  void shutdown() {
    sd_notify(0, "STOPPING=1");
    supervisor.reset();  // stops the dissector (it checkpoints; a restart resumes)
    kube.reset();
    control.reset();
    // Detach first so nothing new arrives, then take everything in flight.
    tc->detach_all();
    attached.clear();
    for (int i = 0; i < 1024 && drain_all(true); i++) {
    }
    write_loss_records(clock_ns(CLOCK_REALTIME));
    drain_identity();
    write_status("stopped");
    ident.reset();  // detaches the identity programs
    recorder.reset();  // seals the open identity segment
    store.reset();  // seals the open segment
  }
};

Sensor::Sensor(SensorOptions opts) : impl_(std::make_unique<Impl>()) {
  impl_->opts = std::move(opts);
  impl_->setup();
}

Sensor::~Sensor() = default;

int Sensor::run() { return impl_->run(); }

void Sensor::block_signals() { pthread_sigmask(SIG_BLOCK, &Impl::blocked_set(), nullptr); }

}  // namespace tapwire::sensor
