//! Record, replay, snapshots: the event log, the recording and replaying
//! doors, the drivers that run a machine with them, and divergence reports.

pub mod drive;
pub mod log;

pub use drive::{record, replay, Divergence, DriveError, Replayed};
pub use log::{Header, ImageHash, Log, LogConfig, LogError, LogWriter, Record};
