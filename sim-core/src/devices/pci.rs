//! A minimal PCI host: configuration mechanism #1 (PCI Local Bus
//! Specification 3.0, section 3.2.2.3.2) on bus 0 with two functions, an
//! Intel 440FX host bridge at 00:00.0 and the Xen platform device at 00:03.0.
//!
//! CONFIG_ADDRESS (0xCF8) is a 32-bit register: only doubleword accesses
//! reach it (narrower ones are ordinary I/O to nothing). CONFIG_DATA
//! (0xCFC-0xCFF) accesses the doubleword CONFIG_ADDRESS selects, at the byte
//! the port offset names, when the enable bit (31) is set. Functions that do
//! not exist read all ones (a master abort) and ignore writes.
//!
//! The Xen platform device (QEMU's xen-platform, vendor 0x5853) carries the
//! event-channel callback's PCI INTx. Its BARs size correctly but decode
//! nothing yet: BAR0's I/O ports are Xen's legacy "unplug" protocol for
//! emulated disks and NICs, which this machine does not have, and BAR1 is
//! where HVM guests map grant frames, which xen-model does at any GPA.

use serde::{Deserialize, Serialize};

use crate::bus::{DeviceCtx, PortDevice};
use crate::layout::XEN_PLATFORM_PCI_DEVFN;

pub const CONFIG_ADDRESS: u16 = 0xcf8;
pub const CONFIG_DATA: u16 = 0xcfc;
/// Ports claimed: CONFIG_ADDRESS and CONFIG_DATA.
pub const PCI_PORT_COUNT: u16 = 8;
const CONFIG_ENABLE: u32 = 1 << 31;

pub const HOST_BRIDGE_DEVFN: u8 = 0;
pub const XEN_PLATFORM_VENDOR: u16 = 0x5853;
pub const XEN_PLATFORM_DEVICE: u16 = 0x0001;
pub const XEN_PLATFORM_REVISION: u8 = 1;
pub const XEN_PLATFORM_IO_SIZE: u32 = 0x100;
pub const XEN_PLATFORM_MMIO_SIZE: u32 = 16 << 20;

// Type 0 header offsets.
pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION: usize = 0x08;
pub const CLASS_PROG_IF: usize = 0x09;
pub const CACHE_LINE_SIZE: usize = 0x0c;
pub const LATENCY_TIMER: usize = 0x0d;
pub const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const SUBSYSTEM_ID: usize = 0x2e;
pub const INTERRUPT_LINE: usize = 0x3c;
pub const INTERRUPT_PIN: usize = 0x3d;

pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
pub const BAR_IO: u32 = 1 << 0;
pub const BAR_MEM_PREFETCHABLE: u32 = 1 << 3;

/// The GSI that INTx pin `pin` (0 = INTA .. 3 = INTD) of PCI device `device`
/// on bus 0 is wired to in Xen's HVM platform (`hvm_pci_intx_gsi` in
/// xen/arch/x86/include/asm/hvm/irq.h): GSIs 16-47, spread over the devices.
pub fn intx_gsi(device: u8, pin: u8) -> u32 {
    let (dev, intx) = (u32::from(device), u32::from(pin));
    (((dev << 2) + (dev >> 3) + intx) & 31) + 16
}

/// One function's 256-byte configuration space with a write mask.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Function {
    devfn: u8,
    #[serde(with = "serde_bytes")]
    config: Vec<u8>,
    #[serde(with = "serde_bytes")]
    writable: Vec<u8>,
}

impl Function {
    fn new(devfn: u8, vendor: u16, device: u16, revision: u8, class: u32) -> Self {
        let mut f = Function { devfn, config: vec![0; 256], writable: vec![0; 256] };
        f.put16(VENDOR_ID, vendor);
        f.put16(DEVICE_ID, device);
        f.config[REVISION] = revision;
        f.config[CLASS_PROG_IF..CLASS_PROG_IF + 3].copy_from_slice(&class.to_le_bytes()[..3]);
        f.writable_range(
            COMMAND,
            &(COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE).to_le_bytes(),
        );
        f.writable_range(CACHE_LINE_SIZE, &[0xff, 0xff]);
        f
    }

