#include "config.hpp"
#include "cidr.hpp"

#include <arpa/inet.h>
#include <regex.h>
#include <sys/un.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "duration.hpp"
#include "units.hpp"

namespace tapwire::config {

namespace {

std::string compose(const std::string& file, int line, const std::string& key, const std::string& problem) {
  std::string s = file;
  if (line > 0) s += ":" + std::to_string(line);
  s += ": ";
  if (!key.empty()) s += key + ": ";
  s += problem;
  // what() is one line: a key or value quoted in it may hold line breaks
  // (a multi-line YAML scalar) or other control characters, written as
  // escapes (tests/fuzz/regressions/config).
  std::string out;
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\n') {
      out += "\\n";
    } else if (u < 0x20 || u == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 15];
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

ConfigError::ConfigError(std::string file, int line, std::string key, std::string problem)
    : std::runtime_error(compose(file, line, key, problem)),
      file_(std::move(file)),
      key_(std::move(key)),
      problem_(std::move(problem)),
      line_(line) {}

std::string TapwireConfig::control_socket_path() const {
  if (!control_socket.empty()) return control_socket;
  return (std::filesystem::path(data_dir) / "control.sock").string();
}

const std::vector<std::string>& known_dissectors() {
  // The protocol registry's dissector names (userspace/protocols/registry.cpp;
  // a unit test keeps the two lists equal), then flow accounting's.
  static const std::vector<std::string> names = {"http", "ws", "amqp", "postgres", "mysql", "mongodb", "kafka", "redis", "dns", "icmp", "tcp", "udp"};
  return names;
}

const std::vector<std::string>& flow_dissectors() {
  static const std::vector<std::string> names = {"tcp", "udp"};
  return names;
}

namespace {

// ----------------------------------------------------------------- values --

// One value being read: the node, where it is, and how to complain about it.
struct Value {
  const YAML::Node& node;
  const std::string& key;    // dotted path
  const std::string& file;
  YAML::Mark key_mark;       // where the key is, for values without a mark of their own

