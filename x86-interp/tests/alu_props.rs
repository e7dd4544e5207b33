//! Property tests: x86_interp::alu against a reference model written here with
//! a different method (u128/i128 arithmetic, nibble sums, bit-by-bit shifting
//! loops). Only architecturally defined flags are compared, except in the
//! tests named `documented_*`, which pin the module's stated choices.

use proptest::prelude::*;
use sim_core::state::rflags::{AF, CF, OF, PF, SF, ZF};
use x86_interp::alu::{self, ShiftOp, STATUS_FLAGS};

fn nbits(size: u8) -> u32 {
    size as u32 * 8
}

fn m(size: u8) -> u128 {
    (1u128 << nbits(size)) - 1
}

/// Two's-complement value of the low `size` bytes, via subtraction rather than shifts.
fn signed(v: u64, size: u8) -> i128 {
    let v = v as u128 & m(size);
    if v >> (nbits(size) - 1) == 1 {
        v as i128 - (1i128 << nbits(size))
    } else {
        v as i128
    }
}

fn fits_signed(v: i128, size: u8) -> bool {
    let half = 1i128 << (nbits(size) - 1);
    -half <= v && v < half
}

/// SF, ZF, PF of a result, computed from its signed value and a popcount.
fn ref_szp(r: u128, size: u8) -> u64 {
    let mut f = 0;
    if r == 0 {
        f |= ZF;
    }
    if signed(r as u64, size) < 0 {
        f |= SF;
    }
    if (r as u8).count_ones() % 2 == 0 {
        f |= PF;
    }
    f
}

fn flag(b: bool, f: u64) -> u64 {
    if b {
        f
    } else {
        0
    }
}

/// Values that favour the interesting edges (0, 1, powers of two, all-ones, sign boundaries).
fn val() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => any::<u64>(),
        1 => 0u64..4,
        1 => (0u32..64).prop_map(|s| 1u64 << s),
        1 => (0u32..65).prop_map(|s| if s == 64 { u64::MAX } else { (1u64 << s) - 1 }),
        1 => (0u32..64).prop_map(|s| !(1u64 << s)),
    ]
}

fn size() -> impl Strategy<Value = u8> {
    prop_oneof![Just(1u8), Just(2u8), Just(4u8), Just(8u8)]
}

/// Arbitrary flags input: random bits in the low 22 (incl. non-status bits).
fn flags_in() -> impl Strategy<Value = u64> {
    (0u64..(1 << 22)).prop_map(|f| f | 2)
}

fn ref_add(a: u64, b: u64, c: u64, size: u8) -> (u64, u64) {
    let (ua, ub) = (a as u128 & m(size), b as u128 & m(size));
    let sum = ua + ub + c as u128;
    let r = sum & m(size);
    let mut f = ref_szp(r, size);
    f |= flag(sum > m(size), CF);
    f |= flag(!fits_signed(signed(a, size) + signed(b, size) + c as i128, size), OF);
    f |= flag((ua & 0xf) + (ub & 0xf) + c as u128 > 0xf, AF);
    (r as u64, f)
}

fn ref_sub(a: u64, b: u64, c: u64, size: u8) -> (u64, u64) {
    let (ua, ub) = (a as u128 & m(size), b as u128 & m(size));
    let r = (ua + (1u128 << nbits(size)) - ub - c as u128) & m(size);
    let mut f = ref_szp(r, size);
    f |= flag(ua < ub + c as u128, CF);
    f |= flag(!fits_signed(signed(a, size) - signed(b, size) - c as i128, size), OF);
    f |= flag((ua & 0xf) < (ub & 0xf) + c as u128, AF);
    (r as u64, f)
}

