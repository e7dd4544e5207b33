//! A strict reader for the parts of ELF the boot loaders need: the file
//! header, PT_LOAD program headers and Xen notes (System V gABI, ch. 4-5).
//! Every offset and size comes from the file, so all arithmetic is checked
//! and every failure is a message, never a panic.

use super::place::Ram;
use super::BootError;
use crate::GuestMemory;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_X: u32 = 1;
const SHT_NOTE: u32 = 7;
const SHT_SYMTAB: u32 = 2;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
/// Xen's PVH entry note (xen/include/public/elfnote.h).
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramHeader {
    pub p_type: u32,
    /// p_flags: PF_X (1), PF_W (2), PF_R (4).
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
}

#[derive(Debug)]
pub struct Elf<'a> {
    bytes: &'a [u8],
    class64: bool,
    pub entry: u64,
    pub phdrs: Vec<ProgramHeader>,
    shoff: u64,
    shentsize: u16,
    shnum: u16,
}

/// Little-endian field reads that fail instead of panicking.
pub(crate) fn le(bytes: &[u8], off: u64, len: usize) -> Result<u64, String> {
    let start = usize::try_from(off).map_err(|_| format!("offset {off:#x} is too large"))?;
    let field = start
        .checked_add(len)
        .and_then(|end| bytes.get(start..end))
        .ok_or_else(|| format!("field at offset {off:#x} lies past the end of the file"))?;
    Ok(field.iter().rev().fold(0u64, |acc, &b| (acc << 8) | b as u64))
}

impl<'a> Elf<'a> {
    /// `Ok(None)` if `bytes` is not an ELF file at all; an error if it claims
    /// to be one but is not a well-formed little-endian x86 executable.
    pub fn parse(bytes: &'a [u8]) -> Result<Option<Self>, String> {
        if bytes.get(..4) != Some(b"\x7fELF".as_slice()) {
            return Ok(None);
        }
        let ident = bytes.get(..16).ok_or("ELF identification is truncated")?;
        let class64 = match ident[4] {
            1 => false,
            2 => true,
            c => return Err(format!("unknown ELF class {c}")),
        };
        if ident[5] != 1 {
            return Err("not little-endian".into());
        }
        if ident[6] != 1 {
            return Err(format!("unknown ELF version {}", ident[6]));
        }
        let ehsize = if class64 { 64 } else { 52 };
        if bytes.len() < ehsize {
            return Err("ELF header is truncated".into());
        }
        let e_type = le(bytes, 16, 2)? as u16;
        if e_type != 2 && e_type != 3 {
            return Err(format!("ELF type {e_type} is not an executable"));
        }
        let machine = le(bytes, 18, 2)? as u16;
        if machine != EM_386 && machine != EM_X86_64 {
            return Err(format!("ELF machine {machine} is not x86"));
        }
        let w = if class64 { 8 } else { 4 };
        let entry = le(bytes, 24, w)?;
        let phoff = le(bytes, 24 + w as u64, w)?;
        let shoff = le(bytes, 24 + 2 * w as u64, w)?;
        let base = 24 + 3 * w as u64 + 4; // past e_flags
        let phentsize = le(bytes, base + 2, 2)? as u16;
        let phnum = le(bytes, base + 4, 2)? as u16;
        let shentsize = le(bytes, base + 6, 2)? as u16;
        let shnum = le(bytes, base + 8, 2)? as u16;
        let want_ph = if class64 { 56 } else { 32 };
        if phnum == 0xffff {
            return Err("extended program header numbering (PN_XNUM) is not supported".into());
        }
        if phnum != 0 && phentsize != want_ph {
            return Err(format!("program header size {phentsize} (expected {want_ph})"));
        }
        let mut phdrs = Vec::with_capacity(phnum as usize);
        for i in 0..phnum as u64 {
            let at = i.checked_mul(want_ph as u64).and_then(|o| o.checked_add(phoff));
            let at = at.ok_or("program header table offset overflows")?;
            phdrs.push(read_phdr(bytes, at, class64).map_err(|e| format!("program header {i}: {e}"))?);
        }
        for (i, ph) in phdrs.iter().enumerate() {
            if ph.p_type == PT_LOAD && ph.filesz > ph.memsz {
                return Err(format!(
                    "program header {i}: file size {:#x} exceeds memory size {:#x}",
                    ph.filesz, ph.memsz
                ));
            }
            if ph.p_type == PT_LOAD || ph.p_type == PT_NOTE {
                file_range(bytes, ph.offset, ph.filesz).map_err(|e| format!("program header {i}: {e}"))?;
            }
        }
        Ok(Some(Elf { bytes, class64, entry, phdrs, shoff, shentsize, shnum }))
    }

    pub fn loads(&self) -> impl Iterator<Item = &ProgramHeader> {
        self.phdrs.iter().filter(|p| p.p_type == PT_LOAD)
    }

