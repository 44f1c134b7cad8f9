#include "identity_table.hpp"

#include <algorithm>
#include <cstring>
#include <set>

namespace tapwire::identity {
namespace {

constexpr uint64_t kForever = UINT64_MAX;

// A socket as the kernel announced it: protocol, local and remote end (remote
// zero for an unconnected socket).
struct SockKey {
  uint8_t l4 = 0, ver = 0;
  uint16_t lport = 0, rport = 0;
  uint8_t laddr[16] = {}, raddr[16] = {};
  bool operator==(const SockKey& o) const { return std::memcmp(this, &o, sizeof *this) == 0; }
};
static_assert(sizeof(SockKey) == 38, "SockKey must have no padding: it is hashed and compared as bytes");

struct SockKeyHash {
  size_t operator()(const SockKey& k) const {
    uint64_t h = 1469598103934665603ull;
    auto* p = reinterpret_cast<const uint8_t*>(&k);
    for (size_t i = 0; i < sizeof k; i++) h = (h ^ p[i]) * 1099511628211ull;
    return static_cast<size_t>(h ^ (h >> 29));
  }
};

SockKey sock_key(uint8_t l4, const IpKey& local, uint16_t lport, const IpKey* remote, uint16_t rport) {
  SockKey k;
  k.l4 = l4;
  k.ver = local.version;
  k.lport = lport;
  std::memcpy(k.laddr, local.addr, 16);
  if (remote) {
    k.rport = rport;
    std::memcpy(k.raddr, remote->addr, 16);
  }
  return k;
}

struct SockEntry {
  uint64_t open = 0, close = kForever;
  uint64_t cookie = 0, cgroup = 0;
  uint32_t tgid = 0;
  uint8_t flags = 0;
  char comm[16] = {};
  uint64_t dump_gen = 0;
};

struct ProcEntry {
  uint64_t start = 0, end = kForever;
  uint64_t cgroup = 0;
  std::string comm, exe;
  uint64_t dump_gen = 0;
};

struct CgroupEntry {
  std::string path;
  CgroupInfo info;
};

// A period during which an address belonged to something.
struct Interval {
  uint64_t from = 0, to = kForever;
  std::string owner;  // pod uid, "<ns>/<service>" or node name
  std::string owner2;  // slice uid for service intervals
};

struct PodEntry {
  PodObject obj;
  uint64_t first = 0, deleted = kForever;
  uint64_t dump_gen = 0;
};

template <typename T>
struct ObjEntry {
  T obj;
  uint64_t first = 0, deleted = kForever;
  uint64_t dump_gen = 0;
};

// Intervals per address. Opening one for an owner that already holds the
// address is a no-op; closing sets `to`.
struct AddressBook {
  std::unordered_map<IpKey, std::vector<Interval>, IpKeyHash> by_ip;

  void open(const IpKey& ip, const std::string& owner, uint64_t ts, const std::string& owner2 = {}) {
    auto& v = by_ip[ip];
    for (auto& i : v)
      if (i.owner == owner && i.owner2 == owner2 && i.to == kForever) return;
    if (v.size() >= 64) v.erase(v.begin());  // an address reused this often: the oldest goes
    v.push_back({ts, kForever, owner, owner2});
  }
  void close(const IpKey& ip, const std::string& owner, uint64_t ts, const std::string& owner2 = {}) {
    auto it = by_ip.find(ip);
    if (it == by_ip.end()) return;
    for (auto& i : it->second)
      if (i.owner == owner && i.owner2 == owner2 && i.to == kForever) i.to = std::max(ts, i.from);
  }
  // The interval holding ts; else one that starts soon after (the API told
  // us late); else one that ended just before.
  // Only intervals `keep` accepts count.
  template <typename Keep>
  const Interval* at(const IpKey& ip, uint64_t ts, uint64_t future, uint64_t past, Keep&& keep) const {
    auto it = by_ip.find(ip);
    if (it == by_ip.end()) return nullptr;
    const Interval *hold = nullptr, *next = nullptr, *prev = nullptr;
    for (auto& i : it->second) {
      if (!keep(i)) continue;
      if (i.from <= ts && ts < i.to) {
        if (!hold || i.from > hold->from) hold = &i;
      } else if (i.from > ts && i.from - ts <= future) {
        if (!next || i.from < next->from) next = &i;
      } else if (i.to <= ts && ts - i.to <= past) {
        if (!prev || i.to > prev->to) prev = &i;
      }
    }
    return hold ? hold : next ? next : prev;
  }
  const Interval* at(const IpKey& ip, uint64_t ts, uint64_t future, uint64_t past) const {
    return at(ip, ts, future, past, [](const Interval&) { return true; });
  }
  void prune(uint64_t before) {
    for (auto it = by_ip.begin(); it != by_ip.end();) {
      auto& v = it->second;
      v.erase(std::remove_if(v.begin(), v.end(), [&](const Interval& i) { return i.to < before; }), v.end());
      it = v.empty() ? by_ip.erase(it) : std::next(it);
    }
  }
};

}  // namespace

struct IdentityTable::Impl {
  TableLimits lim;
  TableStats st;
  std::string self_node;
  std::vector<IpKey> self_addresses;

