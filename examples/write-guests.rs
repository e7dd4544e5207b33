//! Write the built-in guest images to a directory, e.g. to boot them under
//! another emulator for comparison:
//! `cargo run --example write-guests -- DIR`, then
//! `qemu-system-x86_64 -kernel DIR/demo.elf -debugcon stdio -display none`.

use xensim::guest::programs;
use xensim::guest::xen::{self, HypercallEntry};
use xensim::guest::Boot;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).ok_or("usage: write-guests DIR")?);
    std::fs::create_dir_all(&dir)?;
    let images = [
        ("demo.elf", programs::demo()?),
        ("pvh32_basics.elf", programs::pvh32_basics()?),
        ("pvh64_start_info.elf", programs::pvh64_start_info()?),
        ("multiboot_info.elf", programs::multiboot_info(Boot::Multiboot)?),
        ("multiboot_info_aout.bin", programs::multiboot_info(Boot::MultibootAout)?),
        ("bench_alu.elf", programs::bench_alu(1_000_000)?),
        ("bench_memcpy.elf", programs::bench_memcpy(1 << 20, 10)?),
        ("bench_alu_small.elf", programs::bench_alu(1000)?),
        ("bench_memcpy_small.elf", programs::bench_memcpy(1000, 3)?),
        // Xen guests through the hypercall page (they run on KVM too); the
        // second reads no TSC, so a KVM recording of it replays.
        ("xen_events_page.elf", xen::xen_events_via(HypercallEntry::Page)?),
        ("xen_events_page_no_rdtsc.elf", xen::xen_events_without_rdtsc(HypercallEntry::Page)?),
    ];
    for (name, bytes) in images {
        std::fs::write(dir.join(name), bytes)?;
        println!("{}", dir.join(name).display());
    }
    Ok(())
}
