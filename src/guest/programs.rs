//! The built-in guest programs: the demo for `xensim run`, test guests that
//! report the boot information they received, and two benchmarks. Each one
//! documents its console output (port 0xE9) exactly, and has a function
//! computing that output from what the loader was given, so run tests can
//! compare whole transcripts.

use iced_x86::code_asm::*;
use sim_core::boot::{e820_map_with, BootConfig};
use sim_core::layout::{HIGH_MEMORY_BASE, LEGACY_RESERVED_BASE};
use sim_core::GuestMemory;

use super::asm::{Boot, GuestError, GuestProgram, Mode};

/// What the guest printed on the debug console, given the boot inputs.
pub type Transcript = String;

// ---------------------------------------------------------------- demo

pub const DEMO_GREETING: &str = "xensim demo guest: hello from long mode\n";
const SIEVE_LIMIT: u64 = 10_000;

/// The demo guest (PVH, long mode). Prints [`demo_expected`]'s text: the
/// greeting, the count and sum of the primes below 10000 found by a sieve
/// in guest memory, and "ok" when both match the values computed here;
/// then stops cleanly with `cli; hlt`. On a mismatch it prints "MISMATCH"
/// and exits through isa-debug-exit with status 1.
pub fn demo() -> Result<Vec<u8>, GuestError> {
    let (count, sum) = primes_below(SIEVE_LIMIT);
    let mut g = GuestProgram::new(Mode::Long64)?;
    let sieve = g.scratch(SIEVE_LIMIT, 64);
    g.print(DEMO_GREETING)?;
    let a = &mut g.a;
    // RDI = sieve (byte i set = i composite), RCX = i, RDX = j.
    a.mov(rdi, sieve)?;
    a.mov(ecx, 2)?;
    let (mut outer, mut inner, mut next_i, mut count_loop, mut composite) =
        (a.create_label(), a.create_label(), a.create_label(), a.create_label(), a.create_label());
    a.set_label(&mut outer)?;
    a.mov(rdx, rcx)?;
    a.imul_2(rdx, rcx)?;
    a.cmp(rdx, SIEVE_LIMIT as i32)?;
    a.jae(count_loop)?;
    a.cmp(byte_ptr(rdi + rcx), 0)?;
    a.jne(next_i)?;
    a.set_label(&mut inner)?;
    a.mov(byte_ptr(rdi + rdx), 1)?;
    a.add(rdx, rcx)?;
    a.cmp(rdx, SIEVE_LIMIT as i32)?;
    a.jb(inner)?;
    a.set_label(&mut next_i)?;
    a.inc(rcx)?;
    a.jmp(outer)?;
    // R8 = count, R9 = sum over i in 2..limit with sieve[i] == 0.
    a.set_label(&mut count_loop)?;
    a.xor(r8d, r8d)?;
    a.xor(r9d, r9d)?;
    a.mov(ecx, 2)?;
    let mut scan = a.create_label();
    a.set_label(&mut scan)?;
    a.cmp(byte_ptr(rdi + rcx), 0)?;
    a.jne(composite)?;
    a.inc(r8)?;
    a.add(r9, rcx)?;
    a.set_label(&mut composite)?;
    a.inc(rcx)?;
    a.cmp(rcx, SIEVE_LIMIT as i32)?;
    a.jb(scan)?;
    g.print("primes below 10000: ")?;
    g.a.mov(rax, r8)?;
    g.print_dec()?;
    g.print(", sum ")?;
    g.a.mov(rax, r9)?;
    g.print_dec()?;
    g.print("\n")?;
    let mut fail = g.a.create_label();
    g.a.cmp(r8, count as i32)?;
    g.a.jne(fail)?;
    g.a.mov(rax, sum)?;
    g.a.cmp(r9, rax)?;
    g.a.jne(fail)?;
    g.print("ok\n")?;
    g.halt()?;
    g.a.set_label(&mut fail)?;
    g.print("MISMATCH\n")?;
    g.exit(1)?;
    g.build(Boot::Pvh)
}

