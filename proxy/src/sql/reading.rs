//! How the session's SQL text must be read: the client encoding and
//! `standard_conforming_strings`, as the server reports them (ParameterStatus, at startup and
//! after every change, `SET LOCAL`, `RESET` and rollbacks included).
//!
//! The lexer reads UTF-8 and single-byte encodings with standard-conforming strings. Under
//! any other rules (an encoding whose multibyte characters contain ASCII bytes, such as SJIS
//! or BIG5; backslash escapes in plain literals) it could take an annotation for part of a
//! string, so fenced statements are refused instead (fail closed). Between a statement that
//! may change the rules and the server's report of the change (a pipeline), the rules are
//! unknown, and fenced statements are refused too.

use std::sync::LazyLock;

use memchr::memmem;

/// How to count characters of the client's SQL (error positions are in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEncoding {
    /// UTF-8 (the default when the client names none and the usual server encoding).
    Utf8,
    /// One byte per character (LATIN1, WIN1252, SQL_ASCII, ...).
    SingleByte,
    /// A multi-byte encoding the proxy does not read (SJIS, EUC_*, BIG5, GBK, ...).
    Other,
}

impl ClientEncoding {
    /// The encoding a name stands for (PostgreSQL's names and aliases, any case).
    pub fn from_name(name: &[u8]) -> Self {
        let name: Vec<u8> = name
            .iter()
            .filter(|&&b| b != b'-' && b != b'_')
            .map(u8::to_ascii_uppercase)
            .collect();
        let starts = |prefix: &[u8]| name.starts_with(prefix);
        match name.as_slice() {
            b"UTF8" | b"UNICODE" => ClientEncoding::Utf8,
            b"SQLASCII" => ClientEncoding::SingleByte,
            _ if starts(b"LATIN") || starts(b"WIN") || starts(b"ISO8859") || starts(b"KOI8") => {
                ClientEncoding::SingleByte
            }
            _ => ClientEncoding::Other,
        }
    }

    /// Characters in `bytes` (for encodings the proxy reads).
    pub fn chars(self, bytes: &[u8]) -> u32 {
        match self {
            ClientEncoding::Utf8 => bytes.iter().filter(|&&b| (b as i8) >= -0x40).count() as u32,
            _ => bytes.len() as u32,
        }
    }
}

/// The rules in force for the session's next statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadingRules {
    encoding: ClientEncoding,
    conforming: bool,
    /// A statement that may change the rules was sent and its reply is not in yet.
    pending: bool,
}

/// Why a fenced statement is refused under rules the lexer cannot read.
pub const UNREADABLE_ENCODING: &str =
    "fencing needs client_encoding UTF8 or a single-byte encoding";
/// See [`UNREADABLE_ENCODING`].
pub const UNREADABLE_STRINGS: &str = "fencing needs standard_conforming_strings = on";
/// See [`UNREADABLE_ENCODING`].
pub const UNREADABLE_PENDING: &str = "fencing cannot read this statement before the server has answered an earlier statement that may change client_encoding or standard_conforming_strings: send it after that reply";

impl ReadingRules {
    /// The rules the startup packet asks for (the server's reports then override them).
    pub fn at_startup(client_encoding: Option<&str>) -> Self {
        ReadingRules {
            encoding: client_encoding.map_or(ClientEncoding::Utf8, |name| {
                ClientEncoding::from_name(name.as_bytes())
            }),
            conforming: true,
            pending: false,
        }
    }

    /// Takes a parameter the server reported.
    pub fn server_parameter(&mut self, name: &[u8], value: &[u8]) {
        if name.eq_ignore_ascii_case(b"client_encoding") {
            self.encoding = ClientEncoding::from_name(value);
        } else if name.eq_ignore_ascii_case(b"standard_conforming_strings") {
            self.conforming = value.eq_ignore_ascii_case(b"on");
        }
    }

    /// Called before each client statement: `settled` when every reply to what the client
    /// sent before is in, so whatever changed the rules has been reported.
    pub fn before_statement(&mut self, settled: bool) {
        if settled {
            self.pending = false;
        }
    }

