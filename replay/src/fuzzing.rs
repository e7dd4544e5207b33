//! The `replay_log` and `snapshot` fuzz targets' executors (plain functions
//! over bytes, so `xensim fuzz-repro` runs them on stable): arbitrary bytes
//! into the loaders must give a value or a clean error, never a panic, a
//! hang or an allocation beyond the input's size (libFuzzer's -rss_limit_mb
//! and -timeout catch those). A snapshot that loads re-encodes to bytes that
//! load to the same encoding; a log that parses reports a torn tail only
//! inside the input.

use std::path::Path;

/// `replay_log`: `Log::parse` on the bytes.
pub fn log(data: &[u8]) -> Result<(), String> {
    match crate::Log::parse(Path::new("fuzz-input.log"), data) {
        Ok(log) => match log.torn_at {
            Some(at) if at > data.len() as u64 => Err(format!("torn at {at}, beyond the {} input bytes", data.len())),
            _ => Ok(()),
        },
        Err(_) => Ok(()),
    }
}

/// `snapshot`: `snapfile::load` on the bytes, and the encode/load identity.
pub fn snapshot(data: &[u8]) -> Result<(), String> {
    let Ok(snap) = crate::snapfile::load(data) else { return Ok(()) };
    let bytes = snap.encode();
    let again = crate::snapfile::load(&bytes).map_err(|e| format!("a loaded snapshot re-encodes unloadably: {e}"))?;
    if again.encode() != bytes {
        return Err("load(encode(snapshot)) encodes differently".into());
    }
    Ok(())
}
