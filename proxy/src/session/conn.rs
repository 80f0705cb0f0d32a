//! A connection end owned by a session: the stream plus the read buffer that incoming bytes
//! accumulate in. Reads only append to the buffer and messages are split off only when
//! complete, so every read here is cancel-safe inside `select!`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::io::poll_read_buf;

use crate::protocol::framing::{missing_bytes, peek_tagged, peek_untagged, FrameError};
use crate::stream::Stream;

/// Bytes reserved for a read when the buffer has less room than this.
pub const READ_CHUNK: usize = 8 * 1024;
/// Largest single reservation made for an incomplete message: a huge message grows the
/// buffer in steps as its bytes arrive, never at once from its length header.
const MAX_RESERVE_STEP: usize = 1 << 20;

/// Result of reading one message.
#[derive(Debug)]
pub enum Read {
    /// A complete message (header included).
    Frame(BytesMut),
    /// The peer closed the connection at a message boundary.
    Closed,
    /// The peer closed the connection in the middle of a message.
    Truncated,
}

/// Either framing failed or I/O failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Bad length header.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Socket error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A stream and its read buffer.
#[derive(Debug)]
pub struct Conn {
    /// The socket (plain or TLS).
    pub stream: Stream,
    /// Bytes received and not yet consumed.
    pub rbuf: BytesMut,
}

impl Conn {
    /// Wraps a stream with an empty buffer.
    pub fn new(stream: Stream) -> Self {
        Conn {
            stream,
            rbuf: BytesMut::new(),
        }
    }

    /// Makes room for the next read, sized by what the incomplete message at the front of
    /// the buffer still needs (bounded per step).
    pub fn reserve_for_read(&mut self) {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 2 {
            let want = missing_bytes(&self.rbuf).clamp(READ_CHUNK, MAX_RESERVE_STEP);
            self.rbuf.reserve(want);
        }
    }

    /// Polls for more bytes into the buffer; `Ready(Ok(0))` at end of stream.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        self.reserve_for_read();
        poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.rbuf)
    }

    /// Reads more bytes into the buffer; 0 at end of stream. Cancel-safe.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        self.reserve_for_read();
        self.stream.read_buf(&mut self.rbuf).await
    }

    /// Reads one tagged message of at most `max` bytes (length field value).
    pub async fn read_tagged(&mut self, max: usize) -> Result<Read, ReadError> {
        loop {
            if let Some(info) = peek_tagged(&self.rbuf, max)? {
                return Ok(Read::Frame(self.rbuf.split_to(info.total_len)));
            }
            if self.fill().await? == 0 {
                return Ok(if self.rbuf.is_empty() {
                    Read::Closed
                } else {
                    Read::Truncated
                });
            }
        }
    }

    /// Reads one untagged startup-phase packet of at most `max` bytes.
    pub async fn read_untagged(&mut self, max: usize) -> Result<Read, ReadError> {
        loop {
            if let Some(len) = peek_untagged(&self.rbuf, max)? {
                return Ok(Read::Frame(self.rbuf.split_to(len)));
            }
            if self.fill().await? == 0 {
                return Ok(if self.rbuf.is_empty() {
                    Read::Closed
                } else {
                    Read::Truncated
                });
            }
        }
    }

    /// Writes all of `bytes` and flushes (TLS needs the flush to emit records).
    pub async fn write_flush(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Drops `n` consumed bytes from the front of the buffer.
    pub fn consume(&mut self, n: usize) {
        self.rbuf.advance(n);
    }
}
