// A temporary directory for one test, removed with everything in it (its
// subdirectories made writable first, in case a test took that away).
// TAPWIRE_TEST_KEEP=1 keeps it and prints where it is.
#pragma once

#include <stdlib.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace tapwire::test_util {

class TempDir {
 public:
  explicit TempDir(const char* what = "tapwire") {
    std::string tmpl = std::string("/tmp/tw-") + what + "-test-XXXXXX";
    const char* p = mkdtemp(tmpl.data());
    if (!p) throw std::runtime_error("mkdtemp failed");
    path_ = p;
  }
  ~TempDir() {
    namespace fs = std::filesystem;
    if (std::getenv("TAPWIRE_TEST_KEEP")) {
      std::printf("kept %s\n", path_.c_str());
      return;
    }
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(path_, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec))
      if (it->is_directory()) ::chmod(it->path().c_str(), 0750);
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace tapwire::test_util
