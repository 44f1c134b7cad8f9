// tapwire mcp: MCP (the Model Context Protocol, docs/MCP.md) over stdin and
// stdout, for an AI assistant that starts it as a local server. The tools
// are the HTTP API's answers (userspace/serve/mcp.cpp); stdout carries the
// protocol alone, so everything else goes to stderr. It holds no capability,
// as `tapwire serve` does not.
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "api.hpp"
#include "commands.hpp"
#include "mcp.hpp"
#include "server.hpp"
#include "views.hpp"

namespace tapwire::cli {
namespace {

struct McpCliOptions {
  std::string data_dir, node, control_socket, config, storage_size;
  bool allow_destructive = false;
  unsigned max_jobs = 2;
};

int run_mcp(const McpCliOptions& o) {
  serve::ServeOptions so;
  so.data_dir = o.data_dir;
  if (!o.node.empty()) {
    so.node = o.node;
  } else if (const char* env = std::getenv("NODE_NAME"); env && *env) {
    so.node = env;
  } else {
    char buf[HOST_NAME_MAX + 1] = {};
    if (::gethostname(buf, sizeof buf - 1) == 0) so.node = buf;
  }
  if (so.node.empty()) throw CliError("no node name", "--node", "give --node NAME");
  so.control_socket = o.control_socket;
  so.allow_destructive = o.allow_destructive;
  so.max_jobs = o.max_jobs;
  so.snapshot_storage_size = snapshot_storage_limit(o.storage_size, o.config);
  // Delayed dissections run this very binary, by its path now: after the
  // capabilities are gone /proc/self/exe may not be readable to follow.
  char exe[PATH_MAX] = {};
  if (::readlink("/proc/self/exe", exe, sizeof exe - 1) > 0) so.tapwire_exe = exe;
  struct stat st {};
  if (::stat(so.data_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw CliError("data directory not found", so.data_dir, "pass the --data-dir that tapwire-sensor uses");

  // The stop signals are read by the stdio loop (signalfd): blocked here,
  // before any thread starts, so that every thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client gone: write() fails and the loop ends

  try {
    serve::PrivilegeOptions po{"", "", {}};
    if (st.st_gid != 0) po.groups.push_back(st.st_gid);
    serve::drop_privileges(po);
  } catch (const std::exception& e) {
    throw CliError("cannot give up privileges", "capabilities", e.what());
  }
  if (serve::has_capabilities()) throw CliError("refusing to serve", "capabilities", "some remain after dropping them");

  auto ctx = serve::make_mcp_context(so);
  serve::McpServer server(*ctx);
  std::fprintf(stderr, "tapwire mcp: MCP on stdio for node %s (data %s)%s\n", so.node.c_str(), so.data_dir.c_str(),
               so.allow_destructive ? ", destructive tools offered" : "");
  std::fflush(stderr);
  return serve::run_mcp_stdio(server, STDIN_FILENO, STDOUT_FILENO);
}

}  // namespace

void register_mcp(CLI::App& app, Action& action) {
  auto o = std::make_shared<McpCliOptions>();
  CLI::App* sub = app.add_subcommand(
      "mcp", "Serve MCP (docs/MCP.md) on stdin/stdout: the HTTP API's data as tools for an AI assistant");
  add_data_dir_option(*sub, o->data_dir);
  sub->add_option("--node", o->node, "this node's name in every answer (default: $NODE_NAME, else the hostname)");
  sub->add_option("--control-socket", o->control_socket, "the sensor's control socket (default: DATA_DIR/control.sock)");
  sub->add_flag("--allow-destructive", o->allow_destructive,
                "offer the destructive tools (delete_snapshot); without it they are not even listed");
  sub->add_option("--max-jobs", o->max_jobs, "delayed dissections running at once")->capture_default_str()->check(CLI::Range(1, 16));
  sub->add_option("--config", o->config, "tapwire.yaml whose tap.snapshots.storageSize limits snapshots");
  sub->add_option("--storage-size", o->storage_size, "room for all snapshots (default: tap.snapshots.storageSize, 20GiB)");
  sub->callback([o, &action] { action = [o] { return run_mcp(*o); }; });
}

}  // namespace tapwire::cli
