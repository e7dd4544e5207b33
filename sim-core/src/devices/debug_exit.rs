//! QEMU's isa-debug-exit, as configured by `-device
//! isa-debug-exit,iobase=0xf4,iosize=0x04`: writing `v` to any of its ports
//! stops the machine with exit status `(v << 1) | 1`, so a test guest can
//! report success or failure. Reads return 0, as in QEMU.

use crate::bus::{DeviceCtx, ExitRequest, PortDevice};

pub const DEBUG_EXIT_PORT: u16 = 0xf4;
pub const DEBUG_EXIT_PORT_COUNT: u16 = 4;

#[derive(Clone, Copy, Debug, Default)]
pub struct DebugExit;

impl PortDevice for DebugExit {
    fn read(&mut self, _port: u16, _size: u8, _ctx: &mut DeviceCtx) -> u32 {
        0
    }

    fn write(&mut self, _port: u16, _size: u8, value: u32, ctx: &mut DeviceCtx) {
        // QEMU computes this in 64 bits and passes it to exit(), which keeps an int.
        let status = ((u64::from(value) << 1) | 1) as i32;
        *ctx.exit = Some(ExitRequest::DebugExit { status });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;

    fn write(port: u16, size: u8, value: u32) -> Option<ExitRequest> {
        let mut bus = Bus::new();
        bus.add_ports(DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_COUNT, Box::new(DebugExit)).unwrap();
        let (mut console, mut exit) = (Vec::new(), None);
        let mut ctx = DeviceCtx { now_ns: 0, console: &mut console, exit: &mut exit };
        bus.pio_write(port, size, value, &mut ctx);
        exit
    }

    #[test]
    fn exit_status_is_value_shifted_left_plus_one() {
        assert_eq!(write(0xf4, 1, 0), Some(ExitRequest::DebugExit { status: 1 }));
        assert_eq!(write(0xf4, 1, 0x10), Some(ExitRequest::DebugExit { status: 0x21 }));
        assert_eq!(write(0xf7, 4, 0x31), Some(ExitRequest::DebugExit { status: 0x63 }));
        // 0x8000_0000 << 1 | 1 truncates to 1 in an int.
        assert_eq!(write(0xf4, 4, 0x8000_0000), Some(ExitRequest::DebugExit { status: 1 }));
        assert_eq!(write(0xf4, 4, 0x4000_0000), Some(ExitRequest::DebugExit { status: i32::MIN | 1 }));
        assert_eq!(write(0xf8, 1, 0), None); // outside the 4-port range
    }

    #[test]
    fn reads_return_zero_and_do_not_exit() {
        let (mut console, mut exit) = (Vec::new(), None);
        let mut ctx = DeviceCtx { now_ns: 0, console: &mut console, exit: &mut exit };
        assert_eq!(DebugExit.read(0xf4, 4, &mut ctx), 0);
        assert_eq!(exit, None);
    }
}
