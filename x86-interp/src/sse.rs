//! SSE/SSE2 instruction semantics (the x86-64 baseline that gcc and rustc
//! emit) and the FXSAVE image.
//!
//! `exec` is pure: the engine loads the operands, calls it, and writes the
//! result back (see `exec_src` for the operand convention). Legacy-SSE MMX
//! forms (`mm` registers) are not supported and report `Unsupported` (#UD).

mod fp;
mod fxsave;
mod packed;

pub use fp::mxcsr;
pub use fxsave::{fxrstor, fxsave, fxsave_len};

use fp::{Arith, Env, Prec};
use iced_x86::Code;
use packed::ShiftKind;
use sim_core::state::rflags::{CF, PF, ZF};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdError {
    /// Not implemented here: the engine raises #UD.
    Unsupported,
    /// An unmasked SIMD floating-point exception (#XM, or #UD when
    /// CR4.OSXMMEXCPT is clear). MXCSR already holds the raised flags and
    /// the destination must not be written.
    Exception,
}

const LO32: u128 = 0xffff_ffff;
const LO64: u128 = u64::MAX as u128;
const HI64: u128 = !LO64;

/// Whether `exec` implements `code` (COMISS/UCOMISS/COMISD/UCOMISD are
/// handled by `comis` instead and report false).
pub fn supports(code: Code) -> bool {
    // With every exception masked `exec` can only fail with Unsupported, so
    // this can never disagree with the dispatch below.
    let mut mxcsr = 0x1f80;
    exec(code, 0, 0, 0, &mut mxcsr).is_ok()
}

/// `exec_src` for a register source. Correct for every code except the
/// MOVSS/MOVSD loads `Movss_xmm_xmmm32` / `Movsd_xmm_xmmm64`, whose memory
/// form zeroes the upper destination bits: call `exec_src` for those.
pub fn exec(code: Code, dst: u128, src: u128, imm: u8, mxcsr: &mut u32) -> Result<u128, SimdError> {
    exec_src(code, dst, src, false, imm, mxcsr)
}

