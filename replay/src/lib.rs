//! Record, replay, snapshots: the event log, the recording and replaying
//! doors, the drivers that run a machine with them, divergence reports,
//! snapshot files and in-memory snapshots for seeking.

pub mod drive;
pub mod fuzzing;
pub mod log;
pub mod seek;
pub mod snapfile;

pub use drive::{record, record_with, replay, replay_from, Divergence, DriveError, Replayed, Start};
pub use log::{Header, Hypercalls, ImageHash, Log, LogConfig, LogError, LogWriter, Record};
pub use seek::SnapshotStore;
pub use snapfile::{SnapError, SnapHeader, Snapshot};
