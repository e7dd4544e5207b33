//! Table-driven SSE/SSE2 checks. Expected values are IEEE-754 bit patterns
//! worked out by hand or taken from the SDM's definitions.

use iced_x86::Code as C;
use x86_interp::sse::{self, mxcsr, SimdError};

const DEFAULT: u32 = 0x1f80; // all masked, round to nearest
const FLAGS: u32 = 0x3f;

fn ps(l: [u32; 4]) -> u128 {
    l.iter().enumerate().fold(0, |acc, (i, &x)| acc | (x as u128) << (32 * i))
}
fn pd(lo: u64, hi: u64) -> u128 {
    lo as u128 | (hi as u128) << 64
}
fn f(x: f32) -> u32 {
    x.to_bits()
}
fn d(x: f64) -> u64 {
    x.to_bits()
}

/// Run with `mx` and return (result, raised flags).
fn run(code: C, dst: u128, src: u128, imm: u8, mx: u32) -> (u128, u32) {
    let mut m = mx;
    let r = sse::exec(code, dst, src, imm, &mut m).expect("masked exceptions never fault");
    (r, m & FLAGS)
}

fn rc(mode: u32) -> u32 {
    DEFAULT | mode << mxcsr::RC_SHIFT
}

#[test]
fn packed_and_scalar_arithmetic() {
    // 1.0 = 0x3f800000, 2.0 = 0x40000000, 0.5 = 0x3f000000.
    let a = ps([0x3f80_0000, 0x4000_0000, 0x4040_0000, 0x4080_0000]); // 1 2 3 4
    let b = ps([0x3f00_0000; 4]); // 0.5
    let (r, fl) = run(C::Addps_xmm_xmmm128, a, b, 0, DEFAULT);
    assert_eq!(r, ps([0x3fc0_0000, 0x4020_0000, 0x4060_0000, 0x4090_0000])); // 1.5 2.5 3.5 4.5
    assert_eq!(fl, 0);
    // ADDSS only touches lane 0.
    let (r, _) = run(C::Addss_xmm_xmmm32, a, b, 0, DEFAULT);
    assert_eq!(r, ps([0x3fc0_0000, 0x4000_0000, 0x4040_0000, 0x4080_0000]));
    // MULPD / DIVSD.
    let (r, _) = run(C::Mulpd_xmm_xmmm128, pd(d(3.0), d(-2.0)), pd(d(0.5), d(4.0)), 0, DEFAULT);
    assert_eq!(r, pd(d(1.5), d(-8.0)));
    let (r, fl) = run(C::Divsd_xmm_xmmm64, pd(d(1.0), 0x1234), pd(d(4.0), 0), 0, DEFAULT);
    assert_eq!((r, fl), (pd(d(0.25), 0x1234), 0));
    // 0.1 + 0.2 = 0x3fd3333333333334, inexact.
    let (r, fl) = run(C::Addsd_xmm_xmmm64, pd(d(0.1), 0), pd(d(0.2), 0), 0, DEFAULT);
    assert_eq!((r as u64, fl), (0x3fd3_3333_3333_3334, mxcsr::PE));
    let (r, fl) = run(C::Subss_xmm_xmmm32, f(1.0) as u128, f(3.0) as u128, 0, DEFAULT);
    assert_eq!((r as u32, fl), (f(-2.0), 0));
}

