//! Framing of helper-protocol messages: round trips and hostile frames.
use flash_core::codec::{
    decode, encode, try_encode, CodecError, MAX_FRAME, MAX_WIRE_LEN, PREFIX_LEN,
};
use flash_core::fs::{FileMeta, FsError};
use flash_core::protocol::{FromHelper, ToHelper, PROTOCOL_VERSION};
use proptest::prelude::*;

fn meta() -> FileMeta {
    FileMeta {
        size: u64::MAX,
        mtime_secs: -1,
        mtime_nsec: 999_999_999,
        ino: 1 << 40,
        dev: 2049,
        uid: 1000,
        gid: u32::MAX,
        mode: 0o100644,
    }
}

fn to_helper() -> Vec<ToHelper> {
    vec![
        ToHelper::Resolve {
            id: 0,
            path: String::new(),
            ends_with_slash: true,
        },
        ToHelper::Resolve {
            id: u64::MAX,
            path: "docs/ünï/a b.html".into(),
            ends_with_slash: false,
        },
        ToHelper::Prefetch {
            id: 7,
            offset: 0,
            len: 0,
        },
        ToHelper::Prefetch {
            id: 8,
            offset: u64::MAX,
            len: u64::MAX,
        },
    ]
}

fn from_helper() -> Vec<FromHelper> {
    let mut v = vec![
        FromHelper::Hello {
            version: PROTOCOL_VERSION,
            pid: 4242,
        },
        FromHelper::Resolved {
            id: 1,
            meta: meta(),
            index: Some(1),
            contents: None,
            watch: Some(7),
        },
        FromHelper::Resolved {
            id: 5,
            meta: FileMeta { size: 3, ..meta() },
            index: None,
            contents: Some(b"abc".to_vec()),
            watch: None,
        },
        FromHelper::Resolved {
            id: 2,
            meta: FileMeta {
                size: 0,
                mtime_secs: 0,
                ..meta()
            },
            index: None,
            contents: None,
            watch: None,
        },
        FromHelper::Redirect { id: 3 },
        FromHelper::Prefetched { id: 4 },
    ];
    for error in [
        FsError::NotFound,
        FsError::Forbidden,
        FsError::NotAFile,
        FsError::Io { errno: -5 },
    ] {
        v.push(FromHelper::Failed { id: 5, error });
    }
    v
}

fn frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode(msg, &mut out);
    out
}

#[test]
fn every_message_round_trips() {
    for msg in to_helper() {
        let f = frame(&msg);
        assert!(f.len() <= MAX_WIRE_LEN);
        assert_eq!(decode::<ToHelper>(&f), Ok(msg));
    }
    for msg in from_helper() {
        assert_eq!(decode::<FromHelper>(&frame(&msg)), Ok(msg));
    }
}

#[test]
fn frames_append_to_the_buffer() {
    let a = FromHelper::Redirect { id: 1 };
    let b = FromHelper::Prefetched { id: 2 };
    let mut out = Vec::new();
    encode(&a, &mut out);
    let first = out.len();
    encode(&b, &mut out);
    assert_eq!(decode::<FromHelper>(&out[..first]), Ok(a));
    assert_eq!(decode::<FromHelper>(&out[first..]), Ok(b));
}

#[test]
fn id_accessors() {
    assert_eq!(FromHelper::Hello { version: 1, pid: 2 }.id(), None);
    assert_eq!(FromHelper::Redirect { id: 9 }.id(), Some(9));
    assert_eq!(
        FromHelper::Failed {
            id: 10,
            error: FsError::NotFound
        }
        .id(),
        Some(10)
    );
    assert_eq!(
        FromHelper::Resolved {
            id: 11,
            meta: meta(),
            index: None,
            contents: None,
            watch: None,
        }
        .id(),
        Some(11)
    );
    assert_eq!(FromHelper::Prefetched { id: 12 }.id(), Some(12));
    assert!(FromHelper::Resolved {
        id: 11,
        meta: meta(),
        index: None,
        contents: None,
        watch: None,
    }
    .carries_fd());
    assert!(
        !FromHelper::Resolved {
            id: 11,
            meta: meta(),
            index: None,
            contents: Some(Vec::new()),
            watch: None,
        }
        .carries_fd(),
        "a file sent whole travels without its descriptor"
    );
    assert!(!FromHelper::Redirect { id: 9 }.carries_fd());
    assert_eq!(
        ToHelper::Prefetch {
            id: 3,
            offset: 0,
            len: 1
        }
        .id(),
        3
    );
    assert!(ToHelper::Prefetch {
        id: 3,
        offset: 0,
        len: 1
    }
    .carries_fd());
}

#[test]
fn short_frames_are_bad_length() {
    assert_eq!(decode::<FromHelper>(&[]), Err(CodecError::BadLength));
    assert_eq!(decode::<FromHelper>(&[1, 0, 0]), Err(CodecError::BadLength));
    let f = frame(&FromHelper::Resolved {
        id: 1,
        meta: meta(),
        index: Some(0),
        contents: Some(b"xyz".to_vec()),
        watch: Some(3),
    });
    for cut in 0..f.len() {
        assert_eq!(
            decode::<FromHelper>(&f[..cut]),
            Err(CodecError::BadLength),
            "cut at {cut}"
        );
    }
}

