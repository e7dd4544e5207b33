//! Boot loaders: put a kernel, its modules and the boot information into
//! guest memory and produce the BSP's entry state.
//!
//! Two protocols, chosen by what the kernel image carries:
//! - PVH (Xen's direct boot ABI, docs/misc/pvh.pandoc): an ELF with a Xen
//!   `XEN_ELFNOTE_PHYS32_ENTRY` note; `hvm_start_info` in EBX.
//! - Multiboot v1 (0.6.96): a Multiboot header in the first 8 KiB, loaded from
//!   its ELF program headers or by the a.out kludge; `multiboot_info` in EBX.
//!
//! Boot data (info structures, memory map, module list, command lines) goes
//! into the boot-data area `layout::BOOT_DATA_BASE..BOOT_DATA_END`; modules
//! go page-aligned above the kernel, below 1 GiB.

mod elf;
mod memmap;
mod multiboot;
mod place;
mod pvh;

pub use memmap::{e820_map, e820_map_with, E820Entry, E820Kind};

use crate::memory::MemoryError;
use crate::{ArchState, GuestMemory};

/// A file handed to the loader; `name` is used in messages only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootImage {
    pub name: String,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootConfig {
    pub kernel: BootImage,
    /// Modules (initrd files), in order. Each module's command line is its
    /// name (as QEMU passes it for Multiboot).
    pub modules: Vec<BootImage>,
    pub cmdline: String,
    /// Guest-physical address of the ACPI RSDP (0: none), passed to PVH.
    pub rsdp: u64,
    /// Ranges outside RAM to list as reserved in the memory map (the
    /// machine fills in its platform's, e.g. Xen's special pages).
    pub reserved: Vec<(u64, u64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    Pvh,
    Multiboot,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootInfo {
    pub protocol: BootProtocol,
    /// The BSP's state at the kernel's entry point.
    pub entry: ArchState,
    /// One past the highest guest-physical byte of the loaded kernel.
    pub kernel_end: u64,
    /// The kernel's executable code as loaded (ELF PT_LOAD with PF_X; the
    /// whole image for the Multiboot a.out kludge), for backends that look
    /// for instruction sites in it (KVM's VMCALL breakpoints).
    pub exec_segments: Vec<ExecSegment>,
}

/// One range of loaded kernel code: `len` bytes at guest-physical `paddr`,
/// linked to run at `vaddr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecSegment {
    pub vaddr: u64,
    pub paddr: u64,
    pub len: u64,
}

/// Why an image cannot be booted. Every message is one line that names the
/// file at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootError {
    #[error("{file}: not an ELF file or Multiboot kernel")]
    NotBootable { file: String },
    #[error("{file}: ELF file has neither a Xen PHYS32_ENTRY note (PVH) nor a Multiboot header")]
    NoBootProtocol { file: String },
    #[error("{file}: malformed {format}: {what}")]
    Malformed { file: String, format: &'static str, what: String },
    #[error("{file}: unsupported {format}: {what}")]
    Unsupported { file: String, format: &'static str, what: String },
    #[error("{file}: {what} at {addr:#x} (size {size:#x}) lies outside guest RAM")]
    OutsideRam { file: String, what: &'static str, addr: u64, size: u64 },
    #[error("{file}: {what} at {addr:#x} (size {size:#x}) lies below 1 MiB, in the boot-data and legacy area")]
    InLowMemory { file: String, what: &'static str, addr: u64, size: u64 },
    #[error("{file}: entry point {entry:#x} is not inside a loaded segment")]
    EntryOutsideImage { file: String, entry: u64 },
    #[error("{file}: module of {size:#x} bytes does not fit in guest RAM below {limit:#x} (1 GiB or the end of RAM)")]
    ModuleDoesNotFit { file: String, size: u64, limit: u64 },
    #[error("{file}: boot information ({what}) does not fit in the boot-data area {base:#x}-{end:#x}")]
    BootDataFull { file: String, what: &'static str, base: u64, end: u64 },
    #[error("{file}: cannot write guest memory: {err}")]
    Memory { file: String, err: MemoryError },
}

/// Boot-time limits shared by both protocols.
pub const MODULE_LIMIT: u64 = 1 << 30;

/// Load the kernel and modules of `cfg` and lay out the boot information
/// for the protocol the kernel asks for.
pub fn load(mem: &GuestMemory, cfg: &BootConfig) -> Result<BootInfo, BootError> {
    let file = cfg.kernel.name.as_str();
    let bytes = cfg.kernel.bytes.as_slice();
    let elf = elf::Elf::parse(bytes).map_err(|what| malformed(file, "ELF file", what))?;
    if let Some(elf) = &elf {
        let note = elf.xen_phys32_entry().map_err(|what| malformed(file, "ELF file", what))?;
        if let Some(entry) = note {
            return pvh::load(mem, cfg, elf, entry);
        }
    }
    match multiboot::find_header(bytes).map_err(|what| malformed(file, "Multiboot header", what))? {
        Some(header) => multiboot::load(mem, cfg, elf.as_ref(), &header),
        None if elf.is_some() => Err(BootError::NoBootProtocol { file: file.to_string() }),
        None => Err(BootError::NotBootable { file: file.to_string() }),
    }
}

/// The link address and size of each of `names` in `kernel`'s ELF symbol
/// table (.symtab), for backends that look for code by name (KVM's VMCALL
/// breakpoints in Linux's xen_hypercall_intel). Empty for images that are
/// not ELF, have no symbols or a malformed table; names not found are left out.
pub fn kernel_symbols(kernel: &[u8], names: &[&str]) -> Vec<(String, u64, u64)> {
    match elf::Elf::parse(kernel) {
        Ok(Some(e)) => e.symbols(names).unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn malformed(file: &str, format: &'static str, what: String) -> BootError {
    BootError::Malformed { file: file.to_string(), format, what }
}

#[cfg(test)]
mod tests;