/// Execute one SSE/SSE2 instruction.
/// - `dst`: the old destination (operand 0): an XMM register's 128 bits, a
///   GPR zero-extended, or the `memory_size().size()` bytes of a memory
///   destination zero-extended.
/// - `src`: operand 1 likewise (for `xmm, imm8` shift forms it is unused).
/// - `src_is_mem`: whether operand 1 is memory (matters only for the MOVSS
///   and MOVSD loads).
/// - `imm`: the imm8 if the instruction has one.
///
/// The result is the new value of operand 0: all 128 bits for an XMM
/// register (merging is done here), the low 32/64 bits for a GPR, the low
/// `memory_size().size()` bytes for memory. MXCSR receives the raised
/// exception flags; `Err(Exception)` when one of them is unmasked.
pub fn exec_src(
    code: Code,
    dst: u128,
    src: u128,
    src_is_mem: bool,
    imm: u8,
    mxcsr: &mut u32,
) -> Result<u128, SimdError> {
    use Code as C;
    let (d, s) = (dst, src);
    let mut env = Env::new(*mxcsr);
    let e = &mut env;
    let r = match code {
        // Whole-register moves, loads and stores.
        C::Movaps_xmm_xmmm128
        | C::Movapd_xmm_xmmm128
        | C::Movups_xmm_xmmm128
        | C::Movupd_xmm_xmmm128
        | C::Movdqa_xmm_xmmm128
        | C::Movdqu_xmm_xmmm128
        | C::Movaps_xmmm128_xmm
        | C::Movapd_xmmm128_xmm
        | C::Movups_xmmm128_xmm
        | C::Movupd_xmmm128_xmm
        | C::Movdqa_xmmm128_xmm
        | C::Movdqu_xmmm128_xmm
        | C::Movntps_m128_xmm
        | C::Movntpd_m128_xmm
        | C::Movntdq_m128_xmm => s,
        // MOVSS/MOVSD: a load from memory zeroes the rest, a register move
        // or a store merges.
        C::Movss_xmm_xmmm32 if src_is_mem => s & LO32,
        C::Movsd_xmm_xmmm64 if src_is_mem => s & LO64,
        C::Movss_xmm_xmmm32 | C::Movss_xmmm32_xmm => (d & !LO32) | (s & LO32),
        C::Movsd_xmm_xmmm64 | C::Movsd_xmmm64_xmm => (d & HI64) | (s & LO64),
        C::Movd_xmm_rm32 | C::Movd_rm32_xmm => s & LO32,
        C::Movq_xmm_rm64 | C::Movq_rm64_xmm | C::Movq_xmm_xmmm64 | C::Movq_xmmm64_xmm => s & LO64,
        C::Movlps_xmm_m64 | C::Movlpd_xmm_m64 => (d & HI64) | (s & LO64),
        C::Movlps_m64_xmm | C::Movlpd_m64_xmm => s & LO64,
        C::Movhps_xmm_m64 | C::Movhpd_xmm_m64 | C::Movlhps_xmm_xmm => (d & LO64) | (s << 64),
        C::Movhps_m64_xmm | C::Movhpd_m64_xmm => s >> 64,
        C::Movhlps_xmm_xmm => (d & HI64) | (s >> 64),
        C::Movmskps_r32_xmm | C::Movmskps_r64_xmm => packed::movmsk(s, 32),
        C::Movmskpd_r32_xmm | C::Movmskpd_r64_xmm => packed::movmsk(s, 64),
        C::Pmovmskb_r32_xmm | C::Pmovmskb_r64_xmm => packed::movmsk(s, 8),

        // Floating-point arithmetic.
        C::Addps_xmm_xmmm128 => fp_packed(e, Prec::S, d, s, |e, x, y| fp::arith(e, Arith::Add, Prec::S, x, y)),
        C::Addpd_xmm_xmmm128 => fp_packed(e, Prec::D, d, s, |e, x, y| fp::arith(e, Arith::Add, Prec::D, x, y)),
        C::Addss_xmm_xmmm32 => fp_scalar(e, Prec::S, d, s, |e, x, y| fp::arith(e, Arith::Add, Prec::S, x, y)),
        C::Addsd_xmm_xmmm64 => fp_scalar(e, Prec::D, d, s, |e, x, y| fp::arith(e, Arith::Add, Prec::D, x, y)),
        C::Subps_xmm_xmmm128 => fp_packed(e, Prec::S, d, s, |e, x, y| fp::arith(e, Arith::Sub, Prec::S, x, y)),
        C::Subpd_xmm_xmmm128 => fp_packed(e, Prec::D, d, s, |e, x, y| fp::arith(e, Arith::Sub, Prec::D, x, y)),
        C::Subss_xmm_xmmm32 => fp_scalar(e, Prec::S, d, s, |e, x, y| fp::arith(e, Arith::Sub, Prec::S, x, y)),
        C::Subsd_xmm_xmmm64 => fp_scalar(e, Prec::D, d, s, |e, x, y| fp::arith(e, Arith::Sub, Prec::D, x, y)),
        C::Mulps_xmm_xmmm128 => fp_packed(e, Prec::S, d, s, |e, x, y| fp::arith(e, Arith::Mul, Prec::S, x, y)),
        C::Mulpd_xmm_xmmm128 => fp_packed(e, Prec::D, d, s, |e, x, y| fp::arith(e, Arith::Mul, Prec::D, x, y)),
        C::Mulss_xmm_xmmm32 => fp_scalar(e, Prec::S, d, s, |e, x, y| fp::arith(e, Arith::Mul, Prec::S, x, y)),
        C::Mulsd_xmm_xmmm64 => fp_scalar(e, Prec::D, d, s, |e, x, y| fp::arith(e, Arith::Mul, Prec::D, x, y)),
        C::Divps_xmm_xmmm128 => fp_packed(e, Prec::S, d, s, |e, x, y| fp::arith(e, Arith::Div, Prec::S, x, y)),
        C::Divpd_xmm_xmmm128 => fp_packed(e, Prec::D, d, s, |e, x, y| fp::arith(e, Arith::Div, Prec::D, x, y)),
        C::Divss_xmm_xmmm32 => fp_scalar(e, Prec::S, d, s, |e, x, y| fp::arith(e, Arith::Div, Prec::S, x, y)),
        C::Divsd_xmm_xmmm64 => fp_scalar(e, Prec::D, d, s, |e, x, y| fp::arith(e, Arith::Div, Prec::D, x, y)),
        C::Minps_xmm_xmmm128 => fp_packed(e, Prec::S, d, s, |e, x, y| fp::minmax(e, false, Prec::S, x, y)),
        C::Minpd_xmm_xmmm128 => fp_packed(e, Prec::D, d, s, |e, x, y| fp::minmax(e, false, Prec::D, x, y)),
        C::Minss_xmm_xmmm32 => fp_scalar(e, Prec::S, d, s, |e, x, y| fp::minmax(e, false, Prec::S, x, y)),
        C::Minsd_xmm_xmmm64 => fp_scalar(e, Prec::D, d, s, |e, x, y| fp::minmax(e, false, Prec::D, x, y)),
        C::Maxps_xmm_xmmm128 => fp_packed(e, Prec::S, d, s, |e, x, y| fp::minmax(e, true, Prec::S, x, y)),
        C::Maxpd_xmm_xmmm128 => fp_packed(e, Prec::D, d, s, |e, x, y| fp::minmax(e, true, Prec::D, x, y)),
        C::Maxss_xmm_xmmm32 => fp_scalar(e, Prec::S, d, s, |e, x, y| fp::minmax(e, true, Prec::S, x, y)),
        C::Maxsd_xmm_xmmm64 => fp_scalar(e, Prec::D, d, s, |e, x, y| fp::minmax(e, true, Prec::D, x, y)),
        // Unary ops read only the source.
        C::Sqrtps_xmm_xmmm128 => fp_packed(e, Prec::S, s, 0, |e, x, _| fp::sqrt(e, Prec::S, x)),
        C::Sqrtpd_xmm_xmmm128 => fp_packed(e, Prec::D, s, 0, |e, x, _| fp::sqrt(e, Prec::D, x)),
        C::Sqrtss_xmm_xmmm32 => fp_scalar(e, Prec::S, d, s, |e, _, y| fp::sqrt(e, Prec::S, y)),
        C::Sqrtsd_xmm_xmmm64 => fp_scalar(e, Prec::D, d, s, |e, _, y| fp::sqrt(e, Prec::D, y)),
        C::Rcpps_xmm_xmmm128 => packed::map2(s, 0, 32, |x, _| fp::approx(false, x as u32) as u64),
        C::Rsqrtps_xmm_xmmm128 => packed::map2(s, 0, 32, |x, _| fp::approx(true, x as u32) as u64),
        C::Rcpss_xmm_xmmm32 => (d & !LO32) | fp::approx(false, s as u32) as u128,
        C::Rsqrtss_xmm_xmmm32 => (d & !LO32) | fp::approx(true, s as u32) as u128,
        C::Cmpps_xmm_xmmm128_imm8 => fp_packed(e, Prec::S, d, s, |e, x, y| mask_of(fp::compare(e, Prec::S, x, y, imm))),
        C::Cmppd_xmm_xmmm128_imm8 => fp_packed(e, Prec::D, d, s, |e, x, y| mask_of(fp::compare(e, Prec::D, x, y, imm))),
        C::Cmpss_xmm_xmmm32_imm8 => fp_scalar(e, Prec::S, d, s, |e, x, y| mask_of(fp::compare(e, Prec::S, x, y, imm))),
        C::Cmpsd_xmm_xmmm64_imm8 => fp_scalar(e, Prec::D, d, s, |e, x, y| mask_of(fp::compare(e, Prec::D, x, y, imm))),

        // Bitwise logic.
        C::Andps_xmm_xmmm128 | C::Andpd_xmm_xmmm128 | C::Pand_xmm_xmmm128 => d & s,
        C::Andnps_xmm_xmmm128 | C::Andnpd_xmm_xmmm128 | C::Pandn_xmm_xmmm128 => !d & s,
        C::Orps_xmm_xmmm128 | C::Orpd_xmm_xmmm128 | C::Por_xmm_xmmm128 => d | s,
        C::Xorps_xmm_xmmm128 | C::Xorpd_xmm_xmmm128 | C::Pxor_xmm_xmmm128 => d ^ s,

        // Conversions.
        C::Cvtsi2ss_xmm_rm32 => (d & !LO32) | fp::from_int(e, Prec::S, s as i32 as i64) as u128,
        C::Cvtsi2ss_xmm_rm64 => (d & !LO32) | fp::from_int(e, Prec::S, s as i64) as u128,
        C::Cvtsi2sd_xmm_rm32 => (d & HI64) | fp::from_int(e, Prec::D, s as i32 as i64) as u128,
        C::Cvtsi2sd_xmm_rm64 => (d & HI64) | fp::from_int(e, Prec::D, s as i64) as u128,
        C::Cvtss2si_r32_xmmm32 => fp::to_int(e, Prec::S, s as u32 as u64, 32, false) as u128,
        C::Cvtss2si_r64_xmmm32 => fp::to_int(e, Prec::S, s as u32 as u64, 64, false) as u128,
        C::Cvttss2si_r32_xmmm32 => fp::to_int(e, Prec::S, s as u32 as u64, 32, true) as u128,
        C::Cvttss2si_r64_xmmm32 => fp::to_int(e, Prec::S, s as u32 as u64, 64, true) as u128,
        C::Cvtsd2si_r32_xmmm64 => fp::to_int(e, Prec::D, s as u64, 32, false) as u128,
        C::Cvtsd2si_r64_xmmm64 => fp::to_int(e, Prec::D, s as u64, 64, false) as u128,
        C::Cvttsd2si_r32_xmmm64 => fp::to_int(e, Prec::D, s as u64, 32, true) as u128,
        C::Cvttsd2si_r64_xmmm64 => fp::to_int(e, Prec::D, s as u64, 64, true) as u128,
        C::Cvtss2sd_xmm_xmmm32 => (d & HI64) | fp::convert(e, Prec::S, Prec::D, s as u32 as u64) as u128,
        C::Cvtsd2ss_xmm_xmmm64 => (d & !LO32) | fp::convert(e, Prec::D, Prec::S, s as u64) as u128,
        C::Cvtps2pd_xmm_xmmm64 => {
            let lo = fp::convert(e, Prec::S, Prec::D, s as u32 as u64);
            let hi = fp::convert(e, Prec::S, Prec::D, (s >> 32) as u32 as u64);
            lo as u128 | (hi as u128) << 64
        }
        C::Cvtpd2ps_xmm_xmmm128 => {
            let lo = fp::convert(e, Prec::D, Prec::S, s as u64);
            let hi = fp::convert(e, Prec::D, Prec::S, (s >> 64) as u64);
            lo as u128 | (hi as u128) << 32
        }
        C::Cvtdq2ps_xmm_xmmm128 => packed::map2(s, 0, 32, |x, _| fp::from_int(e, Prec::S, x as i32 as i64)),
        C::Cvtdq2pd_xmm_xmmm64 => {
            let lo = fp::from_int(e, Prec::D, s as i32 as i64);
            let hi = fp::from_int(e, Prec::D, (s >> 32) as i32 as i64);
            lo as u128 | (hi as u128) << 64
        }
        C::Cvtps2dq_xmm_xmmm128 => packed::map2(s, 0, 32, |x, _| fp::to_int(e, Prec::S, x, 32, false)),
        C::Cvttps2dq_xmm_xmmm128 => packed::map2(s, 0, 32, |x, _| fp::to_int(e, Prec::S, x, 32, true)),
        C::Cvtpd2dq_xmm_xmmm128 | C::Cvttpd2dq_xmm_xmmm128 => {
            let t = code == C::Cvttpd2dq_xmm_xmmm128;
            let lo = fp::to_int(e, Prec::D, s as u64, 32, t);
            let hi = fp::to_int(e, Prec::D, (s >> 64) as u64, 32, t);
            lo as u128 | (hi as u128) << 32
        }

        // Shuffles and interleaves.
        C::Shufps_xmm_xmmm128_imm8 => {
            let pick = |v: u128, k: u32| packed::lane(v, 32, ((imm >> (2 * k)) & 3) as u32) as u128;
            pick(d, 0) | pick(d, 1) << 32 | pick(s, 2) << 64 | pick(s, 3) << 96
        }
        C::Shufpd_xmm_xmmm128_imm8 => {
            packed::lane(d, 64, (imm & 1) as u32) as u128 | (packed::lane(s, 64, ((imm >> 1) & 1) as u32) as u128) << 64
        }
        C::Unpcklps_xmm_xmmm128 | C::Punpckldq_xmm_xmmm128 => packed::unpack(d, s, 32, false),
        C::Unpckhps_xmm_xmmm128 | C::Punpckhdq_xmm_xmmm128 => packed::unpack(d, s, 32, true),
        C::Unpcklpd_xmm_xmmm128 | C::Punpcklqdq_xmm_xmmm128 => packed::unpack(d, s, 64, false),
        C::Unpckhpd_xmm_xmmm128 | C::Punpckhqdq_xmm_xmmm128 => packed::unpack(d, s, 64, true),
        C::Punpcklbw_xmm_xmmm128 => packed::unpack(d, s, 8, false),
        C::Punpckhbw_xmm_xmmm128 => packed::unpack(d, s, 8, true),
        C::Punpcklwd_xmm_xmmm128 => packed::unpack(d, s, 16, false),
        C::Punpckhwd_xmm_xmmm128 => packed::unpack(d, s, 16, true),
        C::Packsswb_xmm_xmmm128 => packed::pack(d, s, 16, false),
        C::Packssdw_xmm_xmmm128 => packed::pack(d, s, 32, false),
        C::Packuswb_xmm_xmmm128 => packed::pack(d, s, 16, true),
        C::Pshufd_xmm_xmmm128_imm8 => packed::shuffle(s, 32, 4, 0, imm),
        C::Pshuflw_xmm_xmmm128_imm8 => packed::shuffle(s, 16, 4, 0, imm) | (s & HI64),
        C::Pshufhw_xmm_xmmm128_imm8 => packed::shuffle(s, 16, 4, 4, imm) | (s & LO64),

        // Packed integer arithmetic.
        C::Paddb_xmm_xmmm128 => packed::add(d, s, 8),
        C::Paddw_xmm_xmmm128 => packed::add(d, s, 16),
        C::Paddd_xmm_xmmm128 => packed::add(d, s, 32),
        C::Paddq_xmm_xmmm128 => packed::add(d, s, 64),
        C::Psubb_xmm_xmmm128 => packed::sub(d, s, 8),
        C::Psubw_xmm_xmmm128 => packed::sub(d, s, 16),
        C::Psubd_xmm_xmmm128 => packed::sub(d, s, 32),
        C::Psubq_xmm_xmmm128 => packed::sub(d, s, 64),
        C::Paddsb_xmm_xmmm128 => packed::adds(d, s, 8),
        C::Paddsw_xmm_xmmm128 => packed::adds(d, s, 16),
        C::Paddusb_xmm_xmmm128 => packed::addus(d, s, 8),
        C::Paddusw_xmm_xmmm128 => packed::addus(d, s, 16),
        C::Psubsb_xmm_xmmm128 => packed::subs(d, s, 8),
        C::Psubsw_xmm_xmmm128 => packed::subs(d, s, 16),
        C::Psubusb_xmm_xmmm128 => packed::subus(d, s, 8),
        C::Psubusw_xmm_xmmm128 => packed::subus(d, s, 16),
        C::Pmullw_xmm_xmmm128 => packed::map2s(d, s, 16, |x, y| x * y),
        C::Pmulhw_xmm_xmmm128 => packed::map2s(d, s, 16, |x, y| (x * y) >> 16),
        C::Pmulhuw_xmm_xmmm128 => packed::map2(d, s, 16, |x, y| (x * y) >> 16),
        C::Pmuludq_xmm_xmmm128 => packed::map2(d, s, 64, |x, y| (x & 0xffff_ffff) * (y & 0xffff_ffff)),
        C::Pmaddwd_xmm_xmmm128 => packed::maddwd(d, s),
        C::Pcmpeqb_xmm_xmmm128 => packed::cmp(d, s, 8, |x, y| x == y),
        C::Pcmpeqw_xmm_xmmm128 => packed::cmp(d, s, 16, |x, y| x == y),
        C::Pcmpeqd_xmm_xmmm128 => packed::cmp(d, s, 32, |x, y| x == y),
        C::Pcmpgtb_xmm_xmmm128 => packed::cmp(d, s, 8, |x, y| x > y),
        C::Pcmpgtw_xmm_xmmm128 => packed::cmp(d, s, 16, |x, y| x > y),
        C::Pcmpgtd_xmm_xmmm128 => packed::cmp(d, s, 32, |x, y| x > y),
        C::Pminub_xmm_xmmm128 => packed::map2(d, s, 8, u64::min),
        C::Pmaxub_xmm_xmmm128 => packed::map2(d, s, 8, u64::max),
        C::Pminsw_xmm_xmmm128 => packed::map2s(d, s, 16, i64::min),
        C::Pmaxsw_xmm_xmmm128 => packed::map2s(d, s, 16, i64::max),
        C::Pavgb_xmm_xmmm128 => packed::map2(d, s, 8, |x, y| (x + y + 1) >> 1),
        C::Pavgw_xmm_xmmm128 => packed::map2(d, s, 16, |x, y| (x + y + 1) >> 1),
        C::Psadbw_xmm_xmmm128 => packed::sadbw(d, s),

        // Shifts: by the low 64 bits of an XMM/m128 count, or by imm8.
        C::Psllw_xmm_xmmm128 => packed::shift(d, 16, s as u64, ShiftKind::Sll),
        C::Pslld_xmm_xmmm128 => packed::shift(d, 32, s as u64, ShiftKind::Sll),
        C::Psllq_xmm_xmmm128 => packed::shift(d, 64, s as u64, ShiftKind::Sll),
        C::Psrlw_xmm_xmmm128 => packed::shift(d, 16, s as u64, ShiftKind::Srl),
        C::Psrld_xmm_xmmm128 => packed::shift(d, 32, s as u64, ShiftKind::Srl),
        C::Psrlq_xmm_xmmm128 => packed::shift(d, 64, s as u64, ShiftKind::Srl),
        C::Psraw_xmm_xmmm128 => packed::shift(d, 16, s as u64, ShiftKind::Sra),
        C::Psrad_xmm_xmmm128 => packed::shift(d, 32, s as u64, ShiftKind::Sra),
        C::Psllw_xmm_imm8 => packed::shift(d, 16, imm as u64, ShiftKind::Sll),
        C::Pslld_xmm_imm8 => packed::shift(d, 32, imm as u64, ShiftKind::Sll),
        C::Psllq_xmm_imm8 => packed::shift(d, 64, imm as u64, ShiftKind::Sll),
        C::Psrlw_xmm_imm8 => packed::shift(d, 16, imm as u64, ShiftKind::Srl),
        C::Psrld_xmm_imm8 => packed::shift(d, 32, imm as u64, ShiftKind::Srl),
        C::Psrlq_xmm_imm8 => packed::shift(d, 64, imm as u64, ShiftKind::Srl),
        C::Psraw_xmm_imm8 => packed::shift(d, 16, imm as u64, ShiftKind::Sra),
        C::Psrad_xmm_imm8 => packed::shift(d, 32, imm as u64, ShiftKind::Sra),
        C::Pslldq_xmm_imm8 => d.checked_shl(8 * imm as u32).filter(|_| imm < 16).unwrap_or(0),
        C::Psrldq_xmm_imm8 => d.checked_shr(8 * imm as u32).filter(|_| imm < 16).unwrap_or(0),
        C::Pextrw_r32_xmm_imm8 | C::Pextrw_r64_xmm_imm8 => packed::lane(s, 16, (imm & 7) as u32) as u128,
        C::Pinsrw_xmm_r32m16_imm8 | C::Pinsrw_xmm_r64m16_imm8 => {
            let at = 16 * (imm & 7) as u32;
            (d & !(0xffffu128 << at)) | ((s & 0xffff) << at)
        }
        _ => return Err(SimdError::Unsupported),
    };
    if env.finish(mxcsr) {
        return Err(SimdError::Exception);
    }
    Ok(r)
}

