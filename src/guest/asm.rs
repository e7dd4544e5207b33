//! Guest programs written with iced-x86's `CodeAssembler`: a builder that
//! supplies the boot prelude (long-mode entry from 32-bit protected mode),
//! a tiny runtime (print to port 0xE9), data and scratch memory, and turns
//! the result into a bootable PVH or Multiboot image.
//!
//! Memory layout of every program (guest-physical, identity-mapped):
//! `ENTRY` 32-bit entry code; `BODY64` the 64-bit body of long-mode
//! programs; `DATA_BASE` strings and tables; then zero-filled memory:
//! page tables at `PML4`, the stack below `STACK_TOP`, scratch from
//! `SCRATCH_BASE`. All of it counts as the kernel image, so modules are
//! placed above the scratch area.

use iced_x86::code_asm::*;
use iced_x86::IcedError;

use super::elf::{self, Segment, PF_R, PF_W, PF_X};

pub const ENTRY: u64 = 0x10_1000;
pub const BODY64: u64 = 0x10_2000;
pub const DATA_BASE: u64 = 0x14_0000;
const DATA_LIMIT: u64 = 0x15_0000;
pub const PML4: u64 = 0x15_0000;
pub const PDPT: u64 = 0x15_1000;
/// Four page directories of 2 MiB pages: the low 4 GiB.
pub const PD: u64 = 0x15_2000;
pub const STACK_TOP: u64 = 0x16_0000;
pub const SCRATCH_BASE: u64 = 0x16_0000;
/// The debug console port (QEMU's `-debugcon`).
pub const CONSOLE_PORT: u32 = 0xe9;
/// QEMU's isa-debug-exit port.
pub const EXIT_PORT: u32 = 0xf4;

/// GDT selectors set up by the long-mode prelude.
pub const CODE64_SEL: u16 = 0x08;
pub const DATA_SEL: u16 = 0x10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The body runs in 32-bit protected mode, paging off, as entered.
    Protected32,
    /// The prelude enters long mode; the body is 64-bit code.
    Long64,
}