  std::unordered_map<SockKey, std::vector<SockEntry>, SockKeyHash> sockets;
  std::unordered_map<uint64_t, std::vector<SockKey>> by_cookie;  // open sockets
  std::deque<std::pair<SockKey, uint64_t>> sock_order;  // (key, cookie) in arrival order, for the cap
  size_t sock_count = 0;

  std::unordered_map<uint32_t, std::vector<ProcEntry>> procs;
  std::deque<std::pair<uint32_t, uint64_t>> proc_order;  // (tgid, start) in arrival order, for the cap
  size_t proc_count = 0;

  std::unordered_map<uint64_t, CgroupEntry> cgroups;
  std::deque<uint64_t> cgroup_order;

  std::unordered_map<std::string, PodEntry> pods;  // by uid
  std::unordered_map<std::string, ObjEntry<ServiceObject>> services;
  std::unordered_map<std::string, ObjEntry<EndpointSliceObject>> slices;
  std::unordered_map<std::string, ObjEntry<NodeObject>> nodes;
  // Arrival order, for the cap. `first` tells an entry from a later object
  // of the same uid (deleted, then back): a stale entry evicts nothing.
  struct ObjRef {
    char kind;
    std::string uid;
    uint64_t first;
  };
  std::deque<ObjRef> object_order;
  AddressBook pod_ips, service_ips, endpoint_ips, node_ips;
  std::map<std::string, KubeResourceState> kube;

  // Dumps: what a dump does not restate has ended.
  uint64_t dump_gen = 0, dump_ts = 0;
  uint64_t dump_count = 0;  // records of the open dump so far, its begin marker included
  bool in_dump = false;

  // Resolved identities are shared by the calls they name while they stay
  // the same: one object per socket (or address) as long as what it says
  // does not change. Keyed by socket or address; a collision of keys only
  // costs an allocation.
  std::unordered_map<uint64_t, EndpointIdentityPtr> cache;

  EndpointIdentityPtr share(uint64_t key, EndpointIdentity&& id) {
    if (cache.size() > 200000) cache.clear();
    auto& slot = cache[key];
    if (!slot || !(*slot == id)) slot = std::make_shared<const EndpointIdentity>(std::move(id));
    return slot;
  }

  // ------------------------------------------------------------ sockets --

  void add_socket(const tw_sock_event& ev) {
    IpKey local = IpKey::from_wire(ev.ip_version, ev.laddr), remote = IpKey::from_wire(ev.ip_version, ev.raddr);
    const bool unconnected = (ev.flags & TW_SOCK_F_UNCONNECTED) || ev.rport == 0;
    SockKey k = sock_key(ev.l4_proto, local, ev.lport, unconnected ? nullptr : &remote, ev.rport);
    auto& v = sockets[k];
    for (auto& e : v)
      if (e.cookie == ev.cookie && e.close == kForever) {  // restated (a dump) or announced again
        e.dump_gen = dump_gen;
        return;
      }
    SockEntry e;
    e.open = ev.ts_ns;
    e.cookie = ev.cookie;
    e.cgroup = ev.cgroup_id;
    e.tgid = ev.tgid;
    e.flags = ev.flags;
    std::memcpy(e.comm, ev.comm, sizeof e.comm);
    e.dump_gen = dump_gen;
    if (v.size() >= 16) {  // a tuple reused this often: the oldest goes
      v.erase(v.begin());
      sock_count--;
    }
    v.push_back(e);
    sock_count++;
    by_cookie[ev.cookie].push_back(k);
    sock_order.emplace_back(k, ev.cookie);
    while (sock_count > lim.max_sockets && !sock_order.empty()) {
      auto [ok, oc] = sock_order.front();
      sock_order.pop_front();
      if (erase_socket(ok, oc)) st.evicted_sockets++;
    }
    st.sockets = sock_count;
  }