fn mask_of(b: bool) -> u64 {
    if b {
        u64::MAX
    } else {
        0
    }
}

/// Apply `f` to every lane pair of a and b.
fn fp_packed(e: &mut Env, p: Prec, a: u128, b: u128, mut f: impl FnMut(&mut Env, u64, u64) -> u64) -> u128 {
    let w = p.width();
    packed::map2(a, b, w, |x, y| f(e, x, y))
}

/// Apply `f` to lane 0; the rest of the destination is kept.
fn fp_scalar(e: &mut Env, p: Prec, a: u128, b: u128, f: impl FnOnce(&mut Env, u64, u64) -> u64) -> u128 {
    let w = p.width();
    let keep = !((u64::MAX >> (64 - w)) as u128);
    (a & keep) | (f(e, packed::lane(a, w, 0), packed::lane(b, w, 0)) as u128 & !keep)
}

/// COMISS/UCOMISS/COMISD/UCOMISD: the new ZF, PF and CF (other bits 0; the
/// engine clears OF, SF and AF). Unordered: ZF=PF=CF=1; less: CF=1;
/// equal: ZF=1; greater: none.
pub fn comis(code: Code, a: u128, b: u128, mxcsr: &mut u32) -> Result<u64, SimdError> {
    let (p, signalling) = match code {
        Code::Comiss_xmm_xmmm32 => (Prec::S, true),
        Code::Ucomiss_xmm_xmmm32 => (Prec::S, false),
        Code::Comisd_xmm_xmmm64 => (Prec::D, true),
        Code::Ucomisd_xmm_xmmm64 => (Prec::D, false),
        _ => return Err(SimdError::Unsupported),
    };
    let w = p.width();
    let mut env = Env::new(*mxcsr);
    let flags = match fp::comis(&mut env, p, packed::lane(a, w, 0), packed::lane(b, w, 0), signalling) {
        None => ZF | PF | CF,
        Some(core::cmp::Ordering::Less) => CF,
        Some(core::cmp::Ordering::Equal) => ZF,
        Some(core::cmp::Ordering::Greater) => 0,
    };
    if env.finish(mxcsr) {
        return Err(SimdError::Exception);
    }
    Ok(flags)
}

