//! A tiny writer of bootable images: ELF executables with a Xen PVH note or a
//! Multiboot header, and flat Multiboot binaries using the a.out kludge.

/// Segment permission flags (p_flags).
pub const PF_X: u32 = 1;
pub const PF_W: u32 = 2;
pub const PF_R: u32 = 4;

/// Multiboot header flags: page-align modules, provide memory information.
pub const MB_FLAGS: u32 = 0x3;
/// Multiboot header flag 16: load by the header's address fields.
pub const MB_AOUT_KLUDGE: u32 = 1 << 16;
pub const MB_HEADER_MAGIC: u32 = 0x1bad_b002;
/// Xen's `XEN_ELFNOTE_PHYS32_ENTRY`.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// One loadable segment: `data` at `paddr`, zero-filled up to `memsz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub paddr: u64,
    pub data: Vec<u8>,
    pub memsz: u64,
    pub flags: u32,
}

impl Segment {
    pub fn new(paddr: u64, data: Vec<u8>, memsz: u64, flags: u32) -> Self {
        assert!(memsz >= data.len() as u64, "segment memsz below its file size");
        Segment { paddr, data, memsz, flags }
    }
}

/// A 64-bit PVH kernel: PT_LOAD segments plus a PT_NOTE holding the Xen
/// PHYS32_ENTRY note with a 4-byte `entry32`.
pub fn pvh_elf64(segments: &[Segment], entry32: u32) -> Vec<u8> {
    write_elf(Class::Elf64, segments, entry32 as u64, Extra::Note(xen_entry_note(entry32)))
}

/// A 32-bit PVH kernel (i386 ELF), otherwise as [`pvh_elf64`].
pub fn pvh_elf32(segments: &[Segment], entry32: u32) -> Vec<u8> {
    write_elf(Class::Elf32, segments, entry32 as u64, Extra::Note(xen_entry_note(entry32)))
}

/// A 32-bit Multiboot ELF: the header (magic, `flags`, checksum) sits right
/// after the program headers, well inside the first 8 KiB; the loader uses
/// the program headers (flag 16 must not be set).
pub fn multiboot_elf32(segments: &[Segment], entry: u32, flags: u32) -> Vec<u8> {
    assert_eq!(flags & MB_AOUT_KLUDGE, 0, "ELF Multiboot images load by program headers");
    write_elf(Class::Elf32, segments, entry as u64, Extra::Multiboot(multiboot_header(flags, None)))
}

/// Size of the a.out-kludge header (magic, flags, checksum, five addresses).
pub const AOUT_HEADER_SIZE: u64 = 32;

/// A flat Multiboot binary loaded by the a.out kludge (flags 0x10003). The
/// file starts with the header, loaded at `load_addr` = the first segment's
/// page minus one page if the segment starts closer than 32 bytes to its page;
/// segments are laid out flat (gaps zeroed) after it, the last segment's
/// zero fill becomes the bss.
pub fn multiboot_aout_kludge(segments: &[Segment], entry: u32) -> Vec<u8> {
    let mut segs: Vec<&Segment> = segments.iter().collect();
    segs.sort_by_key(|s| s.paddr);
    let first = segs.first().map_or(0x10_0000, |s| s.paddr);
    let load_addr = (first - AOUT_HEADER_SIZE) & !0xfff;
    let mut image = Vec::new();
    let mut bss_end = load_addr;
    for s in &segs {
        let off = (s.paddr - load_addr) as usize;
        assert!(off >= image.len().max(AOUT_HEADER_SIZE as usize), "a.out kludge segments overlap");
        image.resize(off, 0);
        image.extend_from_slice(&s.data);
        bss_end = bss_end.max(s.paddr + s.memsz);
    }
    let load_end = load_addr + image.len() as u64;
    let addrs =
        [load_addr, load_addr, load_end, bss_end, entry as u64].map(|a| u32::try_from(a).expect("32-bit address"));
    let header = multiboot_header(MB_FLAGS | MB_AOUT_KLUDGE, Some(addrs));
    image[..header.len()].copy_from_slice(&header);
    image
}