    /// Called with each statement text the client sends: one that may change the rules
    /// makes them unknown for the statements after it until its reply is in.
    pub fn after_statement(&mut self, text: &[u8]) {
        if !self.pending && may_change_rules(text) {
            self.pending = true;
        }
    }

    /// Why fenced statements cannot be read now, or `None` when they can.
    pub fn unreadable(&self) -> Option<&'static str> {
        if self.encoding == ClientEncoding::Other {
            Some(UNREADABLE_ENCODING)
        } else if !self.conforming {
            Some(UNREADABLE_STRINGS)
        } else if self.pending {
            Some(UNREADABLE_PENDING)
        } else {
            None
        }
    }

    /// The encoding, for counting characters of error positions.
    pub fn encoding(&self) -> ClientEncoding {
        self.encoding
    }
}

/// Whether a statement may change client_encoding or standard_conforming_strings: it names
/// either, or is `SET NAMES`, or resets settings wholesale (`RESET ALL`, `DISCARD ALL`,
/// which restore the session's startup values). Errs on the side of yes: each word counts
/// anywhere in the text, in any case, also inside other words.
///
/// Runs on every statement of every session: the text is lowered once (in a buffer on the
/// stack for the usual statement, a small one for a short statement, since the buffer is
/// zeroed first) and each word found with memchr's SIMD substring search, a third of the
/// instructions of a case-insensitive search per word (benches/README.md).
fn may_change_rules(text: &[u8]) -> bool {
    const SHORT: usize = 256;
    const ON_STACK: usize = 1024;
    if text.len() <= SHORT {
        lowered_changes_rules(text, &mut [0u8; SHORT][..text.len()])
    } else if text.len() <= ON_STACK {
        lowered_changes_rules(text, &mut [0u8; ON_STACK][..text.len()])
    } else {
        lowered_changes_rules(text, &mut vec![0; text.len()])
    }
}

/// [`may_change_rules`] with `lower`, as long as `text`, to lower it into.
fn lowered_changes_rules(text: &[u8], lower: &mut [u8]) -> bool {
    lower.copy_from_slice(text);
    lower.make_ascii_lowercase();
    let lower = &*lower;
    let has = |word: &memmem::Finder<'_>| word.find(lower).is_some();
    let words = &*RULE_WORDS;
    words.changes.iter().any(has) || (has(&words.all) && words.resets.iter().any(has))
}