#[test]
fn rounding_control_applies_to_arithmetic() {
    // 1/3 in single precision: 0x3eaaaaab (nearest/up), 0x3eaaaaaa (down/zero).
    let one = f(1.0) as u128;
    let three = f(3.0) as u128;
    for (mode, want) in [(0, 0x3eaa_aaab), (1, 0x3eaa_aaaa), (2, 0x3eaa_aaab), (3, 0x3eaa_aaaa)] {
        let (r, fl) = run(C::Divss_xmm_xmmm32, one, three, 0, rc(mode));
        assert_eq!((r as u32, fl), (want, mxcsr::PE), "RC {mode}");
    }
    // -1/3: down rounds away from zero.
    let (r, _) = run(C::Divss_xmm_xmmm32, f(-1.0) as u128, three, 0, rc(1));
    assert_eq!(r as u32, 0xbeaa_aaab);
    // 1 + 2^-60 in double: nearest/down/zero give 1.0, up gives 1 + 2^-52.
    let tiny = pd(d(2f64.powi(-60)), 0);
    let (r, _) = run(C::Addsd_xmm_xmmm64, pd(d(1.0), 0), tiny, 0, rc(2));
    assert_eq!(r as u64, 0x3ff0_0000_0000_0001);
    let (r, fl) = run(C::Addsd_xmm_xmmm64, pd(d(1.0), 0), tiny, 0, rc(1));
    assert_eq!((r as u64, fl), (0x3ff0_0000_0000_0000, mxcsr::PE));
    // sqrt(2) = 0x3ff6a09e667f3bcd (nearest), inexact.
    let (r, fl) = run(C::Sqrtsd_xmm_xmmm64, 0, pd(d(2.0), 0), 0, DEFAULT);
    assert_eq!((r as u64, fl), (0x3ff6_a09e_667f_3bcd, mxcsr::PE));
    let (r, fl) = run(C::Sqrtps_xmm_xmmm128, 0, ps([f(4.0), f(9.0), f(0.25), 0x8000_0000]), 0, DEFAULT);
    assert_eq!((r, fl), (ps([f(2.0), f(3.0), f(0.5), 0x8000_0000]), 0));
}

#[test]
fn invalid_and_divide_by_zero() {
    // x/0 -> inf with ZE; 0/0 -> real indefinite 0xffc00000 with IE.
    let (r, fl) = run(C::Divss_xmm_xmmm32, f(1.0) as u128, 0, 0, DEFAULT);
    assert_eq!((r as u32, fl), (0x7f80_0000, mxcsr::ZE));
    let (r, fl) = run(C::Divss_xmm_xmmm32, 0, 0, 0, DEFAULT);
    assert_eq!((r as u32, fl), (0xffc0_0000, mxcsr::IE));
    // inf - inf and 0 * inf are invalid.
    let inf = 0x7f80_0000u128;
    assert_eq!(run(C::Subss_xmm_xmmm32, inf, inf, 0, DEFAULT), (0xffc0_0000, mxcsr::IE));
    assert_eq!(run(C::Mulss_xmm_xmmm32, 0, inf, 0, DEFAULT), (0xffc0_0000, mxcsr::IE));
    // inf + 1 is exact, no flags.
    assert_eq!(run(C::Addss_xmm_xmmm32, inf, f(1.0) as u128, 0, DEFAULT), (inf, 0));
    // sqrt(-1): invalid; sqrt(-0) = -0.
    let (r, fl) = run(C::Sqrtsd_xmm_xmmm64, 0, pd(d(-1.0), 0), 0, DEFAULT);
    assert_eq!((r as u64, fl), (0xfff8_0000_0000_0000, mxcsr::IE));
    // Unmasked ZE faults; MXCSR still records the flag.
    let mut m = DEFAULT & !(1 << 9);
    assert_eq!(sse::exec(C::Divsd_xmm_xmmm64, pd(d(1.0), 0), 0, 0, &mut m), Err(SimdError::Exception));
    assert_eq!(m & FLAGS, mxcsr::ZE);
    // Unmasked PE faults on an inexact result only.
    let mut m = DEFAULT & !(1 << 12);
    assert_eq!(sse::exec(C::Addss_xmm_xmmm32, f(1.0) as u128, f(2.0) as u128, 0, &mut m), Ok(f(3.0) as u128));
    assert!(sse::exec(C::Divss_xmm_xmmm32, f(1.0) as u128, f(3.0) as u128, 0, &mut m).is_err());
}

