//! Packed-integer SSE2 ops against a lane-by-lane reference built on Rust's
//! native fixed-width integer types (wrapping_/saturating_ methods).

use iced_x86::Code as C;
use proptest::prelude::*;
use x86_interp::sse;

fn b8(v: u128) -> [u8; 16] {
    v.to_le_bytes()
}
fn w16(v: u128) -> [u16; 8] {
    let b = v.to_le_bytes();
    core::array::from_fn(|i| u16::from_le_bytes([b[2 * i], b[2 * i + 1]]))
}
fn d32(v: u128) -> [u32; 4] {
    let b = v.to_le_bytes();
    core::array::from_fn(|i| u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()))
}
fn q64(v: u128) -> [u64; 2] {
    [v as u64, (v >> 64) as u64]
}
fn from8(a: [u8; 16]) -> u128 {
    u128::from_le_bytes(a)
}
fn from16(a: [u16; 8]) -> u128 {
    a.iter().rev().fold(0, |acc, &x| acc << 16 | x as u128)
}
fn from32(a: [u32; 4]) -> u128 {
    a.iter().rev().fold(0, |acc, &x| acc << 32 | x as u128)
}
fn from64(a: [u64; 2]) -> u128 {
    a[0] as u128 | (a[1] as u128) << 64
}

macro_rules! lanes {
    ($split:ident, $join:ident, $a:expr, $b:expr, |$x:ident, $y:ident| $e:expr) => {{
        let (xa, ya) = ($split($a), $split($b));
        $join(core::array::from_fn(|i| {
            let ($x, $y) = (xa[i], ya[i]);
            $e
        }))
    }};
}