/// The demo's transcript.
pub fn demo_expected() -> Transcript {
    let (count, sum) = primes_below(SIEVE_LIMIT);
    format!("{DEMO_GREETING}primes below 10000: {count}, sum {sum}\nok\n")
}

/// Count and sum of the primes below `n`, by trial division (a different
/// method from the guest's sieve).
pub fn primes_below(n: u64) -> (u64, u64) {
    let is_prime = |p: u64| p >= 2 && (2..).take_while(|d| d * d <= p).all(|d| p % d != 0);
    (0..n).filter(|&p| is_prime(p)).fold((0, 0), |(c, s), p| (c + 1, s + p))
}

// ---------------------------------------------------------------- PVH

const START_INFO_MAGIC: u32 = 0x336e_c578;

/// What a PVH test guest was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvhInputs {
    pub cmdline: String,
    /// (paddr, size, command line) of each module.
    pub modules: Vec<(u64, u64, String)>,
    pub rsdp: u64,
    /// (addr, size, type) of each memory map entry.
    pub memmap: Vec<(u64, u64, u32)>,
}

impl PvhInputs {
    /// What xensim's loader passes for `cfg` on `mem`, from its contract:
    /// modules page-aligned from `kernel_end` with their names as command
    /// lines, the E820 map of `mem`.
    pub fn xensim(mem: &GuestMemory, cfg: &BootConfig, kernel_end: u64) -> Self {
        let mut next = kernel_end.next_multiple_of(4096);
        let mut modules = Vec::new();
        for m in &cfg.modules {
            modules.push((next, m.bytes.len() as u64, m.name.clone()));
            next = (next + m.bytes.len() as u64).next_multiple_of(4096);
        }
        let memmap = e820_map_with(mem, &cfg.reserved).iter().map(|e| (e.addr, e.size, e.kind.code())).collect();
        PvhInputs { cmdline: cfg.cmdline.clone(), modules, rsdp: cfg.rsdp, memmap }
    }
}

/// 32-bit PVH guest (ELF32) reading `hvm_start_info` from EBX in protected
/// mode. Prints [`pvh32_basics_expected`]; exits through port 0xF4 with
/// status 0, or prints "bad magic" and exits with 1 if the magic is wrong.
pub fn pvh32_basics() -> Result<Vec<u8>, GuestError> {
    let mut g = GuestProgram::new(Mode::Protected32)?;
    g.print("pvh32: magic ")?;
    g.a.mov(eax, dword_ptr(ebx))?;
    g.a.xor(edx, edx)?;
    g.print_hex()?;
    g.print("\ncmdline: ")?;
    g.a.mov(esi, dword_ptr(ebx + 24))?;
    g.print_cstr()?;
    g.print("\nmodules: ")?;
    g.a.mov(eax, dword_ptr(ebx + 12))?;
    g.print_dec()?;
    g.print("\n")?;
    // ECX = module index, EDI = its hvm_modlist_entry.
    let (mut next, mut done) = (g.a.create_label(), g.a.create_label());
    g.a.xor(ecx, ecx)?;
    g.a.mov(edi, dword_ptr(ebx + 16))?;
    g.a.set_label(&mut next)?;
    g.a.cmp(ecx, dword_ptr(ebx + 12))?;
    g.a.jae(done)?;
    g.print("module ")?;
    g.a.mov(eax, ecx)?;
    g.a.xor(edx, edx)?;
    g.print_dec()?;
    g.print(": size ")?;
    g.a.mov(eax, dword_ptr(edi + 8))?;
    g.a.mov(edx, dword_ptr(edi + 12))?;
    g.print_hex()?;
    g.print(", cmdline ")?;
    g.a.mov(esi, dword_ptr(edi + 16))?;
    g.print_cstr()?;
    g.print("\n")?;
    g.a.add(edi, 32)?;
    g.a.inc(ecx)?;
    g.a.jmp(next)?;
    g.a.set_label(&mut done)?;
    g.print("memmap entries: ")?;
    g.a.mov(eax, dword_ptr(ebx + 48))?;
    g.a.xor(edx, edx)?;
    g.print_dec()?;
    g.print("\n")?;
    check_magic32(&mut g, START_INFO_MAGIC)?;
    g.build(Boot::Pvh)
}

