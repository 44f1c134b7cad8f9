// tapwire-kube-watch: follows pods, services, endpointslices, nodes,
// replicasets and jobs on the Kubernetes API (list + watch, as client-go's
// reflector) and writes normalized workload objects on stdout for
// tapwire-sensor. docs/IDENTITY.md describes the contract.
#include <malloc.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <thread>
#include <vector>

#include "credentials.hpp"
#include "log.hpp"
#include "output.hpp"
#include "privileges.hpp"
#include "reflector.hpp"

using namespace tapwire::kube_watch;

namespace {

constexpr const char* kDefaultServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount";
constexpr int kStatsEverySeconds = 10;

int fail(const std::string& msg, int code = 2) {
  log_line(msg);
  return code;
}

std::string join_names(const std::vector<k::Resource>& rs) {
  std::string s;
  for (auto r : rs) s += (s.empty() ? "" : ",") + std::string(k::info(r).name);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "tapwire-kube-watch: lists and watches the Kubernetes API (pods, services, endpointslices, nodes, "
      "replicasets, jobs) and writes workload objects on stdout as length-prefixed JSON frames for "
      "tapwire-sensor (docs/IDENTITY.md)."};
  std::string kubeconfig, context, user = "nobody", node, sa_dir = kDefaultServiceAccountDir;
  bool in_cluster = false, version = false;
  int watch_timeout = 300, page_size = 500;
  double idle_timeout = 0, backoff_scale = 1.0;
  std::vector<std::string> resource_names;
  app.add_option("--kubeconfig", kubeconfig, "kubeconfig file (current context's cluster and user)");
  app.add_option("--context", context, "kubeconfig context to use instead of current-context");
  app.add_flag("--in-cluster", in_cluster,
               "use the pod's service account (the default when KUBERNETES_SERVICE_HOST is set)");
  app.add_option("--service-account-dir", sa_dir, "where the in-cluster token and ca.crt are")
      ->capture_default_str();
  app.add_option("--user", user, "unprivileged user to run as when started as root")->capture_default_str();
  app.add_option("--node", node, "this node's name, reported in Stats frames");
  app.add_option("--watch-timeout", watch_timeout, "timeoutSeconds of each watch (server side), seconds")
      ->check(CLI::Range(1, 3600))
      ->capture_default_str();
  app.add_option("--idle-timeout", idle_timeout,
                 "drop and resume a watch on which nothing (not even a bookmark) arrived for this long, "
                 "seconds; lists wait at most min(this, 60 s) for the next byte [default: watch-timeout + 30]")
      ->check(CLI::Range(0.1, 86400.0));
  app.add_option("--backoff-scale", backoff_scale, "multiply every retry delay (1 s doubling to 60 s) by this")
      ->check(CLI::Range(0.001, 1.0))
      ->capture_default_str();
  app.add_option("--resources", resource_names,
                 "comma-separated subset of pods,services,endpointslices,nodes,replicasets,jobs [default: all]")
      ->delimiter(',');
  app.add_option("--page-size", page_size, "items per list page (limit)")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  app.add_flag("--version", version, "print the version and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    return fail(std::string(e.what()) + " (see --help)");
  }
  if (version) {
    std::cout << "tapwire-kube-watch " << TAPWIRE_VERSION << "\n";
    return 0;
  }

  std::vector<k::Resource> resources;
  for (const auto& n : resource_names) {
    auto r = k::resource_by_name(n);
    if (!r) return fail("--resources: unknown resource \"" + n + "\" (one of " + join_names({k::kAllResources.begin(), k::kAllResources.end()}) + ")");
    bool dup = false;
    for (auto x : resources) dup = dup || x == *r;
    if (!dup) resources.push_back(*r);
  }
  if (resources.empty()) resources.assign(k::kAllResources.begin(), k::kAllResources.end());
  if (!kubeconfig.empty() && in_cluster) return fail("--kubeconfig and --in-cluster exclude each other; pick one");
  if (isatty(STDOUT_FILENO))
    return fail("stdout is a terminal: the output is binary frames for tapwire-sensor; pipe it to a reader");

