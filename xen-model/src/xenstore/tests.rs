//! Semantic tests of the store through its request interface. Expected values come from
//! docs/misc/xenstore.txt and C xenstored's behaviour, worked out by hand.

use std::collections::BTreeMap;

use super::wire::{MsgType, Packet};
use super::*;
use MsgType::*;

/// A store with a few connections; replies are returned, watch events collected.
struct T {
    s: Store,
    req_id: u32,
    events: BTreeMap<ConnId, Vec<(String, String)>>,
}

fn z(parts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p.as_bytes());
        v.push(0);
    }
    v
}

fn wv(path: &str, value: &str) -> Vec<u8> {
    let mut v = z(&[path]);
    v.extend_from_slice(value.as_bytes());
    v
}

impl T {
    fn new() -> Self {
        T { s: Store::new(), req_id: 0, events: BTreeMap::new() }
    }

    fn conn(&mut self, domid: u16) -> ConnId {
        if domid == 0 {
            self.s.connect(0)
        } else {
            let c = self.s.introduce_domain(domid, 0x1000 + u64::from(domid), 10 + u32::from(domid));
            self.drain_all();
            c
        }
    }

    fn drain_all(&mut self) {
        let ids: Vec<ConnId> = self.s.connections().map(|(id, _)| id).collect();
        for id in ids {
            self.drain(id);
        }
    }

