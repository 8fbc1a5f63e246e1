//! The PROXY protocol (HAProxy, versions 1 and 2): the header a load
//! balancer or TCP proxy puts before the client's bytes, naming the client
//! it relays (<https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>).
//!
//! [`parse_proxy_header`] is a pure function of the bytes received so far,
//! like [`parse_request`](crate::parse_request): call it after every read
//! until it gives a verdict. It borrows the buffer, never allocates, and is
//! strict: anything the specification does not allow is an error, since a
//! sender that gets it wrong cannot be trusted to have named the client
//! right. Whether a header is present is never guessed (the specification
//! forbids it): a listener either requires one on every connection or
//! accepts none.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12-byte signature that starts every version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 line, CRLF included (section 2.1).
pub const V1_MAX_LEN: usize = 107;
/// The longest version 2 header accepted (16-byte fixed part, addresses and
/// TLVs). The format allows 16 + 65535; real senders need a few hundred
/// bytes (addresses plus TLVs such as the TLS details or a unique id), and
/// the bound keeps a connection's buffer small.
pub const V2_MAX_LEN: usize = 4096;
/// Bytes a caller's buffer must be able to hold so that no valid header is
/// refused for lack of room: [`parse_proxy_header`] never answers
/// [`ProxyParse::Incomplete`] for a buffer this long.
pub const PROXY_MAX_LEN: usize = V2_MAX_LEN;

const V1_PREFIX: &[u8] = b"PROXY ";
/// Size of the fixed part of a version 2 header.
const V2_FIXED: usize = 16;

/// What the bytes so far amount to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyParse {
    /// A valid beginning of a header: read more and call again.
    Incomplete,
    /// A complete, valid header.
    Header(ProxyHeader),
}

/// A complete PROXY header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client the proxy relays; `None` when the connection's own peer
    /// stands (a version 2 `LOCAL` command such as a proxy's health check,
    /// version 1 `UNKNOWN`, or an address family without an IP address:
    /// `AF_UNSPEC`, `AF_UNIX`).
    pub source: Option<SocketAddr>,
    /// The address the client connected to, when `source` is given.
    pub destination: Option<SocketAddr>,
    /// Bytes the header took: what follows it is the client's stream.
    pub consumed: usize,
    /// The protocol version: 1 (text) or 2 (binary).
    pub version: u8,
}

/// Why bytes are not a valid PROXY header. Every one means: close the
/// connection without a word (the peer is a proxy, not an HTTP client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// Starts with neither `PROXY ` nor the version 2 signature (for
    /// example a plain HTTP request).
    NotProxy,
    /// Version 1: no CRLF within the first 107 bytes.
    V1TooLong,
    /// Version 1: a CR or LF that is not part of the final CRLF.
    V1BadLineEnd,
    /// Version 1: a protocol other than `TCP4`, `TCP6` or `UNKNOWN`.
    V1BadProtocol,
    /// Version 1: wrong number of fields, or a field not separated by
    /// exactly one space.
    V1BadFields,
    /// Version 1: an address not in the canonical form of its family.
    V1BadAddress,
    /// Version 1: a port not in `0..=65535` in decimal without leading zeros.
    V1BadPort,
    /// Version 2: a version other than 2.
    V2BadVersion,
    /// Version 2: a command other than `LOCAL` (0) or `PROXY` (1).
    V2BadCommand,
    /// Version 2: an address family or transport protocol the specification
    /// does not define.
    V2BadFamily,
    /// Version 2: the announced length is too short for the addresses.
    V2TooShort,
    /// Version 2: longer than [`V2_MAX_LEN`].
    V2TooLong,
    /// Version 2: the TLVs after the addresses do not add up to the length.
    V2BadTlv,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            ProxyError::NotProxy => "no PROXY protocol header",
            ProxyError::V1TooLong => "PROXY v1 line without CRLF in 107 bytes",
            ProxyError::V1BadLineEnd => "PROXY v1 line with a stray CR or LF",
            ProxyError::V1BadProtocol => "PROXY v1 protocol not TCP4, TCP6 or UNKNOWN",
            ProxyError::V1BadFields => "PROXY v1 line with malformed fields",
            ProxyError::V1BadAddress => "PROXY v1 address malformed",
            ProxyError::V1BadPort => "PROXY v1 port malformed",
            ProxyError::V2BadVersion => "PROXY v2 header with a version other than 2",
            ProxyError::V2BadCommand => "PROXY v2 command neither LOCAL nor PROXY",
            ProxyError::V2BadFamily => "PROXY v2 address family or protocol undefined",
            ProxyError::V2TooShort => "PROXY v2 length too short for its addresses",
            ProxyError::V2TooLong => "PROXY v2 header too long",
            ProxyError::V2BadTlv => "PROXY v2 TLVs malformed",
        };
        f.write_str(what)
    }
}

