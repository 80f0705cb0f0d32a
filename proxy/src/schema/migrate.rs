//! `fencegate migrate`: connect to one database directly and install the schema.

use super::admin::{connect, quote_ident, AdminError};
use super::{INSTALL, SCHEMA_VERSION};

/// Installs or upgrades the `fencegate` schema in the database `url` names, in one
/// transaction (serialized against concurrent runs). Returns the installed version.
pub async fn run(url: &str) -> Result<i32, AdminError> {
    run_granting(url, &[]).await
}

/// The public interface of the schema: what an application role needs.
const PUBLIC_ROUTINES: &str = "fencegate.check(text, bigint, int4), \
     fencegate.admit_current(text, bigint, int4), \
     fencegate.admit_set(text, bigint, int4), \
     fencegate.settings_unchanged(text, text, int4, boolean), \
     fencegate.settings_unchanged(text, text), \
     fencegate.admit_settings(bigint, text, int4, boolean, boolean), \
     fencegate.check_current(text, bigint, int4), \
     fencegate.check_settings(int4, boolean), fencegate.high_water(text), \
     fencegate.settings_same(text, text, int4, boolean), \
     fencegate.acquire(text, text, interval), fencegate.renew(text, text, bigint, interval), \
     fencegate.release(text, text, bigint), fencegate.lease_holder(text), \
     fencegate._settings_invalid(text, text, boolean), fencegate._admitted(), \
     fencegate.require_token()";

/// [`run`], then grants each of `roles` the schema's public interface, in the same
/// transaction (a role that does not exist fails the whole migration).
pub async fn run_granting(url: &str, roles: &[String]) -> Result<i32, AdminError> {
    let (mut client, driver) = connect(url).await?;
    let tx = client.transaction().await?;
    tx.batch_execute(INSTALL).await?;
    for role in roles {
        let role = quote_ident(role);
        tx.batch_execute(&format!(
            "GRANT USAGE ON SCHEMA fencegate TO {role}; \
             GRANT EXECUTE ON ROUTINE {PUBLIC_ROUTINES} TO {role};"
        ))
        .await?;
    }
    tx.commit().await?;
    drop(client);
    let _ = driver.await;
    Ok(SCHEMA_VERSION)
}