  bool erase_socket(const SockKey& k, uint64_t cookie) {
    auto it = sockets.find(k);
    if (it == sockets.end()) return false;
    auto& v = it->second;
    auto e = std::find_if(v.begin(), v.end(), [&](const SockEntry& s) { return s.cookie == cookie; });
    if (e == v.end()) return false;
    if (e->close == kForever)  // evicted while open: its close will find nothing
      if (auto c = by_cookie.find(cookie); c != by_cookie.end()) {
        std::erase(c->second, k);
        if (c->second.empty()) by_cookie.erase(c);
      }
    v.erase(e);
    sock_count--;
    if (v.empty()) sockets.erase(it);
    return true;
  }

  void close_socket(uint64_t cookie, uint64_t ts) {
    auto it = by_cookie.find(cookie);
    if (it == by_cookie.end()) return;
    for (auto& k : it->second) {
      auto s = sockets.find(k);
      if (s == sockets.end()) continue;
      for (auto& e : s->second)
        if (e.cookie == cookie && e.close == kForever) e.close = std::max(ts, e.open);
    }
    by_cookie.erase(it);
  }

  const SockEntry* find_socket(const SockKey& k, uint64_t ts) const {
    auto it = sockets.find(k);
    if (it == sockets.end()) return nullptr;
    const SockEntry* best = nullptr;
    for (auto& e : it->second) {
      const uint64_t from = e.open > lim.socket_slack_ns ? e.open - lim.socket_slack_ns : 0;
      const uint64_t to = e.close == kForever ? kForever : e.close + lim.socket_slack_ns;
      if (ts < from || ts >= to) continue;
      if (!best || e.open > best->open) best = &e;  // the newest socket on a reused tuple
    }
    return best;
  }

  // ---------------------------------------------------------- processes --

  void add_process(const ProcessRecord& r) {
    auto& v = procs[r.tgid];
    ProcEntry* open = nullptr;
    for (auto& e : v)
      if (e.end == kForever) open = &e;
    switch (r.type) {
      case TW_IDENT_EXIT:
        if (open) open->end = std::max(r.ts_ns, open->start);
        return;
      case TW_IDENT_EXEC:
        if (open) open->end = std::max(r.ts_ns, open->start);  // the same process runs a new program
        break;
      default:  // found running (scan, dump): restates what may already be known
        if (open) {
          if (open->exe.empty()) open->exe = r.exe;
          if (!open->cgroup) open->cgroup = r.cgroup_id;
          open->dump_gen = dump_gen;
          return;
        }
    }
    if (v.size() >= 8) {  // pid reuse: the oldest goes
      v.erase(v.begin());
      proc_count--;
    }
    v.push_back({r.ts_ns, kForever, r.cgroup_id, r.comm, r.exe, dump_gen});
    proc_count++;
    proc_order.emplace_back(r.tgid, r.ts_ns);
    while (proc_count > lim.max_processes && !proc_order.empty()) {
      auto [t, start] = proc_order.front();
      proc_order.pop_front();
      if (erase_process(t, start)) st.evicted_processes++;
    }
    st.processes = proc_count;
  }

  // The entry of `tgid` that started at `start` (an entry of the cap's
  // queue may name one that is gone: pruned, or pushed out by pid reuse).
  const ProcEntry* find_entry(uint32_t tgid, uint64_t start) const {
    auto it = procs.find(tgid);
    if (it == procs.end()) return nullptr;
    for (auto& e : it->second)
      if (e.start == start) return &e;
    return nullptr;
  }

  bool erase_process(uint32_t tgid, uint64_t start) {
    auto it = procs.find(tgid);
    if (it == procs.end()) return false;
    auto& v = it->second;
    auto e = std::find_if(v.begin(), v.end(), [&](const ProcEntry& p) { return p.start == start; });
    if (e == v.end()) return false;
    v.erase(e);
    proc_count--;
    if (v.empty()) procs.erase(it);
    return true;
  }

  const ProcEntry* find_process(uint32_t tgid, uint64_t ts) const {
    auto it = procs.find(tgid);
    if (it == procs.end()) return nullptr;
    const ProcEntry* best = nullptr;
    for (auto& e : it->second)
      if (e.start <= ts + lim.socket_slack_ns && (e.end == kForever || ts < e.end + lim.socket_slack_ns))
        if (!best || e.start > best->start) best = &e;
    return best;
  }

  // ------------------------------------------------------------- cgroups --

