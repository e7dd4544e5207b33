//! TEMPORARY stand-in for the alu helper's sse.rs (same signatures as the
//! contract) until it lands: no SSE instruction is supported yet (#UD).
#![allow(dead_code, clippy::result_unit_err)]

use iced_x86::Code;
use sim_core::state::FpuState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdError {
    Exception,
}

pub fn supports(_code: Code) -> bool {
    false
}

pub fn exec(_code: Code, _dst: u128, _src: u128, _imm: u8, _mxcsr: &mut u32) -> Result<u128, SimdError> {
    Err(SimdError::Exception)
}

pub fn needs_alignment(_code: Code) -> bool {
    false
}

pub fn fxsave(f: &FpuState, _long64: bool) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..2].copy_from_slice(&f.fcw.to_le_bytes());
    b[24..28].copy_from_slice(&f.mxcsr.to_le_bytes());
    b
}

pub fn fxrstor(b: &[u8; 512], _long64: bool) -> Result<FpuState, ()> {
    Ok(FpuState {
        fcw: u16::from_le_bytes([b[0], b[1]]),
        mxcsr: u32::from_le_bytes([b[24], b[25], b[26], b[27]]),
        ..FpuState::default()
    })
}
