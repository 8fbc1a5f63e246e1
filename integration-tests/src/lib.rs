//! Test support for flash's end-to-end tests: the tests under `tests/` start
//! the real `flash-server` binary ([`harness`]) and talk to it over loopback;
//! the slow-disk tests serve from a FUSE filesystem that delays reads
//! ([`slowfs`], binary `flash-slowfs`).

pub mod harness;
pub mod load;
pub mod slowfs;
