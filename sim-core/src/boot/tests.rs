//! Boot loader tests. Images are built by a small writer here (independent
//! of the loader's reader); boot structures are read back at the offsets
//! the specifications give, not through the loader's own constants.

use super::*;
use crate::state::{gpr, sreg};

const MIB: u64 = 1 << 20;

struct Seg {
    paddr: u64,
    vaddr: u64,
    data: Vec<u8>,
    memsz: u64,
    /// p_flags (PF_X 1, PF_W 2, PF_R 4).
    flags: u32,
}

fn seg(paddr: u64, data: &[u8], memsz: u64) -> Seg {
    Seg { paddr, vaddr: paddr, data: data.to_vec(), memsz, flags: 0 }
}

/// An ELF note: namesz, descsz, type, name and desc each padded to 4.
fn note(name: &str, ty: u32, desc: &[u8]) -> Vec<u8> {
    let mut n = Vec::new();
    n.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
    n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    n.extend_from_slice(&ty.to_le_bytes());
    n.extend_from_slice(name.as_bytes());
    n.push(0);
    while n.len() % 4 != 0 {
        n.push(0);
    }
    n.extend_from_slice(desc);
    while n.len() % 4 != 0 {
        n.push(0);
    }
    n
}

enum NotePlace {
    None,
    Segment(Vec<u8>),
    Section(Vec<u8>),
}

/// Minimal x86 ELF executable: header, program headers, optional note,
/// segment data, optional section headers (null + one SHT_NOTE).
fn elf(class64: bool, entry: u64, segs: &[Seg], notes: NotePlace) -> Vec<u8> {
    let (ehsize, phsize, shsize) = if class64 { (64, 56, 64) } else { (52, 32, 40) };
    let note_bytes = match &notes {
        NotePlace::None => Vec::new(),
        NotePlace::Segment(n) | NotePlace::Section(n) => n.clone(),
    };
    let phnum = segs.len() + matches!(notes, NotePlace::Segment(_)) as usize;
    let note_off = ehsize + phnum * phsize;
    let mut data_off = note_off + note_bytes.len();
    let mut offsets = Vec::new();
    for s in segs {
        offsets.push(data_off);
        data_off += s.data.len();
    }
    let shoff = if matches!(notes, NotePlace::Section(_)) { data_off } else { 0 };
    let mut f = vec![0u8; ehsize];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = if class64 { 2 } else { 1 };
    f[5] = 1;
    f[6] = 1;
    f[16..18].copy_from_slice(&2u16.to_le_bytes());
    f[18..20].copy_from_slice(&(if class64 { 62u16 } else { 3 }).to_le_bytes());
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    let put = |f: &mut Vec<u8>, at: usize, v: u64, w: usize| f[at..at + w].copy_from_slice(&v.to_le_bytes()[..w]);
    let w = if class64 { 8 } else { 4 };
    put(&mut f, 24, entry, w);
    put(&mut f, 24 + w, ehsize as u64, w);
    put(&mut f, 24 + 2 * w, shoff as u64, w);
    let b = 24 + 3 * w + 4;
    put(&mut f, b, ehsize as u64, 2);
    put(&mut f, b + 2, phsize as u64, 2);
    put(&mut f, b + 4, phnum as u64, 2);
    put(&mut f, b + 6, shsize as u64, 2);
    put(&mut f, b + 8, if shoff != 0 { 2 } else { 0 }, 2);
    let phdr = |f: &mut Vec<u8>, ty: u32, flags: u32, off: usize, vaddr: u64, paddr: u64, filesz: u64, memsz: u64| {
        let at = f.len();
        f.resize(at + phsize, 0);
        put(f, at, ty as u64, 4);
        put(f, at + if class64 { 4 } else { 24 }, flags as u64, 4);
        if class64 {
            put(f, at + 8, off as u64, 8);
            put(f, at + 16, vaddr, 8);
            put(f, at + 24, paddr, 8);
            put(f, at + 32, filesz, 8);
            put(f, at + 40, memsz, 8);
            put(f, at + 48, 4, 8);
        } else {
            put(f, at + 4, off as u64, 4);
            put(f, at + 8, vaddr, 4);
            put(f, at + 12, paddr, 4);
            put(f, at + 16, filesz, 4);
            put(f, at + 20, memsz, 4);
            put(f, at + 28, 4, 4);
        }
    };
    for (s, &off) in segs.iter().zip(&offsets) {
        phdr(&mut f, 1, s.flags, off, s.vaddr, s.paddr, s.data.len() as u64, s.memsz);
    }
    if let NotePlace::Segment(n) = &notes {
        phdr(&mut f, 4, 4, note_off, 0, 0, n.len() as u64, 0);
    }
    f.extend_from_slice(&note_bytes);
    for s in segs {
        f.extend_from_slice(&s.data);
    }
    if shoff != 0 {
        f.resize(f.len() + shsize, 0); // null section
        let at = f.len();
        f.resize(at + shsize, 0);
        put(&mut f, at + 4, 7, 4); // SHT_NOTE
        put(&mut f, at + 8 + 2 * w, note_off as u64, w);
        put(&mut f, at + 8 + 3 * w, note_bytes.len() as u64, w);
        put(&mut f, at + 16 + 4 * w, 4, w);
    }
    f
}

