//! The primary PV console backend (what xenconsoled does for console 0), on the ring of
//! io/console.h's `xencons_interface`: `in` (to the guest, 1 KiB), `out` (from the guest,
//! 2 KiB) and their free-running indices. Output goes to the simulator's console; input
//! comes from the machine's console-input queue. The caller signals the guest when
//! [`service`] reports a change.

use std::collections::VecDeque;

use sim_core::OverlayPage;

/// Byte offsets in the ring page.
pub mod off {
    pub const IN: usize = 0;
    pub const OUT: usize = 1024;
    pub const IN_CONS: usize = 3072;
    pub const IN_PROD: usize = 3076;
    pub const OUT_CONS: usize = 3080;
    pub const OUT_PROD: usize = 3084;
}

pub const IN_SIZE: u32 = 1024;
pub const OUT_SIZE: u32 = 2048;

/// Moves the guest's output to `output` and as much of `input` as fits into the guest's
/// input queue. Returns true if an index moved (the guest must be signalled).
///
/// Indices more than a queue apart are the guest's inconsistency: like xenconsoled, the
/// backend then moves nothing in that direction rather than trusting them.
pub fn service(page: &OverlayPage, output: &mut Vec<u8>, input: &mut VecDeque<u8>) -> bool {
    let mut changed = false;

    let (cons, prod) = (page.read_u32(off::OUT_CONS), page.read_u32(off::OUT_PROD));
    let n = prod.wrapping_sub(cons);
    if n != 0 && n <= OUT_SIZE {
        let start = (cons % OUT_SIZE) as usize;
        let first = (n as usize).min(OUT_SIZE as usize - start);
        let mut buf = vec![0u8; n as usize];
        let (a, b) = buf.split_at_mut(first);
        page.read(off::OUT + start, a);
        page.read(off::OUT, b);
        output.extend_from_slice(&buf);
        page.write_u32(off::OUT_CONS, prod);
        changed = true;
    }

    let (cons, mut prod) = (page.read_u32(off::IN_CONS), page.read_u32(off::IN_PROD));
    let used = prod.wrapping_sub(cons);
    if !input.is_empty() && used < IN_SIZE {
        let n = (IN_SIZE - used).min(u32::try_from(input.len()).unwrap_or(u32::MAX));
        for b in input.drain(..n as usize) {
            page.write(off::IN + (prod % IN_SIZE) as usize, &[b]);
            prod = prod.wrapping_add(1);
        }
        page.write_u32(off::IN_PROD, prod);
        changed = true;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guest's side of hvc_xen's write: bytes at out[prod % 2048], then out_prod.
    fn guest_write(p: &OverlayPage, s: &[u8]) {
        let mut prod = p.read_u32(3084);
        for &b in s {
            p.write(1024 + (prod % 2048) as usize, &[b]);
            prod = prod.wrapping_add(1);
        }
        p.write_u32(3084, prod);
    }

    fn guest_read(p: &OverlayPage) -> Vec<u8> {
        let (mut cons, prod) = (p.read_u32(3072), p.read_u32(3076));
        let mut v = Vec::new();
        while cons != prod {
            let mut b = [0u8];
            p.read((cons % 1024) as usize, &mut b);
            v.push(b[0]);
            cons = cons.wrapping_add(1);
        }
        p.write_u32(3072, cons);
        v
    }

    #[test]
    fn output_wraps_and_reaches_the_console() {
        let p = OverlayPage::new();
        p.write_u32(3080, u32::MAX - 3);
        p.write_u32(3084, u32::MAX - 3);
        let (mut out, mut inp) = (Vec::new(), VecDeque::new());
        guest_write(&p, b"hello, hvc0\n");
        assert!(service(&p, &mut out, &mut inp));
        assert_eq!(out, b"hello, hvc0\n");
        assert_eq!(p.read_u32(3080), p.read_u32(3084));
        assert!(!service(&p, &mut out, &mut inp), "nothing new");
        // A full 2048-byte queue across the end of the buffer.
        let big: Vec<u8> = (0..2048u32).map(|i| (i % 251) as u8).collect();
        out.clear();
        guest_write(&p, &big);
        service(&p, &mut out, &mut inp);
        assert_eq!(out, big);
    }

    #[test]
    fn input_fills_the_in_queue_only_as_far_as_it_has_room() {
        let p = OverlayPage::new();
        let (mut out, mut inp) = (Vec::new(), VecDeque::new());
        inp.extend((0..1500u32).map(|i| (i % 200) as u8));
        assert!(service(&p, &mut out, &mut inp));
        assert_eq!(inp.len(), 1500 - 1024, "the rest waits");
        assert!(!service(&p, &mut out, &mut inp), "queue full: nothing moves");
        let got = guest_read(&p);
        assert_eq!(got.len(), 1024);
        assert!(service(&p, &mut out, &mut inp));
        let got2 = guest_read(&p);
        let all: Vec<u8> = got.into_iter().chain(got2).collect();
        assert_eq!(all, (0..1500u32).map(|i| (i % 200) as u8).collect::<Vec<_>>());
        assert!(out.is_empty());
    }

    #[test]
    fn inconsistent_indices_move_nothing() {
        let p = OverlayPage::new();
        p.write_u32(3084, 4000); // out_prod - out_cons > 2048
        p.write_u32(3076, 2000); // in_prod - in_cons > 1024
        let (mut out, mut inp) = (Vec::new(), VecDeque::from(vec![b'x']));
        assert!(!service(&p, &mut out, &mut inp));
        assert!(out.is_empty());
        assert_eq!(inp.len(), 1);
    }
}