/// The words [`may_change_rules`] looks for, lower case.
struct RuleWords {
    /// Each a possible change by itself: a rule's name, or `SET NAMES`.
    changes: [memmem::Finder<'static>; 3],
    /// `RESET` and `DISCARD`: a change with `ALL`.
    resets: [memmem::Finder<'static>; 2],
    all: memmem::Finder<'static>,
}

static RULE_WORDS: LazyLock<RuleWords> = LazyLock::new(|| RuleWords {
    changes: [
        memmem::Finder::new(b"client_encoding"),
        memmem::Finder::new(b"standard_conforming"),
        memmem::Finder::new(b"names"),
    ],
    resets: [
        memmem::Finder::new(b"reset"),
        memmem::Finder::new(b"discard"),
    ],
    all: memmem::Finder::new(b"all"),
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_by_name() {
        for (name, want) in [
            ("UTF8", ClientEncoding::Utf8),
            ("utf-8", ClientEncoding::Utf8),
            ("LATIN1", ClientEncoding::SingleByte),
            ("WIN1252", ClientEncoding::SingleByte),
            ("SQL_ASCII", ClientEncoding::SingleByte),
            ("SJIS", ClientEncoding::Other),
            ("BIG5", ClientEncoding::Other),
            ("GBK", ClientEncoding::Other),
            ("EUC_JP", ClientEncoding::Other),
        ] {
            assert_eq!(ClientEncoding::from_name(name.as_bytes()), want, "{name}");
        }
    }

    #[test]
    fn the_server_reports_decide() {
        let mut rules = ReadingRules::at_startup(None);
        assert_eq!(rules.unreadable(), None);
        rules.server_parameter(b"client_encoding", b"SJIS");
        assert_eq!(rules.unreadable(), Some(UNREADABLE_ENCODING));
        rules.server_parameter(b"client_encoding", b"UTF8");
        rules.server_parameter(b"standard_conforming_strings", b"off");
        assert_eq!(rules.unreadable(), Some(UNREADABLE_STRINGS));
        rules.server_parameter(b"standard_conforming_strings", b"on");
        assert_eq!(rules.unreadable(), None);
        assert_eq!(
            ReadingRules::at_startup(Some("BIG5")).unreadable(),
            Some(UNREADABLE_ENCODING)
        );
    }

    #[test]
    fn a_possible_change_is_unknown_until_its_reply() {
        let mut rules = ReadingRules::at_startup(None);
        rules.before_statement(true);
        rules.after_statement(b"SELECT 1");
        rules.before_statement(false);
        assert_eq!(rules.unreadable(), None);
        let set_config = "select set_config('client_encoding', 'SJIS', true)";
        let changes = ["SET standard_conforming_strings = off", set_config];
        for text in changes
            .into_iter()
            .chain(["SET NAMES 'BIG5'", "RESET ALL", "DISCARD ALL"])
        {
            let text = text.as_bytes();
            let mut rules = ReadingRules::at_startup(None);
            rules.after_statement(text);
            rules.before_statement(false);
            assert_eq!(rules.unreadable(), Some(UNREADABLE_PENDING), "{text:?}");
            rules.before_statement(true);
            assert_eq!(rules.unreadable(), None, "{text:?}");
        }
    }

    /// The rule as first written, one case-insensitive search per word.
    fn may_change_rules_by_word(text: &[u8]) -> bool {
        use crate::sql::contains_ignore_case as has;
        has(text, b"client_encoding")
            || has(text, b"standard_conforming")
            || has(text, b"names")
            || ((has(text, b"reset") || has(text, b"discard")) && has(text, b"all"))
    }

    #[test]
    fn the_one_pass_search_agrees_with_a_search_per_word() {
        let parts = [
            "SeT ",
            "NAmes",
            "nam",
            "es",
            "RESET",
            "res",
            "et",
            " aLL",
            "al",
            "l",
            "DISCARD",
            "disc",
            "ard",
            "client_encoding",
            "client_",
            "encoding",
            "Standard_Conforming",
            "x",
            "'",
            "é",
            "\\",
            "\0",
            " ",
        ];
        // Every text of up to three parts, and longer ones past each stack buffer.
        let mut texts: Vec<String> = Vec::new();
        for a in parts {
            for b in parts {
                for c in parts {
                    texts.push(format!("{a}{b}{c}"));
                }
            }
        }
        texts.push(format!(
            "{} reset {} ALL",
            "y".repeat(2000),
            "z".repeat(2000)
        ));
        texts.push(format!("{} names", "y".repeat(1023)));
        texts.push(format!("{} names", "y".repeat(250)));
        texts.push(format!("{} reset all", "y".repeat(500)));
        for text in &texts {
            assert_eq!(
                may_change_rules(text.as_bytes()),
                may_change_rules_by_word(text.as_bytes()),
                "{text:?}"
            );
        }
    }

    #[test]
    fn every_spelling_of_a_change_counts_and_nothing_else() {
        for text in [
            "set CLIENT_ENCODING to 'LATIN1'",
            "SELECT set_config('Standard_Conforming_Strings', 'off', false)",
            "set names 'SJIS'",
            "reset all",
            "RESET\tALL",
            "discard /* x */ ALL",
            "select 1 /* allow */ ; reset x",
            "SELECT surnames FROM people",
        ] {
            assert!(may_change_rules(text.as_bytes()), "{text:?}");
        }
        for text in [
            "SELECT 1",
            "RESET search_path",
            "DISCARD PLANS",
            "SELECT * FROM t UNION ALL SELECT * FROM u",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 2",
            "client encoding",
        ] {
            assert!(!may_change_rules(text.as_bytes()), "{text:?}");
        }
    }
}
