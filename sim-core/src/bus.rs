//! The port-I/O and MMIO bus: routes a guest access to the device that owns
//! the address, or gives the "nothing there" answer (all ones on reads,
//! writes dropped), as an ISA/PCI bus does when no device claims a cycle.
//!
//! Ranges are kept sorted by start address and looked up by binary search.
//! An access is routed by its first byte; a device sees the absolute port
//! number, or the offset of the first byte within its MMIO range.
//!
//! The machine gets a device back with `port_device_mut::<T>(port)` or
//! `mmio_device_mut::<T>(gpa)`, which downcast through `std::any::Any`
//! (e.g. to push console input into the UART, or to snapshot its state).

use std::any::Any;

/// Something a device asks the machine to do after an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitRequest {
    /// QEMU isa-debug-exit: stop the machine with this process exit status.
    DebugExit { status: i32 },
}

/// What a device may touch during an access besides its own state.
pub struct DeviceCtx<'a> {
    /// Machine time of the access, in virtual nanoseconds.
    pub now_ns: u64,
    /// Bytes for the host console (debugcon, UART transmit).
    pub console: &'a mut Vec<u8>,
    /// Set by a device that asks the machine to stop.
    pub exit: &'a mut Option<ExitRequest>,
}

/// Gives `&mut dyn Any` for any `'static` type; a supertrait of the device
/// traits so that devices get downcasting without writing anything.
pub trait AsAny: Any {
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Any> AsAny for T {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// A device on the I/O port bus. `size` is 1, 2 or 4.
pub trait PortDevice: AsAny + Send {
    fn read(&mut self, port: u16, size: u8, ctx: &mut DeviceCtx) -> u32;
    fn write(&mut self, port: u16, size: u8, value: u32, ctx: &mut DeviceCtx);
    /// The device's state for snapshots and state hashes (rmp-serde by
    /// convention, see `save_serde`). Stateless devices keep the default.
    fn save(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Take back what `save` produced.
    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        stateless_restore(data)
    }
}

/// A device on the MMIO bus. `size` is 1, 2, 4 or 8.
pub trait MmioDevice: AsAny + Send {
    fn read(&mut self, offset: u64, size: u8, ctx: &mut DeviceCtx) -> u64;
    fn write(&mut self, offset: u64, size: u8, value: u64, ctx: &mut DeviceCtx);
    /// As `PortDevice::save`.
    fn save(&self) -> Vec<u8> {
        Vec::new()
    }
    /// As `PortDevice::restore`.
    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        stateless_restore(data)
    }
}

fn stateless_restore(data: &[u8]) -> Result<(), String> {
    if data.is_empty() {
        Ok(())
    } else {
        Err(format!("{} bytes of state for a device that keeps none", data.len()))
    }
}

/// A device's state as rmp-serde bytes (the format `save` uses).
pub fn save_serde<T: serde::Serialize>(state: &T) -> Vec<u8> {
    // Serializing plain device structs into a Vec cannot fail.
    rmp_serde::to_vec(state).unwrap_or_default()
}

/// Read back what `save_serde` wrote.
pub fn restore_serde<T: serde::de::DeserializeOwned>(data: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(data).map_err(|e| e.to_string())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("range {first:#x}+{len:#x} overlaps a registered device")]
    Overlap { first: u64, len: u64 },
    #[error("range {first:#x}+{len:#x} is empty or wraps around the address space")]
    InvalidRange { first: u64, len: u64 },
}

/// All ones in the low `size` bytes (what a read of an unclaimed address returns).
pub fn all_ones(size: u8) -> u64 {
    match size {
        0 => 0,
        1..=7 => (1u64 << (u32::from(size) * 8)) - 1,
        _ => u64::MAX,
    }
}

/// Inclusive [first, last] ranges, sorted, non-overlapping.
struct RangeMap<D: ?Sized> {
    entries: Vec<(u64, u64, Box<D>)>,
}

impl<D: ?Sized> RangeMap<D> {
    fn new() -> Self {
        RangeMap { entries: Vec::new() }
    }

    fn insert(&mut self, first: u64, len: u64, limit: u64, dev: Box<D>) -> Result<(), BusError> {
        let last = match len.checked_sub(1).and_then(|l| first.checked_add(l)) {
            Some(last) if last <= limit => last,
            _ => return Err(BusError::InvalidRange { first, len }),
        };
        let idx = self.entries.partition_point(|e| e.0 < first);
        let overlaps_prev = idx > 0 && self.entries[idx - 1].1 >= first;
        let overlaps_next = idx < self.entries.len() && self.entries[idx].0 <= last;
        if overlaps_prev || overlaps_next {
            return Err(BusError::Overlap { first, len });
        }
        self.entries.insert(idx, (first, last, dev));
        Ok(())
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &D)> {
        self.entries.iter().map(|(first, _, d)| (*first, &**d))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut D)> {
        self.entries.iter_mut().map(|(first, _, d)| (*first, &mut **d))
    }

