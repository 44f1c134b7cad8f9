// tapwire status: the sensor's DATA_DIR/status.json as a readable table.
#include <signal.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "status_file.hpp"
#include "tapwire_abi.hpp"
#include "timefmt.hpp"

namespace tapwire::cli {
namespace {

using nlohmann::json;

struct StatusOptions {
  std::string data_dir;
  std::string control_socket;
  bool json = false;
};

// Status files may come from another tapwire version: read fields leniently.
uint64_t u64_at(const json& j, const char* key) {
  if (!j.is_object()) return 0;
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return 0;
  if (it->is_number_unsigned()) return it->get<uint64_t>();
  if (it->is_number_integer()) return it->get<int64_t>() < 0 ? 0 : static_cast<uint64_t>(it->get<int64_t>());
  const double d = it->get<double>();
  return d < 0 ? 0 : static_cast<uint64_t>(d);
}

std::string str_at(const json& j, const char* key) {
  if (!j.is_object()) return {};
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

const json& obj_at(const json& j, const char* key) {
  static const json kEmpty = json::object();
  if (!j.is_object()) return kEmpty;
  auto it = j.find(key);
  return it != j.end() && it->is_object() ? *it : kEmpty;
}

// 1234567 -> "1,234,567"
std::string grouped(uint64_t v) {
  std::string s = std::to_string(v);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

std::string bytes_human(uint64_t v) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double d = static_cast<double>(v);
  int u = 0;
  while (d >= 1024 && u < 5) {
    d /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%" PRIu64 " B", v);
  else
    std::snprintf(buf, sizeof buf, "%.1f %s", d, kUnits[u]);
  return buf;
}

std::string ago(uint64_t then_ns, uint64_t now_ns) {
  if (then_ns == 0) return "never";
  if (then_ns > now_ns) return "in the future";
  uint64_t s = (now_ns - then_ns) / 1000000000ull;
  char buf[48];
  if (s < 60)
    std::snprintf(buf, sizeof buf, "%" PRIu64 "s ago", s);
  else if (s < 3600)
    std::snprintf(buf, sizeof buf, "%" PRIu64 "m %" PRIu64 "s ago", s / 60, s % 60);
  else if (s < 86400)
    std::snprintf(buf, sizeof buf, "%" PRIu64 "h %" PRIu64 "m ago", s / 3600, s / 60 % 60);
  else
    std::snprintf(buf, sizeof buf, "%" PRIu64 "d %" PRIu64 "h ago", s / 86400, s / 3600 % 24);
  return buf;
}

bool pid_alive(uint64_t pid) {
  if (pid == 0 || pid > INT32_MAX) return false;
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

// A sensor rewrites its status file about once a second.
constexpr uint64_t kFreshNs = 10ull * 1000000000ull;

struct Liveness {
  bool running;
  std::string text;
};

Liveness liveness(const json& st, uint64_t now) {
  const std::string state = str_at(st, "state");
  const uint64_t pid = u64_at(st, "pid");
  const uint64_t updated = u64_at(st, "updated_ns");
  const bool alive = pid_alive(pid);
  const bool fresh = updated != 0 && updated <= now + kFreshNs && now - std::min(now, updated) < kFreshNs;
  const std::string pid_text = "pid " + std::to_string(pid);
  if (state == "stopped") return {false, "not running (stopped cleanly; " + pid_text + ")"};
  if (alive) return {true, "running (" + pid_text + ", " + (state.empty() ? "unknown state" : state) + ")"};
  if (fresh)
    return {true, "probably running (" + pid_text + " is not visible here, another PID namespace?; status updated " +
                      ago(updated, now) + ")"};
  return {false, "not running (" + pid_text + " is gone; stale status file, last updated " + ago(updated, now) + ")"};
}

void row(const std::string& name, const std::string& value) {
  std::printf("  %-22s %s\n", name.c_str(), value.c_str());
}

int run_status(const StatusOptions& o) {
  std::error_code ec;
  // A running sensor answers on its control socket (the freshest numbers);
  // without one, its status file says what it last knew.
  const std::string sock = o.control_socket.empty() ? o.data_dir + "/control.sock" : o.control_socket;
  std::optional<json> status;
  if (auto reply = control_call(sock, {{"cmd", "status"}}); reply && reply->value("ok", false) &&
                                                             (*reply)["status"].is_object())
    status = (*reply)["status"];
  if (!status && !std::filesystem::is_directory(o.data_dir, ec))
    throw CliError("data directory not found", o.data_dir, "pass the --data-dir that tapwire-sensor uses");
  const std::string path = status_file_path(o.data_dir);
  if (!status) status = read_status_file(o.data_dir);
  if (!status) {
    if (!std::filesystem::exists(path, ec))
      throw CliError("no status file", path,
                     "tapwire-sensor has not run with --data-dir " + o.data_dir + "; start it first");
    throw CliError("cannot read the status file", path, "it is not valid JSON; restart tapwire-sensor to rewrite it");
  }
  const json& st = *status;
  if (!st.is_object())
    throw CliError("cannot read the status file", path, "it is not a JSON object; restart tapwire-sensor to rewrite it");
  const uint64_t now = realtime_now_ns();
  const Liveness live = liveness(st, now);

  if (o.json) {
    json out = st;
    out["running"] = live.running;
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }

  std::printf("tapwire-sensor %s\n", live.text.c_str());
  row("version", str_at(st, "version").empty() ? "unknown" : str_at(st, "version"));
  const uint64_t started = u64_at(st, "started_ns");
  const uint64_t updated = u64_at(st, "updated_ns");
  row("started", started ? format_rfc3339_ns(started) + " (" + ago(started, now) + ")" : "unknown");
  row("status updated", updated ? format_rfc3339_ns(updated) + " (" + ago(updated, now) + ")" : "unknown");
  std::string ifaces;
  if (auto it = st.find("interfaces"); it != st.end() && it->is_array()) {
    for (const auto& i : *it) {
      if (!ifaces.empty()) ifaces += ", ";
      ifaces += str_at(i, "name") + " (ifindex " + std::to_string(u64_at(i, "ifindex")) + ")";
    }
  }
  row("interfaces", ifaces.empty() ? "none" : ifaces);
  if (const json& d = obj_at(st, "dissection"); d.is_object() && !d.empty()) {
    std::string text = d.value("enabled", false) ? "enabled" : "disabled";
    if (d.value("running", false)) text += ", dissector running (pid " + std::to_string(d.value("pid", 0)) + ")";
    if (d.value("restarts", 0) > 0) text += ", " + std::to_string(d.value("restarts", 0)) + " restarts";
    row("dissection", text);
  }

  const json& counters = obj_at(st, "counters");
  std::printf("\ncapture\n");
  row("packets seen", grouped(u64_at(counters, "packets_seen")));
  row("packets captured", grouped(u64_at(counters, "packets_captured")));
  const uint64_t bytes = u64_at(counters, "bytes_captured");
  row("bytes captured", bytes_human(bytes) + " (" + grouped(bytes) + ")");
  std::set<std::string> shown = {"packets_seen", "packets_captured", "bytes_captured"};
  for (auto name : abi::kStatNames) {
    const std::string n(name);
    if (shown.insert(n).second) row(n, grouped(u64_at(counters, n.c_str())));
  }
  for (const auto& [k, v] : counters.items())
    if (shown.insert(k).second && v.is_number()) row(k, grouped(u64_at(counters, k.c_str())));

  // Every drop reason, zeros too: the ABI's reasons first, then any others
  // the sensor reports (e.g. storage_write_failed).
  const json& drops = obj_at(st, "drops");
  std::printf("\ndrops\n");
  std::set<std::string> dshown;
  uint64_t total_drops = 0;
  for (auto name : abi::kDropReasonNames) {
    const std::string n(name);
    dshown.insert(n);
    total_drops += u64_at(drops, n.c_str());
    row(n, grouped(u64_at(drops, n.c_str())));
  }
  for (const auto& [k, v] : drops.items()) {
    if (!dshown.insert(k).second || !v.is_number()) continue;
    total_drops += u64_at(drops, k.c_str());
    row(k, grouped(u64_at(drops, k.c_str())));
  }
  row("total", grouped(total_drops));

  const json& storage = obj_at(st, "storage");
  std::printf("\nstorage\n");
  row("directory", str_at(storage, "dir").empty() ? o.data_dir : str_at(storage, "dir"));
  row("segments", grouped(u64_at(storage, "segments")));
  const uint64_t stored = u64_at(storage, "bytes_stored");
  const uint64_t size = u64_at(storage, "storage_size");
  std::string stored_text = bytes_human(stored) + " of " + bytes_human(size);
  if (size) {
    char pct[32];
    std::snprintf(pct, sizeof pct, " (%.0f%%)", 100.0 * static_cast<double>(stored) / static_cast<double>(size));
    stored_text += pct;
  }
  row("bytes stored", stored_text);
  row("segment size", bytes_human(u64_at(storage, "segment_size")));
  row("segments deleted", grouped(u64_at(storage, "segments_deleted")));
  if (uint64_t d = u64_at(storage, "segments_damaged"))
    row("segments damaged", grouped(d) + " (set aside at start in segments/damaged/)");
  row("records written", grouped(u64_at(storage, "records_written")));
  return 0;
}

}  // namespace

void register_status(CLI::App& app, Action& action) {
  auto opts = std::make_shared<StatusOptions>();
  CLI::App* sub = app.add_subcommand("status", "Show whether the sensor runs, what it captured and dropped");
  add_data_dir_option(*sub, opts->data_dir);
  sub->add_option("--control-socket", opts->control_socket,
                  "ask the sensor on this socket (default: DATA_DIR/control.sock; else the status file)");
  sub->add_flag("--json", opts->json, "Print the status as JSON (the status file plus \"running\")");
  sub->callback([opts, &action] { action = [opts] { return run_status(*opts); }; });
}

}  // namespace tapwire::cli