fn check(got: (u64, u64), want: (u64, u64), flags_in: u64, compare: u64) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.0, want.0, "result");
    prop_assert_eq!(got.1 & compare, want.1 & compare, "flags {:#x} vs {:#x}", got.1, want.1);
    prop_assert_eq!(got.1 & !STATUS_FLAGS, flags_in & !STATUS_FLAGS, "non-status bits changed");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn add_family(a in val(), b in val(), s in size(), f in flags_in()) {
        let cin = f & CF;
        check(alu::add(a, b, s, f), ref_add(a, b, 0, s), f, STATUS_FLAGS)?;
        check(alu::adc(a, b, s, f), ref_add(a, b, cin, s), f, STATUS_FLAGS)?;
        check(alu::sub(a, b, s, f), ref_sub(a, b, 0, s), f, STATUS_FLAGS)?;
        check(alu::sbb(a, b, s, f), ref_sub(a, b, cin, s), f, STATUS_FLAGS)?;
        // NEG = 0 - a; CF = (a != 0).
        let (r, nf) = ref_sub(0, a, 0, s);
        prop_assert_eq!(nf & CF != 0, a as u128 & m(s) != 0);
        check(alu::neg(a, s, f), (r, nf), f, STATUS_FLAGS)?;
        // INC/DEC: as ADD/SUB 1 with CF from the input.
        let (r, xf) = ref_add(a, 1, 0, s);
        check(alu::inc(a, s, f), (r, (xf & !CF) | (f & CF)), f, STATUS_FLAGS)?;
        let (r, xf) = ref_sub(a, 1, 0, s);
        check(alu::dec(a, s, f), (r, (xf & !CF) | (f & CF)), f, STATUS_FLAGS)?;
    }

    #[test]
    fn logic_family(a in val(), b in val(), s in size(), f in flags_in()) {
        let mm = m(s) as u64;
        for (got, r) in [
            (alu::and(a, b, s, f), a & b & mm),
            (alu::or(a, b, s, f), (a | b) & mm),
            (alu::xor(a, b, s, f), (a ^ b) & mm),
        ] {
            check(got, (r, ref_szp(r as u128, s)), f, STATUS_FLAGS & !AF)?;
            prop_assert_eq!(got.1 & (CF | OF), 0);
        }
    }
}

/// Bit-by-bit reference for shifts and rotates. Returns (result, CF, OF of the
/// last one-bit step); the loop runs `masked count` times, so the RCL/RCR
/// modulo-(n+1) rule and ROL/ROR modulo-n rule are never written down here.
fn ref_shift(op: ShiftOp, a: u64, count: u8, size: u8, cf_in: bool) -> (u64, bool, bool) {
    let n = nbits(size);
    let c = count & if size == 8 { 63 } else { 31 };
    let mut bitsv: Vec<bool> = (0..n).map(|i| (a >> i) & 1 == 1).collect(); // index 0 = LSB
    let mut cf = cf_in;
    let mut of = false;
    let top = (n - 1) as usize;
    for _ in 0..c {
        let before_msb = bitsv[top];
        match op {
            ShiftOp::Shl => {
                cf = bitsv[top];
                bitsv.rotate_right(1);
                bitsv[0] = false;
                of = bitsv[top] != cf;
            }
            ShiftOp::Shr => {
                cf = bitsv[0];
                bitsv.rotate_left(1);
                bitsv[top] = false;
                of = before_msb;
            }
            ShiftOp::Sar => {
                cf = bitsv[0];
                bitsv.rotate_left(1);
                bitsv[top] = before_msb;
                of = false;
            }
            ShiftOp::Rol => {
                bitsv.rotate_right(1);
                cf = bitsv[0];
                of = bitsv[top] != cf;
            }
            ShiftOp::Ror => {
                bitsv.rotate_left(1);
                cf = bitsv[top];
                of = bitsv[top] != bitsv[top - 1];
            }
            ShiftOp::Rcl => {
                let out = bitsv[top];
                bitsv.rotate_right(1);
                bitsv[0] = cf;
                cf = out;
                of = bitsv[top] != cf;
            }
            ShiftOp::Rcr => {
                of = before_msb != cf;
                let out = bitsv[0];
                bitsv.rotate_left(1);
                bitsv[top] = cf;
                cf = out;
            }
        }
    }
    let r = bitsv.iter().enumerate().fold(0u64, |acc, (i, &b)| acc | ((b as u64) << i));
    (r, cf, of)
}

