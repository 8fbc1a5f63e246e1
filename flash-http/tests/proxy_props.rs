//! Property tests of the PROXY protocol parser: headers built from any
//! addresses (v1 text, v2 binary with TLVs) parse back to those addresses
//! whatever follows them, every prefix is `Incomplete`, and arbitrary bytes
//! never panic nor claim more than they hold.

use std::net::{IpAddr, SocketAddr};

use flash_http::{parse_proxy_header, ProxyHeader, ProxyParse, PROXY_MAX_LEN, V2_SIGNATURE};
use proptest::prelude::*;

fn socket_addr(v4: bool) -> impl Strategy<Value = SocketAddr> {
    let ip = if v4 {
        any::<[u8; 4]>().prop_map(IpAddr::from).boxed()
    } else {
        any::<[u8; 16]>().prop_map(IpAddr::from).boxed()
    };
    (ip, any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn addr_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    any::<bool>().prop_flat_map(|v4| (socket_addr(v4), socket_addr(v4)))
}

fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

fn v2(src: SocketAddr, dst: SocketAddr, tlvs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut block = Vec::new();
    let fam = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            block.extend(s.octets());
            block.extend(d.octets());
            0x11
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            block.extend(s.octets());
            block.extend(d.octets());
            0x21
        }
        _ => unreachable!("one family"),
    };
    block.extend(src.port().to_be_bytes());
    block.extend(dst.port().to_be_bytes());
    for (kind, value) in tlvs {
        block.push(*kind);
        block.extend(u16::try_from(value.len()).unwrap().to_be_bytes());
        block.extend(value);
    }
    let mut out = V2_SIGNATURE.to_vec();
    out.extend([0x21, fam]);
    out.extend(u16::try_from(block.len()).unwrap().to_be_bytes());
    out.extend(block);
    out
}

fn check_round_trip(header: &[u8], src: SocketAddr, dst: SocketAddr, tail: &[u8]) {
    for n in 0..header.len() {
        assert_eq!(parse_proxy_header(&header[..n]), Ok(ProxyParse::Incomplete));
    }
    let mut buf = header.to_vec();
    buf.extend(tail);
    let Ok(ProxyParse::Header(ProxyHeader {
        source,
        destination,
        consumed,
        ..
    })) = parse_proxy_header(&buf)
    else {
        panic!("{buf:?} refused");
    };
    assert_eq!(source, Some(src));
    assert_eq!(destination, Some(dst));
    assert_eq!(consumed, header.len());
}

proptest! {
    #[test]
    fn v1_round_trips((src, dst) in addr_pair(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        check_round_trip(&v1(src, dst), src, dst, &tail);
    }

    #[test]
    fn v2_round_trips(
        (src, dst) in addr_pair(),
        tlvs in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..5),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        check_round_trip(&v2(src, dst, &tlvs), src, dst, &tail);
    }

    #[test]
    fn arbitrary_bytes_are_judged_consistently(
        prefix in prop_oneof![Just(b"PROXY ".to_vec()), Just(V2_SIGNATURE.to_vec()), Just(Vec::new())],
        rest in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut buf = prefix;
        buf.extend(rest);
        match parse_proxy_header(&buf) {
            Ok(ProxyParse::Header(h)) => {
                prop_assert!(h.consumed <= buf.len());
                // The verdict depends on the header's bytes only.
                prop_assert_eq!(parse_proxy_header(&buf[..h.consumed]), Ok(ProxyParse::Header(h)));
            }
            Ok(ProxyParse::Incomplete) => prop_assert!(buf.len() < PROXY_MAX_LEN),
            Err(e) => {
                // More bytes never turn an error into something else.
                let mut longer = buf.clone();
                longer.extend(b"\r\n");
                prop_assert_eq!(parse_proxy_header(&longer), Err(e));
            }
        }
    }
}
