//! PVH direct boot (Xen docs/misc/pvh.pandoc; layouts from
//! xen/include/public/arch-x86/hvm/start_info.h, version 1).

use super::elf::Elf;
use super::memmap::e820_map_with;
use super::place::{place_modules, BootData, Ram, Record};
use super::{BootConfig, BootError, BootInfo, BootProtocol};
use crate::{ArchState, GuestMemory};

pub const START_INFO_MAGIC: u32 = 0x336e_c578;
pub const START_INFO_VERSION: u32 = 1;
/// `struct hvm_start_info` (version 1, with the memory map fields).
pub const START_INFO_SIZE: usize = 56;
/// `struct hvm_modlist_entry`.
pub const MODLIST_ENTRY_SIZE: usize = 32;
/// `struct hvm_memmap_table_entry`.
pub const MEMMAP_ENTRY_SIZE: usize = 24;

pub fn load(mem: &GuestMemory, cfg: &BootConfig, elf: &Elf, entry: u64) -> Result<BootInfo, BootError> {
    let file = cfg.kernel.name.as_str();
    let ram = Ram::new(mem);
    let kernel_end = elf.load(mem, file, &ram)?;
    if !elf.loads().any(|p| entry >= p.paddr && entry - p.paddr < p.memsz) {
        return Err(BootError::EntryOutsideImage { file: file.to_string(), entry });
    }
    let modules = place_modules(mem, &ram, kernel_end, &cfg.modules)?;

    let mut data = BootData::new(mem, file);
    let start_info = data.alloc(START_INFO_SIZE as u64, "hvm_start_info")?;
    let cmdline = data.put_cstr(&cfg.cmdline, "kernel command line")?;

    let mut modlist = Vec::with_capacity(modules.len() * MODLIST_ENTRY_SIZE);
    for (m, image) in modules.iter().zip(&cfg.modules) {
        let name = data.put_cstr(&image.name, "module command line")?;
        let mut r = Record::new(MODLIST_ENTRY_SIZE);
        r.u64(0, m.addr).u64(8, m.size).u64(16, name);
        modlist.extend_from_slice(&r.0);
    }
    let modlist_paddr = if modules.is_empty() { 0 } else { data.put(&modlist, "module list")? };

    let map = e820_map_with(mem, &cfg.reserved);
    let mut memmap = Vec::with_capacity(map.len() * MEMMAP_ENTRY_SIZE);
    for e in &map {
        let mut r = Record::new(MEMMAP_ENTRY_SIZE);
        r.u64(0, e.addr).u64(8, e.size).u32(16, e.kind.code());
        memmap.extend_from_slice(&r.0);
    }
    let memmap_paddr = data.put(&memmap, "memory map")?;

    let mut si = Record::new(START_INFO_SIZE);
    si.u32(0, START_INFO_MAGIC)
        .u32(4, START_INFO_VERSION)
        .u32(8, 0)
        .u32(12, modules.len() as u32)
        .u64(16, modlist_paddr)
        .u64(24, cmdline)
        .u64(32, cfg.rsdp)
        .u64(40, memmap_paddr)
        .u32(48, map.len() as u32);
    data.write(start_info, &si.0)?;

    Ok(BootInfo {
        protocol: BootProtocol::Pvh,
        entry: ArchState::pvh_entry(entry, start_info),
        kernel_end,
        exec_segments: elf.exec_segments(),
    })
}
