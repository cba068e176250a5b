#include <arpa/inet.h>
#include <poll.h>
#include <sched.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <condition_variable>
#include <mutex>

#include "backends/net/slirp_backend.h"
#include "backends/net/tap_backend.h"
#include "base/eventfd.h"
#include "devices/virtio/virtio_net.h"
#include "devices/virtio/virtio_platform.h"
#include "keel_process.h"
#include "virtio_harness.h"

namespace keel {
namespace {

using testing::Buf;
using testing::VirtioHarness;
using namespace virtio_net;

// A backend the test talks to: records what the guest sends, injects frames for the guest (on the
// device's network thread, through an eventfd).
class FakeBackend : public NetBackend {
 public:
  std::string name() const override { return "fake"; }
  void send(std::span<const uint8_t> frame) override {
    std::lock_guard lock(mutex_);
    sent_.emplace_back(frame.begin(), frame.end());
    cv_.notify_all();
  }
  void fill_pollfds(std::vector<pollfd>& fds, int&, bool) override {
    fds.push_back({wake_.fd(), POLLIN, 0});
  }
  void dispatch(const std::vector<pollfd>& fds, size_t first) override {
    if (!(fds[first].revents & POLLIN)) return;
    wake_.consume();
    std::vector<std::vector<uint8_t>> frames;
    {
      std::lock_guard lock(mutex_);
      frames.swap(inject_);
    }
    for (auto& f : frames) deliver(f);
  }
  void inject(std::vector<uint8_t> frame) {
    {
      std::lock_guard lock(mutex_);
      inject_.push_back(std::move(frame));
    }
    wake_.signal();
  }
  std::optional<std::vector<uint8_t>> wait_sent(size_t n) {
    std::unique_lock lock(mutex_);
    if (!cv_.wait_for(lock, std::chrono::seconds(10), [&] { return sent_.size() >= n; }))
      return std::nullopt;
    return sent_[n - 1];
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::vector<uint8_t>> sent_, inject_;
  EventFd wake_;
};

std::vector<uint8_t> pattern_frame(size_t len, uint8_t seed) {
  std::vector<uint8_t> f(len);
  for (size_t i = 0; i < len; ++i) f[i] = static_cast<uint8_t>(seed + i * 13);
  return f;
}

class VirtioNetTest : public ::testing::Test {
 protected:
  void start(uint64_t features = ~0ull) {
    auto be = std::make_unique<FakeBackend>();
    backend = be.get();
    h = std::make_unique<VirtioHarness>(
        std::make_unique<VirtioNet>(std::move(be), default_mac(0)));
    ASSERT_TRUE(h->init(features) & virtio::kStatusDriverOk);
  }
  uint16_t transmit(const std::vector<uint8_t>& frame) {
    uint8_t hdr[kHeaderBytes] = {};
    uint64_t h_gpa = h->put(hdr, sizeof hdr);
    size_t half = frame.size() / 2;
    uint64_t a = h->put(frame.data(), half);
    uint64_t b = h->put(frame.data() + half, frame.size() - half);
    return h->add_chain(1, {{h_gpa, kHeaderBytes, false}, {a, static_cast<uint32_t>(half), false},
                            {b, static_cast<uint32_t>(frame.size() - half), false}});
  }
  // Reassembles a received packet: the first used element's header says how many follow.
  std::vector<uint8_t> receive(std::vector<uint64_t> buffers, uint16_t* num_buffers) {
    auto first = h->next_used(0);
    EXPECT_TRUE(first);
    if (!first) return {};
    std::vector<uint8_t> bytes(first->len);
    h->memory.read(buffers.at(first->id % buffers.size()), bytes.data(), first->len);
    std::memcpy(num_buffers, bytes.data() + 10, 2);
    for (uint16_t i = 1; i < *num_buffers; ++i) {
      auto next = h->next_used(0);
      EXPECT_TRUE(next);
      if (!next) return {};
      size_t at = bytes.size();
      bytes.resize(at + next->len);
      h->memory.read(buffers.at(next->id % buffers.size()), bytes.data() + at, next->len);
    }
    return {bytes.begin() + kHeaderBytes, bytes.end()};
  }
  std::vector<uint64_t> post_rx(int n, uint32_t len) {
    std::vector<uint64_t> bufs;
    for (int i = 0; i < n; ++i) {
      bufs.push_back(h->alloc(len));
      h->add_chain(0, {{bufs.back(), len, true}});
    }
    h->kick(0);
    return bufs;
  }

