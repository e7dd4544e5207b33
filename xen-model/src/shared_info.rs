//! The shared_info page and the per-vCPU vcpu_info blocks
//! (xen/include/public/xen.h). The shared_info page always exists as a
//! platform-owned overlay page; the guest chooses where (and whether) it
//! appears in its physical address space. A vcpu_info lives in shared_info
//! (vCPUs 0-31) until the guest registers its own in guest RAM.
//!
//! Bit arrays (evtchn_pending, evtchn_mask, evtchn_pending_sel) are
//! little-endian words, so bit `n` is bit `n % 8` of byte `n / 8` whatever
//! the word width; only the array offsets and the selector's place differ
//! between 64-bit and 32-bit (compat) layouts.

use sim_core::{GuestMemory, OverlayPage};

/// vcpu_info slots in shared_info (XEN_LEGACY_MAX_VCPUS).
pub const LEGACY_MAX_VCPUS: u32 = 32;
pub const VCPU_INFO_SIZE: u64 = 64;

/// vcpu_info field offsets.
pub mod vcpu_info {
    pub const UPCALL_PENDING: u64 = 0;
    pub const UPCALL_MASK: u64 = 1;
    /// evtchn_pending_sel: a u64 at 8 (64-bit), a u32 at 4 (compat).
    pub const PENDING_SEL_64: u64 = 8;
    pub const PENDING_SEL_32: u64 = 4;
    pub const TIME: u64 = 32;
}

/// shared_info offsets after the vcpu_info array.
pub mod layout {
    pub const EVTCHN_PENDING: u64 = 2048;
    pub const EVTCHN_MASK_64: u64 = 2560;
    pub const EVTCHN_MASK_32: u64 = 2176;
    pub const WC_VERSION_64: u64 = 3072;
    pub const WC_VERSION_32: u64 = 2304;
}

/// Where a vCPU's vcpu_info is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VcpuInfoAt {
    /// Slot `n` of the shared_info page.
    Shared(u32),
    /// Registered by the guest at this guest-physical address.
    Guest(u64),
    /// Neither: vCPU >= 32 before registration (Xen's dummy vcpu_info).
    Nowhere,
}

/// The shared_info page: contents, where it is mapped, and the layout the
/// guest uses (latched from its execution mode, like Xen's has_32bit_shinfo).
#[derive(Clone, Debug)]
pub struct SharedInfo {
    page: OverlayPage,
    /// Guest frame it is mapped at, if any.
    pub gfn: Option<u64>,
    compat: bool,
}

impl Default for SharedInfo {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedInfo {
    pub fn new() -> Self {
        SharedInfo { page: OverlayPage::new(), gfn: None, compat: false }
    }

    pub fn page(&self) -> &OverlayPage {
        &self.page
    }

    /// 32-bit (compat) layout.
    pub fn compat(&self) -> bool {
        self.compat
    }

    pub fn set_compat(&mut self, compat: bool) {
        self.compat = compat;
    }

    /// Bits per evtchn word: the 2-level ABI has word_bits^2 ports.
    pub fn word_bits(&self) -> u32 {
        if self.compat {
            32
        } else {
            64
        }
    }

    pub fn mask_offset(&self) -> u64 {
        if self.compat {
            layout::EVTCHN_MASK_32
        } else {
            layout::EVTCHN_MASK_64
        }
    }

    pub fn wc_offset(&self) -> u64 {
        if self.compat {
            layout::WC_VERSION_32
        } else {
            layout::WC_VERSION_64
        }
    }

    fn pending_sel_offset(&self) -> u64 {
        if self.compat {
            vcpu_info::PENDING_SEL_32
        } else {
            vcpu_info::PENDING_SEL_64
        }
    }

    /// Zero the whole page (soft reset).
    pub fn clear(&self) {
        self.page.write(0, &[0u8; 4096]);
    }

    pub fn read_u8(&self, off: u64) -> u8 {
        let mut b = [0u8; 1];
        self.page.read((off & 0xfff) as usize, &mut b);
        b[0]
    }

    pub fn write_u8(&self, off: u64, v: u8) {
        self.page.write((off & 0xfff) as usize, &[v]);
    }

    pub fn write_bytes(&self, off: u64, b: &[u8]) {
        let off = (off & 0xfff) as usize;
        let n = b.len().min(4096 - off);
        self.page.write(off, &b[..n]);
    }

    pub fn read_u32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.page.read((off & 0xffc) as usize, &mut b);
        u32::from_le_bytes(b)
    }

    fn test_bit(&self, base: u64, bit: u32) -> bool {
        self.read_u8(base + (bit / 8) as u64) & (1 << (bit % 8)) != 0
    }

    /// Set bit `bit` of the array at `base`; returns its old value.
    fn test_and_set_bit(&self, base: u64, bit: u32) -> bool {
        let off = base + (bit / 8) as u64;
        let b = self.read_u8(off);
        self.write_u8(off, b | (1 << (bit % 8)));
        b & (1 << (bit % 8)) != 0
    }

    fn test_and_clear_bit(&self, base: u64, bit: u32) -> bool {
        let off = base + (bit / 8) as u64;
        let b = self.read_u8(off);
        self.write_u8(off, b & !(1 << (bit % 8)));
        b & (1 << (bit % 8)) != 0
    }

    pub fn port_pending(&self, port: u32) -> bool {
        self.test_bit(layout::EVTCHN_PENDING, port)
    }
    pub fn port_masked(&self, port: u32) -> bool {
        self.test_bit(self.mask_offset(), port)
    }
    pub fn test_and_set_pending(&self, port: u32) -> bool {
        self.test_and_set_bit(layout::EVTCHN_PENDING, port)
    }
    pub fn clear_pending(&self, port: u32) {
        self.test_and_clear_bit(layout::EVTCHN_PENDING, port);
    }
    pub fn set_mask(&self, port: u32) {
        self.test_and_set_bit(self.mask_offset(), port);
    }
    pub fn test_and_clear_mask(&self, port: u32) -> bool {
        self.test_and_clear_bit(self.mask_offset(), port)
    }

