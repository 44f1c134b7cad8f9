// Delayed dissections of snapshots: `tapwire dissect` run as a child (in its
// own process group, at lower priority, with this server's lack of
// privileges), writing DATA_DIR/snapshots/NAME/dissections/ID.db. Its
// progress comes as JSON lines on its stderr (--progress-json); the job's
// state is kept beside the DB as ID.json, so that a server started again
// lists what earlier ones ran. `tapwire dissect` writes the DB under a
// temporary name and renames it only when it succeeded: a failed or
// cancelled job leaves no DB behind.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "api.hpp"
#include "snapshot.hpp"
#include "timefmt.hpp"

namespace tapwire::serve {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

struct Job {
  std::string snapshot, id, dir;  // dir: the snapshot's dissections/
  json options;
  pid_t pid = -1;
  std::string state = "running";  // running, done, failed, cancelled, interrupted
  std::string created, finished, error;
  json progress = json::object();
  bool cancel = false;
  std::thread reader;

  json to_json() const {
    json p = progress;
    if (p.contains("bytes") && p.contains("total_bytes") && p["total_bytes"].get<double>() > 0)
      p["fraction"] = std::min(1.0, p["bytes"].get<double>() / p["total_bytes"].get<double>());
    if (state == "done") p["fraction"] = 1.0;
    json j = {{"id", id},           {"snapshot", snapshot}, {"db", snapshot + "/" + id}, {"state", state},
              {"created", created}, {"options", options},   {"progress", p}};
    if (!finished.empty()) j["finished"] = finished;
    if (!error.empty()) j["error"] = error;
    return j;
  }
};

std::string now_text() { return format_rfc3339_ns(realtime_now_ns()); }

// ID.json through a temporary file and a rename: a reader never sees half.
void save(const Job& j) {
  const std::string path = j.dir + "/" + j.id + ".json", tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << j.to_json().dump(2) << "\n";
    if (!out) return;
  }
  std::rename(tmp.c_str(), path.c_str());
}

std::optional<json> load(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.size() > (1u << 20)) return std::nullopt;
  auto j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  return j;
}

std::string new_id() {
  // Time first, so that ids sort by start; a random tail for two in one second.
  std::string t = format_rfc3339_ns(realtime_now_ns()).substr(0, 19);  // 2026-01-01T00:00:00
  std::erase_if(t, [](char c) { return c == '-' || c == ':'; });
  static std::mt19937 rng(std::random_device{}());
  char tail[8];
  std::snprintf(tail, sizeof tail, "%04x", static_cast<unsigned>(rng() & 0xffff));
  return "d" + t + "-" + tail;
}

}  // namespace

struct Jobs::Impl {
  const Ctx& ctx;
  std::mutex m;
  std::map<std::pair<std::string, std::string>, std::shared_ptr<Job>> jobs;  // (snapshot, id)

  explicit Impl(const Ctx& c) : ctx(c) {}

  size_t running() {
    size_t n = 0;
    for (auto& [k, j] : jobs) n += j->state == "running";
    return n;
  }

  // DATA_DIR/snapshots/NAME/dissections, made if need be: the snapshot's
  // directory is read-only once complete, so it is opened for its owner
  // for the mkdir and closed again.
  std::string dissections_dir(const std::string& snap_dir) {
    const std::string dir = snap_dir + "/" + snapshot::kDissectionsDir;
    struct stat st {};
    if (::lstat(dir.c_str(), &st) == 0) {
      if (!S_ISDIR(st.st_mode)) throw ApiError(409, dir + " is not a directory");
      return dir;
    }
    struct stat sd {};
    ::stat(snap_dir.c_str(), &sd);
    ::chmod(snap_dir.c_str(), (sd.st_mode & 07777) | S_IWUSR);
    const int rc = ::mkdir(dir.c_str(), 0750);
    const int e = errno;
    ::chmod(snap_dir.c_str(), sd.st_mode & 07777);
    if (rc != 0 && e != EEXIST) throw ApiError(500, "cannot create " + dir + ": " + std::strerror(e));
    return dir;
  }

