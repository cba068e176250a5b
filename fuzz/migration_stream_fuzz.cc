// libFuzzer target: what `keel run --incoming` reads from a migration source (vm/migration.h),
// over a real socket. Any stream must be taken or refused with a keel::Error, never crash, hang,
// write outside the guest's RAM or allocate beyond its bounds.
//
// Records carry CRCs, so raw bytes (first byte odd) rarely get past the first record. The other
// mode builds well-framed records from the input instead: chunks of [kind][length:2][payload],
// kind 0 a valid "vm" record with 1 to 16 MiB of RAM, 1 a "ram" record (offset from the payload),
// 2 a "state" blob, 3 "done", anything else a record of another name with the payload as its raw
// field list, so the fuzzer spends its time on record order, RAM bounds and the state blob.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"
#include "base/fd.h"
#include "state/state_format.h"
#include "vm/migration.h"
#include "vm/snapshot.h"

namespace {

using keel::state::SectionWriter;

void put_le(std::vector<uint8_t>& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

// A record with `payload` as its field list, framed and checksummed as append_record does.
void append_raw_record(std::vector<uint8_t>& out, const std::string& name, std::span<const uint8_t> payload) {
  size_t start = out.size();
  put_le(out, name.size(), 2);
  out.insert(out.end(), name.begin(), name.end());
  put_le(out, 1, 4);
  put_le(out, payload.size(), 4);
  out.insert(out.end(), payload.begin(), payload.end());
  put_le(out, keel::state::crc32({out.data() + start, out.size() - start}), 4);
}

std::vector<uint8_t> framed_stream(std::span<const uint8_t> in) {
  std::vector<uint8_t> out = keel::state::encode_header();
  size_t at = 0;
  while (at + 3 <= in.size()) {
    uint8_t kind = in[at];
    size_t len = std::min<size_t>(in[at + 1] | (size_t{in[at + 2]} << 8), in.size() - at - 3);
    std::span<const uint8_t> payload = in.subspan(at + 3, len);
    at += 3 + len;
    switch (kind % 5) {
      case 0: {
        keel::VmConfig config;
        config.test_guest = "/nonexistent/guest.bin";
        config.memory_bytes = uint64_t{1 + (len % 16)} << 20;
        SectionWriter vm("vm", 1);
        keel::snapshot::save_config(config, vm);
        keel::state::append_record(out, vm);
        break;
      }
      case 1: {
        uint64_t offset = 0;
        std::memcpy(&offset, payload.data(), std::min<size_t>(8, payload.size()));
        if (kind & 0x80) offset &= ~uint64_t{0xFFF};  // mostly page-aligned offsets
        SectionWriter ram("ram", 1);
        ram.u64("offset", offset);
        ram.bytes("data", payload.subspan(std::min<size_t>(8, payload.size())));
        keel::state::append_record(out, ram);
        break;
      }
      case 2: {
        SectionWriter state("state", 1);
        state.bytes("blob", payload);
        keel::state::append_record(out, state);
        break;
      }
      case 3:
        keel::state::append_record(out, SectionWriter("done", 1));
        break;
      default:
        append_raw_record(out, kind & 0x80 ? "vm" : "ram", payload);
        break;
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::span<const uint8_t> rest(data + 1, size - 1);
  std::vector<uint8_t> stream =
      data[0] & 1 ? std::vector<uint8_t>(rest.begin(), rest.end()) : framed_stream(rest);
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return 0;
  keel::UniqueFd reader(fds[0]);
  // The source: writes the stream and closes, as a source that dies mid-way would.
  std::thread source([fd = fds[1], &stream] {
    size_t at = 0;
    while (at < stream.size()) {
      ssize_t n = ::send(fd, stream.data() + at, stream.size() - at, MSG_NOSIGNAL);
      if (n <= 0) break;
      at += static_cast<size_t>(n);
    }
    ::close(fd);
  });
  try {
    keel::migration::Incoming in = keel::migration::receive_connected(std::move(reader), "fuzz stream");
  } catch (const keel::Error&) {
  }
  source.join();
  return 0;
}
