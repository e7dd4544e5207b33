//! Why an instruction stopped before retiring: a guest exception, or an exit
//! to the machine (the exit itself is parked in the interpreter).

/// Exception vectors (Intel SDM vol. 3, table 6-1).
pub mod vector {
    pub const DE: u8 = 0;
    pub const DB: u8 = 1;
    pub const NMI: u8 = 2;
    pub const BP: u8 = 3;
    pub const OF: u8 = 4;
    pub const BR: u8 = 5;
    pub const UD: u8 = 6;
    pub const NM: u8 = 7;
    pub const DF: u8 = 8;
    pub const TS: u8 = 10;
    pub const NP: u8 = 11;
    pub const SS: u8 = 12;
    pub const GP: u8 = 13;
    pub const PF: u8 = 14;
    pub const XM: u8 = 19;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Fault,
    FaultWithCode,
    /// The instruction needs the machine (I/O, MMIO, MSR); see `Interpreter::exit`.
    Exit,
}

/// A guest exception (delivered through the IDT) or an exit. Packed into
/// 8 bytes so that `R<()>` is returned in a register on the hot path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stop {
    kind: Kind,
    vector: u8,
    code: u32,
}

impl Stop {
    pub const EXIT: Stop = Stop { kind: Kind::Exit, vector: 0, code: 0 };

    /// The exception's vector and error code, or None for an exit.
    pub fn fault(self) -> Option<(u8, Option<u32>)> {
        match self.kind {
            Kind::Fault => Some((self.vector, None)),
            Kind::FaultWithCode => Some((self.vector, Some(self.code))),
            Kind::Exit => None,
        }
    }
}

pub type R<T> = Result<T, Stop>;

pub fn exc(vector: u8) -> Stop {
    Stop { kind: Kind::Fault, vector, code: 0 }
}
pub fn exc_code(vector: u8, code: u32) -> Stop {
    Stop { kind: Kind::FaultWithCode, vector, code }
}
pub fn ud() -> Stop {
    exc(vector::UD)
}
pub fn gp(code: u32) -> Stop {
    exc_code(vector::GP, code)
}
pub fn gp0() -> Stop {
    gp(0)
}
pub fn ss0() -> Stop {
    exc_code(vector::SS, 0)
}

/// Classes for the double-fault rule (SDM vol. 3, table 6-5).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Benign,
    Contributory,
    PageFault,
}

pub fn class(vector: u8) -> Class {
    match vector {
        0 | 10..=13 => Class::Contributory,
        14 => Class::PageFault,
        _ => Class::Benign,
    }
}