fn phys32_note(entry: u64, desc_len: usize) -> Vec<u8> {
    note("Xen", 18, &entry.to_le_bytes()[..desc_len])
}

fn mb_header(flags: u32, extra: &[u32]) -> Vec<u8> {
    let mut h = Vec::new();
    for w in [0x1bad_b002u32, flags, 0u32.wrapping_sub(0x1bad_b002).wrapping_sub(flags)].iter().chain(extra) {
        h.extend_from_slice(&w.to_le_bytes());
    }
    h
}

fn image(name: &str, bytes: Vec<u8>) -> BootImage {
    BootImage { name: name.into(), bytes }
}

fn config(kernel: Vec<u8>, modules: Vec<BootImage>, cmdline: &str) -> BootConfig {
    BootConfig {
        kernel: image("kernel.elf", kernel),
        modules,
        cmdline: cmdline.into(),
        rsdp: 0xe0000,
        reserved: Vec::new(),
    }
}

// Independent little readers of guest memory.
fn r32(m: &GuestMemory, a: u64) -> u32 {
    let mut b = [0u8; 4];
    m.read(a, &mut b).unwrap();
    u32::from_le_bytes(b)
}
fn r64(m: &GuestMemory, a: u64) -> u64 {
    r32(m, a) as u64 | (r32(m, a + 4) as u64) << 32
}
fn cstr(m: &GuestMemory, a: u64) -> String {
    let mut s = Vec::new();
    for i in 0..4096 {
        let mut b = [0u8];
        m.read(a + i, &mut b).unwrap();
        if b[0] == 0 {
            break;
        }
        s.push(b[0]);
    }
    String::from_utf8(s).unwrap()
}
fn bytes(m: &GuestMemory, a: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    m.read(a, &mut v).unwrap();
    v
}

/// Fresh RAM filled with a pattern, so that zeroing is observable.
fn dirty_mem(mib: u64) -> GuestMemory {
    let m = GuestMemory::new(mib).unwrap();
    m.write(0, &vec![0xaa; (mib * MIB) as usize]).unwrap();
    m
}

/// The 64 MiB machine's map, written out from the layout contract.
fn expected_map_64m() -> Vec<(u64, u64, u32)> {
    vec![(0, 0x9f000, 1), (0x9f000, 0x100000 - 0x9f000, 2), (0x100000, 63 * MIB, 1)]
}

fn pvh_kernel(class64: bool, notes: impl Fn(Vec<u8>) -> NotePlace, desc_len: usize) -> Vec<u8> {
    let code: Vec<u8> = (0..100u8).collect();
    let segs = [seg(0x100000, &code, 0x2000), seg(0x200000, b"data", 0x1800)];
    elf(class64, 0xffff_ffff_8100_0000, &segs, notes(phys32_note(0x100010, desc_len)))
}

