//! Country of a click's client IP from a MaxMind DB file (GeoLite2 or
//! GeoIP2 Country/City, or any `.mmdb` whose records carry
//! `country.iso_code`), used when `SHORTFLEET_GEOIP_DB` names one: by
//! analytics-svc for a click's country, by the gateway for country rules
//! (both only when no trusted country header said it), so a rule and the
//! stats agree on where a client is.
//!
//! The file is read into memory once at start-up (a Country database is a
//! few MB); a new file takes effect at the next restart. Lookups are pure
//! memory reads, so they run inline (in the consumer's batch, on the
//! redirect path).

use std::{net::IpAddr, path::Path};

use anyhow::Context;
use maxminddb::{PathElement, Reader};

/// A writer of small `.mmdb` files, for tests of anything that reads one.
#[cfg(any(test, feature = "geoip-testing"))]
pub mod testing;

pub struct GeoIp {
    reader: Reader<Vec<u8>>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp")
            .field("database_type", &self.reader.metadata.database_type)
            .field("build_epoch", &self.reader.metadata.build_epoch)
            .finish()
    }
}

impl GeoIp {
    /// Opens and checks the file; an unreadable or malformed file is a
    /// start-up error, not a silently empty country dimension.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let reader = Reader::open_readfile(path)
            .with_context(|| format!("reading GeoIP database {}", path.display()))?;
        tracing::info!(
            path = %path.display(),
            database_type = %reader.metadata.database_type,
            build_epoch = reader.metadata.build_epoch,
            "GeoIP database loaded"
        );
        Ok(Self { reader })
    }

    /// The ISO 3166-1 alpha-2 code for `ip` (as the gateway wrote it), or
    /// `None` when the address is not in the database, is not an address,
    /// or the record has no country. Falls back to the registered country
    /// (e.g. for anycast or satellite ranges without a located country).
    pub fn country(&self, ip: &str) -> Option<String> {
        self.country_of(ip.trim().parse().ok()?)
    }

    /// [`Self::country`] for an address already parsed.
    pub fn country_of(&self, ip: IpAddr) -> Option<String> {
        // "::ffff:198.51.100.7" from a dual-stack socket is an IPv4 client.
        let ip = ip.to_canonical();
        let found = match self.reader.lookup(ip) {
            Ok(found) => found,
            // An IPv6 client against an IPv4-only database: no country.
            Err(_) => return counted(None, "error"),
        };
        let code = ["country", "registered_country"].iter().find_map(|field| {
            found
                .decode_path::<String>(&[PathElement::Key(field), PathElement::Key("iso_code")])
                .ok()
                .flatten()
        });
        let label = if code.is_some() { "found" } else { "not_found" };
        counted(code, label)
    }
}

fn counted(code: Option<String>, result: &'static str) -> Option<String> {
    metrics::counter!("shortfleet_geoip_lookups_total", "result" => result).increment(1);
    code
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_geoip_lookups_total",
        metrics::Unit::Count,
        "GeoIP country lookups, by result."
    );
}

#[cfg(test)]
mod tests {
    use super::testing;

    #[test]
    fn looks_up_parsed_and_textual_addresses_alike() {
        let geoip = testing::one_country("common-geoip", "203.0.113.0", 24, "DE");
        assert_eq!(
            geoip.country_of("203.0.113.9".parse().unwrap()).as_deref(),
            Some("DE")
        );
        assert_eq!(geoip.country("::ffff:203.0.113.9").as_deref(), Some("DE"));
        assert_eq!(geoip.country_of("198.51.100.1".parse().unwrap()), None);
        assert_eq!(geoip.country("not an address"), None);
    }
}
