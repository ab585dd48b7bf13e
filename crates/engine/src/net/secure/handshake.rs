//! The handshake that turns a connection into a link: the preamble both ends send, then, on a keyed
//! link, the three Noise messages (see the module above for the pattern and what each proves). It
//! keeps that an acceptor sends nothing but its preamble until the dialer's preamble matched and its
//! first message authenticated under one of the acceptor's keys (the dialer sends its preamble and
//! first message together), and that the ciphers exist only once all three messages passed.

use std::sync::Arc;

use snow::{Builder, HandshakeState, StatelessTransportState};

use super::records::{Opener, Sealer};
use super::*;

/// Why a connection was refused before it became a link.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("not a peer-buckets peer (it began with {0:02x?})")]
    NotAPeer(Vec<u8>),
    #[error("link protocol version {0} (this peer speaks {LINK_VERSION})")]
    Version(u8),
    #[error("the other end has a secret and this one has none")]
    TheyHaveASecret,
    #[error("this end has a secret and the other has none")]
    TheyHaveNoSecret,
    #[error("unknown link mode {0}")]
    Mode(u8),
    #[error("handshake message of {0} bytes (expected {1})")]
    MessageLength(usize, usize),
    #[error("the other end does not hold the cluster secret")]
    WrongSecret,
    /// Seen by a dialer: the other end closed the connection on its first Noise message, the one that
    /// proves the key, which is what an acceptor holding another secret does.
    #[error("the other end closed the connection on this end's key: it holds another secret")]
    KeyRefused,
    #[error("noise: {0}")]
    Noise(String),
}

fn noise_error(e: snow::Error) -> HandshakeError {
    HandshakeError::Noise(e.to_string())
}

pub(super) fn builder<'a>(
    psk: &'a Psk,
    identity: &'a Identity,
) -> Result<Builder<'a>, HandshakeError> {
    let params = NOISE_PARAMS.parse().map_err(noise_error)?;
    Builder::new(params)
        .prologue(&MAGIC)
        .and_then(|b| b.psk(0, psk))
        .and_then(|b| b.local_private_key(identity.private()))
        .map_err(noise_error)
}

/// What a keyed handshake proved about the other end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proven {
    pub key: PublicKey,
    /// The other end keeps this key across runs (a data directory).
    pub stable: bool,
}

enum Stage {
    /// Waiting for the other end's preamble; a dialer's Noise state waits with it.
    Preamble(Option<Box<HandshakeState>>),
    /// Keyed: waiting for the other end's next Noise message. An acceptor has no state until the
    /// first arrives; then, like the dialer, it waits with its state for the one after its own.
    Noise(Option<Box<HandshakeState>>),
    Established {
        cipher: Option<Arc<StatelessTransportState>>,
        proven: Option<Proven>,
    },
}

/// One end of a connection from its first byte until it is a link (or refused).
///
/// Feed it the bytes received with `receive` and send what `take_output` gives, until
/// `is_established`; the bytes `receive` did not consume belong to the frame stream. An error ends
/// the handshake.
pub struct Handshake {
    security: Security,
    stage: Stage,
    out: Vec<u8>,
}

impl Handshake {
    /// Starts a handshake; `dialer` is the end that opened the connection.
    pub fn new(security: &Security, dialer: bool) -> Result<Handshake, HandshakeError> {
        let mut out = security.preamble().to_vec();
        let mut noise = None;
        if let (Security::Keyed { keys, identity }, true) = (security, dialer) {
            let mut state = builder(&keys[0], identity)?
                .build_initiator()
                .map_err(noise_error)?;
            write_message(&mut state, &[], &mut out)?;
            noise = Some(Box::new(state));
        }
        Ok(Handshake {
            security: security.clone(),
            stage: Stage::Preamble(noise),
            out,
        })
    }

