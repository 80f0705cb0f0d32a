//! Fencing: annotation extraction, statement classification, and (coming) the check and
//! its store. Knows nothing about sockets; the session reaches it through a hook.
//!
//! - [`sql`]: a lexer that splits Query strings into statements and finds keywords and
//!   comments without decoding the client's bytes.

pub mod sql;
