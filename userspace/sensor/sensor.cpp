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
#include <bpf/libbpf.h>
#include <sys/fsuid.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "activity_printer.hpp"
#include "capture_drain.hpp"
#include "clock.hpp"
#include "control_commands.hpp"
#include "control_socket.hpp"
#include "dissector_supervisor.hpp"
#include "flow_harvester.hpp"
#include "fs_util.hpp"
#include "identity_collector.hpp"
#include "identity_recorder.hpp"
#include "interfaces.hpp"
#include "kube_watcher.hpp"
#include "capture_store.hpp"
#include "segment.hpp"
#include "sensor_status.hpp"
#include "socket_owner.hpp"
#include "tc_attach.hpp"

namespace tapwire::sensor {
namespace {

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

// DATA_DIR as `mkdir -p` makes it: its parents 0755 (the dissector's user
// must pass through them), itself 0750.
void make_data_dir(const std::string& dir) {
  if (!mkdir_p(dir, 0750, 0755)) {
    if (errno == ENOTDIR)
      throw std::runtime_error("data dir " + dir + " is not a directory: choose another --data-dir");
    throw std::runtime_error("cannot create data dir " + dir + ": " + std::strerror(errno) +
                             ": choose a writable --data-dir");
  }
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
  for (const char* sub : {"segments", "identity", "flows"}) {
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

}  // namespace

// The owner of the sensor's parts, and its event loop. The parts' jobs are
// in their own files: draining the rings into the segment store
// (capture_drain), the control commands (control_commands), status.json and
// metrics (sensor_status), --print (activity_printer).
struct Sensor::Impl final : ControlTarget {
  SensorOptions opts;
  std::optional<InterfaceSelector> selector;
  std::unique_ptr<shm::CaptureStore> store;
  std::unique_ptr<BpfCapture> bpf;
  std::unique_ptr<CaptureDrain> drain;  // bpf's rings into the store
  std::unique_ptr<TcAttacher> tc;
  std::unique_ptr<LinkMonitor> links;
  std::unique_ptr<StatusWriter> status_writer;  // status.json and the metrics exporter
  std::unique_ptr<DissectorSupervisor> supervisor;
  std::unique_ptr<ControlServer> control;
  std::unique_ptr<IdentityCollector> ident;
  std::unique_ptr<IdentityRecorder> recorder;
  std::unique_ptr<KubeWatcher> kube;
  std::unique_ptr<FlowHarvester> flows;  // the kernel's flow table into DATA_DIR/flows
  std::unique_ptr<SocketOwnerResolver> owners;  // sockets older than the hooks
  std::string ident_error;  // why process identity is off, if it failed to start
  std::string node_name;
  PodTargets targets;
  bool targets_dirty = false;
  int kube_fd_armed = -1;  // the watcher's stdout the ring polls
  KubeSync kube_sync;
  std::map<uint32_t, Interface> attached;  // ifindex -> interface
  std::unique_ptr<ActivityPrinter> printer;  // --print
  io_uring uring{};
  bool uring_ready = false;
  uint32_t idle_passes = 0;  // drain passes in a row that found no record
  int sigfd = -1;
  __kernel_timespec timer_ts{};
  uint64_t started_ns = 0;
  bool stop = false;
  int exit_code = 0;
  uint64_t last_tick_mono = 0, last_rescan_mono = 0;

  ~Impl() {
    if (uring_ready) io_uring_queue_exit(&uring);
    if (sigfd >= 0) close(sigfd);
  }

  void setup() {
    selector.emplace(opts.interfaces);
    make_data_dir(opts.data_dir);
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
      const int ncpu = libbpf_num_possible_cpus();
      if (ncpu <= 0) throw std::runtime_error("cannot count CPUs");
      store = std::make_unique<shm::CaptureStore>(so, static_cast<uint32_t>(ncpu));
    } catch (const shm::SegmentError& e) {
      std::string what = e.what();
      if (what.find(TW_SEG_FILE_SUFFIX ":") != std::string::npos)  // about one file in the ring
        what += ": move that file out of " + so.dir + " (or choose another --data-dir) and start again";
      throw std::runtime_error(what);
    }
    for (const auto& why : store->damaged())
      std::fprintf(stderr, "tapwire-sensor: set aside a damaged segment (%s) in %s/damaged/\n", why.c_str(),
                   so.dir.c_str());
    // Each segment names its interfaces first: at the watermark, before every
    // packet still to come.
    store->on_open([this](shm::CaptureStore& st) {
      write_iface_records(st, attached, drain && drain->watermark() ? drain->watermark() : clock_ns(CLOCK_REALTIME));
    });

    bpf = std::make_unique<BpfCapture>(opts.ring_bytes, opts.ring_bytes / 8, opts.flow_accounting);
    bpf->set_filters(opts.filters);
    {
      FlowHarvesterOptions fo = opts.flows;
      fo.dir = opts.data_dir + "/flows";
      fo.segment_size = std::min<uint64_t>(16ull << 20, opts.flows.storage_size / 4);
      try {
        flows = std::make_unique<FlowHarvester>(fo, bpf->flows_fd(), bpf->flow_ends_fd(), bpf->max_flows());
      } catch (const shm::SegmentError& e) {
        throw std::runtime_error(std::string(e.what()) + ": choose another --data-dir");
      }
    }
    const std::string state = opts.data_dir + "/tc-state.json";
    if (int n = TcAttacher::cleanup_leftovers(state); n > 0)
      std::fprintf(stderr, "tapwire-sensor: removed %d filter(s) left by a previous run\n", n);
    auto mode = parse_attach_mode(opts.attach);
    if (!mode) throw std::runtime_error("--attach must be tc, tcx or auto, not '" + opts.attach + "'");
    tc = std::make_unique<TcAttacher>(bpf->ingress_prog_fd(), bpf->egress_prog_fd(), state, *mode);
    drain = std::make_unique<CaptureDrain>(*store, *bpf);
    if (opts.print) {
      printer = std::make_unique<ActivityPrinter>(attached);
      drain->on_packet([p = printer.get()](const tw_pkt& pkt) { p->packet(pkt); });
    }
    links = std::make_unique<LinkMonitor>();
    setup_identity();
    flows->names().set_node(node_name, local_addresses());

    status_writer = std::make_unique<StatusWriter>(opts.data_dir, opts.metrics_address, opts.metrics_address_explicit);

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
        [this](const nlohmann::json& req) { return control_command(*this, req); });

    sigfd = signalfd(-1, &blocked_set(), SFD_CLOEXEC | SFD_NONBLOCK);
    if (sigfd < 0) throw std::runtime_error(std::string("cannot create a signalfd: ") + std::strerror(errno));
    if (int rc = io_uring_queue_init(64, &uring, 0); rc < 0)
      throw std::runtime_error(std::string("cannot set up io_uring: ") + std::strerror(-rc));
    uring_ready = true;

    drain->set_mono_to_real(clock_ns(CLOCK_REALTIME) - clock_ns(CLOCK_MONOTONIC));
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
      const std::string before = kube_sync.state();
      auto& last = kube_sync.resources[sync->resource];
      if (sync->state == "lost" && (last.is_null() || last.value("state", "") != "lost")) kube_sync.failures++;
      last = {{"state", sync->state}, {"error", sync->error}, {"since_ns", now}};
      const std::string after = kube_sync.state();
      if (after != before && after == "unknown" && sync->state == "lost")
        std::fprintf(stderr,
                     "tapwire-sensor: Kubernetes identity unknown (capture goes on): %s: %s; retrying with backoff\n",
                     sync->resource.c_str(), sync->error.c_str());
      else if (after != before && after == "synced")
        std::fprintf(stderr, "tapwire-sensor: Kubernetes identity synced (%zu pods)\n", targets.pods());
    } else if (auto* stats = std::get_if<identity::StatsObject>(&w.object)) {
      kube_sync.stats = {{"requests", stats->requests}, {"events", stats->events}, {"relists", stats->relists}};
      return;  // counters, not identity: not recorded
    }
    if (flows) flows->names().workload(w);
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

