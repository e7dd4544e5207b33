//! The 512-byte FXSAVE/FXRSTOR image (SDM vol. 1, table 10-2).
//!
//! `long64` selects the 64-bit-mode layout of FXSAVE64 (REX.W): 64-bit FIP
//! and FDP, XMM0-15. Otherwise the 32-bit layout: FIP[31:0], FCS,
//! FDP[31:0], FDS, XMM0-7 only. `FpuState` has no FCS/FDS fields, so the
//! 32-bit layout stores FIP bits 47:32 as FCS and FDP bits 47:32 as FDS,
//! and FXRSTOR puts them back there: a 32-bit save/restore round-trips.

use super::fp::mxcsr;
use sim_core::state::FpuState;

/// Bytes of the image the processor writes: 464 in 64-bit mode (bytes
/// 464..512 are for software), 288 otherwise (the XMM8-15 area is left
/// alone). The engine should store only `image[..fxsave_len(long64)]`.
pub fn fxsave_len(long64: bool) -> usize {
    if long64 {
        464
    } else {
        288
    }
}

fn put(img: &mut [u8; 512], at: usize, bytes: &[u8]) {
    img[at..at + bytes.len()].copy_from_slice(bytes);
}

fn get<const N: usize>(img: &[u8; 512], at: usize) -> [u8; N] {
    let mut b = [0u8; N];
    b.copy_from_slice(&img[at..at + N]);
    b
}

pub fn fxsave(fpu: &FpuState, long64: bool) -> [u8; 512] {
    let mut img = [0u8; 512];
    put(&mut img, 0, &fpu.fcw.to_le_bytes());
    put(&mut img, 2, &fpu.fsw.to_le_bytes());
    img[4] = fpu.ftw;
    put(&mut img, 6, &fpu.fop.to_le_bytes());
    if long64 {
        put(&mut img, 8, &fpu.fip.to_le_bytes());
        put(&mut img, 16, &fpu.fdp.to_le_bytes());
    } else {
        put(&mut img, 8, &(fpu.fip as u32).to_le_bytes());
        put(&mut img, 12, &((fpu.fip >> 32) as u16).to_le_bytes());
        put(&mut img, 16, &(fpu.fdp as u32).to_le_bytes());
        put(&mut img, 20, &((fpu.fdp >> 32) as u16).to_le_bytes());
    }
    put(&mut img, 24, &fpu.mxcsr.to_le_bytes());
    put(&mut img, 28, &mxcsr::MASK.to_le_bytes());
    for (i, st) in fpu.st.iter().enumerate() {
        put(&mut img, 32 + 16 * i, &st[..10]);
    }
    let nxmm = if long64 { 16 } else { 8 };
    for (i, x) in fpu.xmm.iter().take(nxmm).enumerate() {
        put(&mut img, 160 + 16 * i, &x.to_le_bytes());
    }
    img
}

/// Load an image; Err when MXCSR has reserved bits set (#GP). In the 32-bit
/// layout XMM8-15 are not part of the image and come back as 0: the caller
/// keeps its own values for them.
// The engine's contract: Err(()) means #GP, nothing more to say.
#[allow(clippy::result_unit_err)]
pub fn fxrstor(img: &[u8; 512], long64: bool) -> Result<FpuState, ()> {
    let mxcsr = u32::from_le_bytes(get(img, 24));
    if mxcsr & !mxcsr::MASK != 0 {
        return Err(());
    }
    let (fip, fdp) = if long64 {
        (u64::from_le_bytes(get(img, 8)), u64::from_le_bytes(get(img, 16)))
    } else {
        let fip = u32::from_le_bytes(get(img, 8)) as u64 | (u16::from_le_bytes(get(img, 12)) as u64) << 32;
        let fdp = u32::from_le_bytes(get(img, 16)) as u64 | (u16::from_le_bytes(get(img, 20)) as u64) << 32;
        (fip, fdp)
    };
    let mut st = [[0u8; 16]; 8];
    for (i, r) in st.iter_mut().enumerate() {
        r[..10].copy_from_slice(&img[32 + 16 * i..42 + 16 * i]);
    }
    let mut xmm = [0u128; 16];
    let nxmm = if long64 { 16 } else { 8 };
    for (i, x) in xmm.iter_mut().take(nxmm).enumerate() {
        *x = u128::from_le_bytes(get(img, 160 + 16 * i));
    }
    Ok(FpuState {
        fcw: u16::from_le_bytes(get(img, 0)),
        fsw: u16::from_le_bytes(get(img, 2)),
        ftw: img[4],
        fop: u16::from_le_bytes(get(img, 6)),
        fip,
        fdp,
        st,
        xmm,
        mxcsr,
    })
}
