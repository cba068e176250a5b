// Seccomp filters per thread kind (libseccomp). A call outside the calling thread's allow-list
// traps (SECCOMP_RET_TRAP): the SIGSYS handler writes one line naming the thread, its kind and the
// system call to stderr (the VMM's log) and ends the process with status 159 (128 + SIGSYS).
#pragma once

#include <string>

#include "sandbox/syscalls.h"

namespace keel::sandbox {

// The C library's own needs on any thread (memory, futexes, signals, thread exit, writing logs,
// time): part of every kind's filter.
AllowList libc_syscalls();

// The allow-lists of one VMM's thread kinds, put together by whoever knows its parts.
class SyscallPolicy {
 public:
  void allow(ThreadKind kind, const AllowList& list);
  // The kind's list with the C library's.
  AllowList list(ThreadKind kind) const;
  // Everything any kind may do: for threads that start others (they inherit their filter).
  AllowList union_of_all() const;

 private:
  AllowList lists_[4];
};

// Installs a filter allowing `list` on the calling thread, or with `all_threads` on every thread
// of the process (TSYNC). no_new_privs must be set (Confinement::begin does). Throws Error.
void install_filter(const AllowList& list, bool all_threads = false);

// Installs the SIGSYS handler that reports violations. Process-wide; call before any filter.
void install_violation_handler();
// What the handler says about the calling thread.
void set_thread_identity(ThreadKind kind, const std::string& name);

}  // namespace keel::sandbox