  // ------------------------------------------------------------ status --

  nlohmann::json identity_status() const {
    return identity_status_json({.enabled = opts.identity,
                                 .node = node_name,
                                 .error = ident_error,
                                 .collector = ident.get(),
                                 .owners = owners.get(),
                                 .recorder = recorder.get(),
                                 .kube = kube.get(),
                                 .kube_sync = kube_sync,
                                 .targets = targets});
  }

  nlohmann::json status_json(const char* state, bool with_pairs = false) const {
    nlohmann::json j = sensor_status_json({.bpf = *bpf,
                               .drain = *drain,
                               .store = *store,
                               .attached = attached,
                               .tc = tc.get(),
                               .supervisor = supervisor.get(),
                               .control = control.get(),
                               .started_ns = started_ns},
                              state, identity_status());
    j["flows"] = flows_status(with_pairs);
    return j;
  }

  nlohmann::json flows_status(bool with_pairs) const {
    if (!flows) return {{"enabled", false}};
    tw_counters total{};
    for (auto& c : bpf->read_counters())
      for (uint32_t i = 0; i < TW_STAT__MAX; i++) total.stat[i] += c.stat[i];
    nlohmann::json j = flows->status(total, with_pairs);
    const auto& fa = bpf->flow_accounting();
    j["enabled"] = fa.tcp || fa.udp;
    j["protocols"] = {{"tcp", fa.tcp}, {"udp", fa.udp}};
    return j;
  }

