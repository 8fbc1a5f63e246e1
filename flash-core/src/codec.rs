//! Framing and serialisation of helper-protocol messages.
//!
//! This is the one module that knows the wire format of a message, so the
//! serialiser (bincode 2, standard configuration, through serde) can be
//! swapped without touching anything else. It turns a message into a frame
//! and a frame back into a message; it does no I/O (see [`crate::ipc`]) and
//! knows nothing about what the messages mean (see [`crate::protocol`]).
//!
//! A frame is a `u32` little-endian payload length followed by the payload.
//! On a `SOCK_SEQPACKET` socket one frame is one message, so the length is
//! redundant: it is kept as a cheap consistency check and so the format also
//! works over a byte stream. [`decode`] accepts only a frame whose prefix
//! matches its actual length exactly; it never panics, whatever the input.
use serde::{de::DeserializeOwned, Serialize};

/// Why a frame could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum CodecError {
    /// Frame shorter than its length prefix says, longer, or over MAX_FRAME.
    BadLength,
    /// Payload does not decode as the expected message.
    Malformed,
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CodecError::BadLength => "frame length does not match its prefix or exceeds the limit",
            CodecError::Malformed => "frame payload is not a valid message",
        })
    }
}

impl std::error::Error for CodecError {}

/// Largest payload (excluding the 4-byte length prefix) a frame may carry.
pub const MAX_FRAME: usize = 64 * 1024;

/// Length of the length prefix that starts every frame.
pub const PREFIX_LEN: usize = 4;

/// Largest whole frame (prefix + payload): the receive buffer size that holds
/// any valid frame.
pub const MAX_WIRE_LEN: usize = PREFIX_LEN + MAX_FRAME;

/// Decode limit: bincode counts the in-memory size of every decoded value
/// against it (a one-byte varint `u64` counts 8, a `String` its length). No
/// wire byte decodes to more than 16 bytes, so a frame within [`MAX_FRAME`]
/// never hits this limit, while a hostile length inside a payload cannot make
/// the decoder allocate more than 1 MiB.
const DECODE_LIMIT: usize = 16 * MAX_FRAME;

/// The bincode configuration: standard (varint integers, little endian) with
/// the decode limit.
fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Appends one frame (u32 little-endian payload length, then bincode payload) to `out`.
///
/// # Panics
/// If the payload would exceed [`MAX_FRAME`]. Protocol messages are small
/// (the only unbounded field is a request path, far below the limit once
/// the request-line limit applies); use [`try_encode`] where the size is not
/// known to be bounded.
pub fn encode<T: Serialize>(msg: &T, out: &mut Vec<u8>) {
    if let Err(e) = try_encode(msg, out) {
        panic!("codec::encode: {e}");
    }
}

/// Like [`encode`], but reports an oversize (or unserialisable) message as
/// an error instead of panicking; `out` is left as it was on error.
pub fn try_encode<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0; PREFIX_LEN]);
    let written = match bincode::serde::encode_into_std_write(msg, out, config()) {
        Ok(n) => n,
        Err(_) => {
            out.truncate(start);
            return Err(CodecError::Malformed);
        }
    };
    if written > MAX_FRAME {
        out.truncate(start);
        return Err(CodecError::BadLength);
    }
    // `written <= MAX_FRAME` fits in a u32.
    out[start..start + PREFIX_LEN].copy_from_slice(&(written as u32).to_le_bytes());
    Ok(())
}

/// Decodes exactly one frame.
///
/// `frame` must be the whole frame: prefix plus exactly the payload it
/// announces. Errors: [`CodecError::BadLength`] when the frame is shorter than
/// a prefix, the prefix differs from the payload length, or exceeds
/// [`MAX_FRAME`]; [`CodecError::Malformed`] when the payload is not one `T`
/// (including trailing bytes after it).
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, CodecError> {
    let Some((prefix, payload)) = frame.split_first_chunk::<PREFIX_LEN>() else {
        return Err(CodecError::BadLength);
    };
    let announced = u32::from_le_bytes(*prefix) as usize;
    if announced > MAX_FRAME || announced != payload.len() {
        return Err(CodecError::BadLength);
    }
    match bincode::serde::decode_from_slice::<T, _>(payload, config()) {
        Ok((msg, used)) if used == payload.len() => Ok(msg),
        _ => Err(CodecError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_payload_length() {
        let mut out = vec![0xAA];
        encode(&(7u8, String::from("abc")), &mut out);
        assert_eq!(out[0], 0xAA);
        let n = u32::from_le_bytes(out[1..5].try_into().unwrap()) as usize;
        assert_eq!(n, out.len() - 5);
        assert_eq!(
            decode::<(u8, String)>(&out[1..]).unwrap(),
            (7, "abc".into())
        );
    }

    #[test]
    fn oversize_is_refused_by_try_encode() {
        let mut out = vec![1, 2, 3];
        let big = "x".repeat(MAX_FRAME);
        assert_eq!(try_encode(&big, &mut out), Err(CodecError::BadLength));
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    #[should_panic(expected = "codec::encode")]
    fn oversize_panics_in_encode() {
        encode(&"x".repeat(MAX_FRAME), &mut Vec::new());
    }
}
