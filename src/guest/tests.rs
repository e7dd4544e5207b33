//! Image and program tests. Images are checked with a reader written here
//! against the ELF and Multiboot layouts, then handed to sim-core's boot
//! loader. Benchmark and transcript expectations are checked against
//! outputs recorded by booting the same images under QEMU 7.2 (TCG,
//! `-machine pc -m 64 -debugcon`), an independent x86 implementation.

use super::asm::{Boot, Mode, BODY64, ENTRY};
use super::elf::{self, Segment, PF_R, PF_W, PF_X};
use super::programs::*;
use sim_core::boot::{load, BootConfig, BootImage, BootProtocol};
use sim_core::state::gpr;
use sim_core::GuestMemory;

fn u16_at(b: &[u8], o: usize) -> u64 {
    u16::from_le_bytes([b[o], b[o + 1]]) as u64
}
fn u32_at(b: &[u8], o: usize) -> u64 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as u64
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

#[derive(Debug, PartialEq, Eq)]
struct Ph {
    ty: u64,
    flags: u64,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

/// e_ident, machine and program headers, per the gABI layouts.
fn parse(b: &[u8]) -> (bool, u64, Vec<Ph>) {
    assert_eq!(&b[..4], b"\x7fELF");
    let is64 = b[4] == 2;
    assert_eq!((b[5], b[6]), (1, 1), "little-endian, version 1");
    assert_eq!(u16_at(b, 16), 2, "ET_EXEC");
    assert_eq!(u16_at(b, 18), if is64 { 62 } else { 3 });
    let (entry, phoff, phentsize, phnum) = if is64 {
        (u64_at(b, 24), u64_at(b, 32) as usize, u16_at(b, 54), u16_at(b, 56))
    } else {
        (u32_at(b, 24), u32_at(b, 28) as usize, u16_at(b, 42), u16_at(b, 44))
    };
    assert_eq!(phentsize, if is64 { 56 } else { 32 });
    let phs = (0..phnum as usize)
        .map(|i| {
            let o = phoff + i * phentsize as usize;
            if is64 {
                Ph {
                    ty: u32_at(b, o),
                    flags: u32_at(b, o + 4),
                    offset: u64_at(b, o + 8),
                    paddr: u64_at(b, o + 24),
                    filesz: u64_at(b, o + 32),
                    memsz: u64_at(b, o + 40),
                }
            } else {
                Ph {
                    ty: u32_at(b, o),
                    offset: u32_at(b, o + 4),
                    paddr: u32_at(b, o + 12),
                    filesz: u32_at(b, o + 16),
                    memsz: u32_at(b, o + 20),
                    flags: u32_at(b, o + 24),
                }
            }
        })
        .collect();
    (is64, entry, phs)
}

fn segments() -> Vec<Segment> {
    vec![
        Segment::new(0x100000, vec![0x90, 0xf4], 2, PF_R | PF_X),
        Segment::new(0x180123, b"data".to_vec(), 0x2000, PF_R | PF_W),
    ]
}

fn check_loads(b: &[u8], phs: &[Ph]) {
    let loads: Vec<_> = phs.iter().filter(|p| p.ty == 1).collect();
    assert_eq!(loads.len(), 2);
    assert_eq!((loads[0].paddr, loads[0].filesz, loads[0].memsz, loads[0].flags), (0x100000, 2, 2, 5));
    assert_eq!((loads[1].paddr, loads[1].filesz, loads[1].memsz, loads[1].flags), (0x180123, 4, 0x2000, 6));
    let o = loads[1].offset as usize;
    assert_eq!(&b[o..o + 4], b"data");
    assert_eq!(loads[1].offset % 4096, 0x123, "p_offset congruent to the address modulo the page size");
}

#[test]
fn pvh_elfs_carry_the_xen_note() {
    for (image, want64) in
        [(elf::pvh_elf64(&segments(), 0x100000), true), (elf::pvh_elf32(&segments(), 0x100000), false)]
    {
        let (is64, _, phs) = parse(&image);
        assert_eq!(is64, want64);
        check_loads(&image, &phs);
        let note = phs.iter().find(|p| p.ty == 4).expect("PT_NOTE");
        let n = &image[note.offset as usize..(note.offset + note.filesz) as usize];
        // namesz 4, descsz 4, type 18, "Xen\0", entry.
        assert_eq!((u32_at(n, 0), u32_at(n, 4), u32_at(n, 8)), (4, 4, 18));
        assert_eq!(&n[12..16], b"Xen\0");
        assert_eq!(u32_at(n, 16), 0x100000);
    }
}

#[test]
fn multiboot_elf_header_in_first_8k() {
    let image = elf::multiboot_elf32(&segments(), 0x100000, elf::MB_FLAGS);
    let (is64, entry, phs) = parse(&image);
    assert!(!is64);
    assert_eq!(entry, 0x100000);
    check_loads(&image, &phs);
    let at = (0..8192 - 12).step_by(4).find(|&o| u32_at(&image, o) == 0x1bad_b002).expect("header");
    let (flags, sum) = (u32_at(&image, at + 4), u32_at(&image, at + 8));
    assert_eq!(flags, 3);
    assert_eq!((0x1bad_b002u64 + flags + sum) % (1 << 32), 0);
}

#[test]
fn aout_kludge_header_describes_the_flat_image() {
    let image = elf::multiboot_aout_kludge(&segments(), 0x100000);
    // Header at offset 0, loaded at 0xff000 (the page below the first
    // segment, as the first segment starts at a page boundary).
    assert_eq!(u32_at(&image, 0), 0x1bad_b002);
    let flags = u32_at(&image, 4);
    assert_eq!(flags, 0x10003);
    assert_eq!((0x1bad_b002 + flags + u32_at(&image, 8)) % (1 << 32), 0);
    let (header, load, load_end, bss_end, entry) =
        (u32_at(&image, 12), u32_at(&image, 16), u32_at(&image, 20), u32_at(&image, 24), u32_at(&image, 28));
    assert_eq!((header, load, entry), (0xff000, 0xff000, 0x100000));
    assert_eq!(load_end, 0x180127);
    assert_eq!(bss_end, 0x180123 + 0x2000);
    assert_eq!(image.len() as u64, load_end - load);
    assert_eq!(&image[0x1000..0x1002], &[0x90, 0xf4]);
    assert_eq!(&image[0x81123..0x81127], b"data");
}

fn boot(image: Vec<u8>, modules: &[(&str, usize)], cmdline: &str) -> (GuestMemory, sim_core::boot::BootInfo) {
    let mem = GuestMemory::new(64).unwrap();
    let modules = modules.iter().map(|&(n, len)| BootImage { name: n.into(), bytes: vec![0x5a; len] }).collect();
    let cfg = BootConfig {
        kernel: BootImage { name: "guest".into(), bytes: image },
        modules,
        cmdline: cmdline.into(),
        rsdp: 0,
        reserved: Vec::new(),
    };
    let info = load(&mem, &cfg).unwrap();
    (mem, info)
}

#[test]
fn every_program_boots_with_the_loader() {
    let pvh = [demo(), pvh32_basics(), pvh64_start_info(), bench_alu(10), bench_memcpy(4096, 2)];
    for image in pvh {
        let (mem, info) = boot(image.unwrap(), &[("initrd", 100)], "a=b");
        assert_eq!(info.protocol, BootProtocol::Pvh);
        assert_eq!(info.entry.rip, ENTRY);
        // The entry code starts with cli; cld (FA FC).
        assert_eq!(mem.read_u16(ENTRY).unwrap(), 0xfcfa);
    }
    for b in [Boot::Multiboot, Boot::MultibootAout] {
        let (mem, info) = boot(multiboot_info(b).unwrap(), &[], "");
        assert_eq!(info.protocol, BootProtocol::Multiboot);
        assert_eq!((info.entry.rip, info.entry.gpr[gpr::RAX]), (ENTRY, 0x2bad_b002));
        assert_eq!(mem.read_u16(ENTRY).unwrap(), 0xfcfa);
    }
}

#[test]
fn long_mode_prelude_jumps_to_the_body() {
    let (mem, info) = boot(bench_alu(1).unwrap(), &[], "");
    // Modules go above the program's zero-filled tables, stack and scratch.
    assert!(info.kernel_end >= 0x160000 + 256 * 8);
    // Find the far jump EA <BODY64> <0x0008> in the prelude.
    let mut code = vec![0u8; (BODY64 - ENTRY) as usize];
    mem.read(ENTRY, &mut code).unwrap();
    let mut far = vec![0xea];
    far.extend_from_slice(&(BODY64 as u32).to_le_bytes());
    far.extend_from_slice(&8u16.to_le_bytes());
    assert!(code.windows(7).any(|w| w == far.as_slice()));
}

#[test]
fn demo_knows_the_prime_counts() {
    // pi(10000) = 1229; the sum of the primes below 10000 is 5736396.
    assert_eq!(primes_below(10_000), (1229, 5_736_396));
    assert_eq!(primes_below(10), (4, 17));
    assert_eq!(demo_expected(), "xensim demo guest: hello from long mode\nprimes below 10000: 1229, sum 5736396\nok\n");
}

#[test]
fn benchmark_models_match_qemu() {
    // Outputs of the images from `cargo run --example write-guests` under QEMU.
    assert_eq!(bench_alu_expected(1_000_000), "bench_alu: 0x54074cde1d94d181\n");
    assert_eq!(bench_alu_expected(1000), "bench_alu: 0x765c0abd5a2c36f0\n");
    assert_eq!(bench_memcpy_expected(1 << 20, 10), "bench_memcpy: 0xb096f49619a22325\n");
    assert_eq!(bench_memcpy_expected(1000, 3), "bench_memcpy: 0xf8ffb6eb2c038e5d\n");
}

#[test]
fn multiboot_transcript_matches_qemu() {
    // QEMU's inputs for `-m 64 -append root=/dev/x -initrd "m1 arg=2,m2"`.
    let inputs = MultibootInputs {
        flags: 0x24f,
        mem_lower: 639,
        mem_upper: 64384,
        cmdline: "multiboot_info.elf root=/dev/x".into(),
        modules: vec![(0xf, "m1 arg=2".into()), (0x1388, "m2".into())],
        mmap: vec![
            (0, 0x9fc00, 1),
            (0x9fc00, 0x400, 2),
            (0xf0000, 0x10000, 2),
            (0x100000, 0x3ee0000, 1),
            (0x3fe0000, 0x20000, 2),
            (0xfffc0000, 0x40000, 2),
            (0xfd_0000_0000, 0x3_0000_0000, 2),
        ],
    };
    let qemu = "multiboot: eax 0x2badb002\nflags 0x24f\nmem_lower 639 KiB, mem_upper 64384 KiB\n\
        cmdline: multiboot_info.elf root=/dev/x\nboot loader: xensim\nmodules: 2\n\
        module 0: size 0xf string m1 arg=2\nmodule 1: size 0x1388 string m2\n\
        mmap: base 0x0 length 0x9fc00 type 1\nmmap: base 0x9fc00 length 0x400 type 2\n\
        mmap: base 0xf0000 length 0x10000 type 2\nmmap: base 0x100000 length 0x3ee0000 type 1\n\
        mmap: base 0x3fe0000 length 0x20000 type 2\nmmap: base 0xfffc0000 length 0x40000 type 2\n\
        mmap: base 0xfd00000000 length 0x300000000 type 2\n";
    // QEMU names itself "qemu" as the boot loader; everything else is its output verbatim.
    assert_eq!(multiboot_info_expected(&inputs), qemu);
}

#[test]
fn pvh_transcripts_match_qemu() {
    let inputs = PvhInputs {
        cmdline: "console=hvc0 x=1".into(),
        modules: vec![(0x3fd7000, 0xf, "".into())],
        rsdp: 0xf59d0,
        memmap: vec![(0, 0x9fc00, 1), (0x9fc00, 0x400, 2)],
    };
    assert_eq!(
        pvh32_basics_expected(&inputs),
        "pvh32: magic 0x336ec578\ncmdline: console=hvc0 x=1\nmodules: 1\nmodule 0: size 0xf, cmdline \nmemmap entries: 2\n"
    );
    assert_eq!(
        pvh64_start_info_expected(&inputs),
        "pvh64: magic 0x336ec578 version 1 flags 0x0\ncmdline: console=hvc0 x=1\nrsdp 0xf59d0\nmodules: 1\n\
         module 0: paddr 0x3fd7000 size 0xf cmdline \nmemmap entries: 2\n\
         memmap 0: addr 0x0 size 0x9fc00 type 1\nmemmap 1: addr 0x9fc00 size 0x400 type 2\n"
    );
}

#[test]
fn oversized_programs_are_refused() {
    let mut g = super::GuestProgram::new(Mode::Protected32).unwrap();
    g.data(&[0; 0x10001], 1);
    let e = g.build(Boot::Pvh).unwrap_err();
    assert_eq!(e.to_string(), "data is 0x10032 bytes, more than the 0x10000 the layout allows");
}

#[test]
fn inputs_for_xensim_follow_the_loader_contract() {
    let mem = GuestMemory::new(64).unwrap();
    let img = |n: &str, len| BootImage { name: n.into(), bytes: vec![0; len] };
    let cfg = BootConfig {
        kernel: img("k", 1),
        modules: vec![img("a", 10), img("b", 5000)],
        cmdline: "x".into(),
        rsdp: 0xe0000,
        reserved: Vec::new(),
    };
    let p = PvhInputs::xensim(&mem, &cfg, 0x201800);
    assert_eq!(p.modules, vec![(0x202000, 10, "a".into()), (0x203000, 5000, "b".into())]);
    assert_eq!(p.memmap, vec![(0, 0x9f000, 1), (0x9f000, 0x61000, 2), (0x100000, 63 << 20, 1)]);
    let m = MultibootInputs::xensim(&mem, &cfg);
    assert_eq!((m.flags, m.mem_lower, m.mem_upper, m.cmdline.as_str()), (0x24d, 636, 64512, "k x"));
    // And the loader agrees for a real program.
    let cfg = BootConfig { kernel: BootImage { name: "k".into(), bytes: pvh32_basics().unwrap() }, ..cfg };
    let info = load(&mem, &cfg).unwrap();
    let p = PvhInputs::xensim(&mem, &cfg, info.kernel_end);
    let si = info.entry.gpr[gpr::RBX];
    let modlist = mem.read_u64(si + 16).unwrap();
    assert_eq!(mem.read_u64(modlist + 32).unwrap(), p.modules[1].0);
}

#[test]
fn image_builds_a_program_from_a_closure() {
    let image = super::GuestProgram::image(Mode::Long64, Boot::Pvh, |g| {
        g.print("hi\n")?;
        g.halt()
    })
    .unwrap();
    let (mem, info) = boot(image, &[], "");
    assert_eq!(info.entry.rip, ENTRY);
    // "hi\n" lands in the data area.
    let mut s = [0u8; 4];
    mem.read(super::asm::DATA_BASE, &mut s).unwrap();
    assert_eq!(&s, b"hi\n\0");
}
