#include "server.hpp"

#include <arpa/inet.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <thread>

#include "api.hpp"
#include "call_db.hpp"
#include "commands.hpp"
#include "openapi_json.hpp"
#include "snapshot.hpp"
#include "timefmt.hpp"

namespace tapwire::serve {

using nlohmann::json;

// --------------------------------------------------------------- Ctx ---

Ctx::~Ctx() = default;

json with_node(json record, const std::string& node) {
  if (record.is_object() && (!record.contains("node") || record["node"].is_null())) record["node"] = node;
  return record;
}

void Ctx::reply(httplib::Response& res, json j, int status) const {
  res.status = status;
  res.set_content(with_node(std::move(j), o.node).dump(-1, ' ', false, json::error_handler_t::replace),
                  "application/json");
}

std::string Ctx::param(const httplib::Request& req, const char* name, const std::string& def) {
  if (!req.has_param(name)) return def;
  if (req.get_param_value_count(name) > 1) throw ApiError(400, std::string("parameter ") + name + " given twice");
  return req.get_param_value(name);
}

size_t Ctx::limit_param(const httplib::Request& req, size_t def) {
  const std::string v = param(req, "limit");
  if (v.empty()) return def;
  char* end = nullptr;
  errno = 0;
  const unsigned long long n = std::strtoull(v.c_str(), &end, 10);
  if (*end || errno || v[0] == '-' || n < 1 || n > kMaxLimit)
    throw ApiError(400, "limit: give 1 to " + std::to_string(kMaxLimit) + ", not '" + v + "'");
  return static_cast<size_t>(n);
}

std::optional<uint64_t> Ctx::time_param(const httplib::Request& req, const char* name) {
  const std::string v = param(req, name);
  if (v.empty()) return std::nullopt;
  auto t = parse_time_arg(v, realtime_now_ns());
  if (!t.ns) throw ApiError(400, std::string(name) + ": " + t.error);
  return *t.ns;
}

json Ctx::body_json(const httplib::Request& req) {
  if (req.body.empty()) return json::object();
  const std::string type = req.get_header_value("Content-Type");
  // Only JSON: a cross-site form post (text/plain, form encodings) cannot
  // then act on the server without the preflight it never gets answered.
  if (type.rfind("application/json", 0) != 0)
    throw ApiError(415, "send the body as Content-Type: application/json");
  auto j = json::parse(req.body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw ApiError(400, "the body is not a JSON object");
  return j;
}

namespace {

// realpath(p) lies in realpath(dir) (or is it).
bool resolves_under(const std::string& p, const std::string& dir) {
  char rp[PATH_MAX], rd[PATH_MAX];
  if (!::realpath(p.c_str(), rp) || !::realpath(dir.c_str(), rd)) return false;
  const std::string a = rp, b = rd;
  return a == b || (a.size() > b.size() && a.compare(0, b.size(), b) == 0 && (b == "/" || a[b.size()] == '/'));
}

}  // namespace

std::string Ctx::db_path(const std::string& db) const {
  std::string path;
  if (db.empty() || db == "live") {
    path = o.data_dir + "/dissection.db";
  } else {
    const auto slash = db.find('/');
    const std::string snap = db.substr(0, slash);
    const std::string diss = slash == std::string::npos ? "" : db.substr(slash + 1);
    if (slash == std::string::npos || !valid_name(snap) || !valid_name(diss))
      throw ApiError(400, "db: give live or SNAPSHOT/DISSECTION (names of [A-Za-z0-9._-], not starting with '.')");
    path = o.data_dir + "/snapshots/" + snap + "/" + snapshot::kDissectionsDir + "/" + diss + ".db";
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) throw ApiError(404, "no such dissection DB: " + (db.empty() ? "live" : db));
  // Whatever links are on the way, the DB read must be inside DATA_DIR.
  if (!S_ISREG(st.st_mode) || !resolves_under(path, o.data_dir))
    throw ApiError(400, "db: " + db + " is not a dissection DB under the data directory");
  return path;
}

std::unique_ptr<dissect::CallDb> Ctx::open_db(const std::string& db) const {
  const std::string path = db_path(db);
  try {
    return std::make_unique<dissect::CallDb>(path, true);
  } catch (const std::exception& e) {
    throw ApiError(503, std::string("cannot open the dissection DB: ") + e.what());
  }
}

std::string Ctx::snapshot_dir(const std::string& name) const {
  if (!valid_name(name)) throw ApiError(400, "not a snapshot name: names are [A-Za-z0-9._-], not starting with '.'");
  const std::string dir = snapshot::snapshot_dir(o.data_dir, name);
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) throw ApiError(404, "no such snapshot: " + name);
  return dir;
}

json Ctx::control(const json& request) const {
  std::string err;
  auto reply = cli::control_call(control_socket, request, &err);
  if (!reply) throw ApiError(503, "cannot reach the sensor's control socket " + control_socket + ": " + err);
  if (!reply->value("ok", false))
    throw ApiError(502, "the sensor refused: " + reply->value("error", std::string("no reason given")));
  return *reply;
}

CompiledQuery compile_filter(sqlite3* db, const std::string& text, Target target, int first_param) {
  CompileOptions co;
  co.target = target;
  if (target == Target::Calls) detect_columns(db, co);
  co.first_param = first_param;
  CompiledQuery q;
  try {
    q = compile(text, co);
  } catch (const QueryError& e) {
    throw ApiError(400, "filter: " + e.message(), e.column());
  }
  if (register_functions(db) != 0) throw ApiError(500, "cannot register the regex function");
  return q;
}

// ------------------------------------------------------- access rules ---

bool is_loopback(const std::string& addr) {
  in_addr a4{};
  in6_addr a6{};
  if (inet_pton(AF_INET, addr.c_str(), &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  if (inet_pton(AF_INET6, addr.c_str(), &a6) != 1) return false;
  if (IN6_IS_ADDR_LOOPBACK(&a6)) return true;
  return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
}

namespace {

// Equal in time independent of where they differ.
bool same_secret(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); i++) diff |= static_cast<unsigned char>(a[i] ^ b[i % (b.empty() ? 1 : b.size())]);
  return diff == 0 && !b.empty();
}

bool ip_literal(const std::string& h) {
  if (h.empty()) return false;
  if (h.front() == '[') return h.back() == ']';
  return h.find_first_not_of("0123456789.") == std::string::npos;
}

}  // namespace

bool access_allowed(const std::string& remote_addr, const std::string& authorization, const std::string& token,
                    bool loopback_needs_token) {
  if (token.empty()) return true;
  if (!authorization.empty()) {
    constexpr const char* kBearer = "Bearer ";
    if (authorization.size() <= 7 || strncasecmp(authorization.c_str(), kBearer, 7) != 0) return false;
    return same_secret(authorization.substr(7), token);
  }
  return is_loopback(remote_addr) && !loopback_needs_token;
}

bool host_allowed(const std::string& host_header, const std::vector<std::string>& names) {
  if (host_header.empty()) return true;
  std::string h = host_header;
  // host:port, [v6]:port
  if (h.front() == '[') {
    const auto close = h.find(']');
    if (close == std::string::npos) return false;
    h = h.substr(0, close + 1);
  } else if (const auto colon = h.rfind(':'); colon != std::string::npos) {
    h = h.substr(0, colon);
  }
  for (char& c : h) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (ip_literal(h) || h == "localhost") return true;
  for (const auto& n : names) {
    std::string l = n;
    for (char& c : l) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (!l.empty() && h == l) return true;
  }
  return false;
}

bool valid_name(const std::string& name) {
  if (name.empty() || name.size() > 128 || name[0] == '.') return false;
  if (name.size() >= 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) return false;
  for (char c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') return false;
  return true;
}

std::string options_error(const ServeOptions& o) {
  if (o.port < 0 || o.port > 65535) return "the port must be 0 to 65535";
  const bool loopback = is_loopback(o.host) || o.host == "localhost";
  if (!loopback && o.token.empty())
    return "listening on " + o.host +
           " (not a loopback address) needs a token: give --token-file FILE or TAPWIRE_TOKEN, or listen on 127.0.0.1";
  if (!o.token.empty() && o.token.size() < 16) return "the token is too short: give at least 16 characters";
  for (char c : o.token)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return "the token holds spaces or control characters";
  if (o.node.empty()) return "no node name: give --node";
  return "";
}

// ------------------------------------------------------------ Server ---

struct Server::Impl {
  Ctx ctx;
  httplib::Server http;
  int port = -1;
};

Server::Server(ServeOptions o) : impl_(std::make_unique<Impl>()) {
  if (std::string err = options_error(o); !err.empty()) throw std::invalid_argument(err);
  Ctx& ctx = impl_->ctx;
  ctx.o = std::move(o);
  ctx.control_socket = ctx.o.control_socket.empty() ? ctx.o.data_dir + "/control.sock" : ctx.o.control_socket;
  ctx.jobs = std::make_unique<Jobs>(ctx);
  ctx.hub = std::make_unique<StreamHub>(ctx);
  httplib::Server& s = impl_->http;

  // Each stream client holds a thread for as long as it listens; the rest
  // of the requests share the others.
  const size_t threads = ctx.o.max_stream_clients + 8;
  s.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  s.set_payload_max_length(kMaxBodyBytes);
  s.set_read_timeout(5, 0);
  // A stream or pcap client that takes nothing for this long is dropped.
  s.set_write_timeout(10, 0);
  s.set_keep_alive_timeout(5);

  std::vector<std::string> names = ctx.o.allowed_hosts;
  names.push_back(ctx.o.node);
  s.set_pre_routing_handler([&ctx, names](const httplib::Request& req, httplib::Response& res) {
    auto refuse = [&](int status, const std::string& msg) {
      if (status == 401) res.set_header("WWW-Authenticate", "Bearer realm=\"tapwire\"");
      ctx.reply(res, {{"error", msg}}, status);
      return httplib::Server::HandlerResponse::Handled;
    };
    // The dashboard's files hold no data: a browser loads them without a header.
    const bool ui_file = !ctx.o.ui_dir.empty() && ui_public_path(req.method, req.path);
    if (!ui_file && !access_allowed(req.remote_addr, req.get_header_value("Authorization"), ctx.o.token,
                                    ctx.o.loopback_needs_token))
      return refuse(401, "unauthorized: send Authorization: Bearer <token>");
    // A web page whose name was rebound to this address sends its own name:
    // its scripts must not read the API as if they were the same origin.
    if (!host_allowed(req.get_header_value("Host"), names))
      return refuse(403, "Host " + req.get_header_value("Host") + " is not this server (--allowed-host)");
    return httplib::Server::HandlerResponse::Unhandled;
  });
  s.set_exception_handler([&ctx](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    int status = 500;
    json j;
    try {
      std::rethrow_exception(ep);
    } catch (const ApiError& e) {
      status = e.status;
      j = {{"error", e.what()}};
      if (e.column) j["column"] = e.column;
    } catch (const snapshot::SnapshotError& e) {
      const std::string& w = e.what_part;
      status = w.find("already exists") != std::string::npos                   ? 409
               : w.find("invalid") != std::string::npos || w.find("empty") != std::string::npos ? 400
               : w.find("no such") != std::string::npos || w.find("no captured data") != std::string::npos ||
                       w.find("no segments") != std::string::npos
                   ? 404
               : w.find("storage limit") != std::string::npos ? 507
               : w.find("tapwire-sensor") != std::string::npos || w.find("seal") != std::string::npos ? 503
                                                                                                   : 500;
      j = {{"error", e.what()}};
    } catch (const cli::CliError& e) {
      // The subcommands' errors: what the caller gave (a time, a source
      // that is not there).
      status = 400;
      j = {{"error", e.what()}};
    } catch (const std::exception& e) {
      j = {{"error", std::string("internal error: ") + e.what()}};
      std::fprintf(stderr, "tapwire serve: internal error: %s\n", e.what());
    } catch (...) {
      j = {{"error", "internal error"}};
    }
    ctx.reply(res, j, status);
  });
  s.set_error_handler(httplib::Server::HandlerWithResponse([&ctx](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;  // an answer already
    const std::string msg = res.status == 404   ? "no such endpoint: " + req.method + " " + req.path + " (see /api/v1/openapi.json)"
                            : res.status == 413 ? "request body too large (at most 64 KiB)"
                            : res.status == 414 ? "request URI too long (at most 8 KiB: shorten the filter)"
                            : res.status == 405 ? "method not allowed"
                                                : "bad request";
    ctx.reply(res, {{"error", msg}}, res.status);
    return httplib::Server::HandlerResponse::Handled;
  }));

  s.Get("/api/v1/openapi.json", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(std::string(kOpenApiJson), "application/json");
  });
  add_call_routes(s, ctx);
  add_view_routes(s, ctx);
  add_snapshot_routes(s, ctx);
  add_mcp_routes(s, ctx);  // POST /mcp: the same answers as MCP tools (mcp.cpp)
  add_static_routes(s, ctx);  // the dashboard at / (static_files.cpp)
}

Server::~Server() {
  stop();
  impl_->ctx.hub.reset();
  impl_->ctx.jobs.reset();
}

int Server::bind() {
  const ServeOptions& o = impl_->ctx.o;
  const std::string host = o.host == "localhost" ? "127.0.0.1" : o.host;
  if (o.port == 0)
    impl_->port = impl_->http.bind_to_any_port(host);
  else
    impl_->port = impl_->http.bind_to_port(host, o.port) ? o.port : -1;
  if (impl_->port < 0)
    throw std::runtime_error("cannot listen on " + o.host + ":" + std::to_string(o.port) + ": " + std::strerror(errno) +
                             " (in use? give another --listen)");
  return impl_->port;
}

void Server::run() { impl_->http.listen_after_bind(); }

void Server::stop() {
  if (impl_->ctx.hub) impl_->ctx.hub->stop();
  impl_->http.stop();
}

const ServeOptions& Server::options() const { return impl_->ctx.o; }

}  // namespace tapwire::serve
