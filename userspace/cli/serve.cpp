// tapwire serve: the HTTP API over a data directory (userspace/serve/,
// docs/API.md). This file reads the options and the token, binds, gives up
// every capability, and serves until SIGINT or SIGTERM.
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include "commands.hpp"
#include "server.hpp"
#include "views.hpp"

namespace tapwire::cli {
namespace {

struct ServeCliOptions {
  std::string data_dir, listen = "127.0.0.1:8899", token_file, node, control_socket, user, group, config,
                        storage_size, ui_dir;
  std::vector<std::string> allowed_hosts;
  bool allow_destructive = false, loopback_needs_token = false, no_ui = false;
  unsigned max_jobs = 2, max_stream_clients = 16;
};

// The token: the file's first line (it must not be readable by others), or
// TAPWIRE_TOKEN; "" if neither.
std::string read_token(const std::string& file) {
  if (file.empty()) {
    const char* env = std::getenv("TAPWIRE_TOKEN");
    return env ? env : "";
  }
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) throw CliError("cannot read the token file", file, std::strerror(errno));
  if (st.st_mode & 0007)
    throw CliError("the token file is readable by others", file, "chmod o-rwx it (0600 or 0640)");
  std::ifstream in(file);
  std::string token;
  if (!in || !std::getline(in, token)) throw CliError("cannot read the token file", file, "it is empty");
  while (!token.empty() && (token.back() == '\r' || token.back() == ' ' || token.back() == '\t')) token.pop_back();
  return token;
}

std::string hostname() {
  char buf[HOST_NAME_MAX + 1] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "";
  return buf;
}

int run_serve(const ServeCliOptions& o) {
  serve::ServeOptions so;
  so.data_dir = o.data_dir;
  // HOST:PORT, [V6]:PORT
  const auto colon = o.listen.rfind(':');
  if (colon == std::string::npos || colon == 0)
    throw CliError("bad --listen", o.listen, "give HOST:PORT, such as 127.0.0.1:8899 or [::1]:8899");
  so.host = o.listen.substr(0, colon);
  if (so.host.size() > 2 && so.host.front() == '[' && so.host.back() == ']') so.host = so.host.substr(1, so.host.size() - 2);
  const std::string port = o.listen.substr(colon + 1);
  char* end = nullptr;
  const long p = std::strtol(port.c_str(), &end, 10);
  if (port.empty() || *end || p < 0 || p > 65535) throw CliError("bad --listen", o.listen, "the port is 0 to 65535");
  so.port = static_cast<int>(p);
  so.token = read_token(o.token_file);
  so.loopback_needs_token = o.loopback_needs_token;
  so.node = o.node.empty() ? (std::getenv("NODE_NAME") ? std::getenv("NODE_NAME") : hostname()) : o.node;
  so.control_socket = o.control_socket;
  so.allowed_hosts = o.allowed_hosts;
  so.allow_destructive = o.allow_destructive;
  so.max_jobs = o.max_jobs;
  so.max_stream_clients = o.max_stream_clients;
  so.snapshot_storage_size = snapshot_storage_limit(o.storage_size, o.config);
  // Delayed dissections run this very binary, by its path now: after the
  // capabilities are gone /proc/self/exe may not be readable to follow.
  char exe[PATH_MAX] = {};
  if (::readlink("/proc/self/exe", exe, sizeof exe - 1) > 0) so.tapwire_exe = exe;
  // The dashboard: --ui-dir, else the installed or the source tree's ui/dist.
  if (!o.no_ui) {
    so.ui_dir = o.ui_dir.empty() ? serve::find_ui_dir(so.tapwire_exe) : o.ui_dir;
    struct stat ui {};
    if (!o.ui_dir.empty() && ::stat((o.ui_dir + "/index.html").c_str(), &ui) != 0)
      throw CliError("no dashboard in --ui-dir", o.ui_dir, "it needs index.html: npm run build --prefix ui writes ui/dist");
    if (char real[PATH_MAX]; !so.ui_dir.empty() && ::realpath(so.ui_dir.c_str(), real)) so.ui_dir = real;
  }
  struct stat st {};
  if (::stat(so.data_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw CliError("data directory not found", so.data_dir, "pass the --data-dir that tapwire-sensor uses");
  if (std::string err = serve::options_error(so); !err.empty()) throw CliError("cannot serve", o.listen, err);

  // Signals go to the thread that waits for them, not to the server's.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  serve::Server server(so);
  int bound = 0;
  try {
    bound = server.bind();
  } catch (const std::exception& e) {
    throw CliError("cannot serve", o.listen, e.what());
  }
  // Bound first (a port below 1024 may need a capability), then none at all.
  try {
    serve::PrivilegeOptions po{o.user, o.group, {}};
    if (st.st_gid != 0) po.groups.push_back(st.st_gid);
    serve::drop_privileges(po);
  } catch (const std::exception& e) {
    throw CliError("cannot give up privileges", "capabilities", e.what());
  }
  if (serve::has_capabilities()) throw CliError("refusing to serve", "capabilities", "some remain after dropping them");
  std::fprintf(stderr, "tapwire serve: http://%s%s%s:%d/api/v1/ for node %s (data %s)%s\n",
               so.host.find(':') != std::string::npos ? "[" : "", so.host.c_str(),
               so.host.find(':') != std::string::npos ? "]" : "", bound, so.node.c_str(), so.data_dir.c_str(),
               so.token.empty() ? "" : ", token required from other hosts");
  if (!so.ui_dir.empty())
    std::fprintf(stderr, "tapwire serve: dashboard at http://%s%s%s:%d/ (files from %s)\n",
                 so.host.find(':') != std::string::npos ? "[" : "", so.host.c_str(),
                 so.host.find(':') != std::string::npos ? "]" : "", bound, so.ui_dir.c_str());
  else
    std::fprintf(stderr, "tapwire serve: no dashboard (%s)\n",
                 o.no_ui ? "--no-ui" : "no built ui/dist found: give --ui-dir, docs/DASHBOARD.md");
  std::fflush(stderr);
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    server.stop();
  });
  server.run();
  // run() also ends when the server fails: wake the waiter then.
  pthread_kill(waiter.native_handle(), SIGTERM);
  waiter.join();
  return 0;
}

}  // namespace

