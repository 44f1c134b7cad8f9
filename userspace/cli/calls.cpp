// tapwire calls: query the dissection DB. tapwire tail: follow it live.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "call_db.hpp"
#include "protocol.hpp"
#include "commands.hpp"
#include "query.hpp"
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

// The record's protocol names, from the registry.
std::string protocol_list() {
  std::string out;
  for (const auto& p : proto::protocols()) out += (out.empty() ? "" : ", ") + std::string(p.name);
  return out;
}

// What --method, --path and --status match, protocol by protocol (the
// summary columns of docs/CALL_RECORD.md).
constexpr const char* kSummaryHelp = R"(Method, path and status by protocol (status -1: no response):
  http, http2  the request method, the target, the HTTP status
  grpc         Service/Method, the :path, the grpc-status
  ws           the opcode (text, binary, close, ping, pong), -, the close code
  dns          the query type (A, AAAA, ...), the name asked, the rcode (0: NOERROR)
  redis        the command (SET), its first argument, 0 or 1 for an error reply
  postgres     the SQL verb (SELECT) or STARTUP, CANCEL, ...; the table or statement; 0 or 1 for an error
  mysql        the SQL verb, connect or the command (COM_PING); the database, table or statement id;
               0 or the MySQL error code (1146)
  kafka        the API (Produce), the first topic or the group, the error code (0: NONE)
  amqp         the method (basic.publish), the queue or exchange/routing_key, the reply code (200 as 0)
  mongodb      the command (find), database.collection, 0 or the server's error code
  icmp         echo or the error's type (destination-unreachable), the address pinged or the error's
               code (port-unreachable), 0 for a reply or an error's type * 100 + code (303))";

// One readable line per call; `sum` (the DB's summary columns) says what
// was asked and how it ended for protocols without a line of their own.
std::string call_line(const json& c, const dissect::CallDb::Summary* sum = nullptr) {
  std::string ts = str(c, "ts");
  if (ts.size() > 23) ts = ts.substr(11, 12);  // HH:MM:SS.mmm
  const json& req = c["request"];
  const json& resp = c["response"];
  std::string what, result;
  const std::string protocol = str(c, "protocol");
  if (protocol == "http" || protocol == "http2") {
    if (req.is_object()) what = str(req, "method") + " " + str(req, "path");
    result = resp.is_object() ? (resp.contains("status") ? str(resp, "status") : "RST " + str(resp, "rst_stream")) : "-";
  } else if (protocol == "grpc") {
    const json& m = req.is_object() ? req : resp;
    if (m.is_object()) what = str(m, "service") + "/" + str(m, "method");
    result = resp.is_object() && resp.contains("grpc_status_name") ? str(resp, "grpc_status_name") : "-";
  } else if (protocol == "ws") {
    const bool from_client = req.is_object();
    const json& m = from_client ? req : resp;
    if (m.is_object()) what = std::string(from_client ? "> " : "< ") + str(m, "opcode") + " " + str(m, "size") + "B";
    result = m.is_object() && m.contains("close_code") ? str(m, "close_code") : "";
  } else if (protocol != "dns") {
    if (sum) {
      what = printable(sum->method) + (sum->path.empty() ? "" : " " + printable(sum->path));
      result = sum->status < 0 ? "-" : std::to_string(sum->status);
    }
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

// ------------------------------------------------------- calls --id ---

// Bytes of a text for a terminal: TAB and LF as they are, CRLF as LF, other
// C0 and C1 controls and DEL escaped (\x1b), so that a body or a header
// cannot drive the terminal. Text from the record is UTF-8.
std::string terminal_text(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); i++) {
    const unsigned char ch = static_cast<unsigned char>(s[i]);
    if (ch == '\r' && i + 1 < s.size() && s[i + 1] == '\n') continue;
    const bool c1 = ch == 0xc2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) >= 0x80 &&
                    static_cast<unsigned char>(s[i + 1]) <= 0x9f;  // U+0080..U+009F
    if ((ch < 0x20 && ch != '\t' && ch != '\n') || ch == 0x7f || c1) {
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\x%02x", c1 ? static_cast<unsigned char>(s[++i]) : ch);
      out += esc;
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out;
}

std::string base64_decode(const std::string& in) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  out.reserve(in.size() / 4 * 3);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    const int v = val(c);
    if (v < 0) continue;  // padding
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  return out;
}

