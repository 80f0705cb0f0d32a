//! The proxy's record of the checks it sent in the session's current transaction, and the
//! rules for when the transaction may have ended (see [`Admitted`]).

use super::settings_memo::SettingsMemo;
use super::Fence;
use crate::protocol::backend::TxStatus;
use crate::sql::classify::Kind;

/// The most fences [`Admitted`] keeps per transaction.
pub const MAX_REMEMBERED: usize = 64;

/// The (resource, token) checks this session sent in its current transaction, so that the
/// next statement with the same token does not carry the check again. The check holds the
/// resource's lock until the transaction ends, and a failed check aborts the transaction,
/// so a check sent earlier in the same transaction covers every later statement, unless
/// the transaction ended or rolled back to a savepoint in between.
///
/// The memo is kept only while the proxy is sure the transaction continues:
/// - it is dropped at every statement that may end, begin or partly roll back a
///   transaction (transaction control, SET and the like, CALL/DO, statements that commit
///   on their own), and the next boundary drops it too; a SET of a fencing setting that
///   `super::settings_known` read inside a block drops only the settings memo (it changes
///   the settings, not the transaction);
/// - at a boundary (the start of a Query, a Sync), it survives only into a transaction
///   block that the last ReadyForQuery reported, with no ReadyForQuery still to come;
/// - an Execute of a portal other than the one bound last in the same round (which may be a
///   COMMIT bound earlier) drops it, and so does a FunctionCall (it may end an implicit
///   transaction).
///
/// A check the proxy does send again is still correct, and costs PostgreSQL only the fast
/// path (the transaction holds the locks already and reads H equal to the token). So the
/// memo keeps at most [`MAX_REMEMBERED`] fences: a transaction touching more resources
/// gets the later ones checked at each statement, and a Query naming thousands of
/// resources costs the proxy linear time, not quadratic.
///
/// It also keeps the settings a settings check admitted in the transaction (see
/// `super::settings_memo`). That memo is learned from the check's row, which arrives after
/// later messages may have been sent: it is taken only when nothing was forgotten since the
/// check was sent (the same `epoch`).
#[derive(Debug, Default)]
pub struct Admitted {
    fences: Vec<Fence>,
    settings: Option<SettingsMemo>,
    /// Counts every time the record is dropped.
    epoch: u64,
    /// The epoch in which the last settings check was sent.
    settings_sent: Option<u64>,
    /// A statement that may change the transaction was sent since the last boundary.
    unsure: bool,
    /// The portal of the client's last Bind, when that Bind came after the last boundary.
    last_portal: Vec<u8>,
    bound_this_round: bool,
    /// A Query was sent since the last message of another kind.
    query_sent: bool,
}

impl Admitted {
    /// No check is recorded.
    pub fn is_empty(&self) -> bool {
        self.fences.is_empty() && self.settings.is_none()
    }

    /// A statement sent since the last boundary may have ended the transaction block.
    pub fn is_unsure(&self) -> bool {
        self.unsure
    }

    /// A check for `fence` was sent in the current transaction.
    pub fn contains(&self, fence: &Fence) -> bool {
        self.fences.contains(fence)
    }

    /// A check for `fence` is being sent.
    pub fn record(&mut self, fence: &Fence) {
        if self.fences.len() < MAX_REMEMBERED && !self.contains(fence) {
            self.fences.push(fence.clone());
        }
    }

    /// What a settings check admitted in the current transaction.
    pub fn settings(&self) -> Option<&SettingsMemo> {
        self.settings.as_ref()
    }

    /// A settings check is being sent.
    pub fn settings_check_sent(&mut self) {
        self.settings_sent = Some(self.epoch);
    }

    /// A settings check's row arrived: keep what it admitted, if the transaction it ran in
    /// is still the one the record is for.
    pub fn settings_admitted(&mut self, memo: SettingsMemo) {
        if self.settings_sent == Some(self.epoch) {
            self.settings = Some(memo);
        }
    }

    /// A settings check of what the client's own SETs set is being sent (see
    /// `super::settings_known`): like a token's record, it holds from now on, since the
    /// check either admits them or fails the transaction.
    pub fn settings_known(&mut self, memo: SettingsMemo) {
        self.settings = Some(memo);
    }

    fn clear(&mut self) {
        self.fences.clear();
        self.settings = None;
        self.epoch += 1;
    }

    /// A SET of a fencing setting inside a transaction block is being sent: what a settings
    /// check admitted no longer stands (nor does the row of one still on its way), but the
    /// transaction goes on, and so does every token's record.
    pub fn settings_set(&mut self) {
        self.settings = None;
        self.epoch += 1;
    }

    /// The transaction may have ended: forget everything, and do not trust the next boundary.
    pub fn forget(&mut self) {
        self.clear();
        self.unsure = true;
    }

    /// Before a statement of this kind is sent.
    pub fn statement(&mut self, kind: Kind) {
        if matches!(
            kind,
            Kind::Control | Kind::Procedure | Kind::NonTransactional | Kind::Prepare
        ) {
            self.forget();
        }
    }

