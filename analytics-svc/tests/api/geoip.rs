//! The GeoIP lookup on real MaxMind DB files written by the test: IPv4,
//! IPv6 and IPv4-mapped clients, the registered-country fallback, misses,
//! and files that must stop the service from starting.

use shortfleet_common::geoip::testing as mmdb;

use std::path::PathBuf;

use analytics_svc::geoip::GeoIp;
use mmdb::{Network, Value, country};

/// A file in the temp dir that is removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn with(bytes: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!(
            "shortfleet-geoip-{}.mmdb",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn database() -> TempFile {
    TempFile::with(&mmdb::build(&[
        Network {
            addr: "203.0.113.0".parse().unwrap(),
            prefix: 24,
            record: country("DE"),
        },
        Network {
            addr: "198.51.100.128".parse().unwrap(),
            prefix: 25,
            record: country("fr"),
        },
        Network {
            addr: "2001:db8:1::".parse().unwrap(),
            prefix: 48,
            record: country("JP"),
        },
        // A range with only a registered country (as for anycast blocks).
        Network {
            addr: "192.0.2.0".parse().unwrap(),
            prefix: 24,
            record: Value::Map(vec![(
                "registered_country",
                Value::Map(vec![("iso_code", Value::Str("US"))]),
            )]),
        },
    ]))
}

#[test]
fn clients_resolve_to_their_network_country() {
    let file = database();
    let geoip = GeoIp::open(&file.0).unwrap();
    assert_eq!(geoip.country("203.0.113.77").as_deref(), Some("DE"));
    assert_eq!(geoip.country("198.51.100.200").as_deref(), Some("fr"));
    assert_eq!(geoip.country("2001:db8:1:ffff::1").as_deref(), Some("JP"));
    // A dual-stack socket reports IPv4 clients as mapped IPv6 addresses.
    assert_eq!(geoip.country("::ffff:203.0.113.5").as_deref(), Some("DE"));
    assert_eq!(geoip.country("192.0.2.9").as_deref(), Some("US"));
}

#[test]
fn unknown_or_malformed_addresses_have_no_country() {
    let file = database();
    let geoip = GeoIp::open(&file.0).unwrap();
    // Just outside the /25, and the neighbouring /24.
    assert_eq!(geoip.country("198.51.100.127"), None);
    assert_eq!(geoip.country("203.0.114.1"), None);
    assert_eq!(geoip.country("2001:db8:2::1"), None);
    for junk in ["", "not-an-ip", "203.0.113", "203.0.113.1:443"] {
        assert_eq!(geoip.country(junk), None, "{junk:?}");
    }
}

#[test]
fn a_missing_or_corrupt_file_is_a_start_up_error() {
    let missing = std::env::temp_dir().join("shortfleet-geoip-does-not-exist.mmdb");
    let err = GeoIp::open(&missing).unwrap_err();
    assert!(format!("{err:#}").contains("does-not-exist"), "{err:#}");
    let corrupt = TempFile::with(b"this is not a MaxMind database");
    assert!(GeoIp::open(&corrupt.0).is_err());
}
