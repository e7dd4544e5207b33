//! Integer ALU semantics: results and RFLAGS for the arithmetic, logic, shift,
//! multiply/divide, bit-scan and BCD instructions.
//!
//! Every function is pure. `size` is the operand size in bytes (1, 2, 4, 8);
//! operands are taken modulo 2^(8*size) (bits above are ignored) and results
//! are truncated to that size. Flag arguments and results are full RFLAGS
//! values: only the six status flags (CF PF AF ZF SF OF) ever change, every
//! other bit passes through.
//!
//! Where the SDM leaves a flag undefined this module makes one documented,
//! deterministic choice (matching what current Intel cores and Bochs do where
//! that is known):
//! - SHL/SHR/SAR/SHLD/SHRD with a non-zero count: AF = 0.
//! - SHL and SHLD, any count: OF = MSB(result) XOR CF (the count-1 rule applied
//!   to the last one-bit step). SHR, SHRD and RCR, any count: OF = XOR of the
//!   two top bits of the result (equally the count-1 rule on the last step).
//!   SAR: OF = 0. ROL and RCL: OF = MSB(result) XOR CF. ROR: OF = XOR of the
//!   two top result bits.
//! - SHL/SHR with count >= operand width (8/16-bit only): the bits are shifted
//!   out one by one, so CF = 0 once the count exceeds the width.
//! - SHLD/SHRD 16-bit with count > 16: the operand behaves as the 48-bit
//!   concatenation dst:src:dst (Intel's observed behaviour).
//! - MUL/IMUL: SF, ZF, PF from the low half of the product; AF = 0.
//! - BSF/BSR: CF, OF, SF, AF, PF unchanged.
//! - DAA/DAS/AAA/AAS: OF = 0; AAA/AAS set SF ZF PF from the final AL.
//! - AAM: CF = OF = AF = 0. AAD: CF, OF, AF as for the 8-bit ADD of AL and
//!   the low byte of AH*base.
//! - BSWAP r16: the low 16 bits become 0.

use iced_x86::ConditionCode;
use sim_core::state::rflags::{AF, CF, OF, PF, SF, ZF};

/// The six status flags this module computes.
pub const STATUS_FLAGS: u64 = CF | PF | AF | ZF | SF | OF;

#[inline(always)]
fn bits(size: u8) -> u32 {
    match size {
        1 => 8,
        2 => 16,
        4 => 32,
        _ => 64,
    }
}

#[inline(always)]
fn mask(size: u8) -> u64 {
    u64::MAX >> (64 - bits(size))
}

/// The operand's sign bit, moved to bit 0.
#[inline(always)]
fn msb(v: u64, size: u8) -> u64 {
    (v >> (bits(size) - 1)) & 1
}

#[inline(always)]
fn sign_extend(v: u64, size: u8) -> i64 {
    let sh = 64 - bits(size);
    ((v << sh) as i64) >> sh
}

/// Even parity of the low byte (the PF rule).
#[inline(always)]
pub fn parity(v: u8) -> bool {
    let nib = (v ^ (v >> 4)) & 0xf;
    // Bit n of 0x9669 is 1 when n has an even number of set bits.
    (0x9669u16 >> nib) & 1 != 0
}

/// SF, ZF and PF for a result already truncated to `size`.
#[inline(always)]
fn szp(r: u64, size: u8) -> u64 {
    let mut f = if r == 0 { ZF } else { 0 };
    f |= msb(r, size) * SF;
    if parity(r as u8) {
        f |= PF;
    }
    f
}

#[inline(always)]
fn merge(flags: u64, new: u64) -> u64 {
    (flags & !STATUS_FLAGS) | new
}

#[inline(always)]
fn bit(cond: bool, flag: u64) -> u64 {
    if cond {
        flag
    } else {
        0
    }
}

/// a + b + carry_in with the full flag set. CF is the carry out of the top
/// bit, OF the signed overflow, AF the carry out of bit 3.
#[inline(always)]
fn add_core(a: u64, b: u64, carry_in: u64, size: u8, flags: u64) -> (u64, u64) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let r = a.wrapping_add(b).wrapping_add(carry_in) & m;
    // Per-bit carry out: set where both inputs are 1, or either is 1 and the
    // sum bit is 0.
    let carries = (a & b) | ((a | b) & !r);
    let mut f = szp(r, size);
    f |= msb(carries, size) * CF;
    f |= msb((a ^ r) & (b ^ r), size) * OF;
    f |= (a ^ b ^ r) & AF;
    (r, merge(flags, f))
}

/// a - b - borrow_in with the full flag set (CF = borrow out).
#[inline(always)]
fn sub_core(a: u64, b: u64, borrow_in: u64, size: u8, flags: u64) -> (u64, u64) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let r = a.wrapping_sub(b).wrapping_sub(borrow_in) & m;
    let borrows = (!a & b) | ((!a | b) & r);
    let mut f = szp(r, size);
    f |= msb(borrows, size) * CF;
    f |= msb((a ^ b) & (a ^ r), size) * OF;
    f |= (a ^ b ^ r) & AF;
    (r, merge(flags, f))
}

