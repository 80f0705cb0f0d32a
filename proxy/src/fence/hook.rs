//! The fence as a session hook: for each statement a client sends, decide (see
//! [`super::plan`]) and put the check in front of it, in the client's own transaction.
//!
//! - Simple Query: the Query string is split into statements and the check is inserted as a
//!   statement of its own right before each statement that needs one, so it runs in the
//!   same (implicit or explicit) transaction, after any SET earlier in the string. The
//!   check's results are hidden; if it fails, the server stops the string there and the
//!   client sees the error in place of its statement's result.
//! - Extended protocol: the annotation is read from Parse; the check (Close, Parse, Bind,
//!   Execute of the proxy's own named statement and portal) goes right before the client's
//!   Bind. After the client's Parse, so a failed check never leaves the client's statement
//!   unprepared; before its Bind, because Bind takes the statement's snapshot (READ
//!   COMMITTED), which must come after the check has waited for an older holder's commit,
//!   or the client would read data from before that commit. If the check fails, the server
//!   skips the client's messages up to Sync and the client sees the error.
//! - Settings (`SET [LOCAL] fencing.*`, startup options): once a session may have them, each
//!   data statement without an annotation is preceded by `fencegate.check_settings` (in a
//!   DO block, with a probe after it, until the database is known to have the schema), and
//!   PostgreSQL itself resolves SET LOCAL > SET > startup, RESET, DISCARD and rollbacks.
//!
//! The proxy remembers which checks it sent in the current transaction and does not send
//! the same one again while it knows the transaction continues (see [`Admitted`]); for
//! settings it remembers what the first check admitted, and later statements carry only a
//! comparison that PostgreSQL makes (see [`settings_memo`]).

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use dashmap::DashSet;

use super::annotation::LastComment;
use super::cache::HighWaterCache;
use super::memo::Admitted;
use super::plan::{self, Analysis, CheckForm, Decision, FencePolicy, Procedures, SCHEMA_PROBE};
use super::prepared::{PreparedStatements, StatementOp};
use super::seen::SeenAdmitted;
use super::settings_known::KnownSettings;
use super::settings_memo::SettingsBelief;
use super::stats::{FenceStats, WaitingShare};
use crate::config::Config;
use crate::protocol::backend::{self as be, error_field, TxStatus};
use crate::protocol::build::{self, error_response, Severity};
use crate::protocol::frontend::{self as fe, FrontendMessage, Target};
use crate::protocol::startup::StartupMessage;
use crate::schema::MISSING_SCHEMA_STATES;
use crate::session::hook::{
    Action, CheckDone, HookFactory, Injector, Insertion, Rewrite, SessionHook,
};
use crate::sql::classify::{classify, Kind};
use crate::sql::contains_ignore_case;
use crate::sql::lexer::{has_inner_semicolon, statements};
use crate::sql::reading::{ClientEncoding, ReadingRules};

/// Largest Query the proxy builds by inserting checks (PostgreSQL's own limit is 1 GiB).
const MAX_REWRITE: usize = 64 << 20;

/// Name of the proxy's own prepared statement and portal for extended-protocol checks.
const CHECK_NAME: &str = "__fencegate_check";

/// The SQLSTATE for [`TRACKING_LOST`]: internal_error, since the proxy, not the client's
/// statement, is what cannot go on (as PostgreSQL uses XX000 for a state it cannot
/// continue from).
const TRACKING_LOST_STATE: &str = "XX000";
const TRACKING_LOST: &str =
    "fencegate cannot check this statement: reply tracking was lost on this connection";

/// SQLSTATE of the NOTICE a check raises for each session it ended (schema.sql,
/// `fencegate._report_preempted`).
const PREEMPTED: &str = "FG100";

/// Makes a [`FenceHook`] for every session.
pub struct FenceHooks {
    /// The policy new sessions follow (a reload replaces it).
    policy: RwLock<Arc<FencePolicy>>,
    stats: Arc<FenceStats>,
    cache: Arc<HighWaterCache>,
    schemas: Arc<DashSet<String>>,
}

