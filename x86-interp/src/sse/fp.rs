//! IEEE-754 lane operations with SSE's MXCSR semantics: NaN propagation,
//! DAZ/FTZ, exception flags, and rounding control for conversions.
//!
//! Lanes are raw bit patterns (`u64`, the low 32 bits for single precision).
//! Arithmetic runs in f64 (single-precision operands convert exactly); a
//! single-precision result is then rounded once more to f32, which is still
//! correctly rounded for + - * / sqrt because 53 >= 2*24 + 2.
//!
//! Rounding: arithmetic results honour MXCSR.RC; the direction of the
//! rounding error comes from error-free transformations (TwoSum, FMA
//! remainders). Inexact/underflow detection is exact except for f64
//! products, quotients and roots whose exact value lies below 2^-969, where
//! the FMA check can itself underflow (PE and the directed-rounding nudge may
//! then be missed). Tininess is detected after rounding.

/// MXCSR bits (SDM vol. 1, 10.2.3).
pub mod mxcsr {
    pub const IE: u32 = 1 << 0;
    pub const DE: u32 = 1 << 1;
    pub const ZE: u32 = 1 << 2;
    pub const OE: u32 = 1 << 3;
    pub const UE: u32 = 1 << 4;
    pub const PE: u32 = 1 << 5;
    pub const DAZ: u32 = 1 << 6;
    pub const UM: u32 = 1 << 11;
    pub const RC_SHIFT: u32 = 13;
    pub const FZ: u32 = 1 << 15;
    /// The MXCSR bits this CPU implements (also the reported MXCSR_MASK).
    pub const MASK: u32 = 0xffff;
}

use mxcsr::*;

/// Rounding control (MXCSR.RC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    Nearest,
    Down,
    Up,
    Zero,
}

/// Lane precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prec {
    S,
    D,
}

impl Prec {
    pub fn width(self) -> u32 {
        match self {
            Prec::S => 32,
            Prec::D => 64,
        }
    }
    fn mant_bits(self) -> u32 {
        match self {
            Prec::S => 23,
            Prec::D => 52,
        }
    }
    fn exp_mask(self) -> u64 {
        match self {
            Prec::S => 0x7f80_0000,
            Prec::D => 0x7ff0_0000_0000_0000,
        }
    }
    fn mant_mask(self) -> u64 {
        (1u64 << self.mant_bits()) - 1
    }
    pub fn sign_bit(self) -> u64 {
        1u64 << (self.width() - 1)
    }
    fn quiet_bit(self) -> u64 {
        1u64 << (self.mant_bits() - 1)
    }
    pub fn is_nan(self, x: u64) -> bool {
        x & self.exp_mask() == self.exp_mask() && x & self.mant_mask() != 0
    }
    pub fn is_snan(self, x: u64) -> bool {
        self.is_nan(x) && x & self.quiet_bit() == 0
    }
    fn is_denormal(self, x: u64) -> bool {
        x & self.exp_mask() == 0 && x & self.mant_mask() != 0
    }
    fn quiet(self, x: u64) -> u64 {
        x | self.quiet_bit()
    }
    /// The default NaN ("real indefinite"): negative quiet NaN.
    pub fn indefinite(self) -> u64 {
        self.exp_mask() | self.quiet_bit() | self.sign_bit()
    }
    /// The exact f64 value of a (non-NaN) lane.
    pub fn to_f64(self, x: u64) -> f64 {
        match self {
            Prec::S => f32::from_bits(x as u32) as f64,
            Prec::D => f64::from_bits(x),
        }
    }
}

/// The MXCSR in effect for one instruction plus the flags it raised.
pub struct Env {
    mxcsr: u32,
    raised: u32,
}

impl Env {
    pub fn new(mxcsr: u32) -> Self {
        Env { mxcsr, raised: 0 }
    }