fn reference(code: C, a: u128, b: u128) -> u128 {
    match code {
        C::Paddb_xmm_xmmm128 => lanes!(b8, from8, a, b, |x, y| x.wrapping_add(y)),
        C::Paddw_xmm_xmmm128 => lanes!(w16, from16, a, b, |x, y| x.wrapping_add(y)),
        C::Paddd_xmm_xmmm128 => lanes!(d32, from32, a, b, |x, y| x.wrapping_add(y)),
        C::Paddq_xmm_xmmm128 => lanes!(q64, from64, a, b, |x, y| x.wrapping_add(y)),
        C::Psubb_xmm_xmmm128 => lanes!(b8, from8, a, b, |x, y| x.wrapping_sub(y)),
        C::Psubw_xmm_xmmm128 => lanes!(w16, from16, a, b, |x, y| x.wrapping_sub(y)),
        C::Psubd_xmm_xmmm128 => lanes!(d32, from32, a, b, |x, y| x.wrapping_sub(y)),
        C::Psubq_xmm_xmmm128 => lanes!(q64, from64, a, b, |x, y| x.wrapping_sub(y)),
        C::Paddsb_xmm_xmmm128 => lanes!(b8, from8, a, b, |x, y| (x as i8).saturating_add(y as i8) as u8),
        C::Paddsw_xmm_xmmm128 => lanes!(w16, from16, a, b, |x, y| (x as i16).saturating_add(y as i16) as u16),
        C::Psubsb_xmm_xmmm128 => lanes!(b8, from8, a, b, |x, y| (x as i8).saturating_sub(y as i8) as u8),
        C::Psubsw_xmm_xmmm128 => lanes!(w16, from16, a, b, |x, y| (x as i16).saturating_sub(y as i16) as u16),
        C::Paddusb_xmm_xmmm128 => lanes!(b8, from8, a, b, |x, y| x.saturating_add(y)),
        C::Paddusw_xmm_xmmm128 => lanes!(w16, from16, a, b, |x, y| x.saturating_add(y)),
        C::Psubusb_xmm_xmmm128 => lanes!(b8, from8, a, b, |x, y| x.saturating_sub(y)),
        C::Psubusw_xmm_xmmm128 => lanes!(w16, from16, a, b, |x, y| x.saturating_sub(y)),
        C::Pmullw_xmm_xmmm128 => lanes!(w16, from16, a, b, |x, y| (x as i16).wrapping_mul(y as i16) as u16),
        C::Pmulhw_xmm_xmmm128 => lanes!(w16, from16, a, b, |x, y| ((x as i16 as i32 * y as i16 as i32) >> 16) as u16),
        C::Pmulhuw_xmm_xmmm128 => lanes!(w16, from16, a, b, |x, y| ((x as u32 * y as u32) >> 16) as u16),
        C::Pmuludq_xmm_xmmm128 => lanes!(q64, from64, a, b, |x, y| (x as u32 as u64) * (y as u32 as u64)),
        C::Pcmpeqb_xmm_xmmm128 => lanes!(b8, from8, a, b, |x, y| if x == y { 0xff } else { 0 }),
        C::Pcmpeqw_xmm_xmmm128 => lanes!(w16, from16, a, b, |x, y| if x == y { 0xffff } else { 0 }),
        C::Pcmpeqd_xmm_xmmm128 => lanes!(d32, from32, a, b, |x, y| if x == y { u32::MAX } else { 0 }),
        C::Pcmpgtb_xmm_xmmm128 => lanes!(b8, from8, a, b, |x, y| if x as i8 > y as i8 { 0xff } else { 0 }),
        C::Pcmpgtw_xmm_xmmm128 => lanes!(w16, from16, a, b, |x, y| if x as i16 > y as i16 { 0xffff } else { 0 }),
        C::Pcmpgtd_xmm_xmmm128 => lanes!(d32, from32, a, b, |x, y| if x as i32 > y as i32 { u32::MAX } else { 0 }),
        C::Pminub_xmm_xmmm128 => lanes!(b8, from8, a, b, |x, y| x.min(y)),
        C::Pmaxub_xmm_xmmm128 => lanes!(b8, from8, a, b, |x, y| x.max(y)),
        C::Pminsw_xmm_xmmm128 => lanes!(w16, from16, a, b, |x, y| (x as i16).min(y as i16) as u16),
        C::Pmaxsw_xmm_xmmm128 => lanes!(w16, from16, a, b, |x, y| (x as i16).max(y as i16) as u16),
        C::Pavgb_xmm_xmmm128 => lanes!(b8, from8, a, b, |x, y| (x as u16 + y as u16).div_ceil(2) as u8),
        C::Pavgw_xmm_xmmm128 => lanes!(w16, from16, a, b, |x, y| (x as u32 + y as u32).div_ceil(2) as u16),
        C::Pand_xmm_xmmm128 => a & b,
        C::Pandn_xmm_xmmm128 => !a & b,
        C::Por_xmm_xmmm128 => a | b,
        C::Pxor_xmm_xmmm128 => a ^ b,
        C::Pmaddwd_xmm_xmmm128 => {
            let (x, y) = (w16(a), w16(b));
            from32(core::array::from_fn(|i| {
                let p = |k: usize| x[k] as i16 as i32 as i64 * y[k] as i16 as i32 as i64;
                (p(2 * i) + p(2 * i + 1)) as u32
            }))
        }
        C::Psadbw_xmm_xmmm128 => {
            let (x, y) = (b8(a), b8(b));
            let half =
                |h: usize| (0..8).map(|j| (x[8 * h + j] as i32 - y[8 * h + j] as i32).unsigned_abs() as u64).sum();
            from64([half(0), half(1)])
        }
        C::Punpcklbw_xmm_xmmm128 => {
            let (x, y) = (b8(a), b8(b));
            from8(core::array::from_fn(|i| if i % 2 == 0 { x[i / 2] } else { y[i / 2] }))
        }
        C::Punpckhwd_xmm_xmmm128 => {
            let (x, y) = (w16(a), w16(b));
            from16(core::array::from_fn(|i| if i % 2 == 0 { x[4 + i / 2] } else { y[4 + i / 2] }))
        }
        C::Punpckldq_xmm_xmmm128 => {
            let (x, y) = (d32(a), d32(b));
            from32([x[0], y[0], x[1], y[1]])
        }
        C::Packsswb_xmm_xmmm128 => {
            let (x, y) = (w16(a), w16(b));
            let sat = |v: u16| (v as i16).clamp(i8::MIN as i16, i8::MAX as i16) as i8 as u8;
            from8(core::array::from_fn(|i| if i < 8 { sat(x[i]) } else { sat(y[i - 8]) }))
        }
        C::Packuswb_xmm_xmmm128 => {
            let (x, y) = (w16(a), w16(b));
            let sat = |v: u16| (v as i16).clamp(0, 255) as u8;
            from8(core::array::from_fn(|i| if i < 8 { sat(x[i]) } else { sat(y[i - 8]) }))
        }
        C::Packssdw_xmm_xmmm128 => {
            let (x, y) = (d32(a), d32(b));
            let sat = |v: u32| (v as i32).clamp(i16::MIN as i32, i16::MAX as i32) as i16 as u16;
            from16(core::array::from_fn(|i| if i < 4 { sat(x[i]) } else { sat(y[i - 4]) }))
        }
        _ => unreachable!("no reference for {code:?}"),
    }
}

