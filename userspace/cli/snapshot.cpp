// tapwire snapshot create|list|verify|delete|pack|unpack: freeze a window of
// the live ring for delayed dissection, check it, move it to another machine.
// The work is in userspace/common/snapshot.cpp; this file parses and prints.
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "commands.hpp"
#include "config.hpp"
#include "snapshot.hpp"
#include "timefmt.hpp"
#include "units.hpp"
#include "views.hpp"

namespace tapwire::cli {
namespace {

namespace snap = tapwire::snapshot;

struct SnapshotOptions {
  std::string data_dir, control_socket, config_path, storage_size;
  std::string name, from, to, file, output, new_name;
  std::vector<std::string> interfaces;
};

uint64_t parse_time_option(const std::string& opt, const std::string& text, uint64_t now_ns) {
  const TimeParseResult r = parse_time_arg(text, now_ns);
  if (!r.ns) throw CliError("invalid " + opt + " time", "'" + text + "'", r.error);
  return *r.ns;
}

// tap.snapshots.storageSize: --storage-size, else --config FILE, else 20GiB.
uint64_t storage_limit(const SnapshotOptions& o) { return snapshot_storage_limit(o.storage_size, o.config_path); }

// Runs `fn`, turning library errors into the CLI's one-line errors.
template <class Fn>
auto guarded(Fn&& fn) {
  try {
    return fn();
  } catch (const snap::SnapshotError& e) {
    throw CliError(e.what_part, e.input_part, e.hint_part);
  }
}

std::string window_text(uint64_t from, uint64_t to) { return format_rfc3339_ns(from) + " .. " + format_rfc3339_ns(to); }

int run_create(const SnapshotOptions& o) {
  const uint64_t now = realtime_now_ns();
  snap::CreateOptions c;
  c.data_dir = o.data_dir;
  c.name = o.name;
  c.from_ns = o.from.empty() ? 0 : parse_time_option("--from", o.from, now);
  c.to_ns = o.to.empty() ? UINT64_MAX : parse_time_option("--to", o.to, now);
  c.interfaces = o.interfaces;
  c.storage_size = storage_limit(o);
  c.request_rotate = sensor_rotate(o.control_socket.empty() ? o.data_dir + "/control.sock" : o.control_socket);
  auto m = guarded([&] { return snap::create(c); });
  std::string ifs;
  for (const auto& i : m.interfaces) ifs += (ifs.empty() ? "" : ",") + i;
  std::printf("snapshot %s: %zu segment files, %s, %s, interfaces %s\n", m.name.c_str(), m.files.size(),
              format_size(m.total_size()).c_str(), window_text(m.from_ns, m.to_ns).c_str(),
              ifs.empty() ? "(none)" : ifs.c_str());
  return 0;
}

int run_list(const SnapshotOptions& o) {
  auto all = guarded([&] { return snap::list(o.data_dir); });
  if (all.empty()) {
    std::printf("no snapshots in %s\n", snap::snapshots_dir(o.data_dir).c_str());
    return 0;
  }
  std::printf("%-24s %-30s %6s %10s  %-63s %s\n", "NAME", "CREATED", "FILES", "SIZE", "WINDOW", "INTERFACES");
  for (const auto& s : all) {
    if (!s.ok) {
      std::printf("%-24s (unreadable: %s)\n", s.name.c_str(), s.error.c_str());
      continue;
    }
    std::string ifs;
    for (const auto& i : s.manifest.interfaces) ifs += (ifs.empty() ? "" : ",") + i;
    std::printf("%-24s %-30s %6zu %10s  %-63s %s\n", s.name.c_str(), s.manifest.created.c_str(),
                s.manifest.files.size(), format_size(s.manifest.total_size()).c_str(),
                window_text(s.manifest.from_ns, s.manifest.to_ns).c_str(), ifs.c_str());
  }
  return 0;
}

std::string existing_snapshot(const SnapshotOptions& o) {
  guarded([&] {
    snap::check_name(o.name);
    return 0;
  });
  const std::string dir = snap::snapshot_dir(o.data_dir, o.name);
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    throw CliError("no such snapshot", o.name,
                   "not in " + snap::snapshots_dir(o.data_dir) + "/ (see 'tapwire snapshot list')");
  return dir;
}

int run_verify(const SnapshotOptions& o) {
  const std::string dir = existing_snapshot(o);
  snap::Manifest m;
  auto problems = snap::verify_dir(dir, &m);
  if (problems.empty()) {
    std::printf("snapshot %s: %zu files, %s: every sha256 matches\n", o.name.c_str(), m.files.size(),
                format_size(m.total_size()).c_str());
    return 0;
  }
  for (const auto& p : problems)
    std::fprintf(stderr, "tapwire: snapshot corrupt: %s/%s: %s\n", o.name.c_str(), p.file.c_str(), p.what.c_str());
  std::fprintf(stderr, "tapwire: snapshot verify failed: %s: %zu problem%s; the snapshot cannot be trusted\n",
               o.name.c_str(), problems.size(), problems.size() == 1 ? "" : "s");
  return 1;
}

int run_delete(const SnapshotOptions& o) {
  existing_snapshot(o);
  guarded([&] {
    snap::remove(o.data_dir, o.name);
    return 0;
  });
  std::printf("snapshot %s deleted\n", o.name.c_str());
  return 0;
}

int run_pack(const SnapshotOptions& o) {
  existing_snapshot(o);
  guarded([&] {
    snap::pack(o.data_dir, o.name, o.output);
    return 0;
  });
  struct stat st {};
  ::stat(o.output.c_str(), &st);
  std::printf("snapshot %s packed into %s (%s)\n", o.name.c_str(), o.output.c_str(),
              format_size(static_cast<uint64_t>(st.st_size)).c_str());
  return 0;
}

int run_unpack(const SnapshotOptions& o) {
  const uint64_t limit = storage_limit(o);
  const std::string name = guarded([&] { return snap::unpack(o.file, o.data_dir, o.new_name, limit); });
  std::printf("snapshot %s unpacked into %s (every sha256 matches)\n", name.c_str(),
              snap::snapshot_dir(o.data_dir, name).c_str());
  return 0;
}

void add_limit_options(CLI::App& sub, SnapshotOptions& o) {
  sub.add_option("--config", o.config_path, "tapwire.yaml whose tap.snapshots.storageSize limits snapshots");
  sub.add_option("--storage-size", o.storage_size,
                 "room for all snapshots under DATA_DIR/snapshots (default: tap.snapshots.storageSize, 20GiB)");
}

}  // namespace

uint64_t snapshot_storage_limit(const std::string& size, const std::string& config_path) {
  if (!size.empty()) {
    auto v = parse_size(size);
    if (!v || *v == 0) throw CliError("invalid --storage-size", "'" + size + "'", "give a size such as 20GiB");
    return *v;
  }
  if (!config_path.empty()) {
    try {
      return config::load_config(config_path).snapshots.storage_size;
    } catch (const config::ConfigError& e) {
      throw CliError("invalid configuration", e.what(), "fix the file or drop --config");
    }
  }
  return snap::kDefaultStorageSize;
}

std::function<void()> sensor_rotate(const std::string& sock) {
  return [sock] {
    std::string err;
    auto reply = control_call(sock, {{"cmd", "segment"}, {"action", "rotate"}}, &err);
    if (!reply)
      throw snap::SnapshotError("cannot ask tapwire-sensor to seal its open segment", sock + " (" + err + ")",
                                "the sensor holds the ring's lock; give --control-socket if it is elsewhere");
    if (!reply->value("ok", false))
      throw snap::SnapshotError("tapwire-sensor refused to seal its open segment", sock,
                                reply->value("error", std::string("no reason given")) +
                                    "; upgrade the sensor to this tapwire version");
  };
}

void register_snapshot(CLI::App& app, Action& action) {
  auto o = std::make_shared<SnapshotOptions>();
  CLI::App* snap_app = app.add_subcommand("snapshot", "Freeze, check and move windows of stored traffic");
  snap_app->require_subcommand(1);

  CLI::App* create = snap_app->add_subcommand("create", "Freeze a time window of the ring into DATA_DIR/snapshots/NAME");
  create->add_option("--name", o->name, "the snapshot's name")->required();
  create->add_option("--from", o->from, "start of the window (RFC 3339, Unix seconds, or -5m); default: oldest data");
  create->add_option("--to", o->to, "end of the window (exclusive); default: now");
  create->add_option("--interface", o->interfaces, "keep only segments captured on this interface (repeatable)");
  add_data_dir_option(*create, o->data_dir);
  create->add_option("--control-socket", o->control_socket, "the sensor's control socket (default: DATA_DIR/control.sock)");
  add_limit_options(*create, *o);
  create->callback([o, &action] { action = [o] { return run_create(*o); }; });

  CLI::App* list = snap_app->add_subcommand("list", "List the snapshots");
  add_data_dir_option(*list, o->data_dir);
  list->callback([o, &action] { action = [o] { return run_list(*o); }; });

  CLI::App* verify = snap_app->add_subcommand("verify", "Re-hash every file of a snapshot against its manifest");
  verify->add_option("name", o->name, "the snapshot's name")->required();
  add_data_dir_option(*verify, o->data_dir);
  verify->callback([o, &action] { action = [o] { return run_verify(*o); }; });

  CLI::App* del = snap_app->add_subcommand("delete", "Delete a snapshot");
  del->add_option("name", o->name, "the snapshot's name")->required();
  add_data_dir_option(*del, o->data_dir);
  del->callback([o, &action] { action = [o] { return run_delete(*o); }; });

  CLI::App* pack = snap_app->add_subcommand("pack", "Write a snapshot into one .tar.zst file");
  pack->add_option("name", o->name, "the snapshot's name")->required();
  pack->add_option("-o,--output", o->output, "the file to write (FILE.tar.zst)")->required();
  add_data_dir_option(*pack, o->data_dir);
  pack->callback([o, &action] { action = [o] { return run_pack(*o); }; });

  CLI::App* unpack = snap_app->add_subcommand("unpack", "Restore a packed snapshot into DATA_DIR/snapshots");
  unpack->add_option("file", o->file, "a file written by 'tapwire snapshot pack'")->required();
  unpack->add_option("--name", o->new_name, "store it under this name (default: the name in the pack)");
  add_data_dir_option(*unpack, o->data_dir);
  add_limit_options(*unpack, *o);
  unpack->callback([o, &action] { action = [o] { return run_unpack(*o); }; });
}

}  // namespace tapwire::cli
