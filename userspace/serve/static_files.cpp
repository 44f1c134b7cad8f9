// tapwire serve: the dashboard's files (ui/, docs/DASHBOARD.md) at `/`.
// The dashboard is a static single page (index.html, app.js, app.css) that
// talks to /api/v1/ only; these files hold no data, so they are served
// without the token (a browser cannot send a header when it loads a page)
// but under the same Host rule as the API.
//
// Only names of one path level, of [A-Za-z0-9._-] and not starting with '.',
// with a known extension, are served, and each one resolved (links
// followed) must lie in the UI directory: nothing outside it can be named.
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>

#include "api.hpp"

#ifndef TW_UI_DIST_DIR
#define TW_UI_DIST_DIR ""
#endif

namespace tapwire::serve {
namespace {

// "/", or one file name with an extension the dashboard uses.
const std::regex& file_route() {
  static const std::regex re(R"(/|/[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\.(html|js|css|map|svg|png|ico|txt|woff2))");
  return re;
}

std::string content_type(const std::string& name) {
  const std::string ext = name.substr(name.rfind('.') + 1);
  if (ext == "html") return "text/html; charset=utf-8";
  if (ext == "js") return "text/javascript; charset=utf-8";
  if (ext == "css") return "text/css; charset=utf-8";
  if (ext == "map") return "application/json";
  if (ext == "svg") return "image/svg+xml";
  if (ext == "png") return "image/png";
  if (ext == "ico") return "image/x-icon";
  if (ext == "woff2") return "font/woff2";
  return "text/plain; charset=utf-8";
}

bool has_index(const std::string& dir) {
  struct stat st {};
  return !dir.empty() && ::stat((dir + "/index.html").c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string real(const std::string& p) {
  char buf[PATH_MAX];
  return ::realpath(p.c_str(), buf) ? std::string(buf) : std::string();
}

void serve_file(const Ctx& ctx, const httplib::Request& req, httplib::Response& res) {
  const std::string name = req.path == "/" ? "index.html" : req.path.substr(1);
  const std::string dir = real(ctx.o.ui_dir);
  const std::string path = real(ctx.o.ui_dir + "/" + name);
  struct stat st {};
  // Resolved, it must still be a regular file directly in the UI directory.
  if (dir.empty() || path.empty() || path.compare(0, dir.size() + 1, dir + "/") != 0 ||
      path.find('/', dir.size() + 1) != std::string::npos || ::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    res.status = 404;  // the error handler answers in JSON
    return;
  }
  char etag[64];
  std::snprintf(etag, sizeof etag, "\"%llx-%llx\"", static_cast<unsigned long long>(st.st_size),
                static_cast<unsigned long long>(st.st_mtim.tv_sec * 1000000000ll + st.st_mtim.tv_nsec));
  // Fixed names: the browser revalidates every time, and a 304 costs nothing.
  res.set_header("Cache-Control", "no-cache");
  res.set_header("ETag", etag);
  res.set_header("X-Content-Type-Options", "nosniff");
  if (name.size() > 5 && name.compare(name.size() - 5, 5, ".html") == 0) {
    res.set_header("Content-Security-Policy",
                   "default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; "
                   "style-src 'self' 'unsafe-inline'; script-src 'self'; object-src 'none'; "
                   "base-uri 'none'; frame-ancestors 'none'");
    res.set_header("X-Frame-Options", "DENY");
    res.set_header("Referrer-Policy", "no-referrer");
  }
  if (req.get_header_value("If-None-Match") == etag) {
    res.status = 304;
    return;
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream body;
  body << in.rdbuf();
  if (!in) throw ApiError(500, "cannot read the dashboard file " + name);
  res.set_content(body.str(), content_type(name));
}

}  // namespace

bool ui_public_path(const std::string& method, const std::string& path) {
  return (method == "GET" || method == "HEAD") && std::regex_match(path, file_route());
}

std::string find_ui_dir(const std::string& exe) {
  if (!exe.empty()) {
    const std::string bin = exe.substr(0, exe.rfind('/'));
    // Installed: /usr/bin/tapwire and /usr/share/tapwire/ui.
    if (std::string d = real(bin + "/../share/tapwire/ui"); has_index(d)) return d;
  }
  // A build tree: the ui/dist of the sources it was built from.
  if (std::string d = real(TW_UI_DIST_DIR); has_index(d)) return d;
  return "";
}

void add_static_routes(httplib::Server& s, Ctx& ctx) {
  if (ctx.o.ui_dir.empty()) return;
  s.Get(R"(/|/[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\.(html|js|css|map|svg|png|ico|txt|woff2))",
        [&ctx](const httplib::Request& req, httplib::Response& res) { serve_file(ctx, req, res); });
}

}  // namespace tapwire::serve
