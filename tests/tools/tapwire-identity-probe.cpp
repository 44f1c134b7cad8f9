// tapwire-identity-probe: runs the identity collector (bpf/identity.bpf.c) and
// prints every event as one JSON line on stdout, until SIGINT/SIGTERM or
// --seconds. tests/integration/test_identity_bpf.py compares its output with
// the processes, cgroups and connections it made itself.
//
//   {"type":"ready","cgroup2":"/sys/fs/cgroup","prog_ids":[…],"pid":N}   hooks attached
//   {"type":"process",…}                                                 --scan: /proc at start
//   {"type":"sock_open"|"sock_close","ts_ns":…,"cookie":…,"tgid":…,"pid":…,"comm":…,
//    "cgroup_id":…,"cgroup":"/…"|null,"netns_cookie":…,"l4":"tcp"|"udp","ip_version":4|6,
//    "local":"ip:port","remote":"ip:port","laddr","lport","raddr","rport","flags":[…]}
//   {"type":"exec"|"exit","ts_ns":…,"tgid":…,"ppid":…,"comm":…,"cgroup_id":…,"cgroup":…,"filename":…}
//   {"type":"counters","emitted":{…},"drops":{…},"invalid_records":N}       at the end
// --quiet drains without printing events (benchmarks).
// Errors: one line on stderr, exit status 1.
#include <arpa/inet.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <string>

#include "identity_collector.hpp"
#include "tapwire_abi.hpp"

using nlohmann::json;
using tapwire::sensor::IdentityCollector;

namespace {

volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

std::string ip_str(const uint8_t* a, uint8_t ver) {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(ver == 6 ? AF_INET6 : AF_INET, a, buf, sizeof buf);
  return buf;
}

std::string endpoint(const uint8_t* a, uint16_t port, uint8_t ver) {
  return ver == 6 ? "[" + ip_str(a, ver) + "]:" + std::to_string(port) : ip_str(a, ver) + ":" + std::to_string(port);
}

void print(const json& j) {
  // Comm and paths may hold bytes that are not UTF-8.
  std::string s = j.dump(-1, ' ', false, json::error_handler_t::replace);
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);  // the test reads lines as they come
}

json cgroup_json(IdentityCollector& c, uint64_t id) {
  auto p = c.cgroup_path(id);
  return p ? json(*p) : json(nullptr);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tapwire-identity-probe: print the identity programs' events as JSON lines"};
  double seconds = 0;
  bool scan = false, quiet = false;
  uint32_t ring_bytes = 4u << 20;
  uint64_t wakeup_bytes = 64u << 10;
  std::string cgroup2;
  app.add_option("--seconds", seconds, "stop after this many seconds (0: at SIGINT/SIGTERM)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--scan", scan, "print the processes in /proc first");
  app.add_flag("--quiet", quiet, "drain but print only the ready and counters lines (for benchmarks)");
  app.add_option("--ring-bytes", ring_bytes, "ring buffer size")->check(CLI::Range(4096u, 1u << 30));
  app.add_option("--wakeup-bytes", wakeup_bytes, "queued bytes that wake the reader");
  app.add_option("--cgroup2", cgroup2, "cgroup v2 mount point (default: from /proc/self/mountinfo)");
  bool no_skb_netns = false;
  app.add_flag("--no-skb-netns-helper", no_skb_netns,
               "find the netns of sockets older than the hooks as kernels without the cgroup_skb helper must (tests)");
  CLI11_PARSE(app, argc, argv);

  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  try {
    tapwire::sensor::IdentityOptions opt;
    opt.ring_bytes = ring_bytes;
    opt.wakeup_bytes = wakeup_bytes;
    opt.cgroup2_mount = cgroup2;
    opt.skb_netns_cookie_helper = !no_skb_netns;
    IdentityCollector c(opt);
    print({{"type", "ready"}, {"cgroup2", c.cgroup2_mount()}, {"prog_ids", c.prog_ids()},
           {"ring_bytes", c.ring_bytes()}, {"pid", getpid()}});
    if (scan) {
      for (auto& p : c.scan_processes())
        print({{"type", "process"}, {"tgid", p.tgid}, {"ppid", p.ppid}, {"comm", p.comm}, {"exe", p.exe},
               {"cgroup_id", p.cgroup_id}, {"cgroup", p.cgroup_path}});
    }

    auto on_sock = [&](const tw_sock_event& e) {
      if (quiet) return;
      json flags = json::array();
      if (e.flags & TW_SOCK_F_NO_CREATOR) flags.push_back("no_creator");
      if (e.flags & TW_SOCK_F_ACCEPTED) flags.push_back("accepted");
      if (e.flags & TW_SOCK_F_UNCONNECTED) flags.push_back("unconnected");
      print({{"type", tapwire::sensor::ident_event_name(e.type)},
             {"ts_ns", e.ts_ns},
             {"cookie", e.cookie},
             {"tgid", e.tgid},
             {"pid", e.pid},
             {"comm", std::string(e.comm)},
             {"cgroup_id", e.cgroup_id},
             {"cgroup", cgroup_json(c, e.cgroup_id)},
             {"netns_cookie", e.netns_cookie},
             {"l4", tapwire::abi::l4_name(e.l4_proto)},
             {"ip_version", e.ip_version},
             {"local", endpoint(e.laddr, e.lport, e.ip_version)},
             {"remote", endpoint(e.raddr, e.rport, e.ip_version)},
             {"laddr", ip_str(e.laddr, e.ip_version)},
             {"lport", e.lport},
             {"raddr", ip_str(e.raddr, e.ip_version)},
             {"rport", e.rport},
             {"flags", flags}});
    };
    auto on_exec = [&](const tw_exec_event& e) {
      if (quiet) return;
      json j = {{"type", tapwire::sensor::ident_event_name(e.type)},
                {"ts_ns", e.ts_ns},
                {"tgid", e.tgid},
                {"ppid", e.ppid},
                {"comm", std::string(e.comm)},
                {"cgroup_id", e.cgroup_id},
                {"cgroup", cgroup_json(c, e.cgroup_id)}};
      if (e.type == TW_IDENT_EXEC) j["filename"] = std::string(e.filename, e.filename_len);
      print(j);
    };

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) throw std::runtime_error(std::string("epoll_create1: ") + std::strerror(errno));
    epoll_event ev{};
    ev.events = EPOLLIN;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c.ring_fd(), &ev) != 0)
      throw std::runtime_error(std::string("cannot poll the identity ring: ") + std::strerror(errno));
    const auto start = std::chrono::steady_clock::now();
    while (!g_stop) {
      if (seconds > 0 && std::chrono::steady_clock::now() - start >= std::chrono::duration<double>(seconds)) break;
      epoll_event out{};
      // The programs batch wakeups: drain on a 50 ms timer as well.
      epoll_wait(ep, &out, 1, 50);
      c.drain(on_sock, on_exec);
    }
    c.drain(on_sock, on_exec);
    close(ep);
    auto k = c.counters();
    json emitted = json::object(), drops = json::object();
    for (unsigned t = 1; t < k.emitted.size(); t++)
      if (auto n = tapwire::sensor::ident_event_name(t); !n.empty()) emitted[std::string(n)] = k.emitted[t];
    for (size_t r = 0; r < k.drops.size(); r++) drops[std::string(tapwire::sensor::kIdentDropNames[r])] = k.drops[r];
    print({{"type", "counters"}, {"emitted", emitted}, {"drops", drops}, {"invalid_records", k.invalid_records}});
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tapwire-identity-probe: %s\n", e.what());
    return 1;
  }
  return 0;
}