    /// Moves queued events of `c` into `self.events`; returns replies found.
    fn drain(&mut self, c: ConnId) -> Vec<Packet> {
        let mut replies = Vec::new();
        while let Some(p) = self.s.pop_output(c) {
            if p.msg_type == WatchEvent as u32 {
                let parts: Vec<String> =
                    p.payload.split(|&b| b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect();
                assert_eq!(parts.len(), 3, "event payload is path NUL token NUL");
                self.events.entry(c).or_default().push((parts[0].clone(), parts[1].clone()));
            } else {
                replies.push(p);
            }
        }
        replies
    }

    fn op(&mut self, c: ConnId, ty: MsgType, tx: u32, payload: &[u8]) -> Result<Vec<u8>, String> {
        self.req_id += 1;
        let req = Packet::new(ty, self.req_id, tx, payload.to_vec());
        self.s.handle(c, &req);
        let mut replies = self.drain(c);
        self.drain_all();
        assert_eq!(replies.len(), 1, "exactly one reply");
        let r = replies.remove(0);
        assert_eq!(r.req_id, self.req_id, "req_id echoed");
        assert_eq!(r.tx_id, tx, "tx_id echoed");
        if r.msg_type == Error as u32 {
            let name = r.payload.strip_suffix(&[0]).expect("error ends with NUL");
            Err(String::from_utf8_lossy(name).into_owned())
        } else {
            assert_eq!(r.msg_type, ty as u32);
            Ok(r.payload)
        }
    }

    fn ok(&mut self, c: ConnId, ty: MsgType, tx: u32, payload: &[u8]) -> Vec<u8> {
        match self.op(c, ty, tx, payload) {
            Ok(v) => v,
            Err(e) => panic!("{ty:?} {:?} failed with {e}", String::from_utf8_lossy(payload)),
        }
    }

    fn err(&mut self, c: ConnId, ty: MsgType, tx: u32, payload: &[u8]) -> String {
        match self.op(c, ty, tx, payload) {
            Ok(v) => panic!("{ty:?} {:?} succeeded with {:?}", String::from_utf8_lossy(payload), v),
            Err(e) => e,
        }
    }

    fn write(&mut self, c: ConnId, path: &str, value: &str) {
        assert_eq!(self.ok(c, Write, 0, &wv(path, value)), b"OK\0");
    }

    fn read(&mut self, c: ConnId, path: &str) -> Result<String, String> {
        self.op(c, Read, 0, &z(&[path])).map(|v| String::from_utf8(v).unwrap())
    }

    fn watch(&mut self, c: ConnId, path: &str, token: &str) {
        self.ok(c, Watch, 0, &z(&[path, token]));
    }

    fn events(&mut self, c: ConnId) -> Vec<(String, String)> {
        self.drain(c);
        self.events.remove(&c).unwrap_or_default()
    }

    fn ev(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }
}

// ---- tree, node counts, basic operations -------------------------------------------------

#[test]
fn base_tree_has_the_expected_nodes() {
    let t = T::new();
    // /, /tool, /vm, /local, /local/domain, /local/domain/0, its domid and name, and the
    // two special nodes.
    assert_eq!(t.s.tree().len(), 10);
    assert!(t.s.tree().check().is_ok());
}

#[test]
fn write_creates_missing_parents_and_rm_removes_the_subtree() {
    let mut t = T::new();
    let d0 = t.conn(0);
    let base = t.s.tree().len();
    t.write(d0, "/a/b/c", "v");
    assert_eq!(t.s.tree().len(), base + 3);
    assert_eq!(t.read(d0, "/a/b/c").unwrap(), "v");
    assert_eq!(t.read(d0, "/a/b").unwrap(), "", "created parents have empty values");
    t.write(d0, "/a/x", "1");
    assert_eq!(t.s.tree().len(), base + 4);
    // Overwriting does not add a node.
    t.write(d0, "/a/x", "2");
    assert_eq!(t.s.tree().len(), base + 4);
    assert_eq!(t.ok(d0, Rm, 0, &z(&["/a/b"])), b"OK\0");
    assert_eq!(t.s.tree().len(), base + 2);
    assert_eq!(t.read(d0, "/a/b/c"), Err("ENOENT".into()));
    assert_eq!(t.ok(d0, Rm, 0, &z(&["/a"])), b"OK\0");
    assert_eq!(t.s.tree().len(), base);
    assert!(t.s.tree().check().is_ok());
}

#[test]
fn rm_of_missing_node_needs_an_existing_parent() {
    let mut t = T::new();
    let d0 = t.conn(0);
    assert_eq!(t.ok(d0, Rm, 0, &z(&["/tool/nothing"])), b"OK\0");
    assert_eq!(t.err(d0, Rm, 0, &z(&["/nothing/nothing"])), "ENOENT");
    assert_eq!(t.err(d0, Rm, 0, &z(&["/"])), "EINVAL");
}

#[test]
fn mkdir_keeps_existing_values() {
    let mut t = T::new();
    let d0 = t.conn(0);
    t.write(d0, "/m", "keep");
    t.ok(d0, Mkdir, 0, &z(&["/m"]));
    assert_eq!(t.read(d0, "/m").unwrap(), "keep");
    t.ok(d0, Mkdir, 0, &z(&["/m/n/o"]));
    assert_eq!(t.read(d0, "/m/n/o").unwrap(), "");
}

#[test]
fn values_may_hold_binary_data_and_nuls() {
    let mut t = T::new();
    let d0 = t.conn(0);
    let mut p = z(&["/bin"]);
    p.extend_from_slice(&[1, 0, 2, 0]);
    t.ok(d0, Write, 0, &p);
    assert_eq!(t.ok(d0, Read, 0, &z(&["/bin"])), vec![1, 0, 2, 0]);
}

#[test]
fn malformed_requests_are_einval() {
    let mut t = T::new();
    let d0 = t.conn(0);
    assert_eq!(t.err(d0, Read, 0, b"/tool"), "EINVAL", "missing NUL");
    assert_eq!(t.err(d0, Read, 0, b"/tool\0\0"), "EINVAL", "two strings");
    assert_eq!(t.err(d0, Read, 0, b""), "EINVAL");
    assert_eq!(t.err(d0, Write, 0, b"/novalue"), "EINVAL");
    assert_eq!(t.err(d0, Read, 0, &z(&["/a//b"])), "EINVAL");
    assert_eq!(t.err(d0, Read, 0, &z(&["/a/"])), "EINVAL");
    assert_eq!(t.err(d0, Read, 0, &z(&["/a b"])), "EINVAL");
    assert_eq!(t.err(d0, Write, 0, &wv("@x", "1")), "EINVAL");
}

#[test]
fn relative_paths_resolve_to_the_callers_home() {
    let mut t = T::new();
    let d0 = t.conn(0);
    t.s.create_guest_nodes(&GuestSpec::domain1(0xfeffc, 1, 0xfeffd, 2)).unwrap();
    let g = t.conn(1);
    t.write(g, "data/k", "v");
    assert_eq!(t.read(d0, "/local/domain/1/data/k").unwrap(), "v");
    assert_eq!(t.read(g, "domid").unwrap(), "1");
    t.write(d0, "x", "dom0 relative");
    assert_eq!(t.read(d0, "/local/domain/0/x").unwrap(), "dom0 relative");
}

#[test]
fn directory_is_sorted_and_directory_part_pages_with_the_generation() {
    let mut t = T::new();
    let d0 = t.conn(0);
    for n in ["b", "a", "c"] {
        t.write(d0, &format!("/d/{n}"), "");
    }
    assert_eq!(t.ok(d0, Directory, 0, &z(&["/d"])), b"a\0b\0c\0");
    assert_eq!(t.ok(d0, Directory, 0, &z(&["/d/a"])), b"");
    let gen = |t: &T| t.s.tree().get("/d").unwrap().generation.to_string();
    let g1 = gen(&t);
    // Whole list from offset 0: gen, names, and the terminating empty string.
    let mut want = z(&[&g1, "a", "b", "c"]);
    want.push(0);
    assert_eq!(t.ok(d0, DirectoryPart, 0, &z(&["/d", "0"])), want);
    // Offset 2 is the start of "b".
    let mut want = z(&[&g1, "b", "c"]);
    want.push(0);
    assert_eq!(t.ok(d0, DirectoryPart, 0, &z(&["/d", "2"])), want);
    // Past the end: gen and an empty list.
    let mut want = z(&[&g1]);
    want.push(0);
    assert_eq!(t.ok(d0, DirectoryPart, 0, &z(&["/d", "6"])), want);
    assert_eq!(t.err(d0, DirectoryPart, 0, &z(&["/d"])), "EINVAL");
    // Adding a child changes the generation.
    t.write(d0, "/d/e", "");
    assert_ne!(gen(&t), g1);
}

#[test]
fn directory_part_splits_long_lists() {
    let mut t = T::new();
    let d0 = t.conn(0);
    // 300 names of 20 bytes (+NUL) = 6300 bytes: too big for DIRECTORY.
    for i in 0..300 {
        t.write(d0, &format!("/big/{i:020}"), "");
    }
    assert_eq!(t.err(d0, Directory, 0, &z(&["/big"])), "E2BIG");
    let mut names = Vec::new();
    let mut offset = 0usize;
    loop {
        let r = t.ok(d0, DirectoryPart, 0, &z(&["/big", &offset.to_string()]));
        assert!(r.len() <= 4096);
        let mut parts: Vec<&[u8]> = r.split(|&b| b == 0).collect();
        parts.pop();
        let body = &parts[1..];
        let done = body.last() == Some(&&b""[..]);
        for n in body.iter().filter(|n| !n.is_empty()) {
            offset += n.len() + 1;
            names.push(String::from_utf8(n.to_vec()).unwrap());
        }
        if done {
            break;
        }
    }
    let want: Vec<String> = (0..300).map(|i| format!("{i:020}")).collect();
    assert_eq!(names, want);
}

// ---- permissions --------------------------------------------------------------------------

#[test]
fn permission_rules() {
    let mut t = T::new();
    let d0 = t.conn(0);
    let g1 = t.conn(1);
    let g2 = t.conn(2);
    t.write(d0, "/p/secret", "s");
    // Owner dom0 with "n": no access for other domains; the parent gives nothing either.
    assert_eq!(t.read(g1, "/p/secret"), Err("EACCES".into()));
    assert_eq!(t.read(g1, "/p/missing"), Err("EACCES".into()), "no hint that it is missing");
    // n0 r1: domain 1 reads, domain 2 still nothing.
    t.ok(d0, SetPerms, 0, &z(&["/p", "n0", "r1"]));
    assert_eq!(t.read(g1, "/p/missing"), Err("ENOENT".into()), "readable parent: ENOENT");
    t.ok(d0, SetPerms, 0, &z(&["/p/secret", "n0", "r1"]));
    assert_eq!(t.read(g1, "/p/secret").unwrap(), "s");
    assert_eq!(t.read(g2, "/p/secret"), Err("EACCES".into()));
    assert_eq!(t.err(g1, Write, 0, &wv("/p/secret", "x")), "EACCES");
    assert_eq!(t.err(g1, Write, 0, &wv("/p/new", "x")), "EACCES", "creating needs write on the parent");
    // b0: the owner's letter is everyone's default.
    t.ok(d0, SetPerms, 0, &z(&["/p", "b0"]));
    t.write(g2, "/p/byguest", "x");
    // The creator owns what it creates; perms are otherwise inherited.
    assert_eq!(t.ok(d0, GetPerms, 0, &z(&["/p/byguest"])), z(&["b2"]));
    assert_eq!(t.ok(g2, GetPerms, 0, &z(&["/p/byguest"])), z(&["b2"]));
    // dom0 creating inherits unchanged.
    t.write(d0, "/p/q/r", "");
    assert_eq!(t.ok(d0, GetPerms, 0, &z(&["/p/q/r"])), z(&["b0"]));
}

#[test]
fn set_perms_rules() {
    let mut t = T::new();
    let d0 = t.conn(0);
    let g1 = t.conn(1);
    t.write(d0, "/s", "");
    t.ok(d0, SetPerms, 0, &z(&["/s", "b0"]));
    t.write(g1, "/s/mine", "");
    t.write(d0, "/s/theirs", "");
    // The owner may change its own node's perms, not the owner.
    t.ok(g1, SetPerms, 0, &z(&["/s/mine", "n1", "r0"]));
    assert_eq!(t.ok(d0, GetPerms, 0, &z(&["/s/mine"])), z(&["n1", "r0"]));
    assert_eq!(t.err(g1, SetPerms, 0, &z(&["/s/mine", "n2"])), "EPERM");
    // Write access is not ownership.
    assert_eq!(t.err(g1, SetPerms, 0, &z(&["/s/theirs", "b1"])), "EACCES");
    // dom0 may give a node away.
    t.ok(d0, SetPerms, 0, &z(&["/s/theirs", "n1"]));
    assert_eq!(t.ok(g1, GetPerms, 0, &z(&["/s/theirs"])), z(&["n1"]));
    for bad in [&["/s/mine"][..], &["/s/mine", "x1"], &["/s/mine", "r"], &["/s/mine", "r70000"]] {
        assert_eq!(t.err(d0, SetPerms, 0, &z(bad)), "EINVAL", "{bad:?}");
    }
    // At most 5 entries for a guest, no limit for dom0.
    t.ok(g1, SetPerms, 0, &z(&["/s/mine", "n1", "r2", "r3", "r4", "r5"]));
    assert_eq!(t.err(g1, SetPerms, 0, &z(&["/s/mine", "n1", "r2", "r3", "r4", "r5", "r6"])), "ENOSPC");
    t.ok(d0, SetPerms, 0, &z(&["/s/mine", "n1", "r2", "r3", "r4", "r5", "r6", "r7"]));
}

#[test]
fn target_domain_acts_for_its_target() {
    let mut t = T::new();
    let d0 = t.conn(0);
    let g1 = t.conn(1);
    let g2 = t.conn(2);
    t.write(d0, "/t", "");
    t.ok(d0, SetPerms, 0, &z(&["/t", "n1"]));
    assert_eq!(t.read(g2, "/t"), Err("EACCES".into()));
    t.ok(d0, SetTarget, 0, &z(&["2", "1"]));
    assert_eq!(t.read(g2, "/t").unwrap(), "");
    assert_eq!(t.read(g1, "/t").unwrap(), "");
    assert_eq!(t.err(d0, SetTarget, 0, &z(&["2", "9"])), "ENOENT");
}

#[test]
fn privileged_operations_are_refused_to_guests() {
    let mut t = T::new();
    let g = t.conn(1);
    for (ty, p) in [
        (Introduce, z(&["5", "1", "1"])),
        (Release, z(&["1"])),
        (Resume, z(&["1"])),
        (SetTarget, z(&["1", "2"])),
        (IsDomainIntroduced, z(&["1"])),
        (Control, z(&["help"])),
        (GetQuota, z(&[])),
        (SetQuota, z(&["nodes", "1"])),
        (SetFeature, z(&["1", "0"])),
    ] {
        assert_eq!(t.err(g, ty, 0, &p), "EACCES", "{ty:?}");
    }
    assert_eq!(t.err(g, GetFeature, 0, &z(&["1"])), "EACCES");
}

#[test]
fn unknown_types_are_enosys() {
    let mut t = T::new();
    let d0 = t.conn(0);
    for ty in [20u32, 27, 99, 0xffff, WatchEvent as u32, Error as u32] {
        let req = Packet { msg_type: ty, req_id: 77, tx_id: 0, payload: z(&["/"]) };
        t.s.handle(d0, &req);
        let r = t.s.pop_output(d0).unwrap();
        assert_eq!((r.msg_type, r.req_id, r.payload), (Error as u32, 77, b"ENOSYS\0".to_vec()), "type {ty}");
    }
}

// ---- watches ------------------------------------------------------------------------------

#[test]
fn watch_fires_at_registration_and_on_subtree_changes() {
    let mut t = T::new();
    let d0 = t.conn(0);
    let w = t.conn(0);
    t.watch(w, "/w", "tok");
    assert_eq!(t.events(w), T::ev(&[("/w", "tok")]), "fires once at registration, even for a missing node");
    t.write(d0, "/w/a/b", "1");
    assert_eq!(t.events(w), T::ev(&[("/w/a/b", "tok")]), "creating parents fires once, for the target");
    t.write(d0, "/w", "x");
    t.write(d0, "/wx", "not below /w");
    t.ok(d0, SetPerms, 0, &z(&["/w/a", "b0"]));
    assert_eq!(t.events(w), T::ev(&[("/w", "tok"), ("/w/a", "tok")]));
    assert_eq!(t.err(w, Watch, 0, &z(&["/w", "tok"])), "EEXIST");
    t.watch(w, "/w", "tok2");
    assert_eq!(t.events(w), T::ev(&[("/w", "tok2")]));
    t.ok(w, Unwatch, 0, &z(&["/w", "tok"]));
    assert_eq!(t.err(w, Unwatch, 0, &z(&["/w", "tok"])), "ENOENT");
    t.write(d0, "/w", "y");
    assert_eq!(t.events(w), T::ev(&[("/w", "tok2")]));
    // Reading and failed writes fire nothing.
    let _ = t.read(d0, "/w");
    assert!(t.events(w).is_empty());
}

#[test]
fn writer_sees_its_own_event_before_the_reply() {
    let mut t = T::new();
    let d0 = t.conn(0);
    t.watch(d0, "/o", "t");
    t.events(d0);
    t.s.handle(d0, &Packet::new(Write, 5, 0, wv("/o", "1")));
    let first = t.s.pop_output(d0).unwrap();
    let second = t.s.pop_output(d0).unwrap();
    assert_eq!(first.msg_type, WatchEvent as u32);
    assert_eq!((first.req_id, first.tx_id), (0, 0));
    assert_eq!(second.msg_type, Write as u32);
    assert_eq!(second.req_id, 5);
}

#[test]
fn watch_reply_precedes_the_initial_event() {
    let mut t = T::new();
    let d0 = t.conn(0);
    t.s.handle(d0, &Packet::new(Watch, 9, 0, z(&["/x", "t"])));
    assert_eq!(t.s.pop_output(d0).unwrap().payload, b"OK\0");
    assert_eq!(t.s.pop_output(d0).unwrap().payload, z(&["/x", "t"]));
}

#[test]
fn rm_fires_removed_nodes_with_their_own_paths_and_ancestors_once() {
    let mut t = T::new();
    let d0 = t.conn(0);
    let w = t.conn(0);
    t.write(d0, "/r/a/b/c", "");
    t.write(d0, "/r/a/d", "");
    for (p, tok) in [("/r", "anc"), ("/r/a", "top"), ("/r/a/b", "mid"), ("/r/a/b/c", "leaf"), ("/r/a/zz", "ghost")] {
        t.watch(w, p, tok);
    }
    t.events(w);
    t.ok(d0, Rm, 0, &z(&["/r/a"]));
    let mut got = t.events(w);
    got.sort();
    let mut want = T::ev(&[("/r/a", "anc"), ("/r/a", "top"), ("/r/a/b", "mid"), ("/r/a/b/c", "leaf")]);
    want.sort();
    assert_eq!(got, want, "each watch once; a watch on a node that never existed stays quiet");
}

#[test]
fn watch_depth_limits_levels() {
    let mut t = T::new();
    let d0 = t.conn(0);
    let w = t.conn(0);
    t.ok(w, Watch, 0, &z(&["/dp", "t", "1"]));
    assert_eq!(t.events(w), T::ev(&[("/dp", "t")]));
    t.write(d0, "/dp", "");
    t.write(d0, "/dp/a", "");
    t.write(d0, "/dp/a/b", "");
    assert_eq!(t.events(w), T::ev(&[("/dp", "t"), ("/dp/a", "t")]));
    assert_eq!(t.err(w, Watch, 0, &z(&["/dp", "u", "-1"])), "EINVAL");
    assert_eq!(t.err(w, Watch, 0, &z(&["/dp"])), "EINVAL");
}

#[test]
fn relative_watch_reports_relative_paths() {
    let mut t = T::new();
    let d0 = t.conn(0);
    t.s.create_guest_nodes(&GuestSpec::domain1(1, 1, 2, 2)).unwrap();
    let g = t.conn(1);
    t.watch(g, "data", "rel");
    t.watch(g, "/local/domain/1/data", "abs");
    assert_eq!(t.events(g), T::ev(&[("data", "rel"), ("/local/domain/1/data", "abs")]));
    t.write(d0, "/local/domain/1/data/x", "1");
    assert_eq!(t.events(g), T::ev(&[("data/x", "rel"), ("/local/domain/1/data/x", "abs")]));
}

#[test]
fn guests_get_no_events_for_nodes_they_cannot_read() {
    let mut t = T::new();
    let d0 = t.conn(0);
    let g = t.conn(1);
    t.watch(g, "/hidden", "t");
    assert_eq!(t.events(g).len(), 1, "registration event only");
    t.write(d0, "/hidden/x", "1");
    assert!(t.events(g).is_empty());
    t.ok(d0, SetPerms, 0, &z(&["/hidden/x", "n0", "r1"]));
    // The permission change itself is visible under the new perms.
    assert_eq!(t.events(g), T::ev(&[("/hidden/x", "t")]));
    t.write(d0, "/hidden/x", "2");
    assert_eq!(t.events(g), T::ev(&[("/hidden/x", "t")]));
}

#[test]
fn special_watches_fire_on_introduce_release_and_shutdown() {
    let mut t = T::new();
    let d0 = t.conn(0);
    t.watch(d0, "@introduceDomain", "i");
    t.watch(d0, "@releaseDomain", "r");
    t.ok(d0, Watch, 0, &z(&["@releaseDomain", "rd", "1"]));
    t.watch(d0, "@releaseDomain/3", "only3");
    t.events(d0);
    t.ok(d0, Introduce, 0, &z(&["3", "4096", "7"]));
    assert_eq!(t.events(d0), T::ev(&[("@introduceDomain", "i")]));
    assert_eq!(t.ok(d0, IsDomainIntroduced, 0, &z(&["3"])), b"T\0");
    assert_eq!(t.ok(d0, IsDomainIntroduced, 0, &z(&["4"])), b"F\0");
    // Shutdown: once, until RESUME.
    t.s.domain_shutdown(3);
    assert_eq!(
        t.events(d0),
        T::ev(&[("@releaseDomain/3", "rd"), ("@releaseDomain/3", "only3"), ("@releaseDomain", "r")])
    );
    t.s.domain_shutdown(3);
    assert!(t.events(d0).is_empty());
    t.ok(d0, Resume, 0, &z(&["3"]));
    t.s.domain_shutdown(3);
    assert_eq!(t.events(d0).len(), 3);
    t.ok(d0, Release, 0, &z(&["3"]));
    assert_eq!(
        t.events(d0),
        T::ev(&[("@releaseDomain", "r"), ("@releaseDomain/3", "rd"), ("@releaseDomain/3", "only3")])
    );
    assert_eq!(t.ok(d0, IsDomainIntroduced, 0, &z(&["3"])), b"F\0");
    assert_eq!(t.err(d0, Release, 0, &z(&["3"])), "ENOENT");
    assert_eq!(t.err(d0, Release, 0, &z(&["0"])), "EINVAL");
    assert_eq!(t.err(d0, Introduce, 0, &z(&["3", "1", "0"])), "EINVAL", "port must be positive");
}

#[test]
fn guests_see_special_events_only_when_permitted() {
    let mut t = T::new();
    let d0 = t.conn(0);
    let g = t.conn(1);
    t.watch(g, "@introduceDomain", "i");
    t.events(g);
    t.ok(d0, Introduce, 0, &z(&["5", "1", "1"]));
    assert!(t.events(g).is_empty());
    t.ok(d0, SetPerms, 0, &z(&["@introduceDomain", "n0", "r1"]));
    t.ok(d0, Introduce, 0, &z(&["6", "1", "1"]));
    // SET_PERMS on the special node is itself a change of it (C xenstored fires it too).
    assert_eq!(t.events(g), T::ev(&[("@introduceDomain", "i"), ("@introduceDomain", "i")]));
}

#[test]
fn release_removes_the_domains_nodes() {
    let mut t = T::new();
    let d0 = t.conn(0);
    t.s.create_guest_nodes(&GuestSpec::domain1(1, 1, 2, 2)).unwrap();
    let g = t.conn(1);
    t.write(g, "data/x", "1");
    t.watch(d0, "/local/domain/1/data", "w");
    t.events(d0);
    assert!(t.s.tree().owned_by(1) > 0);
    t.ok(d0, Release, 0, &z(&["1"]));
    assert_eq!(t.s.tree().owned_by(1), 0);
    assert_eq!(t.read(d0, "/local/domain/1/data"), Err("ENOENT".into()));
    assert_eq!(t.read(d0, "/local/domain/1/name").unwrap(), "guest", "dom0's nodes stay");
    assert_eq!(t.ok(d0, GetPerms, 0, &z(&["/local/domain/1/name"])), z(&["n0"]), "r1 entry stripped");
    assert_eq!(t.events(d0), T::ev(&[("/local/domain/1/data", "w")]));
    assert!(t.s.tree().check().is_ok());
}

// ---- transactions -------------------------------------------------------------------------

fn start(t: &mut T, c: ConnId) -> u32 {
    let r = t.ok(c, TransactionStart, 0, &z(&[""]));
    String::from_utf8(r.strip_suffix(&[0]).unwrap().to_vec()).unwrap().parse().unwrap()
}

#[test]
fn transactions_are_isolated_until_commit() {
    let mut t = T::new();
    let a = t.conn(0);
    let b = t.conn(0);
    t.watch(b, "/tx", "w");
    t.events(b);
    let id = start(&mut t, a);
    assert_ne!(id, 0);
    t.ok(a, Write, id, &wv("/tx/k", "in-tx"));
    assert_eq!(t.ok(a, Read, id, &z(&["/tx/k"])), b"in-tx");
    assert_eq!(t.read(a, "/tx/k"), Err("ENOENT".into()), "outside the transaction");
    assert_eq!(t.read(b, "/tx/k"), Err("ENOENT".into()));
    assert!(t.events(b).is_empty(), "no events before commit");
    t.ok(a, TransactionEnd, id, &z(&["T"]));
    assert_eq!(t.read(b, "/tx/k").unwrap(), "in-tx");
    assert_eq!(t.events(b), T::ev(&[("/tx/k", "w")]));
    assert_eq!(t.err(a, Read, id, &z(&["/tx/k"])), "ENOENT", "the id is gone");
}

#[test]
fn abort_discards_and_fires_nothing() {
    let mut t = T::new();
    let a = t.conn(0);
    t.watch(a, "/ab", "w");
    t.events(a);
    let id = start(&mut t, a);
    t.ok(a, Write, id, &wv("/ab/x", "1"));
    t.ok(a, TransactionEnd, id, &z(&["F"]));
    assert_eq!(t.read(a, "/ab/x"), Err("ENOENT".into()));
    assert!(t.events(a).is_empty());
}

#[test]
fn conflicting_commit_gets_eagain_and_changes_nothing() {
    let mut t = T::new();
    let a = t.conn(0);
    let b = t.conn(0);
    t.write(a, "/c/read", "0");
    t.watch(b, "/c", "w");
    t.events(b);
    let id = start(&mut t, a);
    assert_eq!(t.ok(a, Read, id, &z(&["/c/read"])), b"0");
    t.ok(a, Write, id, &wv("/c/out", "1"));
    t.write(b, "/c/read", "changed");
    t.events(b);
    assert_eq!(t.err(a, TransactionEnd, id, &z(&["T"])), "EAGAIN");
    assert_eq!(t.read(a, "/c/out"), Err("ENOENT".into()));
    assert!(t.events(b).is_empty());
    // The retry succeeds.
    let id = start(&mut t, a);
    t.ok(a, Read, id, &z(&["/c/read"]));
    t.ok(a, Write, id, &wv("/c/out", "1"));
    t.ok(a, TransactionEnd, id, &z(&["T"]));
    assert_eq!(t.read(a, "/c/out").unwrap(), "1");
}

#[test]
fn unrelated_writes_do_not_conflict() {
    let mut t = T::new();
    let a = t.conn(0);
    let b = t.conn(0);
    t.write(a, "/u/x", "0");
    t.write(a, "/v/y", "0");
    let id = start(&mut t, a);
    t.ok(a, Read, id, &z(&["/u/x"]));
    t.ok(a, Write, id, &wv("/u/x", "1"));
    t.write(b, "/v/y", "1");
    t.ok(a, TransactionEnd, id, &z(&["T"]));
    assert_eq!(t.read(b, "/u/x").unwrap(), "1");
}

#[test]
fn creating_a_node_another_commit_also_created_conflicts() {
    let mut t = T::new();
    let a = t.conn(0);
    let b = t.conn(0);
    t.write(a, "/n", "");
    let id = start(&mut t, a);
    t.ok(a, Write, id, &wv("/n/x", "tx"));
    t.write(b, "/n/y", "outside");
    // The transaction read /n (the parent it added a child to), which changed.
    assert_eq!(t.err(a, TransactionEnd, id, &z(&["T"])), "EAGAIN");
    assert_eq!(t.ok(a, Directory, 0, &z(&["/n"])), z(&["y"]));
}

#[test]
fn transaction_errors() {
    let mut t = T::new();
    let a = t.conn(0);
    let id = start(&mut t, a);
    assert_eq!(t.err(a, TransactionStart, id, &z(&[""])), "EBUSY", "no nesting");
    assert_eq!(t.err(a, Read, id + 100, &z(&["/"])), "ENOENT", "unknown id");
    assert_eq!(t.err(a, TransactionEnd, 0, &z(&["T"])), "ENOENT");
    assert_eq!(t.err(a, TransactionEnd, id, &z(&["X"])), "EINVAL");
    // Another connection cannot use this id.
    let b = t.conn(0);
    assert_eq!(t.err(b, Read, id, &z(&["/"])), "ENOENT");
    // Ids are distinct.
    let id2 = start(&mut t, a);
    assert_ne!(id, id2);
    t.ok(a, TransactionEnd, id, &z(&["F"]));
    t.ok(a, TransactionEnd, id2, &z(&["F"]));
}

#[test]
fn rm_and_directory_inside_a_transaction() {
    let mut t = T::new();
    let a = t.conn(0);
    t.write(a, "/rt/a/b", "");
    t.write(a, "/rt/c", "");
    let base = t.s.tree().len();
    let id = start(&mut t, a);
    t.ok(a, Rm, id, &z(&["/rt/a"]));
    assert_eq!(t.ok(a, Directory, id, &z(&["/rt"])), z(&["c"]));
    assert_eq!(t.ok(a, Directory, 0, &z(&["/rt"])), z(&["a", "c"]));
    assert_eq!(t.err(a, Read, id, &z(&["/rt/a/b"])), "ENOENT");
    t.ok(a, TransactionEnd, id, &z(&["T"]));
    assert_eq!(t.s.tree().len(), base - 2);
    assert!(t.s.tree().check().is_ok());
}

#[test]
fn reset_watches_drops_watches_and_transactions() {
    let mut t = T::new();
    let a = t.conn(0);
    t.watch(a, "/rw", "t");
    let id = start(&mut t, a);
    t.ok(a, ResetWatches, 0, &z(&[""]));
    t.events(a);
    t.write(a, "/rw", "1");
    assert!(t.events(a).is_empty());
    assert_eq!(t.err(a, Read, id, &z(&["/"])), "ENOENT");
}

// ---- quotas -------------------------------------------------------------------------------

#[test]
fn node_quota_applies_to_guests_only() {
    let mut t = T::new();
    let d0 = t.conn(0);
    t.s.create_guest_nodes(&GuestSpec::domain1(1, 1, 2, 2)).unwrap();
    let g = t.conn(1);
    let owned = t.s.tree().owned_by(1) as usize;
    t.ok(d0, SetQuota, 0, &z(&["1", "nodes", &(owned + 3).to_string()]));
    assert_eq!(t.ok(d0, GetQuota, 0, &z(&["1", "nodes"])), z(&[&(owned + 3).to_string()]));
    // Three more nodes fit exactly; a fourth does not, and a write needing two fails whole.
    t.write(g, "data/a", "");
    t.write(g, "data/b", "");
    assert_eq!(t.err(g, Write, 0, &wv("data/c/d", "")), "ENOSPC");
    assert_eq!(t.read(g, "data/c"), Err("ENOENT".into()));
    t.write(g, "data/c", "");
    assert_eq!(t.err(g, Write, 0, &wv("data/e", "")), "ENOSPC");
    assert_eq!(t.err(g, Mkdir, 0, &z(&["data/e"])), "ENOSPC");
    // Overwriting is fine; removing frees room.
    t.write(g, "data/a", "x");
    t.ok(g, Rm, 0, &z(&["data/a"]));
    t.write(g, "data/e", "");
    // dom0 has no quota.
    t.ok(d0, SetQuota, 0, &z(&["nodes", "1"]));
    for i in 0..5 {
        t.write(d0, &format!("/many/{i}"), "");
    }
}

#[test]
fn default_quotas_match_c_xenstored() {
    let mut t = T::new();
    let d0 = t.conn(0);
    for (name, v) in [
        ("nodes", "1000"),
        ("watches", "128"),
        ("transactions", "10"),
        ("transaction-nodes", "1024"),
        ("node-permissions", "5"),
        ("node-size", "2048"),
        ("outstanding", "20"),
    ] {
        assert_eq!(t.ok(d0, GetQuota, 0, &z(&[name])), z(&[v]), "{name}");
    }
    let names = t.ok(d0, GetQuota, 0, b"");
    assert!(String::from_utf8(names).unwrap().starts_with("nodes watches outstanding"));
    assert_eq!(t.err(d0, GetQuota, 0, &z(&["bogus"])), "EINVAL");
    assert_eq!(t.err(d0, SetQuota, 0, &z(&["bogus", "1"])), "EINVAL");
}

#[test]
fn node_size_quota() {
    let mut t = T::new();
    let d0 = t.conn(0);
    let g = t.conn(1);
    t.write(d0, "/big", "");
    t.ok(d0, SetPerms, 0, &z(&["/big", "b0"]));
    t.write(g, "/big/ok", &"x".repeat(2048));
    assert_eq!(t.err(g, Write, 0, &wv("/big/ok", &"x".repeat(2049))), "ENOSPC");
    assert_eq!(t.err(g, Write, 0, &wv("/big/new", &"x".repeat(2049))), "ENOSPC");
    t.write(d0, "/big/dom0", &"x".repeat(4000));
}

#[test]
fn watch_and_transaction_quotas() {
    let mut t = T::new();
    let g = t.conn(1);
    for i in 0..128 {
        t.watch(g, &format!("/w{i}"), "t");
    }
    assert_eq!(t.err(g, Watch, 0, &z(&["/w128", "t"])), "ENOSPC");
    let ids: Vec<u32> = (0..10).map(|_| start(&mut t, g)).collect();
    assert_eq!(t.err(g, TransactionStart, 0, &z(&[""])), "ENOSPC");
    t.ok(g, TransactionEnd, ids[0], &z(&["F"]));
    start(&mut t, g);
    let d0 = t.conn(0);
    for _ in 0..20 {
        start(&mut t, d0);
    }
}

#[test]
fn transaction_node_quota_fails_the_transaction() {
    let mut t = T::new();
    let d0 = t.conn(0);
    let g = t.conn(1);
    t.ok(d0, SetQuota, 0, &z(&["1", "transaction-nodes", "3"]));
    let id = start(&mut t, g);
    // Reading /a touches /a and then its ancestor / (for the ENOENT-or-EACCES decision).
    assert_eq!(t.err(g, Read, id, &z(&["/x1"])), "EACCES");
    t.err(g, Read, id, &z(&["/x2"]));
    assert_eq!(t.err(g, Read, id, &z(&["/x3"])), "ENOSPC");
    assert_eq!(t.err(g, TransactionEnd, id, &z(&["T"])), "ENOMEM", "C xenstored's answer for a failed transaction");
}

#[test]
fn path_length_quota_for_guests() {
    let mut t = T::new();
    let d0 = t.conn(0);
    let g = t.conn(1);
    assert_eq!(t.err(g, Write, 0, &wv(&"a".repeat(2049), "")), "EINVAL");
    // dom0 is held only to the absolute maximum.
    t.write(d0, &format!("/{}", "a".repeat(3000)), "");
    assert_eq!(t.err(d0, Write, 0, &wv(&format!("/{}", "a".repeat(3072)), "")), "EINVAL");
}

#[test]
fn outstanding_quota_throttles_a_guest() {
    let mut t = T::new();
    let g = t.conn(1);
    let d0 = t.conn(0);
    for i in 0..20 {
        assert!(t.s.can_accept(g), "request {i}");
        t.s.handle(g, &Packet::new(Read, i, 0, z(&["/"])));
    }
    assert!(!t.s.can_accept(g));
    t.s.pop_output(g);
    assert!(t.s.can_accept(g));
    for i in 0..50 {
        t.s.handle(d0, &Packet::new(Read, i, 0, z(&["/"])));
    }
    assert!(t.s.can_accept(d0));
}

// ---- domains, features, control ------------------------------------------------------------

#[test]
fn domain_path_and_features() {
    let mut t = T::new();
    let d0 = t.conn(0);
    assert_eq!(t.ok(d0, GetDomainPath, 0, &z(&["7"])), z(&["/local/domain/7"]));
    assert_eq!(t.err(d0, GetDomainPath, 0, &z(&["70000"])), "EINVAL");
    assert_eq!(t.ok(d0, GetFeature, 0, b""), z(&["15"]));
    t.ok(d0, SetFeature, 0, &z(&["4", "3"]));
    assert_eq!(t.ok(d0, GetFeature, 0, &z(&["4"])), z(&["3"]));
    assert_eq!(t.err(d0, SetFeature, 0, &z(&["4", "16"])), "EINVAL");
    let g4 = t.conn(4);
    assert_eq!(t.ok(g4, GetFeature, 0, b""), z(&["3"]));
    // Without the watch-depth feature a third WATCH argument is invalid.
    assert_eq!(t.err(g4, Watch, 0, &z(&["/x", "t", "1"])), "EINVAL");
    assert_eq!(t.err(d0, SetFeature, 0, &z(&["4", "1"])), "EBUSY", "already introduced");
}

#[test]
fn control_commands() {
    let mut t = T::new();
    let d0 = t.conn(0);
    let help = String::from_utf8(t.ok(d0, Control, 0, &z(&["help"]))).unwrap();
    for cmd in ["check", "quota", "help"] {
        assert!(help.lines().any(|l| l.starts_with(cmd)), "{help}");
    }
    assert_eq!(t.ok(d0, Control, 0, &z(&["check"])), b"OK\0");
    let q = String::from_utf8(t.ok(d0, Control, 0, &z(&["quota"]))).unwrap();
    assert!(q.contains("nodes") && q.contains("1000"), "{q}");
    t.ok(d0, Control, 0, &z(&["quota", "set", "watches", "7"]));
    assert_eq!(t.ok(d0, GetQuota, 0, &z(&["watches"])), z(&["7"]));
    let g = t.conn(2);
    t.watch(g, "/q", "t");
    let rep = String::from_utf8(t.ok(d0, Control, 0, &z(&["quota", "2"]))).unwrap();
    assert!(rep.starts_with("Domain 2:\n"), "{rep}");
    assert!(rep.lines().any(|l| l.starts_with("watches") && l.trim_end().ends_with(" 1")), "{rep}");
    assert_eq!(t.err(d0, Control, 0, &z(&["quota", "9"])), "ENOENT");
    assert_eq!(t.err(d0, Control, 0, &z(&["nonsense"])), "EINVAL");
}

// ---- the initial guest tree ------------------------------------------------------------------

#[test]
fn initial_guest_tree_matches_libxl() {
    let mut t = T::new();
    let d0 = t.conn(0);
    t.s.create_guest_nodes(&GuestSpec::domain1(0xfeffc, 3, 0xfeffd, 4)).unwrap();
    let g = t.conn(1);
    for (p, v) in [
        ("/local/domain/1/domid", "1"),
        ("/local/domain/1/name", "guest"),
        ("/local/domain/1/vm", "/vm/00000000-0000-0000-0000-000000000001"),
        ("/local/domain/1/store/port", "3"),
        ("/local/domain/1/store/ring-ref", &0xfeffcu64.to_string()),
        ("/local/domain/1/console/port", "4"),
        ("/local/domain/1/console/ring-ref", &0xfeffdu64.to_string()),
        ("/local/domain/1/console/type", "xenconsoled"),
        ("/local/domain/1/console/limit", "1048576"),
        ("/local/domain/1/control/platform-feature-xs_reset_watches", "1"),
        ("/local/domain/1/control/platform-feature-multiprocessor-suspend", "1"),
        ("/vm/00000000-0000-0000-0000-000000000001/name", "guest"),
    ] {
        assert_eq!(t.read(d0, p).unwrap(), v, "{p}");
        assert_eq!(t.read(g, p).unwrap(), v, "guest can read {p}");
    }
    let perms = |t: &mut T, p: &str| String::from_utf8(t.ok(d0, GetPerms, 0, &z(&[p]))).unwrap().replace('\0', " ");
    assert_eq!(perms(&mut t, "/local/domain/1"), "n0 r1 ");
    assert_eq!(perms(&mut t, "/local/domain/1/domid"), "n0 r1 ");
    for p in [
        "control/shutdown",
        "control/feature-poweroff",
        "data",
        "device/suspend/event-channel",
        "error",
        "attr",
        "drivers",
    ] {
        assert_eq!(perms(&mut t, &format!("/local/domain/1/{p}")), "n1 ", "{p}");
    }
    // The guest writes what it owns, not what dom0 owns.
    t.write(g, "control/feature-poweroff", "1");
    t.write(g, "data/anything", "1");
    t.write(g, "device/suspend/event-channel", "5");
    assert_eq!(t.err(g, Write, 0, &wv("device/vbd/51712/state", "1")), "EACCES", "device/ is dom0's");
    assert_eq!(t.err(g, Write, 0, &wv("name", "evil")), "EACCES");
    assert_eq!(t.err(g, Write, 0, &wv("newtop", "x")), "EACCES");
    assert_eq!(t.err(g, Write, 0, &wv("/local/domain/0/name", "x")), "EACCES");
    assert_eq!(t.read(g, "/local/domain/0/name"), Err("EACCES".into()));
    assert_eq!(t.ok(d0, Directory, 0, &z(&["/"])), z(&["libxl", "local", "tool", "vm"]));
    assert!(t.s.tree().check().is_ok());
}

// ---- snapshots ------------------------------------------------------------------------------

#[test]
fn serialize_round_trip_in_the_middle_of_transactions() {
    let mut t = T::new();
    let d0 = t.conn(0);
    t.s.create_guest_nodes(&GuestSpec::domain1(1, 2, 3, 4)).unwrap();
    let g = t.conn(1);
    t.watch(d0, "/local/domain/1", "w");
    t.ok(g, Watch, 0, &z(&["data", "gw", "2"]));
    t.ok(d0, SetQuota, 0, &z(&["1", "nodes", "500"]));
    let id = start(&mut t, g);
    t.ok(g, Write, id, &wv("data/in-tx", "1"));
    t.ok(g, Read, id, &z(&["domid"]));
    // Leave undelivered output on the guest connection.
    t.events(d0);
    t.events(g);
    t.s.handle(g, &Packet::new(Read, 99, 0, z(&["domid"])));

    let bytes = rmp_serde::to_vec(&t.s).unwrap();
    let back: Store = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(back, t.s);
    assert_eq!(rmp_serde::to_vec(&back).unwrap(), bytes, "re-serializing gives the same bytes");

    // Both copies behave the same from here on.
    let mut t2 = T { s: back, req_id: t.req_id, events: BTreeMap::new() };
    let r1 = t.drain(g);
    let r2 = t2.drain(g);
    assert_eq!(r1, r2);
    for tt in [&mut t, &mut t2] {
        tt.ok(g, Write, id, &wv("data/in-tx2", "2"));
        tt.ok(g, TransactionEnd, id, &z(&["T"]));
    }
    assert_eq!(t.s, t2.s);
    assert_eq!(t.events(d0), t2.events(d0));
    assert_eq!(t.events(g), t2.events(g));
    assert_eq!(t.read(d0, "/local/domain/1/data/in-tx").unwrap(), "1");
}

#[test]
fn deleting_a_node_a_transaction_read_conflicts() {
    let mut t = T::new();
    let a = t.conn(0);
    let b = t.conn(0);
    t.write(a, "/del/x", "1");
    let id = start(&mut t, a);
    t.ok(a, Read, id, &z(&["/del/x"]));
    t.ok(a, Write, id, &wv("/del/y", "2"));
    t.ok(b, Rm, 0, &z(&["/del/x"]));
    assert_eq!(t.err(a, TransactionEnd, id, &z(&["T"])), "EAGAIN");
}

#[test]
fn rm_inside_a_transaction_fires_at_commit() {
    let mut t = T::new();
    let a = t.conn(0);
    let w = t.conn(0);
    t.write(a, "/rmt/a/b", "");
    t.watch(w, "/rmt", "anc");
    t.watch(w, "/rmt/a/b", "leaf");
    t.events(w);
    let id = start(&mut t, a);
    t.ok(a, Rm, id, &z(&["/rmt/a"]));
    assert!(t.events(w).is_empty());
    t.ok(a, TransactionEnd, id, &z(&["T"]));
    let mut got = t.events(w);
    got.sort();
    assert_eq!(got, T::ev(&[("/rmt/a", "anc"), ("/rmt/a/b", "leaf")]));
}

#[test]
fn watch_on_a_parent_created_by_a_write_fires_once_with_the_target() {
    let mut t = T::new();
    let a = t.conn(0);
    t.watch(a, "/cp/mid", "m");
    t.events(a);
    t.write(a, "/cp/mid/leaf", "");
    assert_eq!(t.events(a), T::ev(&[("/cp/mid/leaf", "m")]));
}

#[test]
fn node_quota_is_checked_again_at_commit() {
    let mut t = T::new();
    let d0 = t.conn(0);
    let g = t.conn(1);
    t.write(d0, "/q", "");
    t.ok(d0, SetPerms, 0, &z(&["/q", "b0"]));
    t.ok(d0, SetQuota, 0, &z(&["1", "nodes", "2"]));
    let id = start(&mut t, g);
    t.ok(g, Write, id, &wv("/q/t1", ""));
    // Outside the transaction the guest fills its quota.
    t.write(g, "/q/o1", "");
    t.write(g, "/q/o2", "");
    assert_eq!(t.err(g, TransactionEnd, id, &z(&["T"])), "ENOSPC");
    assert_eq!(t.read(d0, "/q/t1"), Err("ENOENT".into()));
}