impl FenceHooks {
    /// Hooks applying `policy`, counting into `stats`.
    pub fn new(policy: FencePolicy, stats: Arc<FenceStats>) -> Self {
        FenceHooks {
            policy: RwLock::new(Arc::new(policy)),
            stats,
            cache: Arc::new(HighWaterCache::default()),
            schemas: Arc::new(DashSet::new()),
        }
    }
}

impl HookFactory for FenceHooks {
    fn session_hook(&self, startup: &StartupMessage) -> Option<Box<dyn SessionHook>> {
        let settings_aware = startup.params.iter().any(|(name, value)| {
            contains_ignore_case(name.as_bytes(), b"fencing.")
                || (name == "options" && contains_ignore_case(value.as_bytes(), b"fencing."))
        });
        let database = startup
            .param("database")
            .or(startup.param("user"))
            .unwrap_or_default()
            .to_string();
        let rules = ReadingRules::at_startup(startup.param("client_encoding"));
        Some(Box::new(FenceHook {
            rules,
            policy: self
                .policy
                .read()
                .map(|p| p.clone())
                .unwrap_or_else(|p| p.into_inner().clone()),
            stats: self.stats.clone(),
            waiting: WaitingShare::new(self.stats.clone()),
            cache: self.cache.clone(),
            schema_known: self.schemas.contains(&database),
            schemas: self.schemas.clone(),
            database,
            settings_aware,
            prepared: PreparedStatements::default(),
            admitted: Admitted::default(),
            procedures: None,
            seen: SeenAdmitted::default(),
            settings_belief: SettingsBelief::default(),
            known_settings: KnownSettings::default(),
            first_check: None,
            last_parse: None,
            last_comment: LastComment::default(),
        }))
    }

    fn reconfigure(&self, config: &Config) {
        let policy = Arc::new(FencePolicy::from_config(config));
        match self.policy.write() {
            Ok(mut current) => *current = policy,
            Err(poisoned) => *poisoned.into_inner() = policy,
        }
    }
}

/// Per-session fencing state.
pub struct FenceHook {
    /// How the server reads the session's SQL now.
    rules: ReadingRules,
    policy: Arc<FencePolicy>,
    stats: Arc<FenceStats>,
    /// This session's checks in [`FenceStats::checks_waiting`], taken back when dropped.
    waiting: WaitingShare,
    cache: Arc<HighWaterCache>,
    /// Databases known to have the schema (shared by all sessions).
    schemas: Arc<DashSet<String>>,
    /// This session's database is known to have the schema: a row came back from the
    /// proxy's own statements, which only return rows when it is there.
    schema_known: bool,
    database: String,
    /// The session may have fencing settings (sticky: checking settings that are unset
    /// costs little, missing one that is set would be unsafe).
    settings_aware: bool,
    /// What each prepared statement's text says, by statement name.
    prepared: PreparedStatements,
    /// The checks already sent in the current transaction.
    admitted: Admitted,
    /// Whether the database has schema 11's procedures (learned from the session's first
    /// check; forgotten when a check finds the schema missing).
    procedures: Procedures,
    /// The tokens this session saw admitted.
    seen: SeenAdmitted,
    /// What the session believes its settings are, for the first settings check of each
    /// transaction.
    settings_belief: SettingsBelief,
    /// What the client's own SET statements have just set.
    known_settings: KnownSettings,
    /// The fence of the token check [`FenceHook::decide`] put first in its answer, if any.
    first_check: Option<super::Fence>,
    /// The text and analysis of the last Parse (reused when the next Parse is the same).
    last_parse: Option<(Vec<u8>, Arc<Analysis>)>,
    /// The annotation comment parsed last (reused when the next statement carries it too).
    last_comment: LastComment,
}

