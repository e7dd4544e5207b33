//! The nodes a toolstack (libxl's libxl__domain_make, libxl__build_post and the console
//! device) writes for a new guest, with the same owners and permissions:
//! "n0 r1" (dom0 owns, the guest reads) for what the guest must not change, "n<domid>"
//! (the guest owns) for what it writes.

use super::error::XsResult;
use super::wire::MsgType;
use super::Store;

/// LIBXL_XENCONSOLE_LIMIT.
const CONSOLE_LIMIT: u32 = 1_048_576;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestSpec {
    pub domid: u16,
    pub name: String,
    /// Canonical UUID text, e.g. "00000000-0000-0000-0000-000000000001".
    pub uuid: String,
    pub vcpus: u32,
    pub memory_kb: u64,
    pub store_port: u32,
    /// Guest frame of the xenstore ring (store/ring-ref).
    pub store_gfn: u64,
    pub console_port: u32,
    /// Guest frame of the console ring (console/ring-ref).
    pub console_gfn: u64,
}

impl GuestSpec {
    /// Domain 1 as the simulator boots it, given its ring frames and ports.
    pub fn domain1(store_gfn: u64, store_port: u32, console_gfn: u64, console_port: u32) -> Self {
        GuestSpec {
            domid: 1,
            name: "guest".to_owned(),
            uuid: "00000000-0000-0000-0000-000000000001".to_owned(),
            vcpus: 1,
            memory_kb: 0,
            store_port,
            store_gfn,
            console_port,
            console_gfn,
        }
    }
}

impl Store {
    /// Writes the guest's initial tree as dom0 (watches fire as they would for libxl).
    /// Does not introduce the domain: call [`Store::introduce_domain`] for that.
    pub fn create_guest_nodes(&mut self, g: &GuestSpec) -> XsResult<()> {
        let conn = self.connect(0);
        let r = write_guest_nodes(self, conn, g);
        self.disconnect(conn);
        r
    }
}

fn write_guest_nodes(s: &mut Store, conn: super::ConnId, g: &GuestSpec) -> XsResult<()> {
    let d = g.domid;
    let dom = format!("/local/domain/{d}");
    let vm = format!("/vm/{}", g.uuid);
    let libxl = format!("/libxl/{d}");
    let ro = format!("n0\0r{d}\0");
    let rw = format!("n{d}\0");
    let n0 = "n0\0".to_owned();

    let mut nodes: Vec<(String, String, Option<String>)> = Vec::new();
    let mut node = |path: String, value: String, perms: Option<&String>| nodes.push((path, value, perms.cloned()));

    node(dom.clone(), String::new(), Some(&ro));
    node(vm.clone(), String::new(), Some(&ro));
    node(libxl.clone(), String::new(), Some(&n0));
    node(format!("{libxl}/device"), String::new(), Some(&n0));
    node(format!("{dom}/vm"), vm.clone(), None);
    node(format!("{dom}/name"), g.name.clone(), None);
    node(format!("{vm}/name"), g.name.clone(), None);
    node(format!("{dom}/cpu"), String::new(), Some(&ro));
    node(format!("{dom}/memory"), String::new(), Some(&ro));
    node(format!("{dom}/device"), String::new(), Some(&ro));
    node(format!("{dom}/device/suspend/event-channel"), String::new(), Some(&rw));
    node(format!("{dom}/control"), String::new(), Some(&ro));
    for c in ["shutdown", "feature-poweroff", "feature-reboot", "feature-suspend", "sysrq"] {
        node(format!("{dom}/control/{c}"), String::new(), Some(&rw));
    }
    for c in ["data", "drivers", "feature", "attr", "error"] {
        node(format!("{dom}/{c}"), String::new(), Some(&rw));
    }
    node(format!("{vm}/uuid"), g.uuid.clone(), None);
    node(format!("{dom}/control/platform-feature-multiprocessor-suspend"), "1".into(), None);
    node(format!("{dom}/control/platform-feature-xs_reset_watches"), "1".into(), None);
    node(format!("{libxl}/type"), "pvh".into(), None);
    // libxl__build_post
    node(format!("{dom}/memory/static-max"), g.memory_kb.to_string(), None);
    node(format!("{dom}/memory/target"), g.memory_kb.to_string(), None);
    node(format!("{dom}/memory/videoram"), "0".into(), None);
    node(format!("{dom}/domid"), d.to_string(), None);
    node(format!("{dom}/store/port"), g.store_port.to_string(), None);
    node(format!("{dom}/store/ring-ref"), g.store_gfn.to_string(), None);
    for i in 0..g.vcpus {
        node(format!("{dom}/cpu/{i}/availability"), "online".into(), None);
    }
    // Console 0: the directory and its read-only entries are dom0's; backend-id is the guest's.
    node(format!("{dom}/console"), String::new(), Some(&ro));
    let front = format!("n{d}\0r0\0");
    node(format!("{dom}/console/backend-id"), "0".into(), Some(&front));
    for (k, v) in [
        ("limit", CONSOLE_LIMIT.to_string()),
        ("type", "xenconsoled".to_owned()),
        ("output", "pty".to_owned()),
        ("tty", String::new()),
        ("port", g.console_port.to_string()),
        ("ring-ref", g.console_gfn.to_string()),
    ] {
        node(format!("{dom}/console/{k}"), v, Some(&ro));
    }

    for (path, value, perms) in &nodes {
        let mut payload = path.as_bytes().to_vec();
        payload.push(0);
        payload.extend_from_slice(value.as_bytes());
        s.call(conn, MsgType::Write, 0, &payload)?;
        if let Some(p) = perms {
            let mut payload = path.as_bytes().to_vec();
            payload.push(0);
            payload.extend_from_slice(p.as_bytes());
            s.call(conn, MsgType::SetPerms, 0, &payload)?;
        }
    }
    Ok(())
}
