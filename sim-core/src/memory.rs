//! Guest-physical memory: RAM on vm-memory's `GuestMemoryMmap` plus overlay
//! pages that the platform maps into guest-physical space at run time
//! (shared_info, grant frames, rings). Overlays shadow RAM where they overlap,
//! and every change of the map is announced to the registered listeners so
//! that all consumers (KVM slots, dirty tracking, CPU caches) agree on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MmapRegion};

pub const PAGE_SIZE: u64 = 4096;
pub const PAGE_SHIFT: u32 = 12;
/// Start of the hole below 4 GiB that holds MMIO (LAPIC, IOAPIC, PCI BARs).
pub const PCI_HOLE_START: u64 = 0xC000_0000;
pub const FOUR_GIB: u64 = 0x1_0000_0000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryError {
    #[error("guest-physical address {0:#x} is not backed by RAM or an overlay page")]
    Unbacked(u64),
    #[error("cannot allocate {0} MiB of guest RAM: {1}")]
    Alloc(u64, String),
    #[error("guest RAM size must be at least 2 MiB, got {0} MiB")]
    TooSmall(u64),
}

/// One page of host memory that the platform can place into guest-physical
/// space. Cloning shares the page: the platform keeps a handle and writes it
/// directly while the guest sees it at its mapped frame.
#[derive(Clone, Debug)]
pub struct OverlayPage(Arc<MmapRegion>);

impl OverlayPage {
    /// A new zero-filled page (anonymous mmap, so it is page-aligned as KVM
    /// memory slots require).
    pub fn new() -> Self {
        let region = MmapRegion::new(PAGE_SIZE as usize).expect("mmap of one anonymous page");
        OverlayPage(Arc::new(region))
    }

    /// Host address of the page's first byte.
    pub fn host_addr(&self) -> *mut u8 {
        self.0.as_ptr()
    }

    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        assert!(offset + buf.len() <= PAGE_SIZE as usize);
        // SAFETY: the region is PAGE_SIZE bytes long and lives as long as self;
        // guest memory is plain bytes that any party may change (volatile
        // semantics are not required for a single-threaded machine).
        unsafe { std::ptr::copy_nonoverlapping(self.host_addr().add(offset), buf.as_mut_ptr(), buf.len()) }
    }

    pub fn write(&self, offset: usize, buf: &[u8]) {
        assert!(offset + buf.len() <= PAGE_SIZE as usize);
        // SAFETY: as in `read`.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), self.host_addr().add(offset), buf.len()) }
    }

    pub fn same_page(&self, other: &OverlayPage) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Default for OverlayPage {
    fn default() -> Self {
        Self::new()
    }
}

/// A change of the guest-physical address map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapChange {
    /// An overlay page now appears at `gfn`; `host_addr` is its backing.
    OverlayMapped { gfn: u64, host_addr: usize },
    /// The overlay page at `gfn` is gone; RAM (if any) shows through again.
    OverlayUnmapped { gfn: u64 },
}

/// Told of every change of the address map, in order.
pub trait MemoryListener: Send {
    fn map_changed(&mut self, change: MapChange);
}

/// What lives at a guest-physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    Ram,
    Overlay,
    /// Neither RAM nor overlay: an access goes to the MMIO bus.
    Mmio,
}

pub struct GuestMemory {
    ram: GuestMemoryMmap,
    ram_ranges: Vec<(u64, u64)>,
    overlays: BTreeMap<u64, OverlayPage>,
    listeners: Vec<Box<dyn MemoryListener>>,
    generation: u64,
}

impl std::fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestMemory")
            .field("ram_ranges", &self.ram_ranges)
            .field("overlays", &self.overlays.keys().collect::<Vec<_>>())
            .field("generation", &self.generation)
            .finish()
    }
}

impl GuestMemory {
    /// `mib` MiB of RAM: below the PCI hole first, the rest above 4 GiB.
    pub fn new(mib: u64) -> Result<Self, MemoryError> {
        if mib < 2 {
            return Err(MemoryError::TooSmall(mib));
        }
        let total = mib << 20;
        let low = total.min(PCI_HOLE_START);
        let mut ranges = vec![(0, low)];
        if total > low {
            ranges.push((FOUR_GIB, total - low));
        }
        let regions: Vec<(GuestAddress, usize)> = ranges.iter().map(|&(s, l)| (GuestAddress(s), l as usize)).collect();
        let ram = GuestMemoryMmap::from_ranges(&regions).map_err(|e| MemoryError::Alloc(mib, e.to_string()))?;
        Ok(GuestMemory { ram, ram_ranges: ranges, overlays: BTreeMap::new(), listeners: Vec::new(), generation: 0 })
    }