  Credentials creds;
  try {
    const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
    if (!kubeconfig.empty())
      creds = load_kubeconfig(kubeconfig, context);
    else if (in_cluster || (host && *host))
      creds = load_in_cluster(sa_dir);
    else
      return fail("no API server to watch: pass --kubeconfig FILE, or run in a pod (--in-cluster)");
  } catch (const CredentialsError& e) {
    return fail(e.what());
  }

  // Six threads would otherwise get as many malloc arenas, each keeping its
  // own high-water mark.
  mallopt(M_ARENA_MAX, 2);
  signal(SIGPIPE, SIG_IGN);  // a gone reader shows as EPIPE on write
  // libcurl and OpenSSL read their configuration here, before the drop.
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return fail("libcurl: global initialization failed", 1);

  std::string privs;
  try {
    privs = drop_privileges(user);
  } catch (const PrivilegeError& e) {
    return fail("dropping privileges: " + std::string(e.what()), 1);
  }
  // Dropping privileges cleared any parent-death signal the parent set.
  pid_t parent = getppid();
  prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
  if (getppid() != parent) return fail("the parent exited during start", 1);

  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);  // inherited by the threads: only main takes them

  Options opts;
  opts.watch_timeout = std::chrono::seconds(watch_timeout);
  opts.idle_timeout = std::chrono::milliseconds(
      idle_timeout > 0 ? static_cast<int64_t>(idle_timeout * 1000) : (int64_t{watch_timeout} + 30) * 1000);
  opts.backoff_scale = backoff_scale;
  opts.page_size = page_size;
  auto watched = [&](k::Resource r) {
    for (auto x : resources)
      if (x == r) return true;
    return false;
  };

  Output out(STDOUT_FILENO);
  TokenSource tokens(creds.token, creds.token_file);
  Shared shared(out, creds, tokens, opts, watched(k::Resource::ReplicaSets), watched(k::Resource::Jobs));
  log_line("watching " + join_names(resources) + " on " + creds.server + " (" + creds.origin + "); " + privs);

  std::vector<std::thread> threads;
  for (auto r : resources) {
    std::vector<k::Resource> wait_for;
    if (r == k::Resource::Pods) {
      for (auto dep : {k::Resource::ReplicaSets, k::Resource::Jobs})
        if (watched(dep)) wait_for.push_back(dep);
    }
    threads.emplace_back([&shared, r, wait_for] {
      try {
        Reflector(r, shared, wait_for).run();
      } catch (const std::exception& e) {  // a bug or out of memory: stop whole, the parent restarts us
        log_line(std::string(k::info(r).name) + ": stopped: " + e.what());
        shared.request_stop();
      }
    });
  }

  auto owners_dropped = [&] {
    std::lock_guard lk(shared.owners_mu);
    return shared.owners.dropped();
  };
  int exit_code = 0;
  auto next_stats = std::chrono::steady_clock::now() + std::chrono::seconds(kStatsEverySeconds);
  while (!shared.stop) {
    timespec ts{1, 0};  // a second at most, to notice a dead stdout or a stopped thread
    int sig = sigtimedwait(&sigs, nullptr, &ts);
    if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP) {
      log_line(std::string("stopping on ") + (sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "SIGHUP"));
      break;
    }
    if (out.failed()) {
      exit_code = 1;
      break;
    }
    if (std::chrono::steady_clock::now() >= next_stats) {
      out.write(out.stats(node, owners_dropped()));
      next_stats += std::chrono::seconds(kStatsEverySeconds);
    }
  }
  if (shared.stop && !out.failed()) exit_code = 1;  // a reflector stopped us
  shared.request_stop();
  out.stopping();
  for (auto& t : threads) t.join();
  out.write(out.stats(node, owners_dropped()));
  curl_global_cleanup();
  return exit_code;
}