#[test]
fn wrong_prefix_is_bad_length() {
    let mut f = frame(&ToHelper::Resolve {
        id: 1,
        path: "a".into(),
        ends_with_slash: false,
    });
    let n = u32::from_le_bytes(f[..4].try_into().unwrap());
    f[..4].copy_from_slice(&(n - 1).to_le_bytes());
    assert_eq!(decode::<ToHelper>(&f), Err(CodecError::BadLength));
    f[..4].copy_from_slice(&(n + 1).to_le_bytes());
    assert_eq!(decode::<ToHelper>(&f), Err(CodecError::BadLength));
    // Big-endian prefix.
    f[..4].copy_from_slice(&n.to_be_bytes());
    assert_eq!(decode::<ToHelper>(&f), Err(CodecError::BadLength));
}

#[test]
fn trailing_bytes_are_bad_length_or_malformed() {
    let mut f = frame(&FromHelper::Redirect { id: 1 });
    f.push(0);
    // The prefix no longer matches.
    assert_eq!(decode::<FromHelper>(&f), Err(CodecError::BadLength));
    // The prefix is fixed up to cover the extra byte: payload has trailing data.
    let n = (f.len() - PREFIX_LEN) as u32;
    f[..4].copy_from_slice(&n.to_le_bytes());
    assert_eq!(decode::<FromHelper>(&f), Err(CodecError::Malformed));
}

#[test]
fn oversize_is_refused_both_ways() {
    let path = "a".repeat(MAX_FRAME);
    let mut out = Vec::new();
    let msg = ToHelper::Resolve {
        id: 1,
        path,
        ends_with_slash: false,
    };
    assert_eq!(try_encode(&msg, &mut out), Err(CodecError::BadLength));
    assert!(out.is_empty());

    let mut f = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
    f.resize(PREFIX_LEN + MAX_FRAME + 1, 0);
    assert_eq!(decode::<ToHelper>(&f), Err(CodecError::BadLength));
    assert_eq!(
        decode::<ToHelper>(&u32::MAX.to_le_bytes()),
        Err(CodecError::BadLength)
    );
}

#[test]
fn largest_path_that_fits_round_trips() {
    // varint tag (1) + id (1) + string length varint (3: 251 then a u16) + bool (1)
    let path = "p".repeat(MAX_FRAME - 1 - 1 - 3 - 1);
    let msg = ToHelper::Resolve {
        id: 1,
        path,
        ends_with_slash: true,
    };
    let f = frame(&msg);
    assert_eq!(f.len(), MAX_WIRE_LEN);
    assert_eq!(decode::<ToHelper>(&f), Ok(msg));
}

#[test]
fn bad_payloads_are_malformed() {
    let with_payload = |p: &[u8]| {
        let mut f = (p.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(p);
        f
    };
    // Unknown variant tag.
    assert_eq!(
        decode::<FromHelper>(&with_payload(&[9, 1])),
        Err(CodecError::Malformed)
    );
    // Empty payload.
    assert_eq!(
        decode::<FromHelper>(&with_payload(&[])),
        Err(CodecError::Malformed)
    );
    // A string claiming 2^32 bytes (253: a u64 length follows).
    let huge = [0u8, 1, 253, 0, 0, 0, 0, 1, 0, 0, 0, b'a'];
    assert_eq!(
        decode::<ToHelper>(&with_payload(&huge)),
        Err(CodecError::Malformed)
    );
    // Invalid UTF-8 in the path.
    assert_eq!(
        decode::<ToHelper>(&with_payload(&[0, 1, 2, 0xff, 0xfe, 0])),
        Err(CodecError::Malformed)
    );
    // Invalid bool.
    assert_eq!(
        decode::<ToHelper>(&with_payload(&[0, 1, 1, b'a', 7])),
        Err(CodecError::Malformed)
    );
    // A message of the other direction.
    let f = frame(&FromHelper::Hello { version: 1, pid: 1 });
    assert!(decode::<ToHelper>(&f).is_err());
}

proptest! {
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode::<ToHelper>(&bytes);
        let _ = decode::<FromHelper>(&bytes);
    }

    #[test]
    fn garbage_with_a_consistent_prefix_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut f = (payload.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(&payload);
        if let Ok(msg) = decode::<ToHelper>(&f) {
            // Whatever decodes must re-encode to the same bytes or at least round trip.
            prop_assert_eq!(decode::<ToHelper>(&frame(&msg)), Ok(msg));
        }
        if let Ok(msg) = decode::<FromHelper>(&f) {
            prop_assert_eq!(decode::<FromHelper>(&frame(&msg)), Ok(msg));
        }
    }

    #[test]
    fn resolve_round_trips(id in any::<u64>(), path in ".{0,200}", slash in any::<bool>()) {
        let msg = ToHelper::Resolve { id, path, ends_with_slash: slash };
        prop_assert_eq!(decode::<ToHelper>(&frame(&msg)), Ok(msg));
    }

    #[test]
    fn flipping_a_byte_never_panics(pos in 0usize..64, bit in 0u8..8) {
        let mut f = frame(&FromHelper::Resolved { id: 77, meta: meta(), index: Some(0), contents: None, watch: None });
        let pos = pos % f.len();
        f[pos] ^= 1 << bit;
        let _ = decode::<FromHelper>(&f);
    }
}
