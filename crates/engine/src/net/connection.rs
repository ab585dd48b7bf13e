//! Frames over a stream (real or simulated TCP, see `transport`): the handshake that opens it (`secure`), then a reader that buffers until
//! a whole frame is there (decrypting records first on a keyed link, inflating compressed frames
//! after) and a writer that sends whole batches of frames with one syscall, compressed before they
//! are encrypted when that makes them shorter (`wire::compress_frames`).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::LinkError;
use crate::net::secure::{Handshake, HandshakeError, Opener, Proven, Sealer, Security};
use crate::net::transport::{ReadHalf, Stream, WriteHalf};
use crate::protocol::wire::{self, Message, LEN_BYTES, MAX_FRAME};
use crate::stamps::{stamp, Stage};

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
            compress: false,
            packed: Vec::new(),
        },
    ))
}

/// The messages in a link's incoming bytes, decrypted first on a keyed link. Without I/O, so the fuzz
/// targets drive it as the reader does.
///
/// Memory stays bounded by the frame being read: a frame's room is reserved only once its length
/// passed the check against `MAX_FRAME`, a record is decrypted only when the frame needs more, and
/// a compressed frame is inflated only once the frames it held before are all read, into room its
/// claimed size (checked against the cap first) sets.
pub struct FrameDecoder {
    opener: Option<Opener>,
    /// Received and not decrypted yet (keyed links only); bytes before `sealed_start` are used.
    sealed: Vec<u8>,
    sealed_start: usize,
    /// The frame stream; bytes before `start` are consumed.
    plain: Vec<u8>,
    start: usize,
    /// Frames of the last compressed frame not read yet, from `inflated_start`.
    inflated: Vec<u8>,
    inflated_start: usize,
    /// Bytes of the compressed frame being read out, not yet counted in a `Taken`.
    uncounted: usize,
}

