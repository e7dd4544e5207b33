//! Software TLB: linear page -> host pointer, one direct-mapped array per
//! access kind so that a hit needs no permission check (permissions were
//! checked by the walk that filled the entry; the tag carries the user bit).

pub const TLB_ENTRIES: usize = 256;

#[derive(Clone, Copy, Default)]
pub struct Entry {
    /// Linear page | VALID | USER (0 = empty).
    pub tag: u64,
    /// Host address of the page's first byte.
    pub host: usize,
    /// Guest-physical page address.
    pub gpa: u64,
    pub global: bool,
}

const VALID: u64 = 1;
const USER: u64 = 2;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read = 0,
    Write = 1,
    Fetch = 2,
}

pub struct Tlb {
    sets: [Box<[Entry; TLB_ENTRIES]>; 3],
}

impl Default for Tlb {
    fn default() -> Self {
        Tlb {
            sets: [
                Box::new([Entry::default(); TLB_ENTRIES]),
                Box::new([Entry::default(); TLB_ENTRIES]),
                Box::new([Entry::default(); TLB_ENTRIES]),
            ],
        }
    }
}

#[inline(always)]
pub fn tag(la: u64, user: bool) -> u64 {
    (la & !0xfff) | VALID | if user { USER } else { 0 }
}

#[inline(always)]
fn slot(la: u64) -> usize {
    ((la >> 12) as usize) & (TLB_ENTRIES - 1)
}

impl Tlb {
    /// Host address for `la` if cached.
    #[inline(always)]
    pub fn lookup(&self, kind: Kind, la: u64, user: bool) -> Option<usize> {
        let e = &self.sets[kind as usize][slot(la)];
        if e.tag == tag(la, user) {
            Some(e.host + (la & 0xfff) as usize)
        } else {
            None
        }
    }

    /// Host address and guest-physical page address for `la` if cached.
    #[inline(always)]
    pub fn lookup_gpa(&self, kind: Kind, la: u64, user: bool) -> Option<(usize, u64)> {
        let e = &self.sets[kind as usize][slot(la)];
        (e.tag == tag(la, user)).then(|| (e.host + (la & 0xfff) as usize, e.gpa | (la & 0xfff)))
    }

    pub fn insert(&mut self, kind: Kind, la: u64, user: bool, host: usize, gpa: u64, global: bool) {
        self.sets[kind as usize][slot(la)] = Entry { tag: tag(la, user), host, gpa: gpa & !0xfff, global };
    }

    /// Flush everything (CR0/CR4/EFER changes, map changes).
    pub fn flush_all(&mut self) {
        for set in &mut self.sets {
            set.fill(Entry::default());
        }
    }

    /// Flush non-global entries (MOV CR3).
    pub fn flush_non_global(&mut self) {
        for set in &mut self.sets {
            for e in set.iter_mut() {
                if !e.global {
                    *e = Entry::default();
                }
            }
        }
    }

    /// INVLPG: drop every entry for the linear page, global or not.
    pub fn flush_page(&mut self, la: u64) {
        for set in &mut self.sets {
            let e = &mut set[slot(la)];
            if e.tag & !0xfff == la & !0xfff {
                *e = Entry::default();
            }
        }
    }

    /// Drop write entries that point at guest-physical page `gpa` (it now
    /// holds decoded code, so writes must take the slow path).
    pub fn drop_writes_to(&mut self, gpa: u64) {
        for e in self.sets[Kind::Write as usize].iter_mut() {
            if e.tag != 0 && e.gpa == gpa & !0xfff {
                *e = Entry::default();
            }
        }
    }
}
