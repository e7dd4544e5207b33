//! Fixed guest-physical addresses of the machine (PC-compatible).

/// Boot data (hvm_start_info or Multiboot info, memory map, module list,
/// command lines) is placed from here, below the EBDA.
pub const BOOT_DATA_BASE: u64 = 0x1000;
pub const BOOT_DATA_END: u64 = 0x9_f000;
/// Reserved in the memory map: EBDA, legacy video and BIOS area.
pub const LEGACY_RESERVED_BASE: u64 = 0x9_f000;
/// ACPI tables (RSDP must be in the BIOS area, 0xE0000-0xFFFFF, to be found
/// by a scan; PVH also passes rsdp_paddr).
pub const ACPI_TABLES_BASE: u64 = 0xe_0000;
pub const ACPI_TABLES_END: u64 = 0x10_0000;
pub const HIGH_MEMORY_BASE: u64 = 0x10_0000;
/// IOAPIC MMIO base.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// LAPIC MMIO base (xAPIC mode).
pub const LAPIC_BASE: u64 = 0xfee0_0000;
/// Device/function number of the Xen platform PCI device on bus 0 (00:03.0).
pub const XEN_PLATFORM_PCI_DEVFN: u8 = 3 << 3;
/// The port hypercall-page stubs write to on CPUs that cannot intercept
/// VMCALL (KVM without Xen support): `mov eax, nr; out HYPERCALL_PORT, al;
/// ret`. 8-bit because every other register carries a hypercall argument,
/// so the stub cannot load DX; 0xE8 is unused on the PC (0xE9 is debugcon).
pub const HYPERCALL_PORT: u16 = 0xe8;