/// Exit 0 if the dword at [EBX] is `magic`, else print "bad magic", exit 1.
fn check_magic32(g: &mut GuestProgram, magic: u32) -> Result<(), GuestError> {
    let mut bad = g.a.create_label();
    g.a.cmp(dword_ptr(ebx), magic as i32)?;
    g.a.jne(bad)?;
    g.exit(0)?;
    g.a.set_label(&mut bad)?;
    g.print("bad magic\n")?;
    g.exit(1)
}

/// Transcript of [`pvh32_basics`].
pub fn pvh32_basics_expected(i: &PvhInputs) -> Transcript {
    let mut s = format!("pvh32: magic {START_INFO_MAGIC:#x}\ncmdline: {}\nmodules: {}\n", i.cmdline, i.modules.len());
    for (n, (_, size, cmdline)) in i.modules.iter().enumerate() {
        s += &format!("module {n}: size {size:#x}, cmdline {cmdline}\n");
    }
    s + &format!("memmap entries: {}\n", i.memmap.len())
}

/// Long-mode PVH guest (ELF64) printing every `hvm_start_info` field it
/// uses: [`pvh64_start_info_expected`]. Exit status 0 through port 0xF4,
/// or "bad magic" and 1.
pub fn pvh64_start_info() -> Result<Vec<u8>, GuestError> {
    let mut g = GuestProgram::new(Mode::Long64)?;
    // RBX = start_info (zero-extended EBX).
    g.a.mov(ebx, ebx)?;
    let field = |g: &mut GuestProgram, label: &str, m: AsmMemoryOperand, hex: bool| -> Result<(), GuestError> {
        g.print(label)?;
        g.a.mov(rax, m)?;
        if hex {
            g.print_hex()
        } else {
            g.print_dec()
        }
    };
    g.print("pvh64: magic ")?;
    g.a.mov(eax, dword_ptr(rbx))?;
    g.print_hex()?;
    g.print(" version ")?;
    g.a.mov(eax, dword_ptr(rbx + 4))?;
    g.print_dec()?;
    g.print(" flags ")?;
    g.a.mov(eax, dword_ptr(rbx + 8))?;
    g.print_hex()?;
    g.print("\ncmdline: ")?;
    g.a.mov(rsi, qword_ptr(rbx + 24))?;
    g.print_cstr()?;
    field(&mut g, "\nrsdp ", qword_ptr(rbx + 32), true)?;
    g.print("\nmodules: ")?;
    g.a.mov(eax, dword_ptr(rbx + 12))?;
    g.print_dec()?;
    g.print("\n")?;
    // RCX = index, RDI = entry.
    let (mut next, mut done) = (g.a.create_label(), g.a.create_label());
    g.a.xor(ecx, ecx)?;
    g.a.mov(rdi, qword_ptr(rbx + 16))?;
    g.a.set_label(&mut next)?;
    g.a.cmp(ecx, dword_ptr(rbx + 12))?;
    g.a.jae(done)?;
    g.print("module ")?;
    g.a.mov(rax, rcx)?;
    g.print_dec()?;
    field(&mut g, ": paddr ", qword_ptr(rdi), true)?;
    field(&mut g, " size ", qword_ptr(rdi + 8), true)?;
    g.print(" cmdline ")?;
    g.a.mov(rsi, qword_ptr(rdi + 16))?;
    g.print_cstr()?;
    g.print("\n")?;
    g.a.add(rdi, 32)?;
    g.a.inc(ecx)?;
    g.a.jmp(next)?;
    g.a.set_label(&mut done)?;
    g.print("memmap entries: ")?;
    g.a.mov(eax, dword_ptr(rbx + 48))?;
    g.print_dec()?;
    g.print("\n")?;
    let (mut next, mut done) = (g.a.create_label(), g.a.create_label());
    g.a.xor(ecx, ecx)?;
    g.a.mov(rdi, qword_ptr(rbx + 40))?;
    g.a.set_label(&mut next)?;
    g.a.cmp(ecx, dword_ptr(rbx + 48))?;
    g.a.jae(done)?;
    g.print("memmap ")?;
    g.a.mov(rax, rcx)?;
    g.print_dec()?;
    field(&mut g, ": addr ", qword_ptr(rdi), true)?;
    field(&mut g, " size ", qword_ptr(rdi + 8), true)?;
    g.print(" type ")?;
    g.a.mov(eax, dword_ptr(rdi + 16))?;
    g.print_dec()?;
    g.print("\n")?;
    g.a.add(rdi, 24)?;
    g.a.inc(ecx)?;
    g.a.jmp(next)?;
    g.a.set_label(&mut done)?;
    check_magic32(&mut g, START_INFO_MAGIC)?;
    g.build(Boot::Pvh)
}