  void add_cgroup(const CgroupRecord& r) {
    auto [it, fresh] = cgroups.try_emplace(r.cgroup_id);
    if (!fresh && it->second.path == r.path) return;
    it->second.path = r.path;
    it->second.info = parse_cgroup_path(r.path);
    if (fresh) {
      cgroup_order.push_back(r.cgroup_id);
      while (cgroups.size() > lim.max_cgroups && !cgroup_order.empty()) {
        cgroups.erase(cgroup_order.front());
        cgroup_order.pop_front();
        st.evicted_cgroups++;
      }
    }
    st.cgroups = cgroups.size();
  }

  // ----------------------------------------------------------- workloads --

  // Is the object a queue entry names still the one it was queued for?
  bool object_current(const ObjRef& r) const {
    auto check = [&](const auto& m) {
      auto it = m.find(r.uid);
      return it != m.end() && it->second.first == r.first;
    };
    switch (r.kind) {
      case 'p':
        return check(pods);
      case 's':
        return check(services);
      case 'e':
        return check(slices);
      default:
        return check(nodes);
    }
  }

  void track_object(char kind, const std::string& uid, uint64_t first) {
    object_order.push_back({kind, uid, first});
    while (pods.size() + services.size() + slices.size() + nodes.size() > lim.max_objects && !object_order.empty()) {
      ObjRef ref = std::move(object_order.front());
      object_order.pop_front();
      if (!object_current(ref)) continue;
      const std::string& u = ref.uid;
      bool gone = false;
      switch (ref.kind) {
        case 'p':
          if (auto it = pods.find(u); it != pods.end()) {
            set_pod_ips(it->second, {}, 0, true);
            pods.erase(it);
            gone = true;
          }
          break;
        case 's':
          if (auto it = services.find(u); it != services.end()) {
            for (auto& ip : it->second.obj.cluster_ips) service_ips.close(ip, svc_name(it->second.obj), 0);
            services.erase(it);
            gone = true;
          }
          break;
        case 'e':
          if (auto it = slices.find(u); it != slices.end()) {
            for (auto& ip : it->second.obj.addresses) endpoint_ips.close(ip, slice_owner(it->second.obj), 0, u);
            slices.erase(it);
            gone = true;
          }
          break;
        case 'n':
          if (auto it = nodes.find(u); it != nodes.end()) {
            for (auto& ip : it->second.obj.addresses) node_ips.close(ip, it->second.obj.name, 0);
            nodes.erase(it);
            gone = true;
          }
          break;
      }
      if (gone) st.evicted_objects++;
    }
  }

  static std::string svc_name(const ServiceObject& s) { return s.namespace_ + "/" + s.name; }
  static std::string slice_owner(const EndpointSliceObject& e) { return e.namespace_ + "/" + e.service; }

  // Moves the pod's address intervals from its old IPs to `ips` at ts.
  void set_pod_ips(PodEntry& p, const std::vector<IpKey>& ips, uint64_t ts, bool host_network) {
    auto registered = [&](const PodObject& o) { return o.host_network ? std::vector<IpKey>{} : o.ips; };
    const std::vector<IpKey> before = registered(p.obj);
    const std::vector<IpKey> after = host_network ? std::vector<IpKey>{} : ips;
    for (auto& ip : before)
      if (std::find(after.begin(), after.end(), ip) == after.end()) pod_ips.close(ip, p.obj.uid, ts);
    for (auto& ip : after) pod_ips.open(ip, p.obj.uid, ts);
  }

  // Closes the addresses of `before` (held by before_owner) that `after` no
  // longer holds (or holds for another owner), and opens those of `after`.
  // Unchanged addresses keep their interval.
  static void move_addresses(AddressBook& book, const std::vector<IpKey>& before, const std::string& before_owner,
                             const std::vector<IpKey>& after, const std::string& after_owner, uint64_t ts,
                             const std::string& owner2 = {}) {
    for (auto& ip : before)
      if (before_owner != after_owner || std::find(after.begin(), after.end(), ip) == after.end())
        book.close(ip, before_owner, ts, owner2);
    if (!after_owner.empty())
      for (auto& ip : after) book.open(ip, after_owner, ts, owner2);
  }

