//! HYPERVISOR_hvm_op (xen/include/public/hvm/hvm_op.h, params.h): HVM
//! parameters, the event-channel callback, per-vCPU upcall vectors.

use sim_core::irq::source;
use sim_core::layout::XEN_PLATFORM_PCI_DEVFN;
use sim_core::platform::PlatformCtx;

use crate::errno::{Errno, XenResult, EINVAL, ENOENT, ENOSYS, EPERM, ESRCH};
use crate::hypercall::Args;
use crate::platform::XenPlatform;
use crate::{DOM0, DOMID_SELF, GUEST_DOMID};

pub mod op {
    pub const SET_PARAM: u32 = 0;
    pub const GET_PARAM: u32 = 1;
    pub const PAGETABLE_DYING: u32 = 9;
    pub const GET_TIME: u32 = 10;
    pub const SET_EVTCHN_UPCALL_VECTOR: u32 = 23;
}

pub mod param {
    pub const CALLBACK_IRQ: u32 = 0;
    pub const STORE_PFN: u32 = 1;
    pub const STORE_EVTCHN: u32 = 2;
    pub const VM86_TSS: u32 = 15;
    pub const CONSOLE_PFN: u32 = 17;
    pub const CONSOLE_EVTCHN: u32 = 18;
    pub const ACPI_IOPORTS_LOCATION: u32 = 19;
    pub const VM_GENERATION_ID_ADDR: u32 = 34;
    pub const ALTP2M: u32 = 35;
    pub const X87_FIP_WIDTH: u32 = 36;
    pub const VM86_TSS_SIZED: u32 = 37;
}

pub const HVM_NR_PARAMS: u32 = 39;
/// GSIs of the emulated IOAPIC (VIOAPIC_NUM_PINS).
pub const NR_GSIS: u32 = 48;

/// HVM_PARAM_CALLBACK_TYPE_* (bits 63:56 of CALLBACK_IRQ).
pub mod callback_type {
    pub const GSI: u64 = 0;
    pub const PCI_INTX: u64 = 1;
    pub const VECTOR: u64 = 2;
}

/// How vCPU 0's (GSI, INTx) or every vCPU's (vector) upcalls are delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Callback {
    None,
    Gsi(u32),
    PciIntx { devfn: u8, intx: u8, gsi: u32 },
    Vector(u8),
}

impl Callback {
    /// The GSI a level-triggered callback drives.
    pub fn gsi(&self) -> Option<u32> {
        match *self {
            Callback::Gsi(g) | Callback::PciIntx { gsi: g, .. } => Some(g),
            _ => None,
        }
    }

    /// Decode HVM_PARAM_CALLBACK_IRQ. A GSI of 0 or beyond the IOAPIC
    /// disables delivery (as Xen does). A PCI INTx naming anything but the
    /// Xen platform device is refused with EINVAL, as issue 3 asks: Xen
    /// itself (hvm_set_callback_via) ignores domain and bus and accepts any
    /// device slot, since its INTx wiring exists for every slot; this
    /// machine has only the one device.
    pub fn decode(value: u64) -> XenResult<Callback> {
        Ok(match value >> 56 {
            callback_type::GSI => match value as u8 as u32 {
                0 => Callback::None,
                g if g >= NR_GSIS => Callback::None,
                g => Callback::Gsi(g),
            },
            callback_type::PCI_INTX => {
                let (domain, bus, devfn, intx) =
                    ((value >> 32) as u16, (value >> 16) as u16, (value >> 8) as u8, value as u8 & 3);
                if domain != 0 || bus != 0 || devfn != XEN_PLATFORM_PCI_DEVFN {
                    return Err(Errno(EINVAL));
                }
                Callback::PciIntx { devfn, intx, gsi: pci_intx_gsi(devfn >> 3, intx) }
            }
            callback_type::VECTOR => Callback::Vector(value as u8),
            _ => Callback::None,
        })
    }
}

/// hvm_pci_intx_gsi: the GSI PCI device `dev`'s pin `intx` (0 = INTA) is
/// wired to in Xen's HVM platform.
pub fn pci_intx_gsi(dev: u8, intx: u8) -> u32 {
    let (dev, intx) = (dev as u32, intx as u32);
    (((dev << 2) + (dev >> 3) + intx) & 31) + 16
}

/// Parameters the guest may read / write about itself (hvm_allow_get_param,
/// hvm_allow_set_param).
fn guest_may_read(index: u32) -> bool {
    use param::*;
    matches!(
        index,
        CALLBACK_IRQ
            | VM86_TSS
            | VM86_TSS_SIZED
            | ACPI_IOPORTS_LOCATION
            | VM_GENERATION_ID_ADDR
            | STORE_PFN
            | STORE_EVTCHN
            | CONSOLE_PFN
            | CONSOLE_EVTCHN
            | ALTP2M
            | X87_FIP_WIDTH
    )
}

fn guest_may_write(index: u32) -> bool {
    use param::*;
    matches!(
        index,
        CALLBACK_IRQ
            | VM86_TSS
            | VM86_TSS_SIZED
            | ACPI_IOPORTS_LOCATION
            | VM_GENERATION_ID_ADDR
            | STORE_EVTCHN
            | CONSOLE_EVTCHN
            | X87_FIP_WIDTH
    )
}