/// Transcript of [`pvh64_start_info`].
pub fn pvh64_start_info_expected(i: &PvhInputs) -> Transcript {
    let mut s = format!(
        "pvh64: magic {START_INFO_MAGIC:#x} version 1 flags 0x0\ncmdline: {}\nrsdp {:#x}\nmodules: {}\n",
        i.cmdline,
        i.rsdp,
        i.modules.len()
    );
    for (n, (paddr, size, cmdline)) in i.modules.iter().enumerate() {
        s += &format!("module {n}: paddr {paddr:#x} size {size:#x} cmdline {cmdline}\n");
    }
    s += &format!("memmap entries: {}\n", i.memmap.len());
    for (n, (addr, size, ty)) in i.memmap.iter().enumerate() {
        s += &format!("memmap {n}: addr {addr:#x} size {size:#x} type {ty}\n");
    }
    s
}

// ---------------------------------------------------------------- Multiboot

const MULTIBOOT_EAX: u32 = 0x2bad_b002;

/// What a Multiboot test guest was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultibootInputs {
    pub flags: u32,
    pub mem_lower: u32,
    pub mem_upper: u32,
    pub cmdline: String,
    /// (size, string) of each module.
    pub modules: Vec<(u64, String)>,
    /// (base, length, type) of each mmap entry.
    pub mmap: Vec<(u64, u64, u32)>,
}

impl MultibootInputs {
    /// What xensim's loader passes for `cfg` on `mem`: MEM, CMDLINE, MODS,
    /// MMAP and BOOT_LOADER_NAME; the command line prefixed by the kernel's
    /// name; module strings = module names.
    pub fn xensim(mem: &GuestMemory, cfg: &BootConfig) -> Self {
        let low_end = mem.ram_ranges().first().map_or(0, |&(s, l)| s + l);
        let cmdline = match cfg.cmdline.as_str() {
            "" => cfg.kernel.name.clone(),
            args => format!("{} {args}", cfg.kernel.name),
        };
        MultibootInputs {
            flags: 0x24d,
            mem_lower: (low_end.min(LEGACY_RESERVED_BASE) / 1024) as u32,
            mem_upper: (low_end.saturating_sub(HIGH_MEMORY_BASE) / 1024) as u32,
            cmdline,
            modules: cfg.modules.iter().map(|m| (m.bytes.len() as u64, m.name.clone())).collect(),
            mmap: e820_map_with(mem, &cfg.reserved).iter().map(|e| (e.addr, e.size, e.kind.code())).collect(),
        }
    }
}

