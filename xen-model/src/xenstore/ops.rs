//! The node operations (READ, WRITE, MKDIR, RM, DIRECTORY, DIRECTORY_PART, GET_PERMS,
//! SET_PERMS) over a [`View`], with the error rules of C xenstored: a missing node is
//! ENOENT only if the nearest existing ancestor would grant the access, else EACCES.

use super::error::{XsError, XsResult};
use super::path::{self, basename, canonicalize, parent};
use super::perms::{PermEntry, Perms, PERM_OWNER, PERM_READ, PERM_WRITE};
use super::quota::{exceeds, Quotas};
use super::transaction::View;
use super::tree::Node;
use super::watch::{Change, MatchKind};
use super::wire::PAYLOAD_MAX;

/// Who is asking.
#[derive(Clone, Debug)]
pub struct Caller {
    pub domid: u16,
    pub privileged: bool,
    pub target: Option<u16>,
    pub quotas: Quotas,
}

impl Caller {
    pub fn access(&self, perms: &Perms) -> u8 {
        perms.access_for(self.domid, self.target, self.privileged)
    }

    /// A quota as it applies to this caller (0 = unlimited; dom0 is never limited).
    pub fn limit(&self, q: u32) -> u32 {
        if self.privileged {
            0
        } else {
            q
        }
    }

    pub fn canon(&self, raw: &[u8], allow_special: bool) -> XsResult<path::Canonical> {
        let rel_max = match self.limit(self.quotas.path_max) {
            0 => None,
            n => Some(n as usize),
        };
        canonicalize(raw, self.domid, rel_max, allow_special)
    }
}

/// The NUL-terminated strings of a payload; bytes after the last NUL are ignored.
pub fn strings(payload: &[u8]) -> Vec<&[u8]> {
    let mut v: Vec<&[u8]> = payload.split(|&b| b == 0).collect();
    v.pop(); // the part after the last NUL (or everything, if there is none)
    v
}

/// A payload that is exactly one string with its NUL.
pub fn onearg(payload: &[u8]) -> XsResult<&[u8]> {
    match payload.split_last() {
        Some((0, s)) if !s.contains(&0) => Ok(s),
        _ => Err(XsError::Inval),
    }
}

/// C's atoi: optional sign and leading digits; anything else reads as 0.
pub fn atoi(s: &[u8]) -> i64 {
    let s = s.trim_ascii_start();
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut v: i64 = 0;
    for &d in digits.iter().take_while(|d| d.is_ascii_digit()) {
        v = v.saturating_mul(10).saturating_add(i64::from(d - b'0'));
    }
    if neg {
        -v
    } else {
        v
    }
}

/// ENOENT or EACCES for a missing node, depending on what its nearest existing ancestor
/// grants (so a caller learns nothing about nodes it may not see).
fn missing_node_error(v: &mut View, c: &Caller, path: &str, want: u8) -> XsResult<XsError> {
    let mut p = parent(path);
    loop {
        if let Some(n) = v.read(p)? {
            return Ok(if c.access(&n.perms) & want != 0 { XsError::NoEnt } else { XsError::Acces });
        }
        if p == "/" {
            return Ok(XsError::Acces);
        }
        p = parent(p);
    }
}

/// Looks a node up and checks `want` access. Ok(false) is never returned for a node that
/// exists; Err(ENOENT) means it does not exist and the caller may know that.
fn check_node(v: &mut View, c: &Caller, path: &str, want: u8) -> XsResult<()> {
    match v.read(path)? {
        Some(n) if c.access(&n.perms) & want == want => Ok(()),
        Some(_) => Err(XsError::Acces),
        None => Err(missing_node_error(v, c, path, want)?),
    }
}

fn node<'v>(v: &'v View, path: &str) -> XsResult<&'v Node> {
    v.peek(path).ok_or(XsError::Io)
}

