#include "boot/kernel_payload.h"

#include <lz4.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "base/error.h"

namespace keel::boot {

namespace {

constexpr uint64_t kTrailerSize = 4;               // le32 uncompressed size, after every format
constexpr uint32_t kLz4LegacyMagic = 0x184C2102;
constexpr uint64_t kLz4LegacyChunk = 8 << 20;      // the legacy format's fixed output block

uint32_t le32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

[[noreturn]] void corrupt(PayloadCompression c, const std::string& why) {
  throw Error(fmt::format("kernel payload ({}) is corrupt: {}", compression_name(c), why));
}

void inflate_gzip(std::span<const uint8_t> in, std::span<uint8_t> out) {
  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) throw Error("zlib: inflateInit2 failed");
  zs.next_in = const_cast<Bytef*>(in.data());
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = out.data();
  zs.avail_out = static_cast<uInt>(out.size());
  int rc = inflate(&zs, Z_FINISH);
  const uint64_t produced = zs.total_out;
  const char* msg = zs.msg;
  inflateEnd(&zs);
  if (rc == Z_STREAM_END && produced == out.size()) return;
  if (rc == Z_STREAM_END || (rc == Z_BUF_ERROR && zs.avail_out == 0))
    corrupt(PayloadCompression::kGzip,
            fmt::format("it does not decompress to the {} bytes its trailer says", out.size()));
  corrupt(PayloadCompression::kGzip, msg ? msg : fmt::format("zlib error {}", rc));
}

// What liblzma may allocate for a stream that decodes to `out` bytes: the dictionary never needs
// to exceed the output (clamped for .lzma, below), plus the decoder's own state. xz streams name
// their dictionary in CRC-protected block headers, so they get the kernel build's largest
// dictionary (64 MiB) as a floor instead.
constexpr uint64_t kLzmaStateBytes = 4 << 20;
constexpr uint64_t kXzDictionaryFloor = 64 << 20;

void decode_lzma(PayloadCompression c, std::span<const uint8_t> in, std::span<uint8_t> out) {
  const uint64_t size = out.size();
  std::vector<uint8_t> header;  // .lzma: a copy of the 13-byte header, dictionary clamped
  uint64_t memlimit;
  if (c == PayloadCompression::kLzma) {
    if (in.size() < 13) corrupt(c, "truncated header");
    if (in[0] >= 9 * 5 * 5) corrupt(c, fmt::format("bad properties byte {:#x}", in[0]));
    uint64_t declared;
    std::memcpy(&declared, in.data() + 5, sizeof declared);
    if (declared != UINT64_MAX && declared != size)
      corrupt(c, fmt::format("its header says {} bytes, its trailer {}", declared, size));
    // Any dictionary at least as large as the whole output decodes the same: a 4 GiB one in a
    // 53-byte header costs no more than the output.
    const uint32_t dict = le32(in.data() + 1);
    const uint32_t clamped = static_cast<uint32_t>(
        std::min<uint64_t>(dict, std::max<uint64_t>(size, LZMA_DICT_SIZE_MIN)));
    header.assign(in.begin(), in.begin() + 13);
    std::memcpy(header.data() + 1, &clamped, sizeof clamped);
    memlimit = uint64_t{clamped} + kLzmaStateBytes;
  } else {
    memlimit = std::max(size, kXzDictionaryFloor) + kLzmaStateBytes;
  }
  lzma_stream s = LZMA_STREAM_INIT;
  lzma_ret rc = c == PayloadCompression::kXz ? lzma_stream_decoder(&s, memlimit, 0)
                                             : lzma_alone_decoder(&s, memlimit);
  if (rc != LZMA_OK) throw Error(fmt::format("liblzma: decoder init failed ({})", int(rc)));
  s.next_out = out.data();
  s.avail_out = out.size();
  if (!header.empty()) {
    s.next_in = header.data();
    s.avail_in = header.size();
    rc = lzma_code(&s, LZMA_RUN);
    if (rc != LZMA_OK) {
      lzma_end(&s);
      if (rc == LZMA_MEMLIMIT_ERROR) corrupt(c, "its header asks for more memory than allowed");
      corrupt(c, fmt::format("liblzma error {} in the header", int(rc)));
    }
    in = in.subspan(13);
  }
  s.next_in = in.data();
  s.avail_in = in.size();
  s.next_out = out.data();
  s.avail_out = out.size();
  rc = lzma_code(&s, LZMA_FINISH);
  const uint64_t produced = s.total_out;
  const size_t room = s.avail_out;
  lzma_end(&s);
  if (rc == LZMA_MEMLIMIT_ERROR)
    corrupt(c, fmt::format("it needs more than the {} bytes of decoder memory its {} bytes of "
                           "output allow", memlimit, out.size()));
  if (rc == LZMA_STREAM_END && produced == out.size()) return;
  if (rc == LZMA_STREAM_END || (rc == LZMA_BUF_ERROR && room == 0) || rc == LZMA_OK)
    corrupt(c, fmt::format("it does not decompress to the {} bytes its trailer says", out.size()));
  corrupt(c, fmt::format("liblzma error {}", int(rc)));
}

void decode_zstd(std::span<const uint8_t> in, std::span<uint8_t> out) {
  ZSTD_DCtx* d = ZSTD_createDCtx();
  if (!d) throw Error("zstd: cannot create a decompression context");
  ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, 31);  // the kernel builds with --ultra -22
  // Decoded in one go into the output: no window is allocated. A frame that says its size must
  // say the trailer's.
  unsigned long long declared = ZSTD_getFrameContentSize(in.data(), in.size());
  if (declared == ZSTD_CONTENTSIZE_ERROR) {
    ZSTD_freeDCtx(d);
    corrupt(PayloadCompression::kZstd, "not a zstd frame");
  }
  if (declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != out.size()) {
    ZSTD_freeDCtx(d);
    corrupt(PayloadCompression::kZstd,
            fmt::format("its frame says {} bytes, its trailer {}", declared, out.size()));
  }
  size_t n = ZSTD_decompressDCtx(d, out.data(), out.size(), in.data(), in.size());
  ZSTD_freeDCtx(d);
  if (ZSTD_isError(n)) corrupt(PayloadCompression::kZstd, ZSTD_getErrorName(n));
  if (n != out.size())
    corrupt(PayloadCompression::kZstd,
            fmt::format("it decompresses to {} bytes, its trailer says {}", n, out.size()));
}

