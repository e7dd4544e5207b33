//! Decoded-instruction cache, per guest-physical page.
//!
//! Each page keeps the bytes it was decoded from. Writes by this vCPU go
//! through the interpreter's write path, which drops a page as soon as it is
//! written (write-TLB entries never point at code pages, so every such write
//! takes that path). Writes by anyone else (the machine, device models,
//! other vCPUs) can only happen between `run` calls: each `run` starts a new
//! epoch, and a page is compared with its saved bytes the first time it is
//! entered in an epoch. That costs one 4 KiB compare per code page touched
//! per `run`, and needs no cooperation from the writers.

use std::collections::HashMap;

use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction};
use sim_core::memory::GuestMemory;

use crate::fault::R;
use crate::interp::Interpreter;
use crate::predecode::Pre;

/// Executes one decoded instruction (chosen once, at decode time).
pub type Handler = fn(&mut Interpreter, &GuestMemory, &Cached) -> R<()>;

/// A decoded instruction and its handler.
#[derive(Clone, Copy)]
pub struct Cached {
    pub ins: Instruction,
    pub run: Handler,
    pub pre: Pre,
    /// The handler is one of `fast`'s: the run loop may run it back to back
    /// with other simple instructions without the per-boundary checks.
    pub simple: bool,
    /// A simple instruction that may set `next_rip` (a branch); the others
    /// always continue at RIP + length.
    pub branch: bool,
}

impl Cached {
    /// `ins` decoded at `bitness` (16, 32 or 64).
    pub fn new(ins: Instruction, bitness: u32) -> Cached {
        let pre = Pre::new(&ins, bitness);
        match crate::fast::select(&ins, &pre) {
            Some(run) => {
                let branch = ins.flow_control() != iced_x86::FlowControl::Next;
                Cached { run, ins, pre, simple: true, branch }
            }
            None => Cached { run: crate::dispatch::handler(&ins), ins, pre, simple: false, branch: true },
        }
    }
}

pub const PAGE: usize = 4096;
/// Drop the whole cache when it holds this many pages (bounds host memory).
const MAX_PAGES: usize = 16384;

pub struct CodePage {
    pub gfn: u64,
    pub bitness: u32,
    /// Offset -> index + 1 into `insns` (0: not decoded yet).
    index: Box<[u16; PAGE]>,
    insns: Vec<Cached>,
    bytes: Box<[u8; PAGE]>,
    verified_epoch: u64,
}

/// Result of looking up an offset in a page.
pub enum Decoded {
    Hit(Cached),
    /// The instruction runs past the page end: the caller decodes it from
    /// both pages (not cached).
    CrossesPage,
}

impl CodePage {
    fn reset(&mut self, bitness: u32) {
        self.index.fill(0);
        self.insns.clear();
        self.bitness = bitness;
    }

    /// The cached instruction at `off`, if decoded already.
    #[inline(always)]
    pub fn cached(&self, off: usize) -> Option<&Cached> {
        match self.index.get(off) {
            Some(&i) if i != 0 => self.insns.get(i as usize - 1),
            _ => None,
        }
    }

    /// The instruction at `off`, decoding and caching it on a miss.
    #[inline(always)]
    pub fn get(&mut self, off: usize) -> Decoded {
        match self.index.get(off) {
            Some(&i) if i != 0 => match self.insns.get(i as usize - 1) {
                Some(ins) => Decoded::Hit(*ins),
                None => Decoded::CrossesPage,
            },
            _ => self.decode(off),
        }
    }

    #[cold]
    fn decode(&mut self, off: usize) -> Decoded {
        let Some(data) = self.bytes.get(off..) else { return Decoded::CrossesPage };
        let mut dec = Decoder::with_ip(self.bitness, data, off as u64, DecoderOptions::NONE);
        let mut ins = Instruction::default();
        dec.decode_out(&mut ins);
        if ins.is_invalid() && dec.last_error() == DecoderError::NoMoreBytes {
            return Decoded::CrossesPage;
        }
        let c = Cached::new(ins, self.bitness);
        self.insns.push(c);
        if let Some(slot) = self.index.get_mut(off) {
            *slot = self.insns.len() as u16;
        }
        Decoded::Hit(c)
    }
}

#[derive(Default)]
pub struct CodeCache {
    map: HashMap<u64, u32>,
    pages: Vec<CodePage>,
    free: Vec<u32>,
    epoch: u64,
    /// Bumped by `clear`, so holders of copied instructions can tell.
    pub clears: u64,
}

impl CodeCache {
    /// A new `run`: pages must be re-verified before use.
    pub fn new_epoch(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
    }

    pub fn contains(&self, gfn: u64) -> bool {
        self.map.contains_key(&gfn)
    }

    #[inline(always)]
    pub fn page(&self, slot: u32) -> Option<&CodePage> {
        self.pages.get(slot as usize)
    }

    #[inline(always)]
    pub fn page_mut(&mut self, slot: u32) -> Option<&mut CodePage> {
        self.pages.get_mut(slot as usize)
    }

    /// The slot for page `gfn` whose current bytes are `host`, verified for
    /// this epoch and decoded for `bitness`. Returns (slot, newly created).
    pub fn enter(&mut self, gfn: u64, host: &[u8; PAGE], bitness: u32) -> (u32, bool) {
        if let Some(&slot) = self.map.get(&gfn) {
            let epoch = self.epoch;
            if let Some(p) = self.pages.get_mut(slot as usize) {
                if p.verified_epoch != epoch {
                    if p.bytes[..] != host[..] {
                        p.bytes.copy_from_slice(host);
                        p.reset(bitness);
                    }
                    p.verified_epoch = epoch;
                }
                if p.bitness != bitness {
                    p.reset(bitness);
                }
                return (slot, false);
            }
        }
        if self.map.len() >= MAX_PAGES {
            self.clear();
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.pages.push(CodePage {
                    gfn,
                    bitness,
                    index: Box::new([0; PAGE]),
                    insns: Vec::new(),
                    bytes: Box::new([0; PAGE]),
                    verified_epoch: 0,
                });
                (self.pages.len() - 1) as u32
            }
        };
        if let Some(p) = self.pages.get_mut(slot as usize) {
            p.gfn = gfn;
            p.bytes.copy_from_slice(host);
            p.reset(bitness);
            p.verified_epoch = self.epoch;
        }
        self.map.insert(gfn, slot);
        (slot, true)
    }

    /// Forget page `gfn` (it was written). Returns its slot if it was cached.
    pub fn invalidate(&mut self, gfn: u64) -> Option<u32> {
        let slot = self.map.remove(&gfn)?;
        if let Some(p) = self.pages.get_mut(slot as usize) {
            p.reset(p.bitness);
        }
        self.free.push(slot);
        Some(slot)
    }

    pub fn clear(&mut self) {
        self.clears = self.clears.wrapping_add(1);
        self.map.clear();
        self.pages.clear();
        self.free.clear();
    }
}