fn multiboot_header(flags: u32, addrs: Option<[u32; 5]>) -> Vec<u8> {
    let checksum = 0u32.wrapping_sub(MB_HEADER_MAGIC).wrapping_sub(flags);
    let mut h: Vec<u8> = [MB_HEADER_MAGIC, flags, checksum].iter().flat_map(|w| w.to_le_bytes()).collect();
    for a in addrs.iter().flatten() {
        h.extend_from_slice(&a.to_le_bytes());
    }
    h
}

/// Note header (namesz, descsz, type), "Xen\0", then the 4-byte entry.
fn xen_entry_note(entry32: u32) -> Vec<u8> {
    let mut n = Vec::with_capacity(20);
    for w in [4u32, 4, XEN_ELFNOTE_PHYS32_ENTRY] {
        n.extend_from_slice(&w.to_le_bytes());
    }
    n.extend_from_slice(b"Xen\0");
    n.extend_from_slice(&entry32.to_le_bytes());
    n
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Elf32,
    Elf64,
}

enum Extra {
    /// Contents of a PT_NOTE segment.
    Note(Vec<u8>),
    /// Bytes placed (unloaded) after the program headers.
    Multiboot(Vec<u8>),
}

/// Layout: ELF header, program headers, note or Multiboot header, then
/// each segment's data at a page-aligned file offset (congruent to its
/// address modulo the page size, as the gABI asks of p_offset).
fn write_elf(class: Class, segments: &[Segment], entry: u64, extra: Extra) -> Vec<u8> {
    let is64 = class == Class::Elf64;
    let (ehsize, phentsize) = if is64 { (64usize, 56usize) } else { (52, 32) };
    let (extra_bytes, note) = match &extra {
        Extra::Note(n) => (n.clone(), true),
        Extra::Multiboot(h) => (h.clone(), false),
    };
    let phnum = segments.len() + note as usize;
    let extra_off = ehsize + phnum * phentsize;
    let mut f = Vec::new();
    let mut w = Writer { f: &mut f, is64 };
    // e_ident: magic, class, little-endian, version 1, System V ABI.
    w.bytes(b"\x7fELF");
    w.bytes(&[if is64 { 2 } else { 1 }, 1, 1, 0]);
    w.bytes(&[0; 8]);
    w.u16(2); // ET_EXEC
    w.u16(if is64 { 62 } else { 3 }); // EM_X86_64 / EM_386
    w.u32(1);
    w.word(entry);
    w.word(ehsize as u64); // e_phoff
    w.word(0); // e_shoff
    w.u32(0); // e_flags
    w.u16(ehsize as u16);
    w.u16(phentsize as u16);
    w.u16(phnum as u16);
    w.u16(if is64 { 64 } else { 40 });
    w.u16(0); // e_shnum
    w.u16(0); // e_shstrndx

    let mut offset = (extra_off + extra_bytes.len()) as u64;
    let mut offsets = Vec::new();
    for s in segments {
        offset = offset.next_multiple_of(4096) + (s.paddr & 0xfff);
        offsets.push(offset);
        offset += s.data.len() as u64;
    }
    for (s, &off) in segments.iter().zip(&offsets) {
        w.phdr(1, s.flags, off, s.paddr, s.data.len() as u64, s.memsz, 4096);
    }
    if note {
        w.phdr(4, PF_R, extra_off as u64, 0, extra_bytes.len() as u64, 0, 4);
    }
    f.extend_from_slice(&extra_bytes);
    for (s, &off) in segments.iter().zip(&offsets) {
        f.resize(off as usize, 0);
        f.extend_from_slice(&s.data);
    }
    f
}

struct Writer<'a> {
    f: &'a mut Vec<u8>,
    is64: bool,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.f.extend_from_slice(b);
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    /// An address- or offset-sized field.
    fn word(&mut self, v: u64) {
        if self.is64 {
            self.bytes(&v.to_le_bytes());
        } else {
            self.u32(u32::try_from(v).expect("ELF32 field above 4 GiB"));
        }
    }
    /// A program header; vaddr = paddr (identity-linked images).
    #[allow(clippy::too_many_arguments)]
    fn phdr(&mut self, ty: u32, flags: u32, offset: u64, addr: u64, filesz: u64, memsz: u64, align: u64) {
        self.u32(ty);
        if self.is64 {
            self.u32(flags);
        }
        self.word(offset);
        self.word(addr);
        self.word(addr);
        self.word(filesz);
        self.word(memsz);
        if !self.is64 {
            self.u32(flags);
        }
        self.word(align);
    }
}
