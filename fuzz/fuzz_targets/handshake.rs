//! The handshake state machine, both ends, open and keyed, fed arbitrary bytes in arbitrary pieces:
//! it must consume, ask for more or refuse, never panic, and never establish a keyed link from bytes
//! that do not prove the key. Bytes left behind an open handshake go on to the frame decoder.
//!
//! The first byte picks the end (dialer or acceptor), the mode, whether a valid preamble goes first,
//! and the size of the pieces; the rest is what the other end "sent".

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use peer_buckets_engine::connection::FrameDecoder;
use peer_buckets_engine::{Handshake, Security, LINK_VERSION, MAGIC};

fn keyed() -> &'static Security {
    static KEYED: OnceLock<Security> = OnceLock::new();
    KEYED.get_or_init(|| {
        Security::from_secrets(&["the fuzzer's secret", "the fuzzer's older secret"]).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&setup, sent)) = data.split_first() else {
        return;
    };
    let dialer = setup & 1 == 1;
    let keyed_end = setup & 2 == 2;
    let security = if keyed_end { keyed().clone() } else { Security::Open };
    let mut input = Vec::new();
    if setup & 4 == 4 {
        input.extend_from_slice(&MAGIC);
        input.extend_from_slice(&[LINK_VERSION, keyed_end as u8]);
    }
    input.extend_from_slice(sent);
    let piece = 1 + (setup >> 3) as usize * 3;

    let mut hs = Handshake::new(&security, dialer).expect("a handshake starts");
    let _ = hs.take_output();
    let mut buf = Vec::new();
    let mut rest = &input[..];
    while !rest.is_empty() && !hs.is_established() {
        let n = piece.min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match hs.receive(&buf) {
                Ok(0) => break,
                Ok(used) => {
                    assert!(used <= buf.len());
                    buf.drain(..used);
                }
                Err(_) => return,
            }
        }
        let _ = hs.take_output();
    }
    if !hs.is_established() {
        return;
    }
    // Random bytes cannot carry a tag under the key: only an open handshake gets here.
    assert!(!keyed_end, "a keyed handshake was established from unauthenticated bytes");
    assert!(hs.into_cipher().is_none());
    let mut decoder = FrameDecoder::new(None);
    decoder.input().extend_from_slice(&buf);
    decoder.input().extend_from_slice(rest);
    while let Ok(Some(_)) = decoder.next_message() {}
});
