//! ACPI tables for a legacy-free PC: RSDP, XSDT (and RSDT), FADT, an empty
//! DSDT and the MADT, written into the BIOS area at `layout::ACPI_TABLES_BASE`
//! (ACPI 6.0 layouts; offsets per the ACPI specification, chapter 5.2).
//!
//! The FADT declares a hardware-reduced platform (HW_REDUCED_ACPI). This
//! machine has no PM1 event/control blocks, PM timer, GPE blocks, SMI
//! command port or FACS, and a full-hardware FADT must provide PM1a
//! (ACPICA reports "Required FADT field ... has zero address"). Legacy-free
//! VMMs without that hardware (QEMU microvm, Firecracker, Cloud Hypervisor)
//! declare hardware-reduced ACPI for the same reason. Xen's libacpi builds a
//! full FADT for PVH guests because Xen can provide PM1 blocks; we cannot.
//! Linux x86 on a hardware-reduced FADT also skips the i8259 and PIT setup
//! and the SCI, which matches this machine (no PIC, no PIT), so SCI_INT is 0.
//! IAPC_BOOT_ARCH says: no VGA, no CMOS RTC, no 8042 (bit 1 clear), no
//! LPC/ISA motherboard devices for PnP enumeration (bit 0 clear).

use crate::layout::{ACPI_TABLES_BASE, ACPI_TABLES_END, LAPIC_BASE};
use crate::memory::{GuestMemory, MemoryError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApicEntry {
    pub id: u8,
    pub addr: u32,
    pub gsi_base: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcpiConfig {
    /// vCPUs; vCPU i has APIC ID i and ACPI processor UID i.
    pub cpus: u32,
    pub ioapic: Option<IoApicEntry>,
    /// (ISA IRQ, GSI, MPS INTI flags) interrupt source overrides.
    pub interrupt_overrides: Vec<(u8, u32, u16)>,
}

const OEM_ID: &[u8; 6] = b"XENSIM";
const OEM_TABLE_ID: &[u8; 8] = b"XENSIM  ";
const CREATOR_ID: &[u8; 4] = b"XSIM";
const HEADER_LEN: usize = 36;
const RSDP_LEN: usize = 36;
const FADT_LEN: usize = 276;
const MADT_FIXED_LEN: usize = 44;

pub const FADT_FLAG_WBINVD: u32 = 1 << 0;
pub const FADT_FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;
pub const BOOT_ARCH_8042: u16 = 1 << 1;
pub const BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
pub const BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

pub const MADT_LOCAL_APIC: u8 = 0;
pub const MADT_IO_APIC: u8 = 1;
pub const MADT_INTERRUPT_OVERRIDE: u8 = 2;
pub const MADT_LOCAL_X2APIC: u8 = 9;
pub const MADT_ENTRY_ENABLED: u32 = 1;
/// The highest APIC ID a type-0 entry may carry (0xFF is the xAPIC broadcast).
const MAX_XAPIC_ID: u32 = 254;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

/// A system description table: standard header + `body`, checksummed.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = HEADER_LEN + body.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(signature);
    t.extend_from_slice(&(len as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, below
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(CREATOR_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

fn fadt_body(dsdt: u64) -> Vec<u8> {
    let mut b = vec![0u8; FADT_LEN - HEADER_LEN];
    let mut put = |offset: usize, bytes: &[u8]| b[offset - HEADER_LEN..][..bytes.len()].copy_from_slice(bytes);
    // 36 FIRMWARE_CTRL = 0: no FACS (optional when hardware-reduced).
    put(40, &(dsdt as u32).to_le_bytes()); // DSDT (32-bit copy of X_DSDT)
                                           // 46 SCI_INT = 0, 48 SMI_CMD = 0, PM blocks all 0.
    put(109, &(BOOT_ARCH_VGA_NOT_PRESENT | BOOT_ARCH_CMOS_RTC_NOT_PRESENT).to_le_bytes());
    put(112, &(FADT_FLAG_WBINVD | FADT_FLAG_HW_REDUCED_ACPI).to_le_bytes());
    // 131 FADT minor version 0: ACPI 6.0.
    put(140, &dsdt.to_le_bytes()); // X_DSDT
    b
}

/// Bytes of Local APIC / Local x2APIC entries for `cpus` vCPUs.
fn lapic_entries_len(cpus: u32) -> u64 {
    let xapic = u64::from(cpus.min(MAX_XAPIC_ID + 1));
    let x2apic = u64::from(cpus) - xapic;
    xapic * 8 + x2apic * 16
}

/// MADT flag bit 0: a PC-AT dual-8259 setup is also present.
const MADT_PCAT_COMPAT: u32 = 1;

fn madt_body(cfg: &AcpiConfig) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(LAPIC_BASE as u32).to_le_bytes());
    // Flags: PCAT_COMPAT, the machine has the legacy 8259 pair (ACPI 6.4,
    // table 5.20); a guest must mask it before using the IOAPIC.
    b.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for id in 0..cfg.cpus {
        if id <= MAX_XAPIC_ID {
            b.extend_from_slice(&[MADT_LOCAL_APIC, 8, id as u8, id as u8]);
            b.extend_from_slice(&MADT_ENTRY_ENABLED.to_le_bytes());
        } else {
            b.extend_from_slice(&[MADT_LOCAL_X2APIC, 16, 0, 0]);
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&MADT_ENTRY_ENABLED.to_le_bytes());
            b.extend_from_slice(&id.to_le_bytes()); // ACPI processor UID
        }
    }
    if let Some(io) = cfg.ioapic {
        b.extend_from_slice(&[MADT_IO_APIC, 12, io.id, 0]);
        b.extend_from_slice(&io.addr.to_le_bytes());
        b.extend_from_slice(&io.gsi_base.to_le_bytes());
    }
    for &(irq, gsi, flags) in &cfg.interrupt_overrides {
        b.extend_from_slice(&[MADT_INTERRUPT_OVERRIDE, 10, 0 /* ISA bus */, irq]);
        b.extend_from_slice(&gsi.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
    }
    b
}

/// Lays tables out from `ACPI_TABLES_BASE`, each 16-byte aligned.
struct Image {
    bytes: Vec<u8>,
}

impl Image {
    fn place(&mut self, table: &[u8]) -> u64 {
        let at = self.bytes.len().next_multiple_of(16);
        self.bytes.resize(at, 0);
        self.bytes.extend_from_slice(table);
        ACPI_TABLES_BASE + at as u64
    }
}

/// Write the tables and return the RSDP's guest-physical address. If they
/// would not fit below `ACPI_TABLES_END` (tens of thousands of vCPUs),
/// nothing is written and the error names `ACPI_TABLES_END`.
pub fn write_tables(mem: &GuestMemory, cfg: &AcpiConfig) -> Result<u64, MemoryError> {
    // Bound the size before building anything: `cpus` is unchecked input.
    // RSDP, DSDT, FADT, MADT header, XSDT and RSDT with two pointers each,
    // and up to 15 bytes of alignment before each of the five tables.
    let fixed = RSDP_LEN + HEADER_LEN + FADT_LEN + MADT_FIXED_LEN + (HEADER_LEN + 16) + (HEADER_LEN + 8) + 5 * 15;
    let madt_entries =
        lapic_entries_len(cfg.cpus) + cfg.ioapic.map_or(0, |_| 12) + 10 * cfg.interrupt_overrides.len() as u64;
    if fixed as u64 + madt_entries > ACPI_TABLES_END - ACPI_TABLES_BASE {
        return Err(MemoryError::Unbacked(ACPI_TABLES_END));
    }

    let mut image = Image { bytes: vec![0; RSDP_LEN] }; // RSDP first, filled last
    let dsdt = image.place(&sdt(b"DSDT", 2, &[]));
    let fadt = image.place(&sdt(b"FACP", 6, &fadt_body(dsdt)));
    let madt = image.place(&sdt(b"APIC", 4, &madt_body(cfg)));
    let xsdt_body: Vec<u8> = [fadt, madt].iter().flat_map(|a| a.to_le_bytes()).collect();
    let xsdt = image.place(&sdt(b"XSDT", 1, &xsdt_body));
    // An RSDT too, for 32-bit loaders that ignore the XSDT.
    let rsdt_body: Vec<u8> = [fadt, madt].iter().flat_map(|&a| (a as u32).to_le_bytes()).collect();
    let rsdt = image.place(&sdt(b"RSDT", 1, &rsdt_body));

    let rsdp = &mut image.bytes[..RSDP_LEN];
    rsdp[0..8].copy_from_slice(b"RSD PTR ");
    rsdp[9..15].copy_from_slice(OEM_ID);
    rsdp[15] = 2; // ACPI 2.0+ structure
    rsdp[16..20].copy_from_slice(&(rsdt as u32).to_le_bytes());
    rsdp[20..24].copy_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    rsdp[24..32].copy_from_slice(&xsdt.to_le_bytes());
    rsdp[8] = checksum(&rsdp[..20]);
    rsdp[32] = checksum(rsdp);

    mem.write(ACPI_TABLES_BASE, &image.bytes)?;
    Ok(ACPI_TABLES_BASE)
}

#[cfg(test)]
mod tests {
    use super::*;

    // An independent reader, from the ACPI 6.0 offsets (section 5.2).

    fn read(mem: &GuestMemory, gpa: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        mem.read(gpa, &mut buf).unwrap();
        buf
    }

    fn sums_to_zero(bytes: &[u8]) -> bool {
        bytes.iter().map(|&b| u32::from(b)).sum::<u32>() % 256 == 0
    }

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    /// Read a whole table at `gpa`, checking header, bounds and checksum.
    fn table(mem: &GuestMemory, gpa: u64, sig: &[u8; 4]) -> Vec<u8> {
        let head = read(mem, gpa, 36);
        assert_eq!(&head[0..4], sig);
        let len = u32_at(&head, 4) as usize;
        assert!(gpa >= ACPI_TABLES_BASE && gpa + len as u64 <= ACPI_TABLES_END, "{sig:?} out of the ACPI area");
        let t = read(mem, gpa, len);
        assert!(sums_to_zero(&t), "{sig:?} checksum");
        assert_eq!(&t[10..16], b"XENSIM");
        t
    }

    struct Parsed {
        fadt: Vec<u8>,
        madt: Vec<u8>,
        dsdt: Vec<u8>,
    }

    fn parse(mem: &GuestMemory, rsdp_at: u64) -> Parsed {
        assert_eq!(rsdp_at % 16, 0, "RSDP on a 16-byte boundary");
        assert!((0xe_0000..0x10_0000).contains(&rsdp_at), "RSDP where a BIOS-area scan finds it");
        let rsdp = read(mem, rsdp_at, 36);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert!(sums_to_zero(&rsdp[0..20]), "ACPI 1.0 checksum");
        assert!(sums_to_zero(&rsdp[0..36]), "extended checksum");
        assert_eq!(rsdp[15], 2);
        assert_eq!(u32_at(&rsdp, 20), 36);
        let xsdt = table(mem, u64_at(&rsdp, 24), b"XSDT");
        let rsdt = table(mem, u64::from(u32_at(&rsdp, 16)), b"RSDT");
        let xptrs: Vec<u64> = (36..xsdt.len()).step_by(8).map(|o| u64_at(&xsdt, o)).collect();
        let rptrs: Vec<u64> = (36..rsdt.len()).step_by(4).map(|o| u64::from(u32_at(&rsdt, o))).collect();
        assert_eq!(xptrs, rptrs);
        let mut fadt = None;
        let mut madt = None;
        for &p in &xptrs {
            match &read(mem, p, 4)[..] {
                b"FACP" => fadt = Some(table(mem, p, b"FACP")),
                b"APIC" => madt = Some(table(mem, p, b"APIC")),
                other => panic!("unexpected table {other:?}"),
            }
        }
        let fadt = fadt.expect("FADT listed");
        let dsdt = table(mem, u64_at(&fadt, 140), b"DSDT");
        Parsed { fadt, madt: madt.expect("MADT listed"), dsdt }
    }

    /// MADT entries as (type, bytes).
    fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut o = 44;
        while o < madt.len() {
            let len = usize::from(madt[o + 1]);
            assert!(len >= 2 && o + len <= madt.len(), "entry length");
            out.push((madt[o], madt[o + 2..o + len].to_vec()));
            o += len;
        }
        out
    }

    fn mem() -> GuestMemory {
        GuestMemory::new(2).unwrap()
    }

    #[test]
    fn tables_chain_and_checksum() {
        let mem = mem();
        let rsdp = write_tables(&mem, &AcpiConfig { cpus: 2, ..Default::default() }).unwrap();
        let p = parse(&mem, rsdp);
        assert_eq!(p.fadt.len(), 276);
        assert_eq!(p.fadt[8], 6, "FADT revision");
        assert_eq!(u32_at(&p.fadt, 40) as u64, u64_at(&p.fadt, 140), "DSDT and X_DSDT agree");
        assert_eq!(p.dsdt.len(), 36);
        let boot_arch = u16_at(&p.fadt, 109);
        assert_eq!(boot_arch & (1 << 2), 1 << 2, "VGA not present");
        assert_eq!(boot_arch & (1 << 5), 1 << 5, "CMOS RTC not present");
        assert_eq!(boot_arch & (1 << 1), 0, "no 8042");
        let flags = u32_at(&p.fadt, 112);
        assert_eq!(flags & (1 << 20), 1 << 20, "HW_REDUCED_ACPI");
        assert_eq!(u32_at(&p.fadt, 56), 0, "no PM1a event block");
        assert_eq!(u16_at(&p.fadt, 46), 0, "SCI_INT");
    }

    #[test]
    fn madt_has_one_enabled_lapic_per_cpu() {
        let mem = mem();
        let rsdp = write_tables(&mem, &AcpiConfig { cpus: 4, ..Default::default() }).unwrap();
        let madt = parse(&mem, rsdp).madt;
        assert_eq!(u32_at(&madt, 36), 0xfee0_0000);
        assert_eq!(u32_at(&madt, 40) & 1, 1, "PCAT_COMPAT: the 8259 pair is present");
        let entries = madt_entries(&madt);
        assert_eq!(entries.len(), 4);
        for (i, (ty, e)) in entries.iter().enumerate() {
            assert_eq!(*ty, 0);
            assert_eq!(e.len(), 6);
            assert_eq!((e[0], e[1]), (i as u8, i as u8), "UID and APIC ID");
            assert_eq!(u32_at(e, 2) & 1, 1, "enabled");
        }
    }

    #[test]
    fn ids_above_254_use_x2apic_entries() {
        let mem = mem();
        let rsdp = write_tables(&mem, &AcpiConfig { cpus: 300, ..Default::default() }).unwrap();
        let entries = madt_entries(&parse(&mem, rsdp).madt);
        assert_eq!(entries.len(), 300);
        assert!(entries[..255].iter().all(|(ty, _)| *ty == 0));
        for (i, (ty, e)) in entries.iter().enumerate().skip(255) {
            assert_eq!(*ty, 9);
            assert_eq!(e.len(), 14);
            assert_eq!(u32_at(e, 2), i as u32, "x2APIC ID");
            assert_eq!(u32_at(e, 6) & 1, 1, "enabled");
            assert_eq!(u32_at(e, 10), i as u32, "UID");
        }
        assert_eq!(entries[254].1[1], 254);
    }

    #[test]
    fn ioapic_and_interrupt_overrides() {
        let mem = mem();
        let cfg = AcpiConfig {
            cpus: 1,
            ioapic: Some(IoApicEntry { id: 1, addr: 0xfec0_0000, gsi_base: 0 }),
            interrupt_overrides: vec![(0, 2, 0), (9, 9, 0x000d)],
        };
        let rsdp = write_tables(&mem, &cfg).unwrap();
        let entries = madt_entries(&parse(&mem, rsdp).madt);
        assert_eq!(entries.len(), 4);
        let (ty, io) = &entries[1];
        assert_eq!((*ty, io.len()), (1, 10));
        assert_eq!(io[0], 1);
        assert_eq!(u32_at(io, 2), 0xfec0_0000);
        assert_eq!(u32_at(io, 6), 0);
        let (ty, iso) = &entries[3];
        assert_eq!((*ty, iso.len()), (2, 8));
        assert_eq!((iso[0], iso[1]), (0, 9), "ISA bus, IRQ 9");
        assert_eq!(u32_at(iso, 2), 9);
        assert_eq!(u16_at(iso, 6), 0x000d);
        assert_eq!(u32_at(&entries[2].1, 2), 2, "IRQ 0 -> GSI 2");
    }

    #[test]
    fn too_many_cpus_is_an_error_not_an_overflow() {
        let mem = mem();
        let before = read(&mem, ACPI_TABLES_BASE, 16);
        let r = write_tables(&mem, &AcpiConfig { cpus: u32::MAX, ..Default::default() });
        assert_eq!(r, Err(MemoryError::Unbacked(ACPI_TABLES_END)));
        assert_eq!(read(&mem, ACPI_TABLES_BASE, 16), before, "nothing written");
    }
}