    /// RAM ranges as (start, length), ascending.
    pub fn ram_ranges(&self) -> &[(u64, u64)] {
        &self.ram_ranges
    }

    /// Total RAM in bytes.
    pub fn ram_size(&self) -> u64 {
        self.ram_ranges.iter().map(|r| r.1).sum()
    }

    pub fn is_ram(&self, gpa: u64) -> bool {
        self.ram_ranges.iter().any(|&(s, l)| gpa >= s && gpa - s < l)
    }

    pub fn backing(&self, gpa: u64) -> Backing {
        if self.overlays.contains_key(&(gpa >> PAGE_SHIFT)) {
            Backing::Overlay
        } else if self.is_ram(gpa) {
            Backing::Ram
        } else {
            Backing::Mmio
        }
    }

    /// Bumped on every change of the map; caches of host pointers keyed by
    /// guest address must be dropped when it changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The underlying RAM (for backends that register it, e.g. KVM slots).
    pub fn ram(&self) -> &GuestMemoryMmap {
        &self.ram
    }

    /// Host pointer to the start of the page holding `gpa`, if the page is
    /// RAM or overlay. Valid until `generation()` changes or `self` drops.
    pub fn page_host_ptr(&self, gpa: u64) -> Option<*mut u8> {
        let gfn = gpa >> PAGE_SHIFT;
        if let Some(p) = self.overlays.get(&gfn) {
            return Some(p.host_addr());
        }
        let base = gfn << PAGE_SHIFT;
        if !self.is_ram(base) {
            return None;
        }
        self.ram.get_host_address(GuestAddress(base)).ok()
    }

    /// Map `page` at frame `gfn`, replacing any overlay there. Returns the
    /// page it replaced.
    pub fn map_overlay(&mut self, gfn: u64, page: OverlayPage) -> Option<OverlayPage> {
        let host_addr = page.host_addr() as usize;
        let old = self.overlays.insert(gfn, page);
        self.generation += 1;
        self.announce(MapChange::OverlayMapped { gfn, host_addr });
        old
    }

    /// Remove the overlay at `gfn`, if any.
    pub fn unmap_overlay(&mut self, gfn: u64) -> Option<OverlayPage> {
        let old = self.overlays.remove(&gfn)?;
        self.generation += 1;
        self.announce(MapChange::OverlayUnmapped { gfn });
        Some(old)
    }

    pub fn overlay_at(&self, gfn: u64) -> Option<&OverlayPage> {
        self.overlays.get(&gfn)
    }

    /// Overlay frames in ascending order.
    pub fn overlays(&self) -> impl Iterator<Item = (u64, &OverlayPage)> {
        self.overlays.iter().map(|(g, p)| (*g, p))
    }

    pub fn add_listener(&mut self, listener: Box<dyn MemoryListener>) {
        self.listeners.push(listener);
    }

    fn announce(&mut self, change: MapChange) {
        for l in &mut self.listeners {
            l.map_changed(change);
        }
    }