#[test]
fn pvh_elf64_loads_segments_and_start_info() {
    let mem = dirty_mem(64);
    let mods = vec![image("initrd.img", vec![7; 5000]), image("second arg=1", vec![9; 3])];
    let cfg = config(pvh_kernel(true, NotePlace::Segment, 4), mods, "console=hvc0 earlyprintk");
    let info = load(&mem, &cfg).unwrap();
    assert_eq!(info.protocol, BootProtocol::Pvh);
    assert_eq!(info.kernel_end, 0x201800);
    // Segments: file bytes, then zeros to p_memsz.
    assert_eq!(bytes(&mem, 0x100000, 100), (0..100u8).collect::<Vec<_>>());
    assert!(bytes(&mem, 0x100064, 0x2000 - 100).iter().all(|&b| b == 0));
    assert_eq!(r32(&mem, 0x102000), 0xaaaa_aaaa, "nothing past p_memsz is touched");
    assert_eq!(bytes(&mem, 0x200000, 4), b"data");
    assert!(bytes(&mem, 0x200004, 0x1800 - 4).iter().all(|&b| b == 0));

    // Entry state (pvh.pandoc).
    let s = &info.entry;
    let si = s.gpr[gpr::RBX];
    assert_eq!(s.rip, 0x100010);
    assert_eq!(s.cr0 & 0x8000_0001, 1, "PE set, PG clear");
    assert_eq!(s.cr4, 0);
    assert_eq!(s.rflags & ((1 << 9) | (1 << 8) | (1 << 17)), 0, "IF, TF, VM clear");
    for r in [sreg::CS, sreg::DS, sreg::ES, sreg::SS] {
        assert_eq!((s.seg[r].base, s.seg[r].limit), (0, 0xffff_ffff));
        assert!(s.seg[r].default_big() && s.seg[r].present());
    }
    assert!(s.seg[sreg::CS].is_code());
    assert_eq!((s.tr.base, s.tr.limit, s.tr.attr & 0xf), (0, 0x67, 0xb), "busy 32-bit TSS");
    assert!((0x1000..0x9f000).contains(&si));

    // hvm_start_info v1 (start_info.h offsets).
    assert_eq!(r32(&mem, si), 0x336e_c578);
    assert_eq!(r32(&mem, si + 4), 1);
    assert_eq!(r32(&mem, si + 8), 0);
    assert_eq!(r32(&mem, si + 12), 2);
    assert_eq!(cstr(&mem, r64(&mem, si + 24)), "console=hvc0 earlyprintk");
    assert_eq!(r64(&mem, si + 32), 0xe0000);
    let modlist = r64(&mem, si + 16);
    // Modules page-aligned above the kernel, in order, 32-byte entries.
    assert_eq!(r64(&mem, modlist), 0x202000);
    assert_eq!(r64(&mem, modlist + 8), 5000);
    assert_eq!(cstr(&mem, r64(&mem, modlist + 16)), "initrd.img");
    assert_eq!(r64(&mem, modlist + 24), 0);
    assert_eq!(r64(&mem, modlist + 32), 0x204000);
    assert_eq!(r64(&mem, modlist + 40), 3);
    assert_eq!(cstr(&mem, r64(&mem, modlist + 48)), "second arg=1");
    assert_eq!(bytes(&mem, 0x202000, 5000), vec![7; 5000]);
    assert_eq!(bytes(&mem, 0x204000, 3), vec![9; 3]);
    // Memory map: 24-byte entries.
    let map = r64(&mem, si + 40);
    let n = r32(&mem, si + 48) as u64;
    let got: Vec<_> =
        (0..n).map(|i| map + 24 * i).map(|e| (r64(&mem, e), r64(&mem, e + 8), r32(&mem, e + 16))).collect();
    assert_eq!(got, expected_map_64m());
    assert_eq!(r32(&mem, map + 20), 0, "reserved field");
    // Everything below 1 GiB and in the boot-data area.
    for a in [modlist, map, r64(&mem, si + 24)] {
        assert!((0x1000..0x9f000).contains(&a));
    }
}