/// What reading one message took: `wire` the bytes received for it (a compressed frame counts
/// with the first message it holds), `plain` those of its own frame, as it was before compression.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Taken {
    pub wire: usize,
    pub plain: usize,
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
            inflated: Vec::new(),
            inflated_start: 0,
            uncounted: 0,
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

    /// The next whole message and the bytes it took; `None` until more bytes arrive.
    pub fn next_message(&mut self) -> Result<Option<(Message, Taken)>, LinkError> {
        self.next_message_within(MAX_FRAME)
    }

    /// `next_message`, refusing a frame longer than `max_frame` from its length prefix, and a
    /// compressed frame claiming more than `max_frame` inflated bytes.
    pub fn next_message_within(
        &mut self,
        max_frame: usize,
    ) -> Result<Option<(Message, Taken)>, LinkError> {
        self.next_message_as(max_frame, true)
    }

    /// `next_message_within`, refusing a compressed frame unless `inflate`: the hello is read plain,
    /// so nobody is inflated for before it has been taken.
    fn next_message_as(
        &mut self,
        max_frame: usize,
        inflate: bool,
    ) -> Result<Option<(Message, Taken)>, LinkError> {
        loop {
            if self.inflated_start < self.inflated.len() {
                return self.next_inflated(max_frame).map(Some);
            }
            let pending = &self.plain[self.start..];
            if let Some(len) = wire::frame_len(pending)? {
                if len > max_frame {
                    return Err(LinkError::Protocol(format!(
                        "frame of {len} bytes where at most {max_frame} are accepted"
                    )));
                }
                if pending.len() >= LEN_BYTES + len {
                    let body = &pending[LEN_BYTES..LEN_BYTES + len];
                    self.start += LEN_BYTES + len;
                    if wire::is_compressed(body) {
                        if !inflate {
                            return Err(LinkError::Protocol(
                                "a compressed frame where a plain one is due".into(),
                            ));
                        }
                        self.inflated.clear();
                        self.inflated_start = 0;
                        wire::inflate(body, max_frame, &mut self.inflated)?;
                        self.uncounted = LEN_BYTES + len;
                        continue;
                    }
                    let msg = wire::decode_body(body)?;
                    let taken = LEN_BYTES + len;
                    return Ok(Some((
                        msg,
                        Taken {
                            wire: taken,
                            plain: taken,
                        },
                    )));
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

    /// The next frame of the inflated block: whole, plain, within `max_frame`, or the block is
    /// malformed.
    fn next_inflated(&mut self, max_frame: usize) -> Result<(Message, Taken), LinkError> {
        let pending = &self.inflated[self.inflated_start..];
        let len = wire::frame_len(pending)?.ok_or_else(|| {
            LinkError::Protocol("a compressed frame ends inside a length prefix".into())
        })?;
        if len > max_frame || pending.len() < LEN_BYTES + len {
            return Err(LinkError::Protocol(format!(
                "a compressed frame holds a frame of {len} bytes that it does not fit"
            )));
        }
        let body = &pending[LEN_BYTES..LEN_BYTES + len];
        if wire::is_compressed(body) {
            return Err(LinkError::Protocol(
                "a compressed frame holds a compressed frame".into(),
            ));
        }
        let msg = wire::decode_body(body)?;
        self.inflated_start += LEN_BYTES + len;
        if self.inflated_start == self.inflated.len() {
            // Let go of the block's room: kept, a member's one block would hold it for the link's
            // life.
            self.inflated = Vec::new();
            self.inflated_start = 0;
        }
        let taken = Taken {
            wire: std::mem::take(&mut self.uncounted),
            plain: LEN_BYTES + len,
        };
        Ok((msg, taken))
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
    /// the bytes it took.
    pub async fn read(&mut self, silence: Duration) -> Result<(Message, Taken), LinkError> {
        self.read_as(silence, MAX_FRAME, true).await
    }

    /// The other end's hello: `read`, refusing a frame longer than `max_frame` from its length
    /// prefix, and a compressed frame (hellos travel plain).
    pub async fn read_hello(
        &mut self,
        silence: Duration,
        max_frame: usize,
    ) -> Result<(Message, Taken), LinkError> {
        self.read_as(silence, max_frame, false).await
    }

    async fn read_as(
        &mut self,
        silence: Duration,
        max_frame: usize,
        inflate: bool,
    ) -> Result<(Message, Taken), LinkError> {
        loop {
            if let Some(found) = self.decoder.next_message_as(max_frame, inflate)? {
                return Ok(found);
            }
            let n = tokio::time::timeout(silence, self.stream.read_buf(self.decoder.input()))
                .await
                .map_err(|_| LinkError::Silent(silence))??;
            if n == 0 {
                return Err(LinkError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            stamp(Stage::ReaderRead, n);
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
    /// Whether `send_within` compresses what it sends.
    compress: bool,
    /// The batch being sent, compressed.
    packed: Vec<u8>,
}

impl FrameWriter {
    /// From now on, `send_within` sends frames compressed where that makes them shorter (the
    /// other end reads either).
    pub fn compress(&mut self, on: bool) {
        self.compress = on;
    }

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

    /// `send`, compressed if `compress` is on, failing with `LinkError::Stalled` when the other end
    /// takes no `SEND_PIECE` bytes for `stall`: a peer that stops reading is dropped, one that reads
    /// slowly is only waited for. Returns the bytes of frames sent, after compression.
    pub async fn send_within(
        &mut self,
        frames: &[u8],
        stall: Duration,
    ) -> Result<usize, LinkError> {
        let frames = if self.compress && frames.len() >= wire::COMPRESS_MIN {
            self.packed.clear();
            wire::compress_frames(frames, &mut self.packed);
            &self.packed[..]
        } else {
            frames
        };
        let sent = frames.len();
        let bytes = match &mut self.sealer {
            None => frames,
            Some(sealer) => {
                self.sealed.clear();
                sealer.seal(frames, &mut self.sealed)?;
                &self.sealed
            }
        };
        stamp(Stage::WriterPacked, sent);
        for piece in bytes.chunks(SEND_PIECE) {
            tokio::time::timeout(stall, self.stream.write_all(piece))
                .await
                .map_err(|_| LinkError::Stalled(stall))??;
        }
        Ok(sent)
    }

    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::secure::{handshake_in_memory, Outcome, MAX_RECORD};
    use crate::protocol::wire::{encode_frame, WireError};
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

    /// Session-like writes: alike in shape, each with its own random token, as live batches are.
    fn batch_frames(count: usize) -> Vec<u8> {
        let mut frames = Vec::new();
        for i in 0..count {
            let token: String = (0..24)
                .map(|j| (b'A' + ((i * 7 + j * 13) % 26) as u8) as char)
                .collect();
            encode_frame(
                &Message::FetchRequest {
                    id: i as u64,
                    bucket: "sessions".into(),
                    prefix: format!(
                        "{{\"cookie\":{{\"originalMaxAge\":86400000,\"httpOnly\":true,\"path\":\"/\"}},\"csrf\":\"{token}\",\"n\":{i}}}"
                    ),
                },
                &mut frames,
            )
            .unwrap();
        }
        frames
    }

    #[test]
    fn frames_sent_compressed_are_read_as_the_frames_sent() {
        let frames = batch_frames(200);
        let mut packed = Vec::new();
        let sent = wire::compress_frames(&frames, &mut packed);
        assert_eq!(sent, packed.len());
        assert!(
            packed.len() * 2 < frames.len(),
            "{} bytes compressed to {}",
            frames.len(),
            packed.len()
        );
        let mut decoder = FrameDecoder::new(None);
        let mut got = Vec::new();
        let (mut wire_bytes, mut plain_bytes) = (0, 0);
        decoder.input().extend_from_slice(&packed);
        while let Some((msg, taken)) = decoder.next_message().unwrap() {
            got.push(msg);
            wire_bytes += taken.wire;
            plain_bytes += taken.plain;
        }
        let mut plain = FrameDecoder::new(None);
        plain.input().extend_from_slice(&frames);
        let mut want = Vec::new();
        while let Some((msg, _)) = plain.next_message().unwrap() {
            want.push(msg);
        }
        assert_eq!(got, want);
        assert_eq!((wire_bytes, plain_bytes), (packed.len(), frames.len()));
    }

    /// A compressed frame of `frames`, whatever they are.
    fn compressed_frame(frames: &[u8]) -> Vec<u8> {
        let block = lz4_flex::block::compress(frames);
        let mut out = ((5 + block.len()) as u32).to_be_bytes().to_vec();
        out.push(wire::COMPRESSED | wire::PROTOCOL_VERSION);
        out.extend_from_slice(&(frames.len() as u32).to_be_bytes());
        out.extend_from_slice(&block);
        out
    }

    #[test]
    fn a_compressed_frame_claiming_gigabytes_is_refused_before_allocating() {
        let mut frame = compressed_frame(&batch_frames(10));
        frame[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut decoder = FrameDecoder::new(None);
        decoder.input().extend_from_slice(&frame);
        let err = decoder.next_message().unwrap_err();
        assert!(
            matches!(err, LinkError::Wire(WireError::Compressed(_))),
            "{err:?}"
        );
        assert_eq!(decoder.inflated.capacity(), 0);
    }

    #[test]
    fn a_compressed_frame_past_the_callers_limit_is_refused() {
        let frames = batch_frames(100);
        let mut decoder = FrameDecoder::new(None);
        decoder
            .input()
            .extend_from_slice(&compressed_frame(&frames));
        let err = decoder.next_message_within(frames.len() - 1).unwrap_err();
        assert!(
            matches!(err, LinkError::Wire(WireError::Compressed(_))),
            "{err:?}"
        );
        assert_eq!(decoder.inflated.capacity(), 0);
    }

    #[test]
    fn a_compressed_frame_that_is_not_whole_plain_frames_is_refused() {
        let frames = batch_frames(3);
        let cut = compressed_frame(&frames[..frames.len() - 1]);
        let nested = compressed_frame(&compressed_frame(&frames));
        let mut lying = compressed_frame(&frames);
        let claimed = frames.len() as u32 + 1;
        lying[5..9].copy_from_slice(&claimed.to_be_bytes());
        for (what, frame) in [("cut", cut), ("nested", nested), ("lying", lying)] {
            let mut decoder = FrameDecoder::new(None);
            decoder.input().extend_from_slice(&frame);
            let mut result = Ok(None);
            for _ in 0..4 {
                result = decoder.next_message();
                if !matches!(result, Ok(Some(_))) {
                    break;
                }
            }
            assert!(result.is_err(), "{what}: {result:?}");
        }
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
