//! API CONTRACT STUB — the one module that owns bincode.
use serde::{de::DeserializeOwned, Serialize};

#[derive(Debug, PartialEq, Eq)]
pub enum CodecError {
    /// Frame shorter than its length prefix says, longer, or over MAX_FRAME.
    BadLength,
    /// Payload does not decode as the expected message.
    Malformed,
}

pub const MAX_FRAME: usize = 64 * 1024;

/// Appends one frame (u32 little-endian payload length, then bincode payload) to `out`.
pub fn encode<T: Serialize>(msg: &T, out: &mut Vec<u8>) {
    let _ = (msg, out);
    todo!()
}

/// Decodes exactly one frame.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, CodecError> {
    let _ = frame;
    todo!()
}
