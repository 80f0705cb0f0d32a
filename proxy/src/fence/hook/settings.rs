//! Which settings check a [`FenceHook`] sends for a statement checked under the settings in
//! effect, once the database is known to have the schema: `admit_set` of what the client's
//! own SETs have just set (`super::super::settings_known`), else the first check with the
//! session's belief or the comparison with the transaction's memo
//! (`super::super::settings_memo`).

use super::FenceHook;

impl FenceHook {
    /// The settings check to put in front of the statement, noting what it stands for.
    pub(super) fn settings_check(&mut self, required: bool) -> String {
        if self.procedures == Some(true) && self.admitted.settings().is_none() {
            if let Some((sql, memo)) = self.known_settings.admit_sql(self.policy.grace_ms) {
                self.admitted.settings_known(memo);
                return sql;
            }
        }
        self.admitted.settings_check_sent();
        let memo = self.admitted.settings();
        self.settings_belief
            .sql(self.policy.grace_ms, required, memo, self.procedures)
    }
}
