//! Errors of the KVM backend; each names the ioctl or step that failed.

use sim_core::vcpu::VcpuError;

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// An ioctl failed; `what` names it (e.g. "KVM_CREATE_VM").
    #[error("{what} failed: {source}")]
    Ioctl { what: &'static str, source: std::io::Error },
    /// The host's KVM lacks something the backend needs.
    #[error("KVM on this host cannot be used: {0}")]
    Unsupported(String),
    /// KVM's instruction emulator gave up (KVM_INTERNAL_ERROR_EMULATION);
    /// hosts that emulate every instruction lack many (x87, most SSE).
    #[error("KVM could not emulate the guest instruction at RIP {rip:#x} (bytes {bytes:02x?})")]
    Emulation { rip: u64, bytes: Vec<u8> },
}

impl KvmError {
    pub(crate) fn ioctl(what: &'static str, e: kvm_ioctls::Error) -> Self {
        KvmError::Ioctl { what, source: std::io::Error::from_raw_os_error(e.errno()) }
    }
}

impl From<KvmError> for VcpuError {
    fn from(e: KvmError) -> Self {
        VcpuError::Backend(e.to_string())
    }
}
