#include "vm/migration.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>
#include <vector>

#include "base/error.h"
#include "base/log.h"
#include "vm/machine.h"
#include "vm/snapshot.h"

namespace keel::migration {

namespace {

using Clock = std::chrono::steady_clock;

uint64_t ms_since(Clock::time_point t) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count());
}

// A page's content hash: four independent multiply-xor lanes over its 512 words.
uint64_t page_hash(const uint8_t* page) {
  uint64_t h[4] = {0x9E3779B97F4A7C15ull, 0xC2B2AE3D27D4EB4Full, 0x165667B19E3779F9ull,
                   0x85EBCA77C2B2AE63ull};
  for (size_t i = 0; i < kPageSize; i += 32) {
    for (int l = 0; l < 4; ++l) {
      uint64_t w;
      std::memcpy(&w, page + i + 8 * l, 8);
      h[l] = (h[l] ^ w) * 0xFF51AFD7ED558CCDull;
      h[l] ^= h[l] >> 29;
    }
  }
  return h[0] ^ (h[1] * 3) ^ (h[2] * 5) ^ (h[3] * 7);
}

void send_all(int fd, const uint8_t* data, size_t len) {
  while (len) {
    ssize_t n = ::send(fd, data, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw_errno("migration: send");
    data += n;
    len -= static_cast<size_t>(n);
  }
}

void send_record(int fd, const state::SectionWriter& s) {
  std::vector<uint8_t> bytes;
  state::append_record(bytes, s);
  send_all(fd, bytes.data(), bytes.size());
}

// Sends the pages [first, first + count) of RAM, in records of at most kRamRecordPages.
uint64_t send_pages(int fd, const uint8_t* ram, uint64_t first, uint64_t count) {
  uint64_t sent = 0;
  while (count) {
    uint64_t n = std::min<uint64_t>(count, kRamRecordPages);
    state::SectionWriter r("ram", 1);
    r.u64("offset", first * kPageSize);
    r.bytes("data", {ram + first * kPageSize, n * kPageSize});
    send_record(fd, r);
    sent += n * kPageSize;
    first += n;
    count -= n;
  }
  return sent;
}

// One pass: sends every page whose hash differs from `hashes` (updated), in runs. Returns bytes
// sent.
uint64_t send_changed(int fd, const GuestMemory& memory, std::vector<uint64_t>& hashes) {
  const uint8_t* ram = memory.ram_base();
  uint64_t sent = 0, run = 0, run_len = 0;
  for (uint64_t p = 0; p < hashes.size(); ++p) {
    uint64_t h = page_hash(ram + p * kPageSize);
    if (h != hashes[p]) {
      hashes[p] = h;
      if (!run_len) run = p;
      ++run_len;
      continue;
    }
    if (run_len) sent += send_pages(fd, ram, run, run_len);
    run_len = 0;
  }
  if (run_len) sent += send_pages(fd, ram, run, run_len);
  return sent;
}

// Sends the pages whose bit is set in `bits` (one per RAM page), in runs. Returns bytes sent.
uint64_t send_marked(int fd, const GuestMemory& memory, const std::vector<uint64_t>& bits) {
  const uint8_t* ram = memory.ram_base();
  const uint64_t pages = memory.page_count();
  uint64_t sent = 0, p = 0;
  while (p < pages) {
    if (!((bits[p / 64] >> (p % 64)) & 1)) {
      ++p;
      continue;
    }
    uint64_t run = p;
    while (p < pages && ((bits[p / 64] >> (p % 64)) & 1)) ++p;
    sent += send_pages(fd, ram, run, p - run);
  }
  return sent;
}

uint64_t count_marked(const std::vector<uint64_t>& bits) {
  uint64_t n = 0;
  for (uint64_t w : bits) n += static_cast<uint64_t>(__builtin_popcountll(w));
  return n;
}

// The pages in use (not all zero): what the first pass sends when the engine logs dirty pages.
std::vector<uint64_t> pages_in_use(const GuestMemory& memory) {
  static const std::vector<uint8_t> zero(kPageSize);
  std::vector<uint64_t> bits((memory.page_count() + 63) / 64);
  const uint8_t* ram = memory.ram_base();
  for (uint64_t p = 0; p < memory.page_count(); ++p)
    if (std::memcmp(ram + p * kPageSize, zero.data(), kPageSize) != 0)
      bits[p / 64] |= uint64_t{1} << (p % 64);
  return bits;
}

uint64_t count_changed(const GuestMemory& memory, const std::vector<uint64_t>& hashes) {
  const uint8_t* ram = memory.ram_base();
  uint64_t n = 0;
  for (uint64_t p = 0; p < hashes.size(); ++p) n += page_hash(ram + p * kPageSize) != hashes[p];
  return n;
}

template <typename F>
void update(std::mutex& mutex, F&& f) {
  std::lock_guard lock(mutex);
  f();
}

sockaddr_in tcp_address(const Uri& uri) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uri.port);
  std::string host = uri.host == "localhost" ? "127.0.0.1" : uri.host;
  if (::inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1)
    throw UsageError("migration: '" + uri.host + "' is not an IPv4 address");
  return a;
}