#[test]
fn pvh_elf32_note_in_section_with_8_byte_desc() {
    let mem = dirty_mem(16);
    let cfg = config(pvh_kernel(false, NotePlace::Section, 8), vec![], "");
    let info = load(&mem, &cfg).unwrap();
    assert_eq!(info.protocol, BootProtocol::Pvh);
    assert_eq!(info.entry.rip, 0x100010);
    let si = info.entry.gpr[gpr::RBX];
    assert_eq!(r32(&mem, si + 12), 0, "no modules");
    assert_eq!(r64(&mem, si + 16), 0, "no module list");
    assert_eq!(cstr(&mem, r64(&mem, si + 24)), "");
}

fn multiboot_elf(vaddr_offset: u64, flags: u32) -> Vec<u8> {
    let mut code = mb_header(flags, &[]);
    code.extend_from_slice(&[0x90; 20]);
    let mut s = seg(0x100000, &code, 0x3000);
    s.vaddr = 0x100000 + vaddr_offset;
    elf(false, 0x100000 + vaddr_offset + 12, &[s], NotePlace::None)
}

fn check_multiboot_info(mem: &GuestMemory, info: &BootInfo, cmdline: &str, modules: &[(&str, u64, usize)]) {
    assert_eq!(info.protocol, BootProtocol::Multiboot);
    let s = &info.entry;
    assert_eq!(s.gpr[gpr::RAX], 0x2bad_b002);
    assert_eq!(s.cr0 & 0x8000_0001, 1);
    assert_eq!(s.rflags & ((1 << 9) | (1 << 17)), 0);
    for r in 0..6 {
        assert_eq!((s.seg[r].base, s.seg[r].limit), (0, 0xffff_ffff));
    }
    let mbi = s.gpr[gpr::RBX];
    let flags = r32(mem, mbi);
    assert_eq!(flags, 1 | 4 | 8 | 64 | 512, "MEM, CMDLINE, MODS, MMAP, BOOT_LOADER_NAME");
    assert_eq!(r32(mem, mbi + 4), 636, "KiB below 0x9f000");
    assert_eq!(r32(mem, mbi + 8), 63 * 1024, "KiB from 1 MiB to the end of 64 MiB");
    assert_eq!(cstr(mem, r32(mem, mbi + 16) as u64), cmdline);
    assert_eq!(r32(mem, mbi + 20) as usize, modules.len());
    let mods = r32(mem, mbi + 24) as u64;
    for (i, &(name, start, len)) in modules.iter().enumerate() {
        let e = mods + 16 * i as u64;
        assert_eq!(r32(mem, e) as u64, start);
        assert_eq!(r32(mem, e + 4) as u64, start + len as u64, "mod_end is one past the last byte");
        assert_eq!(cstr(mem, r32(mem, e + 8) as u64), name);
        assert_eq!(start % 4096, 0);
    }
    // mmap: each entry preceded by its size (20), mmap_length in bytes.
    let (len, addr) = (r32(mem, mbi + 44) as u64, r32(mem, mbi + 48) as u64);
    let mut got = Vec::new();
    let mut e = addr;
    while e < addr + len {
        let size = r32(mem, e) as u64;
        assert_eq!(size, 20);
        got.push((r64(mem, e + 4), r64(mem, e + 12), r32(mem, e + 20)));
        e += size + 4;
    }
    assert_eq!(got, expected_map_64m());
    assert_eq!(cstr(mem, r32(mem, mbi + 64) as u64), "xensim");
}