void register_serve(CLI::App& app, Action& action) {
  auto o = std::make_shared<ServeCliOptions>();
  CLI::App* sub = app.add_subcommand("serve", "Serve the HTTP API (docs/API.md) over the data directory, unprivileged");
  add_data_dir_option(*sub, o->data_dir);
  sub->add_option("--listen", o->listen, "HOST:PORT to listen on; an address other than loopback needs a token")
      ->capture_default_str();
  sub->add_option("--token-file", o->token_file,
                  "bearer token (first line; at least 16 characters; not readable by others); default: $TAPWIRE_TOKEN");
  sub->add_flag("--loopback-needs-token", o->loopback_needs_token,
                "require the token from loopback clients too (by default only other hosts need it)");
  sub->add_option("--node", o->node, "this node's name in every answer (default: $NODE_NAME, else the hostname)");
  sub->add_option("--control-socket", o->control_socket, "the sensor's control socket (default: DATA_DIR/control.sock)");
  sub->add_option("--allowed-host", o->allowed_hosts,
                  "a Host header name to accept besides IP addresses, localhost and --node (repeatable)");
  sub->add_flag("--allow-destructive", o->allow_destructive, "allow DELETE of snapshots and finished dissections");
  sub->add_option("--max-jobs", o->max_jobs, "delayed dissections running at once")->capture_default_str()->check(CLI::Range(1, 16));
  sub->add_option("--max-stream-clients", o->max_stream_clients, "GET /api/v1/stream clients at once")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  sub->add_option("--user", o->user, "when root, serve as this user (then without the sensor's control socket)");
  sub->add_option("--group", o->group, "with --user: this group (default: the user's)");
  sub->add_option("--config", o->config, "tapwire.yaml whose tap.snapshots.storageSize limits snapshots");
  sub->add_option("--storage-size", o->storage_size, "room for all snapshots (default: tap.snapshots.storageSize, 20GiB)");
  sub->add_option("--ui-dir", o->ui_dir,
                  "the dashboard's built files, served at / (default: EXE_DIR/../share/tapwire/ui, else the "
                  "source tree's ui/dist)");
  sub->add_flag("--no-ui", o->no_ui, "serve the API only, no dashboard at /");
  sub->callback([o, &action] { action = [o] { return run_serve(*o); }; });
}

}  // namespace tapwire::cli