    fn put16(&mut self, at: usize, v: u16) {
        self.config[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn writable_range(&mut self, at: usize, mask: &[u8]) {
        self.writable[at..at + mask.len()].copy_from_slice(mask);
    }

    /// A BAR of `size` bytes (a power of two) with read-only type bits `kind`:
    /// the address bits below the size are hardwired to 0, which is what
    /// BAR sizing (write all ones, read back) measures.
    fn bar(&mut self, index: usize, size: u32, kind: u32) {
        let at = BAR0 + 4 * index;
        self.config[at..at + 4].copy_from_slice(&kind.to_le_bytes());
        self.writable_range(at, &size.wrapping_neg().to_le_bytes());
    }

    fn read(&self, offset: usize) -> u8 {
        self.config.get(offset).copied().unwrap_or(0xff)
    }

    fn write(&mut self, offset: usize, value: u8) {
        if let (Some(c), Some(&w)) = (self.config.get_mut(offset), self.writable.get(offset)) {
            *c = (*c & !w) | (value & w);
        }
    }
}

/// Configuration mechanism #1 and the functions on bus 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciHost {
    address: u32,
    functions: Vec<Function>,
}

impl PciHost {
    /// The host bridge and the Xen platform device, whose interrupt line
    /// register holds the GSI its INTA is wired to.
    pub fn new() -> Self {
        let bridge = Function::new(HOST_BRIDGE_DEVFN, 0x8086, 0x1237, 0, 0x06_00_00);
        let mut xen = Function::new(
            XEN_PLATFORM_PCI_DEVFN,
            XEN_PLATFORM_VENDOR,
            XEN_PLATFORM_DEVICE,
            XEN_PLATFORM_REVISION,
            0xff_80_00,
        );
        xen.put16(SUBSYSTEM_VENDOR_ID, XEN_PLATFORM_VENDOR);
        xen.put16(SUBSYSTEM_ID, XEN_PLATFORM_DEVICE);
        xen.bar(0, XEN_PLATFORM_IO_SIZE, BAR_IO);
        xen.bar(1, XEN_PLATFORM_MMIO_SIZE, BAR_MEM_PREFETCHABLE);
        xen.config[INTERRUPT_LINE] = intx_gsi(XEN_PLATFORM_PCI_DEVFN >> 3, 0) as u8;
        xen.config[INTERRUPT_PIN] = 1; // INTA
        xen.writable[INTERRUPT_LINE] = 0xff;
        PciHost { address: 0, functions: vec![bridge, xen] }
    }

    /// Whether a function exists at `devfn` on bus 0.
    pub fn function_present(&self, devfn: u8) -> bool {
        self.functions.iter().any(|f| f.devfn == devfn)
    }

    /// The function CONFIG_ADDRESS selects, and the register's offset.
    fn selected(&mut self) -> Option<(&mut Function, usize)> {
        let a = self.address;
        if a & CONFIG_ENABLE == 0 || (a >> 16) & 0xff != 0 {
            return None;
        }
        let devfn = (a >> 8) as u8;
        let reg = (a & 0xfc) as usize;
        self.functions.iter_mut().find(|f| f.devfn == devfn).map(|f| (f, reg))
    }

    /// Config read of `size` bytes at CONFIG_DATA + `byte`; bytes past the
    /// selected doubleword read as ones.
    fn data_read(&mut self, byte: usize, size: u8) -> u32 {
        let Some((f, reg)) = self.selected() else {
            return u32::MAX;
        };
        (0..usize::from(size.min(4)))
            .map(|i| if byte + i < 4 { f.read(reg + byte + i) } else { 0xff })
            .rev()
            .fold(0u32, |acc, b| (acc << 8) | u32::from(b))
    }

    fn data_write(&mut self, byte: usize, size: u8, value: u32) {
        if let Some((f, reg)) = self.selected() {
            for i in 0..usize::from(size.min(4)) {
                if byte + i < 4 {
                    f.write(reg + byte + i, (value >> (8 * i)) as u8);
                }
            }
        }
    }
}

impl Default for PciHost {
    fn default() -> Self {
        Self::new()
    }
}

impl PortDevice for PciHost {
    fn read(&mut self, port: u16, size: u8, _ctx: &mut DeviceCtx) -> u32 {
        let mask = crate::bus::all_ones(size.min(4)) as u32;
        mask & match port {
            // Bits 1:0 of CONFIG_ADDRESS read as 0.
            CONFIG_ADDRESS if size == 4 => self.address,
            CONFIG_DATA..=0xcff => self.data_read(usize::from(port - CONFIG_DATA), size),
            _ => u32::MAX,
        }
    }

