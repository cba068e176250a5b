#include "boot/ext_filesystem.h"

#include <ext2fs/ext2fs.h>
#include <et/com_err.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "base/error.h"

namespace keel::boot {

struct ExtFilesystem::Channel {
  BlockBackend* disk;
  uint64_t offset, size;
};

namespace {

using Channel = ExtFilesystem::Channel;

// libext2fs opens a channel by name: ours is "keel-partition:<Channel pointer>".
errcode_t channel_open(const char* name, int flags, io_channel* out);
errcode_t channel_close(io_channel io) {
  ext2fs_free_mem(&io->name);
  ext2fs_free_mem(&io);
  return 0;
}
errcode_t channel_set_blksize(io_channel io, int blksize) {
  io->block_size = blksize;
  return 0;
}
errcode_t channel_read64(io_channel io, unsigned long long block, int count, void* data) {
  auto* c = static_cast<Channel*>(io->private_data);
  uint64_t bytes = count < 0 ? static_cast<uint64_t>(-count) : uint64_t(count) * io->block_size;
  uint64_t at = block * io->block_size;
  if (at > c->size || bytes > c->size - at) return EXT2_ET_SHORT_READ;
  try {
    c->disk->read_bytes(c->offset + at, data, bytes);
  } catch (const std::exception&) {
    return EXT2_ET_SHORT_READ;
  }
  return 0;
}
errcode_t channel_read(io_channel io, unsigned long block, int count, void* data) {
  return channel_read64(io, block, count, data);
}
errcode_t channel_write64(io_channel, unsigned long long, int, const void*) { return EXT2_ET_RO_FILSYS; }
errcode_t channel_write(io_channel, unsigned long, int, const void*) { return EXT2_ET_RO_FILSYS; }
errcode_t channel_flush(io_channel) { return 0; }

struct struct_io_manager make_manager() {
  struct struct_io_manager m {};
  m.magic = EXT2_ET_MAGIC_IO_MANAGER;
  m.name = "keel partition";
  m.open = channel_open;
  m.close = channel_close;
  m.set_blksize = channel_set_blksize;
  m.read_blk = channel_read;
  m.write_blk = channel_write;
  m.flush = channel_flush;
  m.read_blk64 = channel_read64;
  m.write_blk64 = channel_write64;
  return m;
}
struct struct_io_manager kManager = make_manager();  // constant after static initialisation

errcode_t channel_open(const char* name, int flags, io_channel* out) {
  void* ptr = nullptr;
  if (std::sscanf(name, "keel-partition:%p", &ptr) != 1 || !ptr) return EXT2_ET_BAD_DEVICE_NAME;
  io_channel io;
  if (errcode_t e = ext2fs_get_mem(sizeof(struct struct_io_channel), &io)) return e;
  std::memset(io, 0, sizeof *io);
  io->magic = EXT2_ET_MAGIC_IO_CHANNEL;
  io->manager = &kManager;
  if (errcode_t e = ext2fs_get_mem(std::strlen(name) + 1, &io->name)) {
    ext2fs_free_mem(&io);
    return e;
  }
  std::strcpy(io->name, name);
  io->block_size = 1024;
  io->refcount = 1;
  io->private_data = ptr;
  *out = io;
  return 0;
}

std::string ext_error(errcode_t e) { return error_message(e); }

}  // namespace

bool ExtFilesystem::probe(BlockBackend& disk, uint64_t offset, uint64_t size) {
  if (size < 2048) return false;
  uint8_t magic[2];
  disk.read_bytes(offset + 1024 + 56, magic, 2);
  return magic[0] == 0x53 && magic[1] == 0xef;
}

ExtFilesystem::ExtFilesystem(BlockBackend& disk, uint64_t offset, uint64_t size)
    : channel_(new Channel{&disk, offset, size}) {
  char name[64];
  std::snprintf(name, sizeof name, "keel-partition:%p", static_cast<void*>(channel_));
  name_ = name;
  ext2_filsys fs = nullptr;
  errcode_t e = ext2fs_open2(name, nullptr, EXT2_FLAG_64BITS | EXT2_FLAG_IGNORE_CSUM_ERRORS, 0, 0,
                             &kManager, &fs);
  if (e) {
    delete channel_;
    throw Error("ext file system at offset " + std::to_string(offset) + ": " + ext_error(e));
  }
  fs_ = fs;
}

ExtFilesystem::~ExtFilesystem() {
  ext2fs_close_free(reinterpret_cast<ext2_filsys*>(&fs_));
  delete channel_;
}

std::optional<unsigned> ExtFilesystem::lookup(const std::string& path) {
  ext2_ino_t ino;
  if (ext2fs_namei_follow(fs_, EXT2_ROOT_INO, EXT2_ROOT_INO, path.c_str(), &ino)) return std::nullopt;
  return ino;
}

bool ExtFilesystem::is_file(const std::string& path) {
  auto ino = lookup(path);
  ext2_inode inode;
  return ino && !ext2fs_read_inode(fs_, *ino, &inode) && LINUX_S_ISREG(inode.i_mode);
}

bool ExtFilesystem::is_directory(const std::string& path) {
  auto ino = lookup(path);
  return ino && !ext2fs_check_directory(fs_, *ino);
}

std::vector<uint8_t> ExtFilesystem::read_file(const std::string& path, uint64_t max_bytes) {
  auto ino = lookup(path);
  if (!ino) throw Error(path + " does not exist");
  ext2_inode inode;
  if (errcode_t e = ext2fs_read_inode(fs_, *ino, &inode)) throw Error(path + ": " + ext_error(e));
  if (!LINUX_S_ISREG(inode.i_mode)) throw Error(path + " is not a regular file");
  uint64_t size = EXT2_I_SIZE(&inode);
  if (size > max_bytes) throw Error(path + " is larger than " + std::to_string(max_bytes) + " bytes");
  ext2_file_t file;
  if (errcode_t e = ext2fs_file_open(fs_, *ino, 0, &file)) throw Error(path + ": " + ext_error(e));
  std::vector<uint8_t> out(size);
  uint64_t done = 0;
  errcode_t e = 0;
  while (done < size) {
    unsigned int got = 0;
    unsigned int want = static_cast<unsigned>(std::min<uint64_t>(size - done, 1u << 30));
    if ((e = ext2fs_file_read(file, out.data() + done, want, &got)) || got == 0) break;
    done += got;
  }
  ext2fs_file_close(file);
  if (e || done != size) throw Error(path + ": read failed" + (e ? ": " + ext_error(e) : std::string()));
  return out;
}

std::vector<std::string> ExtFilesystem::list(const std::string& path) {
  std::vector<std::string> names;
  auto ino = lookup(path);
  if (!ino) return names;
  auto each = [](ext2_ino_t, int, ext2_dir_entry* d, int, int, char*, void* priv) -> int {
    std::string name(d->name, ext2fs_dirent_name_len(d));
    if (name != "." && name != "..") static_cast<std::vector<std::string>*>(priv)->push_back(name);
    return 0;
  };
  ext2fs_dir_iterate2(fs_, *ino, 0, nullptr, each, &names);
  std::sort(names.begin(), names.end());
  return names;
}

std::string ExtFilesystem::uuid() const {
  char out[40];
  const uint8_t* u = fs_->super->s_uuid;
  std::snprintf(out, sizeof out, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
                u[14], u[15]);
  return out;
}

}  // namespace keel::boot