    // vcpu_info access, wherever it lives. A registered vcpu_info in guest
    // memory that has gone away reads as zero and drops writes.

    pub fn vi_read_u8(&self, mem: &GuestMemory, at: VcpuInfoAt, off: u64) -> u8 {
        match at {
            VcpuInfoAt::Shared(n) => self.read_u8(n as u64 * VCPU_INFO_SIZE + off),
            VcpuInfoAt::Guest(gpa) => mem.read_u8(gpa.wrapping_add(off)).unwrap_or(0),
            VcpuInfoAt::Nowhere => 0,
        }
    }

    pub fn vi_write(&self, mem: &GuestMemory, at: VcpuInfoAt, off: u64, bytes: &[u8]) {
        match at {
            VcpuInfoAt::Shared(n) => self.write_bytes(n as u64 * VCPU_INFO_SIZE + off, bytes),
            VcpuInfoAt::Guest(gpa) => {
                let _ = mem.write(gpa.wrapping_add(off), bytes);
            }
            VcpuInfoAt::Nowhere => {}
        }
    }

    pub fn vi_read(&self, mem: &GuestMemory, at: VcpuInfoAt, off: u64, buf: &mut [u8]) {
        match at {
            VcpuInfoAt::Shared(n) => {
                let o = ((n as u64 * VCPU_INFO_SIZE + off) & 0xfff) as usize;
                let len = buf.len().min(4096 - o);
                self.page.read(o, &mut buf[..len]);
            }
            VcpuInfoAt::Guest(gpa) => {
                if mem.read(gpa.wrapping_add(off), buf).is_err() {
                    buf.fill(0);
                }
            }
            VcpuInfoAt::Nowhere => buf.fill(0),
        }
    }

    fn vi_test_and_set_bit(&self, mem: &GuestMemory, at: VcpuInfoAt, off: u64, bit: u32) -> bool {
        let o = off + (bit / 8) as u64;
        let b = self.vi_read_u8(mem, at, o);
        self.vi_write(mem, at, o, &[b | (1 << (bit % 8))]);
        b & (1 << (bit % 8)) != 0
    }

    pub fn upcall_pending(&self, mem: &GuestMemory, at: VcpuInfoAt) -> bool {
        self.vi_read_u8(mem, at, vcpu_info::UPCALL_PENDING) != 0
    }

    /// Set selector bit `word` in the vCPU's evtchn_pending_sel; returns
    /// whether it was already set.
    pub fn test_and_set_sel(&self, mem: &GuestMemory, at: VcpuInfoAt, word: u32) -> bool {
        if at == VcpuInfoAt::Nowhere {
            return true; // nothing to deliver to
        }
        self.vi_test_and_set_bit(mem, at, self.pending_sel_offset(), word)
    }

    /// Set evtchn_upcall_pending; returns whether it was already set.
    pub fn test_and_set_upcall_pending(&self, mem: &GuestMemory, at: VcpuInfoAt) -> bool {
        if at == VcpuInfoAt::Nowhere {
            return true;
        }
        let was = self.vi_read_u8(mem, at, vcpu_info::UPCALL_PENDING);
        self.vi_write(mem, at, vcpu_info::UPCALL_PENDING, &[1]);
        was != 0
    }

    /// Set every selector bit (after a vcpu_info move, as Xen does).
    pub fn set_all_sel(&self, mem: &GuestMemory, at: VcpuInfoAt) {
        if self.compat {
            self.vi_write(mem, at, vcpu_info::PENDING_SEL_32, &[0xff; 4]);
        } else {
            self.vi_write(mem, at, vcpu_info::PENDING_SEL_64, &[0xff; 8]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_arrays_follow_the_layout_of_each_width() {
        let mut s = SharedInfo::new();
        assert!(!s.test_and_set_pending(65));
        assert!(s.test_and_set_pending(65));
        // Bit 65 = bit 1 of the second u64 word at 2048 + 8.
        let mut b = [0u8; 8];
        s.page().read(2048 + 8, &mut b);
        assert_eq!(u64::from_le_bytes(b), 2);
        s.set_mask(3);
        assert_eq!(s.read_u8(2560), 8);
        s.set_compat(true);
        s.set_mask(33);
        // Compat: mask array at 2176, bit 33 = bit 1 of the second u32.
        assert_eq!(s.read_u32(2176 + 4), 2);
        assert_eq!((s.word_bits(), s.wc_offset()), (32, 2304));
    }

    #[test]
    fn vcpu_info_selector_lives_at_8_or_4() {
        let mem = GuestMemory::new(2).unwrap();
        let mut s = SharedInfo::new();
        let at = VcpuInfoAt::Guest(0x5000);
        assert!(!s.test_and_set_sel(&mem, at, 9));
        assert_eq!(mem.read_u64(0x5008).unwrap(), 1 << 9);
        s.set_compat(true);
        assert!(!s.test_and_set_sel(&mem, VcpuInfoAt::Shared(1), 31));
        assert_eq!(s.read_u32(64 + 4), 1 << 31);
        assert!(!s.test_and_set_upcall_pending(&mem, VcpuInfoAt::Shared(1)));
        assert!(s.test_and_set_upcall_pending(&mem, VcpuInfoAt::Shared(1)));
        assert_eq!(s.read_u8(64), 1);
        assert!(s.test_and_set_upcall_pending(&mem, VcpuInfoAt::Nowhere), "dummy vcpu_info takes nothing");
    }
}
