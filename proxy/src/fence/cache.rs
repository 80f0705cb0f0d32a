//! The proxy's memory of high-water marks: a safe lower bound, never the authority.
//!
//! It learns only committed values (the `current_token` a 55Z01 rejection reports, which
//! PostgreSQL read from the committed row), and H never decreases once committed, so a token
//! below a cached value is certainly stale. The proxy then rejects it at once, still inside
//! the client's transaction (which the server aborts), without touching the fence row and
//! without queueing behind the newer holder's lock. A token at or above the cached value is
//! always checked by PostgreSQL.

use dashmap::DashMap;

use super::parse_token;

/// Highest committed token seen, per (database, resource).
#[derive(Debug, Default)]
pub struct HighWaterCache {
    marks: DashMap<(String, String), i64>,
}

impl HighWaterCache {
    /// The cached lower bound of H for a resource, if any.
    pub fn get(&self, database: &str, resource: &str) -> Option<i64> {
        self.marks
            .get(&(database.to_string(), resource.to_string()))
            .map(|v| *v)
    }

    /// Records a committed H (keeps the maximum).
    pub fn observe(&self, database: &str, resource: &str, token: i64) {
        let mut entry = self
            .marks
            .entry((database.to_string(), resource.to_string()))
            .or_insert(token);
        if *entry < token {
            *entry = token;
        }
    }

    /// Learns from the DETAIL of a 55Z01 error
    /// (`presented_token=T current_token=H resource=R`).
    pub fn observe_rejection(&self, database: &str, detail: &[u8]) {
        if let Some((resource, current)) = parse_detail(detail) {
            self.observe(database, &resource, current);
        }
    }
}

fn parse_detail(detail: &[u8]) -> Option<(String, i64)> {
    let text = std::str::from_utf8(detail).ok()?;
    let rest = text.split_once("current_token=")?.1;
    let (current, resource) = rest.split_once(" resource=")?;
    Some((resource.to_string(), parse_token(current.as_bytes())?))
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
        c.observe_rejection("db", b"presented_token=1 current_token=42 resource=job:7 x");
        assert_eq!(c.get("db", "job:7 x"), Some(42));
        c.observe_rejection("db", b"garbage");
        c.observe_rejection("db", b"presented_token=1 current_token= resource=a");
        assert_eq!(c.get("db", "a"), None);
    }
}
