//! Xenstore: the semantic core (tree, permissions, quotas, transactions, watches) and its
//! transports. The core (`store` and the modules it uses) knows no transport and no CPU;
//! `wire` is the packet format shared by every transport; `socket` serves Unix-socket
//! clients (dom0 tools). A guest ring transport plugs in the same way: complete packets
//! in through [`Store::handle`], replies and events out through [`Store::pop_output`].

pub mod bench;
pub mod conn;
mod control;
pub mod domain;
pub mod error;
pub mod initial;
pub mod ops;
pub mod path;
pub mod perms;
pub mod quota;
pub mod ring;
pub mod socket;
pub mod socket_door;
pub mod store;
pub mod transaction;
pub mod tree;
pub mod watch;
pub mod wire;

pub use conn::ConnId;
pub use error::{XsError, XsResult};
pub use initial::GuestSpec;
pub use quota::Quotas;
pub use store::Store;
pub use wire::{MsgType, Packet, PacketAssembler};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tx_props;
