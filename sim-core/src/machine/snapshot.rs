//! The machine's whole state as data: for snapshots (save, restore) and for
//! the state hashes that replay checkpoints compare.
//!
//! Taken at round boundaries only, where no exit waits for a completion, no
//! platform effect is queued and console output is flushed. Hashes are
//! BLAKE3 (a fixed algorithm, unlike std's `DefaultHasher`) over rmp-serde
//! encodings of the state types, so the same state hashes the same on every
//! build of the same format.

use serde::{Deserialize, Serialize};

use super::{Machine, RunState};
use crate::devices::ioapic::IoApic;
use crate::devices::lapic::Lapic;
use crate::devices::pic8259::Pic8259Pair;
use crate::irq::GsiLines;
use crate::memory::{PAGE_SHIFT, PAGE_SIZE};
use crate::platform::{PlatformCtx, TimerKey};
use crate::state::ArchState;
use crate::timer_queue::TimerQueue;

pub type Hash = [u8; 32];

/// RAM is hashed in regions of this many bytes, so a divergence report can
/// say where memory differs without logging a hash per page.
pub const RAM_REGION: u64 = 2 << 20;

pub fn hash_bytes(bytes: &[u8]) -> Hash {
    *blake3::hash(bytes).as_bytes()
}

/// Hash of `value`'s rmp-serde encoding (of nothing if it does not encode),
/// encoded straight into the hasher: no encoding is kept.
pub fn hash_of<T: Serialize + ?Sized>(value: &T) -> Hash {
    let mut w = HashWriter { hasher: blake3::Hasher::new(), buf: [0; 1024], len: 0 };
    if rmp_serde::encode::write(&mut w, value).is_err() {
        return hash_bytes(&[]);
    }
    w.flush_buf();
    *w.hasher.finalize().as_bytes()
}

/// Gathers the encoder's small writes on the stack and hashes them in
/// blocks (state hashes are taken often; no allocation each time).
struct HashWriter {
    hasher: blake3::Hasher,
    buf: [u8; 1024],
    len: usize,
}

impl HashWriter {
    fn flush_buf(&mut self) {
        self.hasher.update(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl std::io::Write for HashWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.len + data.len() > self.buf.len() {
            self.flush_buf();
        }
        if data.len() >= self.buf.len() {
            // Pages and the like go straight in.
            self.hasher.update(data);
        } else {
            self.buf[self.len..self.len + data.len()].copy_from_slice(data);
            self.len += data.len();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Lower-case hex of the first `n` bytes of a hash.
pub fn hex(hash: &Hash, n: usize) -> String {
    hash.iter().take(n).map(|b| format!("{b:02x}")).collect()
}

/// One vCPU as the machine sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuState {
    pub arch: ArchState,
    pub run_state: RunState,
    /// Owed an 8259 INTA (IOAPIC ExtINT message).
    pub extint_pending: bool,
}

/// Everything but RAM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineState {
    pub cpus: u32,
    pub memory_mib: u64,
    pub now_ns: u64,
    pub retired: u64,
    pub wall_clock_ns: Option<u64>,
    pub vcpus: Vec<VcpuState>,
    pub lapics: Vec<Lapic>,
    pub ioapic: IoApic,
    pub pic: Pic8259Pair,
    pub gsi: GsiLines,
    pub timers: TimerQueue<TimerKey>,
    #[serde(with = "serde_bytes")]
    pub console_input: Vec<u8>,
    /// Bus devices by position ("port 0x3f8").
    #[serde(with = "crate::byte_fields::pairs")]
    pub devices: Vec<(String, Vec<u8>)>,
    #[serde(with = "serde_bytes")]
    pub platform: Vec<u8>,
    /// Overlay frames and their contents.
    #[serde(with = "crate::byte_fields::pairs")]
    pub overlays: Vec<(u64, Vec<u8>)>,
}

/// RAM pages by frame number. A full image lists every non-zero page; a
/// delta lists the pages written since the image it follows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamImage {
    pub full: bool,
    #[serde(with = "crate::byte_fields::pairs")]
    pub pages: Vec<(u64, Vec<u8>)>,
}

/// The hashes of one moment, by component, plus the vCPUs' registers so a
/// divergence report can show which fields differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDigest {
    pub icount: u64,
    pub now_ns: u64,
    /// ("vcpu0", ...), ("lapic0", ...), "ioapic", "pic", "gsi", "timers",
    /// "time", "console-input", devices ("port 0x3f8"), "platform", "overlays".
    #[serde(with = "crate::byte_fields::pairs")]
    pub components: Vec<(String, Hash)>,
    /// (region start, hash) for each `RAM_REGION` of RAM.
    #[serde(with = "crate::byte_fields::pairs")]
    pub ram: Vec<(u64, Hash)>,
    pub vcpus: Vec<ArchState>,
}