#[test]
fn multiboot_elf_info_and_entry_translation() {
    let mem = dirty_mem(64);
    // Linked at a high virtual address, loaded at p_paddr.
    let kernel = multiboot_elf(0xc000_0000, 0x3);
    let mods = vec![image("mod1 a=b", vec![1; 100]), image("mod2", vec![2; 4097])];
    let info = load(&mem, &config(kernel, mods, "root=/dev/sda")).unwrap();
    assert_eq!(info.entry.rip, 0x10000c, "entry translated from its virtual address");
    assert_eq!(info.kernel_end, 0x103000);
    assert!(bytes(&mem, 0x100000 + 32, 0x3000 - 32).iter().all(|&b| b == 0));
    check_multiboot_info(
        &mem,
        &info,
        "kernel.elf root=/dev/sda",
        &[("mod1 a=b", 0x103000, 100), ("mod2", 0x104000, 4097)],
    );
    assert_eq!(bytes(&mem, 0x104000, 4097), vec![2; 4097]);
}

#[test]
fn multiboot_aout_kludge_loads_a_flat_binary() {
    let mem = dirty_mem(64);
    // Flat binary loaded at 0x100000; header at file offset 0x40.
    let mut file = vec![0xf4u8; 0x40];
    file.extend(mb_header(0x10003, &[0x100040, 0x100000, 0x100080, 0x102000, 0x100060]));
    file.resize(0x100, 0xcc); // bytes past load_end_addr must not be loaded
    let info = load(&mem, &config(file.clone(), vec![image("m", vec![5; 10])], "x")).unwrap();
    assert_eq!(info.entry.rip, 0x100060);
    assert_eq!(info.kernel_end, 0x102000);
    assert_eq!(bytes(&mem, 0x100000, 0x80), file[..0x80]);
    assert!(bytes(&mem, 0x100080, 0x2000 - 0x80).iter().all(|&b| b == 0), "bss zeroed");
    check_multiboot_info(&mem, &info, "kernel.elf x", &[("m", 0x102000, 10)]);
}

#[test]
fn multiboot_aout_whole_file_without_bss() {
    let mem = dirty_mem(64);
    let mut file = mb_header(0x10000, &[0x200000, 0x200000, 0, 0, 0x200020]);
    file.resize(0x30, 0x90);
    let info = load(&mem, &config(file.clone(), vec![], "")).unwrap();
    assert_eq!(info.kernel_end, 0x200030);
    assert_eq!(bytes(&mem, 0x200000, 0x30), file);
}

fn err(mem: &GuestMemory, kernel: Vec<u8>, modules: Vec<BootImage>, cmdline: &str) -> String {
    let e = load(mem, &config(kernel, modules, cmdline)).unwrap_err();
    let s = e.to_string();
    assert!(!s.contains('\n'), "one line: {s}");
    s
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let mem = GuestMemory::new(16).unwrap();
    assert_eq!(err(&mem, b"hello world".to_vec(), vec![], ""), "kernel.elf: not an ELF file or Multiboot kernel");
    let plain = elf(true, 0x100000, &[seg(0x100000, b"x", 1)], NotePlace::None);
    assert_eq!(
        err(&mem, plain, vec![], ""),
        "kernel.elf: ELF file has neither a Xen PHYS32_ENTRY note (PVH) nor a Multiboot header"
    );
    let outside = elf(true, 0, &[seg(0x2000000, b"x", 0x2000)], NotePlace::Segment(phys32_note(0x2000000, 4)));
    assert_eq!(
        err(&mem, outside, vec![], ""),
        "kernel.elf: ELF segment at 0x2000000 (size 0x2000) lies outside guest RAM"
    );
    let low = elf(true, 0, &[seg(0x8000, b"x", 0x10)], NotePlace::Segment(phys32_note(0x8000, 4)));
    assert!(err(&mem, low, vec![], "").contains("ELF segment at 0x8000 (size 0x10) lies below 1 MiB"));
    let bad_entry = elf(true, 0, &[seg(0x100000, b"x", 0x10)], NotePlace::Segment(phys32_note(0x300000, 4)));
    assert_eq!(err(&mem, bad_entry, vec![], ""), "kernel.elf: entry point 0x300000 is not inside a loaded segment");
    let ok = pvh_kernel(true, NotePlace::Segment, 4);
    let big = image("initrd.img", vec![0; 15 * MIB as usize]);
    assert_eq!(
        err(&mem, ok.clone(), vec![big], ""),
        "initrd.img: module of 0xf00000 bytes does not fit in guest RAM below 0x1000000 (1 GiB or the end of RAM)"
    );
    let long_cmdline = "a".repeat(0xa0000);
    assert!(err(&mem, ok.clone(), vec![], &long_cmdline)
        .starts_with("kernel.elf: boot information (kernel command line) does not fit in the boot-data area"));
    let mut truncated = ok.clone();
    truncated.truncate(40);
    assert_eq!(err(&mem, truncated, vec![], ""), "kernel.elf: malformed ELF file: ELF header is truncated");
    let mut bad_note = pvh_kernel(true, NotePlace::Segment, 4);
    // The note's descsz is at the start of the note (after header + 3 phdrs).
    let note_at = 64 + 3 * 56;
    bad_note[note_at + 4..note_at + 8].copy_from_slice(&0x1000u32.to_le_bytes());
    assert!(err(&mem, bad_note, vec![], "").contains("note data lies past the end of its segment"));
    // A required Multiboot feature we do not know (bit 3).
    assert!(err(&mem, multiboot_elf(0, 0x8), vec![], "").contains("unsupported Multiboot kernel"));
    // A Multiboot header with a wrong checksum is no header.
    let mut file = mb_header(0x10000, &[0x100000, 0x100000, 0, 0, 0x100000]);
    file[8] ^= 1;
    assert_eq!(err(&mem, file, vec![], ""), "kernel.elf: not an ELF file or Multiboot kernel");
    // a.out kludge whose load_addr lies before the file start.
    let file = mb_header(0x10000, &[0x100000, 0xf0000, 0, 0, 0x100000]);
    assert!(err(&mem, file, vec![], "").contains("load_addr lies before the file start"));
}

