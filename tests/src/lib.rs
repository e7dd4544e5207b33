//! Guest programs for the integration tests, assembled with iced-x86.