impl StateDigest {
    /// One hash for the whole state.
    pub fn hash(&self) -> Hash {
        hash_of(&(&self.components, &self.ram))
    }

    /// How `actual` differs from `self` (the expected state), one line per
    /// difference; empty when the states hash the same.
    pub fn differences(&self, actual: &StateDigest) -> Vec<String> {
        let mut out = Vec::new();
        for (i, (e, a)) in self.vcpus.iter().zip(&actual.vcpus).enumerate() {
            for d in arch_differences(e, a) {
                out.push(format!("vcpu{i} {d}"));
            }
        }
        for ((name, e), (aname, a)) in self.components.iter().zip(&actual.components) {
            if name != aname {
                out.push(format!("component list differs: {name} vs {aname}"));
            } else if e != a && !(name.starts_with("vcpu") && out.iter().any(|l| l.starts_with(name.as_str()))) {
                out.push(format!("{name}: state hash {} != {}", hex(e, 8), hex(a, 8)));
            }
        }
        if self.components.len() != actual.components.len() {
            out.push(format!("{} components expected, {} found", self.components.len(), actual.components.len()));
        }
        for ((start, e), (_, a)) in self.ram.iter().zip(&actual.ram) {
            if e != a {
                out.push(format!("RAM {:#x}..{:#x} differs", start, start + RAM_REGION - 1));
            }
        }
        if self.ram.len() != actual.ram.len() {
            out.push(format!("{} RAM regions expected, {} found", self.ram.len(), actual.ram.len()));
        }
        out
    }
}

/// Field-by-field differences of two register states ("rip 0x10 != 0x12").
pub fn arch_differences(e: &ArchState, a: &ArchState) -> Vec<String> {
    const GPR: [&str; 16] =
        ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];
    let mut out = Vec::new();
    for (i, name) in GPR.iter().enumerate() {
        if e.gpr[i] != a.gpr[i] {
            out.push(format!("{name} {:#x} != {:#x}", e.gpr[i], a.gpr[i]));
        }
    }
    macro_rules! hex_fields {
        ($($f:ident),*) => {$(
            if e.$f != a.$f {
                out.push(format!("{} {:#x} != {:#x}", stringify!($f), e.$f, a.$f));
            }
        )*};
    }
    hex_fields!(rip, rflags, cr0, cr2, cr3, cr4, cr8, efer, xcr0, tsc);
    macro_rules! debug_fields {
        ($($f:ident),*) => {$(
            if e.$f != a.$f {
                out.push(format!("{} {:?} != {:?}", stringify!($f), e.$f, a.$f));
            }
        )*};
    }
    debug_fields!(seg, ldtr, tr, gdtr, idtr, dr, msrs, fpu, events);
    out
}

impl Machine {
    /// vCPU `i`'s registers. On exit time its TSC is the one of its last
    /// exit, as the door gave it: the TSC KVM holds now is a fresh reading
    /// of the host clock that no log has.
    fn vcpu_arch(&self, i: usize) -> crate::state::ArchState {
        let mut arch = self.vcpus[i].state();
        if self.time == crate::clock::TimeSource::Exits {
            arch.tsc = self.tsc_seen[i];
        }
        arch
    }

    fn vcpu_states(&self) -> Vec<VcpuState> {
        (0..self.vcpus.len())
            .map(|i| VcpuState {
                arch: self.vcpu_arch(i),
                run_state: self.run_state[i],
                extint_pending: self.extint_pending[i],
            })
            .collect()
    }