#[test]
fn nan_propagation() {
    let snan = 0x7fa0_0000u128; // quiet bit clear
    let qnan = 0x7fe0_0000u128;
    // SNaN operand: quieted, IE.
    assert_eq!(run(C::Addss_xmm_xmmm32, snan, f(1.0) as u128, 0, DEFAULT), (qnan, mxcsr::IE));
    assert_eq!(run(C::Addss_xmm_xmmm32, f(1.0) as u128, snan, 0, DEFAULT), (qnan, mxcsr::IE));
    // QNaN operand: passed through, no flag.
    assert_eq!(run(C::Mulss_xmm_xmmm32, f(2.0) as u128, 0xffc1_2345, 0, DEFAULT), (0xffc1_2345, 0));
    // Two NaNs: the first source wins.
    assert_eq!(run(C::Addss_xmm_xmmm32, 0x7fc0_0001, 0x7fc0_0002, 0, DEFAULT).0, 0x7fc0_0001);
    // Double precision SNaN.
    let (r, fl) = run(C::Addsd_xmm_xmmm64, pd(0x7ff0_0000_0000_0001, 0), pd(d(1.0), 0), 0, DEFAULT);
    assert_eq!((r as u64, fl), (0x7ff8_0000_0000_0001, mxcsr::IE));
}

#[test]
fn overflow_underflow_daz_ftz() {
    let max = f32::MAX.to_bits() as u128;
    let two = f(2.0) as u128;
    let (r, fl) = run(C::Mulss_xmm_xmmm32, max, two, 0, DEFAULT);
    assert_eq!((r as u32, fl), (0x7f80_0000, mxcsr::OE | mxcsr::PE));
    // Round toward zero: overflow gives the largest finite value.
    let (r, fl) = run(C::Mulss_xmm_xmmm32, max, two, 0, rc(3));
    assert_eq!((r as u32, fl), (0x7f7f_ffff, mxcsr::OE | mxcsr::PE));
    // Min normal * 0.5 = 0x00400000 exactly: tiny but exact, no UE while masked.
    let min = 0x0080_0000u128;
    let half = f(0.5) as u128;
    assert_eq!(run(C::Mulss_xmm_xmmm32, min, half, 0, DEFAULT), (0x0040_0000, 0));
    // Tiny and inexact: UE|PE. 0x00800001 * 0.5 = 0x00400000.8 -> ties to even 0x00400000.
    let (r, fl) = run(C::Mulss_xmm_xmmm32, 0x0080_0001, half, 0, DEFAULT);
    assert_eq!((r as u32, fl), (0x0040_0000, mxcsr::UE | mxcsr::PE));
    // FTZ flushes the tiny result to +0.
    let (r, fl) = run(C::Mulss_xmm_xmmm32, 0x0080_0001, half, 0, DEFAULT | mxcsr::FZ);
    assert_eq!((r as u32, fl), (0, mxcsr::UE | mxcsr::PE));
    // A denormal operand raises DE; with DAZ it is zero and nothing is raised.
    assert_eq!(run(C::Addss_xmm_xmmm32, 1, 0, 0, DEFAULT), (1, mxcsr::DE));
    assert_eq!(run(C::Addss_xmm_xmmm32, 1, 0, 0, DEFAULT | mxcsr::DAZ), (0, 0));
}

#[test]
fn min_max_and_compares() {
    let nan = 0x7fc0_0000u32;
    // MIN/MAX return the second operand for NaNs and equal zeros.
    let (r, fl) =
        run(C::Minps_xmm_xmmm128, ps([nan, f(1.0), 0, 0x8000_0000]), ps([f(1.0), nan, 0x8000_0000, 0]), 0, DEFAULT);
    assert_eq!(r, ps([f(1.0), nan, 0x8000_0000, 0]));
    assert_eq!(fl, mxcsr::IE);
    let (r, fl) = run(C::Maxsd_xmm_xmmm64, pd(d(-1.0), 7), pd(d(2.0), 9), 0, DEFAULT);
    assert_eq!((r, fl), (pd(d(2.0), 7), 0));
    // CMPPS predicates on lanes (1 vs 2), (2 vs 2), (3 vs 2), (NaN vs 2).
    let a = ps([f(1.0), f(2.0), f(3.0), nan]);
    let b = ps([f(2.0); 4]);
    let t = u32::MAX;
    let want: [[u32; 4]; 8] = [
        [0, t, 0, 0], // EQ
        [t, 0, 0, 0], // LT
        [t, t, 0, 0], // LE
        [0, 0, 0, t], // UNORD
        [t, 0, t, t], // NEQ
        [0, t, t, t], // NLT
        [0, 0, t, t], // NLE
        [t, t, t, 0], // ORD
    ];
    for (pred, w) in want.iter().enumerate() {
        let (r, fl) = run(C::Cmpps_xmm_xmmm128_imm8, a, b, pred as u8, DEFAULT);
        assert_eq!(r, ps(*w), "predicate {pred}");
        // A QNaN signals only for LT, LE, NLT, NLE.
        let signals = matches!(pred, 1 | 2 | 5 | 6);
        assert_eq!(fl, if signals { mxcsr::IE } else { 0 }, "predicate {pred}");
    }
    // CMPSD keeps the upper half.
    let (r, _) = run(C::Cmpsd_xmm_xmmm64_imm8, pd(d(1.0), 5), pd(d(1.0), 6), 0, DEFAULT);
    assert_eq!(r, pd(u64::MAX, 5));
}

