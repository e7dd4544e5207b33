//! Property tests over the differential executors of the fuzz targets, with
//! proptest's shrinking: event-channel operations (raise, unmask, mask, the
//! guest's upcall handler, binds and closes) against the reference model of
//! the 2-level ABI, and grant entries mapped by dom0 in v1 and v2 (access
//! flag transitions) against the reference of Xen's pin rules.

use proptest::prelude::*;
use xen_model::fuzzing::{decode, evtchn, gnttab};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    #[test]
    fn event_channels_follow_the_two_level_algorithm(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Some(input) = decode::<evtchn::Input>(&bytes) {
            evtchn::run(&input).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn grant_access_flags_follow_pins_in_v1_and_v2(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Some(input) = decode::<gnttab::Input>(&bytes) {
            gnttab::run(&input).map_err(TestCaseError::fail)?;
        }
    }
}
