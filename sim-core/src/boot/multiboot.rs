//! Multiboot v1 (Multiboot Specification 0.6.96): header detection, loading
//! by ELF program headers or the a.out kludge, and `multiboot_info`.

use super::elf::{file_range, le, zero, Elf};
use super::memmap::e820_map_with;
use super::place::{place_modules, BootData, Ram, Record};
use super::{BootConfig, BootError, BootInfo, BootProtocol, ExecSegment};
use crate::layout::{HIGH_MEMORY_BASE, LEGACY_RESERVED_BASE};
use crate::state::gpr;
use crate::{ArchState, GuestMemory};

pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// EAX at entry.
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header must lie 4-byte aligned in the first 8192 bytes.
pub const HEADER_SEARCH: usize = 8192;

/// Header flags (section 3.1.2).
pub const HF_PAGE_ALIGN: u32 = 1 << 0;
pub const HF_MEMORY_INFO: u32 = 1 << 1;
pub const HF_VIDEO_MODE: u32 = 1 << 2;
pub const HF_AOUT_KLUDGE: u32 = 1 << 16;

/// Info flags (section 3.3).
pub const INFO_MEMORY: u32 = 1 << 0;
pub const INFO_CMDLINE: u32 = 1 << 2;
pub const INFO_MODS: u32 = 1 << 3;
pub const INFO_MEM_MAP: u32 = 1 << 6;
pub const INFO_BOOT_LOADER_NAME: u32 = 1 << 9;

/// `struct multiboot_info` up to and including the framebuffer fields.
pub const INFO_SIZE: usize = 116;
pub const MODULE_ENTRY_SIZE: usize = 16;
/// One mmap entry: the `size` field (4 bytes) plus the 20 bytes it counts.
pub const MMAP_ENTRY_SIZE: usize = 24;
pub const BOOT_LOADER_NAME: &str = "xensim";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// File offset of the header.
    pub offset: u64,
    pub flags: u32,
    pub header_addr: u32,
    pub load_addr: u32,
    pub load_end_addr: u32,
    pub bss_end_addr: u32,
    pub entry_addr: u32,
}

/// The first valid Multiboot header (magic, flags, checksum summing to 0).
pub fn find_header(bytes: &[u8]) -> Result<Option<Header>, String> {
    let window = &bytes[..bytes.len().min(HEADER_SEARCH)];
    for offset in (0..window.len().saturating_sub(11)).step_by(4) {
        let off = offset as u64;
        let word = |i: u64| le(window, off + 4 * i, 4).map(|v| v as u32);
        if word(0)? != HEADER_MAGIC {
            continue;
        }
        let flags = word(1)?;
        if HEADER_MAGIC.wrapping_add(flags).wrapping_add(word(2)?) != 0 {
            continue;
        }
        let mut h = Header {
            offset: off,
            flags,
            header_addr: 0,
            load_addr: 0,
            load_end_addr: 0,
            bss_end_addr: 0,
            entry_addr: 0,
        };
        if flags & HF_AOUT_KLUDGE != 0 {
            // The address fields may extend past the 8 KiB window, not past the file.
            let field =
                |i: u64| le(bytes, off + 4 * i, 4).map(|v| v as u32).map_err(|_| "address fields are truncated");
            h.header_addr = field(3)?;
            h.load_addr = field(4)?;
            h.load_end_addr = field(5)?;
            h.bss_end_addr = field(6)?;
            h.entry_addr = field(7)?;
        }
        return Ok(Some(h));
    }
    Ok(None)
}

