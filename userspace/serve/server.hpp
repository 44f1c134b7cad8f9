// tapwire serve: the HTTP API over a node's data directory (docs/API.md,
// docs/openapi.json): calls and their statistics from the dissection DBs
// (the query language of query.hpp), flows and the service map, the
// identity stream, snapshots and their delayed dissections, the sensor's
// dissection switch, and a live stream of new calls. JSON everywhere, each
// answer naming the node, so that a hub can merge nodes.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace tapwire::serve {

struct ServeOptions {
  std::string data_dir = "/var/lib/tapwire";
  std::string host = "127.0.0.1";
  int port = 8899;  // 0: a free port (bind() tells which)
  // Bearer token; "" = none. Required from every client that is not on a
  // loopback address, and from loopback ones too with loopback_needs_token.
  std::string token;
  bool loopback_needs_token = false;
  std::string node;  // this node's name in every answer
  std::string control_socket;  // the sensor's; "" = DATA_DIR/control.sock
  // Host header names accepted besides IP literals, "localhost" and `node`
  // (a browser page that rebinds its own name to 127.0.0.1 sends its name).
  std::vector<std::string> allowed_hosts;
  bool allow_destructive = false;  // DELETE of snapshots and finished dissections
  unsigned max_jobs = 2;  // delayed dissections running at once
  unsigned max_stream_clients = 16;  // GET stream connections at once
  // The tapwire binary run for delayed dissections (`tapwire dissect`);
  // "" = this program (/proc/self/exe).
  std::string tapwire_exe;
  uint64_t snapshot_storage_size = 20ull << 30;  // tap.snapshots.storageSize
  std::chrono::milliseconds stream_poll{200};  // how often the live DB is read for the stream
  std::chrono::milliseconds heartbeat{15000};  // an SSE comment this often when nothing else is sent
  // The dashboard's built files (ui/dist, docs/DASHBOARD.md), served at /; "" = none.
  std::string ui_dir;
};

// Why these options cannot be served ("" when they can): a non-loopback
// address without a token, a token too short, a bad port.
std::string options_error(const ServeOptions& o);

class Server {
 public:
  explicit Server(ServeOptions o);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds the listening socket; returns its port. Throws std::runtime_error.
  int bind();
  // Serves until stop() (from another thread or a signal handler's thread).
  void run();
  void stop();
  const ServeOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- access rules (exposed for tests) -------------------------------------

// 127.0.0.0/8, ::1, and IPv4-mapped 127.x.
bool is_loopback(const std::string& addr);
// Whether a request from `remote_addr` with this Authorization header value
// may proceed: with no token configured, yes (the server then listens on
// loopback only); with one, a client that sends a Bearer credential must
// send the right one, and a client that sends none is let in only from a
// loopback address and only unless loopback_needs_token.
bool access_allowed(const std::string& remote_addr, const std::string& authorization, const std::string& token,
                    bool loopback_needs_token);
// Whether the Host header names this server: an IP literal, localhost, or
// one of `names` (port ignored; no Host header: HTTP/1.0, allowed).
bool host_allowed(const std::string& host_header, const std::vector<std::string>& names);
// A snapshot or dissection name a request may give: 1-128 of [A-Za-z0-9._-],
// not starting with '.', not ending with ".tmp" (no '/', no "..", no NUL).
bool valid_name(const std::string& name);

// ---- the dashboard (static_files.cpp) ---------------------------------------

// Whether a request is for one of the dashboard's files (GET or HEAD of / or
// of a file name of one level with a known extension): those are served
// without the token.
bool ui_public_path(const std::string& method, const std::string& path);
// The dashboard's directory when none is given: EXE_DIR/../share/tapwire/ui
// (installed), else the ui/dist of the source tree this binary was built
// from; "" when neither holds an index.html.
std::string find_ui_dir(const std::string& exe);

// ---- privileges -----------------------------------------------------------

struct PrivilegeOptions {
  std::string user, group;  // switch to these when root ("" = stay)
  // Staying root: the supplementary groups to keep (the data directory's
  // group, which the unprivileged dissector's files are readable by).
  std::vector<unsigned> groups;
};
// Gives up every capability (effective, permitted, inheritable, ambient and,
// when it can, the bounding set), sets no_new_privs, and, when root and
// asked, becomes `user`:`group`; then checks that no capability is left.
// Throws std::runtime_error naming the step that did not hold.
void drop_privileges(const PrivilegeOptions& o);
// Whether the process holds any capability (effective or permitted).
bool has_capabilities();

}  // namespace tapwire::serve