    /// Everything but RAM, at a round boundary.
    pub fn save_state(&self) -> MachineState {
        let overlays = self.overlay_contents();
        MachineState {
            cpus: self.config.cpus,
            memory_mib: self.config.memory_mib,
            now_ns: self.now_ns,
            retired: self.retired,
            wall_clock_ns: self.wall_clock_ns,
            vcpus: self.vcpu_states(),
            lapics: self.lapics.clone(),
            ioapic: self.ioapic.clone(),
            pic: self.pic.clone(),
            gsi: self.gsi.clone(),
            timers: self.timers.clone(),
            console_input: self.console_input.iter().copied().collect(),
            devices: self.bus.save_devices(),
            platform: self.platform.as_ref().map(|p| p.save()).unwrap_or_default(),
            overlays,
        }
    }

    /// Make this machine (built with the same configuration) what `s` says.
    pub fn restore_state(&mut self, s: &MachineState) -> Result<(), String> {
        if s.cpus != self.config.cpus || s.memory_mib != self.config.memory_mib {
            return Err(format!(
                "state of a {}-vCPU, {} MiB machine does not fit this {}-vCPU, {} MiB one",
                s.cpus, s.memory_mib, self.config.cpus, self.config.memory_mib
            ));
        }
        let n = self.vcpus.len();
        if s.vcpus.len() != n || s.lapics.len() != n {
            return Err(format!("state lists {} vCPUs and {} LAPICs for {n} vCPUs", s.vcpus.len(), s.lapics.len()));
        }
        self.bus.restore_devices(&s.devices)?;
        let now = s.now_ns;
        if let Some(p) = self.platform.as_mut() {
            p.restore(&mut platform_ctx!(self, now), &s.platform).map_err(|e| format!("platform: {e}"))?;
        } else if !s.platform.is_empty() {
            return Err("state has a platform's state but this machine has no platform".into());
        }
        for (gfn, bytes) in &s.overlays {
            match self.mem.overlay_at(*gfn) {
                Some(page) if bytes.len() == PAGE_SIZE as usize => page.write(0, bytes),
                _ => return Err(format!("overlay page at frame {gfn:#x} was not re-created by the platform")),
            }
        }
        for (i, v) in s.vcpus.iter().enumerate() {
            self.vcpus[i].set_state(&v.arch);
            self.vcpus[i].set_tsc(v.arch.tsc);
            self.tsc_seen[i] = v.arch.tsc;
            self.preempted[i] = false;
            self.ahead[i] = None;
            self.run_state[i] = v.run_state;
            self.extint_pending[i] = v.extint_pending;
        }
        self.lapics = s.lapics.clone();
        self.ioapic = s.ioapic.clone();
        self.pic = s.pic.clone();
        self.gsi = s.gsi.clone();
        self.timers = s.timers.clone();
        self.console_input = s.console_input.iter().copied().collect();
        self.now_ns = s.now_ns;
        self.retired = s.retired;
        self.wall_clock_ns = s.wall_clock_ns;
        self.effects.clear();
        self.console.clear();
        self.unplaceable = None;
        Ok(())
    }

    /// Every non-zero RAM page. RAM images hold RAM itself, beneath any
    /// overlay page (shared_info, grant frames): the overlays' contents are
    /// in `MachineState`, and the guest sees the RAM again when it moves them.
    pub fn save_ram(&self) -> RamImage {
        let mut pages = Vec::new();
        let mut buf = vec![0u8; PAGE_SIZE as usize];
        for &(start, len) in self.mem.ram_ranges() {
            for gpa in (start..start + len).step_by(PAGE_SIZE as usize) {
                if self.mem.read_ram(gpa, &mut buf).is_ok() && buf.iter().any(|&b| b != 0) {
                    pages.push((gpa >> PAGE_SHIFT, buf.clone()));
                }
            }
        }
        RamImage { full: true, pages }
    }

