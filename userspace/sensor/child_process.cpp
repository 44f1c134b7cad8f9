#include "child_process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "clock.hpp"

namespace tapwire::sensor {

pid_t spawn_child(const std::vector<std::string>& args, int stdout_fd) {
  std::vector<const char*> argv;
  for (auto& a : args) argv.push_back(a.c_str());
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid != 0) return pid;
  // The child: die with the sensor, take signals again, then exec.
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  if (stdout_fd >= 0) {
    dup2(stdout_fd, STDOUT_FILENO);
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull >= 0) dup2(devnull, STDIN_FILENO);
  }
  execv(argv[0], const_cast<char* const*>(argv.data()));
  std::fprintf(stderr, "tapwire-sensor: cannot run %s: %s\n", argv[0], std::strerror(errno));
  _exit(127);
}

void stop_child(pid_t pid, uint64_t grace_ns, bool signalled) {
  if (pid <= 0) return;
  if (!signalled) kill(pid, SIGTERM);
  const uint64_t deadline = mono_ns() + grace_ns;
  int status;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (mono_ns() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return;
    }
    usleep(10000);
  }
}

}  // namespace tapwire::sensor