#[inline]
pub fn add(a: u64, b: u64, size: u8, flags: u64) -> (u64, u64) {
    add_core(a, b, 0, size, flags)
}

#[inline]
pub fn adc(a: u64, b: u64, size: u8, flags: u64) -> (u64, u64) {
    add_core(a, b, flags & CF, size, flags)
}

#[inline]
pub fn sub(a: u64, b: u64, size: u8, flags: u64) -> (u64, u64) {
    sub_core(a, b, 0, size, flags)
}

#[inline]
pub fn sbb(a: u64, b: u64, size: u8, flags: u64) -> (u64, u64) {
    sub_core(a, b, flags & CF, size, flags)
}

#[inline(always)]
fn logic(r: u64, size: u8, flags: u64) -> (u64, u64) {
    let r = r & mask(size);
    (r, merge(flags, szp(r, size)))
}

#[inline]
pub fn and(a: u64, b: u64, size: u8, flags: u64) -> (u64, u64) {
    logic(a & b, size, flags)
}

#[inline]
pub fn or(a: u64, b: u64, size: u8, flags: u64) -> (u64, u64) {
    logic(a | b, size, flags)
}

#[inline]
pub fn xor(a: u64, b: u64, size: u8, flags: u64) -> (u64, u64) {
    logic(a ^ b, size, flags)
}

/// INC: like ADD 1 but CF is preserved.
#[inline]
pub fn inc(a: u64, size: u8, flags: u64) -> (u64, u64) {
    let (r, f) = add_core(a, 1, 0, size, flags);
    (r, (f & !CF) | (flags & CF))
}

/// DEC: like SUB 1 but CF is preserved.
#[inline]
pub fn dec(a: u64, size: u8, flags: u64) -> (u64, u64) {
    let (r, f) = sub_core(a, 1, 0, size, flags);
    (r, (f & !CF) | (flags & CF))
}