    /// Bytes to send now.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn is_established(&self) -> bool {
        matches!(self.stage, Stage::Established { .. })
    }

    /// True for a dialer whose key went out and whose answer has not come yet.
    pub fn awaits_key_answer(&self) -> bool {
        matches!(&self.stage, Stage::Noise(Some(state)) if state.is_initiator())
    }

    /// What the handshake proved about the other end's static key: `None` on an open link.
    pub fn proven(&self) -> Option<Proven> {
        match self.stage {
            Stage::Established { proven, .. } => proven,
            _ => None,
        }
    }

    /// The link's cipher once established: `None` for an open link.
    pub fn into_cipher(self) -> Option<(Sealer, Opener)> {
        match self.stage {
            Stage::Established {
                cipher: Some(state),
                ..
            } => Some((Sealer::new(state.clone()), Opener::new(state))),
            _ => None,
        }
    }

    /// Consumes what it needs of `input`, the bytes received and not consumed yet; returns how many it
    /// took (0 when it needs more).
    pub fn receive(&mut self, input: &[u8]) -> Result<usize, HandshakeError> {
        match &mut self.stage {
            Stage::Preamble(noise) => {
                let seen = &input[..input.len().min(MAGIC.len())];
                if seen != &MAGIC[..seen.len()] {
                    return Err(HandshakeError::NotAPeer(seen.to_vec()));
                }
                let Some(preamble) = input.get(..PREAMBLE_LEN) else {
                    return Ok(0);
                };
                if preamble[4] != LINK_VERSION {
                    return Err(HandshakeError::Version(preamble[4]));
                }
                self.stage = match (preamble[5], &self.security) {
                    (MODE_OPEN, Security::Open) => Stage::Established {
                        cipher: None,
                        proven: None,
                    },
                    (MODE_KEYED, Security::Keyed { .. }) => Stage::Noise(noise.take()),
                    (MODE_KEYED, Security::Open) => return Err(HandshakeError::TheyHaveASecret),
                    (MODE_OPEN, Security::Keyed { .. }) => {
                        return Err(HandshakeError::TheyHaveNoSecret)
                    }
                    (mode, _) => return Err(HandshakeError::Mode(mode)),
                };
                Ok(PREAMBLE_LEN)
            }
            Stage::Noise(noise) => {
                let Some(prefix) = input.get(..RECORD_LEN_BYTES) else {
                    return Ok(0);
                };
                let len = u16::from_be_bytes([prefix[0], prefix[1]]) as usize;
                let expected = match noise.as_deref() {
                    None => FIRST_MSG_LEN,
                    Some(state) if state.is_initiator() => ANSWER_MSG_LEN,
                    Some(_) => LAST_MSG_LEN,
                };
                if len != expected {
                    return Err(HandshakeError::MessageLength(len, expected));
                }
                let Some(message) = input.get(RECORD_LEN_BYTES..RECORD_LEN_BYTES + len) else {
                    return Ok(0);
                };
                let Security::Keyed { keys, identity } = &self.security else {
                    unreachable!("only a keyed handshake reaches the noise stage");
                };
                let stable = [u8::from(identity.is_stable())];
                let Some(mut state) = noise.take() else {
                    let mut state = accept_with_any(keys, identity, message)?;
                    write_message(&mut state, &stable, &mut self.out)?;
                    self.stage = Stage::Noise(Some(state));
                    return Ok(RECORD_LEN_BYTES + len);
                };
                let mut payload = [0u8; MAX_HANDSHAKE_MSG];
                let n = state
                    .read_message(message, &mut payload)
                    .map_err(|_| HandshakeError::WrongSecret)?;
                let their_stable = match &payload[..n] {
                    [0] => false,
                    [1] => true,
                    other => {
                        return Err(HandshakeError::Noise(format!(
                            "a handshake payload of {other:02x?} (one byte, 0 or 1, expected)"
                        )))
                    }
                };
                if state.is_initiator() {
                    write_message(&mut state, &stable, &mut self.out)?;
                }
                let mut key = [0u8; KEY_LEN];
                key.copy_from_slice(
                    state
                        .get_remote_static()
                        .ok_or_else(|| HandshakeError::Noise("no static key proven".into()))?,
                );
                let transport = state.into_stateless_transport_mode().map_err(noise_error)?;
                self.stage = Stage::Established {
                    cipher: Some(Arc::new(transport)),
                    proven: Some(Proven {
                        key,
                        stable: their_stable,
                    }),
                };
                Ok(RECORD_LEN_BYTES + len)
            }
            Stage::Established { .. } => Ok(0),
        }
    }
}

/// The acceptor's side of the first message: the state of the first accepted key it authenticates under.
fn accept_with_any(
    keys: &[Psk],
    identity: &Identity,
    message: &[u8],
) -> Result<Box<HandshakeState>, HandshakeError> {
    for psk in keys {
        let mut state = builder(psk, identity)?
            .build_responder()
            .map_err(noise_error)?;
        if state.read_message(message, &mut []).is_ok() {
            return Ok(Box::new(state));
        }
    }
    Err(HandshakeError::WrongSecret)
}

/// Appends the next handshake message (carrying `payload`), length-prefixed, to `out`.
pub(super) fn write_message(
    state: &mut HandshakeState,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), HandshakeError> {
    let mut message = [0u8; MAX_HANDSHAKE_MSG];
    let len = state
        .write_message(payload, &mut message)
        .map_err(noise_error)?;
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&message[..len]);
    Ok(())
}

/// How one end of an in-memory handshake ended.
#[cfg(test)]
pub enum Outcome {
    Established(Option<(Sealer, Opener)>),
    Refused(HandshakeError),
    /// Neither: the other end refused, so this one would see the connection close.
    Unfinished,
}

/// Runs a handshake between two ends in memory, for tests and the fuzz targets: the dialer's outcome,
/// then the acceptor's.
#[cfg(test)]
pub fn handshake_in_memory(dialer: &Security, acceptor: &Security) -> [Outcome; 2] {
    let (mut ends, mut failed) = match (
        Handshake::new(dialer, true),
        Handshake::new(acceptor, false),
    ) {
        (Ok(d), Ok(a)) => ([d, a], [None, None]),
        (Err(e), _) | (_, Err(e)) => return [Outcome::Refused(e), Outcome::Unfinished],
    };
    let mut inboxes = [Vec::new(), Vec::new()];
    // Preamble and first message, the answer, then the last message: three rounds finish any handshake.
    for _ in 0..3 {
        for i in 0..2 {
            let out = ends[i].take_output();
            inboxes[1 - i].extend_from_slice(&out);
        }
        for i in 0..2 {
            while failed[i].is_none() {
                match ends[i].receive(&inboxes[i]) {
                    Ok(0) => break,
                    Ok(n) => {
                        inboxes[i].drain(..n);
                    }
                    Err(e) => failed[i] = Some(e),
                }
            }
        }
    }
    let [d, a] = ends;
    let [fd, fa] = failed;
    let outcome = |end: Handshake, failed: Option<HandshakeError>| match failed {
        Some(e) => Outcome::Refused(e),
        None if end.is_established() => Outcome::Established(end.into_cipher()),
        None => Outcome::Unfinished,
    };
    [outcome(d, fd), outcome(a, fa)]
}