#[test]
fn modules_stop_at_one_gib() {
    let mem = GuestMemory::new(2048).unwrap();
    // A kernel ending just below 1 GiB leaves no room for a 2-page module.
    let k = elf(true, 0, &[seg(0x3fff_e000, b"x", 0x1000)], NotePlace::Segment(phys32_note(0x3fff_e000, 4)));
    let e = err(&mem, k, vec![image("m", vec![0; 0x2000])], "");
    assert_eq!(e, "m: module of 0x2000 bytes does not fit in guest RAM below 0x40000000 (1 GiB or the end of RAM)");
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn try_load(mem: &GuestMemory, bytes: Vec<u8>) {
        let _ = kernel_symbols(&bytes, &["xen_hypercall_intel", "other"]);
        let _ = load(mem, &config(bytes, vec![image("m", vec![1; 10])], "c"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mem = GuestMemory::new(4).unwrap();
            try_load(&mem, bytes.clone());
            let mut with_magic = b"\x7fELF\x02\x01\x01".to_vec();
            with_magic.extend(bytes);
            try_load(&mem, with_magic);
        }

        #[test]
        fn mutated_images_never_panic(which in 0..5usize, cut in 0..1000usize, flips in proptest::collection::vec((0..1000usize, any::<u8>()), 0..8)) {
            let mem = GuestMemory::new(4).unwrap();
            let mut img = match which {
                0 => pvh_kernel(true, NotePlace::Segment, 4),
                4 => elf_with_symbols(&[("xen_hypercall_intel", 0x1000, 0x10), ("other", 1, 2)]),
                1 => pvh_kernel(false, NotePlace::Section, 8),
                2 => multiboot_elf(0, 3),
                _ => { let mut f = mb_header(0x10000, &[0x100000, 0x100000, 0x100100, 0x200000, 0x100010]); f.resize(0x100, 0); f }
            };
            for (at, v) in flips {
                let n = img.len(); if let Some(b) = img.get_mut(at % n) { *b = v; }
            }
            try_load(&mem, img.clone());
            img.truncate(cut);
            try_load(&mem, img);
        }
    }
}

#[test]
fn executable_segments_are_listed_for_both_elf_classes() {
    for class64 in [false, true] {
        let mem = dirty_mem(64);
        let code = Seg { vaddr: 0xc010_0000, flags: 5, ..seg(0x100000, &[0x90; 0x40], 0x1000) };
        let data = Seg { flags: 6, ..seg(0x200000, b"data", 0x10) };
        let k = elf(class64, 0xc010_0000, &[code, data], NotePlace::Segment(phys32_note(0x100000, 4)));
        let info = load(&mem, &config(k, Vec::new(), "")).unwrap();
        // Only the R+X segment, with its file size (the bss part holds no code).
        assert_eq!(info.exec_segments, [ExecSegment { vaddr: 0xc010_0000, paddr: 0x100000, len: 0x40 }]);
    }
}

/// ELF64 with no segments and sections [null, .symtab, .strtab]: symbols
/// (name, value, size); written from the gABI's layouts (Elf64_Shdr 64
/// bytes, Elf64_Sym 24 bytes: name 0, info 4, other 5, shndx 6, value 8, size 16).
fn elf_with_symbols(syms: &[(&str, u64, u64)]) -> Vec<u8> {
    let mut strtab = vec![0u8];
    let mut symtab = vec![0u8; 24]; // the null symbol
    for (name, value, size) in syms {
        let mut e = [0u8; 24];
        e[..4].copy_from_slice(&(strtab.len() as u32).to_le_bytes());
        e[4] = 0x12; // STB_GLOBAL, STT_FUNC
        e[6..8].copy_from_slice(&1u16.to_le_bytes());
        e[8..16].copy_from_slice(&value.to_le_bytes());
        e[16..24].copy_from_slice(&size.to_le_bytes());
        symtab.extend_from_slice(&e);
        strtab.extend_from_slice(name.as_bytes());
        strtab.push(0);
    }
    let (sym_off, str_off) = (64u64, 64 + symtab.len() as u64);
    let shoff = str_off + strtab.len() as u64;
    let mut f = vec![0u8; 64];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2;
    f[5] = 1;
    f[6] = 1;
    f[16..18].copy_from_slice(&2u16.to_le_bytes());
    f[18..20].copy_from_slice(&62u16.to_le_bytes());
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[40..48].copy_from_slice(&shoff.to_le_bytes());
    f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f[60..62].copy_from_slice(&3u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&symtab);
    f.extend_from_slice(&strtab);
    let shdr = |ty: u32, off: u64, size: u64, link: u32, entsize: u64| {
        let mut h = [0u8; 64];
        h[4..8].copy_from_slice(&ty.to_le_bytes());
        h[24..32].copy_from_slice(&off.to_le_bytes());
        h[32..40].copy_from_slice(&size.to_le_bytes());
        h[40..44].copy_from_slice(&link.to_le_bytes());
        h[56..64].copy_from_slice(&entsize.to_le_bytes());
        h
    };
    f.extend_from_slice(&[0u8; 64]);
    f.extend_from_slice(&shdr(2, sym_off, symtab.len() as u64, 2, 24));
    f.extend_from_slice(&shdr(3, str_off, strtab.len() as u64, 0, 0));
    f
}

#[test]
fn kernel_symbols_are_found_by_name() {
    let k = elf_with_symbols(&[
        ("xen_hypercall_amd", 0xffff_ffff_8100_1000, 0x10),
        ("other", 1, 2),
        ("xen_hypercall_intel", 0xffff_ffff_8100_1020, 0xc),
    ]);
    let names = ["xen_hypercall_intel", "xen_hypercall_amd", "missing"];
    assert_eq!(
        kernel_symbols(&k, &names),
        [
            ("xen_hypercall_amd".to_string(), 0xffff_ffff_8100_1000, 0x10),
            ("xen_hypercall_intel".to_string(), 0xffff_ffff_8100_1020, 0xc)
        ]
    );
    assert!(kernel_symbols(b"not elf", &names).is_empty());
    // A table cut short is no symbols, not a panic.
    assert!(kernel_symbols(&k[..k.len() - 100], &names).is_empty());
}