    /// Bring the dirty bitmap up to date (KVM's dirty log folded in) and
    /// say whether it sees every RAM write: true when every vCPU's backend
    /// tracks its writes (the interpreter's stores mark pages; KVM logs them).
    pub fn dirty_tracking_exact(&self) -> bool {
        // Every vCPU syncs, whatever the others say.
        let mut exact = true;
        for v in &self.vcpus {
            exact &= v.sync_dirty(&self.mem);
        }
        exact
    }

    /// RAM for a snapshot that follows the previous one (`delta`), or a full
    /// image; either way the dirty bitmap starts over. A delta lists every
    /// page written since the last snapshot or restore; without exact dirty
    /// tracking the image is full.
    pub fn snapshot_ram(&mut self, delta: bool) -> RamImage {
        let exact = self.dirty_tracking_exact();
        let dirty = self.mem.take_dirty();
        if !delta || !exact {
            return self.save_ram();
        }
        let mut pages = Vec::with_capacity(dirty.len());
        for gfn in dirty {
            let mut buf = vec![0u8; PAGE_SIZE as usize];
            if self.mem.read_ram(gfn << PAGE_SHIFT, &mut buf).is_ok() {
                pages.push((gfn, buf));
            }
        }
        RamImage { full: false, pages }
    }

    /// RAM frames written since the last snapshot or restore.
    pub fn dirty_frames(&self) -> Vec<u64> {
        self.dirty_tracking_exact();
        self.mem.dirty_frames()
    }

    /// Write the given RAM pages (`None`: zero) and start the dirty bitmap
    /// over: RAM is now a known state. For seeking, where only the pages
    /// that differ from the target need rewriting.
    pub fn restore_ram_pages<'a>(
        &mut self,
        pages: impl IntoIterator<Item = (u64, Option<&'a [u8]>)>,
    ) -> Result<u64, String> {
        let zero = [0u8; PAGE_SIZE as usize];
        let mut n = 0;
        for (gfn, bytes) in pages {
            let bytes = bytes.unwrap_or(&zero);
            let gpa = gfn.checked_shl(PAGE_SHIFT).filter(|&g| g >> PAGE_SHIFT == gfn && self.mem.is_ram(g));
            match gpa {
                Some(gpa) if bytes.len() == PAGE_SIZE as usize => {
                    self.mem.write_ram(gpa, bytes).map_err(|e| e.to_string())?
                }
                _ => return Err(format!("RAM page {gfn:#x} is not in this machine's RAM or is not one page long")),
            }
            n += 1;
        }
        // KVM's log of writes from before the restore goes with it.
        self.dirty_tracking_exact();
        self.mem.take_dirty();
        Ok(n)
    }

    /// Load `image` into RAM (beneath overlay pages, which keep the
    /// platform's contents); a full image also clears every page it does
    /// not list.
    pub fn restore_ram(&mut self, image: &RamImage) -> Result<(), String> {
        if image.full {
            let zero = vec![0u8; RAM_REGION as usize];
            for &(start, len) in self.mem.ram_ranges() {
                let mut gpa = start;
                while gpa < start + len {
                    let n = RAM_REGION.min(start + len - gpa) as usize;
                    self.mem.write_ram(gpa, &zero[..n]).map_err(|e| e.to_string())?;
                    gpa += n as u64;
                }
            }
        }
        for (gfn, bytes) in &image.pages {
            let gpa = gfn.checked_shl(PAGE_SHIFT).filter(|&g| g >> PAGE_SHIFT == *gfn && self.mem.is_ram(g));
            match gpa {
                Some(gpa) if bytes.len() == PAGE_SIZE as usize => {
                    self.mem.write_ram(gpa, bytes).map_err(|e| e.to_string())?
                }
                _ => return Err(format!("RAM page {gfn:#x} is not in this machine's RAM or is not one page long")),
            }
        }
        // RAM is now the image's: later deltas start from here.
        self.dirty_tracking_exact();
        self.mem.take_dirty();
        Ok(())
    }

