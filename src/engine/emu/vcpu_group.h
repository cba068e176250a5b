// What the vCPUs of one emu VM share and coordinate through, beyond guest RAM: which guest pages
// hold decoded code on any vCPU (so that a store by any vCPU, or a device, drops that code on
// every vCPU), and exclusive execution (every other vCPU stopped at a block boundary while one
// runs something no host atomic covers). docs/architecture.md ("emu: several vCPUs").
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

namespace keel::emu {

class Cpu;

class VcpuGroup {
 public:
  explicit VcpuGroup(uint64_t ram_pages);
  VcpuGroup(const VcpuGroup&) = delete;
  VcpuGroup& operator=(const VcpuGroup&) = delete;

  void add(Cpu* cpu);
  void remove(Cpu* cpu);

  // ---- code pages
  // Some vCPU may hold decoded code for guest-physical page `page` (a relaxed load: the hot
  // paths check it on every TLB fill and slow store).
  bool holds_code(uint64_t page) const {
    return page < pages_ && code_[page].load(std::memory_order_relaxed);
  }
  // `by` decoded code on `page`: from now on every vCPU's stores to it take the slow path (their
  // cached write permissions are revoked before this returns).
  void mark_code(uint64_t page, Cpu& by);
  // `page` was written by vCPU `by` (or by a device when `by` is null): every other vCPU drops
  // its code there at its next block boundary. The caller drops its own.
  void code_written(uint64_t page, const Cpu* by);

  // Every vCPU drops the write access its soft TLB grants (its next store to any page walks and
  // marks the page dirty again). Returns once every vCPU was stopped outside guest code (or, for
  // the calling vCPU's own thread in an I/O access, inside it), stripped, and let go again.
  void revoke_all_writes();

  // ---- exclusive execution
  // Runs `fn` on the calling vCPU's thread while every other vCPU of the group is stopped
  // outside guest code (parked at a block boundary, halted, or not running).
  void run_exclusive(Cpu& self, const std::function<void()>& fn);
  // A vCPU's thread starts or stops executing guest code (Cpu::run, around HLT waits). Entering
  // waits while another vCPU runs exclusively.
  void enter(Cpu& self);
  void leave(Cpu& self);
  // At a block boundary, after Cpu::service_requested_: parks while an exclusive run is pending.
  void park_if_requested(Cpu& self);

 private:
  // Stops every vCPU of the group but `caller` (when it is one of them) outside guest code, runs
  // `fn`, and lets them go, also when `fn` throws. Waits for another exclusive run first.
  void with_others_stopped(const Cpu* caller, const std::function<void()>& fn);
  const uint64_t pages_;
  std::unique_ptr<std::atomic<uint8_t>[]> code_;

  std::mutex mutex_;  // the member list, the exclusive state; taken before any Cpu's own locks
  std::condition_variable changed_;
  std::vector<Cpu*> cpus_;
  unsigned running_ = 0;     // vCPUs executing guest code
  bool exclusive_ = false;   // a run_exclusive is pending or running
};

}  // namespace keel::emu
