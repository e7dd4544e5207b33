//! QEMU's debugcon (`-debugcon`): a byte written to port 0xE9 goes straight to
//! the host console; a read returns 0xE9, which guests (Bochs/QEMU
//! convention, Linux's earlyprintk probe) use to detect the port.

use crate::bus::{DeviceCtx, PortDevice};

pub const DEBUGCON_PORT: u16 = 0xe9;

/// The value a read returns (QEMU's default `readback` property).
const READBACK: u32 = 0xe9;

#[derive(Clone, Copy, Debug, Default)]
pub struct Debugcon;

impl PortDevice for Debugcon {
    fn read(&mut self, _port: u16, _size: u8, _ctx: &mut DeviceCtx) -> u32 {
        READBACK
    }

    /// Only the low byte is output, whatever the access size (as QEMU does).
    fn write(&mut self, _port: u16, _size: u8, value: u32, ctx: &mut DeviceCtx) {
        ctx.console.push(value as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;

    #[test]
    fn bytes_reach_the_console_and_reads_return_0xe9() {
        let mut bus = Bus::new();
        bus.add_ports(DEBUGCON_PORT, 1, Box::new(Debugcon)).unwrap();
        let (mut console, mut exit) = (Vec::new(), None);
        let mut ctx = DeviceCtx { now_ns: 0, console: &mut console, exit: &mut exit };
        for &b in b"ok\n" {
            bus.pio_write(0xe9, 1, u32::from(b), &mut ctx);
        }
        assert_eq!(bus.pio_read(0xe9, 1, &mut ctx), 0xe9);
        assert_eq!(console, b"ok\n");
        assert_eq!(exit, None);
    }
}