  int line_of(const YAML::Node& n) const {
    // A missing value ("key:" alone) is marked where the next token starts: use the key's line.
    YAML::Mark m = n.IsNull() ? key_mark : n.Mark();
    if (m.is_null() || m.line < 0) m = key_mark;
    return m.is_null() || m.line < 0 ? 0 : m.line + 1;
  }
  [[noreturn]] void fail(const std::string& problem) const { fail_at(node, problem); }
  [[noreturn]] void fail_at(const YAML::Node& n, const std::string& problem) const {
    throw ConfigError(file, line_of(n), key, problem);
  }
};

std::string describe(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Scalar: return "'" + n.Scalar() + "'";
    default: return "no value";
  }
}

const std::string& scalar(const Value& v, const YAML::Node& n, const char* expected) {
  if (!n.IsScalar()) v.fail_at(n, std::string("expected ") + expected + ", got " + describe(n));
  return n.Scalar();
}

bool read_bool(const Value& v) {
  const std::string& s = scalar(v, v.node, "true or false");
  bool out = false;
  if (!YAML::convert<bool>::decode(v.node, out)) v.fail("expected true or false, got '" + s + "'");
  return out;
}

std::string read_string(const Value& v, bool may_be_empty) {
  const std::string& s = scalar(v, v.node, "a string");
  if (!may_be_empty && s.empty()) v.fail("must not be empty");
  return s;
}

// A size: bytes, or a number with a binary unit (Ki/KiB/K, Mi, Gi, Ti; case-insensitive).
uint64_t read_size(const Value& v, uint64_t min, uint64_t max) {
  const std::string& s = scalar(v, v.node, "a size (like 1Gi, 500Mi or 4096)");
  auto first = s.find_first_not_of(" \t");
  if (first != std::string::npos && s[first] == '-')
    v.fail(std::string(min > 0 ? "must be positive" : "must not be negative") + ", got '" + s + "'");
  auto n = parse_size(s);
  if (!n) v.fail("not a size: '" + s + "' (examples: 1Gi, 500Mi, 64MiB, 4096)");
  if (*n < min) v.fail(min == 1 ? "must be positive, got '" + s + "'" : "must be at least " + format_size(min) + ", got '" + s + "'");
  if (*n > max) v.fail("must be at most " + format_size(max) + ", got '" + s + "'");
  return *n;
}

std::chrono::nanoseconds read_duration(const Value& v) {
  const std::string& s = scalar(v, v.node, "a duration (like 5m, 30s or 0)");
  auto d = parse_duration(s);
  if (!d) {
    if (s.find_first_not_of(" \t") != std::string::npos && s[s.find_first_not_of(" \t")] == '-')
      v.fail("a duration must not be negative, got '" + s + "'");
    v.fail("bad duration '" + s + "': expected a number with a unit (ms, s, m, h), like 5m, 30s, 1h30m, or 0");
  }
  return *d;
}

// A duration in whole seconds, between min_s and max_s.
std::chrono::seconds read_seconds(const Value& v, int64_t min_s, int64_t max_s) {
  auto d = read_duration(v);
  if (d < std::chrono::seconds(min_s) || d > std::chrono::seconds(max_s))
    v.fail("must be between " + format_duration(std::chrono::seconds(min_s)) + " and " +
           format_duration(std::chrono::seconds(max_s)) + ", got '" + v.node.Scalar() + "'");
  if (d % std::chrono::seconds(1) != std::chrono::nanoseconds(0))
    v.fail("must be whole seconds, got '" + v.node.Scalar() + "'");
  return std::chrono::duration_cast<std::chrono::seconds>(d);
}

// A list; a key without a value ("allow:") is an empty list.
std::vector<YAML::Node> read_list(const Value& v, const char* of_what) {
  std::vector<YAML::Node> out;
  if (v.node.IsNull()) return out;
  if (!v.node.IsSequence()) v.fail(std::string("expected a list of ") + of_what + ", got " + describe(v.node));
  for (const auto& item : v.node) out.push_back(item);
  return out;
}

// The same test as the sensor's interface selector: a pattern with a regex
// metacharacter is a POSIX extended regex, anything else an interface name.
bool looks_like_regex(const std::string& s) { return s.find_first_of("^$*+?()[]{}|\\") != std::string::npos; }

std::vector<std::string> read_interfaces(const Value& v) {
  std::vector<std::string> out;
  for (const auto& item : read_list(v, "interface names or regular expressions")) {
    const std::string& s = scalar(v, item, "an interface name or regular expression");
    if (s.empty()) v.fail_at(item, "an empty interface name");
    if (looks_like_regex(s)) {
      // POSIX regcomp, the grammar std::regex::extended implements (the sensor's matcher);
      // std::regex itself trips GCC 12's -Wmaybe-uninitialized in sanitizer builds.
      regex_t re;
      if (int rc = regcomp(&re, s.c_str(), REG_EXTENDED | REG_NOSUB); rc != 0) {
        char why[128];
        regerror(rc, &re, why, sizeof why);
        v.fail_at(item, "bad regular expression '" + s + "': " + why);
      }
      regfree(&re);
    } else if (s.size() >= 16) {  // IFNAMSIZ
      v.fail_at(item, "'" + s + "' is too long for an interface name (at most 15 characters)");
    }
    out.push_back(s);
  }
  return out;
}

// IPv4 or IPv6, optional /prefix (parse_cidr, as the sensor reads them).
std::vector<std::string> read_cidrs(const Value& v) {
  std::vector<std::string> out;
  for (const auto& item : read_list(v, "CIDRs")) {
    const std::string& s = scalar(v, item, "a CIDR (like 10.0.0.0/8 or fd00::/8)");
    try {
      parse_cidr(s);
    } catch (const CidrError& e) {
      v.fail_at(item, e.what());
    }
    out.push_back(s);
  }
  return out;
}

std::optional<long> parse_decimal(const std::string& s) {
  if (s.empty() || s.size() > 10) return std::nullopt;
  size_t i = s[0] == '-' || s[0] == '+' ? 1 : 0;
  if (i == s.size() || s.find_first_not_of("0123456789", i) != std::string::npos) return std::nullopt;
  return std::stol(s);
}

std::vector<uint16_t> read_ports(const Value& v) {
  std::vector<uint16_t> out;
  for (const auto& item : read_list(v, "ports")) {
    const std::string& s = scalar(v, item, "a port number");
    auto n = parse_decimal(s);
    if (!n) v.fail_at(item, "expected a port number 1-65535, got '" + s + "'");
    if (*n < 1 || *n > 65535) v.fail_at(item, "port out of range (1-65535): " + s);
    out.push_back(static_cast<uint16_t>(*n));
  }
  return out;
}

std::vector<std::string> read_dissectors(const Value& v) {
  std::vector<std::string> out;
  const auto& known = known_dissectors();
  for (const auto& item : read_list(v, "dissector names")) {
    const std::string& s = scalar(v, item, "a dissector name");
    if (std::find(known.begin(), known.end(), s) == known.end()) {
      std::string list;
      for (auto& k : known) list += (list.empty() ? "" : ", ") + k;
      v.fail_at(item, "unknown dissector '" + s + "' (this build has: " + list + ")");
    }
    if (std::find(out.begin(), out.end(), s) == out.end()) out.push_back(s);
  }
  return out;
}

// tap.grpc.protoPaths: .proto files or directories that exist (the
// dissector compiles them when it starts, and refuses a schema that does
// not compile).
std::vector<std::string> read_proto_paths(const Value& v) {
  std::vector<std::string> out;
  for (const auto& item : read_list(v, "paths")) {
    const std::string& s = scalar(v, item, "a path to a .proto file or a directory");
    std::error_code ec;
    if (s.empty() || !std::filesystem::exists(s, ec)) v.fail_at(item, "no such file or directory: '" + s + "'");
    if (s.find(',') != std::string::npos) v.fail_at(item, "a path with a comma is not supported: '" + s + "'");
    out.push_back(s);
  }
  return out;
}

// A POSIX extended regex, as the sensor's matcher compiles it.
std::string read_regex(const Value& v) {
  std::string s = read_string(v, true);
  regex_t re;
  if (int rc = regcomp(&re, s.c_str(), REG_EXTENDED | REG_NOSUB); rc != 0) {
    char why[128];
    regerror(rc, &re, why, sizeof why);
    v.fail("bad regular expression '" + s + "': " + why);
  }
  regfree(&re);
  return s;
}

// Kubernetes namespace names: DNS labels (RFC 1123), at most 63 characters.
std::vector<std::string> read_namespaces(const Value& v) {
  std::vector<std::string> out;
  for (const auto& item : read_list(v, "namespace names")) {
    const std::string& s = scalar(v, item, "a namespace name");
    bool ok = !s.empty() && s.size() <= 63 && s.front() != '-' && s.back() != '-';
    for (char ch : s) ok = ok && ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-');
    if (!ok) v.fail_at(item, "'" + s + "' is not a namespace name (lower-case letters, digits and '-', at most 63)");
    out.push_back(s);
  }
  return out;
}

// HOST:PORT, [V6]:PORT or :PORT.
std::string read_listen_address(const Value& v) {
  std::string s = read_string(v, true);
  if (s.empty()) return s;  // "": no metrics endpoint
  auto colon = s.rfind(':');
  if (colon == std::string::npos)
    v.fail("expected HOST:PORT or :PORT (like 127.0.0.1:7477 or :7477), got '" + s + "'");
  std::string host = s.substr(0, colon);
  auto port = parse_decimal(s.substr(colon + 1));
  if (!port || *port < 1 || *port > 65535) v.fail("the port of '" + s + "' must be a number 1-65535");
  if (!host.empty() && host.front() == '[') {
    unsigned char buf[16];
    if (host.back() != ']' || inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), buf) != 1)
      v.fail("bad IPv6 address in '" + s + "'");
  } else if (host.find(':') != std::string::npos) {
    v.fail("write an IPv6 address in brackets, like [::1]:7477, got '" + s + "'");
  }
  return s;
}

