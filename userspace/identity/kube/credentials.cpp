#include "credentials.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <cstdlib>

#include <yaml-cpp/binary.h>
#include <yaml-cpp/yaml.h>

#include "log.hpp"

namespace tapwire::kube_watch {

namespace {

constexpr size_t kMaxConfig = 16u << 20;
constexpr size_t kMaxPem = 1u << 20;
constexpr size_t kMaxToken = 64u << 10;

std::string trim(std::string s) {
  auto b = s.find_first_not_of(" \t\r\n");
  auto e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

std::string dir_of(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash == 0 ? 1 : slash);
}

std::string resolve(const std::string& base_dir, const std::string& p) {
  if (p.empty() || p[0] == '/') return p;
  return base_dir + "/" + p;
}

// A named entry ("clusters", "users", "contexts") of a kubeconfig.
YAML::Node find_named(const YAML::Node& root, const char* list, const char* inner, const std::string& name,
                      const std::string& file) {
  const YAML::Node l = root[list];
  if (l && !l.IsSequence())
    throw CredentialsError("kubeconfig " + file + ": \"" + list + "\" is not a list; check the file");
  if (l) {
    for (const auto& e : l) {
      if (e.IsMap() && e["name"] && e["name"].IsScalar() && e["name"].as<std::string>() == name) {
        YAML::Node n = e[inner];
        if (!n || !n.IsMap())
          throw CredentialsError("kubeconfig " + file + ": " + list + " entry \"" + name + "\" has no \"" + inner +
                                 "\" map; check the file");
        return n;
      }
    }
  }
  throw CredentialsError("kubeconfig " + file + ": no " + std::string(list).substr(0, std::strlen(list) - 1) +
                         " named \"" + name + "\"; check the file or --context");
}

std::string scalar(const YAML::Node& m, const char* key, const std::string& file) {
  const YAML::Node v = m[key];
  if (!v || v.IsNull()) return {};
  if (!v.IsScalar()) throw CredentialsError("kubeconfig " + file + ": \"" + key + "\" is not a string");
  return v.as<std::string>();
}

std::string base64_field(const YAML::Node& m, const char* key, const std::string& file) {
  std::string b64 = scalar(m, key, file);
  if (b64.empty()) return {};
  auto bytes = YAML::DecodeBase64(b64);
  if (bytes.empty())
    throw CredentialsError("kubeconfig " + file + ": \"" + key + "\" is not valid base64; check the file");
  return std::string(bytes.begin(), bytes.end());
}

void check_pem(const std::string& pem, const std::string& what, const char* marker) {
  if (pem.find(marker) == std::string::npos)
    throw CredentialsError(what + " is not PEM (no \"" + marker + "\"); give a PEM file");
}

}  // namespace

std::string read_small_file(const std::string& path, size_t max, const std::string& what) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    throw CredentialsError("cannot read " + what + " " + path + ": " + std::strerror(errno));
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      throw CredentialsError("cannot read " + what + " " + path + ": " + std::strerror(e));
    }
    if (n == 0) break;
    if (out.size() + static_cast<size_t>(n) > max) {
      ::close(fd);
      throw CredentialsError(what + " " + path + " is larger than " + std::to_string(max >> 10) +
                             " KiB; is it the right file?");
    }
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