pub fn read(v: &mut View, c: &Caller, payload: &[u8]) -> XsResult<Vec<u8>> {
    let p = c.canon(onearg(payload)?, false)?.path;
    check_node(v, c, &p, PERM_READ)?;
    Ok(node(v, &p)?.value.clone())
}

pub fn directory(v: &mut View, c: &Caller, payload: &[u8]) -> XsResult<Vec<u8>> {
    let p = c.canon(onearg(payload)?, false)?.path;
    check_node(v, c, &p, PERM_READ)?;
    Ok(node(v, &p)?.children_blob())
}

/// DIRECTORY_PART: "<gencnt>\0" then child names from byte `offset` of the full list, as
/// many whole names as fit; an extra NUL marks the end of the list.
pub fn directory_part(v: &mut View, c: &Caller, payload: &[u8]) -> XsResult<Vec<u8>> {
    let args = strings(payload);
    if args.len() != 2 {
        return Err(XsError::Inval);
    }
    let p = c.canon(args[0], false)?.path;
    check_node(v, c, &p, PERM_READ)?;
    let n = node(v, &p)?;
    let offset = usize::try_from(atoi(args[1]).max(0)).unwrap_or(usize::MAX);
    let blob = n.children_blob();
    let mut out = n.generation.to_string().into_bytes();
    out.push(0);
    if offset >= blob.len() {
        out.push(0);
        return Ok(out);
    }
    let max = PAYLOAD_MAX - out.len() - 1;
    let mut len = 0;
    let rest = &blob[offset..];
    while len < rest.len() {
        let name_len = rest[len..].iter().position(|&b| b == 0).unwrap_or(rest.len() - len);
        if len + name_len >= max {
            break;
        }
        len += name_len + 1;
    }
    out.extend_from_slice(&rest[..len.min(rest.len())]);
    if len >= rest.len() {
        out.push(0);
    }
    Ok(out)
}

pub fn get_perms(v: &mut View, c: &Caller, payload: &[u8]) -> XsResult<Vec<u8>> {
    let p = c.canon(onearg(payload)?, true)?.path;
    check_node(v, c, &p, PERM_READ)?;
    Ok(node(v, &p)?.perms.to_wire())
}

pub fn write(v: &mut View, c: &Caller, payload: &[u8]) -> XsResult<()> {
    let nul = payload.iter().position(|&b| b == 0).ok_or(XsError::Inval)?;
    let p = c.canon(&payload[..nul], false)?.path;
    let value = &payload[nul + 1..];
    match check_node(v, c, &p, PERM_WRITE) {
        Ok(()) => {
            check_size(c, value)?;
            let mut n = node(v, &p)?.clone();
            n.value = value.to_vec();
            v.put(&p, n);
        }
        Err(XsError::NoEnt) => create(v, c, &p, value)?,
        Err(e) => return Err(e),
    }
    v.changed(Change::new(p, MatchKind::Subtree));
    Ok(())
}