std::string read_socket_path(const Value& v) {
  std::string s = read_string(v, true);
  if (s.size() >= sizeof(sockaddr_un::sun_path))
    v.fail("a unix socket path is at most " + std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes");
  return s;
}

// ----------------------------------------------------------------- schema --

using Setter = void (*)(const Value&, TapwireConfig&);
struct Field {
  const char* key;
  Setter set;
};

constexpr uint64_t kMiB = 1ull << 20;

// Every key, in file order. known_keys(), the loader and the suggestions all
// come from this one table.
const Field kFields[] = {
    {"tap.dataDir", [](const Value& v, TapwireConfig& c) { c.data_dir = read_string(v, false); }},
    {"tap.controlSocket", [](const Value& v, TapwireConfig& c) { c.control_socket = read_socket_path(v); }},
    {"tap.interfaces", [](const Value& v, TapwireConfig& c) { c.interfaces = read_interfaces(v); }},
    {"tap.snaplen",
     [](const Value& v, TapwireConfig& c) {
       c.snaplen = static_cast<uint32_t>(read_size(v, 0, std::numeric_limits<uint32_t>::max()));
     }},
    {"tap.filters.cidrs.allow", [](const Value& v, TapwireConfig& c) { c.filters.allow_cidrs = read_cidrs(v); }},
    {"tap.filters.cidrs.deny", [](const Value& v, TapwireConfig& c) { c.filters.deny_cidrs = read_cidrs(v); }},
    {"tap.filters.ports.allow", [](const Value& v, TapwireConfig& c) { c.filters.allow_ports = read_ports(v); }},
    {"tap.filters.ports.deny", [](const Value& v, TapwireConfig& c) { c.filters.deny_ports = read_ports(v); }},
    {"tap.capture.stopped", [](const Value& v, TapwireConfig& c) { c.capture.stopped = read_bool(v); }},
    {"tap.capture.attach",
     [](const Value& v, TapwireConfig& c) {
       c.capture.attach = read_string(v, false);
       if (c.capture.attach != "auto" && c.capture.attach != "tc" && c.capture.attach != "tcx")
         v.fail("must be auto, tc or tcx, got '" + c.capture.attach + "'");
     }},
    {"tap.capture.dbMaxSize",
     [](const Value& v, TapwireConfig& c) {
       c.capture.db_max_size = read_size(v, 0, UINT64_MAX);
       if (c.capture.db_max_size != 0 && c.capture.db_max_size < kMiB)
         v.fail("must be 0 (no bound) or at least 1Mi, got '" + v.node.Scalar() + "'");
     }},
    {"tap.capture.raw.enabled", [](const Value& v, TapwireConfig& c) { c.capture.raw.enabled = read_bool(v); }},
    // Minimums and maximums are the sensor's flag checks and the segment store's floor.
    {"tap.capture.raw.storageSize",
     [](const Value& v, TapwireConfig& c) { c.capture.raw.storage_size = read_size(v, kMiB, UINT64_MAX); }},
    {"tap.capture.raw.segmentSize",
     [](const Value& v, TapwireConfig& c) { c.capture.raw.segment_size = read_size(v, 64 << 10, UINT64_MAX); }},
    {"tap.capture.raw.segmentMaxAge",
     [](const Value& v, TapwireConfig& c) {
       auto d = read_duration(v);
       if (d < std::chrono::seconds(1) || d > std::chrono::hours(24))
         v.fail("must be between 1s and 24h, got '" + v.node.Scalar() + "'");
       if (d % std::chrono::seconds(1) != std::chrono::nanoseconds(0))
         v.fail("must be whole seconds, got '" + v.node.Scalar() + "'");
       c.capture.raw.segment_max_age = std::chrono::duration_cast<std::chrono::seconds>(d);
     }},
    {"tap.capture.raw.ringSize",
     [](const Value& v, TapwireConfig& c) {
       // "auto": the sensor decides (shm/FORMAT.md's direct writes want at
       // least 64 KiB: whole 4 KiB blocks, one of them held back)
       c.capture.raw.ring_size =
           v.node.IsScalar() && v.node.Scalar() == "auto" ? 0 : static_cast<uint32_t>(read_size(v, 64 << 10, 1ull << 30));
     }},
    {"tap.capture.dissection.stopAfter",
     [](const Value& v, TapwireConfig& c) { c.capture.dissection.stop_after = read_duration(v); }},
    {"tap.enabledDissectors", [](const Value& v, TapwireConfig& c) { c.enabled_dissectors = read_dissectors(v); }},
    {"tap.grpc.protoPaths", [](const Value& v, TapwireConfig& c) { c.grpc_proto_paths = read_proto_paths(v); }},
    {"tap.dissection.maxBody",
     [](const Value& v, TapwireConfig& c) { c.dissection.max_body = read_size(v, 0, 1ull << 30); }},
    {"tap.dissection.maxHeader",
     [](const Value& v, TapwireConfig& c) { c.dissection.max_header = read_size(v, 1, 1ull << 30); }},
    {"tap.dissection.memoryLimit",
     [](const Value& v, TapwireConfig& c) {
       // Below 1 MiB the dissector would shed on nearly every packet: surely a missing unit.
       c.dissection.memory_limit = read_size(v, 0, UINT64_MAX);
       if (c.dissection.memory_limit != 0 && c.dissection.memory_limit < kMiB)
         v.fail("must be 0 (no limit) or at least 1Mi, got '" + v.node.Scalar() + "'");
     }},
    {"tap.snapshots.storageSize",
     [](const Value& v, TapwireConfig& c) { c.snapshots.storage_size = read_size(v, 1, UINT64_MAX); }},
    {"tap.metrics.address", [](const Value& v, TapwireConfig& c) { c.metrics.address = read_listen_address(v); }},
    {"tap.nodeName",
     [](const Value& v, TapwireConfig& c) {
       c.node_name = read_string(v, true);
       if (c.node_name.size() > 253) v.fail("a node name is at most 253 characters");
     }},
    {"tap.regex", [](const Value& v, TapwireConfig& c) { c.regex = read_regex(v); }},
    {"tap.namespaces", [](const Value& v, TapwireConfig& c) { c.namespaces = read_namespaces(v); }},
    {"tap.excludedNamespaces", [](const Value& v, TapwireConfig& c) { c.excluded_namespaces = read_namespaces(v); }},
    {"tap.kubernetes.enabled",
     [](const Value& v, TapwireConfig& c) {
       if (v.node.IsScalar() && v.node.Scalar() == "auto")
         c.kubernetes.enabled = "auto";
       else
         c.kubernetes.enabled = read_bool(v) ? "true" : "false";
     }},
    {"tap.kubernetes.kubeconfig", [](const Value& v, TapwireConfig& c) { c.kubernetes.kubeconfig = read_string(v, true); }},
    {"tap.identity.enabled", [](const Value& v, TapwireConfig& c) { c.identity.enabled = read_bool(v); }},
    {"tap.identity.storageSize",
     [](const Value& v, TapwireConfig& c) { c.identity.storage_size = read_size(v, 4 * kMiB, UINT64_MAX); }},
    {"tap.flows.maxFlows",
     [](const Value& v, TapwireConfig& c) { c.flows.max_flows = static_cast<uint32_t>(read_size(v, 1024, 1u << 24)); }},
    {"tap.flows.storageSize",
     [](const Value& v, TapwireConfig& c) { c.flows.storage_size = read_size(v, 4 * kMiB, UINT64_MAX); }},
    {"tap.flows.interval", [](const Value& v, TapwireConfig& c) { c.flows.interval = read_seconds(v, 1, 3600); }},
    {"tap.flows.udpTimeout", [](const Value& v, TapwireConfig& c) { c.flows.udp_timeout = read_seconds(v, 1, 86400); }},
    {"tap.flows.synTimeout", [](const Value& v, TapwireConfig& c) { c.flows.syn_timeout = read_seconds(v, 1, 86400); }},
    {"tap.flows.tcpIdleTimeout",
     [](const Value& v, TapwireConfig& c) { c.flows.tcp_idle_timeout = read_seconds(v, 1, 7 * 86400); }},
    {"tap.flows.metricsMaxPairs",
     [](const Value& v, TapwireConfig& c) {
       c.flows.metrics_max_pairs = static_cast<uint32_t>(read_size(v, 0, 1000000));
     }},
};

// Kubeshark keys that a Kubeshark user may bring along but that tapwire cannot
// honour: said plainly instead of "unknown key".
struct Unsupported {
  const char* key;
  const char* why;
};
const Unsupported kUnsupported[] = {
    {"tap.pods", "not supported: target pods with tap.regex, tap.namespaces and tap.excludedNamespaces"},
};

const Field* find_field(const std::string& key) {
  for (const auto& f : kFields)
    if (key == f.key) return &f;
  return nullptr;
}

// Sections: every proper prefix of a key ("tap", "tap.capture", ...).
bool is_section(const std::string& key) {
  for (const auto& f : kFields) {
    std::string_view k = f.key;
    if (k.size() > key.size() && k.substr(0, key.size()) == key && k[key.size()] == '.') return true;
  }
  return key.empty();
}

std::string lower(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); j++) prev[j] = j;
  for (size_t i = 1; i <= a.size(); i++) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); j++)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// Every known key and section, as dotted paths.
