// GET requests to the API server on libcurl, one client per thread (its
// connection is kept alive between the pages of a list and the watch that
// follows). Certificates and keys are handed over as in-memory blobs: no file
// is opened once privileges are dropped. Bodies are streamed to the caller.
#pragma once

#include <curl/curl.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <string_view>

#include "credentials.hpp"

namespace tapwire::kube_watch {

struct HttpResult {
  long status = 0;  // 0: no HTTP answer
  CURLcode code = CURLE_OK;
  std::string curl_error;  // libcurl's detail for code (may hold timings: not for comparing)
  long os_errno = 0;  // the system error behind code, if any
  bool stalled = false;  // nothing arrived for the stall limit
  bool stopped = false;  // the watcher is stopping
  bool aborted = false;  // on_data refused more
  std::string error_body;  // a non-200 answer's body, first 64 KiB
};

struct HttpHooks {
  std::function<void(long status)> on_headers;  // once, when the final response's headers are in
  std::function<bool(std::string_view)> on_data;  // body of a 200; false aborts the transfer
  std::function<void()> on_tick;  // at least once a second while the request runs
};

class HttpClient {
 public:
  HttpClient(const Credentials& creds, TokenSource& tokens, const std::atomic<bool>& stop);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // GET server + path_query. stall: abort when no byte arrives for that long.
  HttpResult get(const std::string& path_query, std::chrono::milliseconds stall, const HttpHooks& hooks);

  // One line for a transport failure (no HTTP status). The same failure
  // gives the same text every time: the reflector logs only when it changes.
  std::string describe(const HttpResult& r) const;
  std::string escape(std::string_view s) const;

 private:
  static size_t on_write(char* p, size_t size, size_t n, void* self);
  static size_t on_header(char* p, size_t size, size_t n, void* self);
  static int on_progress(void* self, curl_off_t, curl_off_t, curl_off_t, curl_off_t);

  const Credentials& creds_;
  TokenSource& tokens_;
  const std::atomic<bool>& stop_;
  CURL* curl_ = nullptr;
  char errbuf_[CURL_ERROR_SIZE] = {};
  // per request
  const HttpHooks* hooks_ = nullptr;
  HttpResult* result_ = nullptr;
  std::chrono::steady_clock::time_point last_activity_;
  std::chrono::milliseconds stall_{0};
  bool headers_done_ = false;
};

}  // namespace tapwire::kube_watch