  void apply_workload(const WorkloadRecord& r) {
    const Workload& w = r.workload;
    const uint64_t ts = r.ts_ns;
    const bool del = w.op == WorkloadOp::Delete;
    // A dump restates an object with the time it was first seen. What it
    // says differently about an object already known (a change no sensor saw
    // happen) took effect by the dump's time, not at that first sighting:
    // the old state stays true for the time before the dump.
    const uint64_t change_ts = in_dump && (r.flags & TW_IDENT_REC_F_DUMP) ? std::max(ts, dump_ts) : ts;
    std::visit(
        [&](const auto& o) {
          using T = std::decay_t<decltype(o)>;
          if constexpr (std::is_same_v<T, PodObject>) {
            auto it = pods.find(o.uid);
            if (del) {
              if (it != pods.end() && it->second.deleted == kForever) {
                set_pod_ips(it->second, {}, ts, true);
                it->second.deleted = ts;
              }
              return;
            }
            const bool fresh = it == pods.end() || it->second.deleted != kForever;
            if (fresh) {
              if (it != pods.end()) pods.erase(it);  // a uid comes back only after a delete restated wrongly
              PodEntry e;
              e.obj.uid = o.uid;
              e.obj.host_network = true;  // no addresses registered yet
              e.first = ts;
              it = pods.emplace(o.uid, std::move(e)).first;
              track_object('p', o.uid, ts);
            }
            set_pod_ips(it->second, o.ips, fresh ? ts : change_ts, o.host_network);
            it->second.obj = o;
            it->second.dump_gen = dump_gen;
          } else if constexpr (std::is_same_v<T, ServiceObject>) {
            auto it = services.find(o.uid);
            const bool live = it != services.end() && it->second.deleted == kForever;
            if (del) {
              if (live)
                for (auto& ip : it->second.obj.cluster_ips) service_ips.close(ip, svc_name(it->second.obj), ts);
              if (it != services.end()) it->second.deleted = std::min(it->second.deleted, ts);
              return;
            }
            const uint64_t at = live ? change_ts : ts;
            if (live)
              move_addresses(service_ips, it->second.obj.cluster_ips, svc_name(it->second.obj), o.cluster_ips,
                             svc_name(o), at);
            else
              for (auto& ip : o.cluster_ips) service_ips.open(ip, svc_name(o), at);
            if (it == services.end()) {
              it = services.emplace(o.uid, ObjEntry<ServiceObject>{o, ts}).first;
              track_object('s', o.uid, ts);
            }
            it->second.obj = o;
            it->second.deleted = kForever;
            it->second.dump_gen = dump_gen;
          } else if constexpr (std::is_same_v<T, EndpointSliceObject>) {
            auto it = slices.find(o.uid);
            const bool live = it != slices.end() && it->second.deleted == kForever;
            if (del) {
              if (live)
                for (auto& ip : it->second.obj.addresses) endpoint_ips.close(ip, slice_owner(it->second.obj), ts, o.uid);
              if (it != slices.end()) it->second.deleted = std::min(it->second.deleted, ts);
              return;
            }
            const uint64_t at = live ? change_ts : ts;
            if (live)
              move_addresses(endpoint_ips, it->second.obj.addresses,
                             it->second.obj.service.empty() ? "" : slice_owner(it->second.obj), o.addresses,
                             o.service.empty() ? "" : slice_owner(o), at, o.uid);
            else if (!o.service.empty())
              for (auto& ip : o.addresses) endpoint_ips.open(ip, slice_owner(o), at, o.uid);
            if (it == slices.end()) {
              it = slices.emplace(o.uid, ObjEntry<EndpointSliceObject>{o, ts}).first;
              track_object('e', o.uid, ts);
            }
            it->second.obj = o;
            it->second.deleted = kForever;
            it->second.dump_gen = dump_gen;
          } else if constexpr (std::is_same_v<T, NodeObject>) {
            auto it = nodes.find(o.uid);
            const bool live = it != nodes.end() && it->second.deleted == kForever;
            if (del) {
              if (live)
                for (auto& ip : it->second.obj.addresses) node_ips.close(ip, it->second.obj.name, ts);
              if (it != nodes.end()) it->second.deleted = std::min(it->second.deleted, ts);
              return;
            }
            const uint64_t at = live ? change_ts : ts;
            if (live)
              move_addresses(node_ips, it->second.obj.addresses, it->second.obj.name, o.addresses, o.name, at);
            else
              for (auto& ip : o.addresses) node_ips.open(ip, o.name, at);
            if (it == nodes.end()) {
              it = nodes.emplace(o.uid, ObjEntry<NodeObject>{o, ts}).first;
              track_object('n', o.uid, ts);
            }
            it->second.obj = o;
            it->second.deleted = kForever;
            it->second.dump_gen = dump_gen;
          } else if constexpr (std::is_same_v<T, SelfObject>) {
            self_node = o.node;
            self_addresses = o.addresses;
          } else if constexpr (std::is_same_v<T, SyncObject>) {
            auto& k = kube[o.resource];
            if (k.state != o.state) k.since_ns = ts;
            k.state = o.state;
            k.error = o.error;
          }
        },
        w.object);
    st.pods = pods.size();
    st.services = services.size();
    st.slices = slices.size();
    st.nodes = nodes.size();
  }