  void spawn(const std::shared_ptr<Job>& job, const std::vector<std::string>& args) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw ApiError(500, std::string("pipe: ") + std::strerror(errno));
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const int devnull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    const pid_t pid = ::fork();
    if (pid < 0) {
      const int e = errno;
      ::close(fds[0]);
      ::close(fds[1]);
      if (devnull >= 0) ::close(devnull);
      throw ApiError(500, std::string("fork: ") + std::strerror(e));
    }
    if (pid == 0) {
      // Only async-signal-safe calls between fork and exec.
      ::setpgid(0, 0);  // cancel signals its workers too
      ::setpriority(PRIO_PROCESS, 0, 10);
      if (devnull >= 0) {
        ::dup2(devnull, 0);
        ::dup2(devnull, 1);
      }
      ::dup2(fds[1], 2);
      // Nothing else of the server's: not its listening socket, not its clients.
      ::close_range(3, ~0u, 0);
      ::execv(argv[0], argv.data());
      const char msg[] = "tapwire serve: cannot run tapwire dissect\n";
      (void)!::write(2, msg, sizeof msg - 1);
      ::_exit(127);
    }
    ::setpgid(pid, pid);
    ::close(fds[1]);
    if (devnull >= 0) ::close(devnull);
    job->pid = pid;
    job->reader = std::thread([this, job, fd = fds[0]] { follow(job, fd); });
  }

  // Reads the child's progress lines until it exits, then records how it ended.
  void follow(std::shared_ptr<Job> job, int fd) {
    FILE* in = ::fdopen(fd, "r");
    std::string last_error;
    char line[4096];
    while (in && std::fgets(line, sizeof line, in)) {
      std::string l = line;
      while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.pop_back();
      auto j = json::parse(l, nullptr, false);
      std::lock_guard lock(m);
      if (!j.is_discarded() && j.is_object() && j.contains("progress") && j["progress"].is_object())
        job->progress = j["progress"];
      else if (!l.empty())
        last_error = l.rfind("tapwire: ", 0) == 0 ? l.substr(9) : l;
    }
    if (in) std::fclose(in);
    int status = 0;
    while (::waitpid(job->pid, &status, 0) < 0 && errno == EINTR) {
    }
    std::lock_guard lock(m);
    job->finished = now_text();
    if (job->cancel) {
      job->state = "cancelled";
    } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
      job->state = "done";
    } else {
      job->state = "failed";
      job->error = !last_error.empty()     ? last_error
                   : WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status))
                                         : "exit status " + std::to_string(WEXITSTATUS(status));
    }
    save(*job);
  }

  // What a job's ID.json says, for jobs of earlier servers; "running" there
  // (and not here) means a server stopped under it.
  std::optional<json> from_disk(const std::string& dir, const std::string& id) {
    auto j = load(dir + "/" + id + ".json");
    if (!j) return std::nullopt;
    if (j->value("state", "") == "running") (*j)["state"] = "interrupted";
    return j;
  }
};

Jobs::Jobs(const Ctx& ctx) : impl_(std::make_unique<Impl>(ctx)) {}

Jobs::~Jobs() {
  std::vector<std::shared_ptr<Job>> all;
  {
    std::lock_guard lock(impl_->m);
    for (auto& [k, j] : impl_->jobs) {
      if (j->state == "running" && j->pid > 0) {
        j->cancel = true;
        ::kill(-j->pid, SIGTERM);
      }
      all.push_back(j);
    }
  }
  for (auto& j : all)
    if (j->reader.joinable()) j->reader.join();
}

json Jobs::start(const std::string& snapshot, const json& body) {
  const std::string snap_dir = impl_->ctx.snapshot_dir(snapshot);
  auto job = std::make_shared<Job>();
  job->snapshot = snapshot;
  job->id = body.contains("id") ? (body["id"].is_string() ? body["id"].get<std::string>() : std::string("?")) : new_id();
  if (!valid_name(job->id) || job->id.size() > 64)
    throw ApiError(400, "id: 1-64 of [A-Za-z0-9._-], not starting with '.'");
  std::vector<std::string> extra;
  json options = json::object();
  if (body.contains("dissectors")) {
    if (!body["dissectors"].is_string() ||
        body["dissectors"].get<std::string>().find_first_not_of("abcdefghijklmnopqrstuvwxyz0-9,") != std::string::npos)
      throw ApiError(400, "dissectors: a comma-separated list such as \"http,dns\"");
    options["dissectors"] = body["dissectors"];
    extra = {"--dissectors", body["dissectors"].get<std::string>()};
  }
  if (body.contains("jobs")) {
    if (!body["jobs"].is_number_integer() || body["jobs"].get<int64_t>() < 1 || body["jobs"].get<int64_t>() > 8)
      throw ApiError(400, "jobs: worker processes, 1 to 8");
    options["jobs"] = body["jobs"];
    extra.push_back("--jobs");
    extra.push_back(std::to_string(body["jobs"].get<int64_t>()));
  }
  for (auto& [k, v] : body.items())
    if (k != "id" && k != "dissectors" && k != "jobs") throw ApiError(400, "unknown field " + k + " (id, dissectors, jobs)");

  std::lock_guard lock(impl_->m);
  if (impl_->running() >= impl_->ctx.o.max_jobs)
    throw ApiError(429, "already " + std::to_string(impl_->ctx.o.max_jobs) + " dissections running; retry when one ends");
  job->dir = impl_->dissections_dir(snap_dir);
  struct stat st {};
  if (impl_->jobs.count({snapshot, job->id}) || ::lstat((job->dir + "/" + job->id + ".json").c_str(), &st) == 0 ||
      ::lstat((job->dir + "/" + job->id + ".db").c_str(), &st) == 0)
    throw ApiError(409, "dissection " + job->id + " of " + snapshot + " exists");
  job->options = options;
  job->created = now_text();
  const std::string exe = impl_->ctx.o.tapwire_exe.empty() ? "/proc/self/exe" : impl_->ctx.o.tapwire_exe;
  std::vector<std::string> args = {exe,           "dissect", "--snapshot", snapshot, "--data-dir", impl_->ctx.o.data_dir,
                                   "--db",        job->dir + "/" + job->id + ".db",   "--quiet",  "--progress-json"};
  args.insert(args.end(), extra.begin(), extra.end());
  save(*job);
  try {
    impl_->spawn(job, args);
  } catch (...) {
    ::unlink((job->dir + "/" + job->id + ".json").c_str());
    throw;
  }
  impl_->jobs[{snapshot, job->id}] = job;
  return job->to_json();
}

