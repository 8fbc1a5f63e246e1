//! `codec::decode` of both message directions on arbitrary bytes.
//!
//! A frame from a (possibly compromised) helper, or to one, must never make
//! the decoder panic or allocate without bound; and whatever it accepts must
//! be a message the encoder can write again: on `Ok`, `try_encode` succeeds
//! (within `MAX_FRAME`, never longer than the frame it came from), decoding
//! that gives the same message, and encoding is canonical (a second encoding
//! is byte-identical). `Err(BadLength)` exactly when the prefix does not
//! announce the payload's length (or announces more than `MAX_FRAME`).
#![no_main]

use std::fmt::Debug;

use flash_core::codec::{decode, try_encode, CodecError, MAX_FRAME, PREFIX_LEN};
use flash_core::protocol::{FromHelper, ToHelper};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(frame: &[u8]) -> Option<T> {
    let length_ok = frame.len() >= PREFIX_LEN && {
        let announced = u32::from_le_bytes(frame[..PREFIX_LEN].try_into().unwrap()) as usize;
        announced <= MAX_FRAME && announced == frame.len() - PREFIX_LEN
    };
    let msg = match decode::<T>(frame) {
        Ok(msg) => msg,
        Err(e) => {
            assert_eq!(e == CodecError::BadLength, !length_ok, "{e:?}");
            return None;
        }
    };
    assert!(length_ok);
    let mut again = Vec::new();
    try_encode(&msg, &mut again).expect("a decoded message must encode");
    assert!(
        again.len() <= frame.len(),
        "re-encoding grew {} -> {}",
        frame.len(),
        again.len()
    );
    let back: T = decode(&again).expect("an encoded message must decode");
    assert_eq!(back, msg);
    let mut third = vec![0xAA];
    try_encode(&back, &mut third).unwrap();
    assert_eq!(&third[1..], &again[..], "encoding is not deterministic");
    Some(msg)
}

fuzz_target!(|frame: &[u8]| {
    if let Some(msg) = round_trip::<FromHelper>(frame) {
        let _ = (msg.id(), msg.carries_fd());
    }
    if let Some(msg) = round_trip::<ToHelper>(frame) {
        let _ = (msg.id(), msg.carries_fd());
    }
});
