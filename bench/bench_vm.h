// A VM process (keel or QEMU) with its console on pipes, for benchmark rows that boot a guest:
// type commands, read until a pattern appears. Killed (SIGKILL) and reaped on destruction.
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <regex>
#include <stdexcept>
#include <string>
#include <vector>

namespace keel::bench {

class Vm {
 public:
  explicit Vm(const std::vector<std::string>& argv) {
    int in[2], out[2];
    if (pipe(in) || pipe(out)) throw std::runtime_error("pipe failed");
    pid_ = fork();
    if (pid_ == 0) {
      dup2(in[0], 0);
      dup2(out[1], 1);
      dup2(out[1], 2);
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execvp(args[0], args.data());
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    in_ = in[1];
    out_ = out[0];
  }
  ~Vm() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    close(in_);
    close(out_);
  }
  void type(const std::string& s) { (void)!write(in_, s.data(), s.size()); }
  // What wait_for() saw: the output before the match, and the match's groups (0 = all of it).
  struct Match {
    std::string prefix;
    std::vector<std::string> groups;
  };
  // Reads until `re` matches the output; throws at the deadline. Output after the match stays
  // for the next wait_for().
  Match wait_for(const std::regex& re, std::chrono::seconds deadline) {
    using Clock = std::chrono::steady_clock;
    auto end = Clock::now() + deadline;
    std::smatch m;
    while (!std::regex_search(text_, m, re)) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now()).count();
      if (left <= 0) throw std::runtime_error("guest output never matched; last: " + tail());
      pollfd p{out_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left)) <= 0) continue;
      char buf[4096];
      ssize_t n = read(out_, buf, sizeof buf);
      if (n <= 0) throw std::runtime_error("VM exited; last output: " + tail());
      text_.append(buf, n);
    }
    Match result{m.prefix().str(), {}};
    for (const auto& group : m) result.groups.push_back(group.str());
    text_ = m.suffix().str();
    return result;
  }

 private:
  std::string tail() const { return text_.size() > 400 ? text_.substr(text_.size() - 400) : text_; }
  pid_t pid_ = -1;
  int in_ = -1, out_ = -1;
  std::string text_;
};

}  // namespace keel::bench