impl SessionHook for FenceHook {
    fn before_client_message(&mut self, msg: &FrontendMessage<'_>, inject: &mut Injector<'_>) {
        // Any other message may run code that changes the settings (on_query reads each
        // statement of a Query), and the first after a Query is a boundary.
        match msg.tag {
            fe::QUERY => self.admitted.query_sent(),
            tag => {
                self.admitted.after_query(inject.settled_status());
                match tag {
                    fe::SYNC => self.known_settings.sync(),
                    fe::FUNCTION_CALL => self.known_settings.forget(),
                    _ => self.known_settings.extended_message(),
                }
            }
        }
        match msg.tag {
            fe::QUERY => {
                self.rules
                    .before_statement(inject.settled_status().is_some());
                self.on_query(msg, inject);
                if let Some(text) = msg.query_text() {
                    self.rules.after_statement(text);
                }
                self.prepared.round_ended();
            }
            fe::PARSE => {
                self.rules
                    .before_statement(inject.settled_status().is_some());
                self.on_parse(msg);
                if let Some((_, text)) = msg.parse() {
                    self.rules.after_statement(text);
                }
            }
            fe::BIND => self.on_bind(msg, inject),
            fe::CLOSE => self.on_close(msg),
            fe::EXECUTE => {
                if let Some(portal) = msg.execute_portal() {
                    self.admitted.execute(portal);
                }
            }
            fe::SYNC => {
                self.admitted.boundary(inject.settled_status());
                self.prepared.round_ended();
            }
            fe::FUNCTION_CALL => self.admitted.forget(),
            _ => {}
        }
    }

    fn client_outcome(&mut self, completed: bool) {
        self.prepared.answered(completed);
    }

    fn check_done(&mut self, done: CheckDone) {
        self.seen.done(done.ok);
        self.stats.check_seconds.observe(done.elapsed);
        if done.ok {
            FenceStats::bump(&self.stats.admitted);
        }
    }

    fn checks_waiting(&mut self, waiting: usize) {
        self.waiting.set(waiting);
    }

    fn server_parameter(&mut self, name: &[u8], value: &[u8]) {
        self.rules.server_parameter(name, value);
    }

    fn injected_row(&mut self, body: &[u8]) {
        if let Some(learned) = self.settings_belief.learn(body) {
            if learned.has_compare.is_some() {
                self.procedures = learned.has_compare;
            }
            if let Some(memo) = learned.memo {
                self.admitted.settings_admitted(memo);
            }
        } else if let Some(answer) = plan::procedures_answer(body) {
            self.procedures = Some(answer);
        }
        if !self.schema_known {
            self.schema_known = true;
            self.schemas.insert(self.database.clone());
        }
    }

    fn injected_notice(&mut self, body: &[u8]) {
        if error_field(body, b'C') == Some(PREEMPTED.as_bytes()) {
            FenceStats::bump(&self.stats.preempted);
            let message = String::from_utf8_lossy(error_field(body, b'M').unwrap_or_default());
            tracing::info!(database = %self.database, %message, "a check preempted an older holder");
        }
    }

    fn injected_error(&mut self, body: &[u8]) -> Option<Bytes> {
        let code = error_field(body, b'C').unwrap_or_default();
        let message = String::from_utf8_lossy(error_field(body, b'M').unwrap_or_default());
        match code {
            b"55Z01" => {
                FenceStats::bump(&self.stats.stale);
                if let Some(marker) = error_field(body, b'c') {
                    self.cache.observe_rejection(&self.database, marker);
                }
                tracing::warn!(database = %self.database, %message, "stale fencing token rejected");
            }
            b"55Z02" => {
                FenceStats::bump(&self.stats.invalid);
                tracing::info!(database = %self.database, %message, "invalid fencing annotation rejected");
            }
            c if MISSING_SCHEMA_STATES.contains(&c) => {
                FenceStats::bump(&self.stats.not_installed);
                self.schema_known = false;
                self.procedures = None;
                self.schemas.remove(&self.database);
                tracing::warn!(database = %self.database, "fenced statement in a database without the fencegate schema");
                return Some(error_response(
                    Severity::Error,
                    "55Z03",
                    &format!("fencing is not installed in database \"{}\"", self.database),
                    Some(&format!("PostgreSQL said: {message}")),
                    Some(&format!(
                        "Run `fencegate migrate --database-url postgres://USER@HOST:PORT/{}` once.",
                        self.database
                    )),
                ));
            }
            _ => {}
        }
        Some(build::without_fields(
            be::ERROR_RESPONSE,
            body,
            INTERNAL_ERROR_FIELDS,
        ))
    }
}

