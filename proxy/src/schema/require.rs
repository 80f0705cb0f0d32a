//! `fencegate require`: tables that refuse a write unless a fencing check admitted a
//! current token earlier in the same transaction. The rule lives in the database, as the
//! statement-level trigger `fencegate_require` calling `fencegate.require_token()`
//! (require.sql), so it holds for every path to the table: the proxy, connections that go
//! around it, functions, views, rules, COPY, MERGE. The proxy's `--require-token-table` is
//! only an earlier, clearer refusal of the same thing.
//!
//! A table's partitions and inheritance children get the trigger too (PostgreSQL does not
//! clone statement triggers); partitions attached later need `fencegate require` again.

use super::admin::{connect, AdminError};
use super::SCHEMA_VERSION;

/// The trigger's name on every required table.
pub const TRIGGER: &str = "fencegate_require";

/// The table and its descendants, as qualified names, with their relkind.
const TREE: &str = "WITH RECURSIVE tree(oid) AS ( \
         SELECT pg_catalog.to_regclass($1)::oid \
         UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree t ON i.inhparent = t.oid) \
     SELECT c.oid::regclass::text, c.relkind::text FROM tree \
     JOIN pg_catalog.pg_class c ON c.oid = tree.oid ORDER BY c.oid = pg_catalog.to_regclass($1) DESC, 1";

/// Makes each of `tables` (SQL names, `schema.table` or found by the search path) require a
/// fencing token, in one transaction; idempotent. Connect as a superuser (or a member of
/// `fencegate_owner` that may create triggers on the tables). Returns every table that now carries the
/// trigger, descendants included.
pub async fn install(url: &str, tables: &[String]) -> Result<Vec<String>, AdminError> {
    change(url, tables, true).await
}

/// Removes the requirement from each of `tables` and their descendants, in one transaction;
/// a table without it is no error. Returns the tables looked at.
pub async fn remove(url: &str, tables: &[String]) -> Result<Vec<String>, AdminError> {
    change(url, tables, false).await
}

/// The tables of the database that require a fencing token.
pub async fn list(url: &str) -> Result<Vec<String>, AdminError> {
    let (client, driver) = connect(url).await?;
    ensure_installed(&client).await?;
    let rows = client
        .query(
            "SELECT t.tgrelid::regclass::text FROM pg_catalog.pg_trigger t \
             WHERE t.tgname = $1 AND t.tgfoid = 'fencegate.require_token()'::regprocedure \
             ORDER BY 1",
            &[&TRIGGER],
        )
        .await?;
    drop(client);
    let _ = driver.await;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn change(url: &str, tables: &[String], add: bool) -> Result<Vec<String>, AdminError> {
    let (mut client, driver) = connect(url).await?;
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await?;
    ensure_installed(&tx).await?;
    let mut done = Vec::new();
    for name in tables {
        for table in resolve(&tx, name).await? {
            let mut sql = format!("DROP TRIGGER IF EXISTS {TRIGGER} ON {table};");
            if add {
                sql.push_str(&format!(
                    "CREATE TRIGGER {TRIGGER} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE \
                     ON {table} FOR EACH STATEMENT EXECUTE FUNCTION fencegate.require_token();"
                ));
            }
            tx.batch_execute(&sql).await?;
            if !done.contains(&table) {
                done.push(table);
            }
        }
    }
    // Checks leave proofs only while some table requires them.
    tx.batch_execute("SELECT fencegate._refresh_proving()")
        .await?;
    tx.commit().await?;
    drop(client);
    let _ = driver.await;
    Ok(done)
}

/// Fails unless this build's schema (with `fencegate.require_token()`) is installed.
async fn ensure_installed(client: &impl tokio_postgres::GenericClient) -> Result<(), AdminError> {
    let row = client
        .query_one(
            "SELECT pg_catalog.to_regprocedure('fencegate.require_token()') IS NOT NULL",
            &[],
        )
        .await?;
    if row.get::<_, bool>(0) {
        Ok(())
    } else {
        Err(AdminError::NotInstalled(SCHEMA_VERSION))
    }
}

/// `name` and its descendants as quoted, qualified names; refuses what is not a table.
async fn resolve(
    client: &impl tokio_postgres::GenericClient,
    name: &str,
) -> Result<Vec<String>, AdminError> {
    let rows = client.query(TREE, &[&name]).await?;
    if rows.is_empty() {
        return Err(AdminError::Refused(format!(
            "table {name:?} does not exist (names are SQL names: quote mixed case, as in '\"Orders\"')"
        )));
    }
    let mut tables = Vec::with_capacity(rows.len());
    for row in &rows {
        let (table, kind): (String, String) = (row.get(0), row.get(1));
        match kind.as_str() {
            "r" | "p" => tables.push(table),
            "v" | "m" => {
                return Err(AdminError::Refused(format!(
                    "{table} is a view: a write through it reaches its base tables, require those"
                )))
            }
            _ => {
                return Err(AdminError::Refused(format!(
                    "{table} is not a table (relkind {kind}): only tables and partitioned tables can require a fencing token"
                )))
            }
        }
    }
    Ok(tables)
}
