//! Prints the xenstore benchmark figures: `cargo run --release -p xen-model --example xenstore_bench`.

use xen_model::xenstore::bench::{bench_ops, bench_socket_rtt};

fn main() -> std::io::Result<()> {
    let r = bench_ops(2_000_000);
    println!("xenstore-ops-per-s {:.0}", r.ops_per_s());
    let rtt = bench_socket_rtt(20_000)?;
    println!("xenstore-socket-rtt-us {:.2}", rtt.as_secs_f64() * 1e6);
    Ok(())
}
