//! Guest memory as KVM memory slots. sim-core's map is RAM regions with
//! overlay pages shadowing them; KVM slots may not overlap, so RAM slots are
//! split around every overlay page and each overlay page gets a slot of its
//! own. The layout is recomputed from `GuestMemory` whenever its generation
//! changes and only the difference is applied. RAM slots log the pages the
//! guest dirties (KVM_MEM_LOG_DIRTY_PAGES; see `dirty`); overlay pages are
//! not RAM and are saved and hashed whole.

use std::collections::BTreeMap;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};

use sim_core::memory::{GuestMemory, PAGE_SIZE};

/// One slot's mapping: guest-physical start, length, host address, and
/// whether KVM logs the pages written through it (RAM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotMap {
    pub gpa: u64,
    pub len: u64,
    pub host: u64,
    pub ram: bool,
}

impl SlotMap {
    /// The KVM_SET_USER_MEMORY_REGION argument that maps (or, with
    /// `delete`, removes) this slot as number `slot`.
    pub fn region(&self, slot: u32, delete: bool) -> kvm_userspace_memory_region {
        kvm_userspace_memory_region {
            slot,
            guest_phys_addr: self.gpa,
            memory_size: if delete { 0 } else { self.len },
            userspace_addr: self.host,
            flags: if self.ram { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
        }
    }
}

/// The slot layout for `mem`: RAM minus overlay pages, plus the overlays,
/// sorted by guest address.
pub fn layout(mem: &GuestMemory) -> Vec<SlotMap> {
    let overlays: Vec<(u64, u64)> = mem.overlays().map(|(gfn, p)| (gfn, p.host_addr() as u64)).collect();
    layout_of(&mem.ram_regions(), &overlays)
}

/// `layout` on plain data: RAM regions (gpa, len, host) and overlay pages
/// (gfn, host), both ascending.
pub fn layout_of(ram: &[(u64, u64, usize)], overlays: &[(u64, u64)]) -> Vec<SlotMap> {
    let mut out = Vec::new();
    for &(start, len, host) in ram {
        let end = start.saturating_add(len);
        let mut cur = start;
        for &(gfn, _) in overlays {
            let page = gfn.saturating_mul(PAGE_SIZE);
            if page < cur || page >= end {
                continue;
            }
            if page > cur {
                out.push(SlotMap { gpa: cur, len: page - cur, host: host as u64 + (cur - start), ram: true });
            }
            cur = page.saturating_add(PAGE_SIZE);
        }
        if cur < end {
            out.push(SlotMap { gpa: cur, len: end - cur, host: host as u64 + (cur - start), ram: true });
        }
    }
    for &(gfn, host) in overlays {
        out.push(SlotMap { gpa: gfn.saturating_mul(PAGE_SIZE), len: PAGE_SIZE, host, ram: false });
    }
    out.sort();
    out
}

/// Slots currently registered with KVM, by slot number.
#[derive(Debug, Default)]
pub struct SlotTable {
    slots: BTreeMap<u32, SlotMap>,
}

/// What to tell KVM to move from the current table to a new layout:
/// deletions first (slots may not overlap, even transiently), then additions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SlotDiff {
    pub remove: Vec<(u32, SlotMap)>,
    pub add: Vec<(u32, SlotMap)>,
}

impl SlotTable {
    /// Compute the changes to reach `want`, and record them as applied.
    /// Unchanged slots keep their numbers; new ones take the lowest free.
    pub fn diff(&mut self, want: &[SlotMap]) -> SlotDiff {
        let mut d = SlotDiff::default();
        self.slots.retain(|&id, m| {
            let keep = want.binary_search(m).is_ok();
            if !keep {
                d.remove.push((id, *m));
            }
            keep
        });
        let have: Vec<SlotMap> = self.slots.values().copied().collect();
        let mut next = 0u32;
        for m in want {
            if have.contains(m) {
                continue;
            }
            while self.slots.contains_key(&next) {
                next += 1;
            }
            self.slots.insert(next, *m);
            d.add.push((next, *m));
        }
        d
    }

    /// The registered RAM slots (those with a dirty log), by slot number.
    pub fn ram_slots(&self) -> impl Iterator<Item = (u32, SlotMap)> + '_ {
        self.slots.iter().filter(|(_, m)| m.ram).map(|(&id, m)| (id, *m))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn ram_is_split_around_overlays() {
        let ram = [(0u64, 16 * MIB, 0x7000_0000_0000usize)];
        let l = layout_of(&ram, &[(0x10, 0xaaaa_0000), (0x11, 0xbbbb_0000)]);
        // RAM below 0x10000, two overlay pages, RAM from 0x12000 on.
        assert_eq!(
            l,
            vec![
                SlotMap { gpa: 0, len: 0x10000, host: 0x7000_0000_0000, ram: true },
                SlotMap { gpa: 0x10000, len: 0x1000, host: 0xaaaa_0000, ram: false },
                SlotMap { gpa: 0x11000, len: 0x1000, host: 0xbbbb_0000, ram: false },
                SlotMap { gpa: 0x12000, len: 16 * MIB - 0x12000, host: 0x7000_0001_2000, ram: true },
            ]
        );
    }

    #[test]
    fn overlays_outside_ram_and_at_edges() {
        let ram = [(0u64, 2 * MIB, 0x1000_0000usize)];
        // First page of RAM, last page of RAM, and a page in the MMIO hole.
        let l = layout_of(&ram, &[(0, 0xa000), (0x1ff, 0xb000), (0xf0000, 0xc000)]);
        assert_eq!(
            l,
            vec![
                SlotMap { gpa: 0, len: 0x1000, host: 0xa000, ram: false },
                SlotMap { gpa: 0x1000, len: 2 * MIB - 0x2000, host: 0x1000_1000, ram: true },
                SlotMap { gpa: 0x1ff000, len: 0x1000, host: 0xb000, ram: false },
                SlotMap { gpa: 0xf000_0000, len: 0x1000, host: 0xc000, ram: false },
            ]
        );
    }

    #[test]
    fn diff_removes_then_adds_and_keeps_unchanged_slots() {
        let ram = [(0u64, 2 * MIB, 0x1000_0000usize)];
        let mut t = SlotTable::default();
        let first = t.diff(&layout_of(&ram, &[]));
        assert_eq!(first.add, vec![(0, SlotMap { gpa: 0, len: 2 * MIB, host: 0x1000_0000, ram: true })]);
        assert!(first.remove.is_empty());
        // Map an overlay in the middle: the RAM slot goes, three come.
        let d = t.diff(&layout_of(&ram, &[(0x100, 0xa000)]));
        assert_eq!(d.remove, vec![(0, SlotMap { gpa: 0, len: 2 * MIB, host: 0x1000_0000, ram: true })]);
        assert_eq!(d.add.len(), 3);
        assert_eq!(t.len(), 3);
        // Mapping a second overlay in the mapped-RAM tail keeps the head and
        // the first overlay's slot.
        let d = t.diff(&layout_of(&ram, &[(0x100, 0xa000), (0x180, 0xb000)]));
        assert_eq!(d.remove.len(), 1);
        assert_eq!(d.remove[0].1.gpa, 0x101000);
        assert_eq!(d.add.len(), 3);
        assert_eq!(t.len(), 5);
        assert_eq!(t.ram_slots().count(), 3, "head, middle and tail of RAM log dirty pages; overlays do not");
        // Unmapping everything restores one slot.
        let d = t.diff(&layout_of(&ram, &[]));
        assert_eq!(d.remove.len(), 5);
        assert_eq!(d.add.len(), 1);
        assert_eq!(t.len(), 1);
    }
}
