//! Tests of the handshake and the records: every pairing of secrets and modes, forged and replayed
//! bytes, and what arbitrary input does to each end.

use super::handshake::{builder, write_message};
use super::*;
use proptest::prelude::*;

#[test]
fn keys_read_back_from_hex() {
    let key = [0xab; KEY_LEN];
    assert_eq!(key_from_hex(&key_to_hex(&key)), Some(key));
    assert_eq!(key_from_hex("ab"), None);
    assert_eq!(key_from_hex(&"zz".repeat(KEY_LEN)), None);
}

fn keyed(secrets: &[&str]) -> Security {
    Security::from_secrets(secrets).unwrap()
}

fn established(outcome: Outcome) -> Option<(Sealer, Opener)> {
    match outcome {
        Outcome::Established(cipher) => cipher,
        Outcome::Refused(e) => panic!("refused: {e}"),
        Outcome::Unfinished => panic!("unfinished"),
    }
}

fn refused(outcome: &Outcome) -> Option<&HandshakeError> {
    match outcome {
        Outcome::Refused(e) => Some(e),
        _ => None,
    }
}

/// Seals `plain` on one end and opens it on the other, record by record.
fn through(sealer: &mut Sealer, opener: &mut Opener, plain: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    sealer.seal(plain, &mut wire).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let used = opener.open(&wire[at..], &mut out).unwrap();
        assert!(used > 0);
        at += used;
    }
    out
}

#[test]
fn peers_with_the_same_secret_agree_on_keys_both_ways() {
    let s = keyed(&["correct horse battery staple"]);
    let [d, a] = handshake_in_memory(&s, &s);
    let (mut ds, mut dopen) = established(d).unwrap();
    let (mut as_, mut aopen) = established(a).unwrap();
    assert_eq!(through(&mut ds, &mut aopen, b"hello"), b"hello");
    assert_eq!(through(&mut as_, &mut dopen, b"back"), b"back");
}

#[test]
fn each_end_learns_the_static_key_the_other_proved_and_whether_it_is_kept() {
    let s = keyed(&["correct horse battery staple"]);
    let stored = Identity::from_private([7; KEY_LEN], true);
    let d = s.clone().with_identity(stored.clone());
    let mut dialer = Handshake::new(&d, true).unwrap();
    let mut acceptor = Handshake::new(&s, false).unwrap();
    let mut rounds = 0;
    while !(dialer.is_established() && acceptor.is_established()) {
        let to_acceptor = dialer.take_output();
        let to_dialer = acceptor.take_output();
        feed(&mut acceptor, &to_acceptor, &[64]).unwrap();
        feed(&mut dialer, &to_dialer, &[64]).unwrap();
        rounds += 1;
        assert!(rounds < 4, "the handshake does not finish");
    }
    assert_eq!(
        acceptor.proven(),
        Some(Proven {
            key: *stored.public(),
            stable: true
        })
    );
    assert_eq!(
        dialer.proven(),
        Some(Proven {
            key: *s.public_key().unwrap(),
            stable: false
        })
    );
    assert_eq!(
        Identity::from_private([7; KEY_LEN], false).public(),
        stored.public(),
        "the public key follows from the private one"
    );
}

#[test]
fn a_batch_larger_than_a_noise_message_is_split_into_records() {
    let s = keyed(&["correct horse battery staple"]);
    let [d, a] = handshake_in_memory(&s, &s);
    let (mut sealer, _) = established(d).unwrap();
    let (_, mut opener) = established(a).unwrap();
    let plain: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    let mut wire = Vec::new();
    sealer.seal(&plain, &mut wire).unwrap();
    let records = plain.len().div_ceil(MAX_RECORD_PAYLOAD);
    assert_eq!(
        wire.len(),
        plain.len() + records * (TAG_LEN + RECORD_LEN_BYTES)
    );
    let mut out = Vec::new();
    let mut at = 0;
    let mut count = 0;
    while at < wire.len() {
        let len = u16::from_be_bytes([wire[at], wire[at + 1]]) as usize;
        assert!(len <= MAX_RECORD);
        // Half a record is not enough.
        assert_eq!(opener.open(&wire[at..at + 1 + len / 2], &mut out), Ok(0));
        at += opener.open(&wire[at..], &mut out).unwrap();
        count += 1;
    }
    assert_eq!(count, records);
    assert_eq!(out, plain);
}

#[test]
fn a_peer_with_another_secret_is_refused_by_the_acceptor_after_one_message() {
    let [d, a] = handshake_in_memory(
        &keyed(&["the other cluster's secret"]),
        &keyed(&["correct horse battery staple"]),
    );
    assert_eq!(refused(&a), Some(&HandshakeError::WrongSecret));
    assert!(matches!(d, Outcome::Unfinished));
}