impl std::error::Error for ProxyError {}

/// Parses the PROXY header (version 1 or 2, told apart by their first
/// bytes) at the start of `buf`.
///
/// `Incomplete` only while `buf` is a valid beginning shorter than the
/// header, never once `buf.len() >= PROXY_MAX_LEN`; a verdict never changes
/// as more bytes arrive. Bytes after `consumed` are not looked at.
///
/// ```
/// use flash_http::{parse_proxy_header, ProxyParse};
///
/// let buf = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
/// let Ok(ProxyParse::Header(h)) = parse_proxy_header(buf) else { panic!() };
/// assert_eq!(h.source, Some("192.168.0.1:56324".parse().unwrap()));
/// assert_eq!(&buf[h.consumed..], b"GET / HTTP/1.1\r\n");
/// ```
pub fn parse_proxy_header(buf: &[u8]) -> Result<ProxyParse, ProxyError> {
    let v1 = buf.len().min(V1_PREFIX.len());
    let v2 = buf.len().min(V2_SIGNATURE.len());
    if buf.is_empty() {
        Ok(ProxyParse::Incomplete)
    } else if buf[..v1] == V1_PREFIX[..v1] {
        parse_v1(buf)
    } else if buf[..v2] == V2_SIGNATURE[..v2] {
        parse_v2(buf)
    } else {
        Err(ProxyError::NotProxy)
    }
}

fn parse_v1(buf: &[u8]) -> Result<ProxyParse, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(end) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if buf.len() >= V1_MAX_LEN {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(ProxyParse::Incomplete)
        };
    };
    match (window[end], window.get(end + 1)) {
        (b'\r', Some(b'\n')) => {}
        (b'\r', None) if buf.len() < V1_MAX_LEN => return Ok(ProxyParse::Incomplete),
        (b'\r', None) => return Err(ProxyError::V1TooLong),
        _ => return Err(ProxyError::V1BadLineEnd),
    }
    let consumed = end + 2;
    // Checked ASCII only: `from_utf8` would accept other text the
    // specification does not.
    let line = &window[V1_PREFIX.len()..end];
    if !line.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return Err(ProxyError::V1BadFields);
    }
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::V1BadFields)?;
    let mut fields = line.split(' ');
    let protocol = fields.next().unwrap_or("");
    let v4 = match protocol {
        "TCP4" => true,
        "TCP6" => false,
        // The rest of the line, if any, is to be ignored.
        "UNKNOWN" => {
            return Ok(ProxyParse::Header(ProxyHeader {
                source: None,
                destination: None,
                consumed,
                version: 1,
            }))
        }
        _ => return Err(ProxyError::V1BadProtocol),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyError::V1BadFields);
    };
    let src = v1_address(src, v4)?;
    let dst = v1_address(dst, v4)?;
    let sport = v1_port(sport)?;
    let dport = v1_port(dport)?;
    Ok(ProxyParse::Header(ProxyHeader {
        source: Some(SocketAddr::new(src, sport)),
        destination: Some(SocketAddr::new(dst, dport)),
        consumed,
        version: 1,
    }))
}