// hexdump -C: offset, 16 bytes in hex, the printable ones as they are.
std::string hexdump(const std::string& b, size_t max_bytes) {
  std::string out;
  const size_t n = std::min(b.size(), max_bytes);
  for (size_t off = 0; off < n; off += 16) {
    char line[96];
    int len = std::snprintf(line, sizeof line, "  %08zx  ", off);
    std::string ascii;
    for (size_t i = 0; i < 16; i++) {
      if (off + i < n) {
        const unsigned char ch = static_cast<unsigned char>(b[off + i]);
        len += std::snprintf(line + len, sizeof line - static_cast<size_t>(len), "%02x ", ch);
        ascii += ch >= 0x20 && ch < 0x7f ? static_cast<char>(ch) : '.';
      } else {
        len += std::snprintf(line + len, sizeof line - static_cast<size_t>(len), "   ");
      }
      if (i == 7) line[len++] = ' ';
    }
    line[len] = 0;
    out += line;
    out += " |" + ascii + "|\n";
  }
  if (b.size() > n)
    out += "  ... " + std::to_string(b.size() - n) + " more bytes (--json has the whole body, base64)\n";
  return out;
}

std::string num(const json& j, const char* k) {
  auto it = j.find(k);
  return it != j.end() && it->is_number() ? it->dump() : "";
}

// An end in full: address, then each identity field known.
std::string endpoint_detail(const json& e) {
  std::string out = str(e, "ip");
  out = (out.find(':') != std::string::npos ? "[" + out + "]" : out) + ":" + str(e, "port");
  auto add = [&](const std::string& label, const std::string& v) {
    if (!v.empty()) out += "  " + label + " " + printable(v);
  };
  std::string pod = str(e, "pod"), ns = str(e, "namespace");
  add("pod", ns.empty() ? pod : pod.empty() ? "" : ns + "/" + pod);
  if (pod.empty()) add("namespace", ns);
  add("container", str(e, "container"));
  auto w = e.find("workload");
  if (w != e.end() && w->is_object()) add("workload", str(*w, "kind") + "/" + str(*w, "name"));
  add("service", str(e, "service"));
  add("node", str(e, "node"));
  auto p = e.find("process");
  if (p != e.end() && p->is_object()) {
    std::string proc = str(*p, "name");
    std::string more;
    if (std::string pid = num(*p, "pid"); !pid.empty()) more = "pid " + pid;
    if (std::string exe = str(*p, "exe"); !exe.empty()) more += (more.empty() ? "" : ", ") + printable(exe);
    add("process", proc.empty() ? more : more.empty() ? proc : proc + " (" + more + ")");
  }
  if (std::string id = str(e, "container_id"); !id.empty()) add("container_id", id);
  return out;
}

// One message's headers and body, curl -v style: `mark` ("> " or "< ")
// before the start line and each header.
std::string message_detail(const json& m, const std::string& start_line, const std::string& mark) {
  std::string out = mark + terminal_text(start_line) + "\n";
  auto hs = m.find("headers");
  if (hs != m.end() && hs->is_object())
    for (auto it = hs->begin(); it != hs->end(); ++it)
      out += mark + terminal_text(it.key()) + ": " +
             terminal_text(it.value().is_string() ? it.value().get<std::string>() : it.value().dump()) + "\n";
  out += mark + "\n";
  const std::string size = num(m, "body_size");
  std::string about = "body: " + (size.empty() ? "0" : size) + " bytes";
  if (std::string ce = str(m, "content_encoding"); !ce.empty())
    about += " " + printable(ce) + ", " + num(m, "body_decoded_size") + " decoded";
  auto body = m.find("body");
  if (body != m.end() && body->is_string()) {
    const std::string& b = body->get_ref<const std::string&>();
    if (str(m, "body_encoding") == "base64") {
      const std::string bytes = base64_decode(b);
      out += hexdump(bytes, 1024);
      about += "; binary, " + std::to_string(bytes.size()) + " kept";
    } else {
      out += terminal_text(b);
      if (!b.empty() && b.back() != '\n') out += "\n";
      about += "; text, " + std::to_string(b.size()) + " kept";
    }
  } else if (size.empty() || size == "0") {
    return out;  // no body
  } else {
    about += "; none kept";
  }
  return out + "(" + about + ")\n";
}

