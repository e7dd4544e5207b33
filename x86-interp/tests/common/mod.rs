//! Test rig: guest memory, an interpreter, and ready-made machine states
//! (long mode with identity paging, 32-bit protected mode, real mode).
#![allow(dead_code)]

use std::sync::Arc;

use iced_x86::code_asm::CodeAssembler;
use sim_core::cpuid::{CpuidTable, Vendor};
use sim_core::state::{cr0, cr4, efer, gpr, rflags, sreg, ArchState, DescriptorTable, Segment};
use sim_core::{Completion, GuestMemory, Vcpu, VcpuExit};
use x86_interp::Interpreter;

pub const PML4: u64 = 0x1000;
pub const PDPT: u64 = 0x2000;
pub const PD: u64 = 0x3000;
/// Page table for 0..2 MiB (4 KiB pages, so tests can unmap single pages).
pub const PT: u64 = 0x4000;
pub const GDT: u64 = 0x5000;
pub const IDT: u64 = 0x6000;
pub const TSS: u64 = 0x8000;
pub const CODE: u64 = 0x20_0000;
pub const HANDLERS: u64 = 0x28_0000;
pub const DATA: u64 = 0x40_0000;
pub const STACK_TOP: u64 = 0x30_0000;
pub const IST1_TOP: u64 = 0x31_0000;
pub const RSP0_TOP: u64 = 0x32_0000;

pub const KCODE: u16 = 0x08;
pub const KDATA: u16 = 0x10;
pub const UCODE32: u16 = 0x18;
pub const UDATA: u16 = 0x20;
pub const UCODE64: u16 = 0x28;
pub const TSS_SEL: u16 = 0x30;
pub const KCODE32: u16 = 0x40;

pub const GDT_ENTRIES: [u64; 9] = [
    0,
    0x00af_9a00_0000_ffff, // 0x08 kernel code64
    0x00cf_9200_0000_ffff, // 0x10 kernel data
    0x00cf_fa00_0000_ffff, // 0x18 user code32
    0x00cf_f200_0000_ffff, // 0x20 user data
    0x00af_fa00_0000_ffff, // 0x28 user code64
    0,                     // 0x30 TSS (filled in)
    0,                     // 0x38 TSS high
    0x00cf_9a00_0000_ffff, // 0x40 kernel code32
];

pub struct Rig {
    pub mem: GuestMemory,
    pub cpu: Interpreter,
}

pub fn cpuid() -> Arc<CpuidTable> {
    Arc::new(CpuidTable::baseline(Vendor::Intel))
}