fn v1_address(text: &str, v4: bool) -> Result<IpAddr, ProxyError> {
    if v4 {
        // Leading zeros are refused explicitly (they could be read as octal).
        let leading_zero = text
            .split('.')
            .any(|part| part.len() > 1 && part.starts_with('0'));
        if leading_zero {
            return Err(ProxyError::V1BadAddress);
        }
        text.parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| ProxyError::V1BadAddress)
    } else {
        text.parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| ProxyError::V1BadAddress)
    }
}

fn v1_port(text: &str) -> Result<u16, ProxyError> {
    let digits = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return Err(ProxyError::V1BadPort);
    }
    text.parse().map_err(|_| ProxyError::V1BadPort)
}

fn parse_v2(buf: &[u8]) -> Result<ProxyParse, ProxyError> {
    // Each byte of the fixed part is judged as soon as it arrives.
    if let Some(&ver_cmd) = buf.get(12) {
        if ver_cmd >> 4 != 2 {
            return Err(ProxyError::V2BadVersion);
        }
        if ver_cmd & 0x0f > 1 {
            return Err(ProxyError::V2BadCommand);
        }
    }
    if let Some(&fam) = buf.get(13) {
        if fam >> 4 > 3 || fam & 0x0f > 2 {
            return Err(ProxyError::V2BadFamily);
        }
    }
    if buf.len() < V2_FIXED {
        return Ok(ProxyParse::Incomplete);
    }
    let local = buf[12] & 0x0f == 0;
    let fam = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = V2_FIXED + len;
    if total > V2_MAX_LEN {
        return Err(ProxyError::V2TooLong);
    }
    let addr_len = match fam >> 4 {
        0 => 0,
        1 => 12,
        2 => 36,
        _ => 216,
    };
    // UNSPEC with a transport, or a transport without a family, is not one
    // of the combinations the specification lists.
    if (fam >> 4 == 0) != (fam & 0x0f == 0) {
        return Err(ProxyError::V2BadFamily);
    }
    if len < addr_len {
        return Err(ProxyError::V2TooShort);
    }
    if buf.len() < total {
        return Ok(ProxyParse::Incomplete);
    }
    let block = &buf[V2_FIXED..total];
    check_tlvs(&block[addr_len..])?;
    let (source, destination) = match fam >> 4 {
        _ if local => (None, None),
        1 => {
            let ip =
                |at: usize| IpAddr::from([block[at], block[at + 1], block[at + 2], block[at + 3]]);
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            (
                Some(SocketAddr::new(ip(0), port(8))),
                Some(SocketAddr::new(ip(4), port(10))),
            )
        }
        2 => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&block[at..at + 16]);
                IpAddr::from(octets)
            };
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            (
                Some(SocketAddr::new(ip(0), port(32))),
                Some(SocketAddr::new(ip(16), port(34))),
            )
        }
        // AF_UNSPEC: use the real endpoints. AF_UNIX: no IP address to give.
        _ => (None, None),
    };
    Ok(ProxyParse::Header(ProxyHeader {
        source,
        destination,
        consumed: total,
        version: 2,
    }))
}

