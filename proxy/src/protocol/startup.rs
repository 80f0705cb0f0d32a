//! The untagged packets a client may open a connection with.
//!
//! `len: i32, code: i32, ...`: the code is a protocol version for a StartupMessage, or one of
//! the magic numbers for SSLRequest, GSSENCRequest and CancelRequest.

use super::cstr;

/// SSLRequest code (1234.5679).
pub const SSL_REQUEST: i32 = 80_877_103;
/// GSSENCRequest code (1234.5680).
pub const GSSENC_REQUEST: i32 = 80_877_104;
/// CancelRequest code (1234.5678).
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// Longest cancel key a client may send (protocol 3.2 allows variable-length keys up to 256).
pub const MAX_CANCEL_KEY: usize = 256;

/// What the first packet of a connection asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// Asks whether the server will speak TLS.
    SslRequest,
    /// Asks whether the server will speak GSSAPI encryption.
    GssEncRequest,
    /// Cancels the running query of another connection.
    Cancel {
        /// Backend process id.
        pid: i32,
        /// Secret key (4 bytes in protocol 3.0, up to 256 in 3.2).
        key: Vec<u8>,
    },
    /// Opens a session.
    Startup(StartupMessage),
}

/// A StartupMessage: protocol version and `name=value` parameters in the client's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Major protocol version (3).
    pub major: u16,
    /// Minor protocol version (0 or 2).
    pub minor: u16,
    /// Parameters in the order sent; values are the client's bytes decoded lossily, for
    /// logging and routing only (the raw packet is what goes upstream).
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// The value of a startup parameter, if sent.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A startup packet that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    /// The protocol version is not 3.x.
    #[error("unsupported frontend protocol {major}.{minor}: the proxy supports 3.0 to 3.2")]
    UnsupportedVersion {
        /// Major version.
        major: u16,
        /// Minor version.
        minor: u16,
    },
    /// The packet's contents do not match its kind.
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
}

/// Parses a complete untagged packet (`packet` includes its 4-byte length).
pub fn parse(packet: &[u8]) -> Result<StartupPacket, StartupError> {
    let body = packet
        .get(4..)
        .filter(|b| b.len() >= 4)
        .ok_or(StartupError::Malformed("too short"))?;
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    match code {
        SSL_REQUEST | GSSENC_REQUEST if !rest.is_empty() => {
            Err(StartupError::Malformed("negotiation request with a body"))
        }
        SSL_REQUEST => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => parse_cancel(rest),
        _ => parse_startup(code, rest),
    }
}

fn parse_cancel(rest: &[u8]) -> Result<StartupPacket, StartupError> {
    if rest.len() < 8 || rest.len() > 4 + MAX_CANCEL_KEY {
        return Err(StartupError::Malformed("cancel request key length"));
    }
    let pid = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    Ok(StartupPacket::Cancel {
        pid,
        key: rest[4..].to_vec(),
    })
}

fn parse_startup(code: i32, mut rest: &[u8]) -> Result<StartupPacket, StartupError> {
    let major = (code >> 16) as u16;
    let minor = (code & 0xffff) as u16;
    if major != 3 {
        return Err(StartupError::UnsupportedVersion { major, minor });
    }
    let mut params = Vec::new();
    loop {
        let (name, after) = cstr(rest).ok_or(StartupError::Malformed("missing terminator"))?;
        if name.is_empty() {
            if !after.is_empty() {
                return Err(StartupError::Malformed("bytes after the terminator"));
            }
            break;
        }
        let (value, after) =
            cstr(after).ok_or(StartupError::Malformed("parameter without value"))?;
        params.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
        rest = after;
    }
    Ok(StartupPacket::Startup(StartupMessage {
        major,
        minor,
        params,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as i32).to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn startup_params_keep_order() {
        let p = packet(196_608, b"user\0alice\0database\0app\0options\0-c x=1\0\0");
        let StartupPacket::Startup(m) = parse(&p).unwrap() else {
            panic!()
        };
        assert_eq!((m.major, m.minor), (3, 0));
        assert_eq!(m.params[0], ("user".into(), "alice".into()));
        assert_eq!(m.param("options"), Some("-c x=1"));
        assert_eq!(m.param("missing"), None);
    }

    #[test]
    fn negotiation_and_cancel() {
        assert_eq!(
            parse(&packet(SSL_REQUEST, b"")).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            parse(&packet(GSSENC_REQUEST, b"")).unwrap(),
            StartupPacket::GssEncRequest
        );
        let c = parse(&packet(CANCEL_REQUEST, &[0, 0, 0, 7, 1, 2, 3, 4])).unwrap();
        assert_eq!(
            c,
            StartupPacket::Cancel {
                pid: 7,
                key: vec![1, 2, 3, 4]
            }
        );
        let long_key = [vec![0, 0, 0, 7], vec![9; 32]].concat();
        assert!(matches!(
            parse(&packet(CANCEL_REQUEST, &long_key)).unwrap(),
            StartupPacket::Cancel { key, .. } if key.len() == 32
        ));
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        assert!(parse(&packet(196_608, b"user\0alice")).is_err());
        assert!(parse(&packet(196_608, b"user\0")).is_err());
        assert!(parse(&packet(196_608, b"\0junk")).is_err());
        assert!(parse(&packet(CANCEL_REQUEST, &[0, 0])).is_err());
        assert!(parse(&packet(SSL_REQUEST, b"x")).is_err());
        assert!(parse(&[0, 0, 0, 4]).is_err());
        assert!(matches!(
            parse(&packet(2 << 16, b"\0")),
            Err(StartupError::UnsupportedVersion { major: 2, .. })
        ));
    }
}
