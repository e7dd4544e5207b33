//! FpuState <-> the XSAVE image KVM_GET/SET_XSAVE exchange (the standard,
//! non-compacted layout, Intel SDM vol. 1, 13.4). KVM_GET_FPU does not
//! carry MXCSR on every host, so x87 and SSE state travel through XSAVE.
//! Pure functions over the byte image, unit-tested without /dev/kvm.

use kvm_bindings::kvm_xsave;
use sim_core::state::FpuState;

/// XSTATE_BV bits for the components ArchState models.
pub const XSTATE_X87: u64 = 1 << 0;
pub const XSTATE_SSE: u64 = 1 << 1;

/// Byte offsets in the legacy (FXSAVE) region and the XSAVE header.
mod off {
    pub const FCW: usize = 0;
    pub const FSW: usize = 2;
    pub const FTW: usize = 4;
    pub const FOP: usize = 6;
    pub const FIP: usize = 8;
    pub const FDP: usize = 16;
    pub const MXCSR: usize = 24;
    pub const ST0: usize = 32;
    pub const XMM0: usize = 160;
    pub const XSTATE_BV: usize = 512;
    /// XSTATE_BV, XCOMP_BV and the reserved rest of the 64-byte header.
    pub const HEADER_END: usize = 576;
}

/// The x87 init state XRSTOR loads when XSTATE_BV[0] is clear (SDM vol. 1,
/// 13.6): FCW 037FH, everything else zero (abridged FTW 0 = all empty).
const X87_INIT: FpuState =
    FpuState { fcw: 0x037f, fsw: 0, ftw: 0, fop: 0, fip: 0, fdp: 0, st: [[0; 16]; 8], xmm: [0; 16], mxcsr: 0x1f80 };