std::vector<std::string> all_paths() {
  std::set<std::string> out;
  for (const auto& f : kFields) {
    std::string k = f.key;
    for (size_t dot = k.find('.'); dot != std::string::npos; dot = k.find('.', dot + 1)) out.insert(k.substr(0, dot));
    out.insert(k);
  }
  return {out.begin(), out.end()};
}

std::string parent_of(const std::string& path) {
  auto dot = path.rfind('.');
  return dot == std::string::npos ? "" : path.substr(0, dot);
}
std::string leaf_of(const std::string& path) {
  auto dot = path.rfind('.');
  return dot == std::string::npos ? path : path.substr(dot + 1);
}

// The closest known key to an unknown one, or "".
std::string suggest(const std::string& unknown) {
  const auto paths = all_paths();
  const std::string parent = parent_of(unknown), name = lower(leaf_of(unknown));
  // 1. A sibling spelled almost the same (case, a typo or two).
  std::string best;
  size_t best_d = std::max<size_t>(2, name.size() / 3) + 1;
  for (const auto& p : paths) {
    if (parent_of(p) != parent) continue;
    size_t d = edit_distance(name, lower(leaf_of(p)));
    if (d < best_d) best = p, best_d = d;
  }
  if (!best.empty()) return best;
  // 2. The same name somewhere else in the tree (a key put at the wrong level).
  for (const auto& p : paths)
    if (lower(leaf_of(p)) == name) return p;
  // 3. Close as a whole path.
  best_d = 4;
  for (const auto& p : paths) {
    size_t d = edit_distance(lower(unknown), lower(p));
    if (d < best_d) best = p, best_d = d;
  }
  return best;
}

