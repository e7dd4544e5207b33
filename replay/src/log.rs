//! The log file: `MAGIC`, the format version (u32 LE), then chunks. A chunk
//! is its payload length (u32 LE), the CRC-32 of the payload (u32 LE) and
//! the payload: rmp-serde of the [`Header`] for the first chunk, of a
//! `Vec<Record>` for every later one.
//!
//! Chunks are written whole and flushed, so a crash leaves every earlier
//! chunk intact; a last chunk cut short is reported as a torn tail and the
//! chunks before it stay readable. Lengths are bounded before anything is
//! allocated, so arbitrary bytes give an error, never a panic or a huge
//! allocation.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sim_core::door::{Input, Stamp};
use sim_core::machine::snapshot::{Hash, StateDigest};

pub const MAGIC: &[u8; 8] = b"XSIMLOG\n";
/// 2: the header records the recording host's hypercall interception.
/// 3: byte buffers in inputs and in the state that checkpoints hash
/// (pages, xenstore values, ring buffers), and the hashes in checkpoints,
/// encode as MessagePack bin.
pub const FORMAT_VERSION: u32 = 3;
/// No chunk is larger (a checkpoint is a few KiB; inputs are flushed long before).
pub const MAX_CHUNK: u32 = 16 << 20;
/// Records are flushed as a chunk once their encoding reaches this size.
const CHUNK_TARGET: usize = 64 << 10;

/// What a replay needs to rebuild the machine, and what it must check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub xensim_version: String,
    pub config: LogConfig,
    pub cmdline: String,
    /// The kernel first, then the modules in order.
    pub images: Vec<ImageHash>,
    /// A checkpoint is taken at the first round boundary at or past each
    /// multiple of this many instructions.
    pub checkpoint_every: u64,
    /// How the recording CPU delivered hypercalls; replay builds the same.
    pub hypercalls: Hypercalls,
}

