//! Test harness.
pub mod slowfs;
