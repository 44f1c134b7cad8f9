// Where the API server is and how to authenticate to it: a kubeconfig
// (current context's cluster and user) or the in-cluster service account.
// Everything is read into memory at start, before privileges are dropped;
// only a token file is read again later (service account tokens rotate).
#pragma once

#include <sys/stat.h>

#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>

namespace tapwire::kube_watch {

// One line: what failed, on which input, what to do.
struct CredentialsError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Credentials {
  std::string server;  // https://host:port[/prefix], no trailing '/'
  std::string ca_pem;  // "" → the system's trust store
  bool insecure = false;  // insecure-skip-tls-verify
  std::string token;  // read at start
  std::string token_file;  // "" or read again when it changes
  std::string cert_pem;  // client certificate and key (PEM)
  std::string key_pem;
  std::string origin;  // for logs: "kubeconfig /root/.kube/config (context prod)"
};

Credentials load_kubeconfig(const std::string& path, const std::string& context);
// dir holds token, ca.crt (normally /var/run/secrets/kubernetes.io/serviceaccount).
Credentials load_in_cluster(const std::string& dir);

// Reads a whole file of at most max bytes; throws CredentialsError.
std::string read_small_file(const std::string& path, size_t max, const std::string& what);

// The Bearer token to send. A token file is read again when it changed (or
// a minute passed, or after a 401); if it cannot be read the last token stays.
class TokenSource {
 public:
  TokenSource(std::string token, std::string file);
  std::string get();
  void invalidate();  // after a 401: look at the file again at the next get()

 private:
  void reread_locked();

  std::mutex mu_;
  std::string token_;
  std::string file_;
  struct stat seen_ {};
  std::chrono::steady_clock::time_point checked_{};
  bool force_ = false;
  std::string last_error_;
};

}  // namespace tapwire::kube_watch
