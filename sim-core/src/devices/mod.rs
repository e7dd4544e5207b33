//! Devices of the machine, one file each.

pub mod debug_exit;
pub mod debugcon;
pub mod lapic;
pub mod uart16550;

pub use debug_exit::DebugExit;
pub use debugcon::Debugcon;
pub use lapic::Lapic;
pub use uart16550::Uart16550;
