//! The proxy's memory of high-water marks: a safe lower bound, never the authority.
//!
//! It learns only committed values (the current token a 55Z01 rejection of the schema's check
//! reports in a field of its own, read from the committed row), and H never decreases once committed, so a token
//! below a cached value is certainly stale. The proxy then rejects it at once, still inside
//! the client's transaction (which the server aborts), without touching the fence row and
//! without queueing behind the newer holder's lock. A token at or above the cached value is
//! always checked by PostgreSQL.

use std::collections::HashMap;

use dashmap::DashMap;

use super::parse_token;

/// Highest committed token seen, per (database, resource).
#[derive(Debug, Default)]
pub struct HighWaterCache {
    /// By database, then resource: looked up with borrowed names, as every check does.
    marks: DashMap<String, HashMap<String, i64>>,
}

impl HighWaterCache {
    /// The cached lower bound of H for a resource, if any.
    pub fn get(&self, database: &str, resource: &str) -> Option<i64> {
        self.marks.get(database)?.get(resource).copied()
    }

    /// Records a committed H (keeps the maximum).
    pub fn observe(&self, database: &str, resource: &str, token: i64) {
        let mut marks = self.marks.entry(database.to_string()).or_default();
        let entry = marks.entry(resource.to_string()).or_insert(token);
        if *entry < token {
            *entry = token;
        }
    }

    /// Learns from the marker a 55Z01 rejection of the schema's check carries in its COLUMN
    /// field, `fencegate:H:HEX` (H read from the committed row, the checked resource's UTF-8
    /// in hex): values the check itself produced, never text a client could shape.
    pub fn observe_rejection(&self, database: &str, marker: &[u8]) {
        if let Some((resource, current)) = parse_marker(marker) {
            self.observe(database, &resource, current);
        }
    }
}

fn parse_marker(marker: &[u8]) -> Option<(String, i64)> {
    let rest = marker.strip_prefix(b"fencegate:")?;
    let colon = memchr::memchr(b':', rest)?;
    let current = parse_token(&rest[..colon])?;
    let hex = &rest[colon + 1..];
    if hex.is_empty() || hex.len() % 2 != 0 {
        return None;
    }
    let bytes = hex
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((String::from_utf8(bytes).ok()?, current))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_maximum_per_database_and_resource() {
        let c = HighWaterCache::default();
        assert_eq!(c.get("db", "r"), None);
        c.observe("db", "r", 5);
        c.observe("db", "r", 3);
        assert_eq!(c.get("db", "r"), Some(5));
        assert_eq!(c.get("other", "r"), None);
    }

    #[test]
    fn learns_from_rejection_detail() {
        let c = HighWaterCache::default();
        c.observe_rejection("db", b"fencegate:42:6a6f623a372078");
        assert_eq!(c.get("db", "job:7 x"), Some(42));
        let not_a_detail = "presented_token=1 current_token=9 resource=a";
        for bad in [
            "garbage",
            "fencegate::61",
            "fencegate:1:6",
            "fencegate:1:zz",
        ] {
            c.observe_rejection("db", bad.as_bytes());
        }
        for bad in ["fencegate:-1:61", not_a_detail] {
            c.observe_rejection("db", bad.as_bytes());
        }
        assert_eq!(c.get("db", "a"), None);
    }
}