/// 32-bit Multiboot guest (`boot` = `Boot::Multiboot` for the ELF image or
/// `Boot::MultibootAout` for the a.out-kludge one). Prints
/// [`multiboot_info_expected`]; fields whose info flag is clear are skipped.
/// Exit status 0 through port 0xF4, or "bad magic" and 1 if EAX is wrong.
pub fn multiboot_info(boot: Boot) -> Result<Vec<u8>, GuestError> {
    let mut g = GuestProgram::new(Mode::Protected32)?;
    // Keep EAX for the final check in EBP.
    g.a.mov(ebp, eax)?;
    g.print("multiboot: eax ")?;
    g.a.xor(edx, edx)?;
    g.print_hex()?;
    g.print("\nflags ")?;
    g.a.mov(eax, dword_ptr(ebx))?;
    g.print_hex()?;
    g.print("\n")?;
    let skip_unless = |g: &mut GuestProgram, bit: u32| -> Result<CodeLabel, GuestError> {
        let skip = g.a.create_label();
        g.a.test(dword_ptr(ebx), 1u32 << bit)?;
        g.a.jz(skip)?;
        Ok(skip)
    };
    let mut skip = skip_unless(&mut g, 0)?;
    g.print("mem_lower ")?;
    g.a.mov(eax, dword_ptr(ebx + 4))?;
    g.print_dec()?;
    g.print(" KiB, mem_upper ")?;
    g.a.mov(eax, dword_ptr(ebx + 8))?;
    g.print_dec()?;
    g.print(" KiB\n")?;
    g.a.set_label(&mut skip)?;
    let mut skip = skip_unless(&mut g, 2)?;
    g.print("cmdline: ")?;
    g.a.mov(esi, dword_ptr(ebx + 16))?;
    g.print_cstr()?;
    g.print("\n")?;
    g.a.set_label(&mut skip)?;
    let mut skip = skip_unless(&mut g, 9)?;
    g.print("boot loader: ")?;
    g.a.mov(esi, dword_ptr(ebx + 64))?;
    g.print_cstr()?;
    g.print("\n")?;
    g.a.set_label(&mut skip)?;

    let mut skip = skip_unless(&mut g, 3)?;
    g.print("modules: ")?;
    g.a.mov(eax, dword_ptr(ebx + 20))?;
    g.print_dec()?;
    g.print("\n")?;
    let mut next = g.a.create_label();
    g.a.xor(ecx, ecx)?;
    g.a.mov(edi, dword_ptr(ebx + 24))?;
    g.a.set_label(&mut next)?;
    g.a.cmp(ecx, dword_ptr(ebx + 20))?;
    g.a.jae(skip)?;
    g.print("module ")?;
    g.a.mov(eax, ecx)?;
    g.a.xor(edx, edx)?;
    g.print_dec()?;
    g.print(": size ")?;
    g.a.mov(eax, dword_ptr(edi + 4))?;
    g.a.sub(eax, dword_ptr(edi))?;
    g.a.xor(edx, edx)?;
    g.print_hex()?;
    g.print(" string ")?;
    g.a.mov(esi, dword_ptr(edi + 8))?;
    g.print_cstr()?;
    g.print("\n")?;
    g.a.add(edi, 16)?;
    g.a.inc(ecx)?;
    g.a.jmp(next)?;
    g.a.set_label(&mut skip)?;

    // mmap: ESI = entry, ECX = end; each entry is preceded by its size.
    let mut skip = skip_unless(&mut g, 6)?;
    let mut next = g.a.create_label();
    g.a.mov(esi, dword_ptr(ebx + 48))?;
    g.a.mov(ecx, esi)?;
    g.a.add(ecx, dword_ptr(ebx + 44))?;
    g.a.set_label(&mut next)?;
    g.a.cmp(esi, ecx)?;
    g.a.jae(skip)?;
    g.print("mmap: base ")?;
    g.a.mov(eax, dword_ptr(esi + 4))?;
    g.a.mov(edx, dword_ptr(esi + 8))?;
    g.print_hex()?;
    g.print(" length ")?;
    g.a.mov(eax, dword_ptr(esi + 12))?;
    g.a.mov(edx, dword_ptr(esi + 16))?;
    g.print_hex()?;
    g.print(" type ")?;
    g.a.mov(eax, dword_ptr(esi + 20))?;
    g.a.xor(edx, edx)?;
    g.print_dec()?;
    g.print("\n")?;
    g.a.mov(eax, dword_ptr(esi))?;
    g.a.lea(esi, esi + eax + 4)?;
    g.a.jmp(next)?;
    g.a.set_label(&mut skip)?;

    let mut bad = g.a.create_label();
    g.a.cmp(ebp, MULTIBOOT_EAX as i32)?;
    g.a.jne(bad)?;
    g.exit(0)?;
    g.a.set_label(&mut bad)?;
    g.print("bad magic\n")?;
    g.exit(1)?;
    g.build(boot)
}