    /// The device whose range holds `addr`, with its range start.
    fn find(&mut self, addr: u64) -> Option<(u64, &mut D)> {
        let idx = self.entries.partition_point(|e| e.0 <= addr).checked_sub(1)?;
        let (first, last, dev) = self.entries.get_mut(idx)?;
        (addr <= *last).then_some((*first, &mut **dev))
    }
}

/// The machine's port and MMIO buses.
pub struct Bus {
    ports: RangeMap<dyn PortDevice>,
    mmio: RangeMap<dyn MmioDevice>,
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    pub fn new() -> Self {
        Bus { ports: RangeMap::new(), mmio: RangeMap::new() }
    }

    /// Claim ports `first .. first + count`.
    pub fn add_ports(&mut self, first: u16, count: u16, dev: Box<dyn PortDevice>) -> Result<(), BusError> {
        self.ports.insert(u64::from(first), u64::from(count), u64::from(u16::MAX), dev)
    }

    /// Claim guest-physical `base .. base + len`.
    pub fn add_mmio(&mut self, base: u64, len: u64, dev: Box<dyn MmioDevice>) -> Result<(), BusError> {
        self.mmio.insert(base, len, u64::MAX, dev)
    }

    pub fn pio_read(&mut self, port: u16, size: u8, ctx: &mut DeviceCtx) -> u32 {
        let mask = all_ones(size.min(4)) as u32;
        match self.ports.find(u64::from(port)) {
            Some((_, dev)) => dev.read(port, size, ctx) & mask,
            None => mask,
        }
    }

    pub fn pio_write(&mut self, port: u16, size: u8, value: u32, ctx: &mut DeviceCtx) {
        if let Some((_, dev)) = self.ports.find(u64::from(port)) {
            dev.write(port, size, value & all_ones(size.min(4)) as u32, ctx);
        }
    }

    pub fn mmio_read(&mut self, gpa: u64, size: u8, ctx: &mut DeviceCtx) -> u64 {
        let mask = all_ones(size);
        match self.mmio.find(gpa) {
            Some((base, dev)) => dev.read(gpa - base, size, ctx) & mask,
            None => mask,
        }
    }

    pub fn mmio_write(&mut self, gpa: u64, size: u8, value: u64, ctx: &mut DeviceCtx) {
        if let Some((base, dev)) = self.mmio.find(gpa) {
            dev.write(gpa - base, size, value & all_ones(size), ctx);
        }
    }

    /// Every device's saved state, named by where it sits ("port 0x3f8",
    /// "mmio 0xfed00000"), in address order.
    pub fn save_devices(&self) -> Vec<(String, Vec<u8>)> {
        let ports = self.ports.iter().map(|(a, d)| (format!("port {a:#x}"), d.save()));
        ports.chain(self.mmio.iter().map(|(a, d)| (format!("mmio {a:#x}"), d.save()))).collect()
    }

    /// Restore what `save_devices` produced on a bus with the same devices.
    pub fn restore_devices(&mut self, saved: &[(String, Vec<u8>)]) -> Result<(), String> {
        let mut saved = saved.iter();
        let mut next = |name: String| match saved.next() {
            Some((n, data)) if *n == name => Ok(data),
            Some((n, _)) => Err(format!("device {n} saved where this machine has {name}")),
            None => Err(format!("no saved state for device {name}")),
        };
        for (a, d) in self.ports.iter_mut() {
            d.restore(next(format!("port {a:#x}"))?).map_err(|e| format!("port {a:#x}: {e}"))?;
        }
        for (a, d) in self.mmio.iter_mut() {
            d.restore(next(format!("mmio {a:#x}"))?).map_err(|e| format!("mmio {a:#x}: {e}"))?;
        }
        match saved.next() {
            Some((n, _)) => Err(format!("saved device {n} is not on this machine")),
            None => Ok(()),
        }
    }

    /// The device claiming `port`, if it is a `T`.
    pub fn port_device_mut<T: PortDevice>(&mut self, port: u16) -> Option<&mut T> {
        let (_, dev) = self.ports.find(u64::from(port))?;
        dev.as_any_mut().downcast_mut::<T>()
    }

