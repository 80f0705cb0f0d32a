//! What the tests of the proxy's check memo (`fence_memo.rs`, which counts the checks it
//! saves, and `fence_memo_g1.rs`, which shows it never outlives a transaction) share: the
//! one-row table they write to, statements that carry a token, and the row's note.

use crate::fence::{comment, FenceEnv};

/// The table every memo test writes to: row 1's note collects a mark per committed write.
pub const SETUP: &str = "
CREATE TABLE t (id int PRIMARY KEY, note text NOT NULL DEFAULT '');
INSERT INTO t VALUES (1, '');
GRANT ALL ON t TO trust_user;
";

/// Appends `mark` to row 1 of `t`, carrying (`resource`, `token`).
pub fn write(resource: &str, token: i64, mark: &str) -> String {
    format!(
        "UPDATE t SET note = note || '{mark}' WHERE id = 1 {}",
        comment(resource, token)
    )
}

/// Reads row 1 of `t`, carrying (`resource`, `token`).
pub fn read(resource: &str, token: i64) -> String {
    format!(
        "SELECT note FROM t WHERE id = 1 {}",
        comment(resource, token)
    )
}

/// Row 1's note, read directly.
pub async fn note(env: &FenceEnv) -> String {
    env.monitor
        .text("SELECT note FROM t WHERE id = 1")
        .await
        .unwrap()
}