/// Transcript of [`multiboot_info`].
pub fn multiboot_info_expected(i: &MultibootInputs) -> Transcript {
    let mut s = format!("multiboot: eax {MULTIBOOT_EAX:#x}\nflags {:#x}\n", i.flags);
    let has = |bit: u32| i.flags & (1 << bit) != 0;
    if has(0) {
        s += &format!("mem_lower {} KiB, mem_upper {} KiB\n", i.mem_lower, i.mem_upper);
    }
    if has(2) {
        s += &format!("cmdline: {}\n", i.cmdline);
    }
    if has(9) {
        s += "boot loader: xensim\n";
    }
    if has(3) {
        s += &format!("modules: {}\n", i.modules.len());
        for (n, (size, string)) in i.modules.iter().enumerate() {
            s += &format!("module {n}: size {size:#x} string {string}\n");
        }
    }
    if has(6) {
        for (base, len, ty) in &i.mmap {
            s += &format!("mmap: base {base:#x} length {len:#x} type {ty}\n");
        }
    }
    s
}

// ---------------------------------------------------------------- benchmarks

const LCG_MUL: u64 = 6_364_136_223_846_793_005;
const LCG_ADD: u64 = 1_442_695_040_888_963_407;
const ALU_SEED: u64 = 0x0123_4567_89ab_cdef;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// CPU-bound benchmark (PVH, long mode): `iterations` rounds of an LCG step,
/// shifts and xors, a store and a load in a 256-entry table, a data-dependent
/// branch and a call. Prints "bench_alu: 0x…\n" ([`bench_alu_expected`]),
/// then stops with `cli; hlt`.
pub fn bench_alu(iterations: u64) -> Result<Vec<u8>, GuestError> {
    let mut g = GuestProgram::new(Mode::Long64)?;
    let table = g.scratch(256 * 8, 64);
    let (mut top, mut skip, mut done, mut func, mut after) =
        (g.a.create_label(), g.a.create_label(), g.a.create_label(), g.a.create_label(), g.a.create_label());
    let a = &mut g.a;
    // RCX = i (counts down to 1), R8 = x, R9 = y, R10 = z, RDI = table.
    a.mov(rcx, iterations)?;
    a.mov(r8, ALU_SEED)?;
    a.xor(r9d, r9d)?;
    a.xor(r10d, r10d)?;
    a.mov(rdi, table)?;
    a.mov(r11, LCG_MUL)?;
    a.mov(r12, LCG_ADD)?;
    a.test(rcx, rcx)?;
    a.jz(done)?;
    a.set_label(&mut top)?;
    a.imul_2(r8, r11)?;
    a.add(r8, r12)?;
    a.mov(rax, r8)?;
    a.shr(rax, 17)?;
    a.xor(r9, rax)?;
    a.mov(eax, ecx)?;
    a.and(eax, 255)?;
    a.mov(qword_ptr(rdi + rax * 8), r8)?;
    a.lea(eax, ptr(rcx * 8))?;
    a.sub(eax, ecx)?;
    a.and(eax, 255)?;
    a.add(r10, qword_ptr(rdi + rax * 8))?;
    a.test(r8b, 1)?;
    a.jz(skip)?;
    a.call(func)?;
    a.set_label(&mut skip)?;
    a.dec(rcx)?;
    a.jnz(top)?;
    a.set_label(&mut done)?;
    a.jmp(after)?;
    a.set_label(&mut func)?;
    a.rol(r9, 13)?;
    a.add(r9, r10)?;
    a.ret()?;
    a.set_label(&mut after)?;
    a.mov(rax, r9)?;
    a.xor(rax, r10)?;
    g.print("bench_alu: ")?;
    g.print_hex()?;
    g.print("\n")?;
    g.halt()?;
    g.build(Boot::Pvh)
}