// `tapwire calls --id ID`: one call, whole.
std::string call_detail(const json& c) {
  std::string out = "call " + str(c, "id") + "  " + str(c, "protocol") + "\n";
  const std::string ts = str(c, "ts");
  out += "  time      " + ts;
  if (c["duration_us"].is_number()) {
    const int64_t us = c["duration_us"].get<int64_t>();
    char d[64];
    std::snprintf(d, sizeof d, "  duration %" PRId64 " us (%.3f ms)", us, static_cast<double>(us) / 1000.0);
    out += d;
  } else {
    out += "  no response";
  }
  out += "\n";
  out += "  client    " + endpoint_detail(c["src"]) + "\n";
  out += "  server    " + endpoint_detail(c["dst"]) + "\n";
  if (std::string node = str(c, "node"); !node.empty()) out += "  captured  on node " + printable(node) + "\n";
  std::string flags;
  for (auto& f : c["flags"]) flags += (flags.empty() ? "" : ", ") + f.get<std::string>();
  out += "  flags     " + (flags.empty() ? std::string("none") : flags) + "\n";
  const json& req = c["request"];
  const json& resp = c["response"];
  if (str(c, "protocol") == "http" || str(c, "protocol") == "http2") {
    const std::string version =
        req.is_object() ? str(req, "version") : str(c, "protocol") == "http2" ? "HTTP/2" : "HTTP/1.1";
    out += "\n";
    if (req.is_object())
      out += message_detail(req, str(req, "method") + " " + str(req, "path") + " " + version, "> ");
    else
      out += "> (request not seen)\n";
    out += "\n";
    if (resp.is_object())
      out += message_detail(resp, version + " " + str(resp, "status") + " " + str(resp, "reason"), "< ");
    else
      out += "< (no response)\n";
  } else {
    // DNS and what else comes: the request and response objects as they are.
    out += "\n> " + terminal_text(req.dump(2, ' ', false, json::error_handler_t::replace)) + "\n";
    out += "< " + terminal_text(resp.dump(2, ' ', false, json::error_handler_t::replace)) + "\n";
  }
  return out;
}

// --json: the full record. Identity strings are bytes from the node (a
// process name need not be UTF-8): replace what is not UTF-8 rather than
// fail on it.
std::string record_line(const json& c) { return c.dump(-1, ' ', false, json::error_handler_t::replace); }

struct CallsOptions {
  std::string db;
  std::string protocol;
  std::string status;
  std::string method, path;
  std::string from, to;
  std::string namespace_, pod, service, process, node;
  std::string id;
  std::string filter;  // the query language (docs/QUERY.md)
  size_t limit = 0;
  bool json = false;
};

