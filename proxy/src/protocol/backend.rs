//! Messages a server sends: their tags, and typed views of the ones the proxy reads.

use super::cstr;

/// Authentication request (`R`), with a subtype code.
pub const AUTHENTICATION: u8 = b'R';
/// BackendKeyData.
pub const BACKEND_KEY_DATA: u8 = b'K';
/// BindComplete.
pub const BIND_COMPLETE: u8 = b'2';
/// CloseComplete.
pub const CLOSE_COMPLETE: u8 = b'3';
/// CommandComplete.
pub const COMMAND_COMPLETE: u8 = b'C';
/// CopyBothResponse (replication).
pub const COPY_BOTH_RESPONSE: u8 = b'W';
/// CopyData.
pub const COPY_DATA: u8 = b'd';
/// CopyDone.
pub const COPY_DONE: u8 = b'c';
/// CopyInResponse.
pub const COPY_IN_RESPONSE: u8 = b'G';
/// CopyOutResponse.
pub const COPY_OUT_RESPONSE: u8 = b'H';
/// DataRow.
pub const DATA_ROW: u8 = b'D';
/// EmptyQueryResponse.
pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
/// ErrorResponse.
pub const ERROR_RESPONSE: u8 = b'E';
/// FunctionCallResponse.
pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
/// NegotiateProtocolVersion.
pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
/// NoData.
pub const NO_DATA: u8 = b'n';
/// NoticeResponse.
pub const NOTICE_RESPONSE: u8 = b'N';
/// NotificationResponse (LISTEN/NOTIFY).
pub const NOTIFICATION_RESPONSE: u8 = b'A';
/// ParameterDescription.
pub const PARAMETER_DESCRIPTION: u8 = b't';
/// ParameterStatus.
pub const PARAMETER_STATUS: u8 = b'S';
/// ParseComplete.
pub const PARSE_COMPLETE: u8 = b'1';
/// PortalSuspended.
pub const PORTAL_SUSPENDED: u8 = b's';
/// ReadyForQuery.
pub const READY_FOR_QUERY: u8 = b'Z';
/// RowDescription.
pub const ROW_DESCRIPTION: u8 = b'T';

/// Transaction status reported by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    #[default]
    Idle,
    /// `T`: in a transaction block.
    InBlock,
    /// `E`: in a failed transaction block (statements rejected until it ends).
    Failed,
}

impl TxStatus {
    /// Reads the status byte of a ReadyForQuery body.
    pub fn from_ready_body(body: &[u8]) -> Option<TxStatus> {
        match body {
            [b'I'] => Some(TxStatus::Idle),
            [b'T'] => Some(TxStatus::InBlock),
            [b'E'] => Some(TxStatus::Failed),
            _ => None,
        }
    }
}

/// AuthenticationOk's subtype code: the login succeeded.
pub const AUTH_OK: i32 = 0;

/// The subtype code of an Authentication message body.
pub fn auth_code(body: &[u8]) -> Option<i32> {
    let code = body.get(..4)?;
    Some(i32::from_be_bytes([code[0], code[1], code[2], code[3]]))
}

/// Reads one field (`S` severity, `V` non-localized severity, `C` SQLSTATE, `M` message, ...)
/// of an ErrorResponse or NoticeResponse body.
pub fn error_field(body: &[u8], field: u8) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&code, after)) = rest.split_first() {
        if code == 0 {
            return None;
        }
        let (value, after) = cstr(after)?;
        if code == field {
            return Some(value);
        }
        rest = after;
    }
    None
}

/// The name and value of a ParameterStatus body, or `None` when it is malformed.
pub fn parameter_status(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (name, rest) = cstr(body)?;
    let (value, _) = cstr(rest)?;
    Some((name, value))
}

/// True when an ErrorResponse body is FATAL or PANIC (the server closes the connection).
pub fn is_fatal(body: &[u8]) -> bool {
    let severity = error_field(body, b'V').or_else(|| error_field(body, b'S'));
    matches!(severity, Some(b"FATAL") | Some(b"PANIC"))
}

/// The SQLSTATE class of the notices fencegate's own SQL raises (`FG100`: a check ended an
/// older holder's session); PostgreSQL itself never uses it.
pub const FENCEGATE_NOTICE_CLASS: &[u8] = b"FG";

/// True when a NoticeResponse body carries a SQLSTATE of [`FENCEGATE_NOTICE_CLASS`].
pub fn is_fencegate_notice(body: &[u8]) -> bool {
    error_field(body, b'C').is_some_and(|code| code.starts_with(FENCEGATE_NOTICE_CLASS))
}

/// The column values of a DataRow body (`None` for SQL NULL), or `None` when the body is
/// malformed: a count or a length that does not match the bytes.
pub fn data_row_values(body: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let count = u16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut rest = &body[2..];
    let mut values = Vec::with_capacity(usize::from(count).min(rest.len() / 4));
    for _ in 0..count {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len < 0 {
            values.push(None);
            continue;
        }
        let len = usize::try_from(len).ok()?;
        values.push(Some(rest.get(..len)?));
        rest = &rest[len..];
    }
    rest.is_empty().then_some(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_error_fields() {
        let body = b"SFATAL\0VFATAL\0C57P01\0Mterminating connection\0\0";
        assert_eq!(error_field(body, b'C'), Some(&b"57P01"[..]));
        assert_eq!(
            error_field(body, b'M'),
            Some(&b"terminating connection"[..])
        );
        assert_eq!(error_field(body, b'D'), None);
        assert!(is_fatal(body));
        assert!(!is_fatal(b"SERROR\0VERROR\0C42601\0\0"));
        assert_eq!(error_field(b"Cunterminated", b'C'), None);
    }

    #[test]
    fn reads_ready_status_and_auth_code() {
        assert_eq!(TxStatus::from_ready_body(b"T"), Some(TxStatus::InBlock));
        assert_eq!(TxStatus::from_ready_body(b"x"), None);
        assert_eq!(auth_code(&[0, 0, 0, 10, b'S']), Some(10));
        assert_eq!(auth_code(&[0, 0]), None);
    }

    #[test]
    fn reads_data_row_values() {
        let body = [0, 2, 0, 0, 0, 1, b'7', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(data_row_values(&body), Some(vec![Some(&b"7"[..]), None]));
        assert_eq!(data_row_values(&body[..6]), None, "cut short");
        assert_eq!(data_row_values(&[0, 1, 0, 0, 0, 9, b'x']), None);
        assert_eq!(data_row_values(&[0, 0, 1]), None, "trailing bytes");
    }
}