#[test]
fn comis_sets_zf_pf_cf() {
    use sim_core::state::rflags::{CF, PF, ZF};
    let mut m = DEFAULT;
    let one = f(1.0) as u128;
    let two = f(2.0) as u128;
    assert_eq!(sse::comis(C::Comiss_xmm_xmmm32, one, two, &mut m), Ok(CF));
    assert_eq!(sse::comis(C::Comiss_xmm_xmmm32, two, one, &mut m), Ok(0));
    assert_eq!(sse::comis(C::Ucomisd_xmm_xmmm64, pd(d(2.5), 1), pd(d(2.5), 2), &mut m), Ok(ZF));
    assert_eq!(m & FLAGS, 0);
    // QNaN: unordered; COMISS signals, UCOMISS does not.
    assert_eq!(sse::comis(C::Ucomiss_xmm_xmmm32, 0x7fc0_0000, one, &mut m), Ok(ZF | PF | CF));
    assert_eq!(m & FLAGS, 0);
    assert_eq!(sse::comis(C::Comiss_xmm_xmmm32, 0x7fc0_0000, one, &mut m), Ok(ZF | PF | CF));
    assert_eq!(m & FLAGS, mxcsr::IE);
    let mut m = DEFAULT;
    assert_eq!(sse::comis(C::Ucomiss_xmm_xmmm32, 0x7f80_0001, one, &mut m), Ok(ZF | PF | CF));
    assert_eq!(m & FLAGS, mxcsr::IE);
    let mut m = DEFAULT & !(1 << 7); // IM clear
    assert_eq!(sse::comis(C::Comiss_xmm_xmmm32, 0x7fc0_0000, one, &mut m), Err(SimdError::Exception));
    assert!(!sse::supports(C::Comiss_xmm_xmmm32));
}