#[test]
fn an_acceptor_with_another_secret_is_refused_by_the_dialer() {
    // The acceptor cannot answer without the dialer's key; a forged answer fails its tag.
    let ours = keyed(&["correct horse battery staple"]);
    let mut dialer = Handshake::new(&ours, true).unwrap();
    dialer.take_output();
    let theirs = keyed(&["the other cluster's secret"]);
    let Security::Keyed { keys, identity } = &theirs else {
        unreachable!()
    };
    // The impostor answers as if the dialer's first message had passed under its own key.
    let mut mine = builder(&keys[0], identity)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut first = Vec::new();
    write_message(&mut mine, &[], &mut first).unwrap();
    let mut impostor = builder(&keys[0], identity)
        .unwrap()
        .build_responder()
        .unwrap();
    impostor.read_message(&first[2..], &mut []).unwrap();
    let mut reply = theirs.preamble().to_vec();
    write_message(&mut impostor, &[0], &mut reply).unwrap();
    assert_eq!(dialer.receive(&reply), Ok(PREAMBLE_LEN));
    assert_eq!(
        dialer.receive(&reply[PREAMBLE_LEN..]),
        Err(HandshakeError::WrongSecret)
    );
}

#[test]
fn during_a_rotation_either_secret_is_accepted_and_the_first_is_dialed_with() {
    let old = "the secret of last year";
    let new = "the secret of this year";
    let rotating = keyed(&[new, old]);
    for peer in [keyed(&[old]), keyed(&[new]), keyed(&[old, new])] {
        let [d, a] = handshake_in_memory(&peer, &rotating);
        assert!(established(d).is_some());
        assert!(established(a).is_some());
    }
    // A rotating node dials with the new secret, which a node that has only the old one refuses.
    let [_, a] = handshake_in_memory(&rotating, &keyed(&[old]));
    assert_eq!(refused(&a), Some(&HandshakeError::WrongSecret));
}

#[test]
fn open_and_keyed_peers_refuse_each_other_from_the_preamble() {
    let s = keyed(&["correct horse battery staple"]);
    let [d, a] = handshake_in_memory(&Security::Open, &s);
    assert_eq!(refused(&d), Some(&HandshakeError::TheyHaveASecret));
    assert_eq!(refused(&a), Some(&HandshakeError::TheyHaveNoSecret));
    let [d, a] = handshake_in_memory(&s, &Security::Open);
    assert_eq!(refused(&d), Some(&HandshakeError::TheyHaveNoSecret));
    assert_eq!(refused(&a), Some(&HandshakeError::TheyHaveASecret));
    let [d, a] = handshake_in_memory(&Security::Open, &Security::Open);
    assert!(established(d).is_none() && established(a).is_none());
}

#[test]
fn bytes_that_are_not_a_peer_are_refused_from_the_first_one() {
    for security in [Security::Open, keyed(&["correct horse battery staple"])] {
        let mut hs = Handshake::new(&security, false).unwrap();
        assert_eq!(
            hs.receive(b"G"),
            Err(HandshakeError::NotAPeer(b"G".to_vec()))
        );
        let mut hs = Handshake::new(&security, false).unwrap();
        assert!(matches!(
            hs.receive(&[0xff, 0xff, 0xff, 0xff, 1]),
            Err(HandshakeError::NotAPeer(_))
        ));
        let mut hs = Handshake::new(&security, false).unwrap();
        assert_eq!(hs.receive(b"PBK"), Ok(0));
        assert_eq!(hs.receive(b"PBKT\x07\x00"), Err(HandshakeError::Version(7)));
    }
}

#[test]
fn a_handshake_message_of_the_wrong_length_is_refused_from_its_prefix() {
    let s = keyed(&["correct horse battery staple"]);
    let mut hs = Handshake::new(&s, false).unwrap();
    let mut input = s.preamble().to_vec();
    input.extend_from_slice(&[0xff, 0xff]);
    assert_eq!(hs.receive(&input), Ok(PREAMBLE_LEN));
    assert_eq!(
        hs.receive(&input[PREAMBLE_LEN..]),
        Err(HandshakeError::MessageLength(0xffff, FIRST_MSG_LEN))
    );
}

#[test]
fn a_short_secret_or_too_many_are_refused() {
    assert_eq!(
        Security::from_secrets(&["fifteen bytes!!"]).unwrap_err(),
        SecretError::TooShort { index: 0, len: 15 }
    );
    assert!(Security::from_secrets(&["sixteen bytes!!!"]).is_ok());
    assert_eq!(
        Security::from_secrets(&["a secret of enough bytes"; 3]).unwrap_err(),
        SecretError::TooMany(3)
    );
    assert!(!Security::from_secrets::<&str>(&[]).unwrap().is_keyed());
}