pub fn tss_desc(base: u64, limit: u64) -> (u64, u64) {
    let lo = (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | 0x8b << 40
        | ((limit >> 16) & 0xf) << 48
        | ((base >> 24) & 0xff) << 56;
    (lo, base >> 32)
}

impl Rig {
    pub fn new() -> Rig {
        Rig { mem: GuestMemory::new(16).unwrap(), cpu: Interpreter::new(0, 1, cpuid()) }
    }

    /// 64-bit mode at CPL 0, identity-mapped 0..16 MiB, GDT/IDT/TSS set up.
    pub fn long() -> Rig {
        let r = Rig::new();
        let m = &r.mem;
        m.write_u64(PML4, PDPT | 7).unwrap();
        m.write_u64(PDPT, PD | 7).unwrap();
        m.write_u64(PD, PT | 7).unwrap();
        for i in 1..8u64 {
            m.write_u64(PD + i * 8, (i << 21) | 0x87).unwrap();
        }
        for i in 0..512u64 {
            m.write_u64(PT + i * 8, (i << 12) | 7).unwrap();
        }
        for (i, d) in GDT_ENTRIES.iter().enumerate() {
            m.write_u64(GDT + i as u64 * 8, *d).unwrap();
        }
        let (lo, hi) = tss_desc(TSS, 0x67);
        m.write_u64(GDT + 0x30, lo).unwrap();
        m.write_u64(GDT + 0x38, hi).unwrap();
        m.write_u64(TSS + 4, RSP0_TOP).unwrap();
        m.write_u64(TSS + 0x24, IST1_TOP).unwrap();
        let mut s = ArchState::reset();
        s.cr0 = cr0::PE | cr0::PG | cr0::ET | cr0::WP | cr0::NE | cr0::MP;
        s.cr3 = PML4;
        s.cr4 = cr4::PAE | cr4::OSFXSR | cr4::OSXMMEXCPT | cr4::PGE;
        s.efer = efer::LME | efer::LMA | efer::SCE | efer::NXE;
        s.seg[sreg::CS] = Segment::from_descriptor(KCODE, GDT_ENTRIES[1], 0);
        for sr in [sreg::DS, sreg::ES, sreg::SS, sreg::FS, sreg::GS] {
            s.seg[sr] = Segment::from_descriptor(KDATA, GDT_ENTRIES[2], 0);
        }
        s.gdtr = DescriptorTable { base: GDT, limit: 0x47 };
        s.idtr = DescriptorTable { base: IDT, limit: 0xfff };
        s.tr = Segment::from_descriptor(TSS_SEL, lo, hi as u32);
        s.ldtr = Segment::default();
        s.rip = CODE;
        s.rflags = rflags::FIXED1;
        s.gpr = [0; 16];
        s.gpr[gpr::RSP] = STACK_TOP;
        s.msrs.star = (0x18u64 << 48) | (0x08u64 << 32);
        let mut r = r;
        r.cpu.set_state(&s);
        r
    }

    /// 32-bit protected mode, flat segments, paging off.
    pub fn prot32() -> Rig {
        let mut r = Rig::new();
        for (i, d) in GDT_ENTRIES.iter().enumerate() {
            r.mem.write_u64(GDT + i as u64 * 8, *d).unwrap();
        }
        let mut s = ArchState::pvh_entry(CODE, 0);
        s.seg[sreg::CS] = Segment::from_descriptor(KCODE32, GDT_ENTRIES[8], 0);
        for sr in [sreg::DS, sreg::ES, sreg::SS, sreg::FS, sreg::GS] {
            s.seg[sr] = Segment::from_descriptor(KDATA, GDT_ENTRIES[2], 0);
        }
        s.gdtr = DescriptorTable { base: GDT, limit: 0x47 };
        s.idtr = DescriptorTable { base: IDT, limit: 0x7ff };
        s.gpr[gpr::RSP] = STACK_TOP;
        r.cpu.set_state(&s);
        r
    }

    /// Real mode with CS=0x1000 (code at 0x10000), SS=0x2000, SP=0xfffe.
    pub fn real() -> Rig {
        let mut r = Rig::new();
        let mut s = ArchState::reset();
        s.seg[sreg::CS] = Segment::real_mode(0x1000, true);
        for sr in [sreg::DS, sreg::ES, sreg::FS, sreg::GS] {
            s.seg[sr] = Segment::real_mode(0x3000, false);
        }
        s.seg[sreg::SS] = Segment::real_mode(0x2000, false);
        s.idtr = DescriptorTable { base: 0, limit: 0x3ff };
        s.rip = 0;
        s.gpr = [0; 16];
        s.gpr[gpr::RSP] = 0xfffe;
        r.cpu.set_state(&s);
        r
    }

    pub fn state(&self) -> ArchState {
        self.cpu.state()
    }

    pub fn edit(&mut self, f: impl FnOnce(&mut ArchState)) {
        let mut s = self.cpu.state();
        f(&mut s);
        self.cpu.set_state(&s);
    }

    pub fn gpr(&self, i: usize) -> u64 {
        self.cpu.gprs()[i]
    }

    pub fn load(&self, addr: u64, bytes: &[u8]) {
        self.mem.write(addr, bytes).unwrap();
    }

    /// Assemble with `bits` at `addr` and load the bytes there.
    pub fn asm(
        &self,
        bits: u32,
        addr: u64,
        f: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>,
    ) -> usize {
        let mut a = CodeAssembler::new(bits).unwrap();
        f(&mut a).unwrap();
        let bytes = a.assemble(addr).unwrap();
        self.load(addr, &bytes);
        bytes.len()
    }

    /// Install a 64-bit interrupt gate for `vector`.
    pub fn gate64(&self, vector: u8, handler: u64, ist: u8, dpl: u8, trap: bool) {
        let ty: u64 = if trap { 0xf } else { 0xe };
        let lo = (handler & 0xffff)
            | (KCODE as u64) << 16
            | (ist as u64) << 32
            | (ty | (dpl as u64) << 5 | 0x80) << 40
            | ((handler >> 16) & 0xffff) << 48;
        self.mem.write_u64(IDT + vector as u64 * 16, lo).unwrap();
        self.mem.write_u64(IDT + vector as u64 * 16 + 8, handler >> 32).unwrap();
    }

    /// Install a 32-bit interrupt gate for `vector` (protected mode).
    pub fn gate32(&self, vector: u8, handler: u64, dpl: u8) {
        let lo = (handler & 0xffff)
            | (KCODE32 as u64) << 16
            | (0x8e | (dpl as u64) << 5) << 40
            | ((handler >> 16) & 0xffff) << 48;
        self.mem.write_u64(IDT + vector as u64 * 8, lo).unwrap();
    }

    pub fn run(&mut self, budget: u64) -> VcpuExit {
        self.cpu.run(&self.mem, budget).unwrap()
    }

    /// Run until something other than the budget stops the CPU.
    pub fn run_until_exit(&mut self) -> VcpuExit {
        for _ in 0..1000 {
            let e = self.run(100_000);
            if e != VcpuExit::BudgetExhausted {
                return e;
            }
        }
        panic!("guest did not stop");
    }

    pub fn run_to_halt(&mut self) {
        let e = self.run_until_exit();
        assert_eq!(e, VcpuExit::Halt, "expected HLT, rip={:#x}", self.state().rip);
    }

    pub fn complete(&mut self, c: Completion) {
        self.cpu.complete(c);
    }
}