/// How the recording CPU delivered the guest's hypercalls to the platform:
/// what the hypercall page's stubs enter it with, and which VMCALL/VMMCALL
/// instructions were hypercalls. A replay builds the same page and treats
/// the same instructions as hypercalls.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hypercalls {
    /// Stubs use VMCALL/VMMCALL and every VMCALL/VMMCALL is a hypercall:
    /// the interpreter, and KVM with KVM_CAP_XEN_HVM (strategy 1, every
    /// VMCALL exits as KVM_EXIT_XEN).
    #[default]
    Vmcall,
    /// KVM without Xen support: stubs end in `OUT port, AL` (strategy 2);
    /// a VMCALL/VMMCALL was a hypercall only at `sites` (linear addresses
    /// with hardware breakpoints, strategy 3), and KVM's own hypercall
    /// handler answered it anywhere else.
    PortStub { port: u8, sites: Vec<u64> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogConfig {
    pub cpus: u32,
    pub memory_mib: u64,
    pub quantum: u64,
    pub max_instructions: Option<u64>,
    pub vendor: sim_core::cpuid::Vendor,
}

impl LogConfig {
    /// The part of a machine's configuration a log or snapshot records.
    pub fn of(c: &sim_core::machine::MachineConfig) -> LogConfig {
        LogConfig {
            cpus: c.cpus,
            memory_mib: c.memory_mib,
            quantum: c.quantum,
            max_instructions: c.max_instructions,
            vendor: c.vendor,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageHash {
    /// As given on the command line (a path, or "built-in demo guest").
    pub name: String,
    pub len: u64,
    pub blake3: Hash,
}

impl ImageHash {
    pub fn of(name: &str, bytes: &[u8]) -> Self {
        ImageHash { name: name.to_string(), len: bytes.len() as u64, blake3: *blake3::hash(bytes).as_bytes() }
    }
}

/// One entry of the log body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// An input the door delivered at a round boundary.
    Polled { at: Stamp, input: Input },
    /// The door's answer to a query (wall clock, host clock, entropy).
    Answered { at: Stamp, input: Input },
    /// The machine's state hashes at a round boundary.
    Checkpoint(Box<StateDigest>),
    /// The run ended: why, and the final state.
    End { stop: String, digest: Box<StateDigest> },
}

impl Record {
    /// The instruction count the record belongs to.
    pub fn icount(&self) -> u64 {
        match self {
            Record::Polled { at, .. } | Record::Answered { at, .. } => at.icount,
            Record::Checkpoint(d) | Record::End { digest: d, .. } => d.icount,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{path}: not a xensim log (bad magic)")]
    NotALog { path: PathBuf },
    #[error("{path}: log format version {found}, this xensim reads version {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: chunk {chunk} at byte {offset}: {reason}")]
    Corrupt { path: PathBuf, chunk: u64, offset: u64, reason: String },
    #[error("{path}: log ends inside its header")]
    NoHeader { path: PathBuf },
}

/// Appends records to a log file, a checksummed chunk at a time.
pub struct LogWriter {
    file: File,
    path: PathBuf,
    pending: Vec<Record>,
    pending_bytes: usize,
    /// Bytes written so far (for log-size figures).
    written: u64,
}

impl LogWriter {
    /// Create `path` (failing if it exists: a log is never overwritten) and
    /// write the preamble and header.
    pub fn create(path: &Path, header: &Header) -> Result<Self, LogError> {
        let io = |e: std::io::Error| LogError::Io { path: path.to_path_buf(), reason: e.to_string() };
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(io)?;
        let mut w = LogWriter { file, path: path.to_path_buf(), pending: Vec::new(), pending_bytes: 0, written: 0 };
        let mut pre = MAGIC.to_vec();
        pre.extend(FORMAT_VERSION.to_le_bytes());
        w.write_raw(&pre)?;
        w.write_chunk(&rmp_serde::to_vec(header).unwrap_or_default())?;
        Ok(w)
    }

    /// Queue a record; the chunk goes out once it is big enough.
    pub fn push(&mut self, record: Record) -> Result<(), LogError> {
        // An input's size dominates; checkpoints are flushed by the caller.
        self.pending_bytes += match &record {
            Record::Polled { input, .. } | Record::Answered { input, .. } => 32 + input_len(input),
            _ => 4096,
        };
        self.pending.push(record);
        if self.pending_bytes >= CHUNK_TARGET {
            self.flush()?;
        }
        Ok(())
    }

    /// Write queued records as one chunk (nothing if none are queued).
    pub fn flush(&mut self) -> Result<(), LogError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let payload = rmp_serde::to_vec(&self.pending).unwrap_or_default();
        self.pending.clear();
        self.pending_bytes = 0;
        self.write_chunk(&payload)
    }

    /// Flush and make the file durable.
    pub fn finish(mut self) -> Result<u64, LogError> {
        self.flush()?;
        self.file.sync_all().map_err(|e| LogError::Io { path: self.path.clone(), reason: e.to_string() })?;
        Ok(self.written)
    }

    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    fn write_chunk(&mut self, payload: &[u8]) -> Result<(), LogError> {
        let mut chunk = Vec::with_capacity(payload.len() + 8);
        chunk.extend((payload.len() as u32).to_le_bytes());
        chunk.extend(crc32fast::hash(payload).to_le_bytes());
        chunk.extend_from_slice(payload);
        self.write_raw(&chunk)
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        // One write then a flush per chunk: a crash never leaves an earlier
        // chunk half-written.
        let r = self.file.write_all(bytes).and_then(|_| self.file.flush());
        r.map_err(|e| LogError::Io { path: self.path.clone(), reason: e.to_string() })?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

fn input_len(i: &Input) -> usize {
    match i {
        Input::Serial(b) | Input::Console(b) | Input::XenstoreSocket { bytes: b, .. } => b.len(),
        _ => 16,
    }
}

/// A log as read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Log {
    pub header: Header,
    pub records: Vec<Record>,
    /// Set when the last chunk was cut short (a crashed recording): where
    /// the readable part ends.
    pub torn_at: Option<u64>,
}

impl Log {
    pub fn read(path: &Path) -> Result<Log, LogError> {
        let bytes =
            std::fs::read(path).map_err(|e| LogError::Io { path: path.to_path_buf(), reason: e.to_string() })?;
        Self::parse(path, &bytes)
    }

    /// Parse log bytes; `path` only names the file in errors.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Log, LogError> {
        let p = || path.to_path_buf();
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err(LogError::NotALog { path: p() });
        }
        let found = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if found != FORMAT_VERSION {
            return Err(LogError::Version { path: p(), found });
        }
        let mut chunks = Chunks { bytes, offset: 12, index: 0, start: 12 };
        let corrupt = |c: &Chunks, reason: String| LogError::Corrupt {
            path: p(),
            chunk: c.index.saturating_sub(1),
            offset: c.start as u64,
            reason,
        };
        let header: Header = match chunks.next_chunk() {
            Next::Chunk(payload) => decode(payload).map_err(|r| corrupt(&chunks, r))?,
            Next::End | Next::Torn => return Err(LogError::NoHeader { path: p() }),
            Next::Bad(reason) => return Err(corrupt(&chunks, reason)),
        };
        let mut records = Vec::new();
        let torn_at = loop {
            match chunks.next_chunk() {
                Next::Chunk(payload) => {
                    let batch: Vec<Record> = decode(payload).map_err(|r| corrupt(&chunks, r))?;
                    records.extend(batch);
                }
                Next::End => break None,
                Next::Torn => break Some(chunks.start as u64),
                Next::Bad(reason) => return Err(corrupt(&chunks, reason)),
            }
        };
        Ok(Log { header, records, torn_at })
    }
}

fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(payload).map_err(|e| format!("undecodable payload ({e})"))
}

enum Next<'a> {
    Chunk(&'a [u8]),
    /// The file ends cleanly between chunks.
    End,
    /// The file ends inside a chunk: a crashed recording's last write.
    Torn,
    Bad(String),
}

struct Chunks<'a> {
    bytes: &'a [u8],
    offset: usize,
    /// Chunks read so far.
    index: u64,
    /// Where the chunk last looked at starts.
    start: usize,
}

impl<'a> Chunks<'a> {
    fn next_chunk(&mut self) -> Next<'a> {
        self.start = self.offset;
        let rest = &self.bytes[self.offset.min(self.bytes.len())..];
        if rest.is_empty() {
            return Next::End;
        }
        self.index += 1;
        if rest.len() < 8 {
            return Next::Torn;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len > MAX_CHUNK {
            return Next::Bad(format!("length {len} exceeds the {MAX_CHUNK}-byte limit"));
        }
        let Some(payload) = rest.get(8..8 + len as usize) else {
            return Next::Torn;
        };
        if crc32fast::hash(payload) != crc {
            return Next::Bad("checksum mismatch".into());
        }
        self.offset += 8 + len as usize;
        Next::Chunk(payload)
    }
}