sockaddr_un unix_address(const Uri& uri) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (uri.path.size() >= sizeof a.sun_path) throw UsageError("migration: socket path too long: " + uri.path);
  std::memcpy(a.sun_path, uri.path.c_str(), uri.path.size() + 1);
  return a;
}

}  // namespace

Uri parse_uri(const std::string& text) {
  Uri uri;
  if (text.rfind("unix:", 0) == 0 && text.size() > 5) {
    uri.kind = Uri::Kind::kUnix;
    uri.path = text.substr(5);
    return uri;
  }
  if (text.rfind("tcp:", 0) == 0) {
    size_t colon = text.rfind(':');
    if (colon > 4) {
      uri.kind = Uri::Kind::kTcp;
      uri.host = text.substr(4, colon - 4);
      std::string port = text.substr(colon + 1);
      char* end = nullptr;
      unsigned long p = std::strtoul(port.c_str(), &end, 10);
      if (!port.empty() && *end == 0 && p > 0 && p < 65536) {
        uri.port = static_cast<uint16_t>(p);
        return uri;
      }
    }
  }
  throw UsageError("migration URI '" + text + "' is not unix:PATH or tcp:HOST:PORT");
}

UniqueFd connect_to(const Uri& uri, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    UniqueFd fd(::socket(uri.kind == Uri::Kind::kUnix ? AF_UNIX : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) throw_errno("migration: socket");
    int r;
    if (uri.kind == Uri::Kind::kUnix) {
      sockaddr_un a = unix_address(uri);
      r = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
    } else {
      sockaddr_in a = tcp_address(uri);
      r = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
    }
    if (r == 0) return fd;
    if ((errno != ENOENT && errno != ECONNREFUSED) || Clock::now() >= deadline)
      throw_errno("migration: cannot connect to the target");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the target is starting
  }
}