Credentials load_kubeconfig(const std::string& path, const std::string& context) {
  std::string text = read_small_file(path, kMaxConfig, "kubeconfig");
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw CredentialsError("kubeconfig " + path + ": line " + std::to_string(e.mark.line + 1) + ": " + e.msg +
                           "; fix the YAML");
  }
  if (!root.IsMap()) throw CredentialsError("kubeconfig " + path + " is not a YAML map; is it a kubeconfig?");
  try {
    std::string ctx_name = context.empty() ? scalar(root, "current-context", path) : context;
    if (ctx_name.empty())
      throw CredentialsError("kubeconfig " + path + " has no current-context; set one or pass --context");
    YAML::Node ctx = find_named(root, "contexts", "context", ctx_name, path);
    std::string cluster_name = scalar(ctx, "cluster", path);
    std::string user_name = scalar(ctx, "user", path);
    YAML::Node cluster = find_named(root, "clusters", "cluster", cluster_name, path);
    std::string base = dir_of(path);

    Credentials c;
    c.origin = "kubeconfig " + path + " (context " + ctx_name + ")";
    c.server = trim(scalar(cluster, "server", path));
    if (c.server.rfind("https://", 0) != 0 && c.server.rfind("http://", 0) != 0)
      throw CredentialsError("kubeconfig " + path + ": cluster \"" + cluster_name + "\" server \"" + c.server +
                             "\" is not an http(s) URL; check the file");
    while (!c.server.empty() && c.server.back() == '/') c.server.pop_back();
    const YAML::Node insecure = cluster["insecure-skip-tls-verify"];
    if (insecure && !insecure.IsNull()) {
      if (!insecure.IsScalar())
        throw CredentialsError("kubeconfig " + path + ": insecure-skip-tls-verify is not true or false");
      c.insecure = insecure.as<bool>();  // true, True, yes, …; anything else throws with its line
    }
    c.ca_pem = base64_field(cluster, "certificate-authority-data", path);
    if (c.ca_pem.empty()) {
      std::string ca_file = resolve(base, scalar(cluster, "certificate-authority", path));
      if (!ca_file.empty()) c.ca_pem = read_small_file(ca_file, kMaxPem, "certificate-authority");
    }
    if (!c.ca_pem.empty()) check_pem(c.ca_pem, "the certificate-authority of " + path, "-----BEGIN CERTIFICATE-----");

    if (!user_name.empty()) {
      YAML::Node user = find_named(root, "users", "user", user_name, path);
      if (user["exec"] || user["auth-provider"])
        throw CredentialsError("kubeconfig " + path + ": user \"" + user_name +
                               "\" gets its credentials from a plugin (exec/auth-provider), which "
                               "tapwire-kube-watch does not run; give it a token or a client certificate");
      c.token = trim(scalar(user, "token", path));
      c.token_file = resolve(base, scalar(user, "tokenFile", path));
      if (!c.token_file.empty()) {  // as client-go: what the file says wins over "token"
        try {
          c.token = trim(read_small_file(c.token_file, kMaxToken, "tokenFile"));
        } catch (const CredentialsError&) {
          if (c.token.empty()) throw;
        }
      }
      c.cert_pem = base64_field(user, "client-certificate-data", path);
      if (c.cert_pem.empty()) {
        std::string f = resolve(base, scalar(user, "client-certificate", path));
        if (!f.empty()) c.cert_pem = read_small_file(f, kMaxPem, "client-certificate");
      }
      c.key_pem = base64_field(user, "client-key-data", path);
      if (c.key_pem.empty()) {
        std::string f = resolve(base, scalar(user, "client-key", path));
        if (!f.empty()) c.key_pem = read_small_file(f, kMaxPem, "client-key");
      }
      if (c.cert_pem.empty() != c.key_pem.empty())
        throw CredentialsError("kubeconfig " + path + ": user \"" + user_name +
                               "\" has a client certificate without its key (or the reverse); give both");
      if (!c.cert_pem.empty()) {
        check_pem(c.cert_pem, "the client certificate of " + path, "-----BEGIN ");
        check_pem(c.key_pem, "the client key of " + path, "-----BEGIN ");
      }
    }
    return c;
  } catch (const YAML::Exception& e) {
    throw CredentialsError("kubeconfig " + path + ": line " + std::to_string(e.mark.line + 1) + ": " + e.msg +
                           "; check the file");
  }
}

Credentials load_in_cluster(const std::string& dir) {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (!host || !*host)
    throw CredentialsError("in-cluster: KUBERNETES_SERVICE_HOST is not set; run in a pod or pass --kubeconfig FILE");
  std::string h = host;
  if (h.find(':') != std::string::npos) h = "[" + h + "]";  // IPv6
  Credentials c;
  c.origin = "in-cluster service account (" + dir + ")";
  c.server = "https://" + h + ":" + ((port && *port) ? port : "443");
  c.token_file = dir + "/token";
  c.token = trim(read_small_file(c.token_file, kMaxToken, "service account token"));
  c.ca_pem = read_small_file(dir + "/ca.crt", kMaxPem, "service account CA");
  check_pem(c.ca_pem, "service account CA " + dir + "/ca.crt", "-----BEGIN CERTIFICATE-----");
  return c;
}

TokenSource::TokenSource(std::string token, std::string file) : token_(std::move(token)), file_(std::move(file)) {
  if (!file_.empty()) {
    ::stat(file_.c_str(), &seen_);
    checked_ = std::chrono::steady_clock::now();
  }
}

void TokenSource::invalidate() {
  std::lock_guard lk(mu_);
  force_ = true;
}

void TokenSource::reread_locked() {
  struct stat st {};
  // stat follows the ..data symlink that the kubelet swaps on rotation.
  bool changed = ::stat(file_.c_str(), &st) != 0 || st.st_ino != seen_.st_ino || st.st_size != seen_.st_size ||
                 st.st_mtim.tv_sec != seen_.st_mtim.tv_sec || st.st_mtim.tv_nsec != seen_.st_mtim.tv_nsec;
  auto now = std::chrono::steady_clock::now();
  if (!changed && !force_ && now - checked_ < std::chrono::minutes(1)) return;
  checked_ = now;
  force_ = false;
  try {
    std::string t = trim(read_small_file(file_, kMaxToken, "token file"));
    seen_ = st;
    if (t.empty()) throw CredentialsError("token file " + file_ + " is empty");
    if (t != token_) log_line("token: read a new token from " + file_);
    token_ = std::move(t);
    last_error_.clear();
  } catch (const CredentialsError& e) {
    std::string msg = e.what();
    if (msg != last_error_) log_line("token: " + msg + "; keeping the token read before");
    last_error_ = msg;
  }
}

std::string TokenSource::get() {
  std::lock_guard lk(mu_);
  if (!file_.empty()) reread_locked();
  return token_;
}

}  // namespace tapwire::kube_watch
