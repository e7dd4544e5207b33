//! What the store knows about each domain: whether it is introduced (and on which
//! connection), its ring features, quotas, target and shutdown state.

use serde::{Deserialize, Serialize};

use super::conn::ConnId;
use super::quota::Quotas;

/// Ring `server_features` bits (xs_wire.h).
pub const FEATURE_RECONNECTION: u32 = 1;
pub const FEATURE_ERROR: u32 = 2;
pub const FEATURE_WATCHDEPTH: u32 = 4;
pub const FEATURE_DOMID_ANY: u32 = 8;
/// Everything this store implements.
pub const FEATURES_SUPPORTED: u32 = FEATURE_RECONNECTION | FEATURE_ERROR | FEATURE_WATCHDEPTH | FEATURE_DOMID_ANY;

/// First reserved domid (DOMID_SELF); real domains are below it.
pub const DOMID_FIRST_RESERVED: u16 = 0x7FF0;
pub const DOMID_SELF: u16 = 0x7FF0;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainState {
    pub introduced: bool,
    pub conn: Option<ConnId>,
    /// Ring page frame and event channel from INTRODUCE, for the ring transport.
    pub gfn: u64,
    pub port: u32,
    pub features: u32,
    /// Per-domain quotas once set (copied from the global ones at that point).
    pub quotas: Option<Quotas>,
    /// SET_TARGET: this domain may act as `target`.
    pub target: Option<u16>,
    /// @releaseDomain already fired for a shutdown (cleared by RESUME).
    pub shutdown: bool,
}

impl Default for DomainState {
    fn default() -> Self {
        DomainState {
            introduced: false,
            conn: None,
            gfn: 0,
            port: 0,
            features: FEATURES_SUPPORTED,
            quotas: None,
            target: None,
            shutdown: false,
        }
    }
}
