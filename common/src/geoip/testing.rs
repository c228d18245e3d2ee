//! Writes small MaxMind DB files (format 2.0, IPv6 tree with IPv4 under
//! `::/96` as GeoLite2 ships, 24-bit records) so tests exercise the real
//! reader on a real file without shipping a third-party database.
//! Spec: https://maxmind.github.io/MaxMind-DB/

use std::net::IpAddr;

/// One network and the record its addresses resolve to.
pub struct Network {
    pub addr: IpAddr,
    pub prefix: u8,
    pub record: Value,
}

pub enum Value {
    Str(&'static str),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(&'static str, Value)>),
    Array(Vec<Value>),
}

/// `{"country": {"iso_code": code}}` — the shape of a GeoLite2-Country record.
pub fn country(code: &'static str) -> Value {
    Value::Map(vec![(
        "country",
        Value::Map(vec![("iso_code", Value::Str(code))]),
    )])
}

#[derive(Clone, Copy)]
enum Record {
    Empty,
    Node(usize),
    Data(usize),
}

/// The bytes of a database holding `networks` (which must not overlap).
pub fn build(networks: &[Network]) -> Vec<u8> {
    let mut tree: Vec<[Record; 2]> = vec![[Record::Empty; 2]];
    let mut data = Vec::new();
    for network in networks {
        let offset = data.len();
        encode(&network.record, &mut data);
        let (bits, len) = match network.addr {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 96 + usize::from(network.prefix)),
            IpAddr::V6(v6) => (u128::from(v6), usize::from(network.prefix)),
        };
        let mut node = 0;
        for depth in 0..len {
            let bit = ((bits >> (127 - depth)) & 1) as usize;
            if depth + 1 == len {
                tree[node][bit] = Record::Data(offset);
                break;
            }
            node = match tree[node][bit] {
                Record::Node(next) => next,
                Record::Empty => {
                    tree.push([Record::Empty; 2]);
                    let next = tree.len() - 1;
                    tree[node][bit] = Record::Node(next);
                    next
                }
                Record::Data(_) => panic!("overlapping networks"),
            };
        }
    }
    let node_count = tree.len();
    let mut out = Vec::new();
    for node in &tree {
        for record in node {
            let value = match *record {
                Record::Node(next) => next,
                Record::Empty => node_count,
                Record::Data(offset) => node_count + 16 + offset,
            };
            assert!(value < 1 << 24, "record does not fit 24 bits");
            out.extend_from_slice(&(value as u32).to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    let metadata = Value::Map(vec![
        ("binary_format_major_version", Value::U16(2)),
        ("binary_format_minor_version", Value::U16(0)),
        ("build_epoch", Value::U64(1_763_856_000)),
        ("database_type", Value::Str("Shortfleet-Test-Country")),
        (
            "description",
            Value::Map(vec![("en", Value::Str("test networks"))]),
        ),
        ("ip_version", Value::U16(6)),
        ("languages", Value::Array(vec![Value::Str("en")])),
        ("node_count", Value::U32(node_count as u32)),
        ("record_size", Value::U16(24)),
    ]);
    encode(&metadata, &mut out);
    out
}

fn encode(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Str(s) => {
            control(out, 2, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        Value::U16(n) => unsigned(out, 5, u64::from(*n)),
        Value::U32(n) => unsigned(out, 6, u64::from(*n)),
        Value::U64(n) => unsigned(out, 9, *n),
        Value::Map(entries) => {
            control(out, 7, entries.len());
            for (key, value) in entries {
                encode(&Value::Str(key), out);
                encode(value, out);
            }
        }
        Value::Array(items) => {
            control(out, 11, items.len());
            for item in items {
                encode(item, out);
            }
        }
    }
}

/// Big-endian, without leading zero bytes (the format's minimal width).
fn unsigned(out: &mut Vec<u8>, kind: u8, n: u64) {
    let bytes = n.to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    control(out, kind, bytes.len() - first);
    out.extend_from_slice(&bytes[first..]);
}

/// The control byte: type in the top 3 bits (types above 7 in a second
/// byte), size in the low 5 (sizes from 29 in an extra byte).
fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
    assert!(size < 285, "sizes over 284 are not needed here");
    let size_bits = if size < 29 { size as u8 } else { 29 };
    if kind <= 7 {
        out.push(kind << 5 | size_bits);
    } else {
        out.push(size_bits);
        out.push(kind - 7);
    }
    if size >= 29 {
        out.push((size - 29) as u8);
    }
}

/// A [`GeoIp`](super::GeoIp) over one network placed in `country`: the file
/// is written to the temporary directory (named after `who`, so parallel
/// tests never share one), opened and removed again.
#[allow(clippy::expect_used)] // test support: a failure here is the test's
pub fn one_country(
    who: &str,
    network: &str,
    prefix: u8,
    country_code: &'static str,
) -> super::GeoIp {
    let path = std::env::temp_dir().join(format!("shortfleet-{who}-{}.mmdb", std::process::id()));
    let addr = network.parse().expect("a test network is an address");
    std::fs::write(
        &path,
        build(&[Network {
            addr,
            prefix,
            record: country(country_code),
        }]),
    )
    .expect("writing a test GeoIP file");
    let geoip = super::GeoIp::open(&path);
    let _ = std::fs::remove_file(&path);
    geoip.expect("a written GeoIP file opens")
}