/// The value [`bench_alu`] computes, modelled step by step in Rust.
pub fn bench_alu_result(iterations: u64) -> u64 {
    let mut table = [0u64; 256];
    let (mut x, mut y, mut z) = (ALU_SEED, 0u64, 0u64);
    for i in (1..=iterations).rev() {
        x = x.wrapping_mul(LCG_MUL).wrapping_add(LCG_ADD);
        y ^= x >> 17;
        table[(i & 255) as usize] = x;
        z = z.wrapping_add(table[(i.wrapping_mul(7) & 255) as usize]);
        if x & 1 == 1 {
            y = y.rotate_left(13).wrapping_add(z);
        }
    }
    y ^ z
}

/// Transcript of [`bench_alu`].
pub fn bench_alu_expected(iterations: u64) -> Transcript {
    format!("bench_alu: {:#x}\n", bench_alu_result(iterations))
}

/// Memory benchmark (PVH, long mode). A source buffer of `bytes` bytes is
/// filled with `(i * 31 + 7) mod 256`; each of `rounds` rounds copies it
/// with `rep movsb` to a second buffer and copies that back byte by byte,
/// adding 1 to each byte. Prints "bench_memcpy: 0x…\n", the 64-bit FNV-1a
/// hash of the final source buffer
/// ([`bench_memcpy_expected`]), then stops with `cli; hlt`.
pub fn bench_memcpy(bytes: u64, rounds: u64) -> Result<Vec<u8>, GuestError> {
    let mut g = GuestProgram::new(Mode::Long64)?;
    let src = g.scratch(bytes, 4096);
    let dst = g.scratch(bytes, 4096);
    let a = &mut g.a;
    let (mut fill, mut round, mut back, mut hash, mut done) =
        (a.create_label(), a.create_label(), a.create_label(), a.create_label(), a.create_label());
    // R12 = src, R13 = dst, R14 = bytes, R15 = rounds left.
    a.mov(r12, src)?;
    a.mov(r13, dst)?;
    a.mov(r14, bytes)?;
    a.mov(r15, rounds)?;
    a.mov(rax, FNV_OFFSET)?; // hash of an empty buffer
    a.test(r14, r14)?;
    a.jz(done)?;
    a.xor(ecx, ecx)?;
    a.set_label(&mut fill)?;
    a.imul_3(eax, ecx, 31)?;
    a.add(eax, 7)?;
    a.mov(byte_ptr(r12 + rcx), al)?;
    a.inc(rcx)?;
    a.cmp(rcx, r14)?;
    a.jb(fill)?;
    a.test(r15, r15)?;
    a.jz(hash)?;
    a.set_label(&mut round)?;
    a.mov(rsi, r12)?;
    a.mov(rdi, r13)?;
    a.mov(rcx, r14)?;
    a.cld()?;
    a.rep().movsb()?;
    a.xor(ecx, ecx)?;
    a.set_label(&mut back)?;
    a.movzx(eax, byte_ptr(r13 + rcx))?;
    a.inc(eax)?;
    a.mov(byte_ptr(r12 + rcx), al)?;
    a.inc(rcx)?;
    a.cmp(rcx, r14)?;
    a.jb(back)?;
    a.dec(r15)?;
    a.jnz(round)?;
    a.set_label(&mut hash)?;
    let mut step = a.create_label();
    a.mov(rax, FNV_OFFSET)?;
    a.mov(r11, FNV_PRIME)?;
    a.xor(ecx, ecx)?;
    a.set_label(&mut step)?;
    a.movzx(edx, byte_ptr(r12 + rcx))?;
    a.xor(rax, rdx)?;
    a.imul_2(rax, r11)?;
    a.inc(rcx)?;
    a.cmp(rcx, r14)?;
    a.jb(step)?;
    a.set_label(&mut done)?;
    g.print("bench_memcpy: ")?;
    g.print_hex()?;
    g.print("\n")?;
    g.halt()?;
    g.build(Boot::Pvh)
}