    fn write(&mut self, port: u16, size: u8, value: u32, _ctx: &mut DeviceCtx) {
        match port {
            CONFIG_ADDRESS if size == 4 => self.address = value & !3 & !0x7f00_0000,
            CONFIG_DATA..=0xcff => self.data_write(usize::from(port - CONFIG_DATA), size, value),
            _ => {}
        }
    }
    fn save(&self) -> Vec<u8> {
        crate::bus::save_serde(self)
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        *self = crate::bus::restore_serde(data)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_run<R>(f: impl FnOnce(&mut DeviceCtx) -> R) -> R {
        let mut console = Vec::new();
        let mut exit = None;
        f(&mut DeviceCtx { now_ns: 0, console: &mut console, exit: &mut exit })
    }

    fn cfg_addr(dev: u32, func: u32, reg: u32) -> u32 {
        0x8000_0000 | (dev << 11) | (func << 8) | reg
    }

    fn read(p: &mut PciHost, dev: u32, reg: u32, size: u8) -> u32 {
        ctx_run(|c| {
            p.write(CONFIG_ADDRESS, 4, cfg_addr(dev, 0, reg & !3), c);
            p.read(CONFIG_DATA + (reg & 3) as u16, size, c)
        })
    }

    fn write(p: &mut PciHost, dev: u32, reg: u32, size: u8, v: u32) {
        ctx_run(|c| {
            p.write(CONFIG_ADDRESS, 4, cfg_addr(dev, 0, reg & !3), c);
            p.write(CONFIG_DATA + (reg & 3) as u16, size, v, c)
        })
    }

    #[test]
    fn xen_hvm_intx_gsi_formula() {
        // By hand from ((dev << 2) + (dev >> 3) + intx) & 31) + 16.
        assert_eq!(intx_gsi(3, 0), 28);
        assert_eq!(intx_gsi(3, 3), 31);
        assert_eq!(intx_gsi(0, 0), 16);
        assert_eq!(intx_gsi(8, 0), (32 + 1) % 32 + 16); // 17
        assert_eq!(intx_gsi(31, 3), ((124 + 3 + 3) & 31) + 16); // 18
        assert_eq!(intx_gsi(255, 255), ((1020 + 31 + 255) & 31) + 16);
    }

    #[test]
    fn host_bridge_identity() {
        let mut p = PciHost::new();
        assert_eq!(read(&mut p, 0, 0, 4), 0x1237_8086);
        assert_eq!(read(&mut p, 0, 8, 4) >> 8, 0x06_00_00, "class: host bridge");
        assert_eq!(read(&mut p, 0, 0xc, 4) >> 16 & 0xff, 0, "header type 0, single function");
    }

    #[test]
    fn xen_platform_device_header() {
        let mut p = PciHost::new();
        assert_eq!(read(&mut p, 3, 0, 4), 0x0001_5853);
        assert_eq!(read(&mut p, 3, 0, 2), 0x5853);
        assert_eq!(read(&mut p, 3, 2, 2), 0x0001);
        assert_eq!(read(&mut p, 3, 1, 1), 0x58);
        assert_eq!(read(&mut p, 3, 8, 4), 0xff80_0001, "class ff/80/00, revision 1");
        assert_eq!(read(&mut p, 3, 0x2c, 4), 0x0001_5853, "subsystem");
        assert_eq!(read(&mut p, 3, 0x3c, 4) & 0xffff, 0x01_1c, "INTA, line = GSI 28");
        assert_eq!(read(&mut p, 3, 0x10, 4), 0x0000_0001, "BAR0: I/O");
        assert_eq!(read(&mut p, 3, 0x14, 4), 0x0000_0008, "BAR1: 32-bit prefetchable memory");
        assert_eq!(read(&mut p, 3, 0x18, 4), 0, "BAR2 unimplemented");
    }

    #[test]
    fn bar_sizing_by_writing_all_ones() {
        let mut p = PciHost::new();
        write(&mut p, 3, 0x10, 4, 0xffff_ffff);
        let io = read(&mut p, 3, 0x10, 4);
        assert_eq!(io, 0xffff_ff01);
        assert_eq!(!(io & !3) + 1, 256, "PCI spec: size = ~(value & ~3) + 1");
        write(&mut p, 3, 0x14, 4, 0xffff_ffff);
        let mem = read(&mut p, 3, 0x14, 4);
        assert_eq!(mem, 0xff00_0008);
        assert_eq!(!(mem & !0xf) + 1, 16 << 20);
        // Unimplemented BARs size to 0.
        write(&mut p, 3, 0x18, 4, 0xffff_ffff);
        assert_eq!(read(&mut p, 3, 0x18, 4), 0);
        // Programming an address keeps the type bits.
        write(&mut p, 3, 0x10, 4, 0xc000);
        write(&mut p, 3, 0x14, 4, 0xf100_0000);
        assert_eq!(read(&mut p, 3, 0x10, 4), 0xc001);
        assert_eq!(read(&mut p, 3, 0x14, 4), 0xf100_0008);
    }

    #[test]
    fn command_register_and_read_only_identity() {
        let mut p = PciHost::new();
        write(&mut p, 3, 4, 2, 0xffff);
        assert_eq!(read(&mut p, 3, 4, 2), 0x0407, "I/O, memory, bus master, INTx disable");
        write(&mut p, 3, 4, 2, COMMAND_IO as u32 | COMMAND_MEMORY as u32);
        assert_eq!(read(&mut p, 3, 4, 4), 0x0000_0003, "status reads 0");
        write(&mut p, 3, 0, 4, 0);
        assert_eq!(read(&mut p, 3, 0, 4), 0x0001_5853);
        write(&mut p, 3, 0x3d, 1, 4);
        assert_eq!(read(&mut p, 3, 0x3d, 1), 1, "interrupt pin is read-only");
        write(&mut p, 3, 0x3c, 1, 11);
        assert_eq!(read(&mut p, 3, 0x3c, 1), 11, "interrupt line is scratch for software");
    }

    #[test]
    fn absent_functions_and_disabled_cycles_read_all_ones() {
        let mut p = PciHost::new();
        assert_eq!(read(&mut p, 1, 0, 4), 0xffff_ffff);
        assert_eq!(read(&mut p, 31, 0, 2), 0xffff);
        ctx_run(|c| {
            // Function 1 of the platform device.
            p.write(CONFIG_ADDRESS, 4, cfg_addr(3, 1, 0), c);
            assert_eq!(p.read(CONFIG_DATA, 4, c), 0xffff_ffff);
            // Bus 1.
            p.write(CONFIG_ADDRESS, 4, cfg_addr(3, 0, 0) | (1 << 16), c);
            assert_eq!(p.read(CONFIG_DATA, 4, c), 0xffff_ffff);
            // Enable bit clear: no configuration cycle.
            p.write(CONFIG_ADDRESS, 4, cfg_addr(3, 0, 0) & !CONFIG_ENABLE, c);
            assert_eq!(p.read(CONFIG_DATA, 4, c), 0xffff_ffff);
        });
        assert!(p.function_present(XEN_PLATFORM_PCI_DEVFN));
        assert!(!p.function_present(XEN_PLATFORM_PCI_DEVFN + 1));
    }

    #[test]
    fn config_address_register() {
        let mut p = PciHost::new();
        ctx_run(|c| {
            // Linux's pci_check_type1: a byte write to 0xCFB is not CONFIG_ADDRESS.
            p.write(CONFIG_ADDRESS, 4, 0, c);
            p.write(0xcfb, 1, 1, c);
            assert_eq!(p.read(CONFIG_ADDRESS, 4, c), 0);
            p.write(CONFIG_ADDRESS, 4, 0x8000_0000, c);
            assert_eq!(p.read(CONFIG_ADDRESS, 4, c), 0x8000_0000);
            // Bits 1:0 read 0; reserved 30:24 read 0.
            p.write(CONFIG_ADDRESS, 4, 0xffff_ffff, c);
            assert_eq!(p.read(CONFIG_ADDRESS, 4, c), 0x80ff_fffc);
            assert_eq!(p.read(CONFIG_ADDRESS, 2, c), 0xffff);
            // A dword at CONFIG_DATA + 2 reads two real bytes, then ones.
            p.write(CONFIG_ADDRESS, 4, cfg_addr(3, 0, 0), c);
            assert_eq!(p.read(CONFIG_DATA + 2, 4, c), 0xffff_0001);
        });
    }
}