/// TLVs (type, 16-bit length, value) are skipped, but must tile the rest of
/// the header exactly: a length running past the end means the sender and
/// this parser disagree on where the client's bytes begin.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), ProxyError> {
    while !tlvs.is_empty() {
        let [_, hi, lo, rest @ ..] = tlvs else {
            return Err(ProxyError::V2BadTlv);
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        if rest.len() < len {
            return Err(ProxyError::V2BadTlv);
        }
        tlvs = &rest[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(buf: &[u8]) -> ProxyHeader {
        match parse_proxy_header(buf) {
            Ok(ProxyParse::Header(h)) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn err(buf: &[u8]) -> ProxyError {
        match parse_proxy_header(buf) {
            Err(e) => e,
            other => panic!("{:?} accepted: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    fn v2(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.extend([ver_cmd, fam]);
        out.extend(u16::try_from(block.len()).unwrap().to_be_bytes());
        out.extend(block);
        out
    }

    #[test]
    fn v1_examples_of_the_specification() {
        let buf = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        let h = header(buf);
        assert_eq!(h.source, addr("192.168.0.1:56324"));
        assert_eq!(h.destination, addr("192.168.0.11:443"));
        assert_eq!(h.consumed, 47);
        assert_eq!(h.version, 1);
        let longest = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        assert_eq!(header(longest).consumed, 56);
        let h = header(b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ::1 65535 0\r\n");
        assert_eq!(
            h.source,
            addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535")
        );
        assert_eq!(h.destination, addr("[::1]:0"));
        let h = header(b"PROXY UNKNOWN\r\n");
        assert_eq!((h.source, h.consumed), (None, 15));
        // The worst case: UNKNOWN with the optional fields, 107 bytes.
        let mut worst = b"PROXY UNKNOWN ".to_vec();
        let v6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        worst.extend(format!("{v6} {v6} 65535 65535\r\n").bytes());
        assert_eq!(worst.len(), V1_MAX_LEN);
        assert_eq!(header(&worst).consumed, V1_MAX_LEN);
        assert_eq!(header(b"PROXY UNKNOWN whatever\r\n").source, None);
    }

    #[test]
    fn v1_strictness() {
        use ProxyError::*;
        for (bad, why) in [
            (&b"GET / HTTP/1.1\r\n"[..], NotProxy),
            (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", NotProxy),
            (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", V1BadProtocol),
            (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", V1BadProtocol),
            (b"PROXY UNKNOWNX\r\n", V1BadProtocol),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", V1BadLineEnd),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", V1BadLineEnd),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", V1BadFields),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", V1BadFields),
            (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", V1BadFields),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", V1BadFields),
            (b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", V1BadFields),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xff\r\n", V1BadFields),
            (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", V1BadAddress),
            (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", V1BadAddress),
            (b"PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n", V1BadAddress),
            (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", V1BadAddress),
            (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", V1BadAddress),
            (b"PROXY TCP6 ::1 ::1:: 1 2\r\n", V1BadAddress),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", V1BadPort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", V1BadPort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", V1BadPort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 000002\r\n", V1BadPort),
        ] {
            assert_eq!(err(bad), why, "{:?}", String::from_utf8_lossy(bad));
        }
        // No CRLF in 107 bytes.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_LEN, b'a');
        assert_eq!(err(&long), V1TooLong);
        long[V1_MAX_LEN - 1] = b'\r';
        assert_eq!(err(&long), V1TooLong, "a CR at byte 107 cannot end a line");
        long.truncate(V1_MAX_LEN - 1);
        assert_eq!(parse_proxy_header(&long), Ok(ProxyParse::Incomplete));
    }

    #[test]
    fn prefixes_are_incomplete_and_garbage_is_refused_at_once() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        for n in 0..line.len() {
            assert_eq!(
                parse_proxy_header(&line[..n]),
                Ok(ProxyParse::Incomplete),
                "{n}"
            );
        }
        let bin = v2(0x21, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        for n in 0..bin.len() {
            assert_eq!(parse_proxy_header(&bin[..n]), Ok(ProxyParse::Incomplete));
        }
        assert_eq!(err(b"G"), ProxyError::NotProxy);
        assert_eq!(err(b"PROXYX"), ProxyError::NotProxy);
        assert_eq!(err(b"\r\n\r\n\0\r\nQUIX"), ProxyError::NotProxy);
        assert_eq!(err(b"\r\n\r\n\0\r\nQUIT\n\x11"), ProxyError::V2BadVersion);
        assert_eq!(err(b"\r\n\r\n\0\r\nQUIT\n\x22"), ProxyError::V2BadCommand);
        assert_eq!(
            err(b"\r\n\r\n\0\r\nQUIT\n\x21\x41"),
            ProxyError::V2BadFamily
        );
    }

    #[test]
    fn v2_families_and_commands() {
        let mut block = vec![192, 0, 2, 1, 198, 51, 100, 7];
        block.extend(56324u16.to_be_bytes());
        block.extend(443u16.to_be_bytes());
        let buf = v2(0x21, 0x11, &block);
        let h = header(&buf);
        assert_eq!(h.source, addr("192.0.2.1:56324"));
        assert_eq!(h.destination, addr("198.51.100.7:443"));
        assert_eq!((h.consumed, h.version), (28, 2));

        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let mut block = src.octets().to_vec();
        block.extend(dst.octets());
        block.extend([0, 80, 1, 187]);
        let h = header(&v2(0x21, 0x21, &block));
        assert_eq!(h.source, addr("[2001:db8::1]:80"));
        assert_eq!(h.destination, addr("[2001:db8::2]:443"));
        assert_eq!(h.consumed, 52);

        // LOCAL: addresses, if any, ignored; length honoured.
        let h = header(&v2(0x20, 0x11, &[1; 12]));
        assert_eq!((h.source, h.consumed), (None, 28));
        assert_eq!(header(&v2(0x20, 0x00, &[])).consumed, 16);
        // PROXY over UNSPEC or UNIX: the real peer stands.
        assert_eq!(header(&v2(0x21, 0x00, &[])).source, None);
        assert_eq!(header(&v2(0x21, 0x31, &[0; 216])).source, None);
        // UDP is a defined combination: accepted.
        assert!(header(&v2(0x21, 0x12, &[1; 12])).source.is_some());
    }

    #[test]
    fn v2_lengths_and_tlvs() {
        use ProxyError::*;
        // TLVs: skipped when they tile the rest exactly.
        let mut block = vec![1; 12];
        block.extend([0x04, 0, 3, b'a', b'b', b'c', 0x01, 0, 0]);
        let buf = v2(0x21, 0x11, &block);
        assert_eq!(header(&buf).consumed, buf.len());
        let mut bad = vec![1; 12];
        bad.extend([0x04, 0, 4, b'a', b'b', b'c']);
        assert_eq!(err(&v2(0x21, 0x11, &bad)), V2BadTlv);
        assert_eq!(err(&v2(0x21, 0x11, &[1; 14])), V2BadTlv);
        assert_eq!(err(&v2(0x21, 0x11, &[1; 11])), V2TooShort);
        assert_eq!(err(&v2(0x21, 0x21, &[1; 12])), V2TooShort);
        assert_eq!(err(&v2(0x21, 0x10, &[1; 12])), V2BadFamily);
        assert_eq!(err(&v2(0x21, 0x01, &[])), V2BadFamily);
        assert_eq!(err(&v2(0x21, 0x13, &[1; 12])), V2BadFamily);
        // Too long is known from the fixed part alone.
        let mut fixed = V2_SIGNATURE.to_vec();
        fixed.extend([0x21, 0x11, 0xff, 0xff]);
        assert_eq!(err(&fixed), V2TooLong);
        let mut biggest = vec![1; 12];
        biggest.extend([0, 0x0f, 0xe1]);
        biggest.resize(V2_MAX_LEN - V2_FIXED, 0);
        assert_eq!(header(&v2(0x21, 0x11, &biggest)).consumed, V2_MAX_LEN);
        biggest.push(0);
        assert_eq!(err(&v2(0x21, 0x11, &biggest)), V2TooLong);
    }

    #[test]
    fn the_client_stream_follows_untouched() {
        let mut buf = v2(0x21, 0x11, &[1; 12]);
        buf.extend(b"GET / HTTP/1.1\r\n\r\n");
        let h = header(&buf);
        assert_eq!(&buf[h.consumed..], b"GET / HTTP/1.1\r\n\r\n");
        let buf = b"PROXY UNKNOWN\r\n\r\n\r\n\0\r\nQUIT\n";
        assert_eq!(header(buf).consumed, 15);
    }
}
