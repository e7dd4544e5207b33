//! The `interp` fuzz target, compiled on stable so `xensim fuzz-repro`
//! reproduces what cargo-fuzz finds: arbitrary instruction bytes plus a
//! small register and memory state, run for a bounded number of
//! instructions in a sandbox machine (real, 32-bit protected or 64-bit long
//! mode; every IDT vector leads to its own HLT). Exits are answered from the
//! input. The host must never panic; whatever the guest does must leave an
//! architecturally valid state (reserved RFLAGS bits, canonical RIP in
//! 64-bit mode) that survives a state round trip through a fresh CPU.

use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use sim_core::cpuid::{CpuidTable, Vendor};
use sim_core::state::{cr0, cr4, efer, gpr, rflags, sreg, ArchState, CpuMode, DescriptorTable, Segment};
use sim_core::{Completion, GuestMemory, Vcpu, VcpuExit};

use crate::Interpreter;

const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const PT: u64 = 0x4000;
const GDT: u64 = 0x5000;
const IDT: u64 = 0x6000;
const TSS: u64 = 0x8000;
pub const CODE: u64 = 0x10000;
/// Vector v's handler is the HLT at HANDLERS + v.
pub const HANDLERS: u64 = 0x18000;
pub const DATA: u64 = 0x20000;
const STACK_TOP: u64 = 0x30000;
const IST1_TOP: u64 = 0x31000;
const RSP0_TOP: u64 = 0x32000;
/// Instructions per `run`, and `run` calls per input.
const BUDGET: u64 = 64;
const RUNS: usize = 8;

const GDT_ENTRIES: [u64; 9] = [
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

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Long,
    Prot32,
    Real,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    pub mode: Mode,
    /// RAX, RCX, RDX, RBX, (RSP is the sandbox's), RBP, RSI, RDI.
    pub gprs: [u64; 7],
    /// Arithmetic flags and DF (other bits are masked off).
    pub flags: u16,
    /// Bytes at DATA.
    pub data: Vec<u8>,
    /// Answers to IN, MMIO reads and RDMSR, in order (then zero).
    pub answers: Vec<u64>,
    /// Instruction bytes at CODE (up to 4 KiB).
    pub code: Vec<u8>,
}

pub fn decode(data: &[u8]) -> Option<Input> {
    Input::arbitrary_take_rest(Unstructured::new(data)).ok()
}

/// Run the target on raw fuzzer bytes: the decoded input and the result.
pub fn run_bytes(data: &[u8]) -> (String, Result<(), String>) {
    match decode(data) {
        Some(i) => (format!("{i:#?}"), run(&i)),
        None => ("(does not decode: skipped, as cargo fuzz does)".into(), Ok(())),
    }
}

thread_local! {
    static CPUID: Arc<CpuidTable> = Arc::new(CpuidTable::baseline(Vendor::Intel));
    /// Per mode: the sandbox's tables (guest-physical 0..CODE) and its
    /// initial state, built once and copied into each fresh memory.
    static TEMPLATES: Vec<(Mode, Vec<u8>, ArchState)> = [Mode::Long, Mode::Prot32, Mode::Real]
        .into_iter()
        .filter_map(|m| template(m).ok().map(|(img, s)| (m, img, s)))
        .collect();
    /// The CPU that state round trips go through (reset by `set_state`).
    static OTHER: std::cell::RefCell<Interpreter> =
        std::cell::RefCell::new(Interpreter::new(0, 1, Arc::new(CpuidTable::baseline(Vendor::Intel))));
}

fn template(mode: Mode) -> Result<(Vec<u8>, ArchState), String> {
    let mem = GuestMemory::new(2).map_err(|e| format!("sandbox memory: {e}"))?;
    let s = sandbox(&mem, mode)?;
    let mut img = vec![0u8; (DATA) as usize];
    mem.read(0, &mut img).map_err(|e| format!("sandbox read: {e}"))?;
    Ok((img, s))
}