    /// The device claiming `gpa`, if it is a `T`.
    pub fn mmio_device_mut<T: MmioDevice>(&mut self, gpa: u64) -> Option<&mut T> {
        let (_, dev) = self.mmio.find(gpa)?;
        dev.as_any_mut().downcast_mut::<T>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what it was asked; reads return a fixed pattern.
    #[derive(Default)]
    struct Probe {
        last: Vec<(u64, u8, u64)>,
    }

    impl PortDevice for Probe {
        fn read(&mut self, port: u16, _size: u8, _ctx: &mut DeviceCtx) -> u32 {
            0x1234_5600 | u32::from(port as u8)
        }
        fn write(&mut self, port: u16, size: u8, value: u32, _ctx: &mut DeviceCtx) {
            self.last.push((u64::from(port), size, u64::from(value)));
        }
    }

    impl MmioDevice for Probe {
        fn read(&mut self, offset: u64, _size: u8, _ctx: &mut DeviceCtx) -> u64 {
            0xdead_beef_0000_0000 | offset
        }
        fn write(&mut self, offset: u64, size: u8, value: u64, _ctx: &mut DeviceCtx) {
            self.last.push((offset, size, value));
        }
    }

    fn with_ctx<R>(f: impl FnOnce(&mut DeviceCtx) -> R) -> R {
        let mut console = Vec::new();
        let mut exit = None;
        let mut ctx = DeviceCtx { now_ns: 0, console: &mut console, exit: &mut exit };
        f(&mut ctx)
    }

    #[test]
    fn absent_port_reads_all_ones_of_its_size() {
        let mut bus = Bus::new();
        with_ctx(|ctx| {
            assert_eq!(bus.pio_read(0x80, 1, ctx), 0xff);
            assert_eq!(bus.pio_read(0x80, 2, ctx), 0xffff);
            assert_eq!(bus.pio_read(0x80, 4, ctx), 0xffff_ffff);
            assert_eq!(bus.mmio_read(0xfed0_0000, 8, ctx), u64::MAX);
            assert_eq!(bus.mmio_read(0xfed0_0000, 2, ctx), 0xffff);
            bus.pio_write(0x80, 1, 0x12, ctx); // dropped, no panic
        });
    }

    #[test]
    fn routes_by_range_with_absolute_port_and_relative_offset() {
        let mut bus = Bus::new();
        bus.add_ports(0x3f8, 8, Box::new(Probe::default())).unwrap();
        bus.add_mmio(0xfee0_0000, 0x1000, Box::new(Probe::default())).unwrap();
        with_ctx(|ctx| {
            assert_eq!(bus.pio_read(0x3f8, 1, ctx), 0xf8); // masked to 1 byte
            assert_eq!(bus.pio_read(0x3ff, 4, ctx), 0x1234_56ff);
            assert_eq!(bus.pio_read(0x3f7, 1, ctx), 0xff);
            assert_eq!(bus.pio_read(0x400, 1, ctx), 0xff);
            assert_eq!(bus.mmio_read(0xfee0_0020, 4, ctx), 0x20);
            assert_eq!(bus.mmio_read(0xfee0_0ff8, 8, ctx), 0xdead_beef_0000_0ff8);
            assert_eq!(bus.mmio_read(0xfee0_1000, 4, ctx), 0xffff_ffff);
            bus.pio_write(0x3fb, 1, 0x1ff, ctx);
            bus.mmio_write(0xfee0_00b0, 4, 0, ctx);
        });
        assert_eq!(bus.port_device_mut::<Probe>(0x3fc).unwrap().last, vec![(0x3fb, 1, 0xff)]);
        assert_eq!(bus.mmio_device_mut::<Probe>(0xfee0_0fff).unwrap().last, vec![(0xb0, 4, 0)]);
        assert!(bus.port_device_mut::<Probe>(0x3f7).is_none());
    }

    #[test]
    fn overlapping_and_invalid_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.add_ports(0x3f8, 8, Box::new(Probe::default())).unwrap();
        assert!(matches!(bus.add_ports(0x3ff, 1, Box::new(Probe::default())), Err(BusError::Overlap { .. })));
        assert!(matches!(bus.add_ports(0x3f0, 9, Box::new(Probe::default())), Err(BusError::Overlap { .. })));
        assert!(matches!(bus.add_ports(0x3f0, 0, Box::new(Probe::default())), Err(BusError::InvalidRange { .. })));
        assert!(matches!(bus.add_ports(0xffff, 2, Box::new(Probe::default())), Err(BusError::InvalidRange { .. })));
        bus.add_ports(0x3f0, 8, Box::new(Probe::default())).unwrap(); // adjacent is fine
        bus.add_ports(0xffff, 1, Box::new(Probe::default())).unwrap();
        assert!(matches!(bus.add_mmio(u64::MAX, 2, Box::new(Probe::default())), Err(BusError::InvalidRange { .. })));
    }

    #[test]
    fn downcast_to_the_wrong_type_is_none() {
        struct Other;
        impl PortDevice for Other {
            fn read(&mut self, _: u16, _: u8, _: &mut DeviceCtx) -> u32 {
                0
            }
            fn write(&mut self, _: u16, _: u8, _: u32, _: &mut DeviceCtx) {}
        }
        let mut bus = Bus::new();
        bus.add_ports(0xe9, 1, Box::new(Other)).unwrap();
        assert!(bus.port_device_mut::<Probe>(0xe9).is_none());
        assert!(bus.port_device_mut::<Other>(0xe9).is_some());
    }
}