  // --------------------------------------------------------------- dumps --

  void dump(const DumpRecord& d) {
    if (d.phase == TW_DUMP_BEGIN) {
      dump_gen++;
      dump_ts = d.ts_ns;
      dump_count = 1;
      in_dump = true;
      return;
    }
    if (!in_dump) return;
    in_dump = false;
    st.dumps++;
    // The end marker counts the dump's records (its begin marker included).
    // Fewer here: some did not fit the segment, or could not be read. Then
    // what was not restated may well be alive: nothing ends.
    if (d.records != dump_count) {
      st.dumps_incomplete++;
      return;
    }
    // A dump is the whole state: what it did not restate ended (while no
    // sensor was there to see it go).
    const uint64_t ts = dump_ts;
    for (auto& [uid, p] : pods)
      if (p.deleted == kForever && p.dump_gen != dump_gen) {
        set_pod_ips(p, {}, ts, true);
        p.deleted = ts;
      }
    auto end_objects = [&](auto& m, auto&& release) {
      for (auto& [uid, e] : m)
        if (e.deleted == kForever && e.dump_gen != dump_gen) {
          release(e.obj, uid);
          e.deleted = ts;
        }
    };
    end_objects(services, [&](const ServiceObject& o, const std::string&) {
      for (auto& ip : o.cluster_ips) service_ips.close(ip, svc_name(o), ts);
    });
    end_objects(slices, [&](const EndpointSliceObject& o, const std::string& uid) {
      for (auto& ip : o.addresses) endpoint_ips.close(ip, slice_owner(o), ts, uid);
    });
    end_objects(nodes, [&](const NodeObject& o, const std::string&) {
      for (auto& ip : o.addresses) node_ips.close(ip, o.name, ts);
    });
    for (auto& [k, v] : sockets)
      for (auto& e : v)
        if (e.close == kForever && e.dump_gen != dump_gen) {
          e.close = std::max(ts, e.open);
          by_cookie.erase(e.cookie);
        }
    for (auto& [t, v] : procs)
      for (auto& e : v)
        if (e.end == kForever && e.dump_gen != dump_gen) e.end = std::max(ts, e.start);
  }

  // ------------------------------------------------------------- resolve --

  // Does the slice of an endpoint interval list `port`?
  bool slice_lists_port(const Interval& i, uint16_t port) const {
    auto s = slices.find(i.owner2);
    if (s == slices.end()) return false;
    for (auto& p : s->second.obj.ports)
      if (p.port == port) return true;
    return false;
  }

  // The service an address serves at ts: an EndpointSlice listing it (one
  // that lists `port` too first), else a Service's cluster IP. A node's
  // address (a hostNetwork pod's) is listed by the slices of every
  // hostNetwork pod of the node: there only the port tells them apart, and
  // a slice counts only if it lists the port (`by_port_only`).
  std::pair<std::string, std::string> service_of(const IpKey& ip, uint64_t ts, int port = -1,
                                                 bool by_port_only = false) const {
    const Interval* i = nullptr;
    if (port >= 0)
      i = endpoint_ips.at(ip, ts, lim.ip_future_slack_ns, lim.ip_past_slack_ns,
                          [&](const Interval& x) { return slice_lists_port(x, static_cast<uint16_t>(port)); });
    if (!i && !by_port_only) i = endpoint_ips.at(ip, ts, lim.ip_future_slack_ns, lim.ip_past_slack_ns);
    if (!i) i = service_ips.at(ip, ts, 0, 0);
    if (!i) return {};
    auto slash = i->owner.find('/');
    return {i->owner.substr(0, slash), i->owner.substr(slash + 1)};
  }

  void fill_pod(EndpointIdentity& id, const PodEntry& p, const std::string& container_id) const {
    id.pod = p.obj.name;
    id.namespace_ = p.obj.namespace_;
    id.node = p.obj.node;
    if (!p.obj.owner_kind.empty()) {
      id.workload_kind = p.obj.owner_kind;
      id.workload_name = p.obj.owner_name;
    } else {
      id.workload_kind = "Pod";
      id.workload_name = p.obj.name;
    }
    for (auto& c : p.obj.containers)
      if (!container_id.empty() && c.id == container_id) id.container = c.name;
  }

  static uint64_t cache_key(uint64_t a, uint64_t b) { return (a * 0x9e3779b97f4a7c15ull) ^ (b + 0x7f4a7c15ull); }