/// Fields of an error raised by the proxy's own statements that would show the client
/// fencegate's functions, internal queries or the server's source location (CONTEXT,
/// INTERNAL QUERY, INTERNAL POSITION, POSITION, FILE, LINE, ROUTINE) or the proxy's private
/// marker (COLUMN, see [`HighWaterCache::observe_rejection`]). G5: the client sees what the
/// check means, never how it is done.
const INTERNAL_ERROR_FIELDS: &[u8] = b"WqpPFLRc";

impl FenceHook {
    /// Analyses a statement's text; in an encoding the lexer cannot read safely, any text
    /// that mentions fencing counts as a malformed annotation (fail closed).
    fn analyze(&mut self, text: &[u8]) -> Analysis {
        let mut analysis = self.policy.analyze_cached(text, &mut self.last_comment);
        if let Some(reason) = self.rules.unreadable() {
            if contains_ignore_case(text, b"fencing") {
                analysis.annotation = Err(super::annotation::AnnotationError::Malformed(reason));
                analysis.class.kind = Kind::Write;
            }
        }
        analysis
    }

    fn note_settings(&mut self, analysis: &Analysis) {
        if analysis.class.touches_settings {
            self.settings_aware = true;
        }
    }

    /// The statements to put in front of a statement (none, one, or a settings check in the
    /// DO form followed by [`SCHEMA_PROBE`]). `atomic`: the statement will run in a context
    /// where it cannot COMMIT midway (a transaction block, or a multi-statement Query, which
    /// is what a rewritten Query is). `fencing_set`: the statement is a SET of a fencing
    /// setting inside a transaction block, read by [`KnownSettings`]: it changes the
    /// settings but cannot begin or end a transaction, so only the settings memo goes.
    fn decide(&mut self, analysis: &Analysis, atomic: bool, fencing_set: bool) -> Vec<String> {
        self.first_check = None;
        self.note_settings(analysis);
        if fencing_set {
            self.admitted.settings_set();
        } else {
            self.admitted.statement(analysis.class.kind);
        }
        let mut decision = self.policy.decide_analyzed(analysis, self.settings_aware);
        if let Some(reason) = self
            .rules
            .unreadable()
            .filter(|_| decision.needs_injection())
        {
            // The lexer cannot find quotes reliably under these rules: refuse fencing
            // rather than guess (see `crate::sql::reading`).
            decision = Decision::Invalid(reason.into());
        }
        if analysis.class.kind == Kind::Procedure && !atomic {
            const REASON: &str = "a CALL or DO carrying a fencing token must run inside BEGIN ... COMMIT: outside a transaction block it may commit midway, releasing the fence";
            decision = match decision {
                Decision::Check(_) => Decision::Invalid(REASON.into()),
                Decision::CheckSettings { required: true } => Decision::Invalid(REASON.into()),
                Decision::CheckSettings { required: false } => {
                    Decision::RefuseIfToken(REASON.into())
                }
                other => other,
            };
        }
        if let Decision::Check(fence) = &decision {
            if self.admitted.contains(fence) {
                return Vec::new();
            }
            match self.cache.get(&self.database, &fence.resource) {
                Some(current) if current > fence.token => {
                    decision = Decision::Stale {
                        fence: fence.clone(),
                        current,
                    }
                }
                _ => {}
            }
        }
        match &decision {
            Decision::Pass => return Vec::new(),
            Decision::Invalid(reason) => tracing::debug!(%reason, "rejecting statement"),
            Decision::RefuseIfToken(_)
            | Decision::Stale { .. }
            | Decision::Check(_)
            | Decision::CheckSettings { .. } => FenceStats::bump(&self.stats.checks),
        }
        if let Decision::Check(fence) = &decision {
            self.admitted.record(fence);
        }
        self.first_check = match &decision {
            Decision::Check(fence) => Some(fence.clone()),
            _ => None,
        };
        let mut out: Vec<String> = match decision {
            Decision::Check(ref fence) => {
                vec![self.policy.check_sql(fence, self.check_form(fence))]
            }
            Decision::CheckSettings { required } if self.schema_known => {
                vec![self.settings_check(required)]
            }
            _ => self
                .policy
                .sql(&decision, self.schema_known)
                .into_iter()
                .collect(),
        };
        if matches!(decision, Decision::CheckSettings { .. }) && !self.schema_known {
            out.push(SCHEMA_PROBE.to_string());
        }
        out
    }