/// Whether a memory operand of `code` must be 16-byte aligned (#GP
/// otherwise): legacy-SSE 128-bit memory operands, except the unaligned
/// moves MOVUPS/MOVUPD/MOVDQU. 32- and 64-bit memory forms never are.
pub fn needs_alignment(code: Code) -> bool {
    use Code as C;
    matches!(
        code,
        C::Addpd_xmm_xmmm128
            | C::Addps_xmm_xmmm128
            | C::Andnpd_xmm_xmmm128
            | C::Andnps_xmm_xmmm128
            | C::Andpd_xmm_xmmm128
            | C::Andps_xmm_xmmm128
            | C::Cmppd_xmm_xmmm128_imm8
            | C::Cmpps_xmm_xmmm128_imm8
            | C::Cvtdq2ps_xmm_xmmm128
            | C::Cvtpd2dq_xmm_xmmm128
            | C::Cvtpd2ps_xmm_xmmm128
            | C::Cvtps2dq_xmm_xmmm128
            | C::Cvttpd2dq_xmm_xmmm128
            | C::Cvttps2dq_xmm_xmmm128
            | C::Divpd_xmm_xmmm128
            | C::Divps_xmm_xmmm128
            | C::Maxpd_xmm_xmmm128
            | C::Maxps_xmm_xmmm128
            | C::Minpd_xmm_xmmm128
            | C::Minps_xmm_xmmm128
            | C::Movapd_xmm_xmmm128
            | C::Movapd_xmmm128_xmm
            | C::Movaps_xmm_xmmm128
            | C::Movaps_xmmm128_xmm
            | C::Movdqa_xmm_xmmm128
            | C::Movdqa_xmmm128_xmm
            | C::Movntdq_m128_xmm
            | C::Movntpd_m128_xmm
            | C::Movntps_m128_xmm
            | C::Mulpd_xmm_xmmm128
            | C::Mulps_xmm_xmmm128
            | C::Orpd_xmm_xmmm128
            | C::Orps_xmm_xmmm128
            | C::Packssdw_xmm_xmmm128
            | C::Packsswb_xmm_xmmm128
            | C::Packuswb_xmm_xmmm128
            | C::Paddb_xmm_xmmm128
            | C::Paddd_xmm_xmmm128
            | C::Paddq_xmm_xmmm128
            | C::Paddsb_xmm_xmmm128
            | C::Paddsw_xmm_xmmm128
            | C::Paddusb_xmm_xmmm128
            | C::Paddusw_xmm_xmmm128
            | C::Paddw_xmm_xmmm128
            | C::Pand_xmm_xmmm128
            | C::Pandn_xmm_xmmm128
            | C::Pavgb_xmm_xmmm128
            | C::Pavgw_xmm_xmmm128
            | C::Pcmpeqb_xmm_xmmm128
            | C::Pcmpeqd_xmm_xmmm128
            | C::Pcmpeqw_xmm_xmmm128
            | C::Pcmpgtb_xmm_xmmm128
            | C::Pcmpgtd_xmm_xmmm128
            | C::Pcmpgtw_xmm_xmmm128
            | C::Pmaddwd_xmm_xmmm128
            | C::Pmaxsw_xmm_xmmm128
            | C::Pmaxub_xmm_xmmm128
            | C::Pminsw_xmm_xmmm128
            | C::Pminub_xmm_xmmm128
            | C::Pmulhuw_xmm_xmmm128
            | C::Pmulhw_xmm_xmmm128
            | C::Pmullw_xmm_xmmm128
            | C::Pmuludq_xmm_xmmm128
            | C::Por_xmm_xmmm128
            | C::Psadbw_xmm_xmmm128
            | C::Pshufd_xmm_xmmm128_imm8
            | C::Pshufhw_xmm_xmmm128_imm8
            | C::Pshuflw_xmm_xmmm128_imm8
            | C::Pslld_xmm_xmmm128
            | C::Psllq_xmm_xmmm128
            | C::Psllw_xmm_xmmm128
            | C::Psrad_xmm_xmmm128
            | C::Psraw_xmm_xmmm128
            | C::Psrld_xmm_xmmm128
            | C::Psrlq_xmm_xmmm128
            | C::Psrlw_xmm_xmmm128
            | C::Psubb_xmm_xmmm128
            | C::Psubd_xmm_xmmm128
            | C::Psubq_xmm_xmmm128
            | C::Psubsb_xmm_xmmm128
            | C::Psubsw_xmm_xmmm128
            | C::Psubusb_xmm_xmmm128
            | C::Psubusw_xmm_xmmm128
            | C::Psubw_xmm_xmmm128
            | C::Punpckhbw_xmm_xmmm128
            | C::Punpckhdq_xmm_xmmm128
            | C::Punpckhqdq_xmm_xmmm128
            | C::Punpckhwd_xmm_xmmm128
            | C::Punpcklbw_xmm_xmmm128
            | C::Punpckldq_xmm_xmmm128
            | C::Punpcklqdq_xmm_xmmm128
            | C::Punpcklwd_xmm_xmmm128
            | C::Pxor_xmm_xmmm128
            | C::Rcpps_xmm_xmmm128
            | C::Rsqrtps_xmm_xmmm128
            | C::Shufpd_xmm_xmmm128_imm8
            | C::Shufps_xmm_xmmm128_imm8
            | C::Sqrtpd_xmm_xmmm128
            | C::Sqrtps_xmm_xmmm128
            | C::Subpd_xmm_xmmm128
            | C::Subps_xmm_xmmm128
            | C::Unpckhpd_xmm_xmmm128
            | C::Unpckhps_xmm_xmmm128
            | C::Unpcklpd_xmm_xmmm128
            | C::Unpcklps_xmm_xmmm128
            | C::Xorpd_xmm_xmmm128
            | C::Xorps_xmm_xmmm128
    )
}