/// The hash [`bench_memcpy`] prints: every byte ends as its initial value
/// plus `rounds`, modulo 256.
pub fn bench_memcpy_result(bytes: u64, rounds: u64) -> u64 {
    let bytes = (0..bytes).map(|i| i.wrapping_mul(31).wrapping_add(7).wrapping_add(rounds) as u8);
    bytes.fold(FNV_OFFSET, |h, b| (h ^ b as u64).wrapping_mul(FNV_PRIME))
}

/// Transcript of [`bench_memcpy`].
pub fn bench_memcpy_expected(bytes: u64, rounds: u64) -> Transcript {
    format!("bench_memcpy: {:#x}\n", bench_memcpy_result(bytes, rounds))
}

// ---------------------------------------------------------------- serial echo

/// Byte that ends [`serial_echo`]'s input.
pub const ECHO_END: u8 = b'.';

/// Console-input guest (PVH, long mode): polls COM1's LSR for received data
/// (PC16550D: LSR bit 0), reads each byte from RBR, stores it in a buffer in
/// guest memory, and echoes it on the debug console with ASCII lower-case
/// letters turned upper-case; on [`ECHO_END`] prints "\n<n> bytes\n" (n =
/// bytes echoed) and stops with `cli; hlt`. Its output for an input is
/// [`serial_echo_expected`]. Without input it spins until the machine's
/// instruction limit.
pub fn serial_echo() -> Result<Vec<u8>, GuestError> {
    let mut g = GuestProgram::new(Mode::Long64)?;
    let buffer = g.scratch(4096, 64);
    let (mut poll, mut end, mut plain) = (g.a.create_label(), g.a.create_label(), g.a.create_label());
    let a = &mut g.a;
    // RDI = buffer, RBX = bytes echoed.
    a.mov(rdi, buffer)?;
    a.xor(ebx, ebx)?;
    a.set_label(&mut poll)?;
    a.mov(edx, 0x3fd)?;
    a.in_(al, dx)?;
    a.test(al, 1)?;
    a.jz(poll)?;
    a.mov(edx, 0x3f8)?;
    a.in_(al, dx)?;
    a.cmp(al, ECHO_END as u32)?;
    a.je(end)?;
    a.mov(ecx, ebx)?;
    a.and(ecx, 4095)?;
    a.mov(byte_ptr(rdi + rcx), al)?;
    a.inc(rbx)?;
    a.mov(ecx, eax)?;
    a.sub(cl, b'a' as u32)?;
    a.cmp(cl, 25)?;
    a.ja(plain)?;
    a.xor(al, 0x20)?;
    a.set_label(&mut plain)?;
    a.out(0xe9, al)?;
    a.jmp(poll)?;
    a.set_label(&mut end)?;
    g.print("\n")?;
    g.a.mov(rax, rbx)?;
    g.print_dec()?;
    g.print(" bytes\n")?;
    g.halt()?;
    g.build(Boot::Pvh)
}

/// Transcript of [`serial_echo`] given the bytes that arrive on COM1.
pub fn serial_echo_expected(input: &[u8]) -> Transcript {
    let body: Vec<u8> = input.iter().take_while(|&&b| b != ECHO_END).map(|b| b.to_ascii_uppercase()).collect();
    format!("{}\n{} bytes\n", String::from_utf8_lossy(&body), body.len())
}