fn check_domid(dom: u16) -> Result<(), Errno> {
    match dom {
        DOMID_SELF | GUEST_DOMID => Ok(()),
        DOM0 => Err(Errno(EPERM)),
        _ => Err(Errno(ESRCH)),
    }
}

impl XenPlatform {
    pub(crate) fn hvm_op(&mut self, ctx: &mut PlatformCtx, a: &Args) -> XenResult<i64> {
        let (cmd, arg) = (a.arg(0) as u32, a.arg(1));
        let g = a.guest(ctx.mem);
        match cmd {
            op::SET_PARAM | op::GET_PARAM => {
                check_domid(g.read_u16(arg)?)?;
                let index = g.read_u32(arg + 4)?;
                if index >= HVM_NR_PARAMS {
                    return Err(Errno(EINVAL));
                }
                if cmd == op::GET_PARAM {
                    if !guest_may_read(index) {
                        return Err(Errno(EPERM));
                    }
                    g.write_u64(arg + 8, self.params[index as usize])?;
                    return Ok(0);
                }
                if !guest_may_write(index) {
                    return Err(Errno(EPERM));
                }
                let value = g.read_u64(arg + 8)?;
                if index == param::CALLBACK_IRQ {
                    let cb = Callback::decode(value)?;
                    self.latch_compat(a.compat);
                    self.set_callback(ctx, cb);
                }
                self.params[index as usize] = value;
                Ok(0)
            }
            op::SET_EVTCHN_UPCALL_VECTOR => {
                let vcpu = g.read_u32(arg)?;
                let mut b = [0u8; 1];
                g.read(arg + 4, &mut b)?;
                if b[0] < 0x10 {
                    return Err(Errno(EINVAL));
                }
                if vcpu >= self.nr_vcpus {
                    return Err(Errno(ENOENT));
                }
                self.vcpus[vcpu as usize].upcall_vector = b[0];
                // hvm_assert_evtchn_irq: an upcall already pending is delivered now.
                if self.shinfo.upcall_pending(ctx.mem, self.vi[vcpu as usize]) {
                    self.deliver_upcall(ctx, vcpu);
                }
                Ok(0)
            }
            op::PAGETABLE_DYING => {
                match g.read_u16(arg)? {
                    DOMID_SELF | GUEST_DOMID => {}
                    DOM0 => return Err(Errno(EINVAL)),
                    _ => return Err(Errno(ESRCH)),
                }
                // Only shadow paging cares; with (modelled) HAP it is a no-op.
                Ok(0)
            }
            op::GET_TIME => {
                g.write_u64(arg, ctx.now_ns)?;
                Ok(0)
            }
            _ => Err(Errno(ENOSYS)),
        }
    }

    /// hvm_set_callback_via: switch the delivery method, dropping the old
    /// line; then, as its closing hvm_assert_evtchn_irq does for vCPU 0,
    /// the new line takes the level of vCPU 0's upcall_pending.
    pub(crate) fn set_callback(&mut self, ctx: &mut PlatformCtx, cb: Callback) {
        if let Some(gsi) = self.callback_gsi_high.take() {
            ctx.gsi.set(gsi, source::XEN_CALLBACK, false);
        }
        self.callback = cb;
        if let Some(gsi) = cb.gsi() {
            if self.shinfo.upcall_pending(ctx.mem, self.vi[0]) {
                ctx.gsi.set(gsi, source::XEN_CALLBACK, true);
                self.callback_gsi_high = Some(gsi);
            }
        }
    }

    /// hvm_latch_shinfo_size: the shared_info layout follows the mode of
    /// the guest's first PV-driver setup calls.
    pub(crate) fn latch_compat(&mut self, compat: bool) {
        if self.shinfo.compat() != compat {
            self.shinfo.set_compat(compat);
            self.write_wallclock();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_device_intx_routes_like_xen() {
        // Hand computation of ((dev << 2) + (dev >> 3) + intx) & 31) + 16.
        assert_eq!(pci_intx_gsi(3, 0), 28);
        assert_eq!(pci_intx_gsi(3, 3), 31);
        assert_eq!(pci_intx_gsi(8, 0), ((32 + 1) & 31) + 16);
        assert_eq!(pci_intx_gsi(31, 2), ((124 + 3 + 2) & 31) + 16);
    }

    #[test]
    fn callback_values_decode() {
        assert_eq!(Callback::decode(0), Ok(Callback::None));
        assert_eq!(Callback::decode(5), Ok(Callback::Gsi(5)));
        assert_eq!(Callback::decode(48), Ok(Callback::None), "beyond the IOAPIC");
        assert_eq!(Callback::decode(2 << 56 | 0xf3), Ok(Callback::Vector(0xf3)));
        let intx = 1u64 << 56 | (XEN_PLATFORM_PCI_DEVFN as u64) << 8;
        assert_eq!(Callback::decode(intx), Ok(Callback::PciIntx { devfn: 0x18, intx: 0, gsi: 28 }));
        assert_eq!(Callback::decode(intx | 1 << 16), Err(Errno(EINVAL)), "bus 1");
        assert_eq!(Callback::decode(1u64 << 56 | 4 << 11), Err(Errno(EINVAL)), "device 4");
        assert_eq!(Callback::decode(9u64 << 56 | 5), Ok(Callback::None), "unknown type");
    }
}