  EndpointIdentityPtr resolve(uint8_t l4, const IpKey& ip, uint16_t port, const IpKey& peer, uint16_t peer_port,
                              uint64_t ts) {
    // Everything below depends on ts (the process, the services of an
    // address): an identity is built for each call, and shared with the
    // previous call of the same socket or address if it came out the same.
    //
    // 1. A local socket: the process, and through its cgroup the container and pod.
    const SockEntry* s = find_socket(sock_key(l4, ip, port, &peer, peer_port), ts);
    if (!s) s = find_socket(sock_key(l4, ip, port, nullptr, 0), ts);
    if (s) {
      st.resolved_by_socket++;
      EndpointIdentity id;
      id.pid = s->tgid;
      // The process's name: its main thread's, as exec or the scan saw it; a
      // socket may be created by a thread with a name of its own.
      id.process = comm_string(s->comm);
      if (const ProcEntry* p = s->tgid ? find_process(s->tgid, ts) : nullptr) {
        id.exe = p->exe;
        if (!p->comm.empty()) id.process = p->comm;
      }
      const CgroupEntry* cg = nullptr;
      if (auto it = cgroups.find(s->cgroup); it != cgroups.end()) cg = &it->second;
      if (cg && cg->info.in_pod()) {
        id.container_id = cg->info.container_id;
        id.container = cg->info.container_id.substr(0, 12);
        if (auto p = pods.find(cg->info.pod_uid); p != pods.end()) {
          fill_pod(id, p->second, cg->info.container_id);
          // A hostNetwork pod shares the node's addresses: its service comes
          // from the slices listing its address and port.
          const bool host = p->second.obj.host_network;
          for (auto& pip : p->second.obj.ips) {
            auto [ns, svc] = service_of(pip, ts, port, host);
            if (!svc.empty()) {
              id.service = svc;
              break;
            }
          }
          if (id.service.empty()) id.service = service_of(ip, ts, port, host).second;
        }
      } else {
        id.node = self_node;  // a process of the node itself
      }
      if (id.node.empty()) id.node = self_node;
      return share(cache_key(s->cookie, 1), std::move(id));
    }
    // 2. An address: a pod's, a service's, a node's.
    const uint64_t ip_key = IpKeyHash{}(ip);
    if (const Interval* i = pod_ips.at(ip, ts, lim.ip_future_slack_ns, lim.ip_past_slack_ns)) {
      auto p = pods.find(i->owner);
      if (p != pods.end()) {
        st.resolved_by_ip++;
        EndpointIdentity id;
        fill_pod(id, p->second, {});
        id.service = service_of(ip, ts, port).second;
        return share(cache_key(ip_key, std::hash<std::string>{}(i->owner)), std::move(id));
      }
    }
    const Interval* n = node_ips.at(ip, ts, 0, 0);
    bool is_self = std::find(self_addresses.begin(), self_addresses.end(), ip) != self_addresses.end();
    // A node's address is in a slice only for a hostNetwork pod's service:
    // it is that service only at a port the slice lists.
    auto [svc_ns, svc] = service_of(ip, ts, port, n || is_self);
    if (svc.empty() && !n && !is_self) {
      st.unresolved++;
      return nullptr;
    }
    st.resolved_by_ip++;
    EndpointIdentity id;
    if (!svc.empty()) {
      id.service = svc;
      id.namespace_ = svc_ns;
    }
    if (n)
      id.node = n->owner;
    else if (is_self)
      id.node = self_node;
    return share(cache_key(ip_key, 3), std::move(id));
  }

  // --------------------------------------------------------------- prune --