// ----------------------------------------------------------------- walker --

struct Loader {
  const std::string& file;

  [[noreturn]] void fail(const YAML::Mark& m, const std::string& key, const std::string& problem) const {
    throw ConfigError(file, m.is_null() || m.line < 0 ? 0 : m.line + 1, key, problem);
  }

  void walk(const YAML::Node& node, const std::string& path, const YAML::Mark& key_mark, TapwireConfig& c) const {
    if (const Field* f = find_field(path)) {
      f->set(Value{node, path, file, key_mark}, c);
      return;
    }
    // A section: a mapping of known keys. Nothing at all ("tap:" alone) is an empty one.
    if (node.IsNull()) return;
    if (!node.IsMap()) {
      YAML::Mark m = node.Mark().is_null() ? key_mark : node.Mark();
      if (path.empty())
        fail(m, "", "expected a mapping with a top-level 'tap' key, got " + describe(node));
      fail(m, path, "expected a mapping of keys, got " + describe(node));
    }
    std::set<std::string> seen;
    for (auto it = node.begin(); it != node.end(); ++it) {
      // Copies: it-> returns a proxy that dies with the full expression.
      const YAML::Node k = it->first, value = it->second;
      if (!k.IsScalar()) fail(k.Mark(), path, "a key must be a plain name, got " + describe(k));
      const std::string child = path.empty() ? k.Scalar() : path + "." + k.Scalar();
      if (!seen.insert(k.Scalar()).second) fail(k.Mark(), child, "duplicate key");
      for (const auto& u : kUnsupported)
        if (child == u.key) fail(k.Mark(), child, u.why);
      if (!find_field(child) && !is_section(child)) {
        std::string s = suggest(child);
        fail(k.Mark(), child, s.empty() ? "unknown key (see configs/README.md)" : "unknown key; did you mean '" + s + "'?");
      }
      walk(value, child, k.Mark(), c);
    }
  }
};

}  // namespace

const std::vector<std::string>& known_keys() {
  static const std::vector<std::string> keys = [] {
    std::vector<std::string> out;
    for (const auto& f : kFields) out.emplace_back(f.key);
    return out;
  }();
  return keys;
}

TapwireConfig load_config_text(const std::string& text, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(source, e.mark.is_null() ? 0 : e.mark.line + 1, "", "not valid YAML: " + e.msg);
  }
  TapwireConfig c;
  try {
    Loader{source}.walk(root, "", YAML::Mark::null_mark(), c);
  } catch (const YAML::Exception& e) {  // not expected: every read checks the node type first
    throw ConfigError(source, e.mark.is_null() ? 0 : e.mark.line + 1, "", e.msg);
  }
  return c;
}

TapwireConfig load_config(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw ConfigError(path, 0, "", "is a directory, not a config file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path, 0, "", std::string("cannot read the config file: ") + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw ConfigError(path, 0, "", std::string("cannot read the config file: ") + std::strerror(errno));
  return load_config_text(text.str(), path);
}

}  // namespace tapwire::config
