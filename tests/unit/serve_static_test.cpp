// tapwire serve's dashboard files (userspace/serve/static_files.cpp,
// docs/DASHBOARD.md): served from the UI directory without the token, with
// their content types and caching headers, and nothing outside it.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>

#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include <httplib.h>

#include "server.hpp"
#include "temp_dir.hpp"

namespace serve = tapwire::serve;

namespace {

void write(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

constexpr const char* kToken = "0123456789abcdef-static";

class ServeStatic : public ::testing::Test {
 protected:
  tapwire::test_util::TempDir dir{"serve-static"};
  std::string data = dir.path() + "/data", ui = dir.path() + "/ui";
  std::unique_ptr<serve::Server> server;
  std::thread thread;
  int port = 0;

  void SetUp() override {
    ASSERT_EQ(::mkdir(data.c_str(), 0755), 0);
    ASSERT_EQ(::mkdir(ui.c_str(), 0755), 0);
    write(ui + "/index.html", "<!doctype html><title>tapwire</title>");
    write(ui + "/app.js", "console.log(1)");
    write(ui + "/app.css", "body{}");
    write(dir.path() + "/secret.js", "top-secret-bytes");
    write(data + "/secret.css", "top-secret-bytes");
    ASSERT_EQ(::symlink("../secret.js", (ui + "/outside.js").c_str()), 0);
  }
  void TearDown() override {
    if (server) server->stop();
    if (thread.joinable()) thread.join();
  }
  void start(const std::string& ui_dir) {
    serve::ServeOptions o;
    o.data_dir = data;
    o.port = 0;
    o.node = "test-node";
    o.token = kToken;
    o.loopback_needs_token = true;
    o.control_socket = data + "/no-sensor.sock";
    o.ui_dir = ui_dir;
    server = std::make_unique<serve::Server>(o);
    port = server->bind();
    thread = std::thread([this] { server->run(); });
  }
  httplib::Result get(const std::string& path, const httplib::Headers& h = {}) {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(10, 0);
    return c.Get(path.c_str(), h);
  }
};

}  // namespace

TEST(ServeStaticPaths, OnlyTheDashboardsFileNamesArePublic) {
  for (const char* p : {"/", "/index.html", "/app.js", "/app.css", "/app.js.map", "/favicon.ico"}) {
    EXPECT_TRUE(serve::ui_public_path("GET", p)) << p;
    EXPECT_TRUE(serve::ui_public_path("HEAD", p)) << p;
    EXPECT_FALSE(serve::ui_public_path("POST", p)) << p;
  }
  for (const char* p : {"/api/v1/calls", "/api/v1/openapi.json", "/mcp", "/../x.js", "/.hidden.js", "/a/b.js",
                        "/app.exe", "/app", "", "/index.html/", "//app.js", "/app.js?x", "/a b.js"})
    EXPECT_FALSE(serve::ui_public_path("GET", p)) << p;
}

TEST_F(ServeStatic, FilesWithTheirTypesAndCachingWithoutTheToken) {
  start(ui);
  for (auto [path, type] : {std::pair{"/", "text/html; charset=utf-8"}, {"/index.html", "text/html; charset=utf-8"},
                            {"/app.js", "text/javascript; charset=utf-8"}, {"/app.css", "text/css; charset=utf-8"}}) {
    auto r = get(path);
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 200) << path;
    EXPECT_EQ(r->get_header_value("Content-Type"), type) << path;
    EXPECT_EQ(r->get_header_value("Cache-Control"), "no-cache") << path;
    EXPECT_EQ(r->get_header_value("X-Content-Type-Options"), "nosniff") << path;
    const std::string etag = r->get_header_value("ETag");
    ASSERT_FALSE(etag.empty()) << path;
    auto again = get(path, {{"If-None-Match", etag}});
    ASSERT_TRUE(again);
    EXPECT_EQ(again->status, 304) << path;
    EXPECT_TRUE(again->body.empty());
  }
  auto index = get("/");
  EXPECT_EQ(index->body, "<!doctype html><title>tapwire</title>");
  EXPECT_NE(index->get_header_value("Content-Security-Policy").find("default-src 'self'"), std::string::npos);
  // The API still wants the token.
  EXPECT_EQ(get("/api/v1/openapi.json")->status, 401);
  EXPECT_EQ(get("/api/v1/openapi.json", {{"Authorization", std::string("Bearer ") + kToken}})->status, 200);
  // The Host rule holds for the files too.
  EXPECT_EQ(get("/", {{"Host", "rebound.example"}})->status, 403);
}

TEST_F(ServeStatic, NothingOutsideTheDirectory) {
  start(ui);
  for (const char* p : {"/outside.js", "/secret.js", "/../secret.js", "/%2e%2e/secret.js", "/..%2fsecret.js",
                        "/..%2fdata%2fsecret.css", "/missing.js", "/.%2e/secret.js"}) {
    auto r = get(p);
    ASSERT_TRUE(r) << p;
    EXPECT_TRUE(r->status == 404 || r->status == 400 || r->status == 401) << p << ": " << r->status;
    EXPECT_EQ(r->body.find("top-secret-bytes"), std::string::npos) << p;  // the file's bytes
    EXPECT_NE(r->status, 200) << p;
  }
  // A missing file answers as the API does: JSON.
  auto r = get("/missing.js");
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(r->get_header_value("Content-Type"), "application/json");
}

TEST_F(ServeStatic, NoUiDirNoDashboard) {
  start("");
  auto r = get("/", {{"Authorization", std::string("Bearer ") + kToken}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(get("/")->status, 401);  // without a dashboard, / is like any path: the token first
}

TEST(ServeStaticDir, FoundNextToTheBinaryWhenInstalled) {
  tapwire::test_util::TempDir d{"serve-static-install"};
  ASSERT_EQ(::mkdir((d.path() + "/bin").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((d.path() + "/share").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((d.path() + "/share/tapwire").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((d.path() + "/share/tapwire/ui").c_str(), 0755), 0);
  write(d.path() + "/share/tapwire/ui/index.html", "x");
  char real[PATH_MAX];
  ASSERT_TRUE(::realpath((d.path() + "/share/tapwire/ui").c_str(), real));
  EXPECT_EQ(serve::find_ui_dir(d.path() + "/bin/tapwire"), real);
}
