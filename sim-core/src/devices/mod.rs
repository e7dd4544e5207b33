//! Devices of the machine, one file each.

pub mod debug_exit;
pub mod debugcon;
pub mod ioapic;
pub mod lapic;
pub mod pci;
pub mod pic8259;
pub mod uart16550;

pub use debug_exit::DebugExit;
pub use debugcon::Debugcon;
pub use ioapic::IoApic;
pub use lapic::Lapic;
pub use pci::PciHost;
pub use pic8259::Pic8259Pair;
pub use uart16550::Uart16550;