  // status.json without the per-pair series; the exporter gets them.
  void write_status(const char* state) { status_writer->write(status_json(state, true)); }

  // ----------------------------------------------- control (ControlTarget) --

  nlohmann::json status_now() const override { return status_json("capturing"); }
  nlohmann::json identity_now() const override { return identity_status(); }
  DissectorSupervisor& dissection() override { return *supervisor; }

  bool rotate_segments() override {
    if (!store) return false;
    store->rotate();
    if (recorder) recorder->rotate();  // the identity stream too: a snapshot links sealed files only
    if (flows) flows->rotate();  // and the flow stream
    return true;
  }

  const TargetRules& target_rules() const override { return opts.targets; }
  bool kubernetes() const override { return kube != nullptr; }
  PodTargets& pod_targets() override { return targets; }

  void apply_target_rules(const TargetRules& r) override {
    opts.targets = r;
    apply_targets();
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
    if (store) append_iface_record(*store, i, drain && drain->watermark() ? drain->watermark() : clock_ns(CLOCK_REALTIME));
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

  // The drain timer: drain_interval_ms while records come; doubled after
  // each pass that found none, up to 8 times that (an idle sensor wakes 12
  // times a second, not 100; a ring filling past the threshold still rings
  // the doorbell at once).
  void arm_timer() {
    const long long ms = static_cast<long long>(opts.drain_interval_ms) << std::min(idle_passes, 3u);
    timer_ts.tv_sec = ms / 1000;
    timer_ts.tv_nsec = (ms % 1000) * 1000000ll;
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
  nlohmann::json reload_config() override {
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
    later(next.attach != opts.attach, "tap.capture.attach");
    later(next.metrics_address != opts.metrics_address, "tap.metrics.address");
    later(next.control_socket != opts.control_socket, "tap.controlSocket");
    later(next.raw_capture != opts.raw_capture, "tap.capture.raw.enabled");
    later(next.identity != opts.identity, "tap.identity.enabled");
    later(next.identity_storage_size != opts.identity_storage_size, "tap.identity.storageSize");
    later(next.node_name != opts.node_name, "tap.nodeName");
    later(next.kubernetes != opts.kubernetes || next.kubeconfig != opts.kubeconfig, "tap.kubernetes");
    later(next.flow_accounting.max_flows != opts.flow_accounting.max_flows, "tap.flows.maxFlows");
    later(next.flows.storage_size != opts.flows.storage_size, "tap.flows.storageSize");
    later(next.flows.metrics_max_pairs != opts.flows.metrics_max_pairs, "tap.flows.metricsMaxPairs");
    // Flow accounting on or off (tap.enabledDissectors tcp / udp) and the timeouts: at once.
    try {
      bpf->set_flow_protocols(next.flow_accounting.tcp, next.flow_accounting.udp);
      opts.flow_accounting.tcp = next.flow_accounting.tcp;
      opts.flow_accounting.udp = next.flow_accounting.udp;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "tapwire-sensor: cannot switch flow accounting: %s\n", e.what());
    }
    if (flows) flows->set_timeouts(next.flows);
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
    const uint64_t mono_to_real = clock_ns(CLOCK_REALTIME) - now_mono;
    drain->set_mono_to_real(mono_to_real);
    const uint64_t now_real = now_mono + mono_to_real;
    drain->write_loss_records(now_real);
    store->tick(now_real);
    if (flows) {
      flows->harvest(now_mono, mono_to_real);
      flows->tick(now_real);
    }
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
    if (printer) printer->summary(*bpf, *drain, *store);
  }

  // ----------------------------------------------------------------- loop --

  int run() {
    arm_poll(drain->doorbell_fd(), tag(kEvRing), true);
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
          case kEvRing:  // a ring filled past the wakeup threshold: drained below
            drain->ack_doorbell();
            if (!(cqe->flags & IORING_CQE_F_MORE)) arm_poll(drain->doorbell_fd(), data, true);
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
      const uint64_t taken = drain->records_taken();
      more = drain->drain_all();
      idle_passes = drain->records_taken() != taken || !drain->empty() ? 0 : std::min(idle_passes + 1, 3u);
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
    for (int i = 0; i < 1024 && drain->drain_all(true); i++) {
    }
    drain->write_loss_records(clock_ns(CLOCK_REALTIME));
    drain_identity();
    if (flows) {  // every live flow's final record: end = stopped
      const uint64_t mono = clock_ns(CLOCK_MONOTONIC);
      flows->stop(mono, clock_ns(CLOCK_REALTIME) - mono);
    }
    write_status("stopped");
    ident.reset();  // detaches the identity programs
    recorder.reset();  // seals the open identity segment
    flows.reset();  // seals the open flow segment
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
