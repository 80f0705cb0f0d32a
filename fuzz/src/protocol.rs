//! Checks for the wire readers: framing, the startup packet, the typed views of client and
//! server messages, and the metrics endpoint's request head.

use std::sync::Arc;

use fencegate::protocol::backend;
use fencegate::protocol::framing::{missing_bytes, peek_tagged, peek_untagged, HEADER_LEN};
use fencegate::protocol::frontend::{FrontendMessage, Target};
use fencegate::protocol::startup::{self, StartupPacket};

use super::within;

/// The first byte picks a length limit, the rest is the buffer: a frame found is whole,
/// inside the buffer and under the limit; an incomplete one asks for at least one byte.
pub fn framing(data: &[u8]) {
    let Some((&pick, buf)) = data.split_first() else {
        return;
    };
    let max = [4, 5, 64, 8192, 1 << 20, i32::MAX as usize][pick as usize % 6];
    match peek_tagged(buf, max) {
        Ok(Some(info)) => {
            assert!(info.total_len >= HEADER_LEN && info.total_len <= buf.len());
            assert!(
                info.total_len - 1 <= max,
                "a frame over the limit was accepted"
            );
            assert_eq!(info.tag, buf[0]);
            assert_eq!(info.body(buf).len(), info.total_len - HEADER_LEN);
        }
        Ok(None) => assert!(missing_bytes(buf) >= 1, "an incomplete frame needs bytes"),
        Err(_) => assert!(buf.len() >= HEADER_LEN, "refused before its header arrived"),
    }
    if let Ok(Some(total)) = peek_untagged(buf, max) {
        assert!((8..=buf.len()).contains(&total) && total <= max);
    }
}

/// A startup-phase packet: parsed or refused, and what is parsed holds no NUL in a
/// parameter (which would let a name or value smuggle another one upstream).
pub fn startup(data: &[u8]) {
    if let Ok(StartupPacket::Startup(message)) = startup::parse(data) {
        assert_eq!(message.major, 3);
        for (name, value) in &message.params {
            assert!(!name.is_empty(), "an empty parameter name was accepted");
            assert!(!name.contains('\0') && !value.contains('\0'));
        }
    }
}

/// Every view of a client message, for every tag: each answer points inside the body.
pub fn frontend(data: &[u8]) {
    let Some((&tag, body)) = data.split_first() else {
        return;
    };
    let msg = FrontendMessage { tag, body };
    let texts = [msg.query_text(), msg.execute_portal()];
    let pairs = [msg.parse(), msg.bind_names()];
    for text in texts.into_iter().flatten() {
        assert!(within(body, text) && !text.contains(&0));
    }
    for (a, b) in pairs.into_iter().flatten() {
        assert!(within(body, a) && within(body, b));
    }
    if let Some(Target::Statement(name) | Target::Portal(name)) = msg.target() {
        assert!(within(body, name));
    }
}

/// The server message readers: they may refuse, never read outside the body.
pub fn backend(body: &[u8]) {
    let _ = backend::TxStatus::from_ready_body(body);
    let _ = backend::auth_code(body);
    let _ = backend::is_fatal(body);
    for field in [b'S', b'V', b'C', b'M', b'D', b'P', b'W'] {
        if let Some(value) = backend::error_field(body, field) {
            assert!(within(body, value));
        }
    }
    if let Some((name, value)) = backend::parameter_status(body) {
        assert!(within(body, name) && within(body, value));
    }
    if let Some(values) = backend::data_row_values(body) {
        assert!(
            values.len() <= body.len() / 4,
            "more columns than bytes can hold"
        );
        for value in values.into_iter().flatten() {
            assert!(within(body, value));
        }
    }
}

/// The metrics endpoint's answer to any request head: one well-formed status line, a
/// head that ends, and a body only for the two known paths.
pub fn metrics_http(head: &[u8]) {
    let metrics = fencegate::metrics::Metrics::new(Arc::default());
    let response = fencegate::metrics::respond(head, &metrics);
    assert!(response.starts_with(b"HTTP/1.1 "), "no status line");
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the response head ends");
    if !response.starts_with(b"HTTP/1.1 200") {
        assert_eq!(end + 4, response.len(), "an error response carries no body");
    }
}