/// The image as bytes (the region is 1024 u32s in memory order).
fn bytes(x: &kvm_xsave) -> Vec<u8> {
    x.region.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn store(x: &mut kvm_xsave, b: &[u8]) {
    for (w, c) in x.region.iter_mut().zip(b.chunks_exact(4)) {
        *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

fn get<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut v = [0u8; N];
    if let Some(s) = b.get(at..at + N) {
        v.copy_from_slice(s);
    }
    v
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    if let Some(d) = b.get_mut(at..at + v.len()) {
        d.copy_from_slice(v);
    }
}

/// x87 and SSE state from an XSAVE image. The FXSAVE register area is in
/// stack order (ST0..ST7); FpuState keeps physical order: ST(i) is
/// R((TOP + i) mod 8). Components whose XSTATE_BV bit is clear are in
/// their init state; MXCSR is meaningful in either case (XRSTOR loads it
/// whenever SSE is requested, SDM 13.8.1).
pub fn fpu_from_xsave(x: &kvm_xsave) -> FpuState {
    let b = bytes(x);
    let bv = u64::from_le_bytes(get(&b, off::XSTATE_BV));
    let mut f = X87_INIT;
    if bv & XSTATE_X87 != 0 {
        f.fcw = u16::from_le_bytes(get(&b, off::FCW));
        f.fsw = u16::from_le_bytes(get(&b, off::FSW));
        f.ftw = b[off::FTW];
        f.fop = u16::from_le_bytes(get(&b, off::FOP));
        f.fip = u64::from_le_bytes(get(&b, off::FIP));
        f.fdp = u64::from_le_bytes(get(&b, off::FDP));
        let top = usize::from((f.fsw >> 11) & 7);
        for i in 0..8 {
            let mut r: [u8; 16] = get(&b, off::ST0 + 16 * i);
            r[10..].fill(0);
            f.st[(top + i) & 7] = r;
        }
    }
    if bv & XSTATE_SSE != 0 {
        for (i, x) in f.xmm.iter_mut().enumerate() {
            *x = u128::from_le_bytes(get(&b, off::XMM0 + 16 * i));
        }
    }
    f.mxcsr = u32::from_le_bytes(get(&b, off::MXCSR));
    f
}

/// Write `f` into `x` (an image read from KVM, so MXCSR_MASK and the
/// buffer's size stay KVM's). XSTATE_BV becomes exactly x87|SSE: the
/// components ArchState does not model (AVX and later) are put in their
/// init state, so a restored snapshot never inherits stale upper state.
pub fn fpu_into_xsave(f: &FpuState, x: &mut kvm_xsave) {
    let mut b = bytes(x);
    put(&mut b, off::FCW, &f.fcw.to_le_bytes());
    put(&mut b, off::FSW, &f.fsw.to_le_bytes());
    put(&mut b, off::FTW, &[f.ftw, 0]);
    put(&mut b, off::FOP, &f.fop.to_le_bytes());
    put(&mut b, off::FIP, &f.fip.to_le_bytes());
    put(&mut b, off::FDP, &f.fdp.to_le_bytes());
    put(&mut b, off::MXCSR, &f.mxcsr.to_le_bytes());
    let top = usize::from((f.fsw >> 11) & 7);
    for i in 0..8 {
        let mut r = f.st[(top + i) & 7];
        r[10..].fill(0);
        put(&mut b, off::ST0 + 16 * i, &r);
    }
    for (i, v) in f.xmm.iter().enumerate() {
        put(&mut b, off::XMM0 + 16 * i, &v.to_le_bytes());
    }
    if let Some(h) = b.get_mut(off::XSTATE_BV..off::HEADER_END) {
        h.fill(0);
    }
    put(&mut b, off::XSTATE_BV, &(XSTATE_X87 | XSTATE_SSE).to_le_bytes());
    store(x, &b);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FpuState {
        let mut f = FpuState { fcw: 0x027f, fsw: 5 << 11 | 0x41, ftw: 0xe0, fop: 0x1d9, ..Default::default() };
        f.fip = 0x0010_2030;
        f.fdp = 0x0020_4000;
        for (i, r) in f.st.iter_mut().enumerate() {
            r[..10].copy_from_slice(&[i as u8 + 1; 10]);
        }
        f.xmm = core::array::from_fn(|i| 0x0101_0101_0101_0101_0101_0101_0101_0101u128 * (i as u128 + 1));
        f.mxcsr = 0x3f80 | 0x8000; // round down, flush to zero
        f
    }

    #[test]
    fn legacy_area_follows_the_sdm_layout() {
        let f = sample();
        let mut x = kvm_xsave::default();
        fpu_into_xsave(&f, &mut x);
        // SDM vol. 1 table 10-2: MXCSR at byte 24, XMM0 at 160, XMM15 at 400;
        // ST0 at 32 is R(TOP) = R5 (filled with 6s); XSTATE_BV at 512.
        assert_eq!(x.region[24 / 4], 0xbf80);
        assert_eq!(x.region[160 / 4], 0x0101_0101);
        assert_eq!(x.region[400 / 4], 0x1010_1010);
        assert_eq!(x.region[32 / 4], 0x0606_0606);
        assert_eq!(x.region[(32 + 16) / 4], 0x0707_0707); // ST1 = R6
        assert_eq!(x.region[0], 0x2841_027f); // FSW (TOP 5, IE, C1):FCW
        assert_eq!(x.region[512 / 4], 3);
        assert_eq!(fpu_from_xsave(&x), f);
    }

    #[test]
    fn absent_components_read_as_init_state() {
        let mut x = kvm_xsave::default();
        fpu_into_xsave(&sample(), &mut x);
        x.region[512 / 4] = 0; // XSTATE_BV = 0: x87 and SSE in init state
        let f = fpu_from_xsave(&x);
        assert_eq!((f.fcw, f.fsw, f.ftw, f.st, f.xmm), (0x037f, 0, 0, [[0; 16]; 8], [0; 16]));
        assert_eq!(f.mxcsr, 0xbf80, "MXCSR is loaded whatever XSTATE_BV says");
    }

    #[test]
    fn upper_components_are_reset() {
        let mut x = kvm_xsave::default();
        x.region[512 / 4] = 0xe7; // AVX-512 state present in the old image
        x.region[520 / 4 + 1] = 0x8000_0000; // and a compacted-format bit
        x.region[576 / 4] = 0xdead; // YMM_Hi128 area
        fpu_into_xsave(&FpuState::default(), &mut x);
        assert_eq!(&x.region[512 / 4..576 / 4], &{
            let mut h = [0u32; 16];
            h[0] = 3;
            h
        });
    }
}
