//! Record, replay, snapshots. Filled by a later issue.