  void prune(uint64_t now) {
    if (now <= lim.keep_ended_ns) return;
    const uint64_t before = now - lim.keep_ended_ns;
    for (auto it = sockets.begin(); it != sockets.end();) {
      auto& v = it->second;
      size_t n = v.size();
      v.erase(std::remove_if(v.begin(), v.end(), [&](const SockEntry& e) { return e.close != kForever && e.close < before; }),
              v.end());
      sock_count -= n - v.size();
      it = v.empty() ? sockets.erase(it) : std::next(it);
    }
    for (auto it = procs.begin(); it != procs.end();) {
      auto& v = it->second;
      size_t n = v.size();
      v.erase(std::remove_if(v.begin(), v.end(), [&](const ProcEntry& e) { return e.end != kForever && e.end < before; }),
              v.end());
      proc_count -= n - v.size();
      it = v.empty() ? procs.erase(it) : std::next(it);
    }
    auto drop_deleted = [&](auto& m) {
      for (auto it = m.begin(); it != m.end();)
        it = it->second.deleted != kForever && it->second.deleted < before ? m.erase(it) : std::next(it);
    };
    drop_deleted(pods);
    drop_deleted(services);
    drop_deleted(slices);
    drop_deleted(nodes);
    // The caps' arrival-order queues keep only entries that still name
    // something: without this they would grow with every socket, process
    // and object ever seen behind one that lives long.
    std::erase_if(sock_order, [&](const std::pair<SockKey, uint64_t>& o) {
      auto it = sockets.find(o.first);
      return it == sockets.end() ||
             std::none_of(it->second.begin(), it->second.end(), [&](const SockEntry& e) { return e.cookie == o.second; });
    });
    std::erase_if(proc_order, [&](const std::pair<uint32_t, uint64_t>& o) { return !find_entry(o.first, o.second); });
    std::erase_if(object_order, [&](const ObjRef& r) { return !object_current(r); });
    pod_ips.prune(before);
    service_ips.prune(before);
    endpoint_ips.prune(before);
    node_ips.prune(before);
    if (cache.size() > 100000) cache.clear();
    st.sockets = sock_count;
    st.processes = proc_count;
    st.pods = pods.size();
    st.services = services.size();
    st.slices = slices.size();
    st.nodes = nodes.size();
  }
};

IdentityTable::IdentityTable(TableLimits limits) : impl_(std::make_unique<Impl>()) { impl_->lim = limits; }
IdentityTable::~IdentityTable() = default;

void IdentityTable::apply(const IdentityRecord& r) {
  Impl& m = *impl_;
  m.st.records++;
  if (m.in_dump && !std::holds_alternative<DumpRecord>(r)) m.dump_count++;
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, SocketRecord>) {
          if (x.ev.type == TW_IDENT_SOCK_OPEN)
            m.add_socket(x.ev);
          else
            m.close_socket(x.ev.cookie, x.ev.ts_ns);
        } else if constexpr (std::is_same_v<T, ProcessRecord>) {
          m.add_process(x);
        } else if constexpr (std::is_same_v<T, CgroupRecord>) {
          m.add_cgroup(x);
        } else if constexpr (std::is_same_v<T, WorkloadRecord>) {
          m.apply_workload(x);
        } else {
          m.dump(x);
        }
      },
      r);
}

bool IdentityTable::apply(uint16_t type, std::span<const uint8_t> body) {
  auto r = decode_identity(type, body);
  if (!r) {
    impl_->st.invalid++;
    return false;
  }
  apply(*r);
  return true;
}

EndpointIdentityPtr IdentityTable::resolve(uint8_t l4, const IpKey& ip, uint16_t port, const IpKey& peer,
                                           uint16_t peer_port, uint64_t ts_ns) {
  return impl_->resolve(l4, ip, port, peer, peer_port, ts_ns);
}

const std::string& IdentityTable::node() const { return impl_->self_node; }
void IdentityTable::prune(uint64_t now_ns) { impl_->prune(now_ns); }
const TableStats& IdentityTable::stats() const { return impl_->st; }
std::map<std::string, KubeResourceState> IdentityTable::kube_state() const { return impl_->kube; }

std::vector<PodRow> IdentityTable::pods() const {
  std::vector<PodRow> out;
  for (auto& [uid, p] : impl_->pods) {
    if (p.deleted != kForever) continue;
    PodRow r;
    r.namespace_ = p.obj.namespace_;
    r.name = p.obj.name;
    r.uid = uid;
    r.node = p.obj.node;
    r.phase = p.obj.phase;
    r.workload_kind = p.obj.owner_kind.empty() ? "Pod" : p.obj.owner_kind;
    r.workload_name = p.obj.owner_kind.empty() ? p.obj.name : p.obj.owner_name;
    r.host_network = p.obj.host_network;
    r.first_seen_ns = p.first;
    std::set<std::string> svcs;
    for (auto& ip : p.obj.ips) {
      r.ips.push_back(ip.str());
      auto [ns, svc] = impl_->service_of(ip, UINT64_MAX - 1);
      if (!svc.empty()) svcs.insert(svc);
    }
    r.services.assign(svcs.begin(), svcs.end());
    for (auto& c : p.obj.containers) r.containers.push_back(c.name);
    out.push_back(std::move(r));
  }
  std::sort(out.begin(), out.end(),
            [](const PodRow& a, const PodRow& b) { return std::tie(a.namespace_, a.name) < std::tie(b.namespace_, b.name); });
  return out;
}

}  // namespace tapwire::identity
