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
pub enum Stop {
    /// A guest exception, delivered through the IDT.
    Fault { vector: u8, code: Option<u32> },
    /// The instruction needs the machine (I/O, MMIO, MSR); see `Interpreter::exit`.
    Exit,
}

pub type R<T> = Result<T, Stop>;

pub fn exc(vector: u8) -> Stop {
    Stop::Fault { vector, code: None }
}
pub fn exc_code(vector: u8, code: u32) -> Stop {
    Stop::Fault { vector, code: Some(code) }
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