#[test]
fn conversions() {
    // CVTSS2SI rounds per RC; ties go to even.
    for (x, mode, want) in
        [(2.5f32, 0, 2u32), (3.5, 0, 4), (-2.5, 0, (-2i32) as u32), (2.5, 1, 2), (2.5, 2, 3), (-2.7, 3, (-2i32) as u32)]
    {
        let (r, fl) = run(C::Cvtss2si_r32_xmmm32, 0, f(x) as u128, 0, rc(mode));
        assert_eq!((r, fl), (want as u128, mxcsr::PE), "{x} RC {mode}");
    }
    // CVTT truncates whatever RC says.
    assert_eq!(run(C::Cvttss2si_r32_xmmm32, 0, f(-2.7) as u128, 0, rc(2)).0, (-2i32) as u32 as u128);
    // Out of range and NaN: integer indefinite with IE.
    assert_eq!(run(C::Cvtss2si_r32_xmmm32, 0, f(3e9) as u128, 0, DEFAULT), (0x8000_0000, mxcsr::IE));
    assert_eq!(run(C::Cvttsd2si_r32_xmmm64, 0, 0x7ff8_0000_0000_0000, 0, DEFAULT), (0x8000_0000, mxcsr::IE));
    assert_eq!(run(C::Cvtss2si_r64_xmmm32, 0, f(3e9) as u128, 0, DEFAULT), (3_000_000_000, 0));
    assert_eq!(run(C::Cvttsd2si_r64_xmmm64, 0, d(2f64.powi(63)) as u128, 0, DEFAULT).1, mxcsr::IE);
    assert_eq!(run(C::Cvttsd2si_r64_xmmm64, 0, d(-(2f64.powi(63))) as u128, 0, DEFAULT), (1 << 63, 0));
    // -2147483648.5 truncates to i32::MIN (in range), rounds to even -> also i32::MIN.
    assert_eq!(run(C::Cvttsd2si_r32_xmmm64, 0, d(-2147483648.5) as u128, 0, DEFAULT), (0x8000_0000, mxcsr::PE));
    // CVTSI2SD merges into the low lane.
    let (r, fl) = run(C::Cvtsi2sd_xmm_rm32, pd(0, 0xabc), 0xffff_ffff, 0, DEFAULT);
    assert_eq!((r, fl), (pd(0xbff0_0000_0000_0000, 0xabc), 0));
    let (r, fl) = run(C::Cvtsi2ss_xmm_rm64, ps([0, 1, 2, 3]), u64::MAX as u128, 0, DEFAULT);
    assert_eq!((r, fl), (ps([f(-1.0), 1, 2, 3]), 0));
    // float <-> double.
    assert_eq!(run(C::Cvtss2sd_xmm_xmmm32, 0, f(1.0) as u128, 0, DEFAULT), (0x3ff0_0000_0000_0000, 0));
    assert_eq!(run(C::Cvtsd2ss_xmm_xmmm64, 0, d(0.1) as u128, 0, DEFAULT), (0x3dcc_cccd, mxcsr::PE));
    assert_eq!(run(C::Cvtsd2ss_xmm_xmmm64, 0, d(0.1) as u128, 0, rc(1)).0, 0x3dcc_cccc);
    assert_eq!(run(C::Cvtsd2ss_xmm_xmmm64, 0, d(1e300) as u128, 0, DEFAULT), (0x7f80_0000, mxcsr::OE | mxcsr::PE));
    assert_eq!(run(C::Cvtsd2ss_xmm_xmmm64, 0, 0x7ff4_0000_0000_0000, 0, DEFAULT), (0x7fe0_0000, mxcsr::IE));
    // Packed forms.
    let (r, fl) = run(C::Cvtdq2ps_xmm_xmmm128, 0, ps([1, (-2i32) as u32, 16_777_217, 0]), 0, DEFAULT);
    assert_eq!((r, fl), (ps([f(1.0), f(-2.0), 0x4b80_0000, 0]), mxcsr::PE));
    let (r, fl) = run(C::Cvttps2dq_xmm_xmmm128, 0, ps([f(1.9), f(-1.9), f(1e10), 0x7fc0_0000]), 0, DEFAULT);
    assert_eq!(r, ps([1, (-1i32) as u32, 0x8000_0000, 0x8000_0000]));
    assert_eq!(fl, mxcsr::IE | mxcsr::PE);
    let (r, _) = run(C::Cvtpd2dq_xmm_xmmm128, u128::MAX, pd(d(1.5), d(-2.5)), 0, DEFAULT);
    assert_eq!(r, ps([2, (-2i32) as u32, 0, 0]));
    let (r, _) = run(C::Cvtdq2pd_xmm_xmmm64, 0, ps([7, (-1i32) as u32, 9, 9]), 0, DEFAULT);
    assert_eq!(r, pd(d(7.0), d(-1.0)));
    let (r, _) = run(C::Cvtps2pd_xmm_xmmm64, 0, ps([f(0.5), f(-4.0), 1, 1]), 0, DEFAULT);
    assert_eq!(r, pd(d(0.5), d(-4.0)));
    let (r, _) = run(C::Cvtpd2ps_xmm_xmmm128, u128::MAX, pd(d(0.5), d(-4.0)), 0, DEFAULT);
    assert_eq!(r, ps([f(0.5), f(-4.0), 0, 0]));
}

