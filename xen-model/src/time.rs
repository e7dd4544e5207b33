//! Xen time for the guest (xen/include/public/xen.h, vcpu.h): the pvclock
//! record in each vcpu_info (and a guest-registered copy), the wallclock in
//! shared_info, and vCPU runstate accounting.
//!
//! System time is machine time (virtual ns since power-on) and the guest's
//! TSC is `clock::ns_to_tsc` of it, so one record extrapolates exactly.

use sim_core::clock;

/// XEN_PVCLOCK_TSC_STABLE_BIT: the TSC is synchronised across vCPUs.
pub const PVCLOCK_TSC_STABLE: u8 = 1;
/// Size of vcpu_time_info.
pub const TIME_INFO_SIZE: usize = 32;

/// TSC-to-ns scale: ns = ((tsc << shift) * mul) >> 32 (a negative shift
/// shifts right). Xen's set_time_scale: normalise the rate into
/// (1e9, 2e9] by halving/doubling, then mul = 1e9 * 2^32 / rate.
pub fn time_scale(tsc_hz: u64) -> (u32, i8) {
    const NS: u64 = 1_000_000_000;
    let mut rate = tsc_hz.max(1);
    let mut shift: i8 = 0;
    while rate > 2 * NS {
        rate >>= 1;
        shift -= 1;
    }
    while rate <= NS {
        rate <<= 1;
        shift += 1;
    }
    (((NS << 32) / rate) as u32, shift)
}

/// Apply a pvclock scale to a TSC delta (what the guest computes).
pub fn scale_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    let d = if shift >= 0 { delta << shift } else { delta >> (-shift) };
    ((d as u128 * mul as u128) >> 32) as u64
}

/// The vcpu_time_info bytes for machine time `now_ns` with `version`.
pub fn time_info(version: u32, now_ns: u64) -> [u8; TIME_INFO_SIZE] {
    let (mul, shift) = time_scale(clock::TSC_HZ);
    let mut b = [0u8; TIME_INFO_SIZE];
    b[0..4].copy_from_slice(&version.to_le_bytes());
    b[8..16].copy_from_slice(&clock::ns_to_tsc(now_ns).to_le_bytes());
    b[16..24].copy_from_slice(&now_ns.to_le_bytes());
    b[24..28].copy_from_slice(&mul.to_le_bytes());
    b[28] = shift as u8;
    b[29] = PVCLOCK_TSC_STABLE;
    b
}

/// Runstates (vcpu.h RUNSTATE_*).
pub mod runstate {
    pub const RUNNING: u32 = 0;
    pub const RUNNABLE: u32 = 1;
    pub const BLOCKED: u32 = 2;
    pub const OFFLINE: u32 = 3;
}

/// XEN_RUNSTATE_UPDATE in state_entry_time (VMASST_TYPE_runstate_update_flag).
pub const RUNSTATE_UPDATE: u64 = 1 << 63;

/// One vCPU's runstate accounting (vcpu_runstate_info).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Runstate {
    pub state: u32,
    pub entry_time: u64,
    pub time: [u64; 4],
}

impl Runstate {
    pub fn new(state: u32, now: u64) -> Self {
        Runstate { state, entry_time: now, time: [0; 4] }
    }

    /// Enter `state` at `now`, charging the time since the last change.
    pub fn change(&mut self, state: u32, now: u64) {
        let spent = now.saturating_sub(self.entry_time);
        if let Some(t) = self.time.get_mut(self.state as usize) {
            *t = t.wrapping_add(spent);
        }
        self.state = state;
        self.entry_time = now;
    }

    /// vcpu_runstate_info bytes: 48 for a 64-bit guest; 44 (4-byte packed,
    /// state_entry_time at 4) for a compat guest.
    pub fn encode(&self, compat: bool, update_flag: bool) -> Vec<u8> {
        let mut v = Vec::with_capacity(48);
        v.extend_from_slice(&self.state.to_le_bytes());
        if !compat {
            v.extend_from_slice(&[0; 4]);
        }
        let t = self.entry_time | if update_flag { RUNSTATE_UPDATE } else { 0 };
        v.extend_from_slice(&t.to_le_bytes());
        for x in self.time {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_for_a_1ghz_tsc_is_half_with_shift_one() {
        // Hand computation: 1e9 is not > 1e9, so double once (shift 1);
        // mul = 1e9 * 2^32 / 2e9 = 2^31.
        assert_eq!(time_scale(1_000_000_000), (0x8000_0000, 1));
        assert_eq!(scale_delta(123_456_789, 0x8000_0000, 1), 123_456_789);
    }

    #[test]
    fn scale_for_other_rates_converts_within_a_nanosecond() {
        for hz in [2_500_000_000u64, 3_000_000_000, 100_000_000, 1_193_182] {
            let (mul, shift) = time_scale(hz);
            // One second of ticks is one second of nanoseconds.
            let ns = scale_delta(hz, mul, shift);
            assert!(ns.abs_diff(1_000_000_000) <= 1, "{hz} Hz -> {ns} ns ({mul:#x}, {shift})");
        }
        // 3 GHz: halve once to 1.5e9 (shift -1), mul = 2^32 / 1.5.
        assert_eq!(time_scale(3_000_000_000), (0xaaaa_aaaa, -1));
    }

    #[test]
    fn time_info_layout() {
        let b = time_info(6, 5000);
        assert_eq!(u32::from_le_bytes(b[0..4].try_into().unwrap()), 6);
        assert_eq!(u64::from_le_bytes(b[8..16].try_into().unwrap()), clock::ns_to_tsc(5000));
        assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 5000);
        assert_eq!(b[29], 1);
    }

    #[test]
    fn runstate_accounts_time_per_state() {
        let mut r = Runstate::new(runstate::RUNNING, 100);
        r.change(runstate::BLOCKED, 400);
        r.change(runstate::RUNNING, 1000);
        assert_eq!(r.time, [300, 0, 600, 0]);
        let e = r.encode(false, true);
        assert_eq!(e.len(), 48);
        assert_eq!(u64::from_le_bytes(e[8..16].try_into().unwrap()), 1000 | RUNSTATE_UPDATE);
        let c = r.encode(true, false);
        assert_eq!(c.len(), 44);
        assert_eq!(u64::from_le_bytes(c[4..12].try_into().unwrap()), 1000);
        assert_eq!(u64::from_le_bytes(c[28..36].try_into().unwrap()), 600);
    }
}