const CODES: &[C] = &[
    C::Paddb_xmm_xmmm128,
    C::Paddw_xmm_xmmm128,
    C::Paddd_xmm_xmmm128,
    C::Paddq_xmm_xmmm128,
    C::Psubb_xmm_xmmm128,
    C::Psubw_xmm_xmmm128,
    C::Psubd_xmm_xmmm128,
    C::Psubq_xmm_xmmm128,
    C::Paddsb_xmm_xmmm128,
    C::Paddsw_xmm_xmmm128,
    C::Psubsb_xmm_xmmm128,
    C::Psubsw_xmm_xmmm128,
    C::Paddusb_xmm_xmmm128,
    C::Paddusw_xmm_xmmm128,
    C::Psubusb_xmm_xmmm128,
    C::Psubusw_xmm_xmmm128,
    C::Pmullw_xmm_xmmm128,
    C::Pmulhw_xmm_xmmm128,
    C::Pmulhuw_xmm_xmmm128,
    C::Pmuludq_xmm_xmmm128,
    C::Pcmpeqb_xmm_xmmm128,
    C::Pcmpeqw_xmm_xmmm128,
    C::Pcmpeqd_xmm_xmmm128,
    C::Pcmpgtb_xmm_xmmm128,
    C::Pcmpgtw_xmm_xmmm128,
    C::Pcmpgtd_xmm_xmmm128,
    C::Pminub_xmm_xmmm128,
    C::Pmaxub_xmm_xmmm128,
    C::Pminsw_xmm_xmmm128,
    C::Pmaxsw_xmm_xmmm128,
    C::Pavgb_xmm_xmmm128,
    C::Pavgw_xmm_xmmm128,
    C::Pand_xmm_xmmm128,
    C::Pandn_xmm_xmmm128,
    C::Por_xmm_xmmm128,
    C::Pxor_xmm_xmmm128,
    C::Pmaddwd_xmm_xmmm128,
    C::Psadbw_xmm_xmmm128,
    C::Punpcklbw_xmm_xmmm128,
    C::Punpckhwd_xmm_xmmm128,
    C::Punpckldq_xmm_xmmm128,
    C::Packsswb_xmm_xmmm128,
    C::Packuswb_xmm_xmmm128,
    C::Packssdw_xmm_xmmm128,
];

/// 128-bit values biased toward lane edge cases (0, -1, sign boundaries).
fn v128() -> impl Strategy<Value = u128> {
    let edge = prop_oneof![Just(0u8), Just(0xff), Just(0x80), Just(0x7f), Just(1), any::<u8>()];
    prop_oneof![any::<u128>(), proptest::array::uniform16(edge).prop_map(u128::from_le_bytes),]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn packed_integer_ops_match_reference(a in v128(), b in v128(), i in 0..CODES.len()) {
        let code = CODES[i];
        let mut m = 0x1f80;
        let got = sse::exec(code, a, b, 0, &mut m);
        prop_assert_eq!(got, Ok(reference(code, a, b)), "{:?}", code);
        prop_assert_eq!(m, 0x1f80); // integer ops never touch MXCSR
    }

    #[test]
    fn shifts_match_reference(a in v128(), count in prop_oneof![0u64..70, any::<u64>()]) {
        let mut m = 0x1f80;
        let mut ex = |c, imm: u8| sse::exec(c, a, count as u128, imm, &mut m).unwrap();
        let w = w16(a);
        let sh16 = |f: &dyn Fn(u16) -> u16| from16(core::array::from_fn(|i| f(w[i])));
        let want = sh16(&|x| if count < 16 { x << count } else { 0 });
        prop_assert_eq!(ex(C::Psllw_xmm_xmmm128, 0), want);
        let want = sh16(&|x| ((x as i16) >> count.min(15)) as u16);
        prop_assert_eq!(ex(C::Psraw_xmm_xmmm128, 0), want);
        let dw = d32(a);
        let want = from32(core::array::from_fn(|i| if count < 32 { dw[i] >> count } else { 0 }));
        prop_assert_eq!(ex(C::Psrld_xmm_xmmm128, 0), want);
        let qw = q64(a);
        let want = from64(core::array::from_fn(|i| if count < 64 { qw[i] << count } else { 0 }));
        prop_assert_eq!(ex(C::Psllq_xmm_xmmm128, 0), want);
        // Immediate forms use the imm8 as the count.
        let imm = count as u8;
        let want = from32(core::array::from_fn(|i| ((dw[i] as i32) >> imm.min(31)) as u32));
        prop_assert_eq!(ex(C::Psrad_xmm_imm8, imm), want);
        // Byte shifts.
        let bytes = b8(a);
        let want = from8(core::array::from_fn(|i| if (imm as usize) < 16 && i >= imm as usize { bytes[i - imm as usize] } else { 0 }));
        prop_assert_eq!(ex(C::Pslldq_xmm_imm8, imm), want);
    }

    #[test]
    fn pshufd_matches_reference(a in any::<u128>(), imm in any::<u8>()) {
        let mut m = 0x1f80;
        let src = d32(a);
        let want = from32(core::array::from_fn(|i| src[((imm >> (2 * i)) & 3) as usize]));
        prop_assert_eq!(sse::exec(C::Pshufd_xmm_xmmm128_imm8, 0, a, imm, &mut m), Ok(want));
    }
}

