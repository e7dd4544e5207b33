//! Xen's errno values (xen/include/public/errno.h). Hypercalls return them
//! negated in RAX.

pub const EPERM: i64 = 1;
pub const ENOENT: i64 = 2;
pub const ESRCH: i64 = 3;
pub const EINTR: i64 = 4;
pub const EIO: i64 = 5;
pub const ENXIO: i64 = 6;
pub const E2BIG: i64 = 7;
pub const EBADF: i64 = 9;
pub const EAGAIN: i64 = 11;
pub const ENOMEM: i64 = 12;
pub const EACCES: i64 = 13;
pub const EFAULT: i64 = 14;
pub const EBUSY: i64 = 16;
pub const EEXIST: i64 = 17;
pub const EXDEV: i64 = 18;
pub const ENODEV: i64 = 19;
pub const EISDIR: i64 = 21;
pub const EINVAL: i64 = 22;
pub const ENOSPC: i64 = 28;
pub const EROFS: i64 = 30;
pub const EDOM: i64 = 33;
pub const ERANGE: i64 = 34;
pub const ENOSYS: i64 = 38;
pub const ENOTEMPTY: i64 = 39;
pub const ENODATA: i64 = 61;
pub const ETIME: i64 = 62;
pub const EOVERFLOW: i64 = 75;
pub const EOPNOTSUPP: i64 = 95;
pub const EISCONN: i64 = 106;
pub const ENOTCONN: i64 = 107;
pub const ETIMEDOUT: i64 = 110;

/// A hypercall failure: the positive errno; `result()` gives what goes in RAX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i64);

impl Errno {
    pub const fn result(self) -> i64 {
        -self.0
    }
}

/// The result of a hypercall handler: a non-negative value or an errno.
pub type XenResult<T = i64> = Result<T, Errno>;