    /// How to send the check of `fence`: the cheaper `admit_current` for a token this
    /// session saw admitted, where the database has it; while the session does not know
    /// whether it has, the check asks.
    fn check_form(&self, fence: &super::Fence) -> CheckForm {
        match self.procedures {
            None => CheckForm::CheckAsking,
            Some(true) if self.seen.is_believed(fence) => CheckForm::Current,
            Some(_) => CheckForm::Check,
        }
    }

    /// A Query that mentions no fencing in a session that needs no checks: nothing to
    /// inject, but its statements may end the transaction the memo is about.
    fn follow_unchecked_query(&mut self, text: &[u8]) {
        if self.admitted.is_empty() {
            return;
        }
        for range in statements(text) {
            let statement = &text[range];
            if has_inner_semicolon(statement) {
                self.admitted.forget();
            }
            self.admitted.statement(classify(statement).kind);
        }
    }

    /// Refuses rather than let a Query of many tiny statements grow without bound: the
    /// whole Query fails with 55Z02 and nothing of it runs.
    fn refuse_oversized_query(&self, inject: &mut Injector<'_>) {
        let refuse = Decision::Invalid(format!(
            "a Query that needs fencing checks may be at most {MAX_REWRITE} bytes once checked; split it"
        ));
        let sql = self.policy.sql(&refuse, false).unwrap_or_default();
        if inject
            .replace_query(build::query_bytes(sql.as_bytes()), Rewrite::default())
            .is_err()
        {
            // Fail closed: the original Query must not go upstream unchecked.
            inject.abort_session(TRACKING_LOST_STATE, TRACKING_LOST);
        }
    }

    fn on_query(&mut self, msg: &FrontendMessage<'_>, inject: &mut Injector<'_>) {
        let Some(text) = msg.query_text() else { return };
        self.admitted.boundary(inject.settled_status());
        self.known_settings
            .query_begins(inject.settled_status() == Some(TxStatus::InBlock));
        if !self.settings_aware
            && self.policy.require_token_tables.is_empty()
            && !contains_ignore_case(text, b"fencing")
        {
            self.known_settings.forget();
            self.follow_unchecked_query(text);
            return;
        }
        let mut rewritten: Option<build::QueryBuf> = None;
        let mut rewrite = Rewrite::default();
        // What the first inserted statement checks: the reply tracker times that one.
        let mut first_check = None;
        let (mut copied, mut chars) = (0, 0u32);
        for (index, range) in statements(text).enumerate() {
            let statement = &text[range.clone()];
            let analysis = self.analyze(statement);
            if has_inner_semicolon(statement) {
                // A rule action list or routine body: should the text hold more than the
                // splitter saw, do not trust the memo past it.
                self.admitted.forget();
            }
            let a_set_read = self.known_settings.statement(statement);
            let sqls = self.decide(&analysis, true, a_set_read);
            if !a_set_read {
                self.known_settings.forget();
            }
            if sqls.is_empty() {
                continue;
            }
            if rewritten
                .as_ref()
                .is_some_and(|out| out.sql_len() > MAX_REWRITE)
            {
                self.refuse_oversized_query(inject);
                return;
            }
            if rewrite.hidden.is_empty() {
                first_check = self.first_check.take();
            }
            let out =
                rewritten.get_or_insert_with(|| build::QueryBuf::with_capacity(text.len() + 160));
            let before = &text[copied..range.start];
            out.push(before);
            chars += self.rules.encoding().chars(before);
            for sql in sqls {
                out.push(sql.as_bytes());
                out.push(b";");
                rewrite.insertions.push(Insertion {
                    at: chars + 1,
                    len: sql.len() as u32 + 1,
                });
                chars += sql.len() as u32 + 1;
                rewrite.hidden.push((index + rewrite.hidden.len()) as u32);
            }
            copied = range.start;
        }
        if self.rules.encoding() == ClientEncoding::Other {
            // Positions cannot be mapped back without knowing the characters: leave them.
            rewrite.insertions.clear();
        }
        if let Some(mut out) = rewritten {
            out.push(&text[copied..]);
            let timed = !rewrite.hidden.is_empty();
            if inject.replace_query(out.finish(), rewrite).is_err() {
                inject.abort_session(TRACKING_LOST_STATE, TRACKING_LOST);
            } else if timed {
                self.seen.sent(first_check);
            }
        }
    }

