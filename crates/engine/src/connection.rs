//! Frames over a TCP stream: a reader that buffers until a whole frame is there and a writer that
//! sends whole batches of frames with one syscall.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::error::LinkError;
use crate::wire::{self, Message, LEN_BYTES};

pub struct FrameReader {
    stream: OwnedReadHalf,
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already consumed.
    start: usize,
}

impl FrameReader {
    pub fn new(stream: OwnedReadHalf) -> Self {
        FrameReader {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            start: 0,
        }
    }

    /// Reads the next message, waiting at most `silence` for any byte to arrive. Returns the message and
    /// the number of bytes it took on the wire.
    pub async fn read(&mut self, silence: Duration) -> Result<(Message, usize), LinkError> {
        loop {
            let pending = &self.buf[self.start..];
            if let Some(len) = wire::frame_len(pending)? {
                if pending.len() >= LEN_BYTES + len {
                    let msg = wire::decode_body(&pending[LEN_BYTES..LEN_BYTES + len])?;
                    self.start += LEN_BYTES + len;
                    return Ok((msg, LEN_BYTES + len));
                }
                // Room for the whole frame, reserved only once its length passed the check.
                self.buf.reserve(LEN_BYTES + len - pending.len());
            }
            if self.start > 0 && (self.start == self.buf.len() || self.start > 1 << 20) {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(64 * 1024);
            }
            let n = tokio::time::timeout(silence, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| LinkError::Silent(silence))??;
            if n == 0 {
                return Err(LinkError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}

pub struct FrameWriter {
    stream: OwnedWriteHalf,
}

impl FrameWriter {
    pub fn new(stream: OwnedWriteHalf) -> Self {
        FrameWriter { stream }
    }

    /// Sends already encoded frames.
    pub async fn send(&mut self, frames: &[u8]) -> Result<(), LinkError> {
        self.stream.write_all(frames).await?;
        Ok(())
    }

    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}