int run_calls(const CallsOptions& o) {
  dissect::CallDb::Query q;
  q.protocol = o.protocol;
  q.limit = o.limit;
  q.method = o.method;
  if (!o.status.empty()) {
    const std::string& s = o.status;
    if (s.size() == 3 && s[0] >= '1' && s[0] <= '5' && (s.substr(1) == "xx" || s.substr(1) == "XX")) {
      q.status_class = s[0] - '0';
    } else {
      char* end = nullptr;
      errno = 0;
      long v = std::strtol(s.c_str(), &end, 10);
      if (s.empty() || *end || errno || v < -1 || v > INT32_MAX)
        throw CliError("bad --status", s,
                       "give a status such as 404 (-1: calls without a response) or a class such as 5xx");
      q.status = static_cast<int>(v);
    }
  }
  if (!o.path.empty()) {
    if (std::string err = dissect::CallDb::regex_error(o.path); !err.empty())
      throw CliError("bad --path", printable(o.path), "give a POSIX extended regex such as '^/api/' (" + err + ")");
    q.path_regex = o.path;
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
  if (!o.id.empty()) {
    std::string id = o.id;
    for (char& ch : id)
      if (ch >= 'A' && ch <= 'F') ch = static_cast<char>(ch + 32);
    if (id.size() != 16 || id.find_first_not_of("0123456789abcdef") != std::string::npos)
      throw CliError("bad --id", printable(o.id), "give a call id: 16 hex digits, as `tapwire calls --json` shows");
    q.id = id;
  }
  auto bad_filter = [&](const serve::QueryError& e) {
    return CliError("bad --filter", printable(o.filter), std::string(e.what()) + " (docs/QUERY.md)");
  };
  serve::ExprPtr filter;
  if (!o.filter.empty()) {
    try {
      filter = serve::parse(o.filter);
    } catch (const serve::QueryError& e) {
      throw bad_filter(e);
    }
  }
  auto db = open_call_db(o.db);
  if (filter) {
    // Compiled for this DB's schema (an older one lacks columns), with the
    // parameters after those query() binds; tw_regexp for `matches`.
    serve::CompileOptions co;
    serve::detect_columns(db->handle(), co);
    co.first_param = dissect::CallDb::kFirstExtraParam;
    auto compiled = std::make_shared<serve::CompiledQuery>();
    try {
      *compiled = serve::compile(*filter, co);
    } catch (const serve::QueryError& e) {
      throw bad_filter(e);
    }
    if (serve::register_functions(db->handle()) != 0)
      throw CliError("cannot query the dissection DB", o.db, "SQLite refused the regex function");
    q.extra_where = compiled->where;
    q.bind_extra = [compiled](sqlite3_stmt* st) {
      if (serve::bind(st, *compiled) != 0) throw std::runtime_error("cannot bind the filter's values");
    };
  }
  std::vector<dissect::CallDb::Summary> sums;
  std::vector<json> calls;
  try {
    calls = db->query(q, nullptr, &sums);
  } catch (const std::runtime_error& e) {
    // What a filter can still fail on as it runs: a regex that backtracks
    // past its limit on some value.
    if (o.filter.empty()) throw;
    throw CliError("--filter failed", printable(o.filter), e.what());
  }
  if (!o.id.empty()) {
    if (calls.empty()) throw CliError("no call with this id", q.id, "in " + o.db + " (with the filters given)");
    std::string sep;
    for (auto& c : calls) {
      std::printf("%s%s", sep.c_str(), o.json ? (record_line(c) + "\n").c_str() : call_detail(c).c_str());
      if (!o.json) sep = "\n";
    }
    return 0;
  }
  for (size_t i = 0; i < calls.size(); i++)
    std::printf("%s\n", o.json ? record_line(calls[i]).c_str() : call_line(calls[i], &sums[i]).c_str());
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
    std::vector<dissect::CallDb::Summary> sums;
    auto rows = db->query(q, &q.after_rowid, &sums);
    for (size_t i = 0; i < rows.size(); i++)
      std::printf("%s\n", o.json ? record_line(rows[i]).c_str() : call_line(rows[i], &sums[i]).c_str());
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
  sub->add_option("--protocol", o->protocol, "only this protocol (" + protocol_list() + ")")->type_name("NAME");
  sub->add_option("--method", o->method, "only calls that asked this (case-insensitive; per protocol below)")
      ->type_name("METHOD");
  sub->add_option("--path", o->path, "only calls whose path matches this POSIX extended regex (unanchored)")
      ->type_name("REGEX");
  sub->add_option("--status", o->status,
                  "only this status (404, 0, -1 for no response) or HTTP status class (5xx)")
      ->type_name("N|Nxx");
  sub->footer(kSummaryHelp);
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
  sub->add_option("--id", o->id,
                  "print this call whole: start lines, headers, bodies, timing, both ends, flags "
                  "(with --json: its call record)")
      ->type_name("ID");
  sub->add_option("--filter", o->filter,
                  "only calls matching this expression, e.g. 'http and response.status >= 500 and "
                  "dst.namespace == \"shop\"' (the query language: docs/QUERY.md)")
      ->type_name("EXPR");
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