    pub fn round(&self) -> Round {
        match (self.mxcsr >> RC_SHIFT) & 3 {
            0 => Round::Nearest,
            1 => Round::Down,
            2 => Round::Up,
            _ => Round::Zero,
        }
    }

    /// Merge the raised flags into MXCSR; true when one of them is unmasked
    /// (the instruction then faults and writes no result).
    pub fn finish(self, mxcsr: &mut u32) -> bool {
        *mxcsr |= self.raised;
        let unmasked = !(self.mxcsr >> 7) & 0x3f;
        self.raised & unmasked != 0
    }

    /// A source operand after DAZ; a denormal raises DE unless DAZ is set.
    /// `de` says whether this instruction reports DE at all.
    pub fn operand(&mut self, p: Prec, x: u64, de: bool) -> u64 {
        if p.is_denormal(x) {
            if self.mxcsr & DAZ != 0 {
                return x & p.sign_bit();
            }
            if de {
                self.raised |= DE;
            }
        }
        x
    }

    /// Round an f64 value to `p` in mode `rc` and raise OE/UE/PE, applying
    /// FTZ. `err` has the sign of (exact value - v), the f64 computation's
    /// own rounding error (0 when v is exact). Operands must be finite.
    fn finish_value(&mut self, p: Prec, v: f64, err: f64, rc: Round) -> u64 {
        let (rn, e) = match p {
            Prec::S => {
                let r = v as f32;
                let d = (r as f64) - v;
                // Sign of (exact - r): from the narrowing unless it was exact.
                (r.to_bits() as u64, if d != 0.0 { -d } else { err })
            }
            Prec::D => (v.to_bits(), err),
        };
        let inexact = e != 0.0;
        let mag = rn & !p.sign_bit();
        if mag == p.exp_mask() {
            // Round-to-nearest overflowed from finite operands.
            self.raised |= OE | PE;
            return nudge(p, rn, e, rc);
        }
        if mag < (1u64 << p.mant_bits()) && (v != 0.0 || inexact) {
            let um_masked = self.mxcsr & UM != 0;
            if inexact || !um_masked {
                self.raised |= UE;
            }
            if self.mxcsr & FZ != 0 && um_masked {
                self.raised |= UE | PE;
                return rn & p.sign_bit();
            }
        }
        if inexact {
            self.raised |= PE;
        }
        nudge(p, rn, e, rc)
    }
}

/// Adjust a round-to-nearest result `r` for a directed rounding mode: `err`
/// has the sign of (exact - r); move one ulp when the exact value lies on
/// the side the mode rounds toward.
fn nudge(p: Prec, r: u64, err: f64, rc: Round) -> u64 {
    if err == 0.0 || p.is_nan(r) {
        return r;
    }
    let neg = r & p.sign_bit() != 0;
    let up = match rc {
        Round::Up if err > 0.0 => true,
        Round::Down if err < 0.0 => false,
        Round::Zero if !neg && err < 0.0 => false,
        Round::Zero if neg && err > 0.0 => true,
        _ => return r,
    };
    let mag = r & !p.sign_bit();
    if up != neg {
        // Away from zero (an infinity cannot be exceeded).
        (r & p.sign_bit()) | (mag + 1).min(p.exp_mask())
    } else if mag == 0 {
        // Past zero: the smallest subnormal of the other sign.
        (r ^ p.sign_bit()) | 1
    } else {
        (r & p.sign_bit()) | (mag - 1)
    }
}