    /// The loaded segments with PF_X set, as the boot information lists them.
    pub fn exec_segments(&self) -> Vec<super::ExecSegment> {
        self.loads()
            .filter(|p| p.flags & PF_X != 0 && p.filesz != 0)
            .map(|p| super::ExecSegment { vaddr: p.vaddr, paddr: p.paddr, len: p.filesz })
            .collect()
    }

    /// The PVH entry point from a Xen PHYS32_ENTRY note, looked for in the
    /// PT_NOTE segments and, failing that, in SHT_NOTE sections.
    pub fn xen_phys32_entry(&self) -> Result<Option<u64>, String> {
        for ph in self.phdrs.iter().filter(|p| p.p_type == PT_NOTE) {
            if let Some(e) = self.find_note(ph.offset, ph.filesz, ph.align)? {
                return Ok(Some(e));
            }
        }
        let want_sh = if self.class64 { 64 } else { 40 };
        if self.shnum == 0 || self.shoff == 0 {
            return Ok(None);
        }
        if self.shentsize != want_sh {
            return Err(format!("section header size {} (expected {want_sh})", self.shentsize));
        }
        let w = if self.class64 { 8 } else { 4 };
        for i in 0..self.shnum as u64 {
            let at = i.checked_mul(want_sh as u64).and_then(|o| o.checked_add(self.shoff));
            let at = at.ok_or("section header table offset overflows")?;
            let sh_type = le(self.bytes, at + 4, 4)? as u32;
            if sh_type != SHT_NOTE {
                continue;
            }
            // sh_flags, sh_addr, then sh_offset and sh_size; sh_addralign after link/info.
            let offset = le(self.bytes, at + 8 + 2 * w as u64, w)?;
            let size = le(self.bytes, at + 8 + 3 * w as u64, w)?;
            let align = le(self.bytes, at + 16 + 4 * w as u64, w)?;
            file_range(self.bytes, offset, size).map_err(|e| format!("section {i}: {e}"))?;
            if let Some(e) = self.find_note(offset, size, align)? {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    /// Value and size of each of `names` found in the SHT_SYMTAB sections
    /// (.symtab), in table order; names not there are left out.
    pub fn symbols(&self, names: &[&str]) -> Result<Vec<(String, u64, u64)>, String> {
        let want_sh = if self.class64 { 64 } else { 40 };
        if self.shnum == 0 || self.shoff == 0 || self.shentsize != want_sh {
            return Ok(Vec::new());
        }
        let w = if self.class64 { 8 } else { 4 };
        // sh_offset, sh_size, sh_link and sh_entsize of section `i`.
        let section = |i: u64| -> Result<(u64, u64, u32, u32), String> {
            let at = i.checked_mul(want_sh as u64).and_then(|o| o.checked_add(self.shoff));
            let at = at.ok_or("section header table offset overflows")?;
            Ok((
                le(self.bytes, at + 8 + 2 * w as u64, w)?,
                le(self.bytes, at + 8 + 3 * w as u64, w)?,
                le(self.bytes, at + 8 + 4 * w as u64, 4)? as u32,
                le(self.bytes, at + 16 + 5 * w as u64, w)? as u32,
            ))
        };
        let mut found = Vec::new();
        for i in 0..self.shnum as u64 {
            let at = self.shoff.checked_add(i * want_sh as u64).ok_or("section header table offset overflows")?;
            if le(self.bytes, at + 4, 4)? as u32 != SHT_SYMTAB {
                continue;
            }
            let (offset, size, link, entsize) = section(i)?;
            let want_ent = if self.class64 { 24 } else { 16 };
            if entsize != want_ent || link as u64 >= self.shnum as u64 {
                return Err(format!("symbol table section {i} has entry size {entsize} or string table {link}"));
            }
            let table = file_range(self.bytes, offset, size).map_err(|e| format!("section {i}: {e}"))?;
            let (str_off, str_size, _, _) = section(link as u64)?;
            let strings = file_range(self.bytes, str_off, str_size).map_err(|e| format!("section {link}: {e}"))?;
            for sym in table.chunks_exact(want_ent as usize) {
                let name_at = le(sym, 0, 4)? as usize;
                let Some(name) = strings.get(name_at..).and_then(|s| s.split(|&b| b == 0).next()) else {
                    continue;
                };
                let Some(n) = names.iter().find(|n| n.as_bytes() == name) else { continue };
                let (value, size) =
                    if self.class64 { (le(sym, 8, 8)?, le(sym, 16, 8)?) } else { (le(sym, 4, 4)?, le(sym, 8, 4)?) };
                found.push((n.to_string(), value, size));
            }
        }
        Ok(found)
    }

    fn find_note(&self, offset: u64, size: u64, align: u64) -> Result<Option<u64>, String> {
        // Notes are 4-byte aligned; toolchains emit 8-byte aligned note
        // segments (e.g. .note.gnu.property) with p_align 8.
        let pad = if align == 8 { 8u64 } else { 4 };
        let notes = file_range(self.bytes, offset, size)?;
        let mut at = 0u64;
        while at < notes.len() as u64 {
            let namesz = le(notes, at, 4).map_err(|_| "note header is truncated")?;
            let descsz = le(notes, at + 4, 4).map_err(|_| "note header is truncated")?;
            let n_type = le(notes, at + 8, 4).map_err(|_| "note header is truncated")? as u32;
            let name_at = at + 12;
            let desc_at = name_at.checked_add(round_up(namesz, pad)).ok_or("note name size overflows")?;
            let next = desc_at.checked_add(round_up(descsz, pad)).ok_or("note size overflows")?;
            let name = file_range(notes, name_at, namesz).map_err(|_| "note name lies past the end of its segment")?;
            let desc = file_range(notes, desc_at, descsz).map_err(|_| "note data lies past the end of its segment")?;
            let name = name.strip_suffix(b"\0").unwrap_or(name);
            if name == b"Xen" && n_type == XEN_ELFNOTE_PHYS32_ENTRY {
                let entry = match desc.len() {
                    4 | 8 => le(desc, 0, desc.len())?,
                    n => return Err(format!("Xen PHYS32_ENTRY note has {n} bytes of data (expected 4 or 8)")),
                };
                if entry > u32::MAX as u64 {
                    return Err(format!("Xen PHYS32_ENTRY {entry:#x} is not a 32-bit address"));
                }
                return Ok(Some(entry));
            }
            at = next;
        }
        Ok(None)
    }

    /// Copy every PT_LOAD segment to its physical address (`p_paddr`) and
    /// zero the rest of its memory size. Returns the end of the highest one.
    pub fn load(&self, mem: &GuestMemory, file: &str, ram: &Ram) -> Result<u64, BootError> {
        let mut end = 0u64;
        for ph in self.loads().filter(|p| p.memsz != 0) {
            let seg_end = ram.check_image_range(file, "ELF segment", ph.paddr, ph.memsz)?;
            let data = file_range(self.bytes, ph.offset, ph.filesz)
                .map_err(|what| super::malformed(file, "ELF file", what))?;
            let write = |addr, buf: &[u8]| {
                mem.write(addr, buf).map_err(|err| BootError::Memory { file: file.to_string(), err })
            };
            write(ph.paddr, data)?;
            zero(mem, ph.paddr + ph.filesz, ph.memsz - ph.filesz)
                .map_err(|err| BootError::Memory { file: file.to_string(), err })?;
            end = end.max(seg_end);
        }
        if end == 0 {
            return Err(super::malformed(file, "ELF file", "no loadable segment".into()));
        }
        Ok(end)
    }
}

fn read_phdr(b: &[u8], at: u64, class64: bool) -> Result<ProgramHeader, String> {
    Ok(if class64 {
        ProgramHeader {
            p_type: le(b, at, 4)? as u32,
            flags: le(b, at + 4, 4)? as u32,
            offset: le(b, at + 8, 8)?,
            vaddr: le(b, at + 16, 8)?,
            paddr: le(b, at + 24, 8)?,
            filesz: le(b, at + 32, 8)?,
            memsz: le(b, at + 40, 8)?,
            align: le(b, at + 48, 8)?,
        }
    } else {
        ProgramHeader {
            p_type: le(b, at, 4)? as u32,
            flags: le(b, at + 24, 4)? as u32,
            offset: le(b, at + 4, 4)?,
            vaddr: le(b, at + 8, 4)?,
            paddr: le(b, at + 12, 4)?,
            filesz: le(b, at + 16, 4)?,
            memsz: le(b, at + 20, 4)?,
            align: le(b, at + 28, 4)?,
        }
    })
}

/// `bytes[offset..offset + size]`, or why it does not exist.
pub(crate) fn file_range(bytes: &[u8], offset: u64, size: u64) -> Result<&[u8], String> {
    let end = offset.checked_add(size).ok_or_else(|| format!("range {offset:#x}+{size:#x} overflows"))?;
    let (s, e) = (usize::try_from(offset), usize::try_from(end));
    match (s, e) {
        (Ok(s), Ok(e)) if e <= bytes.len() => Ok(&bytes[s..e]),
        _ => Err(format!("data at offset {offset:#x} (size {size:#x}) lies past the end of the file")),
    }
}

fn round_up(v: u64, align: u64) -> u64 {
    v.div_ceil(align).saturating_mul(align)
}

/// Zero `len` bytes of guest memory from `addr`, a page at a time.
pub(crate) fn zero(mem: &GuestMemory, addr: u64, len: u64) -> Result<(), crate::memory::MemoryError> {
    const CHUNK: u64 = 64 * 1024;
    let zeros = [0u8; CHUNK as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK);
        mem.write(addr + done, &zeros[..n as usize])?;
        done += n;
    }
    Ok(())
}
