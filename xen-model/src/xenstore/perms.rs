//! Node permissions: a list of "<letter><domid>" entries. The first entry names the owner
//! (who always has full access) and its letter is the access of every domain without an
//! entry of its own; later entries grant per-domain access. Dom0 may do anything.

use serde::{Deserialize, Serialize};

use super::error::{XsError, XsResult};

/// DOMID_ANY (xen.h): an entry for it matches every domain.
pub const DOMID_ANY: u16 = 0x7FF5;

/// Access bits; OWNER is only ever granted, never stored.
pub const PERM_READ: u8 = 1;
pub const PERM_WRITE: u8 = 2;
pub const PERM_OWNER: u8 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Access {
    None,
    Read,
    Write,
    Both,
}

impl Access {
    fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }

    pub fn bits(self) -> u8 {
        match self {
            Access::None => 0,
            Access::Read => PERM_READ,
            Access::Write => PERM_WRITE,
            Access::Both => PERM_READ | PERM_WRITE,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermEntry {
    pub domid: u16,
    pub access: Access,
}

impl PermEntry {
    pub fn new(access: Access, domid: u16) -> Self {
        PermEntry { domid, access }
    }

    /// Parses "r5", "b0", "n12"; the domid is decimal 0..=65535.
    pub fn parse(s: &[u8]) -> XsResult<Self> {
        let (&letter, digits) = s.split_first().ok_or(XsError::Inval)?;
        let access = match letter {
            b'n' => Access::None,
            b'r' => Access::Read,
            b'w' => Access::Write,
            b'b' => Access::Both,
            _ => return Err(XsError::Inval),
        };
        if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(XsError::Inval);
        }
        let domid = digits.iter().fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
        let domid = u16::try_from(domid).map_err(|_| XsError::Inval)?;
        Ok(PermEntry { domid, access })
    }
}

impl std::fmt::Display for PermEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.access.letter(), self.domid)
    }
}

/// A node's permission list; never empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Perms(Vec<PermEntry>);

impl Perms {
    /// Owned by `owner`, with `default` access for all other domains.
    pub fn owned(owner: u16, default: Access) -> Self {
        Perms(vec![PermEntry::new(default, owner)])
    }

    pub fn from_entries(entries: Vec<PermEntry>) -> Option<Self> {
        if entries.is_empty() {
            None
        } else {
            Some(Perms(entries))
        }
    }

    pub fn entries(&self) -> &[PermEntry] {
        &self.0
    }

    pub fn owner(&self) -> u16 {
        self.0.first().map_or(0, |e| e.domid)
    }

    pub fn set_owner(&mut self, domid: u16) {
        if let Some(e) = self.0.first_mut() {
            e.domid = domid;
        }
    }

    /// Drops the non-owner entries naming `domid` (the domain went away).
    pub fn strip(&mut self, domid: u16) -> bool {
        let before = self.0.len();
        let mut first = true;
        self.0.retain(|e| std::mem::replace(&mut first, false) || e.domid != domid);
        self.0.len() != before
    }

    /// The access bits (PERM_*) a caller gets. `domid` is the caller, `target` the domain
    /// it acts for (SET_TARGET), `privileged` true for dom0.
    pub fn access_for(&self, domid: u16, target: Option<u16>, privileged: bool) -> u8 {
        let full = PERM_READ | PERM_WRITE | PERM_OWNER;
        let matches = |id: u16| id == domid || Some(id) == target || id == DOMID_ANY;
        let Some(first) = self.0.first() else { return if privileged { full } else { 0 } };
        if privileged || matches(first.domid) {
            return full;
        }
        self.0[1..].iter().find(|e| matches(e.domid)).unwrap_or(first).access.bits()
    }

    /// The GET_PERMS payload: each entry as a NUL-terminated string.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.0 {
            out.extend_from_slice(e.to_string().as_bytes());
            out.push(0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        assert_eq!(PermEntry::parse(b"r5").unwrap(), PermEntry::new(Access::Read, 5));
        assert_eq!(PermEntry::parse(b"b65535").unwrap().to_string(), "b65535");
        for bad in [&b""[..], b"r", b"x1", b"r-1", b"r65536", b"r1a", b"R1"] {
            assert_eq!(PermEntry::parse(bad), Err(XsError::Inval), "{bad:?}");
        }
    }

    #[test]
    fn owner_default_and_explicit_entries() {
        // n0 r1 w2: dom0 owns; 1 may read, 2 may write, 3 gets the owner's letter (none).
        let p = Perms(vec![
            PermEntry::new(Access::None, 0),
            PermEntry::new(Access::Read, 1),
            PermEntry::new(Access::Write, 2),
        ]);
        assert_eq!(p.access_for(1, None, false), PERM_READ);
        assert_eq!(p.access_for(2, None, false), PERM_WRITE);
        assert_eq!(p.access_for(3, None, false), 0);
        assert_eq!(p.access_for(0, None, true), PERM_READ | PERM_WRITE | PERM_OWNER);
        // b4 as owner: owner 4 has everything, others read+write by default.
        let q = Perms::owned(4, Access::Both);
        assert_eq!(q.access_for(4, None, false), 7);
        assert_eq!(q.access_for(9, None, false), PERM_READ | PERM_WRITE);
        // A domain targeting the owner is treated as the owner.
        assert_eq!(Perms::owned(4, Access::None).access_for(9, Some(4), false), 7);
        assert_eq!(p.to_wire(), b"n0\0r1\0w2\0");
    }

    #[test]
    fn strip_keeps_the_owner_entry() {
        let mut p = Perms(vec![
            PermEntry::new(Access::None, 1),
            PermEntry::new(Access::Read, 1),
            PermEntry::new(Access::Read, 2),
        ]);
        assert!(p.strip(1));
        assert_eq!(p.to_wire(), b"n1\0r2\0");
    }
}