#[test]
fn moves_merge_or_zero() {
    let dst = ps([1, 2, 3, 4]);
    let src = ps([5, 6, 7, 8]);
    let mut m = DEFAULT;
    // MOVSS xmm, xmm merges; MOVSS xmm, m32 zeroes bits 127:32.
    assert_eq!(sse::exec(C::Movss_xmm_xmmm32, dst, src, 0, &mut m), Ok(ps([5, 2, 3, 4])));
    assert_eq!(sse::exec_src(C::Movss_xmm_xmmm32, dst, 5, true, 0, &mut m), Ok(ps([5, 0, 0, 0])));
    assert_eq!(sse::exec(C::Movsd_xmm_xmmm64, dst, src, 0, &mut m), Ok(ps([5, 6, 3, 4])));
    assert_eq!(sse::exec_src(C::Movsd_xmm_xmmm64, dst, pd(9, 0), true, 0, &mut m), Ok(pd(9, 0)));
    assert_eq!(sse::exec(C::Movq_xmm_xmmm64, dst, src, 0, &mut m), Ok(ps([5, 6, 0, 0])));
    assert_eq!(sse::exec(C::Movd_xmm_rm32, dst, 0x1_2345_6789, 0, &mut m), Ok(0x2345_6789));
    assert_eq!(sse::exec(C::Movd_rm32_xmm, 0, src, 0, &mut m), Ok(5));
    assert_eq!(sse::exec(C::Movq_rm64_xmm, 0, src, 0, &mut m), Ok(pd(0x6_0000_0005, 0)));
    assert_eq!(sse::exec(C::Movhlps_xmm_xmm, dst, src, 0, &mut m), Ok(ps([7, 8, 3, 4])));
    assert_eq!(sse::exec(C::Movlhps_xmm_xmm, dst, src, 0, &mut m), Ok(ps([1, 2, 5, 6])));
    assert_eq!(sse::exec(C::Movhps_xmm_m64, dst, pd(0x9_0000_000a, 0), 0, &mut m), Ok(ps([1, 2, 10, 9])));
    assert_eq!(sse::exec(C::Movhps_m64_xmm, 0, src, 0, &mut m), Ok(pd(0x8_0000_0007, 0)));
    assert_eq!(sse::exec(C::Movlps_xmm_m64, dst, pd(0x9_0000_000a, 0), 0, &mut m), Ok(ps([10, 9, 3, 4])));
    assert_eq!(sse::exec(C::Movaps_xmm_xmmm128, dst, src, 0, &mut m), Ok(src));
    let signs = ps([0x8000_0000, 0, 0x8000_0000, 0x8000_0000]);
    assert_eq!(sse::exec(C::Movmskps_r32_xmm, 0, signs, 0, &mut m), Ok(0b1101));
    assert_eq!(sse::exec(C::Movmskpd_r64_xmm, 0, signs, 0, &mut m), Ok(0b10)); // bits 63 and 127
    assert_eq!(sse::exec(C::Pmovmskb_r32_xmm, 0, 0x80 | 0xff << 120, 0, &mut m), Ok(0x8001));
    assert_eq!(m, DEFAULT);
}