    /// Read guest-physical memory; the range may cross pages and backings.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.for_each_page(gpa, buf.len(), |addr, off, len| {
            let chunk = &mut buf[off..off + len];
            if let Some(p) = self.overlays.get(&(addr >> PAGE_SHIFT)) {
                p.read((addr & (PAGE_SIZE - 1)) as usize, chunk);
                Ok(())
            } else {
                self.ram.read_slice(chunk, GuestAddress(addr)).map_err(|_| MemoryError::Unbacked(addr))
            }
        })
    }

    /// Write guest-physical memory; the range may cross pages and backings.
    pub fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError> {
        self.for_each_page(gpa, buf.len(), |addr, off, len| {
            let chunk = &buf[off..off + len];
            if let Some(p) = self.overlays.get(&(addr >> PAGE_SHIFT)) {
                p.write((addr & (PAGE_SIZE - 1)) as usize, chunk);
                Ok(())
            } else {
                self.ram.write_slice(chunk, GuestAddress(addr)).map_err(|_| MemoryError::Unbacked(addr))
            }
        })
    }

    fn for_each_page(
        &self,
        gpa: u64,
        len: usize,
        mut f: impl FnMut(u64, usize, usize) -> Result<(), MemoryError>,
    ) -> Result<(), MemoryError> {
        let mut off = 0usize;
        while off < len {
            let addr = gpa.wrapping_add(off as u64);
            let in_page = (PAGE_SIZE - (addr & (PAGE_SIZE - 1))) as usize;
            let n = in_page.min(len - off);
            f(addr, off, n)?;
            off += n;
        }
        Ok(())
    }

    pub fn read_u8(&self, gpa: u64) -> Result<u8, MemoryError> {
        let mut b = [0u8; 1];
        self.read(gpa, &mut b)?;
        Ok(b[0])
    }
    pub fn read_u16(&self, gpa: u64) -> Result<u16, MemoryError> {
        let mut b = [0u8; 2];
        self.read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    pub fn read_u32(&self, gpa: u64) -> Result<u32, MemoryError> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    pub fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    pub fn write_u8(&self, gpa: u64, v: u8) -> Result<(), MemoryError> {
        self.write(gpa, &[v])
    }
    pub fn write_u16(&self, gpa: u64, v: u16) -> Result<(), MemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }
    pub fn write_u32(&self, gpa: u64, v: u32) -> Result<(), MemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }
    pub fn write_u64(&self, gpa: u64, v: u64) -> Result<(), MemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }

    /// Size of RAM below 4 GiB, in bytes.
    pub fn low_ram_size(&self) -> u64 {
        self.ram_ranges.first().map(|r| r.1).unwrap_or(0)
    }

    /// Every RAM region's (guest address, length, host address), for
    /// backends that map RAM wholesale.
    pub fn ram_regions(&self) -> Vec<(u64, u64, usize)> {
        self.ram
            .iter()
            .map(|r| {
                let host = r.get_host_address(vm_memory::MemoryRegionAddress(0)).unwrap() as usize;
                (r.start_addr().0, r.len(), host)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn ram_splits_around_the_pci_hole() {
        let m = GuestMemory::new(4096).unwrap();
        assert_eq!(m.ram_ranges(), &[(0, PCI_HOLE_START), (FOUR_GIB, (4096 << 20) - PCI_HOLE_START)]);
        assert_eq!(m.ram_size(), 4096 << 20);
        assert_eq!(m.backing(PCI_HOLE_START), Backing::Mmio);
        assert_eq!(m.backing(FOUR_GIB), Backing::Ram);
        assert!(m.read_u8(PCI_HOLE_START).is_err());
    }

    #[test]
    fn small_ram_is_one_range() {
        let m = GuestMemory::new(16).unwrap();
        assert_eq!(m.ram_ranges(), &[(0, 16 << 20)]);
        assert_eq!(GuestMemory::new(1).unwrap_err(), MemoryError::TooSmall(1));
    }

    #[test]
    fn access_crossing_pages_and_backings() {
        let mut m = GuestMemory::new(4).unwrap();
        let p = OverlayPage::new();
        m.map_overlay(1, p.clone());
        m.write(0xffe, &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 2];
        p.read(0, &mut b);
        assert_eq!(b, [3, 4], "bytes past the page boundary land in the overlay");
        assert_eq!(m.read_u32(0xffe).unwrap(), u32::from_le_bytes([1, 2, 3, 4]));
        // Unmapping shows the RAM underneath, which was never written.
        m.unmap_overlay(1);
        assert_eq!(m.read_u16(0x1000).unwrap(), 0);
    }

    #[test]
    fn overlay_outside_ram_is_backed() {
        let mut m = GuestMemory::new(4).unwrap();
        let gfn = 0xF0000;
        assert_eq!(m.backing(gfn << 12), Backing::Mmio);
        m.map_overlay(gfn, OverlayPage::new());
        assert_eq!(m.backing(gfn << 12), Backing::Overlay);
        m.write_u64((gfn << 12) + 8, 0xdead_beef).unwrap();
        assert_eq!(m.read_u64((gfn << 12) + 8).unwrap(), 0xdead_beef);
        assert!(m.page_host_ptr(gfn << 12).is_some());
    }

    struct Recorder(Arc<Mutex<Vec<MapChange>>>);
    impl MemoryListener for Recorder {
        fn map_changed(&mut self, c: MapChange) {
            self.0.lock().unwrap().push(c);
        }
    }

    #[test]
    fn listeners_see_every_change_in_order() {
        let mut m = GuestMemory::new(4).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        m.add_listener(Box::new(Recorder(log.clone())));
        let p = OverlayPage::new();
        let g0 = m.generation();
        m.map_overlay(7, p.clone());
        assert!(m.unmap_overlay(8).is_none(), "nothing mapped there");
        m.unmap_overlay(7);
        assert_eq!(m.generation(), g0 + 2);
        assert_eq!(
            *log.lock().unwrap(),
            vec![
                MapChange::OverlayMapped { gfn: 7, host_addr: p.host_addr() as usize },
                MapChange::OverlayUnmapped { gfn: 7 }
            ]
        );
    }
}
