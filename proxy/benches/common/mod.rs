//! Inputs shared by the microbenchmarks: wire messages and the statements pgbench sends.
#![allow(dead_code)] // each bench binary uses a different part

/// One tagged message: `tag`, length (including itself), body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The annotation the load benchmark's token scripts carry.
pub const COMMENT: &str = " /*fencing_resource='bench%3A7',fencing_token='1'*/";

/// pgbench's select-only statement, simple protocol (values inlined).
pub const SELECT_ONLY: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";

/// pgbench's tpcb-like transaction, one statement at a time.
pub const TPCB: [&str; 7] = [
    "BEGIN;",
    "UPDATE pgbench_accounts SET abalance = abalance + -2341 WHERE aid = 48213;",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
    "UPDATE pgbench_tellers SET tbalance = tbalance + -2341 WHERE tid = 17;",
    "UPDATE pgbench_branches SET bbalance = bbalance + -2341 WHERE bid = 3;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (17, 3, 48213, -2341, CURRENT_TIMESTAMP);",
    "END;",
];

/// A statement with its annotation, placed before the terminating `;` as the token
/// scripts do.
pub fn annotated(statement: &str) -> String {
    let body = statement.trim_end_matches(';');
    format!("{body}{COMMENT};")
}

/// A 4 KiB INSERT with no comment: how the lexer's cost grows with statement size.
pub fn long_insert() -> String {
    let mut sql = String::from("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ");
    let mut i = 0;
    while sql.len() < 4096 {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("({i}, 1, {i}, -{i}, 'now')"));
        i += 1;
    }
    sql.push(';');
    sql
}

/// NUL-terminated string, as the protocol encodes names and SQL text.
pub fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Parse body: statement name, SQL, no parameter types.
pub fn parse_body(name: &str, sql: &str) -> Vec<u8> {
    let mut b = cstr(name);
    b.extend(cstr(sql));
    b.extend_from_slice(&0i16.to_be_bytes());
    b
}

/// Bind body: unnamed portal, named statement, one text parameter, text results.
pub fn bind_body(statement: &str, param: &str) -> Vec<u8> {
    let mut b = cstr("");
    b.extend(cstr(statement));
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&(param.len() as i32).to_be_bytes());
    b.extend_from_slice(param.as_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b
}

/// The server's replies to one select-only round in the extended protocol
/// (ParseComplete, BindComplete, RowDescription, DataRow, CommandComplete, ReadyForQuery).
pub fn server_extended_round() -> Vec<Vec<u8>> {
    let mut row_description = 1i16.to_be_bytes().to_vec();
    row_description.extend(cstr("abalance"));
    row_description.extend_from_slice(&0i32.to_be_bytes()); // table oid
    row_description.extend_from_slice(&0i16.to_be_bytes()); // column
    row_description.extend_from_slice(&23i32.to_be_bytes()); // int4
    row_description.extend_from_slice(&4i16.to_be_bytes());
    row_description.extend_from_slice(&(-1i32).to_be_bytes());
    row_description.extend_from_slice(&0i16.to_be_bytes());
    let mut data_row = 1i16.to_be_bytes().to_vec();
    data_row.extend_from_slice(&5i32.to_be_bytes());
    data_row.extend_from_slice(b"-2341");
    vec![
        message(b'1', b""),
        message(b'2', b""),
        message(b'T', &row_description),
        message(b'D', &data_row),
        message(b'C', &cstr("SELECT 1")),
        message(b'Z', b"I"),
    ]
}

/// The client's messages for one select-only round in the extended protocol
/// (Parse, Bind, Describe portal, Execute, Sync), as pgbench -M extended sends them.
pub fn client_extended_round() -> Vec<Vec<u8>> {
    let mut execute = cstr("");
    execute.extend_from_slice(&0i32.to_be_bytes());
    vec![
        message(
            b'P',
            &parse_body("", "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"),
        ),
        message(b'B', &bind_body("", "48213")),
        message(b'D', b"P\0"),
        message(b'E', &execute),
        message(b'S', b""),
    ]
}