/// One sandbox memory per mode, kept across inputs: before each input the
/// pages written since the last reset (the dirty bitmap; the interpreter
/// marks every page it writes) go back to the template or to zero, so the
/// memory is exactly a fresh sandbox's, without a new mapping per input.
struct Sandbox {
    mode: Mode,
    mem: GuestMemory,
}

thread_local! {
    static SANDBOXES: std::cell::RefCell<Vec<Sandbox>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn with_sandbox<T>(mode: Mode, f: impl FnOnce(&GuestMemory, ArchState) -> Result<T, String>) -> Result<T, String> {
    TEMPLATES.with(|t| {
        let (_, img, s) = t.iter().find(|(m, _, _)| *m == mode).ok_or("no sandbox template")?;
        SANDBOXES.with(|sb| {
            let mut sb = sb.borrow_mut();
            let i = match sb.iter().position(|b| b.mode == mode) {
                Some(i) => i,
                None => {
                    let mem = GuestMemory::new(2).map_err(|e| format!("sandbox memory: {e}"))?;
                    mem.write(0, img).map_err(|e| format!("sandbox write: {e}"))?;
                    sb.push(Sandbox { mode, mem });
                    sb.len() - 1
                }
            };
            let mem = &mut sb[i].mem;
            const ZERO: [u8; 4096] = [0; 4096];
            for gfn in mem.take_dirty() {
                let at = gfn << 12;
                let page = img.get(at as usize..at as usize + 4096).unwrap_or(&ZERO);
                mem.write(at, page).map_err(|e| format!("sandbox write: {e}"))?;
            }
            mem.take_dirty();
            f(mem, s.clone())
        })
    })
}

/// Execute one input in a sandbox that is exactly a fresh one (`Sandbox`)
/// with a fresh CPU: nothing carries over from an earlier input.
pub fn run(input: &Input) -> Result<(), String> {
    with_sandbox(input.mode, |mem, s| run_in(input, mem, s))
}

fn run_in(input: &Input, mem: &GuestMemory, mut s: ArchState) -> Result<(), String> {
    let cpuid = CPUID.with(Arc::clone);
    let mut cpu = Interpreter::new(0, 1, cpuid);
    let w = |a: u64, b: &[u8]| mem.write(a, b).map_err(|e| format!("sandbox write: {e}"));
    w(CODE, &input.code[..input.code.len().min(4096)])?;
    w(DATA, &input.data[..input.data.len().min(4096)])?;
    for (r, v) in [gpr::RAX, gpr::RCX, gpr::RDX, gpr::RBX, gpr::RBP, gpr::RSI, gpr::RDI].into_iter().zip(input.gprs) {
        s.gpr[r] = if input.mode == Mode::Long { v } else { v & 0xffff_ffff };
    }
    let arith = rflags::CF | rflags::PF | rflags::AF | rflags::ZF | rflags::SF | rflags::OF | rflags::DF;
    s.rflags = rflags::FIXED1 | (u64::from(input.flags) & arith);
    cpu.set_state(&s);
    let mut answers = input.answers.iter().copied();
    for _ in 0..RUNS {
        let exit = cpu.run(mem, BUDGET).map_err(|e| format!("run failed: {e}"))?;
        match exit {
            VcpuExit::IoIn { .. } | VcpuExit::MmioRead { .. } | VcpuExit::MsrRead { .. } => {
                cpu.complete(Completion::Data(answers.next().unwrap_or(0)))
            }
            VcpuExit::IoOut { .. } | VcpuExit::MmioWrite { .. } => cpu.complete(Completion::Done),
            VcpuExit::MsrWrite { .. } => cpu.complete(Completion::Fault),
            VcpuExit::Halt | VcpuExit::Shutdown => break,
            VcpuExit::Hypercall | VcpuExit::BudgetExhausted | VcpuExit::InterruptWindow => {}
        }
        check(&cpu.state())?;
    }
    Ok(())
}

/// Architectural invariants of any state the CPU can reach.
fn check(s: &ArchState) -> Result<(), String> {
    let reserved = !((1u64 << 22) - 1) | 1 << 3 | 1 << 5 | 1 << 15;
    if s.rflags & rflags::FIXED1 == 0 || s.rflags & reserved != 0 {
        return Err(format!("RFLAGS {:#x} breaks the fixed bits", s.rflags));
    }
    if s.mode() == CpuMode::Long64 {
        let top = s.rip >> 47;
        if top != 0 && top != (1 << 17) - 1 {
            return Err(format!("non-canonical RIP {:#x} in 64-bit mode", s.rip));
        }
    } else if s.rip >> 32 != 0 {
        return Err(format!("RIP {:#x} above 4 GiB outside 64-bit mode", s.rip));
    }
    if s.cr0 & cr0::PG != 0 && s.cr0 & cr0::PE == 0 {
        return Err(format!("CR0 {:#x}: paging without protection", s.cr0));
    }
    if s.efer & efer::LMA != 0 && s.cr0 & cr0::PG == 0 {
        return Err("EFER.LMA without paging".into());
    }
    // A state the CPU produced restores unchanged on a fresh CPU (snapshots).
    let same = OTHER.with(|o| {
        let mut other = o.borrow_mut();
        other.set_state(s);
        other.state() == *s
    });
    if !same {
        return Err("state differs after set_state/state on a fresh CPU".into());
    }
    Ok(())
}

/// Tables for `mode`; returns the initial state.
fn sandbox(m: &GuestMemory, mode: Mode) -> Result<ArchState, String> {
    let w64 = |a: u64, v: u64| m.write_u64(a, v).map_err(|e| format!("sandbox write: {e}"));
    let hlts = [0xf4u8; 256];
    m.write(HANDLERS, &hlts).map_err(|e| format!("sandbox write: {e}"))?;
    Ok(match mode {
        Mode::Long => {
            w64(PML4, PDPT | 7)?;
            w64(PDPT, PD | 7)?;
            w64(PD, PT | 7)?;
            for i in 0..512u64 {
                w64(PT + i * 8, (i << 12) | 7)?;
            }
            for (i, d) in GDT_ENTRIES.iter().enumerate() {
                w64(GDT + i as u64 * 8, *d)?;
            }
            let (lo, hi) = tss_desc(TSS, 0x67);
            w64(GDT + 0x30, lo)?;
            w64(GDT + 0x38, hi)?;
            w64(TSS + 4, RSP0_TOP)?;
            w64(TSS + 0x24, IST1_TOP)?;
            for v in 0..256u64 {
                let h = HANDLERS + v;
                let ist = u64::from(v == 8);
                let lo =
                    (h & 0xffff) | 0x08 << 16 | ist << 32 | (0xe | 3 << 5 | 0x80) << 40 | ((h >> 16) & 0xffff) << 48;
                w64(IDT + v * 16, lo)?;
                w64(IDT + v * 16 + 8, h >> 32)?;
            }
            let mut s = ArchState::reset();
            s.cr0 = cr0::PE | cr0::PG | cr0::ET | cr0::WP | cr0::NE | cr0::MP;
            s.cr3 = PML4;
            s.cr4 = cr4::PAE | cr4::OSFXSR | cr4::OSXMMEXCPT | cr4::PGE;
            s.efer = efer::LME | efer::LMA | efer::SCE | efer::NXE;
            s.seg[sreg::CS] = Segment::from_descriptor(0x08, GDT_ENTRIES[1], 0);
            for sr in [sreg::DS, sreg::ES, sreg::SS, sreg::FS, sreg::GS] {
                s.seg[sr] = Segment::from_descriptor(0x10, GDT_ENTRIES[2], 0);
            }
            s.gdtr = DescriptorTable { base: GDT, limit: 0x47 };
            s.idtr = DescriptorTable { base: IDT, limit: 0xfff };
            s.tr = Segment::from_descriptor(0x30, lo, hi as u32);
            s.rip = CODE;
            s.gpr[gpr::RSP] = STACK_TOP;
            s.msrs.star = (0x18u64 << 48) | (0x08u64 << 32);
            s
        }
        Mode::Prot32 => {
            for (i, d) in GDT_ENTRIES.iter().enumerate() {
                w64(GDT + i as u64 * 8, *d)?;
            }
            for v in 0..256u64 {
                let h = HANDLERS + v;
                let lo = (h & 0xffff) | 0x40 << 16 | (0x8e | 3 << 5) << 40 | ((h >> 16) & 0xffff) << 48;
                w64(IDT + v * 8, lo)?;
            }
            let mut s = ArchState::pvh_entry(CODE, 0);
            s.seg[sreg::CS] = Segment::from_descriptor(0x40, GDT_ENTRIES[8], 0);
            for sr in [sreg::DS, sreg::ES, sreg::SS, sreg::FS, sreg::GS] {
                s.seg[sr] = Segment::from_descriptor(0x10, GDT_ENTRIES[2], 0);
            }
            s.gdtr = DescriptorTable { base: GDT, limit: 0x47 };
            s.idtr = DescriptorTable { base: IDT, limit: 0x7ff };
            s.gpr[gpr::RSP] = STACK_TOP;
            s
        }
        Mode::Real => {
            // IVT at 0: vector v -> 1800:v, the HLT at HANDLERS + v.
            for v in 0..256u64 {
                m.write_u32(v * 4, (0x1800 << 16 | v) as u32).map_err(|e| format!("sandbox write: {e}"))?;
            }
            let mut s = ArchState::reset();
            s.seg[sreg::CS] = Segment::real_mode((CODE >> 4) as u16, true);
            for sr in [sreg::DS, sreg::ES, sreg::FS, sreg::GS] {
                s.seg[sr] = Segment::real_mode((DATA >> 4) as u16, false);
            }
            s.seg[sreg::SS] = Segment::real_mode(0x2000, false);
            s.idtr = DescriptorTable { base: 0, limit: 0x3ff };
            s.rip = 0;
            s.gpr[gpr::RSP] = 0xfffe;
            s
        }
    })
}

fn tss_desc(base: u64, limit: u64) -> (u64, u64) {
    let lo = (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | 0x8b << 40
        | ((limit >> 16) & 0xf) << 48
        | ((base >> 24) & 0xff) << 56;
    (lo, base >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After an input that writes its code, data, stack and page tables,
    /// the next input's memory is byte for byte a fresh sandbox's.
    #[test]
    fn the_sandbox_memory_is_reset_exactly() {
        // mov [rsp-8], rax; mov [0x7ff00], eax (far beyond the tables);
        // mov [0x10000], eax (its own code); mov [0x1000], rax (the PML4,
        // last: it breaks the translation); hlt.
        let code = [
            0x48, 0x89, 0x44, 0x24, 0xf8, 0x89, 0x04, 0x25, 0x00, 0xff, 0x07, 0x00, 0x89, 0x04, 0x25, 0x00, 0x00, 0x01,
            0x00, 0x48, 0x89, 0x04, 0x25, 0x00, 0x10, 0x00, 0x00, 0xf4,
        ];
        let input = Input {
            mode: Mode::Long,
            gprs: [0x1111_2222_3333_4444, 0, 0, 0, 0, 0, 0],
            flags: 0,
            data: vec![0xaa; 300],
            answers: vec![],
            code: code.to_vec(),
        };
        with_sandbox(Mode::Long, |mem, s| {
            run_in(&input, mem, s)?;
            // The writes happened (so the reset below has work to do).
            for at in [STACK_TOP - 8, PML4, 0x7ff00] {
                assert_eq!(mem.read_u32(at).unwrap(), 0x3333_4444, "at {at:#x}");
            }
            assert_eq!(mem.read_u8(DATA).unwrap(), 0xaa);
            Ok(())
        })
        .unwrap();
        let (img, _) = template(Mode::Long).unwrap();
        let fresh = GuestMemory::new(2).unwrap();
        fresh.write(0, &img).unwrap();
        let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
        let mut pages = 0;
        with_sandbox(Mode::Long, |mem, _| {
            for gpa in (0..2u64 << 20).step_by(4096) {
                mem.read(gpa, &mut a).unwrap();
                fresh.read(gpa, &mut b).unwrap();
                assert!(a == b, "page {gpa:#x} differs from a fresh sandbox's");
                pages += 1;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(pages, 512);
    }
}
