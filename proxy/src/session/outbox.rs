//! Bytes waiting to be written to one side, as a queue of shared `Bytes` segments.
//!
//! Forwarded messages are slices split off the read buffer of the other side (no copy);
//! consecutive forwarded messages form one segment. Writes are vectored, so a batch of
//! segments costs one syscall.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;

/// Most segments handed to one vectored write.
const MAX_IOV: usize = 64;

/// A write queue for one connection.
#[derive(Debug, Default)]
pub struct Outbox {
    segments: VecDeque<Bytes>,
    len: usize,
    /// Bytes were written since the last flush (TLS streams buffer records until flushed).
    unflushed: bool,
}

impl Outbox {
    /// Queues a segment.
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.segments.push_back(bytes);
        }
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is queued and everything written was flushed.
    pub fn is_empty(&self) -> bool {
        self.len == 0 && !self.unflushed
    }

    /// Writes as much as the stream accepts now. `Ready(Ok(true))` when progress was made,
    /// `Ready(Ok(false))` when there was nothing to do, `Pending` when the stream is full.
    /// Unless the queue was emptied and flushed, the stream's waker is registered.
    #[inline]
    pub fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<bool>> {
        // The relay asks both queues on every pass and most passes find one empty: answer
        // that inline, without the call.
        if self.is_empty() {
            return Poll::Ready(Ok(false));
        }
        self.write_queued(stream, cx)
    }

    #[inline(never)]
    fn write_queued<W: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<bool>> {
        let mut progressed = false;
        while self.len > 0 {
            let attempt = if self.segments.len() == 1 {
                // The usual case (one reply, one forwarded run): a plain write.
                Pin::new(&mut *stream).poll_write(cx, &self.segments[0])
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOV];
                let mut count = 0;
                for (slot, segment) in slices.iter_mut().zip(self.segments.iter()) {
                    *slot = IoSlice::new(segment);
                    count += 1;
                }
                Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..count])
            };
            let written = match attempt {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if progressed => return Poll::Ready(Ok(true)),
                Poll::Pending => return Poll::Pending,
            };
            progressed = true;
            self.unflushed = true;
            self.advance(written);
        }
        if self.unflushed {
            match Pin::new(&mut *stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.unflushed = false;
                    progressed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if progressed => return Poll::Ready(Ok(true)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(progressed))
    }

    fn advance(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.segments.front_mut() else {
                return;
            };
            if n >= front.len() {
                n -= front.len();
                self.segments.pop_front();
            } else {
                front.advance(n);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    /// A writer that accepts at most `chunk` bytes per call.
    struct Trickle {
        written: Vec<u8>,
        chunk: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.chunk);
            self.written.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn partial_writes_keep_order() {
        let mut out = Outbox::default();
        out.push(Bytes::from_static(b"hello "));
        out.push(Bytes::new());
        out.push(Bytes::from_static(b"world"));
        assert_eq!(out.len(), 11);
        let mut w = Trickle {
            written: Vec::new(),
            chunk: 4,
        };
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            out.poll_write(&mut w, &mut cx),
            Poll::Ready(Ok(true))
        ));
        assert_eq!(w.written, b"hello world");
        assert!(out.is_empty());
        assert!(matches!(
            out.poll_write(&mut w, &mut cx),
            Poll::Ready(Ok(false))
        ));
    }
}
