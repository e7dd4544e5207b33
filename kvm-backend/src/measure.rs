//! Exit round-trip measurements for `xensim bench --backend kvm`: a bare
//! vCPU loops on one instruction that exits, and the mean wall time per
//! exit (KVM_RUN, exit decoding, completion) is reported in microseconds.

use std::sync::Arc;
use std::time::Instant;

use sim_core::cpuid::{CpuidTable, Vendor};
use sim_core::layout::HYPERCALL_PORT;
use sim_core::memory::GuestMemory;
use sim_core::state::ArchState;
use sim_core::vcpu::{Completion, VcpuExit};

use crate::error::KvmError;
use crate::vm::KvmVm;

const CODE: u64 = 0x1000;

/// `OUT 0x80, AL; JMP $-2`: one PIO exit per iteration.
const PIO_LOOP: [u8; 4] = [0xe6, 0x80, 0xeb, 0xfc];

/// Mean microseconds per PIO exit round trip over `iterations` exits.
pub fn pio_exit_rtt_us(iterations: u32) -> Result<f64, KvmError> {
    rtt(&PIO_LOOP, iterations, VcpuExit::IoOut { port: 0x80, size: 1, data: 0 })
}

/// Mean microseconds per port-stub hypercall round trip (`OUT
/// HYPERCALL_PORT, AL` reported as `VcpuExit::Hypercall`).
pub fn hypercall_rtt_us(iterations: u32) -> Result<f64, KvmError> {
    let code = [0xe6, HYPERCALL_PORT as u8, 0xeb, 0xfc];
    rtt(&code, iterations, VcpuExit::Hypercall)
}

fn rtt(code: &[u8], iterations: u32, want: VcpuExit) -> Result<f64, KvmError> {
    let vm = KvmVm::new()?;
    let mem = GuestMemory::new(2).map_err(|e| KvmError::Unsupported(e.to_string()))?;
    mem.write(CODE, code).map_err(|e| KvmError::Unsupported(e.to_string()))?;
    let mut v = KvmVm::create_vcpu(&vm, 0, 1, Arc::new(CpuidTable::baseline(Vendor::Intel)))
        .map_err(|e| KvmError::Unsupported(e.to_string()))?;
    v.set_state(&ArchState::pvh_entry(CODE, 0));
    let n = iterations.max(1);
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let exit = v.run(&mem, u64::MAX).map_err(|e| KvmError::Unsupported(e.to_string()))?;
        match exit {
            VcpuExit::BudgetExhausted => continue,
            VcpuExit::IoOut { .. } => v.complete(Completion::Done),
            _ => {}
        }
        let same = matches!((exit, want), (VcpuExit::IoOut { .. }, VcpuExit::IoOut { .. })) || exit == want;
        if !same {
            return Err(KvmError::Unsupported(format!("measurement guest exited with {exit:?}")));
        }
        done += 1;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / n as f64)
}