UniqueFd listen_on(const Uri& uri) {
  UniqueFd fd(::socket(uri.kind == Uri::Kind::kUnix ? AF_UNIX : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw_errno("migration: socket");
  int r;
  if (uri.kind == Uri::Kind::kUnix) {
    sockaddr_un a = unix_address(uri);
    ::unlink(uri.path.c_str());
    r = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
  } else {
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a = tcp_address(uri);
    r = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
  }
  if (r != 0) throw_errno("migration: cannot listen for the incoming VM");
  if (::listen(fd.get(), 1) != 0) throw_errno("migration: listen");
  return fd;
}

void migrate(Machine& machine, const Uri& uri, UniqueFd connection, const Options& options,
             Status& status, std::mutex& mutex) {
  auto start = Clock::now();
  auto announce = [&](const char* s) {
    if (options.on_status) options.on_status(s);
  };
  update(mutex, [&] { status = Status{}; status.status = "active"; });
  announce("active");
  try {
    UniqueFd fd = connection ? std::move(connection) : connect_to(uri, std::chrono::seconds(10));
    int one = 1;
    if (uri.kind == Uri::Kind::kTcp) ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    const GuestMemory& memory = machine.memory();
    auto header = state::encode_header();
    send_all(fd.get(), header.data(), header.size());
    state::SectionWriter vm("vm", 1);
    snapshot::save_config(machine.config(), vm, machine.pci().disk_file_sizes());
    send_record(fd.get(), vm);

    // Pre-copy. With the engine's dirty log: the first pass sends every page in use, each later
    // one the pages written since the previous take. Without it (an engine that cannot log):
    // pages start as "zero" (the hash of a zero page) and every pass sends the pages whose
    // content hash changed.
    Engine& engine = machine.engine();
    const std::string no_log = engine.start_dirty_log();
    const bool logged = no_log.empty();
    struct StopLog {
      Engine& engine;
      bool on;
      ~StopLog() {
        if (on) engine.stop_dirty_log();
      }
    } stop_log{engine, logged};
    if (!logged) log::info("migration: {}; finding changed pages by content hash", no_log);
    std::vector<uint64_t> hashes;
    std::vector<uint64_t> dirty;  // logged: taken, not yet sent
    if (logged) {
      dirty = pages_in_use(memory);
    } else {
      std::vector<uint8_t> zero(kPageSize);
      hashes.assign(memory.page_count(), page_hash(zero.data()));
    }
    update(mutex, [&] { status.total_bytes = memory.ram_size(); });
    double bytes_per_ms = 0;
    uint64_t remaining = 0;
    for (uint32_t pass = 0; pass < kMaxIterations; ++pass) {
      auto t = Clock::now();
      uint64_t sent = logged ? send_marked(fd.get(), memory, dirty)
                             : send_changed(fd.get(), memory, hashes);
      uint64_t ms = std::max<uint64_t>(1, ms_since(t));
      if (sent) bytes_per_ms = static_cast<double>(sent) / static_cast<double>(ms);
      if (logged) {
        dirty = engine.take_dirty_log();  // what the guest wrote during this pass
        remaining = count_marked(dirty) * kPageSize;
      } else {
        remaining = count_changed(memory, hashes) * kPageSize;
      }
      update(mutex, [&] {
        status.transferred_bytes += sent;
        status.remaining_bytes = remaining;
        status.iterations = pass + 1;
        status.dirty_pages_rate = remaining / kPageSize * 1000 / ms;
      });
      if (bytes_per_ms > 0 &&
          static_cast<double>(remaining) / bytes_per_ms <= static_cast<double>(options.downtime_limit.count()))
        break;
    }

    // Stop and copy.
    auto stop = Clock::now();
    machine.stop_and_send([&](std::vector<uint8_t> blob) {
      uint64_t sent = 0;
      if (logged) {
        // The pages taken after the last pass and those written since, up to the pause.
        std::vector<uint64_t> last = engine.take_dirty_log();
        for (size_t i = 0; i < dirty.size() && i < last.size(); ++i) dirty[i] |= last[i];
        sent = send_marked(fd.get(), memory, dirty);
      } else {
        sent = send_changed(fd.get(), memory, hashes);
      }
      state::SectionWriter s("state", 1);
      s.bytes("blob", blob);
      send_record(fd.get(), s);
      send_record(fd.get(), state::SectionWriter("done", 1));
      update(mutex, [&] {
        status.transferred_bytes += sent + blob.size();
        status.remaining_bytes = 0;
      });
      // The target answers once its machine is built; without the answer the VM resumes here.
      pollfd p{fd.get(), POLLIN, 0};
      uint8_t ack = 0;
      if (::poll(&p, 1, 60'000) != 1 || ::recv(fd.get(), &ack, 1, 0) != 1 || ack != kAck)
        throw Error("migration: the target did not take the VM (see its log)");
    });
    uint64_t downtime = ms_since(stop);
    update(mutex, [&] {
      status.status = "completed";
      status.downtime_ms = downtime;
      status.total_time_ms = ms_since(start);
    });
    log::info("migrated to the target in {} ms (downtime {} ms)", ms_since(start), downtime);
    announce("completed");
    machine.shutdown(ShutdownReason::kQuit, "migrated");
  } catch (const std::exception& e) {
    log::warn("migration failed, the VM goes on here: {}", e.what());
    update(mutex, [&] {
      status.status = "failed";
      status.error = e.what();
      status.total_time_ms = ms_since(start);
    });
    announce("failed");
  }
}

int parse_fd_uri(const std::string& text) {
  std::string number = text.substr(3);
  char* end = nullptr;
  long fd = std::strtol(number.c_str(), &end, 10);
  if (text.rfind("fd:", 0) != 0 || number.empty() || *end != 0 || fd < 3 || fd > 1023)
    throw UsageError("incoming URI '" + text + "' is not fd:N with N an inherited descriptor (3 or more)");
  if (::fcntl(static_cast<int>(fd), F_GETFD) < 0)
    throw UsageError("incoming URI '" + text + "': descriptor " + number + " is not open");
  int type = 0;
  socklen_t len = sizeof type;
  if (::getsockopt(static_cast<int>(fd), SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM)
    throw UsageError("incoming URI '" + text + "': descriptor " + number + " is not a stream socket");
  // Ours from now on: not passed to anything keel might start.
  ::fcntl(static_cast<int>(fd), F_SETFD, FD_CLOEXEC);
  return static_cast<int>(fd);
}

bool is_listening(int fd) {
  int listening = 0;
  socklen_t len = sizeof listening;
  return ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening;
}

Incoming receive(int listener, const std::string& what) {
  UniqueFd connection(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
  if (!connection) throw_errno("migration: accept");
  return receive_connected(std::move(connection), what);
}

Incoming receive_connected(UniqueFd connection, const std::string& what) {
  Incoming in;
  in.connection = std::move(connection);
  int fd = in.connection.get();
  state::RecordReader reader(
      [fd](std::span<uint8_t> buf) {
        size_t got = 0;
        while (got < buf.size()) {
          ssize_t n = ::recv(fd, buf.data() + got, buf.size() - got, 0);
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) return false;
          got += static_cast<size_t>(n);
        }
        return true;
      },
      what);
  reader.header();
  state::SectionReader vm = reader.next();
  if (vm.name() != "vm") vm.fail("the stream does not start with the VM's configuration");
  state::check_version(vm, 1);
  in.config = snapshot::load_config(vm);
  in.memory = std::make_unique<GuestMemory>(in.config.memory_bytes);
  const uint64_t ram_size = in.memory->ram_size();
  bool have_state = false;
  for (;;) {
    state::SectionReader r = reader.next();
    if (r.name() == "ram") {
      uint64_t offset = r.u64("offset");
      auto data = r.bytes("data", kRamRecordPages * kPageSize);
      if (offset % kPageSize || data.size() % kPageSize || offset > ram_size ||
          data.size() > ram_size - offset)
        r.fail("pages at RAM offset " + std::to_string(offset) + " (" + std::to_string(data.size()) +
               " bytes) are not page-aligned inside the guest's RAM");
      std::memcpy(in.memory->ram_base() + offset, data.data(), data.size());
    } else if (r.name() == "state" && !have_state) {
      auto blob = r.bytes("blob", snapshot::kMaxStateFile);
      in.state = state::Document::parse(blob, what + " (device state)");
      have_state = true;
    } else if (r.name() == "done" && have_state) {
      return in;
    } else {
      r.fail("unexpected in a migration stream here");
    }
  }
}

}  // namespace keel::migration
