//! KVM's dirty log folded into sim-core's dirty bitmap. RAM slots carry
//! KVM_MEM_LOG_DIRTY_PAGES, so KVM notes every page the guest writes;
//! KVM_GET_DIRTY_LOG hands a slot's bitmap over and starts it again. The
//! machine asks at its sync points (snapshots, state digests) through
//! `Vcpu::sync_dirty`, and before a slot is deleted (an overlay mapped over
//! RAM splits it) its log is taken first, so no write is lost.

use sim_core::memory::{GuestMemory, PAGE_SIZE};

/// The guest-physical addresses of the pages set in `bitmap`, as
/// KVM_GET_DIRTY_LOG returns it for a slot at `gpa` of `len` bytes: bit `b`
/// of word `w` is page `64 * w + b` of the slot. Bits past the slot's end
/// are ignored.
pub fn dirty_pages(gpa: u64, len: u64, bitmap: &[u64]) -> impl Iterator<Item = u64> + '_ {
    let pages = len / PAGE_SIZE;
    bitmap.iter().enumerate().flat_map(move |(w, &word)| {
        (0..64u64).filter(move |b| word >> b & 1 == 1).filter_map(move |b| {
            let page = (w as u64).checked_mul(64)?.checked_add(b)?;
            (page < pages).then(|| gpa.saturating_add(page * PAGE_SIZE))
        })
    })
}

/// Mark the pages of one slot's bitmap dirty in `mem`.
pub fn fold(mem: &GuestMemory, gpa: u64, len: u64, bitmap: &[u64]) {
    for page in dirty_pages(gpa, len, bitmap) {
        mem.mark_dirty(page);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_name_pages_from_the_slot_start() {
        // Pages 0, 3 and 64 + 1 of a slot at 1 MiB; bit 63 of word 1 is page
        // 127, past a 100-page slot.
        let bitmap = [0b1001, (1 << 1) | (1 << 63)];
        let got: Vec<u64> = dirty_pages(0x10_0000, 100 * PAGE_SIZE, &bitmap).collect();
        assert_eq!(got, vec![0x10_0000, 0x10_3000, 0x10_0000 + 65 * 0x1000]);
    }

    #[test]
    fn folded_pages_are_dirty_in_guest_memory() {
        let mut mem = GuestMemory::new(2).unwrap();
        mem.take_dirty();
        fold(&mem, 0x1000, 0x10_0000, &[0b110]);
        assert_eq!(mem.dirty_frames(), vec![2, 3]);
        assert_eq!(mem.take_dirty(), vec![2, 3]);
    }
}