/// NEG: 0 - a, so CF = (a != 0) falls out of the subtraction.
#[inline]
pub fn neg(a: u64, size: u8, flags: u64) -> (u64, u64) {
    sub_core(0, a, 0, size, flags)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShiftOp {
    Rol,
    Ror,
    Rcl,
    Rcr,
    Shl,
    Shr,
    Sar,
}

/// The count mask of shifts and rotates: 5 bits, 6 for 64-bit operands.
#[inline(always)]
fn count_mask(size: u8) -> u8 {
    if size == 8 {
        0x3f
    } else {
        0x1f
    }
}

/// Shifts and rotates by a raw count (CL or imm8). A masked count of 0 leaves
/// value and flags unchanged. Rotates change only CF and OF.
#[inline]
pub fn shift(op: ShiftOp, a: u64, count: u8, size: u8, flags: u64) -> (u64, u64) {
    let m = mask(size);
    let a = a & m;
    let c = (count & count_mask(size)) as u32;
    if c == 0 {
        return (a, flags);
    }
    let n = bits(size);
    let top2 = |r: u64| msb(r, size) ^ ((r >> (n - 2)) & 1);
    match op {
        ShiftOp::Shl => {
            // Shifted as a 128-bit value so the bit that left the operand
            // last is still visible at position n.
            let wide = (a as u128) << c;
            let r = wide as u64 & m;
            let cf = ((wide >> n) & 1) as u64;
            let f = szp(r, size) | (cf * CF) | ((msb(r, size) ^ cf) * OF);
            (r, merge(flags, f))
        }
        ShiftOp::Shr => {
            let r = a >> c; // c <= 63
            let cf = ((a as u128) >> (c - 1)) as u64 & 1;
            let f = szp(r, size) | (cf * CF) | (top2(r) * OF);
            (r, merge(flags, f))
        }
        ShiftOp::Sar => {
            let s = sign_extend(a, size);
            let r = (s >> c) as u64 & m;
            let cf = (s >> (c - 1)) as u64 & 1;
            let f = szp(r, size) | (cf * CF);
            (r, merge(flags, f))
        }
        ShiftOp::Rol => {
            let t = c % n;
            let r = if t == 0 { a } else { ((a << t) | (a >> (n - t))) & m };
            let cf = r & 1;
            let f = (cf * CF) | ((msb(r, size) ^ cf) * OF);
            (r, (flags & !(CF | OF)) | f)
        }
        ShiftOp::Ror => {
            let t = c % n;
            let r = if t == 0 { a } else { ((a >> t) | (a << (n - t))) & m };
            let f = (msb(r, size) * CF) | (top2(r) * OF);
            (r, (flags & !(CF | OF)) | f)
        }
        ShiftOp::Rcl | ShiftOp::Rcr => {
            // Rotate the (n+1)-bit value CF:a; for 8/16-bit the count is
            // taken modulo n+1 (32/64-bit masked counts are already < n+1).
            let t = c % (n + 1);
            let w = n + 1;
            let wmask = (1u128 << w) - 1;
            let v = ((((flags & CF) as u128) << n) | a as u128) & wmask;
            let t = if op == ShiftOp::Rcl { t } else { (w - t) % w };
            let rot = if t == 0 { v } else { ((v << t) | (v >> (w - t))) & wmask };
            let r = rot as u64 & m;
            let cf = (rot >> n) as u64 & 1;
            let of = if op == ShiftOp::Rcl { msb(r, size) ^ cf } else { top2(r) };
            (r, (flags & !(CF | OF)) | (cf * CF) | (of * OF))
        }
    }
}

/// SHLD dst, src, count: shift dst left, filling from the top of src.
#[inline]
pub fn shld(dst: u64, src: u64, count: u8, size: u8, flags: u64) -> (u64, u64) {
    let m = mask(size);
    let (dst, src) = (dst & m, src & m);
    let c = (count & count_mask(size)) as u32;
    if c == 0 {
        return (dst, flags);
    }
    let n = bits(size);
    // Left-align dst:src(:dst for 16-bit) in 128 bits, shift, take the top.
    let mut wide = ((dst as u128) << (128 - n)) | ((src as u128) << (128 - 2 * n));
    if n == 16 {
        wide |= (dst as u128) << (128 - 3 * n);
    }
    let r = ((wide << c) >> (128 - n)) as u64 & m;
    let cf = ((wide << (c - 1)) >> 127) as u64;
    let f = szp(r, size) | (cf * CF) | ((msb(r, size) ^ cf) * OF);
    (r, merge(flags, f))
}

/// SHRD dst, src, count: shift dst right, filling from the bottom of src.
#[inline]
pub fn shrd(dst: u64, src: u64, count: u8, size: u8, flags: u64) -> (u64, u64) {
    let m = mask(size);
    let (dst, src) = (dst & m, src & m);
    let c = (count & count_mask(size)) as u32;
    if c == 0 {
        return (dst, flags);
    }
    let n = bits(size);
    // Right-align (dst:)src:dst, shift, take the bottom.
    let mut wide = ((src as u128) << n) | dst as u128;
    if n == 16 {
        wide |= (dst as u128) << (2 * n);
    }
    let r = (wide >> c) as u64 & m;
    let cf = (wide >> (c - 1)) as u64 & 1;
    let of = msb(r, size) ^ ((r >> (n - 2)) & 1);
    let f = szp(r, size) | (cf * CF) | (of * OF);
    (r, merge(flags, f))
}

/// Unsigned multiply: (low half, high half, flags). CF = OF = (high != 0).
#[inline]
pub fn mul(a: u64, b: u64, size: u8, flags: u64) -> (u64, u64, u64) {
    let m = mask(size);
    let p = ((a & m) as u128) * ((b & m) as u128);
    let n = bits(size);
    let lo = p as u64 & m;
    let hi = (p >> n) as u64 & m;
    let f = szp(lo, size) | bit(hi != 0, CF | OF);
    (lo, hi, merge(flags, f))
}

/// Signed multiply: (low half, high half, flags). CF = OF = (the product does
/// not fit in the low half as a signed value).
#[inline]
pub fn imul(a: u64, b: u64, size: u8, flags: u64) -> (u64, u64, u64) {
    let m = mask(size);
    let p = (sign_extend(a, size) as i128) * (sign_extend(b, size) as i128);
    let n = bits(size);
    let lo = p as u64 & m;
    let hi = (p >> n) as u64 & m;
    let fits = p == sign_extend(lo, size) as i128;
    let f = szp(lo, size) | bit(!fits, CF | OF);
    (lo, hi, merge(flags, f))
}

/// Unsigned divide of hi:lo by divisor -> (quotient, remainder); None = #DE.
/// For size 1 the dividend is AX, passed as hi = AH, lo = AL.
#[inline]
pub fn div(hi: u64, lo: u64, divisor: u64, size: u8) -> Option<(u64, u64)> {
    let m = mask(size);
    let d = divisor & m;
    if d == 0 {
        return None;
    }
    let n = bits(size);
    if n == 64 {
        // Fast path when the high half is 0 (the common case).
        if hi == 0 {
            return Some((lo / d, lo % d));
        }
        // The quotient fits in 64 bits exactly when hi < divisor.
        if hi >= d {
            return None;
        }
        let dividend = ((hi as u128) << 64) | lo as u128;
        return Some(((dividend / d as u128) as u64, (dividend % d as u128) as u64));
    }
    let dividend = ((hi & m) << n) | (lo & m);
    let q = dividend / d;
    if q > m {
        return None;
    }
    Some((q, dividend % d))
}

/// Signed divide of hi:lo by divisor -> (quotient, remainder), both truncated
/// to `size`; the quotient rounds toward zero and the remainder takes the
/// dividend's sign. None = #DE (zero divisor or quotient out of range).
#[inline]
pub fn idiv(hi: u64, lo: u64, divisor: u64, size: u8) -> Option<(u64, u64)> {
    let m = mask(size);
    let n = bits(size);
    let d = sign_extend(divisor, size) as i128;
    if d == 0 {
        return None;
    }
    let dividend: i128 = if n == 64 {
        (((hi as u128) << 64) | lo as u128) as i128
    } else {
        let raw = ((hi & m) << n) | (lo & m);
        let sh = 64 - 2 * n;
        (((raw << sh) as i64) >> sh) as i128
    };
    let q = dividend.checked_div(d)?;
    let r = dividend.checked_rem(d)?;
    let lim = 1i128 << (n - 1);
    if q < -lim || q >= lim {
        return None;
    }
    Some((q as u64 & m, r as u64 & m))
}

/// BSF: index of the lowest set bit; None (ZF = 1) when src is 0.
#[inline]
pub fn bsf(src: u64, size: u8, flags: u64) -> (Option<u64>, u64) {
    let s = src & mask(size);
    if s == 0 {
        (None, flags | ZF)
    } else {
        (Some(s.trailing_zeros() as u64), flags & !ZF)
    }
}

/// BSR: index of the highest set bit; None (ZF = 1) when src is 0.
#[inline]
pub fn bsr(src: u64, size: u8, flags: u64) -> (Option<u64>, u64) {
    let s = src & mask(size);
    if s == 0 {
        (None, flags | ZF)
    } else {
        (Some(63 - s.leading_zeros() as u64), flags & !ZF)
    }
}

/// BSWAP. Size 2 is undefined in the SDM; Intel cores clear the low 16 bits,
/// so this returns 0.
#[inline]
pub fn bswap(v: u64, size: u8) -> u64 {
    match size {
        8 => v.swap_bytes(),
        4 => (v as u32).swap_bytes() as u64,
        _ => 0,
    }
}

/// The Jcc/SETcc/CMOVcc condition. `ConditionCode::None` is always true.
#[inline]
pub fn cond(cc: ConditionCode, flags: u64) -> bool {
    let f = |x: u64| flags & x != 0;
    let lt = f(SF) != f(OF);
    match cc {
        ConditionCode::None => true,
        ConditionCode::o => f(OF),
        ConditionCode::no => !f(OF),
        ConditionCode::b => f(CF),
        ConditionCode::ae => !f(CF),
        ConditionCode::e => f(ZF),
        ConditionCode::ne => !f(ZF),
        ConditionCode::be => f(CF) || f(ZF),
        ConditionCode::a => !f(CF) && !f(ZF),
        ConditionCode::s => f(SF),
        ConditionCode::ns => !f(SF),
        ConditionCode::p => f(PF),
        ConditionCode::np => !f(PF),
        ConditionCode::l => lt,
        ConditionCode::ge => !lt,
        ConditionCode::le => f(ZF) || lt,
        ConditionCode::g => !f(ZF) && !lt,
    }
}

#[inline(always)]
fn with_al(ax: u16, al: u8) -> u16 {
    (ax & 0xff00) | al as u16
}

/// DAA (SDM vol. 2): decimal-adjust AL after addition. OF = 0.
pub fn daa(ax: u16, flags: u64) -> (u16, u64) {
    let old_al = ax as u8;
    let old_cf = flags & CF != 0;
    let af = old_al & 0xf > 9 || flags & AF != 0;
    // The SDM's CF from the +6 step is always overwritten by the second step.
    let cf = old_al > 0x99 || old_cf;
    let al = old_al.wrapping_add(if af { 6 } else { 0 }).wrapping_add(if cf { 0x60 } else { 0 });
    let f = szp(al as u64, 1) | bit(cf, CF) | bit(af, AF);
    (with_al(ax, al), merge(flags, f))
}

/// DAS (SDM vol. 2): decimal-adjust AL after subtraction. OF = 0.
pub fn das(ax: u16, flags: u64) -> (u16, u64) {
    let old_al = ax as u8;
    let old_cf = flags & CF != 0;
    let mut al = old_al;
    let mut cf = false;
    let mut af = false;
    if old_al & 0xf > 9 || flags & AF != 0 {
        let (r, borrow) = al.overflowing_sub(6);
        al = r;
        cf = old_cf || borrow;
        af = true;
    }
    if old_al > 0x99 || old_cf {
        al = al.wrapping_sub(0x60);
        cf = true;
    }
    let f = szp(al as u64, 1) | bit(cf, CF) | bit(af, AF);
    (with_al(ax, al), merge(flags, f))
}

/// AAA (SDM vol. 2): ASCII-adjust after addition (AX += 0x106 form).
/// SF ZF PF from the final AL, OF = 0.
pub fn aaa(ax: u16, flags: u64) -> (u16, u64) {
    let adjust = (ax as u8) & 0xf > 9 || flags & AF != 0;
    let ax = if adjust { ax.wrapping_add(0x106) } else { ax };
    let ax = ax & 0xff0f;
    let f = szp(ax as u8 as u64, 1) | bit(adjust, CF | AF);
    (ax, merge(flags, f))
}

/// AAS (SDM vol. 2): ASCII-adjust after subtraction (AX -= 6; AH -= 1).
/// SF ZF PF from the final AL, OF = 0.
pub fn aas(ax: u16, flags: u64) -> (u16, u64) {
    let adjust = (ax as u8) & 0xf > 9 || flags & AF != 0;
    let ax = if adjust { ax.wrapping_sub(6).wrapping_sub(0x100) } else { ax };
    let ax = ax & 0xff0f;
    let f = szp(ax as u8 as u64, 1) | bit(adjust, CF | AF);
    (ax, merge(flags, f))
}

/// AAM imm8: AH = AL / base, AL = AL % base; None = #DE for base 0.
/// SF ZF PF from AL; CF = OF = AF = 0.
pub fn aam(al: u8, base: u8, flags: u64) -> Option<(u16, u64)> {
    if base == 0 {
        return None;
    }
    let (q, r) = (al / base, al % base);
    Some((((q as u16) << 8) | r as u16, merge(flags, szp(r as u64, 1))))
}

/// AAD imm8: AL = AL + AH * base (mod 256), AH = 0. Flags as the 8-bit ADD
/// of AL and the low byte of AH * base.
pub fn aad(ax: u16, base: u8, flags: u64) -> (u16, u64) {
    let (al, ah) = (ax as u8, (ax >> 8) as u8);
    let prod = ah.wrapping_mul(base);
    let (r, f) = add(al as u64, prod as u64, 1, flags);
    (r as u16, f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sim_core::state::rflags::{DF, FIXED1, IF};

    /// Status flags only, for comparing against a hand-computed set.
    fn st(f: u64) -> u64 {
        f & STATUS_FLAGS
    }

    #[test]
    fn parity_of_known_bytes() {
        // PF = 1 for an even number of 1 bits.
        for (v, p) in [(0u8, true), (1, false), (3, true), (0x7f, false), (0xff, true), (0x80, false), (0x96, true)] {
            assert_eq!(parity(v), p, "{v:#x}");
        }
    }

    #[test]
    fn add_sub_tables() {
        // (a, b, size, result, status flags) computed by hand.
        let add_cases = [
            (0xffu64, 1u64, 1u8, 0u64, CF | ZF | PF | AF),
            (0x7f, 1, 1, 0x80, SF | OF | AF),
            (0x80, 0x80, 1, 0, CF | OF | ZF | PF),
            (0x7fff_ffff, 1, 4, 0x8000_0000, SF | OF | AF | PF),
            (u64::MAX, u64::MAX, 8, u64::MAX - 1, CF | SF | AF),
            (0x1234, 0x0001, 2, 0x1235, PF),
            (0x0108, 0x0008, 2, 0x0110, AF),
        ];
        for (a, b, size, r, f) in add_cases {
            let (res, fl) = add(a, b, size, FIXED1);
            assert_eq!((res, st(fl)), (r, f), "add {a:#x}+{b:#x} size {size}");
        }
        let sub_cases = [
            (0u64, 1u64, 1u8, 0xffu64, CF | SF | AF | PF),
            (0x80, 1, 1, 0x7f, OF | AF),
            (5, 5, 4, 0, ZF | PF),
            (0x8000_0000_0000_0000, 1, 8, 0x7fff_ffff_ffff_ffff, OF | AF | PF),
            (0x10, 0x01, 2, 0x0f, AF | PF),
        ];
        for (a, b, size, r, f) in sub_cases {
            let (res, fl) = sub(a, b, size, FIXED1);
            assert_eq!((res, st(fl)), (r, f), "sub {a:#x}-{b:#x} size {size}");
        }
    }

    #[test]
    fn carry_chains_and_passthrough() {
        // ADC with CF: 0xff + 0 + 1 = 0x100 -> 0, CF.
        let (r, f) = adc(0xff, 0, 1, CF | IF | DF | FIXED1);
        assert_eq!(r, 0);
        assert_eq!(st(f), CF | ZF | PF | AF);
        assert_eq!(f & (IF | DF | FIXED1), IF | DF | FIXED1);
        // SBB 0 - 0 - 1 = 0xffff with borrow.
        let (r, f) = sbb(0, 0, 2, CF);
        assert_eq!((r, st(f)), (0xffff, CF | SF | PF | AF));
        // Inputs above the size are ignored.
        assert_eq!(add(0xabcd_0001, 0x77_0002, 1, 0).0, 3);
    }

    #[test]
    fn logic_clears_cf_of_af() {
        let (r, f) = and(0xf0, 0x0f, 1, CF | OF | AF);
        assert_eq!((r, st(f)), (0, ZF | PF));
        let (r, f) = or(0x8000, 0x0001, 2, 0);
        assert_eq!((r, st(f)), (0x8001, SF));
        let (r, f) = xor(0xffff_ffff, 0x0000_ffff, 4, OF);
        assert_eq!((r, st(f)), (0xffff_0000, SF | PF));
    }

    #[test]
    fn inc_dec_neg() {
        let (r, f) = inc(0xff, 1, CF);
        assert_eq!((r, st(f)), (0, CF | ZF | PF | AF)); // CF kept, not produced
        let (r, f) = inc(0xff, 1, 0);
        assert_eq!((r, st(f)), (0, ZF | PF | AF));
        let (r, f) = dec(0x8000, 2, 0);
        assert_eq!((r, st(f)), (0x7fff, OF | AF | PF));
        let (r, f) = neg(0, 4, CF);
        assert_eq!((r, st(f)), (0, ZF | PF));
        let (r, f) = neg(0x80, 1, 0);
        assert_eq!((r, st(f)), (0x80, CF | OF | SF));
        let (r, f) = neg(1, 8, 0);
        assert_eq!((r, st(f)), (u64::MAX, CF | SF | PF | AF));
    }

    #[test]
    fn shifts_defined_flags() {
        // SHL 0x81 by 1 (8-bit): 0x02, CF = 1, OF = MSB(r) ^ CF = 1.
        let (r, f) = shift(ShiftOp::Shl, 0x81, 1, 1, 0);
        assert_eq!(r, 0x02);
        assert_eq!(f & (CF | OF | ZF | SF | PF), CF | OF);
        // SHR 0x81 by 1: 0x40, CF = 1, OF = MSB(original) = 1.
        let (r, f) = shift(ShiftOp::Shr, 0x81, 1, 1, 0);
        assert_eq!(r, 0x40);
        assert_eq!(f & (CF | OF | ZF | SF | PF), CF | OF);
        // SAR 0x8000 by 4: 0xf800, CF = last bit out (bit 3) = 0.
        let (r, f) = shift(ShiftOp::Sar, 0x8000, 4, 2, 0);
        assert_eq!(r, 0xf800);
        assert_eq!(f & (CF | ZF | SF | PF), SF | PF);
        // SAR by 1 of 0x81: 0xc0, CF = 1, OF = 0.
        let (r, f) = shift(ShiftOp::Sar, 0x81, 1, 1, OF);
        assert_eq!(r, 0xc0);
        assert_eq!(f & (CF | OF), CF);
        // Masked count 0 (count 32 on 32-bit): nothing changes.
        let (r, f) = shift(ShiftOp::Shl, 0x1234, 32, 4, CF | OF | IF);
        assert_eq!((r, f), (0x1234, CF | OF | IF));
        // 64-bit shifts use 6 count bits: count 63 shifts, count 64 does not.
        assert_eq!(shift(ShiftOp::Shl, 1, 63, 8, 0).0, 1 << 63);
        assert_eq!(shift(ShiftOp::Shl, 1, 64, 8, 0).0, 1);
        // SHL 8-bit by 8: result 0, CF = old bit 0.
        let (r, f) = shift(ShiftOp::Shl, 0x01, 8, 1, 0);
        assert_eq!((r, f & (CF | ZF)), (0, CF | ZF));
    }

    #[test]
    fn rotates_defined_flags() {
        // ROL 0x80 by 1 (8-bit): 0x01, CF = 1, OF = MSB ^ CF = 1; SZP untouched.
        let (r, f) = shift(ShiftOp::Rol, 0x80, 1, 1, ZF | SF);
        assert_eq!((r, f), (0x01, CF | OF | ZF | SF));
        // ROR 0x01 by 1: 0x80, CF = 1, OF = top two bits differ = 1.
        let (r, f) = shift(ShiftOp::Ror, 0x01, 1, 1, 0);
        assert_eq!((r, f), (0x80, CF | OF));
        // ROL 16-bit by 16: value unchanged, CF = bit 0.
        let (r, f) = shift(ShiftOp::Rol, 0x8001, 16, 2, 0);
        assert_eq!((r, f & CF), (0x8001, CF));
        // RCL 8-bit 0x80 with CF=0 by 1: 0x00, CF = 1, OF = 0 ^ 1 = 1.
        let (r, f) = shift(ShiftOp::Rcl, 0x80, 1, 1, 0);
        assert_eq!((r, f & (CF | OF)), (0, CF | OF));
        // RCR 8-bit 0x01 with CF=1 by 1: 0x80, CF = 1, OF = MSB(dst) ^ CF(before) = 0 ^ 1.
        let (r, f) = shift(ShiftOp::Rcr, 0x01, 1, 1, CF);
        assert_eq!((r, f & (CF | OF)), (0x80, CF | OF));
        // RCL 8-bit by 9 = full 9-bit turn: unchanged.
        let (r, f) = shift(ShiftOp::Rcl, 0x5a, 9, 1, CF);
        assert_eq!((r, f & CF), (0x5a, CF));
        // RCR 32-bit 0 with CF by 1: 0x8000_0000, CF = 0.
        let (r, f) = shift(ShiftOp::Rcr, 0, 1, 4, CF);
        assert_eq!((r, f & CF), (0x8000_0000, 0));
        // RCL 64-bit by 63 with CF=1: bit 62 receives the old CF, bit 63 bit 0.
        let (r, f) = shift(ShiftOp::Rcl, 1, 63, 8, CF);
        assert_eq!((r, f & CF), ((1u64 << 63) | (1 << 62), 0));
    }

    #[test]
    fn double_shifts() {
        // SHLD 32-bit: dst 0x12345678, src 0x9abcdef0, count 8 -> 0x3456789a, CF = bit 24 of dst = 0.
        let (r, f) = shld(0x1234_5678, 0x9abc_def0, 8, 4, 0);
        assert_eq!(r, 0x3456_789a);
        assert_eq!(f & CF, 0);
        // SHRD 32-bit: count 8 -> 0xf0123456, CF = bit 7 of dst = 0.
        let (r, f) = shrd(0x1234_5678, 0x9abc_def0, 8, 4, 0);
        assert_eq!(r, 0xf012_3456);
        assert_eq!(f & (CF | SF), SF);
        // SHLD 64-bit count 1: MSB of dst goes to CF, src MSB enters at bit 0.
        let (r, f) = shld(0x8000_0000_0000_0000, 0x8000_0000_0000_0000, 1, 8, 0);
        assert_eq!((r, f & (CF | OF | ZF)), (1, CF | OF));
        // SHRD 16-bit count 4.
        let (r, _) = shrd(0xabcd, 0x1234, 4, 2, 0);
        assert_eq!(r, 0x4abc);
        // Documented choice: 16-bit count 20 acts on dst:src:dst (48 bits).
        assert_eq!(shld(0xabcd, 0x1234, 20, 2, 0).0, 0x234a);
        assert_eq!(shrd(0xabcd, 0x1234, 20, 2, 0).0, 0xd123);
        // Masked count 0 leaves everything alone.
        assert_eq!(shld(0xabcd, 0x1234, 32, 2, CF), (0xabcd, CF));
    }

    #[test]
    fn multiply_divide_tables() {
        // MUL 8-bit 0x80 * 2 = 0x100: AL 0, AH 1, CF=OF=1.
        let (lo, hi, f) = mul(0x80, 2, 1, 0);
        assert_eq!((lo, hi, f & (CF | OF)), (0, 1, CF | OF));
        let (lo, hi, f) = mul(u64::MAX, u64::MAX, 8, 0);
        assert_eq!((lo, hi, f & (CF | OF)), (1, u64::MAX - 1, CF | OF));
        // IMUL 8-bit -1 * -1 = 1: fits.
        let (lo, hi, f) = imul(0xff, 0xff, 1, CF | OF);
        assert_eq!((lo, hi, f & (CF | OF)), (1, 0, 0));
        // IMUL 16-bit 0x4000 * 2 = 0x8000: does not fit signed.
        let (lo, hi, f) = imul(0x4000, 2, 2, 0);
        assert_eq!((lo, hi, f & (CF | OF)), (0x8000, 0, CF | OF));
        // IMUL 32-bit -2 * 3 = -6 -> EDX:EAX = ffffffff:fffffffa.
        let (lo, hi, _) = imul(0xffff_fffe, 3, 4, 0);
        assert_eq!((lo, hi), (0xffff_fffa, 0xffff_ffff));

        assert_eq!(div(0, 100, 7, 4), Some((14, 2)));
        assert_eq!(div(0, 1, 0, 2), None);
        assert_eq!(div(0x01, 0x00, 0x01, 1), None); // AX 0x100 / 1 = 0x100: does not fit AL
        assert_eq!(div(0x01, 0x00, 0x02, 1), Some((0x80, 0)));
        assert_eq!(div(1, 0, 2, 8), Some((1 << 63, 0)));
        assert_eq!(div(2, 0, 2, 8), None);
        // IDIV: -7 / 2 = -3 rem -1 (truncation).
        assert_eq!(idiv(0xffff_ffff, 0xffff_fff9, 2, 4), Some((0xffff_fffd, 0xffff_ffff)));
        // AX = -128 / -1 = 128: does not fit a signed byte.
        assert_eq!(idiv(0xff, 0x80, 0xff, 1), None);
        // AX = -256 / 2 = -128: fits.
        assert_eq!(idiv(0xff, 0x00, 0x02, 1), Some((0x80, 0)));
        // The i128 minimum divided by -1 must not panic.
        assert_eq!(idiv(1 << 63, 0, u64::MAX, 8), None);
        assert_eq!(idiv(0, 5, 0, 8), None);
    }

    #[test]
    fn bit_scans_and_bswap() {
        assert_eq!(bsf(0, 4, 0), (None, ZF));
        assert_eq!(bsf(0x10_0000_0000, 4, ZF), (None, ZF)); // bits above size ignored
        assert_eq!(bsf(0b1011000, 2, ZF | CF), (Some(3), CF));
        assert_eq!(bsr(0b1011000, 2, ZF), (Some(6), 0));
        assert_eq!(bsr(u64::MAX, 8, 0), (Some(63), 0));
        assert_eq!(bswap(0x1122_3344, 4), 0x4433_2211);
        assert_eq!(bswap(0x1122_3344_5566_7788, 8), 0x8877_6655_4433_2211);
        assert_eq!(bswap(0x1122, 2), 0);
    }

    #[test]
    fn conditions() {
        use ConditionCode as C;
        assert!(cond(C::None, 0));
        assert!(cond(C::e, ZF) && !cond(C::ne, ZF));
        assert!(cond(C::be, CF) && cond(C::be, ZF) && !cond(C::be, 0));
        assert!(cond(C::a, 0) && !cond(C::a, CF));
        assert!(cond(C::l, SF) && cond(C::l, OF) && !cond(C::l, SF | OF));
        assert!(cond(C::ge, SF | OF) && cond(C::ge, 0));
        assert!(cond(C::le, ZF) && cond(C::le, SF) && !cond(C::le, 0));
        assert!(cond(C::g, 0) && !cond(C::g, ZF) && !cond(C::g, OF));
        assert!(cond(C::p, PF) && cond(C::np, 0));
        assert!(cond(C::o, OF) && cond(C::no, 0));
        assert!(cond(C::s, SF) && cond(C::ns, 0));
        assert!(cond(C::b, CF) && cond(C::ae, 0));
        // Signed compare via SUB: 1 < 2, -1 < 1, 0x7f > 0x80 (127 > -128).
        let lt = |a, b| cond(C::l, sub(a, b, 1, 0).1);
        assert!(lt(1, 2) && lt(0xff, 1) && !lt(0x7f, 0x80));
    }

    #[test]
    fn bcd_adjusts() {
        // SDM DAA example: 0x79 + 0x35 = 0xae -> DAA -> 0x14, CF=1 (AF from the ADD was 0).
        let (ax, f) = daa(0x00ae, 0);
        assert_eq!((ax, f & (CF | AF)), (0x0014, CF | AF));
        // 0x38 + 0x39 = 0x71 with AF -> 0x77.
        let (ax, f) = daa(0x0071, AF);
        assert_eq!((ax, f & CF), (0x0077, 0));
        // SDM DAS example: 0x35 - 0x47 = 0xee (CF, AF) -> DAS -> 0x88, CF=1.
        let (ax, f) = das(0x00ee, CF | AF);
        assert_eq!((ax, f & (CF | SF)), (0x0088, CF | SF));
        // AAA: AL = 0x0b ('5'+'6' unpacked -> 0x0b) -> AX 0x0101, CF=AF=1.
        let (ax, f) = aaa(0x000b, 0);
        assert_eq!((ax, f & (CF | AF)), (0x0101, CF | AF));
        assert_eq!(aaa(0x0305, 0).0, 0x0305);
        // AAA with AL = 0xfa: AX + 0x106 carries into AH.
        assert_eq!(aaa(0x00fa, 0).0, 0x0200);
        // AAS: AX 0x0208 with AF -> AX - 6 = 0x0202, AH - 1 -> 0x0102.
        let (ax, f) = aas(0x0208, AF);
        assert_eq!((ax, f & (CF | AF)), (0x0102, CF | AF));
        // AAS: AL 0x00 with AF -> AX - 6 borrows from AH.
        assert_eq!(aas(0x0200, AF).0, 0x000a);
        // AAM 10: 63 -> AH 6, AL 3.
        assert_eq!(aam(63, 10, 0).map(|(ax, _)| ax), Some(0x0603));
        assert_eq!(aam(0, 10, 0).map(|(_, f)| f & ZF), Some(ZF));
        assert_eq!(aam(5, 0, 0), None);
        // AAD 10: AH 6 AL 3 -> 63.
        let (ax, f) = aad(0x0603, 10, 0);
        assert_eq!((ax, f & ZF), (63, 0));
        assert_eq!(aad(0x0000, 10, 0).1 & ZF, ZF);
    }
}