#[test]
fn shuffles_and_integer_specials() {
    let a = ps([0xa0, 0xa1, 0xa2, 0xa3]);
    let b = ps([0xb0, 0xb1, 0xb2, 0xb3]);
    let mut m = DEFAULT;
    let mut ex = |c, x, y, imm| sse::exec(c, x, y, imm, &mut m).unwrap();
    // imm 0x1b = 00 01 10 11: lanes 3, 2 of dst then 1, 0 of src.
    assert_eq!(ex(C::Shufps_xmm_xmmm128_imm8, a, b, 0x1b), ps([0xa3, 0xa2, 0xb1, 0xb0]));
    assert_eq!(ex(C::Shufpd_xmm_xmmm128_imm8, a, b, 0b01), ps([0xa2, 0xa3, 0xb0, 0xb1]));
    assert_eq!(ex(C::Pshufd_xmm_xmmm128_imm8, 0, b, 0x1b), ps([0xb3, 0xb2, 0xb1, 0xb0]));
    assert_eq!(ex(C::Unpcklps_xmm_xmmm128, a, b, 0), ps([0xa0, 0xb0, 0xa1, 0xb1]));
    assert_eq!(ex(C::Unpckhpd_xmm_xmmm128, a, b, 0), ps([0xa2, 0xa3, 0xb2, 0xb3]));
    assert_eq!(ex(C::Punpcklbw_xmm_xmmm128, 0x0201, 0x0403, 0), 0x0402_0301);
    let w = 0x0007_0006_0005_0004_0003_0002_0001_0000u128;
    assert_eq!(ex(C::Pshuflw_xmm_xmmm128_imm8, 0, w, 0x1b), 0x0007_0006_0005_0004_0000_0001_0002_0003);
    assert_eq!(ex(C::Pshufhw_xmm_xmmm128_imm8, 0, w, 0x1b), 0x0004_0005_0006_0007_0003_0002_0001_0000);
    // PACKSSWB: 256 -> 0x7f, -256 -> 0x80, 5 -> 5; PACKUSWB: -1 -> 0, 300 -> 0xff.
    assert_eq!(ex(C::Packsswb_xmm_xmmm128, 0x0005_ff00_0100, 0, 0), 0x05_80_7f);
    assert_eq!(ex(C::Packuswb_xmm_xmmm128, 0x012c_ffff, 0, 0), 0xff_00);
    // Shifts past the width: logical -> 0, arithmetic -> sign fill.
    assert_eq!(ex(C::Psllw_xmm_xmmm128, 0xffff, 16, 0), 0);
    assert_eq!(ex(C::Psraw_xmm_imm8, 0x8000_0001, 0, 20), 0xffff_0000);
    assert_eq!(ex(C::Psrlq_xmm_xmmm128, pd(0x100, 0x200), 1 << 64 | 4, 0), pd(0x10, 0x20));
    assert_eq!(ex(C::Psrlq_xmm_xmmm128, pd(0x100, 0x200), 1 << 32, 0), 0); // count is all 64 bits
    assert_eq!(ex(C::Pslldq_xmm_imm8, 0x11, 0, 3), 0x11 << 24);
    assert_eq!(ex(C::Psrldq_xmm_imm8, u128::MAX, 0, 15), 0xff);
    assert_eq!(ex(C::Psrldq_xmm_imm8, u128::MAX, 0, 16), 0);
    assert_eq!(ex(C::Pextrw_r32_xmm_imm8, 0, w, 13), 5);
    assert_eq!(ex(C::Pinsrw_xmm_r32m16_imm8, 0, 0x1_beef, 2), 0xbeef << 32);
    // PMADDWD: (-2*3) + (4*5) = 14; PSADBW: |1-4| + |10-0| = 13 per half.
    assert_eq!(ex(C::Pmaddwd_xmm_xmmm128, 0x0004_fffe, 0x0005_0003, 0), 14);
    assert_eq!(ex(C::Psadbw_xmm_xmmm128, pd(0x0a01, 0x0a01), pd(0x0004, 0x0004), 0), pd(13, 13));
    assert_eq!(
        ex(C::Pmuludq_xmm_xmmm128, pd(0xffff_ffff_ffff_ffff, 2), pd(0x1_ffff_ffff, 3), 0),
        pd(0xffff_fffe_0000_0001, 6)
    );
    // RCPPS/RSQRTPS of exact cases.
    assert_eq!(
        ex(C::Rcpps_xmm_xmmm128, 0, ps([f(2.0), f(-0.25), 0, 0x7f80_0000]), 0),
        ps([f(0.5), f(-4.0), 0x7f80_0000, 0])
    );
    assert_eq!(
        ex(C::Rsqrtps_xmm_xmmm128, 0, ps([f(4.0), f(0.25), f(-1.0), 0]), 0),
        ps([f(0.5), f(2.0), 0xffc0_0000, 0x7f80_0000])
    );
    // Logic.
    assert_eq!(ex(C::Andnps_xmm_xmmm128, 0b1100, 0b1010, 0), 0b0010);
    assert_eq!(ex(C::Pxor_xmm_xmmm128, 0b1100, 0b1010, 0), 0b0110);
}