    /// At the start of a Query or at a Sync, where an implicit transaction ends.
    pub fn boundary(&mut self, settled_status: Option<TxStatus>) {
        if self.unsure || settled_status != Some(TxStatus::InBlock) {
            self.clear();
        }
        self.unsure = false;
        self.bound_this_round = false;
    }

    /// A Query is being sent.
    pub fn query_sent(&mut self) {
        self.query_sent = true;
    }

    /// Before a message other than a Query: the first one after a Query is a boundary, since
    /// the Query may have run in an implicit transaction that has ended since (a settings
    /// check's memo learned there must not stand for a check in the next one).
    pub fn after_query(&mut self, settled_status: Option<TxStatus>) {
        if std::mem::take(&mut self.query_sent) {
            self.boundary(settled_status);
        }
    }

    /// The client bound `portal`.
    pub fn bind(&mut self, portal: &[u8]) {
        self.last_portal.clear();
        self.last_portal.extend_from_slice(portal);
        self.bound_this_round = true;
    }

    /// The client executes `portal`.
    pub fn execute(&mut self, portal: &[u8]) {
        if !self.bound_this_round || portal != self.last_portal.as_slice() {
            self.forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(token: i64) -> Fence {
        Fence {
            resource: "r".into(),
            token,
        }
    }

    #[test]
    fn the_record_is_bounded_and_keeps_what_came_first() {
        let mut m = Admitted::default();
        let many: Vec<Fence> = (0..=MAX_REMEMBERED as i64).map(fence).collect();
        for f in &many {
            m.record(f);
        }
        assert!(m.contains(&many[0]));
        assert!(m.contains(&many[MAX_REMEMBERED - 1]));
        assert!(
            !m.contains(&many[MAX_REMEMBERED]),
            "past the bound: checked again"
        );
    }

    #[test]
    fn a_block_keeps_the_record_across_boundaries_it_is_sure_of() {
        let mut m = Admitted::default();
        m.boundary(Some(TxStatus::InBlock));
        m.record(&fence(1));
        m.statement(Kind::Write);
        m.boundary(Some(TxStatus::InBlock));
        assert!(m.contains(&fence(1)));
        assert!(!m.contains(&fence(2)));
        // Outside a block, with a reply still owed, or after transaction control: gone.
        for status in [Some(TxStatus::Idle), None] {
            m.record(&fence(1));
            m.boundary(status);
            assert!(!m.contains(&fence(1)), "{status:?}");
        }
        m.record(&fence(1));
        m.statement(Kind::Control);
        assert!(!m.contains(&fence(1)));
        m.record(&fence(1));
        m.boundary(Some(TxStatus::InBlock));
        assert!(!m.contains(&fence(1)), "the round had a control statement");
    }

    #[test]
    fn a_settings_row_counts_only_for_the_transaction_it_was_sent_in() {
        let memo = || {
            let row = [
                &[0u8, 3, 0, 0, 0, 1, b'7', 0, 0, 0, 2][..],
                b"72",
                &[0, 0, 0, 1, b'7'],
            ]
            .concat();
            crate::fence::settings_memo::learn(&row)
                .and_then(|l| l.memo)
                .expect("memo")
        };
        let mut m = Admitted::default();
        m.boundary(Some(TxStatus::InBlock));
        m.settings_check_sent();
        m.settings_admitted(memo());
        assert!(m.settings().is_some());
        m.boundary(Some(TxStatus::InBlock));
        assert!(m.settings().is_some(), "the block continues");
        m.statement(Kind::Control);
        assert!(m.settings().is_none());
        // Sent, then a ROLLBACK TO went out before the row came back: not learned.
        m.boundary(Some(TxStatus::InBlock));
        m.settings_check_sent();
        m.statement(Kind::Control);
        m.settings_admitted(memo());
        assert!(m.settings().is_none());
        // Sent, then the next Query starts before ReadyForQuery: not learned.
        m.boundary(Some(TxStatus::InBlock));
        m.settings_check_sent();
        m.boundary(None);
        m.settings_admitted(memo());
        assert!(m.settings().is_none());
    }

    #[test]
    fn a_fencing_set_drops_only_the_settings_memo() {
        let mut m = Admitted::default();
        m.boundary(Some(TxStatus::InBlock));
        m.record(&fence(1));
        m.settings_known(SettingsMemo::from_plain("r", "1"));
        m.settings_set();
        assert!(m.settings().is_none() && m.contains(&fence(1)));
        m.settings_known(SettingsMemo::from_plain("r", "2"));
        m.boundary(Some(TxStatus::InBlock));
        assert!(m.settings().is_some(), "a SET does not end the block");
        assert!(m.contains(&fence(1)));
    }

    #[test]
    fn only_the_portal_just_bound_may_execute_without_doubt() {
        let mut m = Admitted::default();
        m.bind(b"p");
        m.record(&fence(1));
        m.execute(b"p");
        assert!(m.contains(&fence(1)));
        m.execute(b"other");
        assert!(!m.contains(&fence(1)));
        m.boundary(Some(TxStatus::InBlock));
        m.record(&fence(1));
        m.execute(b"p");
        assert!(!m.contains(&fence(1)), "bound in an earlier round");
    }
}
