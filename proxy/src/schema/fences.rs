//! `fencegate fences`: the operator's view of the fence, read directly from the views
//! `fencegate.fences` and `fencegate.holders` (`views.sql`): per resource its high-water
//! mark, when it last rose, its lease, and the sessions holding its fence lock now.

use serde::Serialize;

use super::admin::{connect, AdminError};
use super::SCHEMA_VERSION;

/// One resource as the fence sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resource {
    /// The resource's name.
    pub resource: String,
    /// H(r): the highest token admitted (none yet for a resource only leased).
    pub high_water: Option<i64>,
    /// When H(r) last rose (PostgreSQL's text for the timestamp).
    pub raised_at: Option<String>,
    /// The lease holder, when the lease service holds it.
    pub lease_holder: Option<String>,
    /// When that lease expires.
    pub lease_expires_at: Option<String>,
    /// The sessions holding its fence lock.
    pub holders: Vec<Holder>,
}

/// A session holding a resource's fence lock in its open transaction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Holder {
    /// The backend's process id.
    pub pid: i32,
    /// Its role (hidden unless the reader may see it).
    pub user: Option<String>,
    /// Its client address (hidden unless the reader may see it; empty over a socket).
    pub client_addr: Option<String>,
    /// `active`, `idle in transaction`, ... (hidden unless the reader may see it).
    pub state: Option<String>,
    /// `holding` (admitted with the current token) or `raising` (raising H).
    pub role: String,
    /// Its token: the highest it published, or H for a holder a fast path admitted (which
    /// publishes nothing).
    pub token: Option<i64>,
    /// Seconds since its transaction began.
    pub xact_age_seconds: Option<f64>,
}

const RESOURCES: &str = "SELECT resource, high_water, raised_at::text, lease_holder, \
     lease_expires_at::text FROM fencegate.fences \
     WHERE $1::text IS NULL OR resource = $1::text ORDER BY resource";

const HOLDERS: &str = "SELECT resource, pid, user_name::text, client_addr::text, state, role, \
     token, (EXTRACT(epoch FROM xact_age))::text FROM fencegate.holders \
     WHERE $1::text IS NULL OR resource = $1::text ORDER BY resource, pid";

/// Every resource (or only `only`) with its holders, read in one snapshot.
pub async fn read(url: &str, only: Option<&str>) -> Result<Vec<Resource>, AdminError> {
    let (mut client, driver) = connect(url).await?;
    let installed = client
        .query_one(
            "SELECT pg_catalog.to_regclass('fencegate.holders') IS NOT NULL",
            &[],
        )
        .await?
        .get::<_, bool>(0);
    if !installed {
        return Err(AdminError::NotInstalled(SCHEMA_VERSION));
    }
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let mut resources: Vec<Resource> = tx
        .query(RESOURCES, &[&only])
        .await?
        .iter()
        .map(|row| Resource {
            resource: row.get(0),
            high_water: row.get(1),
            raised_at: row.get(2),
            lease_holder: row.get(3),
            lease_expires_at: row.get(4),
            holders: Vec::new(),
        })
        .collect();
    for row in tx.query(HOLDERS, &[&only]).await? {
        let name: String = row.get(0);
        let age: Option<String> = row.get(7);
        let holder = Holder {
            pid: row.get(1),
            user: row.get(2),
            client_addr: row.get(3),
            state: row.get(4),
            role: row.get(5),
            token: row.get(6),
            xact_age_seconds: age.and_then(|a| a.parse().ok()),
        };
        if let Some(r) = resources.iter_mut().find(|r| r.resource == name) {
            r.holders.push(holder);
        }
    }
    tx.commit().await?;
    drop(client);
    let _ = driver.await;
    Ok(resources)
}

/// The resources as a table for people.
pub fn render_text(resources: &[Resource]) -> String {
    let mut out = String::new();
    for r in resources {
        match (r.high_water, &r.raised_at) {
            (Some(h), Some(at)) => {
                out.push_str(&format!("{}  high water {h}  raised {at}", r.resource))
            }
            _ => out.push_str(&format!("{}  not fenced yet", r.resource)),
        }
        if let (Some(holder), Some(until)) = (&r.lease_holder, &r.lease_expires_at) {
            out.push_str(&format!("  lease {holder} until {until}"));
        }
        out.push('\n');
        for h in &r.holders {
            let or_hidden = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "    pid {}  {}  token {}  {}  user {}  client {}  transaction {}\n",
                h.pid,
                h.role,
                h.token.map_or("-".into(), |t| t.to_string()),
                or_hidden(&h.state),
                or_hidden(&h.user),
                or_hidden(&h.client_addr),
                h.xact_age_seconds
                    .map_or("-".into(), |s| format!("{s:.1} s")),
            ));
        }
    }
    out
}
