// tapwire calls: query the dissection DB. tapwire tail: follow it live.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "call_db.hpp"
#include "commands.hpp"
#include "timefmt.hpp"

namespace tapwire::cli {
namespace {

using nlohmann::json;

std::string str(const json& j, const char* k) {
  auto it = j.find(k);
  if (it == j.end() || it->is_null()) return "";
  return it->is_string() ? it->get<std::string>() : it->dump();
}

// Identity strings come from processes and the API server: escape control
// bytes so that a call stays one line, and cut what is long (a field is
// bounded by the source, but not to what fits a line) at a UTF-8 boundary.
std::string printable(const std::string& s) {
  constexpr size_t kMax = 96;
  std::string out;
  for (size_t i = 0; i < s.size(); i++) {
    unsigned char ch = static_cast<unsigned char>(s[i]);
    if (out.size() >= kMax && (ch & 0xC0) != 0x80) {
      out += "...";
      break;
    }
    if (ch < 0x20 || ch == 0x7f) {
      char esc[5];
      std::snprintf(esc, sizeof esc, "\\x%02x", ch);
      out += esc;
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out;
}

// An end as namespace/pod when its pod is known, else ip:port; then its
// process name in parentheses when known.
std::string endpoint_label(const json& e) {
  std::string out;
  if (std::string pod = str(e, "pod"); !pod.empty()) {
    std::string ns = str(e, "namespace");
    out = ns.empty() ? printable(pod) : printable(ns) + "/" + printable(pod);
  } else {
    out = str(e, "ip") + ":" + str(e, "port");
  }
  auto p = e.find("process");
  if (p != e.end() && p->is_object())
    if (std::string name = str(*p, "name"); !name.empty()) out += " (" + printable(name) + ")";
  return out;
}

// One readable line per call.
std::string call_line(const json& c) {
  std::string ts = str(c, "ts");
  if (ts.size() > 23) ts = ts.substr(11, 12);  // HH:MM:SS.mmm
  const json& req = c["request"];
  const json& resp = c["response"];
  std::string what, result;
  if (str(c, "protocol") == "http") {
    if (req.is_object()) what = str(req, "method") + " " + str(req, "path");
    result = resp.is_object() ? str(resp, "status") : "-";
  } else {
    const json& q = req.is_object() ? req : resp;
    if (q.is_object()) what = str(q, "qtype") + " " + str(q, "qname");
    result = resp.is_object() ? str(resp, "rcode") : "-";
    if (resp.is_object() && resp.contains("answers") && resp["answers"].is_array() && !resp["answers"].empty())
      result += " " + resp["answers"][0].get<std::string>() +
                (resp["answers"].size() > 1 ? " (+" + std::to_string(resp["answers"].size() - 1) + ")" : "");
  }
  std::string dur = c["duration_us"].is_number() ? std::to_string(c["duration_us"].get<int64_t>()) + "us" : "-";
  std::string flags;
  for (auto& f : c["flags"]) flags += (flags.empty() ? " [" : ",") + f.get<std::string>();
  if (!flags.empty()) flags += "]";
  char buf[1024];
  std::snprintf(buf, sizeof buf, "%s %-4s %s -> %s  %s  %s  %s%s", ts.c_str(), str(c, "protocol").c_str(),
                endpoint_label(c["src"]).c_str(), endpoint_label(c["dst"]).c_str(), what.c_str(), result.c_str(),
                dur.c_str(), flags.c_str());
  return buf;
}

// --json: the full record. Identity strings are bytes from the node (a
// process name need not be UTF-8): replace what is not UTF-8 rather than
// fail on it.
std::string record_line(const json& c) { return c.dump(-1, ' ', false, json::error_handler_t::replace); }

struct CallsOptions {
  std::string db;
  std::string protocol;
  std::string status;
  std::string from, to;
  std::string namespace_, pod, service, process, node;
  size_t limit = 0;
  bool json = false;
};

int run_calls(const CallsOptions& o) {
  dissect::CallDb::Query q;
  q.protocol = o.protocol;
  q.limit = o.limit;
  if (!o.status.empty()) {
    const std::string& s = o.status;
    if (s.size() == 3 && s[0] >= '1' && s[0] <= '5' && (s.substr(1) == "xx" || s.substr(1) == "XX")) {
      q.status_class = s[0] - '0';
    } else {
      char* end = nullptr;
      long v = std::strtol(s.c_str(), &end, 10);
      if (s.empty() || *end || v < 100 || v > 999)
        throw CliError("bad --status", s, "give a status code such as 404 or a class such as 5xx");
      q.status = static_cast<int>(v);
    }
  }
  if (!o.from.empty()) {
    auto t = parse_time_arg(o.from, realtime_now_ns());
    if (!t.ns) throw CliError("bad --from", o.from, t.error);
    q.from_ns = *t.ns;
  }
  if (!o.to.empty()) {
    auto t = parse_time_arg(o.to, realtime_now_ns());
    if (!t.ns) throw CliError("bad --to", o.to, t.error);
    q.to_ns = *t.ns;
  }
  if (!o.pod.empty()) {
    if (std::string err = dissect::CallDb::regex_error(o.pod); !err.empty())
      throw CliError("bad --pod", printable(o.pod), "give a POSIX extended regex such as '^api-' (" + err + ")");
  }
  q.namespace_ = o.namespace_;
  q.pod_regex = o.pod;
  q.service = o.service;
  q.process = o.process;
  q.node = o.node;
  auto db = open_call_db(o.db);
  for (auto& c : db->query(q)) std::printf("%s\n", o.json ? record_line(c).c_str() : call_line(c).c_str());
  return 0;
}

std::atomic<bool> g_stop{false};
void on_stop(int) { g_stop = true; }

struct TailOptions {
  std::string data_dir, db;
  bool json = false;
  double seconds = 0;  // stop after this long (0: until interrupted)
};

int run_tail(const TailOptions& o) {
  std::string path = o.db.empty() ? o.data_dir + "/dissection.db" : o.db;
  signal(SIGINT, on_stop);
  signal(SIGTERM, on_stop);
  auto start = std::chrono::steady_clock::now();
  auto running = [&] {
    return !g_stop && (o.seconds <= 0 ||
                       std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < o.seconds);
  };
  // Wait for the DB: the dissector creates it when it starts.
  std::unique_ptr<dissect::CallDb> db;
  bool said = false;
  while (running() && !db) {
    if (access(path.c_str(), R_OK) == 0) {
      try {
        db = std::make_unique<dissect::CallDb>(path, true);
        break;
      } catch (const std::exception&) {
      }
    }
    if (!said) {
      std::fprintf(stderr, "tapwire: waiting for %s (is dissection running?)\n", path.c_str());
      said = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  if (!db) return 0;
  // From the end: tail shows what is dissected from now on.
  dissect::CallDb::Query q;
  q.after_rowid = db->max_rowid();
  q.limit = 1000;
  // While it watches, it counts as activity: dissection does not stop by
  // itself under a connected tail.
  const std::string sock = o.data_dir + "/control.sock";
  auto last_ping = std::chrono::steady_clock::now() - std::chrono::hours(1);
  while (running()) {
    if (std::chrono::steady_clock::now() - last_ping > std::chrono::seconds(10)) {
      control_call(sock, {{"cmd", "activity"}});
      last_ping = std::chrono::steady_clock::now();
    }
    auto rows = db->query(q, &q.after_rowid);
    for (auto& c : rows) std::printf("%s\n", o.json ? record_line(c).c_str() : call_line(c).c_str());
    std::fflush(stdout);
    if (rows.size() < q.limit) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return 0;
}

}  // namespace

std::unique_ptr<dissect::CallDb> open_call_db(const std::string& path) {
  if (access(path.c_str(), R_OK) != 0)
    throw CliError("cannot read the dissection DB", path, "give the --db that tapwire-dissector or tapwire dissect wrote");
  try {
    return std::make_unique<dissect::CallDb>(path, true);
  } catch (const std::exception&) {
    throw CliError("cannot open the dissection DB", path, "is it a tapwire dissection DB?");
  }
}

void register_calls(CLI::App& app, Action& action) {
  auto o = std::make_shared<CallsOptions>();
  CLI::App* sub = app.add_subcommand("calls", "Query the calls in a dissection DB");
  sub->add_option("--db", o->db, "the dissection DB")->required();
  sub->add_option("--protocol", o->protocol, "only this protocol (http, dns)");
  sub->add_option("--status", o->status, "only this HTTP status (404) or class (5xx)");
  sub->add_option("--from", o->from, "only calls at or after this time (RFC 3339, Unix seconds, -5m)");
  sub->add_option("--to", o->to, "only calls at or before this time");
  sub->add_option("--namespace", o->namespace_, "only calls with either end in this Kubernetes namespace")
      ->type_name("NS");
  sub->add_option("--pod", o->pod, "only calls with either end's pod matching this POSIX extended regex (unanchored)")
      ->type_name("REGEX");
  sub->add_option("--service", o->service, "only calls with either end in this Kubernetes service")
      ->type_name("NAME");
  sub->add_option("--process", o->process, "only calls with either end's process named so (its comm, e.g. nginx)")
      ->type_name("NAME");
  sub->add_option("--node", o->node, "only calls captured on this node or with an end on it")->type_name("NAME");
  sub->add_option("--limit", o->limit, "at most this many calls");
  sub->add_flag("--json", o->json, "one call record (JSON) per line");
  sub->callback([o, &action] { action = [o] { return run_calls(*o); }; });
}

void register_tail(CLI::App& app, Action& action) {
  auto o = std::make_shared<TailOptions>();
  CLI::App* sub = app.add_subcommand("tail", "Show calls live as they are dissected");
  add_data_dir_option(*sub, o->data_dir);
  sub->add_option("--db", o->db, "follow this dissection DB instead of DATA_DIR/dissection.db");
  sub->add_flag("--json", o->json, "one call record (JSON) per line");
  sub->add_option("--seconds", o->seconds, "stop after this many seconds");
  sub->callback([o, &action] { action = [o] { return run_tail(*o); }; });
}

}  // namespace tapwire::cli