pub fn mkdir(v: &mut View, c: &Caller, payload: &[u8]) -> XsResult<()> {
    let p = c.canon(onearg(payload)?, false)?.path;
    match check_node(v, c, &p, PERM_WRITE) {
        Ok(()) => Ok(()),
        Err(XsError::NoEnt) => {
            create(v, c, &p, &[])?;
            v.changed(Change::new(p, MatchKind::Subtree));
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn check_size(c: &Caller, value: &[u8]) -> XsResult<()> {
    if exceeds(value.len() as u64, c.limit(c.quotas.node_size)) {
        return Err(XsError::NoSpc);
    }
    Ok(())
}

/// Creates `p` with `value` and any missing parents (empty values). New nodes inherit
/// their parent's permissions; a domain other than dom0 becomes the owner of what it creates.
fn create(v: &mut View, c: &Caller, p: &str, value: &[u8]) -> XsResult<()> {
    let mut missing = vec![p.to_owned()];
    let mut existing = parent(p);
    while v.read(existing)?.is_none() {
        missing.push(existing.to_owned());
        existing = parent(existing);
    }
    if exceeds(v.owned_by(c.domid).saturating_add(missing.len() as u64), c.limit(c.quotas.nodes)) {
        return Err(XsError::NoSpc);
    }
    check_size(c, value)?;
    let mut parent_path = existing.to_owned();
    let mut parent_node = node(v, existing)?.clone();
    for (i, name) in missing.iter().rev().enumerate() {
        let mut perms = parent_node.perms.clone();
        if !c.privileged {
            perms.set_owner(c.domid);
        }
        let is_target = i + 1 == missing.len();
        let child = Node::new(if is_target { value.to_vec() } else { Vec::new() }, perms);
        parent_node.children.insert(basename(name).to_owned());
        v.put(&parent_path, parent_node);
        parent_path = name.clone();
        parent_node = child;
    }
    v.put(&parent_path, parent_node);
    Ok(())
}

pub fn rm(v: &mut View, c: &Caller, payload: &[u8]) -> XsResult<()> {
    let p = c.canon(onearg(payload)?, false)?.path;
    match check_node(v, c, &p, PERM_WRITE) {
        Ok(()) => {}
        // Removing a missing node is fine if its parent exists.
        Err(XsError::NoEnt) => {
            return if v.read(parent(&p))?.is_some() { Ok(()) } else { Err(XsError::NoEnt) };
        }
        Err(e) => return Err(e),
    }
    if p == "/" {
        return Err(XsError::Inval);
    }
    remove_subtree(v, &p)
}

/// Removes `p` and everything below it, children before parents. Watches on each removed
/// node fire with its own path; watches on `p` and above fire once, with `p`.
pub fn remove_subtree(v: &mut View, p: &str) -> XsResult<()> {
    let mut order = Vec::new();
    let mut stack = vec![(p.to_owned(), false)];
    while let Some((cur, expanded)) = stack.pop() {
        if expanded {
            order.push(cur);
            continue;
        }
        let Some(n) = v.read(&cur)? else { continue };
        let kids: Vec<String> = n.children.iter().rev().map(|k| path::child_path(&cur, k)).collect();
        stack.push((cur, true));
        stack.extend(kids.into_iter().map(|k| (k, false)));
    }
    let top_parent = parent(p).to_owned();
    let mut pnode = v.read(&top_parent)?.cloned().ok_or(XsError::Io)?;
    for cur in order {
        let mut hints = Vec::with_capacity(2);
        if let Some(n) = v.peek(&cur) {
            hints.push(n.perms.clone());
        }
        if let Some(n) = v.peek(parent(&cur)) {
            hints.push(n.perms.clone());
        }
        let kind = if cur == p { MatchKind::Subtree } else { MatchKind::Exact };
        v.changed(Change { path: cur.clone(), kind, perms: hints });
        v.delete(&cur);
    }
    pnode.children.remove(basename(p));
    v.put(&top_parent, pnode);
    Ok(())
}

pub fn set_perms(v: &mut View, c: &Caller, payload: &[u8]) -> XsResult<()> {
    let args = strings(payload);
    if args.len() < 2 {
        return Err(XsError::Inval);
    }
    if exceeds(args.len() as u64 - 1, c.limit(c.quotas.node_permissions)) {
        return Err(XsError::NoSpc);
    }
    let entries = args[1..].iter().map(|s| PermEntry::parse(s)).collect::<XsResult<Vec<_>>>()?;
    let perms = Perms::from_entries(entries).ok_or(XsError::Inval)?;
    let p = c.canon(args[0], true)?.path;
    check_node(v, c, &p, PERM_WRITE | PERM_OWNER)?;
    let mut n = node(v, &p)?.clone();
    if !c.privileged && perms.owner() != n.perms.owner() {
        return Err(XsError::Perm);
    }
    let old = std::mem::replace(&mut n.perms, perms);
    v.put(&p, n);
    v.changed(Change { path: p, kind: MatchKind::Subtree, perms: vec![old] });
    Ok(())
}
