#include "sandbox/seccomp.h"

#include <fcntl.h>
#include <seccomp.h>
#include <signal.h>
#include <ucontext.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "base/error.h"

namespace keel::sandbox {

const char* to_string(ThreadKind kind) {
  switch (kind) {
    case ThreadKind::kMainLoop: return "main loop";
    case ThreadKind::kControl: return "control";
    case ThreadKind::kVcpu: return "vCPU";
    case ThreadKind::kDeviceWorker: return "device worker";
  }
  return "unknown";
}

namespace {

constexpr unsigned kMaxSyscall = 512;

// What the SIGSYS handler may read: set once, before any filter, then only read. A signal handler
// has no other way to reach it.
std::atomic<const char* const*> g_syscall_names{nullptr};
thread_local char t_identity[64] = "unnamed thread";

// Async-signal-safe: only write(2) and exit_group(2), both in every filter.
void on_sigsys(int, siginfo_t* info, void* context) {
  char line[256];
  size_t n = 0;
  auto put = [&](const char* s) {
    while (*s && n < sizeof line - 1) line[n++] = *s++;
  };
  auto put_number = [&](long v) {
    char digits[24];
    int d = 0;
    if (v < 0) {
      put("-");
      v = -v;
    }
    do {
      digits[d++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v && d < 23);
    while (d) {
      char c[2] = {digits[--d], 0};
      put(c);
    }
  };
  int nr = info->si_syscall;
  const char* const* names = g_syscall_names.load(std::memory_order_acquire);
  put("keel: seccomp: the ");
  put(t_identity);
  put(" thread made the forbidden system call ");
  put(names && nr >= 0 && static_cast<unsigned>(nr) < kMaxSyscall && names[nr] ? names[nr] : "?");
  put(" (");
  put_number(nr);
  put(", first argument ");
  put_number(static_cast<long>(static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_RDI]));
  put("); ending the VMM\n");
  [[maybe_unused]] ssize_t w = ::write(STDERR_FILENO, line, n);
  ::syscall(SYS_exit_group, 128 + SIGSYS);
}

}  // namespace

void set_thread_identity(ThreadKind kind, const std::string& name) {
  std::string text = name + " (" + to_string(kind) + ")";
  std::strncpy(t_identity, text.c_str(), sizeof t_identity - 1);
}

void install_violation_handler() {
  if (!g_syscall_names.load()) {
    // Resolved once, before any filter: the handler must not allocate. Lives as long as the
    // process (its threads may trap until the end).
    auto* names = new const char*[kMaxSyscall]();
    for (unsigned nr = 0; nr < kMaxSyscall; ++nr) {
      char* name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, static_cast<int>(nr));
      names[nr] = name;  // malloc'd by libseccomp; kept
    }
    g_syscall_names.store(names, std::memory_order_release);
  }
  struct sigaction sa{};
  sa.sa_sigaction = on_sigsys;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  if (::sigaction(SIGSYS, &sa, nullptr) != 0) throw_errno("sigaction(SIGSYS)");
}

AllowList libc_syscalls() {
  const uint64_t exec = PROT_EXEC;
  return {
      // Memory: malloc, thread stacks. No new executable mappings (vCPU threads may: the engine
      // adds its own rules).
      {"brk"},
      {"mmap", {{2, exec, 0}}},
      {"mprotect", {{2, exec, 0}}},
      {"munmap"},
      {"madvise"},
      {"mremap"},
      // Threads: futexes, robust lists and rseq at start, exit at the end, names.
      {"futex"},
      {"set_robust_list"},
      {"rseq"},
      {"sched_yield"},
      {"exit"},
      {"exit_group"},
      {"gettid"},
      {"getpid"},
      {"prctl", {{0, ~0ull, PR_SET_NAME}}},
      {"prctl", {{0, ~0ull, PR_GET_NAME}}},
      // A thread narrowing its own filter (threads start under a wider one): adding a filter
      // only ever takes rights away.
      {"prctl", {{0, ~0ull, PR_SET_NO_NEW_PRIVS}}},
      {"seccomp"},
      // Signals: masks, the kick signal's return, a thread signalling its own process.
      {"rt_sigprocmask"},
      {"rt_sigreturn"},
      {"tgkill", {{0, ~0ull, static_cast<uint64_t>(::getpid())}}},
      // Time, sleeping, randomness (the vDSO covers most clock reads).
      {"clock_gettime"},
      {"clock_nanosleep"},
      {"nanosleep"},
      {"gettimeofday"},
      {"getrandom"},
      // The C library reads a few files on its own (malloc sizes its arenas by the CPU count it
      // reads from /sys): read-only opens, which in the confined VMM's empty root find nothing
      // and fall back to sched_getaffinity.
      {"openat", {{2, O_ACCMODE | O_CREAT | O_TRUNC, O_RDONLY}}},
      {"sched_getaffinity"},
      {"read"},
      // Writing logs and console output, closing what a thread opened.
      {"write"},
      {"writev"},
      {"close"},
      {"fstat"},
      {"newfstatat"},
      {"lseek"},
      // A fatal signal on any thread restores the terminal before the process dies.
      {"ioctl", {{1, ~0ull, TCSETS}}},
      {"rt_sigaction"},
  };
}

void SyscallPolicy::allow(ThreadKind kind, const AllowList& list) {
  append(lists_[static_cast<int>(kind)], list);
}

AllowList SyscallPolicy::list(ThreadKind kind) const {
  AllowList out = libc_syscalls();
  append(out, lists_[static_cast<int>(kind)]);
  return out;
}

AllowList SyscallPolicy::union_of_all() const {
  AllowList out = libc_syscalls();
  for (const auto& l : lists_) append(out, l);
  return out;
}

void install_filter(const AllowList& list, bool all_threads) {
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_TRAP);
  if (!ctx) throw Error("seccomp_init failed");
  struct Release {
    scmp_filter_ctx ctx;
    ~Release() { seccomp_release(ctx); }
  } release{ctx};
  if (all_threads && seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1) != 0)
    throw Error("seccomp: cannot synchronise threads");
  for (const SyscallRule& rule : list) {
    int nr = seccomp_syscall_resolve_name(rule.name);
    if (nr == __NR_SCMP_ERROR) throw Error(std::string("seccomp: unknown system call ") + rule.name);
    std::vector<scmp_arg_cmp> cmps;
    for (const auto& c : rule.conditions)
      cmps.push_back(SCMP_CMP(c.index, SCMP_CMP_MASKED_EQ, c.mask, c.value));
    uint32_t action = rule.fail_errno ? SCMP_ACT_ERRNO(rule.fail_errno) : SCMP_ACT_ALLOW;
    int rc = seccomp_rule_add_array(ctx, action, nr, static_cast<unsigned>(cmps.size()),
                                    cmps.empty() ? nullptr : cmps.data());
    // The same call allowed unconditionally and with conditions: the unconditional rule wins.
    if (rc != 0 && rc != -EEXIST)
      throw Error(std::string("seccomp: rule for ") + rule.name + ": " + std::strerror(-rc));
  }
  int rc = seccomp_load(ctx);
  if (rc != 0) throw Error(std::string("seccomp: cannot load the filter: ") + std::strerror(-rc));
}

}  // namespace keel::sandbox