/// How the image is booted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boot {
    /// ELF with the Xen PHYS32_ENTRY note (ELF64 for long-mode programs,
    /// ELF32 for 32-bit ones).
    Pvh,
    /// ELF32 with a Multiboot header.
    Multiboot,
    /// Flat binary with a Multiboot a.out-kludge header.
    MultibootAout,
}

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("assembler: {0}")]
    Asm(#[from] IcedError),
    #[error("{what} is {size:#x} bytes, more than the {limit:#x} the layout allows")]
    TooLarge { what: &'static str, size: u64, limit: u64 },
    #[error("{0} is not available in {1:?} mode")]
    WrongMode(&'static str, Mode),
}

/// A guest program under construction. Emit the body with `a` (the
/// assembler for `ENTRY` or `BODY64`) and the helpers.
///
/// At the body's first instruction: EAX/RAX and EBX/RBX hold the values the
/// boot loader passed (RAX zero-extended), ESP/RSP = `STACK_TOP`, interrupts
/// off, and in long mode the low 4 GiB identity-mapped with 2 MiB pages.
pub struct GuestProgram {
    pub a: CodeAssembler,
    mode: Mode,
    data: Vec<u8>,
    scratch: u64,
    puts: CodeLabel,
    put_hex: CodeLabel,
    put_dec: CodeLabel,
}

impl GuestProgram {
    pub fn new(mode: Mode) -> Result<Self, GuestError> {
        let mut a = CodeAssembler::new(if mode == Mode::Long64 { 64 } else { 32 })?;
        let (puts, put_hex, put_dec) = (a.create_label(), a.create_label(), a.create_label());
        match mode {
            Mode::Long64 => {
                // The far jump left DS/ES/SS with 32-bit descriptors; reload
                // them and recover the entry EAX the prelude kept in EBP.
                a.mov(ecx, DATA_SEL as u32)?;
                a.mov(ds, ecx)?;
                a.mov(es, ecx)?;
                a.mov(ss, ecx)?;
                a.mov(eax, ebp)?;
                a.mov(rsp, STACK_TOP)?;
                a.xor(ecx, ecx)?;
            }
            Mode::Protected32 => {
                a.cli()?;
                a.cld()?;
                a.mov(esp, STACK_TOP as u32)?;
            }
        }
        Ok(GuestProgram { a, mode, data: Vec::new(), scratch: 0, puts, put_hex, put_dec })
    }

    /// One-call form: a program in `mode` whose body `body` emits, booted by
    /// `boot`. The body should end by stopping (`halt` or `exit`).
    pub fn image(
        mode: Mode,
        boot: Boot,
        body: impl FnOnce(&mut GuestProgram) -> Result<(), GuestError>,
    ) -> Result<Vec<u8>, GuestError> {
        let mut g = GuestProgram::new(mode)?;
        body(&mut g)?;
        g.build(boot)
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Place `bytes` in the data area (aligned to `align`); returns the
    /// guest-physical address.
    pub fn data(&mut self, bytes: &[u8], align: usize) -> u32 {
        let at = self.data.len().next_multiple_of(align.max(1));
        self.data.resize(at, 0);
        self.data.extend_from_slice(bytes);
        (DATA_BASE + at as u64) as u32
    }

    /// A NUL-terminated copy of `s` in the data area.
    pub fn cstr(&mut self, s: &str) -> u32 {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.data(&b, 1)
    }

    /// Reserve `size` bytes of zeroed scratch memory; returns its address.
    pub fn scratch(&mut self, size: u64, align: u64) -> u64 {
        let at = self.scratch.next_multiple_of(align.max(1));
        self.scratch = at + size;
        SCRATCH_BASE + at
    }

    /// Print the literal `s` on the debug console. Preserves all registers.
    pub fn print(&mut self, s: &str) -> Result<(), GuestError> {
        let addr = self.cstr(s);
        self.print_cstr_at(addr)
    }

    /// Print the NUL-terminated string at `addr`. Preserves all registers.
    pub fn print_cstr_at(&mut self, addr: u32) -> Result<(), GuestError> {
        match self.mode {
            Mode::Long64 => {
                self.a.push(rsi)?;
                self.a.mov(esi, addr)?;
                self.a.call(self.puts)?;
                self.a.pop(rsi)?;
            }
            Mode::Protected32 => {
                self.a.push(esi)?;
                self.a.mov(esi, addr)?;
                self.a.call(self.puts)?;
                self.a.pop(esi)?;
            }
        }
        Ok(())
    }

    /// Print the NUL-terminated string whose address is in ESI/RSI.
    pub fn print_cstr(&mut self) -> Result<(), GuestError> {
        Ok(self.a.call(self.puts)?)
    }

    /// Print the value in RAX (long mode) or EDX:EAX (32-bit) in hex, as
    /// Rust's `{:#x}` does ("0x0", "0x1f"). Preserves all registers.
    pub fn print_hex(&mut self) -> Result<(), GuestError> {
        Ok(self.a.call(self.put_hex)?)
    }

    /// Print the value in RAX (long mode) or EDX:EAX (32-bit) in unsigned
    /// decimal. Preserves all registers.
    pub fn print_dec(&mut self) -> Result<(), GuestError> {
        Ok(self.a.call(self.put_dec)?)
    }

    /// Write `status` to the isa-debug-exit port (one byte), then stop.
    pub fn exit(&mut self, status: u8) -> Result<(), GuestError> {
        self.a.mov(al, status as u32)?;
        self.a.out(EXIT_PORT, al)?;
        self.halt()
    }

    /// `cli; hlt`, the clean stop (looping should anything wake the CPU).
    pub fn halt(&mut self) -> Result<(), GuestError> {
        let mut stop = self.a.create_label();
        self.a.cli()?;
        self.a.set_label(&mut stop)?;
        self.a.hlt()?;
        self.a.jmp(stop)?;
        Ok(())
    }

    /// Assemble the program and wrap it for `boot`.
    pub fn build(mut self, boot: Boot) -> Result<Vec<u8>, GuestError> {
        match self.mode {
            Mode::Long64 => runtime64(&mut self)?,
            Mode::Protected32 => runtime32(&mut self)?,
        }
        let gdtr = self.gdt();
        let mut code = Vec::new();
        if self.mode == Mode::Long64 {
            code = prelude(gdtr)?;
            check("long-mode prelude", code.len() as u64, BODY64 - ENTRY)?;
            code.resize((BODY64 - ENTRY) as usize, 0xcc);
        }
        let base = if self.mode == Mode::Long64 { BODY64 } else { ENTRY };
        code.extend(self.a.assemble(base)?);
        check("code", code.len() as u64, DATA_BASE - ENTRY)?;
        check("data", self.data.len() as u64, DATA_LIMIT - DATA_BASE)?;
        let bss = SCRATCH_BASE - PML4 + self.scratch.next_multiple_of(4096);
        let code_len = code.len() as u64;
        let data_len = self.data.len() as u64;
        let segments = [
            Segment::new(ENTRY, code, code_len, PF_R | PF_X),
            Segment::new(DATA_BASE, self.data, data_len, PF_R | PF_W),
            Segment::new(PML4, Vec::new(), bss, PF_R | PF_W),
        ];
        let entry = ENTRY as u32;
        Ok(match (boot, self.mode) {
            (Boot::Pvh, Mode::Long64) => elf::pvh_elf64(&segments, entry),
            (Boot::Pvh, Mode::Protected32) => elf::pvh_elf32(&segments, entry),
            (Boot::Multiboot, _) => elf::multiboot_elf32(&segments, entry, elf::MB_FLAGS),
            (Boot::MultibootAout, _) => elf::multiboot_aout_kludge(&segments, entry),
        })
    }

    /// GDT (null, 64-bit code, flat data, 32-bit code) and its 10-byte
    /// pseudo-descriptor in the data area; returns the pseudo-descriptor's
    /// address.
    fn gdt(&mut self) -> u32 {
        let table: [u64; 4] = [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff, 0x00cf_9a00_0000_ffff];
        let bytes: Vec<u8> = table.iter().flat_map(|d| d.to_le_bytes()).collect();
        let base = self.data(&bytes, 8);
        let mut ptr = ((bytes.len() - 1) as u16).to_le_bytes().to_vec();
        ptr.extend_from_slice(&(base as u64).to_le_bytes());
        self.data(&ptr, 8)
    }
}

fn check(what: &'static str, size: u64, limit: u64) -> Result<(), GuestError> {
    if size > limit {
        return Err(GuestError::TooLarge { what, size, limit });
    }
    Ok(())
}

/// 32-bit code at `ENTRY`: identity-map 4 GiB with 2 MiB pages, enable PAE,
/// EFER.LME and paging, and far-jump to `BODY64`. Keeps EAX in EBP and
/// leaves EBX untouched.
fn prelude(gdtr: u32) -> Result<Vec<u8>, GuestError> {
    let mut a = CodeAssembler::new(32)?;
    a.cli()?;
    a.cld()?;
    a.mov(ebp, eax)?;
    a.mov(esp, STACK_TOP as u32)?;
    a.lgdt(ptr(gdtr))?;
    // PD[i] = i * 2 MiB | PS | RW | P, for i in 0..2048 (four tables).
    let mut fill = a.create_label();
    a.xor(ecx, ecx)?;
    a.set_label(&mut fill)?;
    a.mov(eax, ecx)?;
    a.shl(eax, 21)?;
    a.or(eax, 0x83)?;
    a.mov(dword_ptr(ecx * 8 + PD as i32), eax)?;
    a.mov(dword_ptr(ecx * 8 + (PD as i32 + 4)), 0)?;
    a.inc(ecx)?;
    a.cmp(ecx, 2048)?;
    a.jb(fill)?;
    for i in 0..4u32 {
        a.mov(dword_ptr(PDPT as u32 + 8 * i), PD as u32 + 0x1000 * i + 3)?;
        a.mov(dword_ptr(PDPT as u32 + 8 * i + 4), 0)?;
    }
    a.mov(dword_ptr(PML4 as u32), PDPT as u32 + 3)?;
    a.mov(dword_ptr(PML4 as u32 + 4), 0)?;
    a.mov(eax, PML4 as u32)?;
    a.mov(cr3, eax)?;
    a.mov(eax, cr4)?;
    a.or(eax, 1 << 5)?; // PAE
    a.mov(cr4, eax)?;
    a.mov(ecx, 0xc000_0080u32)?; // IA32_EFER
    a.rdmsr()?;
    a.or(eax, 1 << 8)?; // LME
    a.wrmsr()?;
    a.mov(eax, cr0)?;
    a.or(eax, 0x8000_0001u32 as i32)?; // PG | PE
    a.mov(cr0, eax)?;
    // jmp far CODE64_SEL:BODY64 (EA ptr16:32).
    let mut far = vec![0xea];
    far.extend_from_slice(&(BODY64 as u32).to_le_bytes());
    far.extend_from_slice(&CODE64_SEL.to_le_bytes());
    a.db(&far)?;
    Ok(a.assemble(ENTRY)?)
}

/// Long-mode runtime: puts (RSI), put_hex (RAX), put_dec (RAX).
fn runtime64(g: &mut GuestProgram) -> Result<(), GuestError> {
    let a = &mut g.a;
    // puts: print bytes at RSI until NUL.
    a.set_label(&mut g.puts)?;
    a.push(rax)?;
    a.push(rsi)?;
    let (mut next, mut done) = (a.create_label(), a.create_label());
    a.set_label(&mut next)?;
    a.mov(al, byte_ptr(rsi))?;
    a.test(al, al)?;
    a.jz(done)?;
    a.out(CONSOLE_PORT, al)?;
    a.inc(rsi)?;
    a.jmp(next)?;
    a.set_label(&mut done)?;
    a.pop(rsi)?;
    a.pop(rax)?;
    a.ret()?;

    // put_hex: "0x", then the nibbles of RAX from the top, skipping leading
    // zeros but always printing the last one. RCX counts nibbles, RSI is set
    // once a digit was printed.
    a.set_label(&mut g.put_hex)?;
    for r in [rax, rcx, rdx, rsi] {
        a.push(r)?;
    }
    a.mov(rdx, rax)?;
    a.mov(al, b'0' as u32)?;
    a.out(CONSOLE_PORT, al)?;
    a.mov(al, b'x' as u32)?;
    a.out(CONSOLE_PORT, al)?;
    a.mov(ecx, 16)?;
    a.xor(esi, esi)?;
    let (mut nibble, mut skip, mut digit) = (a.create_label(), a.create_label(), a.create_label());
    a.set_label(&mut nibble)?;
    a.mov(rax, rdx)?;
    a.shr(rax, 60)?;
    a.shl(rdx, 4)?;
    a.or(esi, eax)?;
    a.cmp(ecx, 1)?;
    a.je(digit)?;
    a.test(esi, esi)?;
    a.jz(skip)?;
    a.set_label(&mut digit)?;
    hex_digit_out(a)?;
    a.set_label(&mut skip)?;
    a.dec(ecx)?;
    a.jnz(nibble)?;
    for r in [rsi, rdx, rcx, rax] {
        a.pop(r)?;
    }
    a.ret()?;

    // put_dec: divide by 10 pushing digits, then pop and print them.
    a.set_label(&mut g.put_dec)?;
    for r in [rax, rcx, rdx, rsi] {
        a.push(r)?;
    }
    a.mov(ecx, 10)?;
    a.xor(esi, esi)?;
    let (mut div, mut out) = (a.create_label(), a.create_label());
    a.set_label(&mut div)?;
    a.xor(edx, edx)?;
    a.div(rcx)?;
    a.add(edx, b'0' as i32)?;
    a.push(rdx)?;
    a.inc(esi)?;
    a.test(rax, rax)?;
    a.jnz(div)?;
    a.set_label(&mut out)?;
    a.pop(rax)?;
    a.out(CONSOLE_PORT, al)?;
    a.dec(esi)?;
    a.jnz(out)?;
    for r in [rsi, rdx, rcx, rax] {
        a.pop(r)?;
    }
    a.ret()?;
    Ok(())
}

/// Print the hex digit for the nibble in AL (0-15).
fn hex_digit_out(a: &mut CodeAssembler) -> Result<(), GuestError> {
    let mut num = a.create_label();
    a.add(al, b'0' as u32)?;
    a.cmp(al, b'9' as u32)?;
    a.jbe(num)?;
    a.add(al, (b'a' - b'9' - 1) as u32)?;
    a.set_label(&mut num)?;
    a.out(CONSOLE_PORT, al)?;
    Ok(())
}

/// 32-bit runtime: puts (ESI), put_hex (EDX:EAX), put_dec (EDX:EAX).
fn runtime32(g: &mut GuestProgram) -> Result<(), GuestError> {
    let a = &mut g.a;
    a.set_label(&mut g.puts)?;
    a.push(eax)?;
    a.push(esi)?;
    let (mut next, mut done) = (a.create_label(), a.create_label());
    a.set_label(&mut next)?;
    a.mov(al, byte_ptr(esi))?;
    a.test(al, al)?;
    a.jz(done)?;
    a.out(CONSOLE_PORT, al)?;
    a.inc(esi)?;
    a.jmp(next)?;
    a.set_label(&mut done)?;
    a.pop(esi)?;
    a.pop(eax)?;
    a.ret()?;

    // put_hex: as in long mode, shifting the pair EDI:EBX left by 4.
    a.set_label(&mut g.put_hex)?;
    for r in [eax, ebx, ecx, edx, esi, edi] {
        a.push(r)?;
    }
    a.mov(edi, edx)?;
    a.mov(ebx, eax)?;
    a.mov(al, b'0' as u32)?;
    a.out(CONSOLE_PORT, al)?;
    a.mov(al, b'x' as u32)?;
    a.out(CONSOLE_PORT, al)?;
    a.mov(ecx, 16)?;
    a.xor(esi, esi)?;
    let (mut nibble, mut skip, mut digit) = (a.create_label(), a.create_label(), a.create_label());
    a.set_label(&mut nibble)?;
    a.mov(eax, edi)?;
    a.shr(eax, 28)?;
    a.shld(edi, ebx, 4)?;
    a.shl(ebx, 4)?;
    a.or(esi, eax)?;
    a.cmp(ecx, 1)?;
    a.je(digit)?;
    a.test(esi, esi)?;
    a.jz(skip)?;
    a.set_label(&mut digit)?;
    hex_digit_out(a)?;
    a.set_label(&mut skip)?;
    a.dec(ecx)?;
    a.jnz(nibble)?;
    for r in [edi, esi, edx, ecx, ebx, eax] {
        a.pop(r)?;
    }
    a.ret()?;

    // put_dec: 64-by-32 long division of ESI:EDI (high:low) by 10 in two
    // steps, pushing digits (EBP counts them).
    a.set_label(&mut g.put_dec)?;
    for r in [eax, ecx, edx, esi, edi, ebp] {
        a.push(r)?;
    }
    a.mov(esi, edx)?;
    a.mov(edi, eax)?;
    a.mov(ecx, 10)?;
    a.xor(ebp, ebp)?;
    let (mut div, mut out) = (a.create_label(), a.create_label());
    a.set_label(&mut div)?;
    a.xor(edx, edx)?;
    a.mov(eax, esi)?;
    a.div(ecx)?;
    a.mov(esi, eax)?;
    a.mov(eax, edi)?;
    a.div(ecx)?;
    a.mov(edi, eax)?;
    a.add(edx, b'0' as i32)?;
    a.push(edx)?;
    a.inc(ebp)?;
    a.mov(eax, esi)?;
    a.or(eax, edi)?;
    a.jnz(div)?;
    a.set_label(&mut out)?;
    a.pop(eax)?;
    a.out(CONSOLE_PORT, al)?;
    a.dec(ebp)?;
    a.jnz(out)?;
    for r in [ebp, edi, esi, edx, ecx, eax] {
        a.pop(r)?;
    }
    a.ret()?;
    Ok(())
}
