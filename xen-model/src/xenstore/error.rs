//! The errno values xenstore replies carry, by name (xsd_errors in xs_wire.h).

use serde::{Deserialize, Serialize};

/// An error reply. The wire form is the errno name followed by a NUL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum XsError {
    #[error("EINVAL")]
    Inval,
    #[error("EACCES")]
    Acces,
    #[error("EEXIST")]
    Exist,
    #[error("EISDIR")]
    IsDir,
    #[error("ENOENT")]
    NoEnt,
    #[error("ENOMEM")]
    NoMem,
    #[error("ENOSPC")]
    NoSpc,
    #[error("EIO")]
    Io,
    #[error("ENOTEMPTY")]
    NotEmpty,
    #[error("ENOSYS")]
    NoSys,
    #[error("EROFS")]
    RoFs,
    #[error("EBUSY")]
    Busy,
    #[error("EAGAIN")]
    Again,
    #[error("EISCONN")]
    IsConn,
    #[error("E2BIG")]
    TooBig,
    #[error("EPERM")]
    Perm,
}

impl XsError {
    /// The errno name as sent on the wire (without the NUL).
    pub fn name(self) -> &'static str {
        use XsError::*;
        match self {
            Inval => "EINVAL",
            Acces => "EACCES",
            Exist => "EEXIST",
            IsDir => "EISDIR",
            NoEnt => "ENOENT",
            NoMem => "ENOMEM",
            NoSpc => "ENOSPC",
            Io => "EIO",
            NotEmpty => "ENOTEMPTY",
            NoSys => "ENOSYS",
            RoFs => "EROFS",
            Busy => "EBUSY",
            Again => "EAGAIN",
            IsConn => "EISCONN",
            TooBig => "E2BIG",
            Perm => "EPERM",
        }
    }

    /// Payload of an ERROR reply: name and NUL.
    pub fn payload(self) -> Vec<u8> {
        let mut v = self.name().as_bytes().to_vec();
        v.push(0);
        v
    }
}

pub type XsResult<T> = Result<T, XsError>;