#[test]
fn a_tampered_replayed_or_reordered_record_fails_authentication() {
    let s = keyed(&["correct horse battery staple"]);
    let [d, a] = handshake_in_memory(&s, &s);
    let (mut sealer, _) = established(d).unwrap();
    let (_, mut opener) = established(a).unwrap();
    let mut first = Vec::new();
    sealer.seal(b"first", &mut first).unwrap();
    let mut second = Vec::new();
    sealer.seal(b"second", &mut second).unwrap();
    let mut tampered = first.clone();
    tampered[4] ^= 1;
    let mut out = Vec::new();
    assert_eq!(opener.open(&tampered, &mut out), Err(RecordError::Forged));
    assert_eq!(opener.open(&second, &mut out), Err(RecordError::Forged));
    assert!(out.is_empty());
    assert_eq!(opener.open(&first, &mut out), Ok(first.len()));
    assert_eq!(opener.open(&first, &mut out), Err(RecordError::Forged));
    assert_eq!(
        opener.open(&[0, 3, 1, 2, 3], &mut out),
        Err(RecordError::Short(3))
    );
}

/// Feeds `input` to `hs` in pieces of the given sizes, as a socket might deliver it.
fn feed(hs: &mut Handshake, input: &[u8], cuts: &[usize]) -> Result<usize, HandshakeError> {
    let mut buf = Vec::new();
    let mut used_total = 0;
    let mut rest = input;
    let mut cuts = cuts.iter().cycle();
    while !rest.is_empty() {
        let n = (*cuts.next().unwrap()).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            let used = hs.receive(&buf)?;
            if used == 0 {
                break;
            }
            used_total += used;
            buf.drain(..used);
        }
    }
    Ok(used_total)
}

/// The figures in the README: `cargo test --release -p peer-buckets-engine -- --ignored
/// handshake_and_record_cost --nocapture`.
#[test]
#[ignore]
fn handshake_and_record_cost() {
    let s = keyed(&["correct horse battery staple"]);
    let rounds = 2000;
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        let [d, a] = handshake_in_memory(&s, &s);
        assert!(matches!(d, Outcome::Established(Some(_))));
        assert!(matches!(a, Outcome::Established(Some(_))));
    }
    let per = started.elapsed() / rounds;
    println!("handshake, both ends: {per:?}");
    let [d, a] = handshake_in_memory(&s, &s);
    let (mut sealer, _) = established(d).unwrap();
    let (_, mut opener) = established(a).unwrap();
    let batch = vec![7u8; 1 << 20];
    let mut wire = Vec::with_capacity(batch.len() + 1024);
    let mut plain = Vec::with_capacity(batch.len());
    let started = std::time::Instant::now();
    let mb = 256;
    for _ in 0..mb {
        wire.clear();
        plain.clear();
        sealer.seal(&batch, &mut wire).unwrap();
        let mut at = 0;
        while at < wire.len() {
            at += opener.open(&wire[at..], &mut plain).unwrap();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("seal + open: {:.0} MB/s", mb as f64 / secs);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_handshake(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        cuts in proptest::collection::vec(1usize..64, 1..8),
        keyed_end in any::<bool>(),
        dialer in any::<bool>(),
    ) {
        let security = if keyed_end { keyed(&["correct horse battery staple"]) } else { Security::Open };
        let mut hs = Handshake::new(&security, dialer).unwrap();
        let _ = feed(&mut hs, &bytes, &cuts);
        // The same bytes after a valid preamble reach the Noise stage.
        let mut hs = Handshake::new(&security, dialer).unwrap();
        let mut input = security.preamble().to_vec();
        input.extend_from_slice(&bytes);
        let _ = feed(&mut hs, &input, &cuts);
    }

    #[test]
    fn a_handshake_delivered_in_any_pieces_ends_the_same(cuts in proptest::collection::vec(1usize..16, 1..8)) {
        let s = keyed(&["correct horse battery staple"]);
        let mut dialer = Handshake::new(&s, true).unwrap();
        let mut acceptor = Handshake::new(&s, false).unwrap();
        let hello = dialer.take_output();
        prop_assert_eq!(feed(&mut acceptor, &hello, &cuts), Ok(hello.len()));
        prop_assert!(!acceptor.is_established());
        let answer = acceptor.take_output();
        prop_assert_eq!(feed(&mut dialer, &answer, &cuts), Ok(answer.len()));
        prop_assert!(dialer.is_established());
        let last = dialer.take_output();
        prop_assert_eq!(feed(&mut acceptor, &last, &cuts), Ok(last.len()));
        prop_assert!(acceptor.is_established());
    }

    #[test]
    fn arbitrary_records_never_panic_the_opener(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let s = keyed(&["correct horse battery staple"]);
        let [_, a] = handshake_in_memory(&s, &s);
        let (_, mut opener) = established(a).unwrap();
        let mut out = Vec::new();
        let _ = opener.open(&bytes, &mut out);
    }
}