fn finite_f64() -> impl Strategy<Value = f64> {
    prop_oneof![any::<f64>().prop_filter("finite", |x| x.is_finite()), -4.0f64..4.0, Just(0.0), Just(1e-310)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Round-to-nearest results equal Rust's native IEEE arithmetic; the
    /// directed modes bracket it: down <= nearest <= up, at most one ulp
    /// apart, and all equal exactly when PE is not raised.
    #[test]
    fn fp_arith_matches_native_and_brackets(x in finite_f64(), y in finite_f64(), op in 0usize..4) {
        let (code, native) = [
            (C::Addsd_xmm_xmmm64, x + y),
            (C::Subsd_xmm_xmmm64, x - y),
            (C::Mulsd_xmm_xmmm64, x * y),
            (C::Divsd_xmm_xmmm64, x / y),
        ][op];
        prop_assume!(!native.is_nan());
        let run = |rc: u32| {
            let mut m = 0x1f80 | rc << 13;
            let r = sse::exec(code, x.to_bits() as u128, y.to_bits() as u128, 0, &mut m).unwrap();
            (f64::from_bits(r as u64), m & 0x3f)
        };
        let (rn, fl) = run(0);
        prop_assert_eq!(rn.to_bits(), native.to_bits());
        let (down, _) = run(1);
        let (up, _) = run(2);
        let (zero, _) = run(3);
        prop_assert!(down <= rn && rn <= up, "{} {} {}", down, rn, up);
        if fl & 0x20 == 0 && rn.is_finite() && native.is_finite() && fl & 0x10 == 0 {
            prop_assert_eq!((down.to_bits(), up.to_bits()), (rn.to_bits(), rn.to_bits()));
        } else if rn.is_finite() && down.is_finite() && up.is_finite() && up != down {
            prop_assert!(up == down.next_up(), "{} {}", down, up);
        }
        // Toward zero is down for positive results and up for negative ones.
        let toward_zero = if rn > 0.0 || (rn == 0.0 && rn.is_sign_positive()) { down } else { up };
        if toward_zero.is_finite() && rn != 0.0 {
            prop_assert_eq!(zero.to_bits(), toward_zero.to_bits());
        }
    }

    /// Single-precision arithmetic equals native f32 arithmetic under RN.
    #[test]
    fn fp32_arith_matches_native(x in any::<f32>(), y in any::<f32>(), op in 0usize..4) {
        let (code, native) = [
            (C::Addss_xmm_xmmm32, x + y),
            (C::Subss_xmm_xmmm32, x - y),
            (C::Mulss_xmm_xmmm32, x * y),
            (C::Divss_xmm_xmmm32, x / y),
        ][op];
        prop_assume!(!native.is_nan());
        let mut m = 0x1f80;
        let r = sse::exec(code, x.to_bits() as u128, y.to_bits() as u128, 0, &mut m).unwrap();
        prop_assert_eq!(r as u32, native.to_bits());
    }
}