  FakeBackend* backend = nullptr;
  std::unique_ptr<VirtioHarness> h;
};

TEST_F(VirtioNetTest, ReportsMacAndLinkUp) {
  start();
  EXPECT_EQ(h->cfg_read(0x02, 2), 0x1041u);
  EXPECT_EQ(h->device_cfg(0, 4), 0x12005452u);
  EXPECT_EQ(h->device_cfg(4, 2), 0x5634u);
  EXPECT_EQ(h->device_cfg(6, 2), kStatusLinkUp);
  EXPECT_TRUE(h->device_features() & virtio::bit(kFeatureMrgRxbuf));
}

// A restored (or migrated-in) NIC announces its MAC once its network thread starts: one RARP
// request from it to everyone, before anything the guest sends. A NIC that booted does not.
TEST_F(VirtioNetTest, ARestoredNicAnnouncesItselfFirst) {
  auto be = std::make_unique<FakeBackend>();
  backend = be.get();
  auto net = std::make_unique<VirtioNet>(std::move(be), default_mac(1));
  net->restore_device_state(state::SectionReader("dev/virtio0", 1, {}));
  h = std::make_unique<VirtioHarness>(std::move(net));
  ASSERT_TRUE(h->init(~0ull) & virtio::kStatusDriverOk);
  auto announce = backend->wait_sent(1);
  ASSERT_TRUE(announce);
  EXPECT_EQ(*announce, announce_frame(default_mac(1)));
  ASSERT_EQ(announce->size(), 60u);
  EXPECT_EQ(std::vector<uint8_t>(announce->begin(), announce->begin() + 6), std::vector<uint8_t>(6, 0xFF));
  EXPECT_EQ((*announce)[12], 0x80);  // RARP
  EXPECT_EQ((*announce)[13], 0x35);
  EXPECT_EQ((*announce)[21], 0x03);  // reverse request
  const auto mac = default_mac(1);
  EXPECT_TRUE(std::equal(mac.begin(), mac.end(), announce->begin() + 6));
  EXPECT_TRUE(std::equal(mac.begin(), mac.end(), announce->begin() + 22));

  auto frame = pattern_frame(100, 3);
  transmit(frame);
  h->kick(1);
  auto second = backend->wait_sent(2);
  ASSERT_TRUE(second);
  EXPECT_EQ(*second, frame);
}

TEST_F(VirtioNetTest, TransmitsFramesWithoutTheHeader) {
  start();
  auto frame = pattern_frame(1000, 3);
  uint16_t head = transmit(frame);
  h->kick(1);
  auto sent = backend->wait_sent(1);
  ASSERT_TRUE(sent);
  EXPECT_EQ(*sent, frame);
  auto used = h->next_used(1);
  ASSERT_TRUE(used);
  EXPECT_EQ(used->id, head);
}

TEST_F(VirtioNetTest, ReceivesIntoMergeableBuffers) {
  start();
  auto bufs = post_rx(8, 1000);
  auto frame = pattern_frame(2500, 9);
  backend->inject(frame);
  uint16_t num_buffers = 0;
  EXPECT_EQ(receive(bufs, &num_buffers), frame);
  EXPECT_EQ(num_buffers, 3);  // 12 + 2500 bytes in 1000-byte buffers
}

TEST_F(VirtioNetTest, FramesWaitForReceiveBuffers) {
  start();
  auto frame = pattern_frame(300, 1);
  backend->inject(frame);
  backend->inject(pattern_frame(200, 2));
  // Make sure the frames reached the device before any buffer exists: a transmit round trip on
  // the same thread orders it.
  transmit(pattern_frame(60, 0));
  h->kick(1);
  ASSERT_TRUE(backend->wait_sent(1));
  EXPECT_EQ(h->used_idx(0), 0);
  auto bufs = post_rx(2, 2048);
  uint16_t n = 0;
  EXPECT_EQ(receive(bufs, &n), frame);
  EXPECT_EQ(receive(bufs, &n), pattern_frame(200, 2));
}

TEST_F(VirtioNetTest, WithoutMergeableBuffersOneBufferHoldsThePacket) {
  start(~virtio::bit(kFeatureMrgRxbuf));
  auto bufs = post_rx(2, 2048);
  auto frame = pattern_frame(1514, 4);
  backend->inject(frame);
  uint16_t n = 0;
  EXPECT_EQ(receive(bufs, &n).size(), frame.size());
}

TEST_F(VirtioNetTest, MalformedChainsAreRefusedAndTrafficGoesOn) {
  start();
  // Transmit chain with a device-writable buffer: dropped, returned with length 0.
  uint64_t junk = h->alloc(64);
  uint16_t bad = h->add_chain(1, {{junk, 12, false}, {junk + 12, 52, true}});
  // Transmit chain with a buffer outside RAM.
  uint16_t outside = h->queues[1].next_desc;
  h->write_desc(1, outside, 0x7000'0000, 64, 0, 0);
  h->make_available(1, outside);
  h->queues[1].next_desc++;
  auto frame = pattern_frame(100, 5);
  transmit(frame);
  h->kick(1);
  auto sent = backend->wait_sent(1);
  ASSERT_TRUE(sent);
  EXPECT_EQ(*sent, frame);
  auto u1 = h->next_used(1);
  auto u2 = h->next_used(1);
  ASSERT_TRUE(u1 && u2);
  EXPECT_EQ(u1->id, bad);
  EXPECT_EQ(u1->len, 0u);
  EXPECT_EQ(u2->id, outside);
  // A receive buffer too small for the header is refused; the next packet uses good buffers.
  uint64_t tiny = h->alloc(4);
  h->add_chain(0, {{tiny, 4, true}});
  backend->inject(pattern_frame(50, 6));  // dropped with the tiny buffer
  auto r = h->next_used(0);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->len, 0u);
  auto bufs = post_rx(2, 2048);
  backend->inject(frame);
  uint16_t n = 0;
  std::vector<uint64_t> all = {tiny};
  all.insert(all.end(), bufs.begin(), bufs.end());
  EXPECT_EQ(receive(all, &n), frame);
  EXPECT_FALSE(h->status() & virtio::kStatusNeedsReset);
}

TEST_F(VirtioNetTest, BrokenTransmitQueueLeavesReceiveWorking) {
  start();
  h->memory.write_obj<uint16_t>(h->queues[1].avail + 2, 4000);
  h->kick(1);
  ASSERT_TRUE(h->msi.wait(VirtioHarness::kMsiBase, 1));
  EXPECT_TRUE(h->status() & virtio::kStatusNeedsReset);
  auto bufs = post_rx(1, 2048);
  auto frame = pattern_frame(64, 7);
  backend->inject(frame);
  uint16_t n = 0;
  EXPECT_EQ(receive(bufs, &n), frame);
}

TEST(HostForward, ParsesQemuSyntax) {
  HostForward f = parse_host_forward("tcp:2222-:22");
  EXPECT_FALSE(f.udp);
  EXPECT_EQ(f.host_port, 2222);
  EXPECT_EQ(f.guest_port, 22);
  f = parse_host_forward("udp:127.0.0.1:5353-10.0.2.15:53");
  EXPECT_TRUE(f.udp);
  EXPECT_EQ(f.host_addr.s_addr, htonl(INADDR_LOOPBACK));
  EXPECT_EQ(f.guest_port, 53);
  EXPECT_EQ(parse_host_forward("tcp::8080-:80").host_port, 8080);
  EXPECT_THROW(parse_host_forward("tcp:2222"), UsageError);
  EXPECT_THROW(parse_host_forward("sctp:1-:2"), UsageError);
  EXPECT_THROW(parse_host_forward("tcp:99999-:22"), UsageError);
  EXPECT_THROW(parse_host_forward("tcp:22-10.0.2.16:22"), UsageError);
  EXPECT_THROW(parse_host_forward("tcp:x-:22"), UsageError);
}

// Ethernet + ARP request "who has `target`" from the guest (10.0.2.15, our MAC).
std::vector<uint8_t> arp_request(const char* target, const char* sender = SlirpBackend::kGuestAddress) {
  std::vector<uint8_t> f(42, 0);
  auto mac = default_mac(0);
  std::fill(f.begin(), f.begin() + 6, 0xff);
  std::copy(mac.begin(), mac.end(), f.begin() + 6);
  f[12] = 0x08, f[13] = 0x06;             // ARP
  f[14] = 0, f[15] = 1, f[16] = 8, f[17] = 0, f[18] = 6, f[19] = 4, f[20] = 0, f[21] = 1;
  std::copy(mac.begin(), mac.end(), f.begin() + 22);
  inet_pton(AF_INET, sender, &f[28]);
  inet_pton(AF_INET, target, &f[38]);
  return f;
}

uint16_t checksum(const uint8_t* p, size_t n, uint32_t sum = 0) {
  for (size_t i = 0; i + 1 < n; i += 2) sum += (p[i] << 8) | p[i + 1];
  if (n & 1) sum += p[n - 1] << 8;
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(~sum);
}

// Ethernet + IPv4 + TCP SYN from the guest (10.0.2.15:sport) to dst:dport, checksums right.
std::vector<uint8_t> tcp_syn(const char* dst, uint16_t dport, uint16_t sport) {
  std::vector<uint8_t> f(14 + 20 + 20, 0);
  auto mac = default_mac(0);
  const uint8_t gateway[6] = {0x52, 0x55, 0x0a, 0x00, 0x02, 0x02};
  std::copy(gateway, gateway + 6, f.begin());
  std::copy(mac.begin(), mac.end(), f.begin() + 6);
  f[12] = 0x08, f[13] = 0x00;
  uint8_t* ip = &f[14];
  ip[0] = 0x45, ip[3] = 40, ip[6] = 0x40, ip[8] = 64, ip[9] = 6;
  inet_pton(AF_INET, SlirpBackend::kGuestAddress, ip + 12);
  inet_pton(AF_INET, dst, ip + 16);
  uint16_t c = checksum(ip, 20);
  ip[10] = c >> 8, ip[11] = c & 0xff;
  uint8_t* tcp = &f[34];
  tcp[0] = sport >> 8, tcp[1] = sport & 0xff, tcp[2] = dport >> 8, tcp[3] = dport & 0xff;
  tcp[4] = 0x12, tcp[5] = 0x34, tcp[6] = 0x56, tcp[7] = 0x78;  // sequence number
  tcp[12] = 5 << 4, tcp[13] = 0x02, tcp[14] = 0xff, tcp[15] = 0xff;  // SYN, window
  std::vector<uint8_t> pseudo(ip + 12, ip + 20);
  pseudo.insert(pseudo.end(), {0, 6, 0, 20});
  pseudo.insert(pseudo.end(), tcp, tcp + 20);
  c = checksum(pseudo.data(), pseudo.size());
  tcp[16] = c >> 8, tcp[17] = c & 0xff;
  return f;
}

class SlirpNetTest : public VirtioNetTest {
 protected:
  void start_slirp(std::vector<HostForward> fwd = {}, bool host_loopback = false) {
    h = std::make_unique<VirtioHarness>(std::make_unique<VirtioNet>(
        std::make_unique<SlirpBackend>(fwd, host_loopback), default_mac(0)));
    ASSERT_TRUE(h->init() & virtio::kStatusDriverOk);
  }
  // Transmits a raw frame (header added).
  void send_frame(const std::vector<uint8_t>& frame) {
    std::vector<uint8_t> pkt(kHeaderBytes, 0);
    pkt.insert(pkt.end(), frame.begin(), frame.end());
    uint64_t gpa = h->put(pkt.data(), pkt.size());
    h->add_chain(1, {{gpa, static_cast<uint32_t>(pkt.size()), false}});
    h->kick(1);
  }
};

TEST_F(SlirpNetTest, GatewayAnswersArp) {
  start_slirp();
  auto bufs = post_rx(4, 2048);
  send_frame(arp_request("10.0.2.2"));
  uint16_t n = 0;
  auto reply = receive(bufs, &n);
  ASSERT_GE(reply.size(), 42u);
  EXPECT_EQ(reply[12], 0x08);
  EXPECT_EQ(reply[13], 0x06);
  EXPECT_EQ(reply[21], 2);  // ARP reply
  char ip[16];
  inet_ntop(AF_INET, &reply[28], ip, sizeof ip);
  EXPECT_STREQ(ip, "10.0.2.2");
}

TEST_F(SlirpNetTest, HostForwardListensAndReachesTheGuest) {
  const uint16_t port = testing::free_loopback_port();
  sockaddr_in sa{};  // where the host client connects
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

  start_slirp({parse_host_forward("tcp:127.0.0.1:" + std::to_string(port) + "-:8080")});
  auto bufs = post_rx(8, 2048);
  // A second forward on the same port is refused with a message that names it.
  try {
    SlirpBackend again({parse_host_forward("tcp:127.0.0.1:" + std::to_string(port) + "-:8080")});
    ADD_FAILURE() << "second listener on the same port";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(port)), std::string::npos);
  }
  int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  connect(c, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  // slirp accepts, then looks for the guest: an ARP request for 10.0.2.15 (or a SYN to :8080).
  uint16_t n = 0;
  auto frame = receive(bufs, &n);
  close(c);
  ASSERT_GE(frame.size(), 42u);
  bool arp_for_guest = frame[12] == 0x08 && frame[13] == 0x06 && frame[38] == 10 && frame[41] == 15;
  bool syn_to_guest = frame[12] == 0x08 && frame[13] == 0x00 && frame[23] == 6 &&
                      ((frame[36] << 8) | frame[37]) == 8080;
  EXPECT_TRUE(arp_for_guest || syn_to_guest);
}

// A host server that listens on 127.0.0.1 only, and the guest trying to reach it.
class LoopbackServerTest : public SlirpNetTest {
 protected:
  void SetUp() override {
    port = testing::free_loopback_port();
    server.reset(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(server.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
    ASSERT_EQ(::listen(server.get(), 8), 0);
  }
  // The guest introduces itself (ARP) and sends SYNs; returns the frames slirp answered with.
  std::vector<std::vector<uint8_t>> knock(const std::vector<const char*>& targets) {
    auto bufs = post_rx(16, 2048);
    send_frame(arp_request("10.0.2.2"));
    uint16_t n = 0;
    receive(bufs, &n);  // the ARP reply
    uint16_t sport = 40000;
    for (const char* target : targets) send_frame(tcp_syn(target, port, sport++));
    std::vector<std::vector<uint8_t>> answers;
    if (auto more = h->next_used(0)) {
      std::vector<uint8_t> bytes(more->len);
      h->memory.read(bufs.at(more->id % bufs.size()), bytes.data(), more->len);
      answers.emplace_back(bytes.begin() + kHeaderBytes, bytes.end());
    }
    return answers;
  }
  bool server_got_a_connection(int timeout_ms) {
    pollfd p{server.get(), POLLIN, 0};
    return ::poll(&p, 1, timeout_ms) == 1;
  }

  uint16_t port = 0;
  UniqueFd server;
};

TEST_F(LoopbackServerTest, TheGuestCannotReachALoopbackOnlyHostServer) {
  start_slirp();
  // Through the gateway address (libslirp's host-loopback mapping) and addressed directly; the
  // gateway's refusal comes back (an ICMP unreachable or a reset) after the direct SYN was
  // handled, since frames are taken in order.
  auto answers = knock({"127.0.0.1", "10.0.2.2"});
  ASSERT_EQ(answers.size(), 1u);
  const auto& f = answers[0];
  ASSERT_GE(f.size(), 34u);
  bool icmp_unreachable = f[23] == 1 && f[34] == 3;
  bool reset = f[23] == 6 && f.size() >= 54 && (f[47] & 0x04);
  EXPECT_TRUE(icmp_unreachable || reset);
  EXPECT_FALSE(server_got_a_connection(0));
}

TEST_F(LoopbackServerTest, HostLoopbackOnLetsTheGuestReachIt) {
  start_slirp({}, true);
  knock({"10.0.2.2"});
  EXPECT_TRUE(server_got_a_connection(5000));
}

TEST(HostForward, ListensOnLoopbackUnlessAnAddressIsGiven) {
  EXPECT_EQ(parse_host_forward("tcp:8080-:80").host_addr.s_addr, htonl(INADDR_LOOPBACK));
  EXPECT_EQ(parse_host_forward("tcp::8080-:80").host_addr.s_addr, htonl(INADDR_LOOPBACK));
  EXPECT_EQ(parse_host_forward("tcp:0.0.0.0:8080-:80").host_addr.s_addr, htonl(INADDR_ANY));
  EXPECT_TRUE(parse_net_option("user,host-loopback=on").host_loopback);
  EXPECT_FALSE(parse_net_option("user,hostfwd=tcp:1-:2").host_loopback);
}

// A tap device in a network namespace the test creates: the host kernel answers the guest's ARP.
// 192.0.2.0/24 (TEST-NET-1) exists only inside that namespace.
TEST_F(VirtioNetTest, TapBackendReachesTheHostKernelInsideANetns) {
  std::string skip;
  std::thread t([&] {
    if (geteuid() != 0) {
      skip = "needs root for a network namespace and a tap device";
      return;
    }
    if (unshare(CLONE_NEWNET) != 0) {
      skip = std::string("unshare(CLONE_NEWNET): ") + strerror(errno);
      return;
    }
    std::unique_ptr<TapBackend> tap;
    try {
      tap = std::make_unique<TapBackend>("keeltap0");
    } catch (const Error& e) {
      skip = e.what();
      return;
    }
    if (std::system("ip addr add 192.0.2.1/24 dev keeltap0 && ip link set keeltap0 up") != 0) {
      skip = "ip(8) could not configure the tap device";
      return;
    }
    h = std::make_unique<VirtioHarness>(std::make_unique<VirtioNet>(std::move(tap), default_mac(0)));
    ASSERT_TRUE(h->init() & virtio::kStatusDriverOk);
    auto bufs = post_rx(16, 2048);
    std::vector<uint8_t> pkt(kHeaderBytes, 0);
    auto arp = arp_request("192.0.2.1", "192.0.2.2");
    pkt.insert(pkt.end(), arp.begin(), arp.end());
    uint64_t gpa = h->put(pkt.data(), pkt.size());
    h->add_chain(1, {{gpa, static_cast<uint32_t>(pkt.size()), false}});
    h->kick(1);
    // The kernel may also send IPv6 neighbour discovery; look for the ARP reply among the frames.
    bool found = false;
    for (int i = 0; i < 8 && !found; ++i) {
      uint16_t n = 0;
      auto frame = receive(bufs, &n);
      if (frame.size() < 42) break;
      found = frame[12] == 0x08 && frame[13] == 0x06 && frame[21] == 2 && frame[28] == 192 &&
              frame[31] == 1;
    }
    EXPECT_TRUE(found) << "no ARP reply from the host side of the tap";
    h.reset();
  });
  t.join();
  if (!skip.empty()) GTEST_SKIP() << skip;
}

}  // namespace
}  // namespace keel