    /// RAM hashes by region, rebuilt from the pages written since the last
    /// digest where writes are tracked exactly (the interpreter; KVM with
    /// its dirty log; see `ram_hash`).
    fn ram_digest(&self) -> Vec<(u64, Hash)> {
        // First: on KVM this folds the dirty log into the hash plane.
        let exact = self.dirty_tracking_exact();
        let written = self.mem.take_hash_dirty();
        let mut cache = self.ram_hashes.lock().unwrap_or_else(|e| e.into_inner());
        cache.update(&self.mem, &written, exact)
    }

    /// The state's hashes, by component: the hashes of `save_state`'s fields
    /// (the same encodings), hashed from the machine's own state without
    /// copying it into a `MachineState` first.
    pub fn digest(&self) -> StateDigest {
        let vcpus = self.vcpu_states();
        let mut components = Vec::with_capacity(2 * vcpus.len() + 12);
        for (i, v) in vcpus.iter().enumerate() {
            components.push((format!("vcpu{i}"), hash_of(v)));
        }
        for (i, l) in self.lapics.iter().enumerate() {
            components.push((format!("lapic{i}"), hash_of(l)));
        }
        components.push(("ioapic".into(), hash_of(&self.ioapic)));
        components.push(("pic".into(), hash_of(&self.pic)));
        components.push(("gsi".into(), hash_of(&self.gsi)));
        components.push(("timers".into(), hash_of(&self.timers)));
        components.push(("time".into(), hash_of(&(self.now_ns, self.retired, self.wall_clock_ns))));
        // The queue's bytes in order: the hash of their concatenation.
        let (front, back) = self.console_input.as_slices();
        components
            .push(("console-input".into(), *blake3::Hasher::new().update(front).update(back).finalize().as_bytes()));
        for (name, data) in self.bus.save_devices() {
            components.push((name, hash_bytes(&data)));
        }
        let platform = self.platform.as_ref().map(|p| p.save()).unwrap_or_default();
        components.push(("platform".into(), hash_bytes(&platform)));
        components.push(("overlays".into(), hash_of(&OverlayContents(&self.mem))));
        let ram = self.ram_digest();
        StateDigest {
            icount: self.retired,
            now_ns: self.now_ns,
            components,
            ram,
            vcpus: vcpus.into_iter().map(|v| v.arch).collect(),
        }
    }

    /// Each overlay frame and its page's contents, in frame order.
    fn overlay_contents(&self) -> Vec<(u64, Vec<u8>)> {
        self.mem
            .overlays()
            .map(|(gfn, page)| {
                let mut b = vec![0; PAGE_SIZE as usize];
                page.read(0, &mut b);
                (gfn, b)
            })
            .collect()
    }
}

/// The overlays as `MachineState::overlays` encodes them, read page by page
/// (for hashing without copying every page first).
struct OverlayContents<'a>(&'a crate::memory::GuestMemory);

impl Serialize for OverlayContents<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.overlays().count()))?;
        let mut page = [0u8; PAGE_SIZE as usize];
        for (gfn, p) in self.0.overlays() {
            p.read(0, &mut page);
            seq.serialize_element(&(gfn, serde_bytes::Bytes::new(&page)))?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `hash_of` hashes exactly the bytes rmp-serde encodes, however the
    /// encoder's writes fall about its buffer: many small ones (integers),
    /// blobs below, at and above its size, mixed.
    #[test]
    fn hash_of_is_blake3_of_the_encoding() {
        for n in [0usize, 1, 1000, 1023, 1024, 1025, 5000] {
            let blob = serde_bytes::ByteBuf::from((0..n).map(|i| (i * 7) as u8).collect::<Vec<u8>>());
            let ints: Vec<u64> = (0..n as u64).map(|i| i.wrapping_mul(0x9e37_79b9)).collect();
            let mixed = (n as u32, &blob, &ints, "text", &blob);
            assert_eq!(hash_of(&blob), hash_bytes(&rmp_serde::to_vec(&blob).unwrap()), "{n} bytes");
            assert_eq!(hash_of(&ints), hash_bytes(&rmp_serde::to_vec(&ints).unwrap()), "{n} integers");
            assert_eq!(hash_of(&mixed), hash_bytes(&rmp_serde::to_vec(&mixed).unwrap()), "{n} mixed");
        }
    }
}
