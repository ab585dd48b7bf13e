//! The frame decoder of an open link, fed arbitrary bytes in arbitrary pieces: it must return
//! messages or errors, never panic, and never reserve more than a frame's checked length.
//!
//! The first byte sets the size of the pieces (as a socket might deliver them); the rest is the
//! stream. Every message decoded is re-encoded and must decode to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use peer_buckets_engine::connection::FrameDecoder;
use peer_buckets_engine::wire::{self, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let _ = wire::decode_frame(stream);
    let _ = wire::decode_body(stream);
    let piece = 1 + piece as usize * 17;
    let mut decoder = FrameDecoder::new(None);
    for chunk in stream.chunks(piece) {
        let input = decoder.input();
        input.extend_from_slice(chunk);
        assert!(input.capacity() <= 2 * MAX_FRAME);
        loop {
            match decoder.next_message() {
                Ok(Some((msg, _))) => {
                    let mut again = Vec::new();
                    if wire::encode_frame(&msg, &mut again).is_ok() {
                        let (back, used) = wire::decode_frame(&again)
                            .expect("a re-encoded frame decodes")
                            .expect("a re-encoded frame is whole");
                        assert_eq!(used, again.len());
                        assert_eq!(back, msg);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