/// Sign of the error of s = a + b (exact - s), by TwoSum.
fn add_err(a: f64, b: f64, s: f64) -> f64 {
    if !s.is_finite() {
        return -s; // overflow: the exact value is below +inf / above -inf
    }
    let bb = s - a;
    (a - (s - bb)) + (b - bb)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

/// One lane of ADD/SUB/MUL/DIV (SDM vol. 1, 4.8.3 and table 4-7).
pub fn arith(env: &mut Env, op: Arith, p: Prec, a: u64, b: u64) -> u64 {
    if p.is_nan(a) || p.is_nan(b) {
        if p.is_snan(a) || p.is_snan(b) {
            env.raised |= IE;
        }
        return if p.is_nan(a) { p.quiet(a) } else { p.quiet(b) };
    }
    let a = env.operand(p, a, true);
    let b = env.operand(p, b, true);
    let (x, y) = (p.to_f64(a), p.to_f64(b));
    let invalid = match op {
        Arith::Add => x.is_infinite() && y.is_infinite() && x.signum() != y.signum(),
        Arith::Sub => x.is_infinite() && y.is_infinite() && x.signum() == y.signum(),
        Arith::Mul => (x == 0.0 && y.is_infinite()) || (x.is_infinite() && y == 0.0),
        Arith::Div => (x == 0.0 && y == 0.0) || (x.is_infinite() && y.is_infinite()),
    };
    if invalid {
        env.raised |= IE;
        return p.indefinite();
    }
    if op == Arith::Div && y == 0.0 && x.is_finite() {
        env.raised |= ZE;
    }
    let (v, err) = match op {
        Arith::Add => {
            let s = x + y;
            (s, add_err(x, y, s))
        }
        Arith::Sub => {
            let s = x - y;
            (s, add_err(x, -y, s))
        }
        Arith::Mul => {
            let m = x * y;
            let e = if !m.is_finite() {
                -m
            } else if x == 0.0 || y == 0.0 {
                0.0
            } else if m == 0.0 {
                x * y.signum() // underflowed to zero: the exact value has x*y's sign
            } else {
                x.mul_add(y, -m)
            };
            (m, e)
        }
        Arith::Div => {
            let q = x / y;
            let e = if !q.is_finite() {
                -q
            } else if x == 0.0 || y.is_infinite() {
                0.0
            } else if q == 0.0 {
                x * y.signum()
            } else {
                // exact - q = r / y with r = x - q*y (exact by FMA).
                (-q).mul_add(y, x) * y.signum()
            };
            (q, e)
        }
    };
    if x.is_infinite() || y.is_infinite() || (op == Arith::Div && y == 0.0) {
        // Infinite operands and x/0 give exact infinities/zeros: no OE/PE.
        return match p {
            Prec::S => (v as f32).to_bits() as u64,
            Prec::D => v.to_bits(),
        };
    }
    env.finish_value(p, v, err, env.round())
}

/// SQRTPS/PD/SS/SD lane.
pub fn sqrt(env: &mut Env, p: Prec, a: u64) -> u64 {
    if p.is_nan(a) {
        if p.is_snan(a) {
            env.raised |= IE;
        }
        return p.quiet(a);
    }
    let a = env.operand(p, a, true);
    let x = p.to_f64(a);
    if x < 0.0 {
        env.raised |= IE;
        return p.indefinite();
    }
    if x == 0.0 || x.is_infinite() {
        return a; // sqrt(+-0) = +-0, sqrt(+inf) = +inf, exactly
    }
    let s = x.sqrt();
    let err = -(s.mul_add(s, -x)); // exact - s has the sign of x - s*s
    env.finish_value(p, s, err, env.round())
}

/// MIN/MAX lane: SRC1 < SRC2 ? SRC1 : SRC2 (resp. >), so NaNs and equal
/// zeros return the second operand; any NaN raises IE.
pub fn minmax(env: &mut Env, max: bool, p: Prec, a: u64, b: u64) -> u64 {
    if p.is_nan(a) || p.is_nan(b) {
        env.raised |= IE;
        return b;
    }
    let a = env.operand(p, a, true);
    let b = env.operand(p, b, true);
    let (x, y) = (p.to_f64(a), p.to_f64(b));
    let pick_a = if max { x > y } else { x < y };
    if pick_a {
        a
    } else {
        b
    }
}

/// CMPPS/PD/SS/SD predicate 0-7 (imm8 bits 2:0). LT/LE/NLT/NLE signal
/// on QNaN; every predicate signals on SNaN.
pub fn compare(env: &mut Env, p: Prec, a: u64, b: u64, pred: u8) -> bool {
    let pred = pred & 7;
    let unordered = p.is_nan(a) || p.is_nan(b);
    if unordered {
        let signalling_pred = matches!(pred, 1 | 2 | 5 | 6);
        if p.is_snan(a) || p.is_snan(b) || signalling_pred {
            env.raised |= IE;
        }
    }
    let a = env.operand(p, a, true);
    let b = env.operand(p, b, true);
    let (x, y) = (p.to_f64(a), p.to_f64(b));
    match pred {
        0 => x == y,
        1 => x < y,
        2 => x <= y,
        3 => unordered,
        4 => x != y,
        5 => unordered || x >= y,
        6 => unordered || x > y,
        _ => !unordered,
    }
}

/// COMIS/UCOMIS: Some(ordering) or None for unordered. COMIS signals on
/// any NaN, UCOMIS only on SNaN.
pub fn comis(env: &mut Env, p: Prec, a: u64, b: u64, signalling: bool) -> Option<core::cmp::Ordering> {
    if p.is_nan(a) || p.is_nan(b) {
        if signalling || p.is_snan(a) || p.is_snan(b) {
            env.raised |= IE;
        }
        return None;
    }
    let a = env.operand(p, a, true);
    let b = env.operand(p, b, true);
    p.to_f64(a).partial_cmp(&p.to_f64(b))
}

/// Float to float (CVTSS2SD, CVTSD2SS, CVTPS2PD, CVTPD2PS).
pub fn convert(env: &mut Env, from: Prec, to: Prec, a: u64) -> u64 {
    if from.is_nan(a) {
        if from.is_snan(a) {
            env.raised |= IE;
        }
        // Keep sign and the top payload bits, quieted.
        let sign = if a & from.sign_bit() != 0 { to.sign_bit() } else { 0 };
        let payload = a & from.mant_mask();
        let payload = match (from, to) {
            (Prec::S, Prec::D) => payload << 29,
            (Prec::D, Prec::S) => payload >> 29,
            _ => payload,
        };
        return sign | to.exp_mask() | to.quiet_bit() | payload;
    }
    let a = env.operand(from, a, true);
    let x = from.to_f64(a);
    match to {
        Prec::D => x.to_bits(),
        Prec::S if x.is_infinite() || x == 0.0 => (x as f32).to_bits() as u64,
        Prec::S => env.finish_value(Prec::S, x, 0.0, env.round()),
    }
}

/// Float to signed integer of `bits` (32/64) with rounding (`truncate` for
/// CVTT*). NaN or out of range: IE and the integer indefinite 1 << (bits-1).
/// Inexact: PE. No DE is reported (SDM: conversions to integer raise only
/// invalid and precision).
pub fn to_int(env: &mut Env, p: Prec, a: u64, bits: u32, truncate: bool) -> u64 {
    let indefinite = 1u64 << (bits - 1);
    if p.is_nan(a) {
        env.raised |= IE;
        return indefinite;
    }
    let a = env.operand(p, a, false);
    let x = p.to_f64(a);
    let rc = if truncate { Round::Zero } else { env.round() };
    let r = match rc {
        Round::Nearest => x.round_ties_even(),
        Round::Down => x.floor(),
        Round::Up => x.ceil(),
        Round::Zero => x.trunc(),
    };
    let limit = (1u64 << (bits - 1)) as f64; // 2^(bits-1), exact
    if !(r >= -limit && r < limit) {
        env.raised |= IE;
        return indefinite;
    }
    if r != x {
        env.raised |= PE;
    }
    (r as i64 as u64) & (u64::MAX >> (64 - bits))
}

/// Signed integer to float, rounded per MXCSR.RC (CVTSI2SS/SD, CVTDQ2PS/PD).
pub fn from_int(env: &mut Env, p: Prec, v: i64) -> u64 {
    if v == 0 {
        return 0;
    }
    let neg = v < 0;
    let mag = v.unsigned_abs();
    let top = 63 - mag.leading_zeros(); // exponent of the leading bit
    let mb = p.mant_bits();
    let sign = if neg { p.sign_bit() } else { 0 };
    let bias = match p {
        Prec::S => 127u64,
        Prec::D => 1023,
    };
    let (mut kept, mut exp) = if top <= mb { (mag << (mb - top), top) } else { (mag >> (top - mb), top) };
    if top > mb {
        let shift = top - mb;
        let rem = mag & ((1u64 << shift) - 1);
        let half = 1u64 << (shift - 1);
        if rem != 0 {
            env.raised |= PE;
            let up = match env.round() {
                Round::Nearest => rem > half || (rem == half && kept & 1 == 1),
                Round::Down => neg,
                Round::Up => !neg,
                Round::Zero => false,
            };
            if up {
                kept += 1;
                if kept == 1u64 << (mb + 1) {
                    kept >>= 1;
                    exp += 1;
                }
            }
        }
    }
    sign | ((exp as u64 + bias) << mb) | (kept & p.mant_mask())
}

/// RCPPS/RCPSS and RSQRTPS/RSQRTSS lane. Hardware gives a 12-bit
/// approximation (relative error <= 1.5*2^-12); this returns the correctly
/// rounded f32 value, which is within that bound and deterministic.
/// Denormal inputs count as zero and tiny results flush to zero, as on
/// hardware; no exceptions are raised.
pub fn approx(rsqrt: bool, a: u32) -> u32 {
    let p = Prec::S;
    if p.is_nan(a as u64) {
        return p.quiet(a as u64) as u32;
    }
    let a = if p.is_denormal(a as u64) { a & 0x8000_0000 } else { a };
    let x = f32::from_bits(a) as f64;
    let r = if rsqrt {
        if x < 0.0 {
            return p.indefinite() as u32;
        }
        1.0 / x.sqrt()
    } else {
        1.0 / x
    };
    let r = r as f32;
    if r.is_subnormal() {
        return r.to_bits() & 0x8000_0000;
    }
    r.to_bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env::new(0x1f80)
    }

    #[test]
    fn nudge_moves_one_ulp_in_the_right_direction() {
        let one = 1.0f64.to_bits();
        assert_eq!(nudge(Prec::D, one, 1e-30, Round::Up), one + 1);
        assert_eq!(nudge(Prec::D, one, -1e-30, Round::Up), one);
        assert_eq!(nudge(Prec::D, one, -1e-30, Round::Down), one - 1);
        assert_eq!(nudge(Prec::D, one, -1e-30, Round::Zero), one - 1);
        assert_eq!(nudge(Prec::D, one, 1e-30, Round::Zero), one);
        let m1 = (-1.0f64).to_bits();
        assert_eq!(nudge(Prec::D, m1, 1e-30, Round::Zero), m1 - 1); // -1 + tiny -> toward zero
        assert_eq!(nudge(Prec::D, m1, -1e-30, Round::Down), m1 + 1); // more negative
    }

    #[test]
    fn from_int_rounds_per_rc() {
        // 2^24 + 1 is not representable in f32: RN ties to even -> 2^24.
        let v = (1i64 << 24) + 1;
        let mut e = env();
        assert_eq!(from_int(&mut e, Prec::S, v) as u32, 0x4b80_0000);
        assert_eq!(e.raised, PE);
        let mut e = Env::new(0x1f80 | (2 << RC_SHIFT));
        assert_eq!(from_int(&mut e, Prec::S, v) as u32, 0x4b80_0001);
        assert_eq!(from_int(&mut env(), Prec::D, -1), 0xbff0_0000_0000_0000);
        assert_eq!(from_int(&mut env(), Prec::D, i64::MIN), 0xc3e0_0000_0000_0000);
    }
}
