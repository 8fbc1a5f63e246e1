//! flash-core: the AMPED engine of the flash web server.
pub mod codec;
pub mod fs;
pub mod ipc;
pub mod protocol;