// The LZ4 legacy frame (lz4 -l): a magic, then chunks of le32 compressed size + data, each
// decompressing to at most 8 MiB; a repeated magic starts a new stream.
void decode_lz4_legacy(std::span<const uint8_t> in, std::span<uint8_t> out) {
  const auto c = PayloadCompression::kLz4;
  uint64_t pos = 4, done = 0;  // past the first magic
  while (pos < in.size()) {
    if (in.size() - pos < 4) corrupt(c, fmt::format("truncated chunk header at byte {}", pos));
    const uint32_t chunk = le32(in.data() + pos);
    pos += 4;
    if (chunk == kLz4LegacyMagic) continue;
    if (chunk > in.size() - pos)
      corrupt(c, fmt::format("chunk of {} bytes at byte {} runs past the end", chunk, pos - 4));
    const uint64_t room = std::min<uint64_t>(kLz4LegacyChunk, out.size() - done);
    const int n = LZ4_decompress_safe(reinterpret_cast<const char*>(in.data() + pos),
                                      reinterpret_cast<char*>(out.data() + done),
                                      static_cast<int>(chunk), static_cast<int>(room));
    if (n < 0) corrupt(c, fmt::format("chunk at byte {} does not decode", pos - 4));
    pos += chunk;
    done += static_cast<uint64_t>(n);
  }
  if (done != out.size())
    corrupt(c, fmt::format("it decompresses to {} bytes, its trailer says {}", done, out.size()));
}

}  // namespace

std::string_view compression_name(PayloadCompression c) {
  switch (c) {
    case PayloadCompression::kGzip: return "gzip";
    case PayloadCompression::kXz: return "xz";
    case PayloadCompression::kLzma: return "lzma";
    case PayloadCompression::kLz4: return "lz4";
    case PayloadCompression::kZstd: return "zstd";
    case PayloadCompression::kBzip2: return "bzip2";
    case PayloadCompression::kLzo: return "lzo";
    case PayloadCompression::kUnknown: break;
  }
  return "unknown";
}

PayloadCompression detect_compression(std::span<const uint8_t> p) {
  if (p.size() < 2) return PayloadCompression::kUnknown;
  const uint8_t a = p[0], b = p[1];
  if (a == 0x1F && (b == 0x8B || b == 0x9E)) return PayloadCompression::kGzip;
  if (a == 0xFD && b == 0x37) return PayloadCompression::kXz;
  if (a == 0x5D && b == 0x00) return PayloadCompression::kLzma;
  if (a == 0x02 && b == 0x21) return PayloadCompression::kLz4;
  if (a == 0x28 && b == 0xB5) return PayloadCompression::kZstd;
  if (a == 0x42 && b == 0x5A) return PayloadCompression::kBzip2;
  if (a == 0x89 && b == 0x4C) return PayloadCompression::kLzo;
  return PayloadCompression::kUnknown;
}

std::span<const uint8_t> bzimage_payload(const BzImage& bz, std::span<const uint8_t> image) {
  if (bz.protocol() < 0x0208) return {};
  const uint64_t off = bz.header.payload_offset, len = bz.header.payload_length;
  if (len == 0 || off > bz.kernel_size || len > bz.kernel_size - off) return {};
  return image.subspan(bz.kernel_offset + off, len);
}

uint64_t payload_output_limit(const BzImage& bz, uint64_t ram) {
  uint64_t limit = ram;
  if (bz.protocol() >= 0x020A && bz.header.init_size != 0)
    limit = std::min<uint64_t>(limit, bz.header.init_size);
  return limit;
}

std::optional<std::vector<uint8_t>> decompress_payload(std::span<const uint8_t> payload,
                                                       uint64_t limit) {
  const PayloadCompression c = detect_compression(payload);
  switch (c) {
    case PayloadCompression::kGzip:
    case PayloadCompression::kXz:
    case PayloadCompression::kLzma:
    case PayloadCompression::kLz4:
    case PayloadCompression::kZstd:
      break;
    default:
      return std::nullopt;
  }
  if (payload.size() < 8) corrupt(c, fmt::format("only {} bytes", payload.size()));
  const uint32_t size = le32(payload.data() + payload.size() - kTrailerSize);
  if (size == 0) corrupt(c, "its trailer says it decompresses to 0 bytes");
  if (size > limit)
    corrupt(c, fmt::format("its trailer says {} bytes, more than the {} allowed", size, limit));
  std::vector<uint8_t> out(size);
  // gzip's own trailer is the size; the others have it appended after their stream.
  const auto stream = c == PayloadCompression::kGzip
                          ? payload
                          : payload.first(payload.size() - kTrailerSize);
  switch (c) {
    case PayloadCompression::kGzip: inflate_gzip(stream, out); break;
    case PayloadCompression::kXz:
    case PayloadCompression::kLzma: decode_lzma(c, stream, out); break;
    case PayloadCompression::kZstd: decode_zstd(stream, out); break;
    case PayloadCompression::kLz4: decode_lz4_legacy(stream, out); break;
    default: break;
  }
  return out;
}

}  // namespace keel::boot