    fn on_parse(&mut self, msg: &FrontendMessage<'_>) {
        let op = match msg.parse() {
            Some((name, sql)) => {
                let analysis = match &self.last_parse {
                    // Drivers parse the same text again and again (the unnamed statement).
                    Some((text, analysis)) if text.as_slice() == sql => analysis.clone(),
                    _ => {
                        let analysis = Arc::new(self.analyze(sql));
                        self.last_parse = Some((sql.to_vec(), analysis.clone()));
                        analysis
                    }
                };
                self.note_settings(&analysis);
                StatementOp::Parse(name.to_vec(), analysis)
            }
            None => StatementOp::Other,
        };
        self.prepared.sent(op);
    }

    fn on_close(&mut self, msg: &FrontendMessage<'_>) {
        let op = match msg.target() {
            Some(Target::Statement(name)) => StatementOp::Close(name.to_vec()),
            _ => StatementOp::Other,
        };
        self.prepared.sent(op);
    }

    fn on_bind(&mut self, msg: &FrontendMessage<'_>, inject: &mut Injector<'_>) {
        let Some((portal, statement)) = msg.bind_names() else {
            return;
        };
        self.admitted.bind(portal);
        // In a transaction block for sure: the last ReadyForQuery said so, none still to
        // come may say otherwise, and nothing sent since may have ended the block.
        let atomic =
            inject.settled_status() == Some(TxStatus::InBlock) && !self.admitted.is_unsure();
        // Usually one text; several when an earlier round's Parse or Close of this name is
        // still unanswered, and then each is checked.
        let mut checks: Vec<(String, Option<super::Fence>)> = Vec::new();
        for analysis in self.prepared.candidates(statement) {
            let sqls = self.decide(&analysis, atomic, false);
            let mut first_check = self.first_check.take();
            for sql in sqls {
                let check = first_check.take();
                if !checks.iter().any(|(sent, _)| *sent == sql) {
                    checks.push((sql, check));
                }
            }
        }
        for (sql, check) in checks {
            let messages = [
                build::close_statement(CHECK_NAME),
                build::close_portal(CHECK_NAME),
                build::parse(CHECK_NAME, &sql),
                build::bind(CHECK_NAME, CHECK_NAME, &[]),
                build::execute(CHECK_NAME),
            ];
            for message in messages {
                if inject.send(message, Action::Check).is_err() {
                    inject.abort_session(TRACKING_LOST_STATE, TRACKING_LOST);
                    return;
                }
            }
            // Its Execute is the timed message.
            self.seen.sent(check);
        }
    }
}

mod settings;
#[cfg(test)]
mod tests;