pub fn load(mem: &GuestMemory, cfg: &BootConfig, elf: Option<&Elf>, h: &Header) -> Result<BootInfo, BootError> {
    let file = cfg.kernel.name.as_str();
    let unsupported =
        |what: String| BootError::Unsupported { file: file.to_string(), format: "Multiboot kernel", what };
    // Bits 0-15 are requirements: refuse the ones we do not know. Video mode
    // (bit 2) is accepted but not provided: the info's video flags stay clear.
    let unknown = h.flags & 0xffff & !(HF_PAGE_ALIGN | HF_MEMORY_INFO | HF_VIDEO_MODE);
    if unknown != 0 {
        return Err(unsupported(format!("header requires unknown features (flags {unknown:#x})")));
    }
    let ram = Ram::new(mem);
    let (entry, kernel_end, exec_segments) = if h.flags & HF_AOUT_KLUDGE != 0 {
        let (entry, end) = load_aout(mem, file, &cfg.kernel.bytes, h, &ram)?;
        // The a.out image has no segment flags: all of it may be code.
        let load = h.load_addr as u64;
        (entry, end, vec![ExecSegment { vaddr: load, paddr: load, len: end.saturating_sub(load) }])
    } else {
        let elf =
            elf.ok_or_else(|| unsupported("not an ELF file and the header has no a.out kludge (flag 16)".into()))?;
        let (entry, end) = load_elf(mem, file, elf, &ram)?;
        (entry, end, elf.exec_segments())
    };
    let modules = place_modules(mem, &ram, kernel_end, &cfg.modules)?;

    let mut data = BootData::new(mem, file);
    let info = data.alloc(INFO_SIZE as u64, "multiboot_info")?;
    // Like GRUB and QEMU, the command line starts with the kernel's name.
    let cmdline = match cfg.cmdline.as_str() {
        "" => file.to_string(),
        args => format!("{file} {args}"),
    };
    let cmdline = data.put_cstr(&cmdline, "kernel command line")?;
    let loader = data.put_cstr(BOOT_LOADER_NAME, "boot loader name")?;
    let mut mods = Vec::with_capacity(modules.len() * MODULE_ENTRY_SIZE);
    for (m, image) in modules.iter().zip(&cfg.modules) {
        let string = data.put_cstr(&image.name, "module string")?;
        let mut r = Record::new(MODULE_ENTRY_SIZE);
        // Module ranges were checked to lie below 1 GiB.
        r.u32(0, m.addr as u32).u32(4, (m.addr + m.size) as u32).u32(8, string as u32);
        mods.extend_from_slice(&r.0);
    }
    let mods_addr = if modules.is_empty() { 0 } else { data.put(&mods, "module list")? };
    let map = e820_map_with(mem, &cfg.reserved);
    let mut mmap = Vec::with_capacity(map.len() * MMAP_ENTRY_SIZE);
    for e in &map {
        let mut r = Record::new(MMAP_ENTRY_SIZE);
        r.u32(0, (MMAP_ENTRY_SIZE - 4) as u32).u64(4, e.addr).u64(12, e.size).u32(20, e.kind.code());
        mmap.extend_from_slice(&r.0);
    }
    let mmap_addr = data.put(&mmap, "memory map")?;

    let low_end = mem.ram_ranges().first().map(|&(s, l)| s + l).unwrap_or(0);
    let mem_lower = low_end.min(LEGACY_RESERVED_BASE) / 1024;
    let mem_upper = low_end.saturating_sub(HIGH_MEMORY_BASE) / 1024;
    let mut r = Record::new(INFO_SIZE);
    // The boot-data area is below 1 MiB, so its addresses fit 32 bits.
    r.u32(0, INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MEM_MAP | INFO_BOOT_LOADER_NAME)
        .u32(4, mem_lower as u32)
        .u32(8, mem_upper.min(u32::MAX as u64) as u32)
        .u32(16, cmdline as u32)
        .u32(20, modules.len() as u32)
        .u32(24, mods_addr as u32)
        .u32(44, mmap.len() as u32)
        .u32(48, mmap_addr as u32)
        .u32(64, loader as u32);
    data.write(info, &r.0)?;

    let mut state = ArchState::pvh_entry(entry, info);
    state.gpr[gpr::RAX] = BOOTLOADER_MAGIC as u64;
    Ok(BootInfo { protocol: BootProtocol::Multiboot, entry: state, kernel_end, exec_segments })
}

/// Load by the header's address fields (section 3.1.3).
fn load_aout(mem: &GuestMemory, file: &str, bytes: &[u8], h: &Header, ram: &Ram) -> Result<(u64, u64), BootError> {
    let bad =
        |what: &str| BootError::Malformed { file: file.to_string(), format: "Multiboot header", what: what.into() };
    let (header_addr, load_addr) = (h.header_addr as u64, h.load_addr as u64);
    if load_addr > header_addr {
        return Err(bad("load_addr lies above header_addr"));
    }
    let start =
        h.offset.checked_sub(header_addr - load_addr).ok_or_else(|| bad("load_addr lies before the file start"))?;
    let available = bytes.len() as u64 - start;
    let load_len = match h.load_end_addr as u64 {
        0 => available,
        end if end < load_addr => return Err(bad("load_end_addr lies below load_addr")),
        end if end - load_addr > available => return Err(bad("load_end_addr lies past the end of the file")),
        end => end - load_addr,
    };
    let load_end = load_addr + load_len;
    let bss_end = match h.bss_end_addr as u64 {
        0 => load_end,
        end if end < load_end => return Err(bad("bss_end_addr lies below load_end_addr")),
        end => end,
    };
    let image_end = ram.check_image_range(file, "a.out kludge image", load_addr, bss_end - load_addr)?;
    let entry = h.entry_addr as u64;
    if entry < load_addr || entry >= load_end {
        return Err(BootError::EntryOutsideImage { file: file.to_string(), entry });
    }
    let data = file_range(bytes, start, load_len).map_err(|w| bad(&w))?;
    let mem_err = |err| BootError::Memory { file: file.to_string(), err };
    mem.write(load_addr, data).map_err(mem_err)?;
    zero(mem, load_end, bss_end - load_end).map_err(mem_err)?;
    Ok((entry, image_end))
}

/// Load by the ELF program headers at their physical addresses. The entry
/// point is a virtual address: translate it through the segment holding it.
fn load_elf(mem: &GuestMemory, file: &str, elf: &Elf, ram: &Ram) -> Result<(u64, u64), BootError> {
    for p in elf.loads() {
        if p.paddr.checked_add(p.memsz).is_none_or(|end| end > 1 << 32) {
            return Err(BootError::OutsideRam {
                file: file.to_string(),
                what: "ELF segment",
                addr: p.paddr,
                size: p.memsz,
            });
        }
    }
    let end = elf.load(mem, file, ram)?;
    let e = elf.entry;
    let seg = elf.loads().find(|p| e >= p.vaddr && e - p.vaddr < p.memsz);
    let entry =
        seg.map(|p| e - p.vaddr + p.paddr).ok_or(BootError::EntryOutsideImage { file: file.to_string(), entry: e })?;
    Ok((entry, end))
}
