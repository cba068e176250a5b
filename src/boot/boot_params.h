// The Linux x86 boot protocol's data structures, as the kernel reads them: the setup header (in a
// bzImage at file offset 0x1F1, and in the zero page at the same offset) and the zero page
// (`struct boot_params`, 4 KiB). Layouts follow Documentation/arch/x86/boot.rst and zero-page.rst;
// only the fields keel reads or writes are named, the rest is padding that stays zero.
#pragma once

#include <cstddef>
#include <cstdint>

namespace keel::boot {

inline constexpr uint32_t kHdrSMagic = 0x53726448;  // "HdrS"
inline constexpr uint16_t kBootFlag = 0xAA55;
inline constexpr uint64_t kSetupHeaderOffset = 0x1F1;
inline constexpr uint16_t kMinProtocol = 0x0206;    // cmdline_size, 64-bit-capable loaders

// loadflags
inline constexpr uint8_t kLoadedHigh = 1 << 0;      // protected-mode code at 0x100000 (bzImage)
inline constexpr uint8_t kCanUseHeap = 1 << 7;
// xloadflags (protocol 2.12)
inline constexpr uint16_t kXlfKernel64 = 1 << 0;    // has the 64-bit entry at +0x200
inline constexpr uint16_t kXlfCanBeLoadedAbove4G = 1 << 1;

inline constexpr uint8_t kTypeOfLoaderUndefined = 0xFF;  // "no registered loader id"

#pragma pack(push, 1)
struct SetupHeader {
  uint8_t setup_sects;            // 0x1F1
  uint16_t root_flags;            // 0x1F2
  uint32_t syssize;               // 0x1F4  protected-mode code size in 16-byte units
  uint16_t ram_size;              // 0x1F8
  uint16_t vid_mode;              // 0x1FA
  uint16_t root_dev;              // 0x1FC
  uint16_t boot_flag;             // 0x1FE  0xAA55
  uint16_t jump;                  // 0x200  short jump; its offset gives the header's end
  uint32_t header;                // 0x202  "HdrS"
  uint16_t version;               // 0x206  boot protocol version
  uint32_t realmode_swtch;        // 0x208
  uint16_t start_sys_seg;         // 0x20C
  uint16_t kernel_version;        // 0x20E
  uint8_t type_of_loader;         // 0x210
  uint8_t loadflags;              // 0x211
  uint16_t setup_move_size;       // 0x212
  uint32_t code32_start;          // 0x214
  uint32_t ramdisk_image;         // 0x218
  uint32_t ramdisk_size;          // 0x21C
  uint32_t bootsect_kludge;       // 0x220
  uint16_t heap_end_ptr;          // 0x224
  uint8_t ext_loader_ver;         // 0x226
  uint8_t ext_loader_type;        // 0x227
  uint32_t cmd_line_ptr;          // 0x228
  uint32_t initrd_addr_max;       // 0x22C
  uint32_t kernel_alignment;      // 0x230
  uint8_t relocatable_kernel;     // 0x234
  uint8_t min_alignment;          // 0x235
  uint16_t xloadflags;            // 0x236
  uint32_t cmdline_size;          // 0x238  max length without the NUL
  uint32_t hardware_subarch;      // 0x23C
  uint64_t hardware_subarch_data; // 0x240
  uint32_t payload_offset;        // 0x248
  uint32_t payload_length;        // 0x24C
  uint64_t setup_data;            // 0x250
  uint64_t pref_address;          // 0x258
  uint32_t init_size;             // 0x260
  uint32_t handover_offset;       // 0x264
  uint32_t kernel_info_offset;    // 0x268
};

struct E820Entry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;
};

inline constexpr uint32_t kE820Ram = 1;
inline constexpr uint32_t kE820Reserved = 2;
inline constexpr uint32_t kE820Acpi = 3;
inline constexpr size_t kE820MaxEntries = 128;  // entries that fit in the zero page

struct BootParams {
  uint8_t screen_info[0x40];      // 0x000
  uint8_t apm_bios_info[0x14];    // 0x040
  uint8_t pad1[4];                // 0x054
  uint64_t tboot_addr;            // 0x058
  uint8_t ist_info[0x10];         // 0x060
  uint64_t acpi_rsdp_addr;        // 0x070  protocol 2.14
  uint8_t pad2[8];                // 0x078
  uint8_t hd0_info[0x10];         // 0x080
  uint8_t hd1_info[0x10];         // 0x090
  uint8_t sys_desc_table[0x10];   // 0x0A0
  uint8_t olpc_ofw_header[0x10];  // 0x0B0
  uint32_t ext_ramdisk_image;     // 0x0C0
  uint32_t ext_ramdisk_size;      // 0x0C4
  uint32_t ext_cmd_line_ptr;      // 0x0C8
  uint8_t pad3[0x1E8 - 0x0CC];    // 0x0CC
  uint8_t e820_entries;           // 0x1E8
  uint8_t eddbuf_entries;         // 0x1E9
  uint8_t edd_mbr_sig_buf_entries;// 0x1EA
  uint8_t kbd_status;             // 0x1EB
  uint8_t secure_boot;            // 0x1EC
  uint8_t pad4[2];                // 0x1ED
  uint8_t sentinel;               // 0x1EF  loaders that copy the header whole must clear it
  uint8_t pad5;                   // 0x1F0
  SetupHeader hdr;                // 0x1F1
  uint8_t pad6[0x2D0 - 0x1F1 - sizeof(SetupHeader)];
  E820Entry e820_table[kE820MaxEntries];  // 0x2D0
  uint8_t pad7[0x1000 - 0x2D0 - kE820MaxEntries * sizeof(E820Entry)];
};
#pragma pack(pop)

static_assert(sizeof(SetupHeader) == 0x26C - 0x1F1);
static_assert(offsetof(BootParams, acpi_rsdp_addr) == 0x070);
static_assert(offsetof(BootParams, ext_ramdisk_image) == 0x0C0);
static_assert(offsetof(BootParams, e820_entries) == 0x1E8);
static_assert(offsetof(BootParams, sentinel) == 0x1EF);
static_assert(offsetof(BootParams, hdr) == 0x1F1);
static_assert(offsetof(BootParams, hdr) + offsetof(SetupHeader, header) == 0x202);
static_assert(offsetof(BootParams, hdr) + offsetof(SetupHeader, cmd_line_ptr) == 0x228);
static_assert(offsetof(BootParams, hdr) + offsetof(SetupHeader, pref_address) == 0x258);
static_assert(offsetof(BootParams, e820_table) == 0x2D0);
static_assert(sizeof(E820Entry) == 20);
static_assert(sizeof(BootParams) == 0x1000);

}  // namespace keel::boot
