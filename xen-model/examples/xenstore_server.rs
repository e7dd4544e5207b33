//! A stand-alone xenstore on a Unix socket, as `xensim xenstore --socket PATH` will run it:
//! `cargo run -p xen-model --example xenstore_server -- /tmp/xs.sock`, then
//! `XENSTORED_PATH=/tmp/xs.sock xenstore-ls`.

use std::path::PathBuf;

use xen_model::xenstore::{socket::serve_forever, Store};

fn main() {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: xenstore_server SOCKET-PATH");
        std::process::exit(2);
    };
    if let Err(e) = serve_forever(&path, Store::new()) {
        eprintln!("xenstore: {e}");
        std::process::exit(1);
    }
}
