// An output file written to FILE.tmp and renamed over FILE only once
// complete ("-" is standard output; devices and FIFOs are written directly).
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "commands.hpp"

namespace tapwire::cli {

// The output is written to FILE.tmp and renamed over FILE only once complete,
// so an error never leaves a half-written FILE behind.
class OutputFile {
 public:
  explicit OutputFile(const std::string& path) : path_(path) {
    if (path_ == "-") {
      fp_ = stdout;
      return;
    }
    struct stat st {};
    if (::stat(path_.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
      if (S_ISDIR(st.st_mode))
        throw CliError("cannot write the output file", path_, "it is a directory; name a file to write");
      // A device or FIFO (/dev/null, /dev/stdout, a pipe): written directly,
      // never replaced by a rename.
      fp_ = std::fopen(path_.c_str(), "wb");
      if (!fp_) throw CliError("cannot open the output", path_, std::strerror(errno));
      return;
    }
    tmp_ = path_ + ".tmp";
    fp_ = std::fopen(tmp_.c_str(), "wb");
    if (!fp_)
      throw CliError("cannot create the output file", tmp_,
                     std::string(std::strerror(errno)) + "; check that its directory exists and is writable");
  }
  ~OutputFile() {
    if (fp_ && fp_ != stdout) std::fclose(fp_);
    if (!tmp_.empty() && !committed_) ::unlink(tmp_.c_str());
  }
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  std::FILE* fp() const { return fp_; }
  const std::string& writing_path() const { return tmp_.empty() ? path_ : tmp_; }

  // Flushes, closes and renames; throws CliError on failure.
  void commit() {
    const bool flushed = std::fflush(fp_) == 0 && !std::ferror(fp_);
    const int flush_errno = errno;
    if (tmp_.empty()) {
      const bool closed = fp_ == stdout || std::fclose(fp_) == 0;
      if (fp_ != stdout) fp_ = nullptr;
      if (!flushed || !closed)
        throw CliError("cannot write the output", path_ == "-" ? "standard output" : path_,
                       std::strerror(flushed ? errno : flush_errno));
      return;
    }
    const bool closed = std::fclose(fp_) == 0;
    fp_ = nullptr;
    if (!flushed || !closed)
      throw CliError("cannot write the output file", tmp_,
                     std::string(std::strerror(flushed ? errno : flush_errno)) + "; check free space");
    if (std::rename(tmp_.c_str(), path_.c_str()) != 0)
      throw CliError("cannot rename the output file", tmp_ + " -> " + path_, std::strerror(errno));
    committed_ = true;
  }

 private:
  std::string path_;
  std::string tmp_;
  std::FILE* fp_ = nullptr;
  bool committed_ = false;
};

}  // namespace tapwire::cli
