//! Frame splitting: find where each message ends, checking the length header before any
//! memory is reserved for the message.
//!
//! A tagged message is `tag: u8, len: i32 (includes itself), body: len - 4 bytes`. The
//! proxy never allocates from `len`: callers keep reading into their buffer until
//! [`peek_tagged`] reports a complete frame, and a length outside `4..=max` is an error
//! before a single body byte is buffered.

/// Size of a tagged message header (tag byte + length).
pub const HEADER_LEN: usize = 5;

/// A message header that cannot be valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length field is below its own size (4) or negative.
    #[error("invalid message length {len} for message type {tag:?}")]
    TooShort {
        /// Message tag as a char.
        tag: char,
        /// The declared length.
        len: i32,
    },
    /// The length field exceeds the configured maximum.
    #[error("message of type {tag:?} declares {len} bytes, above the limit of {max}")]
    TooLong {
        /// Message tag as a char.
        tag: char,
        /// The declared length.
        len: i32,
        /// The configured maximum.
        max: usize,
    },
}

/// Where a complete tagged message sits at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    /// The message type byte.
    pub tag: u8,
    /// Total bytes of the message including tag and length.
    pub total_len: usize,
}

impl FrameInfo {
    /// The body of this frame within `buf` (which starts with the frame).
    pub fn body<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[HEADER_LEN..self.total_len]
    }
}

/// Checks the header at the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (the header or the body is incomplete),
/// `Ok(Some(info))` when a whole message is present, and an error when the header is
/// invalid, which is decided as soon as the five header bytes are present.
pub fn peek_tagged(buf: &[u8], max_len: usize) -> Result<Option<FrameInfo>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let tag = header[0];
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 {
        return Err(FrameError::TooShort {
            tag: tag as char,
            len,
        });
    }
    if len as usize > max_len {
        return Err(FrameError::TooLong {
            tag: tag as char,
            len,
            max: max_len,
        });
    }
    let total_len = len as usize + 1;
    Ok((buf.len() >= total_len).then_some(FrameInfo { tag, total_len }))
}

/// Bytes still missing for the frame that starts `buf` (at least 1 when incomplete), used
/// to size the next read without trusting the header beyond its checked maximum.
pub fn missing_bytes(buf: &[u8]) -> usize {
    match buf.get(..HEADER_LEN) {
        None => HEADER_LEN - buf.len(),
        Some(h) => {
            let len = i32::from_be_bytes([h[1], h[2], h[3], h[4]]).max(4) as usize;
            (len + 1).saturating_sub(buf.len()).max(1)
        }
    }
}

/// Checks an untagged startup-phase packet (`len: i32, body`) at the front of `buf`.
/// Returns the total length when complete.
pub fn peek_untagged(buf: &[u8], max_len: usize) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if len < 8 {
        return Err(FrameError::TooShort { tag: '\0', len });
    }
    if len as usize > max_len {
        return Err(FrameError::TooLong {
            tag: '\0',
            len,
            max: max_len,
        });
    }
    Ok((buf.len() >= len as usize).then_some(len as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn needs_whole_header_and_body() {
        let m = msg(b'Q', b"select 1\0");
        for cut in 0..m.len() {
            assert_eq!(peek_tagged(&m[..cut], 1000).unwrap(), None, "cut at {cut}");
        }
        let info = peek_tagged(&m, 1000).unwrap().unwrap();
        assert_eq!(info.tag, b'Q');
        assert_eq!(info.total_len, m.len());
        assert_eq!(info.body(&m), b"select 1\0");
    }

    #[test]
    fn finds_first_of_several() {
        let mut m = msg(b'S', b"");
        m.extend(msg(b'X', b""));
        assert_eq!(peek_tagged(&m, 1000).unwrap().unwrap().total_len, 5);
    }

    #[test]
    fn rejects_short_negative_and_oversized_lengths_from_header_alone() {
        assert!(matches!(
            peek_tagged(&[b'Q', 0, 0, 0, 3], 1000),
            Err(FrameError::TooShort { len: 3, .. })
        ));
        assert!(matches!(
            peek_tagged(&[b'Q', 0xff, 0xff, 0xff, 0xff], 1000),
            Err(FrameError::TooShort { len: -1, .. })
        ));
        assert!(matches!(
            peek_tagged(&[b'Q', 0x7f, 0xff, 0xff, 0xff], 1 << 20),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn missing_bytes_counts_header_then_body() {
        assert_eq!(missing_bytes(&[]), 5);
        assert_eq!(missing_bytes(&[b'Q', 0, 0]), 2);
        assert_eq!(missing_bytes(&[b'Q', 0, 0, 0, 10, 1]), 5);
    }

    #[test]
    fn untagged_packets() {
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(peek_untagged(&ssl, 10_000).unwrap(), Some(8));
        assert_eq!(peek_untagged(&ssl[..6], 10_000).unwrap(), None);
        assert!(peek_untagged(&[0, 0, 0, 2], 10_000).is_err());
        assert!(peek_untagged(&[0, 1, 0, 0], 10_000).is_err());
    }
}