json Jobs::list(const std::string& snapshot) {
  const std::string dir = impl_->ctx.snapshot_dir(snapshot) + "/" + snapshot::kDissectionsDir;
  std::map<std::string, json> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string f = e.path().filename().string();
    if (f.size() <= 5 || f.compare(f.size() - 5, 5, ".json") != 0) continue;
    const std::string id = f.substr(0, f.size() - 5);
    if (!valid_name(id)) continue;
    if (auto j = impl_->from_disk(dir, id)) out[id] = *j;
  }
  std::lock_guard lock(impl_->m);
  for (auto& [k, j] : impl_->jobs)
    if (k.first == snapshot) out[k.second] = j->to_json();
  json arr = json::array();
  for (auto& [id, j] : out) arr.push_back(j);
  return {{"snapshot", snapshot}, {"dissections", arr}};
}

json Jobs::get(const std::string& snapshot, const std::string& id) {
  if (!valid_name(id)) throw ApiError(400, "not a dissection id");
  const std::string dir = impl_->ctx.snapshot_dir(snapshot) + "/" + snapshot::kDissectionsDir;
  {
    std::lock_guard lock(impl_->m);
    if (auto it = impl_->jobs.find({snapshot, id}); it != impl_->jobs.end()) return it->second->to_json();
  }
  if (auto j = impl_->from_disk(dir, id)) return *j;
  throw ApiError(404, "no dissection " + id + " of snapshot " + snapshot);
}

json Jobs::remove(const std::string& snapshot, const std::string& id) {
  json cur = get(snapshot, id);
  const std::string dir = impl_->ctx.snapshot_dir(snapshot) + "/" + snapshot::kDissectionsDir;
  {
    std::lock_guard lock(impl_->m);
    auto it = impl_->jobs.find({snapshot, id});
    if (it != impl_->jobs.end() && it->second->state == "running") {
      it->second->cancel = true;
      ::kill(-it->second->pid, SIGTERM);
      json j = it->second->to_json();
      j["state"] = "cancelling";
      return j;
    }
  }
  if (!impl_->ctx.o.allow_destructive)
    throw ApiError(403, "deleting a finished dissection needs tapwire serve --allow-destructive");
  for (const char* suffix : {".db", ".db-wal", ".db-shm", ".json"}) ::unlink((dir + "/" + id + suffix).c_str());
  std::lock_guard lock(impl_->m);
  if (auto it = impl_->jobs.find({snapshot, id}); it != impl_->jobs.end()) {
    if (it->second->reader.joinable()) it->second->reader.join();
    impl_->jobs.erase(it);
  }
  cur["state"] = "deleted";
  return cur;
}

std::string Jobs::results_dir(const std::string& snapshot) {
  const std::string snap_dir = impl_->ctx.snapshot_dir(snapshot);
  std::lock_guard lock(impl_->m);  // the chmod dance of one at a time
  return impl_->dissections_dir(snap_dir);
}

bool Jobs::running_on(const std::string& snapshot) {
  std::lock_guard lock(impl_->m);
  for (auto& [k, j] : impl_->jobs)
    if (k.first == snapshot && j->state == "running") return true;
  return false;
}

}  // namespace tapwire::serve