const SHIFT_OPS: [ShiftOp; 7] =
    [ShiftOp::Rol, ShiftOp::Ror, ShiftOp::Rcl, ShiftOp::Rcr, ShiftOp::Shl, ShiftOp::Shr, ShiftOp::Sar];

fn is_rotate(op: ShiftOp) -> bool {
    matches!(op, ShiftOp::Rol | ShiftOp::Ror | ShiftOp::Rcl | ShiftOp::Rcr)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Architecturally defined results and flags, for every count 0..=255.
    #[test]
    fn shifts_and_rotates(a in val(), count in any::<u8>(), s in size(), f in flags_in(), opi in 0usize..7) {
        let op = SHIFT_OPS[opi];
        let c = count & if s == 8 { 63 } else { 31 };
        let (r, f2) = alu::shift(op, a, count, s, f);
        let (rr, rcf, rof) = ref_shift(op, a, count, s, f & CF != 0);
        prop_assert_eq!(r, rr, "{:?} {:#x} by {} size {}", op, a, count, s);
        prop_assert_eq!(f2 & !STATUS_FLAGS, f & !STATUS_FLAGS);
        if c == 0 {
            prop_assert_eq!(f2, f);
            return Ok(());
        }
        if is_rotate(op) {
            // Rotates leave SF ZF PF AF alone.
            prop_assert_eq!(f2 & (SF | ZF | PF | AF), f & (SF | ZF | PF | AF));
        } else {
            prop_assert_eq!(f2 & (SF | ZF | PF), ref_szp(rr as u128, s));
        }
        // CF is undefined for SHL/SHR counts >= the operand width.
        let cf_defined = is_rotate(op) || op == ShiftOp::Sar || (c as u32) < nbits(s);
        if cf_defined {
            prop_assert_eq!(f2 & CF != 0, rcf, "CF {:?} {:#x} by {} size {}", op, a, count, s);
        }
        if c == 1 {
            prop_assert_eq!(f2 & OF != 0, rof, "OF {:?} {:#x} size {}", op, a, s);
        }
    }

    /// The module's documented OF choice for counts > 1: the count-1 rule on
    /// the last step (SAR: 0); CF = last bit out even past the width; AF = 0.
    #[test]
    fn documented_shift_of(a in val(), count in 2u8..64, s in size(), f in flags_in(), opi in 0usize..7) {
        let op = SHIFT_OPS[opi];
        let c = count & if s == 8 { 63 } else { 31 };
        prop_assume!(c > 1);
        let (_, f2) = alu::shift(op, a, count, s, f);
        let (_, rcf, rof) = ref_shift(op, a, count, s, f & CF != 0);
        prop_assert_eq!(f2 & CF != 0, rcf, "CF {:?} {:#x} by {} size {}", op, a, count, s);
        prop_assert_eq!(f2 & OF != 0, rof, "OF {:?} {:#x} by {} size {}", op, a, count, s);
        if !is_rotate(op) {
            prop_assert_eq!(f2 & AF, 0);
        }
    }

    /// SHLD/SHRD against the loop model for counts below the width.
    #[test]
    fn double_shifts(d in val(), src in val(), count in any::<u8>(), s in prop_oneof![Just(2u8), Just(4u8), Just(8u8)],
                     f in flags_in()) {
        let n = nbits(s);
        let c = (count & if s == 8 { 63 } else { 31 }) as u32;
        prop_assume!(c < n);
        let mm = m(s) as u64;
        let (dl, sl) = (d & mm, src & mm);
        let (r, f2) = alu::shld(d, src, count, s, f);
        let (r2, f3) = alu::shrd(d, src, count, s, f);
        if c == 0 {
            prop_assert_eq!((r, f2), (dl, f));
            prop_assert_eq!((r2, f3), (dl, f));
            return Ok(());
        }
        // Left: shift dl one bit at a time, feeding src's bits from the top.
        let (mut x, mut feed, mut cf) = (dl, sl, false);
        for _ in 0..c {
            cf = (x >> (n - 1)) & 1 == 1;
            x = ((x << 1) | ((feed >> (n - 1)) & 1)) & mm;
            feed = (feed << 1) & mm;
        }
        prop_assert_eq!(r, x);
        prop_assert_eq!(f2 & (CF | SF | ZF | PF), flag(cf, CF) | ref_szp(x as u128, s));
        if c == 1 {
            prop_assert_eq!(f2 & OF != 0, (x >> (n - 1)) != (dl >> (n - 1)));
        }
        // Right: feed src's low bits in at the top.
        let (mut x, mut feed, mut cf) = (dl, sl, false);
        for _ in 0..c {
            cf = x & 1 == 1;
            x = (x >> 1) | ((feed & 1) << (n - 1));
            feed >>= 1;
        }
        prop_assert_eq!(r2, x);
        prop_assert_eq!(f3 & (CF | SF | ZF | PF), flag(cf, CF) | ref_szp(x as u128, s));
        if c == 1 {
            prop_assert_eq!(f3 & OF != 0, (x >> (n - 1)) != (dl >> (n - 1)));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn multiply(a in val(), b in val(), s in size(), f in flags_in()) {
        let n = nbits(s);
        let (lo, hi, mf) = alu::mul(a, b, s, f);
        let p = (a as u128 & m(s)) * (b as u128 & m(s));
        prop_assert_eq!(lo as u128 + ((hi as u128) << n), p);
        prop_assert_eq!(mf & (CF | OF), flag(p > m(s), CF | OF));
        prop_assert_eq!(mf & !STATUS_FLAGS, f & !STATUS_FLAGS);

        let (lo, hi, mf) = alu::imul(a, b, s, f);
        let sp = signed(a, s) * signed(b, s);
        prop_assert_eq!(lo as i128 + signed(hi, s) * (1i128 << n), sp);
        prop_assert_eq!(mf & (CF | OF), flag(!fits_signed(sp, s), CF | OF));
        prop_assert_eq!(mf & !STATUS_FLAGS, f & !STATUS_FLAGS);
    }

    #[test]
    fn divide(hi in val(), lo in val(), d in val(), s in size(), reduce in any::<bool>()) {
        let n = nbits(s);
        let dm = d as u128 & m(s);
        // Half the cases force hi < divisor so that most divisions succeed.
        let hi = if reduce && dm != 0 { ((hi as u128 & m(s)) % dm) as u64 } else { hi };
        let dividend = (hi as u128 & m(s)) * (1u128 << n) + (lo as u128 & m(s));
        let want = if dm == 0 || dividend / dm > m(s) {
            None
        } else {
            Some(((dividend / dm) as u64, (dividend % dm) as u64))
        };
        prop_assert_eq!(alu::div(hi, lo, d, s), want);

        // Signed: dividend = signed(hi) * 2^n + unsigned(lo).
        let sdividend = signed(hi, s) * (1i128 << n) + (lo as u128 & m(s)) as i128;
        let sd = signed(d, s);
        let want = if sd == 0 {
            None
        } else {
            // Truncating division by hand: magnitude quotient, then the sign.
            let (ua, ub) = (sdividend.unsigned_abs(), sd.unsigned_abs());
            let (qm, rm) = (ua / ub, ua % ub);
            if qm > (1u128 << n) {
                None
            } else {
                let q = if (sdividend < 0) != (sd < 0) { -(qm as i128) } else { qm as i128 };
                let r = if sdividend < 0 { -(rm as i128) } else { rm as i128 };
                fits_signed(q, s).then(|| ((q as u128 & m(s)) as u64, (r as u128 & m(s)) as u64))
            }
        };
        prop_assert_eq!(alu::idiv(hi, lo, d, s), want);
    }
}
