//! Virtual time. On the interpreter it is derived from retired instructions:
//! each instruction takes `NS_PER_INSN` virtual nanoseconds and the virtual
//! TSC runs at `TSC_HZ`, so the same instruction stream always sees the same
//! clock. Machine time is in virtual nanoseconds since power-on.

/// Virtual TSC frequency (1 GHz: one TSC tick per virtual nanosecond).
pub const TSC_HZ: u64 = 1_000_000_000;
/// Virtual nanoseconds per retired instruction on the interpreter.
pub const NS_PER_INSN: u64 = 1;
/// TSC ticks per retired instruction on the interpreter.
pub const TSC_PER_INSN: u64 = TSC_HZ / 1_000_000_000 * NS_PER_INSN;

/// Convert virtual nanoseconds to TSC ticks.
pub const fn ns_to_tsc(ns: u64) -> u64 {
    ((ns as u128 * TSC_HZ as u128) / 1_000_000_000) as u64
}

/// Convert TSC ticks to virtual nanoseconds.
pub const fn tsc_to_ns(tsc: u64) -> u64 {
    ((tsc as u128 * 1_000_000_000) / TSC_HZ as u128) as u64
}

/// Where machine time comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TimeSource {
    /// Retired instructions (the interpreter): the same instruction stream
    /// always sees the same time.
    #[default]
    Instructions,
    /// The guest TSC at each vCPU exit, through the door (KVM, whose TSC
    /// follows the host clock). The machine's instruction count then
    /// counts exits: KVM cannot count instructions. A run timed this way
    /// replays on the interpreter by following the recorded exits.
    Exits,
}
