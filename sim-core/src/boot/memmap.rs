//! The guest's physical memory map as firmware reports it (E820 types, which
//! PVH's `hvm_memmap_table_entry` and Multiboot's mmap share).

use crate::layout::{HIGH_MEMORY_BASE, LEGACY_RESERVED_BASE};
use crate::GuestMemory;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Kind {
    Ram,
    Reserved,
    Acpi,
    Nvs,
}

impl E820Kind {
    /// The type number (ACPI address range types; XEN_HVM_MEMMAP_TYPE_*).
    pub fn code(self) -> u32 {
        match self {
            E820Kind::Ram => 1,
            E820Kind::Reserved => 2,
            E820Kind::Acpi => 3,
            E820Kind::Nvs => 4,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}

/// RAM ranges of `mem`, with the legacy area (EBDA, VGA, BIOS, and the ACPI
/// tables in it) `LEGACY_RESERVED_BASE..HIGH_MEMORY_BASE` cut out and
/// reported reserved. Sorted by address, no overlaps.
pub fn e820_map(mem: &GuestMemory) -> Vec<E820Entry> {
    e820_map_with(mem, &[])
}

/// `e820_map` plus `reserved` (address, size) ranges outside RAM — pages a
/// platform places in the MMIO hole, such as Xen's special pages — listed
/// as reserved. Ranges that overlap RAM or each other are left out.
pub fn e820_map_with(mem: &GuestMemory, reserved: &[(u64, u64)]) -> Vec<E820Entry> {
    let mut map = ram_map(mem);
    for &(addr, size) in reserved {
        let end = addr.saturating_add(size);
        let clear = size > 0 && map.iter().all(|e| end <= e.addr || addr >= e.addr.saturating_add(e.size));
        if clear {
            map.push(E820Entry { addr, size, kind: E820Kind::Reserved });
        }
    }
    map.sort_by_key(|e| e.addr);
    map
}

fn ram_map(mem: &GuestMemory) -> Vec<E820Entry> {
    let (hole_start, hole_end) = (LEGACY_RESERVED_BASE, HIGH_MEMORY_BASE);
    let mut map = Vec::new();
    let mut push = |addr: u64, end: u64, kind| {
        if end > addr {
            map.push(E820Entry { addr, size: end - addr, kind });
        }
    };
    let mut hole_done = false;
    for &(start, len) in mem.ram_ranges() {
        let end = start.saturating_add(len);
        if !hole_done && start >= hole_end {
            push(hole_start, hole_end, E820Kind::Reserved);
            hole_done = true;
        }
        if !hole_done && end > hole_start {
            push(start, end.min(hole_start), E820Kind::Ram);
            push(hole_start, hole_end, E820Kind::Reserved);
            push(start.max(hole_end), end, E820Kind::Ram);
            hole_done = true;
        } else {
            push(start, end, E820Kind::Ram);
        }
    }
    if !hole_done {
        push(hole_start, hole_end, E820Kind::Reserved);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(addr: u64, size: u64, kind: E820Kind) -> E820Entry {
        E820Entry { addr, size, kind }
    }

    #[test]
    fn legacy_area_is_cut_out_of_low_ram() {
        let mem = GuestMemory::new(64).unwrap();
        assert_eq!(
            e820_map(&mem),
            vec![
                e(0, 0x9f000, E820Kind::Ram),
                e(0x9f000, 0x61000, E820Kind::Reserved),
                e(0x100000, (64 << 20) - 0x100000, E820Kind::Ram),
            ]
        );
    }

    #[test]
    fn ram_above_4g_follows() {
        // 4 GiB of RAM: 3 GiB below the PCI hole, 1 GiB from 4 GiB.
        let mem = GuestMemory::new(4096).unwrap();
        assert_eq!(
            e820_map(&mem),
            vec![
                e(0, 0x9f000, E820Kind::Ram),
                e(0x9f000, 0x61000, E820Kind::Reserved),
                e(0x100000, 0xc000_0000 - 0x100000, E820Kind::Ram),
                e(0x1_0000_0000, 0x4000_0000, E820Kind::Ram),
            ]
        );
        assert_eq!(E820Kind::Ram.code(), 1);
        assert_eq!(E820Kind::Reserved.code(), 2);
    }

    #[test]
    fn platform_pages_in_the_hole_are_reserved_in_address_order() {
        let mem = GuestMemory::new(4096).unwrap();
        let special = (0xfeff_8000, 0x8000);
        let map = e820_map_with(&mem, &[special, (0x2000, 0x1000)]);
        // The range inside RAM is refused; the hole range lands between the
        // two RAM blocks.
        assert_eq!(map.len(), 5);
        assert_eq!(map[3], e(0xfeff_8000, 0x8000, E820Kind::Reserved));
        assert_eq!(map[4].addr, 0x1_0000_0000);
    }
}
