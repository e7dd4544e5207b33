//! Debian's real xenstore clients (xenstore-utils, python3-pyxs) against the socket server.
//! CI installs them with `apt-get install -y xenstore-utils python3-pyxs`; without them
//! these tests fail and say so.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use xen_model::xenstore::socket::{spawn_server, ServerHandle};
use xen_model::xenstore::Store;

const INSTALL: &str = "install the real clients: apt-get install -y xenstore-utils python3-pyxs";

fn tool(name: &str) -> PathBuf {
    let p = Path::new("/usr/bin").join(name);
    assert!(p.exists(), "{} not found; {INSTALL}", p.display());
    p
}

struct Server {
    _dir: tempfile::TempDir,
    path: PathBuf,
    handle: Option<ServerHandle>,
}

impl Server {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let handle = spawn_server(&path, Store::new()).unwrap();
        Server { _dir: dir, path, handle: Some(handle) }
    }

    fn cmd(&self, name: &str) -> Command {
        let mut c = Command::new(tool(name));
        c.env("XENSTORED_PATH", &self.path).env_remove("XENSTORED_RUNDIR");
        c
    }

    fn run(&self, name: &str, args: &[&str]) -> Output {
        self.cmd(name).args(args).output().unwrap()
    }

    /// Runs a tool that must succeed; returns its stdout.
    fn ok(&self, name: &str, args: &[&str]) -> String {
        let o = self.run(name, args);
        assert!(o.status.success(), "{name} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop().unwrap();
        }
    }
}

#[test]
fn xenstore_utils_write_read_list_ls_rm() {
    let s = Server::start();
    // Several pairs: the tool wraps them in a transaction.
    s.ok("xenstore-write", &["/t/a", "1", "/t/b", "two words"]);
    assert_eq!(s.ok("xenstore-read", &["/t/a", "/t/b"]), "1\ntwo words\n");
    assert_eq!(s.ok("xenstore-list", &["/t"]), "a\nb\n");
    assert_eq!(s.ok("xenstore-ls", &["/t"]), "a = \"1\"\nb = \"two words\"\n");
    // The whole tree, indented one space per level, children sorted.
    let all = s.ok("xenstore-ls", &[]);
    assert!(all.starts_with("local = \"\"\n domain = \"\"\n  0 = \"\"\n   domid = \"0\"\n"), "{all}");
    assert!(all.contains("\nt = \"\"\n a = \"1\"\n b = \"two words\"\n"), "{all}");
    assert!(s.run("xenstore-exists", &["/t/a"]).status.success());
    assert!(!s.run("xenstore-exists", &["/t/zz"]).status.success());
    s.ok("xenstore-rm", &["/t/a"]);
    let o = s.run("xenstore-read", &["/t/a"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("couldn't read path /t/a"));
    assert_eq!(s.ok("xenstore-list", &["/t"]), "b\n");
}

#[test]
fn xenstore_chmod_sets_permissions() {
    let s = Server::start();
    s.ok("xenstore-write", &["/c/k", "v"]);
    s.ok("xenstore-chmod", &["/c/k", "n0", "r5", "b7"]);
    let ls = s.ok("xenstore-ls", &["-p", "/c"]);
    assert!(ls.starts_with("k = \"v\""), "{ls}");
    assert!(ls.trim_end().ends_with("(n0,r5,b7)"), "{ls}");
}

#[test]
fn xenstore_watch_reports_registration_and_changes() {
    let s = Server::start();
    let mut child = s.cmd("xenstore-watch").args(["-n", "2", "/w"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    // The first event is the registration itself: once it is printed the watch is set.
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "/w\n");
    s.ok("xenstore-write", &["/w/x/y", "1"]);
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "/w/x/y\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success());
            break;
        }
        assert!(Instant::now() < deadline, "xenstore-watch -n 2 did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

const PYXS_SCRIPT: &str = r#"
import sys
from pyxs import Client
with Client(unix_socket_path=sys.argv[1]) as c:
    c.write(b"/py/k", b"v")
    print(c.read(b"/py/k").decode())
    c.mkdir(b"/py/dir")
    print(",".join(x.decode() for x in c.list(b"/py")))
    c.set_perms(b"/py/k", [b"n0", b"r3"])
    print(",".join(x.decode() for x in c.get_perms(b"/py/k")))
    print(c.get_domain_path(3).decode())
    c.transaction()
    c.write(b"/py/tx", b"committed")
    c.commit()
    print(c.read(b"/py/tx").decode())
    print(c.exists(b"/py/nope"))
    m = c.monitor()
    m.watch(b"/py/w", b"tok")
    ev = next(m.wait())
    print("event", ev.path.decode(), ev.token.decode())
    c.write(b"/py/w/child", b"1")
    ev = next(m.wait())
    print("event", ev.path.decode(), ev.token.decode())
    c.delete(b"/py")
    print(c.exists(b"/py"))
"#;

#[test]
fn pyxs_client() {
    let s = Server::start();
    // Debian's python3-pyxs lives in the system interpreter's dist-packages.
    let py = Path::new("/usr/bin/python3");
    assert!(py.exists(), "/usr/bin/python3 not found; {INSTALL}");
    let probe = Command::new(py).args(["-c", "import pyxs"]).output().unwrap();
    assert!(probe.status.success(), "python module pyxs not importable; {INSTALL}");
    let o = Command::new(py).arg("-c").arg(PYXS_SCRIPT).arg(&s.path).output().unwrap();
    assert!(o.status.success(), "pyxs script failed: {}", String::from_utf8_lossy(&o.stderr));
    let want = "v\ndir,k\nn0,r3\n/local/domain/3\ncommitted\nFalse\nevent /py/w tok\nevent /py/w/child tok\nFalse\n";
    assert_eq!(String::from_utf8(o.stdout).unwrap(), want);
}
