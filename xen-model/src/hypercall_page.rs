//! The hypercall page (hvm_hypercall_page_initialise): 128 stubs of 32
//! bytes, stub i = `mov eax, i; vmcall|vmmcall; ret`, the rest int3, and
//! the iret stub (23) a ud2, since HVM guests have no HYPERVISOR_iret.
//! On a backend that cannot intercept VMCALL (KVM without Xen support), the
//! stubs end in `out PORT, al` instead, which that backend reports as a
//! hypercall exit.

use sim_core::cpuid::Vendor;
use sim_core::GuestMemory;

pub const STUB_SIZE: usize = 32;
pub const HYPERVISOR_IRET: usize = 23;

/// The instruction a stub uses to enter the hypervisor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HypercallGate {
    /// VMCALL on Intel, VMMCALL on AMD: what Xen writes.
    #[default]
    Native,
    /// `out PORT, al` (E6 ib): a port exit the backend turns into a hypercall.
    Port(u8),
}

pub fn page(vendor: Vendor, gate: HypercallGate) -> [u8; 4096] {
    let mut p = [0xccu8; 4096];
    for (i, stub) in p.chunks_exact_mut(STUB_SIZE).enumerate() {
        if i == HYPERVISOR_IRET {
            stub[..2].copy_from_slice(&[0x0f, 0x0b]);
            continue;
        }
        stub[0] = 0xb8;
        stub[1..5].copy_from_slice(&(i as u32).to_le_bytes());
        let enter: &[u8] = match (gate, vendor) {
            (HypercallGate::Native, Vendor::Intel) => &[0x0f, 0x01, 0xc1],
            (HypercallGate::Native, Vendor::Amd) => &[0x0f, 0x01, 0xd9],
            (HypercallGate::Port(port), _) => &[0xe6, port],
        };
        stub[5..5 + enter.len()].copy_from_slice(enter);
        stub[5 + enter.len()] = 0xc3;
    }
    p
}

/// WRMSR of the hypercall MSR: fill the page at GPA `value`. A non-zero
/// page index (low 12 bits) or a frame that is not RAM is #GP: returns
/// whether the write was accepted.
pub fn write(mem: &GuestMemory, vendor: Vendor, gate: HypercallGate, value: u64) -> bool {
    value & 0xfff == 0 && mem.is_ram(value) && mem.write(value, &page(vendor, gate)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    fn mnemonics(bytes: &[u8]) -> Vec<Mnemonic> {
        let mut d = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
        (0..3).map(|_| d.decode().mnemonic()).collect()
    }

    #[test]
    fn stubs_decode_per_vendor() {
        let p = page(Vendor::Intel, HypercallGate::Native);
        assert_eq!(mnemonics(&p[32 * 17..]), vec![Mnemonic::Mov, Mnemonic::Vmcall, Mnemonic::Ret]);
        assert_eq!(u32::from_le_bytes(p[32 * 17 + 1..32 * 17 + 5].try_into().unwrap()), 17);
        let a = page(Vendor::Amd, HypercallGate::Native);
        assert_eq!(mnemonics(&a[32 * 29..]), vec![Mnemonic::Mov, Mnemonic::Vmmcall, Mnemonic::Ret]);
        assert_eq!(mnemonics(&a[32 * 23..])[0], Mnemonic::Ud2);
        assert_eq!(a[32 * 5 + 9], 0xcc, "padding is int3");
    }

    #[test]
    fn port_gate_stubs_end_in_an_out_to_that_port() {
        let p = page(Vendor::Intel, HypercallGate::Port(0xe8));
        // mov eax, 24; out 0xe8, al; ret — per the Intel SDM encodings B8 id, E6 ib, C3.
        assert_eq!(&p[32 * 24..32 * 24 + 8], &[0xb8, 24, 0, 0, 0, 0xe6, 0xe8, 0xc3]);
        assert_eq!(mnemonics(&p[32 * 24..]), vec![Mnemonic::Mov, Mnemonic::Out, Mnemonic::Ret]);
    }

    #[test]
    fn bad_gpa_is_refused() {
        let mem = GuestMemory::new(2).unwrap();
        assert!(!write(&mem, Vendor::Intel, HypercallGate::Native, 0x3000 | 1), "page index 1");
        assert!(!write(&mem, Vendor::Intel, HypercallGate::Native, 0xfee0_0000), "not RAM");
        assert!(write(&mem, Vendor::Intel, HypercallGate::Native, 0x3000));
        assert_eq!(mem.read_u8(0x3000).unwrap(), 0xb8);
    }
}
