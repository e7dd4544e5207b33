//! The hypercall page (hvm_hypercall_page_initialise): 128 stubs of 32
//! bytes, stub i = `mov eax, i; vmcall|vmmcall; ret`, the rest int3, and
//! the iret stub (23) a ud2, since HVM guests have no HYPERVISOR_iret.

use sim_core::cpuid::Vendor;
use sim_core::GuestMemory;

pub const STUB_SIZE: usize = 32;
pub const HYPERVISOR_IRET: usize = 23;

pub fn page(vendor: Vendor) -> [u8; 4096] {
    let mut p = [0xccu8; 4096];
    for (i, stub) in p.chunks_exact_mut(STUB_SIZE).enumerate() {
        if i == HYPERVISOR_IRET {
            stub[..2].copy_from_slice(&[0x0f, 0x0b]);
            continue;
        }
        stub[0] = 0xb8;
        stub[1..5].copy_from_slice(&(i as u32).to_le_bytes());
        stub[5..8].copy_from_slice(match vendor {
            Vendor::Intel => &[0x0f, 0x01, 0xc1],
            Vendor::Amd => &[0x0f, 0x01, 0xd9],
        });
        stub[8] = 0xc3;
    }
    p
}

/// WRMSR of the hypercall MSR: fill the page at GPA `value`. A non-zero
/// page index (low 12 bits) or a frame that is not RAM is #GP: returns
/// whether the write was accepted.
pub fn write(mem: &GuestMemory, vendor: Vendor, value: u64) -> bool {
    value & 0xfff == 0 && mem.is_ram(value) && mem.write(value, &page(vendor)).is_ok()
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
        let p = page(Vendor::Intel);
        assert_eq!(mnemonics(&p[32 * 17..]), vec![Mnemonic::Mov, Mnemonic::Vmcall, Mnemonic::Ret]);
        assert_eq!(u32::from_le_bytes(p[32 * 17 + 1..32 * 17 + 5].try_into().unwrap()), 17);
        let a = page(Vendor::Amd);
        assert_eq!(mnemonics(&a[32 * 29..]), vec![Mnemonic::Mov, Mnemonic::Vmmcall, Mnemonic::Ret]);
        assert_eq!(mnemonics(&a[32 * 23..])[0], Mnemonic::Ud2);
        assert_eq!(a[32 * 5 + 9], 0xcc, "padding is int3");
    }

    #[test]
    fn bad_gpa_is_refused() {
        let mem = GuestMemory::new(2).unwrap();
        assert!(!write(&mem, Vendor::Intel, 0x3000 | 1), "page index 1");
        assert!(!write(&mem, Vendor::Intel, 0xfee0_0000), "not RAM");
        assert!(write(&mem, Vendor::Intel, 0x3000));
        assert_eq!(mem.read_u8(0x3000).unwrap(), 0xb8);
    }
}