#[test]
fn support_and_alignment_tables() {
    assert!(sse::supports(C::Addps_xmm_xmmm128));
    assert!(sse::supports(C::Cvttsd2si_r64_xmmm64));
    assert!(!sse::supports(C::Paddb_mm_mmm64)); // MMX form
    assert!(!sse::supports(C::Pshufb_xmm_xmmm128)); // SSSE3
    assert!(!sse::supports(C::Add_rm32_r32));
    let mut m = DEFAULT;
    assert_eq!(sse::exec(C::Pshufb_xmm_xmmm128, 0, 0, 0, &mut m), Err(SimdError::Unsupported));
    assert!(sse::needs_alignment(C::Movaps_xmm_xmmm128));
    assert!(sse::needs_alignment(C::Movaps_xmmm128_xmm));
    assert!(sse::needs_alignment(C::Addps_xmm_xmmm128));
    assert!(sse::needs_alignment(C::Movntdq_m128_xmm));
    assert!(sse::needs_alignment(C::Pshufd_xmm_xmmm128_imm8));
    assert!(!sse::needs_alignment(C::Movups_xmm_xmmm128));
    assert!(!sse::needs_alignment(C::Movdqu_xmmm128_xmm));
    assert!(!sse::needs_alignment(C::Addss_xmm_xmmm32));
    assert!(!sse::needs_alignment(C::Cvtps2pd_xmm_xmmm64));
    assert!(!sse::needs_alignment(C::Movhps_xmm_m64));
}

#[test]
fn fxsave_layout_and_round_trip() {
    use sim_core::state::FpuState;
    let mut fpu = FpuState { fcw: 0x037f, fsw: 0x3800, ftw: 0x81, fop: 0x07ab, mxcsr: 0x9fc0, ..Default::default() };
    fpu.fip = 0x0023_1234_5678; // 32-bit layout: FCS 0x23, offset 0x12345678
    fpu.fdp = 0x002b_9abc_def0;
    fpu.st[7] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 0, 0, 0, 0, 0];
    for (i, x) in fpu.xmm.iter_mut().enumerate() {
        *x = 0x0101_0101_0101_0101_0101_0101_0101_0101u128 * (i as u128 + 1);
    }
    let img = sse::fxsave(&fpu, false);
    assert_eq!(&img[0..8], &[0x7f, 0x03, 0x00, 0x38, 0x81, 0x00, 0xab, 0x07]);
    assert_eq!(&img[8..16], &[0x78, 0x56, 0x34, 0x12, 0x23, 0x00, 0, 0]);
    assert_eq!(&img[16..24], &[0xf0, 0xde, 0xbc, 0x9a, 0x2b, 0x00, 0, 0]);
    assert_eq!(&img[24..32], &[0xc0, 0x9f, 0, 0, 0xff, 0xff, 0, 0]); // MXCSR, MXCSR_MASK
    assert_eq!(&img[32 + 16 * 7..32 + 16 * 7 + 10], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(&img[160..176], &[1u8; 16]);
    assert_eq!(&img[272..288], &[8u8; 16]);
    assert_eq!(&img[288..304], &[0u8; 16]); // XMM8 not saved outside 64-bit mode
    assert_eq!(sse::fxsave_len(false), 288);
    let back = sse::fxrstor(&img, false).unwrap();
    assert_eq!(back.fip, fpu.fip);
    assert_eq!(back.fdp, fpu.fdp);
    assert_eq!(back.xmm[..8], fpu.xmm[..8]);
    assert_eq!(back.xmm[8], 0);

    let img = sse::fxsave(&fpu, true);
    assert_eq!(&img[8..16], &0x0023_1234_5678u64.to_le_bytes());
    assert_eq!(&img[400..416], &[16u8; 16]); // XMM15
    assert_eq!(sse::fxsave_len(true), 464);
    assert_eq!(sse::fxrstor(&img, true), Ok(fpu));

    // Reserved MXCSR bits -> #GP.
    let mut bad = img;
    bad[26] = 1; // bit 16
    assert_eq!(sse::fxrstor(&bad, true), Err(()));
}
