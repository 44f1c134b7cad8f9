#include "http.hpp"

#include <cstring>
#include <stdexcept>

namespace tapwire::kube_watch {

namespace {
constexpr size_t kMaxErrorBody = 64u << 10;
constexpr long kConnectTimeoutMs = 10000;

curl_blob blob(const std::string& s) {
  // CURL_BLOB_COPY: libcurl keeps its own copy.
  return curl_blob{const_cast<char*>(s.data()), s.size(), CURL_BLOB_COPY};
}
}  // namespace

HttpClient::HttpClient(const Credentials& creds, TokenSource& tokens, const std::atomic<bool>& stop)
    : creds_(creds), tokens_(tokens), stop_(stop), curl_(curl_easy_init()) {
  if (!curl_) throw std::runtime_error("libcurl: curl_easy_init failed");
  curl_easy_setopt(curl_, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl_, CURLOPT_ERRORBUFFER, errbuf_);
  curl_easy_setopt(curl_, CURLOPT_PROTOCOLS_STR, "https,http");
  curl_easy_setopt(curl_, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(curl_, CURLOPT_CONNECTTIMEOUT_MS, kConnectTimeoutMs);
  curl_easy_setopt(curl_, CURLOPT_ACCEPT_ENCODING, "");  // gzip for large lists
  // A watch can be silent for minutes: TCP keepalives find a dead peer.
  curl_easy_setopt(curl_, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(curl_, CURLOPT_TCP_KEEPIDLE, 30L);
  curl_easy_setopt(curl_, CURLOPT_TCP_KEEPINTVL, 10L);
  curl_easy_setopt(curl_, CURLOPT_USERAGENT, "tapwire-kube-watch/" TAPWIRE_VERSION);
  curl_easy_setopt(curl_, CURLOPT_WRITEFUNCTION, &HttpClient::on_write);
  curl_easy_setopt(curl_, CURLOPT_WRITEDATA, this);
  curl_easy_setopt(curl_, CURLOPT_HEADERFUNCTION, &HttpClient::on_header);
  curl_easy_setopt(curl_, CURLOPT_HEADERDATA, this);
  curl_easy_setopt(curl_, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl_, CURLOPT_XFERINFOFUNCTION, &HttpClient::on_progress);
  curl_easy_setopt(curl_, CURLOPT_XFERINFODATA, this);
  if (creds_.insecure) {
    curl_easy_setopt(curl_, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(curl_, CURLOPT_SSL_VERIFYHOST, 0L);
  } else if (!creds_.ca_pem.empty()) {
    // Only the cluster's CA is trusted, as client-go does when one is given.
    curl_easy_setopt(curl_, CURLOPT_CAINFO, static_cast<char*>(nullptr));
    curl_easy_setopt(curl_, CURLOPT_CAPATH, static_cast<char*>(nullptr));
    curl_blob ca = blob(creds_.ca_pem);
    curl_easy_setopt(curl_, CURLOPT_CAINFO_BLOB, &ca);
  }
  if (!creds_.cert_pem.empty()) {
    curl_blob cert = blob(creds_.cert_pem), key = blob(creds_.key_pem);
    curl_easy_setopt(curl_, CURLOPT_SSLCERTTYPE, "PEM");
    curl_easy_setopt(curl_, CURLOPT_SSLCERT_BLOB, &cert);
    curl_easy_setopt(curl_, CURLOPT_SSLKEYTYPE, "PEM");
    curl_easy_setopt(curl_, CURLOPT_SSLKEY_BLOB, &key);
  }
}

HttpClient::~HttpClient() {
  if (curl_) curl_easy_cleanup(curl_);
}

std::string HttpClient::escape(std::string_view s) const {
  char* e = curl_easy_escape(curl_, s.data(), static_cast<int>(s.size()));
  std::string out = e ? e : "";
  curl_free(e);
  return out;
}

size_t HttpClient::on_write(char* p, size_t size, size_t n, void* self_) {
  auto* self = static_cast<HttpClient*>(self_);
  size_t len = size * n;
  self->last_activity_ = std::chrono::steady_clock::now();
  HttpResult& r = *self->result_;
  if (r.status == 0) curl_easy_getinfo(self->curl_, CURLINFO_RESPONSE_CODE, &r.status);
  if (r.status != 200) {
    if (r.error_body.size() < kMaxErrorBody) r.error_body.append(p, std::min(len, kMaxErrorBody - r.error_body.size()));
    return len;
  }
  if (self->hooks_->on_data && !self->hooks_->on_data(std::string_view(p, len))) {
    r.aborted = true;
    return 0;  // CURLE_WRITE_ERROR
  }
  return len;
}

size_t HttpClient::on_header(char* p, size_t size, size_t n, void* self_) {
  auto* self = static_cast<HttpClient*>(self_);
  size_t len = size * n;
  self->last_activity_ = std::chrono::steady_clock::now();
  std::string_view line(p, len);
  if (line == "\r\n" || line == "\n") {  // end of one response's headers
    long code = 0;
    curl_easy_getinfo(self->curl_, CURLINFO_RESPONSE_CODE, &code);
    if (code >= 200 && !self->headers_done_) {  // 1xx are interim
      self->headers_done_ = true;
      self->result_->status = code;
      if (self->hooks_->on_headers) self->hooks_->on_headers(code);
    }
  }
  return len;
}

int HttpClient::on_progress(void* self_, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* self = static_cast<HttpClient*>(self_);
  if (self->stop_.load()) {
    self->result_->stopped = true;
    return 1;
  }
  if (std::chrono::steady_clock::now() - self->last_activity_ > self->stall_) {
    self->result_->stalled = true;
    return 1;
  }
  if (self->hooks_->on_tick) self->hooks_->on_tick();
  return 0;
}

HttpResult HttpClient::get(const std::string& path_query, std::chrono::milliseconds stall, const HttpHooks& hooks) {
  HttpResult r;
  hooks_ = &hooks;
  result_ = &r;
  stall_ = stall;
  headers_done_ = false;
  last_activity_ = std::chrono::steady_clock::now();
  errbuf_[0] = '\0';
  std::string url = creds_.server + path_query;
  curl_easy_setopt(curl_, CURLOPT_URL, url.c_str());
  curl_slist* headers = curl_slist_append(nullptr, "Accept: application/json");
  std::string token = tokens_.get();
  if (!token.empty()) {
    std::string auth = "Authorization: Bearer " + token;
    headers = curl_slist_append(headers, auth.c_str());
  }
  curl_easy_setopt(curl_, CURLOPT_HTTPHEADER, headers);
  r.code = curl_easy_perform(curl_);
  curl_easy_setopt(curl_, CURLOPT_HTTPHEADER, static_cast<curl_slist*>(nullptr));
  curl_slist_free_all(headers);
  if (r.status == 0) curl_easy_getinfo(curl_, CURLINFO_RESPONSE_CODE, &r.status);
  r.curl_error = errbuf_[0] ? errbuf_ : curl_easy_strerror(r.code);
  curl_easy_getinfo(curl_, CURLINFO_OS_ERRNO, &r.os_errno);
  if (r.status == 401) tokens_.invalidate();
  hooks_ = nullptr;
  result_ = nullptr;
  return r;
}

std::string HttpClient::describe(const HttpResult& r) const {
  const std::string& s = creds_.server;
  // libcurl's error buffer names timings and byte counts that differ on
  // every retry; errno and the code's own text do not.
  const std::string sys = r.os_errno ? std::strerror(static_cast<int>(r.os_errno)) : curl_easy_strerror(r.code);
  switch (r.code) {
    case CURLE_COULDNT_RESOLVE_HOST:
      return "cannot resolve the API server's name in " + s + ": check the server address";
    case CURLE_COULDNT_CONNECT:
      return "cannot connect to " + s + " (" + sys + "): check the server address and that the API server is up";
    case CURLE_OPERATION_TIMEDOUT:
      return "no answer from " + s + " (timed out): check the network path to the API server";
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
      return "TLS: the certificate of " + s + " is not trusted (" + r.curl_error + "): check certificate-authority";
    case CURLE_SSL_CONNECT_ERROR:
      return "TLS handshake with " + s + " failed (" + sys + "): check the CA, client certificate and server URL";
    case CURLE_SSL_CERTPROBLEM:
      return "the client certificate or key cannot be used (" + r.curl_error + "): check client-certificate/client-key";
    case CURLE_PARTIAL_FILE:
      return "the response from " + s + " was cut short";
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
      return "the connection to " + s + " was lost (" + sys + ")";
    default:
      return "request to " + s + " failed (" + std::string(curl_easy_strerror(r.code)) + ")";
  }
}

}  // namespace tapwire::kube_watch
