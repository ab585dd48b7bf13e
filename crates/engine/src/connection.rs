//! Frames over a stream (real or simulated TCP, see `transport`): the handshake that opens it (`secure`), then a reader that buffers until
//! a whole frame is there (decrypting records first on a keyed link) and a writer that sends whole
//! batches of frames with one syscall.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::LinkError;
use crate::secure::{Handshake, HandshakeError, Opener, Proven, Sealer, Security};
use crate::transport::{ReadHalf, Stream, WriteHalf};
use crate::wire::{self, Message, LEN_BYTES, MAX_FRAME};

/// Runs the preamble and, on a keyed link, the Noise handshake over `stream`, and returns the link's
/// frame reader and writer. Bytes that arrived behind the handshake go to the reader. `progress` is
/// called for each step the other end completes (the guard keeps connections that make progress).
/// The caller bounds how long this may take.
pub async fn open(
    stream: Box<dyn Stream>,
    security: &Security,
    dialer: bool,
    mut progress: Option<impl FnMut()>,
) -> Result<(FrameReader, FrameWriter), LinkError> {
    let (mut rd, mut wr) = stream.into_split();
    let mut handshake = Handshake::new(security, dialer)?;
    // The handshake consumes whole preambles and messages (under 64 bytes) as soon as they are
    // there, so this never holds more than that plus one read.
    let mut input = Vec::with_capacity(4096);
    loop {
        loop {
            let used = handshake.receive(&input)?;
            if used == 0 {
                break;
            }
            input.drain(..used);
            if let Some(progress) = &mut progress {
                progress();
            }
        }
        let out = handshake.take_output();
        if !out.is_empty() {
            wr.write_all(&out).await?;
        }
        if handshake.is_established() {
            break;
        }
        if input.capacity() == input.len() {
            input.reserve(4096);
        }
        let read = rd.read_buf(&mut input).await;
        if !matches!(read, Ok(n) if n > 0) {
            if handshake.awaits_key_answer() {
                return Err(HandshakeError::KeyRefused.into());
            }
            read?;
            return Err(LinkError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    let proven = handshake.proven();
    let (sealer, opener) = match handshake.into_cipher() {
        Some((sealer, opener)) => (Some(sealer), Some(opener)),
        None => (None, None),
    };
    let mut decoder = FrameDecoder::new(opener);
    decoder.input().extend_from_slice(&input);
    Ok((
        FrameReader {
            stream: rd,
            decoder,
            proven,
        },
        FrameWriter {
            stream: wr,
            sealer,
            sealed: Vec::new(),
        },
    ))
}

/// The messages in a link's incoming bytes, decrypted first on a keyed link. Without I/O, so the fuzz
/// targets drive it as the reader does.
///
/// Memory stays bounded by the frame being read: a frame's room is reserved only once its length
/// passed the check against `MAX_FRAME`, and a record is decrypted only when the frame needs more.
pub struct FrameDecoder {
    opener: Option<Opener>,
    /// Received and not decrypted yet (keyed links only); bytes before `sealed_start` are used.
    sealed: Vec<u8>,
    sealed_start: usize,
    /// The frame stream; bytes before `start` are consumed.
    plain: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    /// A decoder for an open link (`None`) or a keyed one.
    pub fn new(opener: Option<Opener>) -> Self {
        FrameDecoder {
            opener,
            sealed: Vec::new(),
            sealed_start: 0,
            plain: Vec::new(),
            start: 0,
        }
    }

    /// The buffer received bytes are appended to, with room for a read.
    pub fn input(&mut self) -> &mut Vec<u8> {
        compact(&mut self.plain, &mut self.start);
        compact(&mut self.sealed, &mut self.sealed_start);
        let buf = if self.opener.is_some() {
            &mut self.sealed
        } else {
            &mut self.plain
        };
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        buf
    }

    /// The next whole message and the bytes its frame took; `None` until more bytes arrive.
    pub fn next_message(&mut self) -> Result<Option<(Message, usize)>, LinkError> {
        self.next_message_within(MAX_FRAME)
    }

    /// `next_message`, refusing a frame longer than `max_frame` from its length prefix.
    pub fn next_message_within(
        &mut self,
        max_frame: usize,
    ) -> Result<Option<(Message, usize)>, LinkError> {
        loop {
            let pending = &self.plain[self.start..];
            if let Some(len) = wire::frame_len(pending)? {
                if len > max_frame {
                    return Err(LinkError::Protocol(format!(
                        "frame of {len} bytes where at most {max_frame} are accepted"
                    )));
                }
                if pending.len() >= LEN_BYTES + len {
                    let msg = wire::decode_body(&pending[LEN_BYTES..LEN_BYTES + len])?;
                    self.start += LEN_BYTES + len;
                    return Ok(Some((msg, LEN_BYTES + len)));
                }
                self.plain.reserve(LEN_BYTES + len - pending.len());
            }
            let Some(opener) = &mut self.opener else {
                return Ok(None);
            };
            let used = opener.open(&self.sealed[self.sealed_start..], &mut self.plain)?;
            if used == 0 {
                return Ok(None);
            }
            self.sealed_start += used;
        }
    }
}

/// Drops the consumed front of `buf` once it is all of it, or large.
fn compact(buf: &mut Vec<u8>, start: &mut usize) {
    if *start > 0 && (*start == buf.len() || *start > 1 << 20) {
        buf.drain(..*start);
        *start = 0;
    }
}

pub struct FrameReader {
    stream: ReadHalf,
    decoder: FrameDecoder,
    proven: Option<Proven>,
}

impl FrameReader {
    /// The static key the other end proved in the handshake: `None` on an open link.
    pub fn proven(&self) -> Option<Proven> {
        self.proven
    }

    /// Reads the next message, waiting at most `silence` for any byte to arrive. Returns the message and
    /// the number of bytes its frame took.
    pub async fn read(&mut self, silence: Duration) -> Result<(Message, usize), LinkError> {
        self.read_within(silence, MAX_FRAME).await
    }

    /// `read`, refusing a frame longer than `max_frame` from its length prefix.
    pub async fn read_within(
        &mut self,
        silence: Duration,
        max_frame: usize,
    ) -> Result<(Message, usize), LinkError> {
        loop {
            if let Some(found) = self.decoder.next_message_within(max_frame)? {
                return Ok(found);
            }
            let n = tokio::time::timeout(silence, self.stream.read_buf(self.decoder.input()))
                .await
                .map_err(|_| LinkError::Silent(silence))??;
            if n == 0 {
                return Err(LinkError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}

/// Bytes the other end must take within a link's stall timeout (`FrameWriter::send_within`).
pub const SEND_PIECE: usize = 64 * 1024;

pub struct FrameWriter {
    stream: WriteHalf,
    sealer: Option<Sealer>,
    /// Records of the batch being sent (keyed links only).
    sealed: Vec<u8>,
}

impl FrameWriter {
    /// Sends already encoded frames, as records on a keyed link.
    pub async fn send(&mut self, frames: &[u8]) -> Result<(), LinkError> {
        match &mut self.sealer {
            None => self.stream.write_all(frames).await?,
            Some(sealer) => {
                self.sealed.clear();
                sealer.seal(frames, &mut self.sealed)?;
                self.stream.write_all(&self.sealed).await?;
            }
        }
        Ok(())
    }

    /// `send`, failing with `LinkError::Stalled` when the other end takes no `SEND_PIECE` bytes
    /// for `stall`: a peer that stops reading is dropped, one that reads slowly is only waited for.
    pub async fn send_within(&mut self, frames: &[u8], stall: Duration) -> Result<(), LinkError> {
        let bytes = match &mut self.sealer {
            None => frames,
            Some(sealer) => {
                self.sealed.clear();
                sealer.seal(frames, &mut self.sealed)?;
                &self.sealed
            }
        };
        for piece in bytes.chunks(SEND_PIECE) {
            tokio::time::timeout(stall, self.stream.write_all(piece))
                .await
                .map_err(|_| LinkError::Stalled(stall))??;
        }
        Ok(())
    }

    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secure::{handshake_in_memory, Outcome, MAX_RECORD};
    use crate::wire::{encode_frame, WireError};
    use proptest::prelude::*;

    fn keyed_pair() -> (Sealer, FrameDecoder) {
        let s = Security::from_secrets(&["correct horse battery staple"]).unwrap();
        let [Outcome::Established(Some((sealer, _))), Outcome::Established(Some((_, opener)))] =
            handshake_in_memory(&s, &s)
        else {
            panic!("handshake failed");
        };
        (sealer, FrameDecoder::new(Some(opener)))
    }

    fn messages() -> Vec<Message> {
        vec![
            Message::Ping { wall_ms: 1 },
            Message::FetchRequest {
                id: 7,
                bucket: "sessions".into(),
                prefix: "x".repeat(150_000),
            },
            Message::Leave,
        ]
    }

    /// Everything the decoder yields from `wire` delivered in pieces of the given sizes.
    fn decode_in_pieces(
        decoder: &mut FrameDecoder,
        wire: &[u8],
        cuts: &[usize],
    ) -> Result<Vec<Message>, LinkError> {
        let mut out = Vec::new();
        let mut rest = wire;
        let mut cuts = cuts.iter().cycle();
        while !rest.is_empty() {
            let n = (*cuts.next().unwrap()).clamp(1, rest.len());
            decoder.input().extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some((msg, _)) = decoder.next_message()? {
                out.push(msg);
            }
        }
        Ok(out)
    }

    #[test]
    fn frames_larger_than_a_record_cross_a_keyed_link_whole() {
        let (mut sealer, mut decoder) = keyed_pair();
        let mut frames = Vec::new();
        for m in messages() {
            encode_frame(&m, &mut frames).unwrap();
        }
        let mut wire = Vec::new();
        sealer.seal(&frames, &mut wire).unwrap();
        assert!(wire.len() > 2 * MAX_RECORD);
        let got = decode_in_pieces(&mut decoder, &wire, &[1000, 70_000, 3]).unwrap();
        assert_eq!(got, messages());
    }

    #[test]
    fn a_huge_length_prefix_inside_a_keyed_link_is_refused_before_allocating() {
        let (mut sealer, mut decoder) = keyed_pair();
        let mut wire = Vec::new();
        sealer
            .seal(&[0xff, 0xff, 0xff, 0xff, 1], &mut wire)
            .unwrap();
        let err = decode_in_pieces(&mut decoder, &wire, &[64]).unwrap_err();
        assert!(matches!(
            err,
            LinkError::Wire(WireError::FrameTooLarge(n)) if n == u32::MAX as usize
        ));
        assert!(decoder.plain.capacity() < MAX_FRAME);
    }

    #[test]
    fn a_frame_past_the_callers_limit_is_refused_before_allocating() {
        let mut decoder = FrameDecoder::new(None);
        decoder
            .input()
            .extend_from_slice(&(MAX_FRAME as u32).to_be_bytes());
        let err = decoder.next_message_within(1024).unwrap_err();
        assert!(matches!(err, LinkError::Protocol(_)), "{err}");
        assert!(decoder.plain.capacity() < 1024 * 1024);
        // The same prefix without a limit below the maximum waits for the frame.
        let mut decoder = FrameDecoder::new(None);
        decoder
            .input()
            .extend_from_slice(&(MAX_FRAME as u32).to_be_bytes());
        assert!(decoder.next_message().unwrap().is_none());
    }

    #[test]
    fn plaintext_on_a_keyed_link_is_refused() {
        let (_, mut decoder) = keyed_pair();
        let mut frames = Vec::new();
        encode_frame(&Message::Leave, &mut frames).unwrap();
        let err = decode_in_pieces(&mut decoder, &frames, &[64]).unwrap_err();
        assert!(matches!(err, LinkError::Record(_)), "{err}");
    }

    proptest! {
        #[test]
        fn a_keyed_stream_in_any_pieces_decodes_the_same(cuts in proptest::collection::vec(1usize..100_000, 1..6)) {
            let (mut sealer, mut decoder) = keyed_pair();
            let mut wire = Vec::new();
            for m in messages() {
                let mut frame = Vec::new();
                encode_frame(&m, &mut frame).unwrap();
                sealer.seal(&frame, &mut wire).unwrap();
            }
            prop_assert_eq!(decode_in_pieces(&mut decoder, &wire, &cuts).unwrap(), messages());
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            cuts in proptest::collection::vec(1usize..512, 1..6),
            keyed in any::<bool>(),
        ) {
            let mut decoder = if keyed { keyed_pair().1 } else { FrameDecoder::new(None) };
            let _ = decode_in_pieces(&mut decoder, &bytes, &cuts);
        }

        #[test]
        fn arbitrary_plaintext_inside_a_keyed_link_never_panics_the_decoder(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let (mut sealer, mut decoder) = keyed_pair();
            let mut wire = Vec::new();
            sealer.seal(&bytes, &mut wire).unwrap();
            let _ = decode_in_pieces(&mut decoder, &wire, &[usize::MAX]);
        }
    }
}
