//! Link security, without I/O: the preamble every connection opens with, the Noise handshake that
//! proves both ends hold the cluster key and each end's static key, and the records that carry the
//! frame stream after it.
//!
//! Both ends of a connection first send a 6-byte preamble, `"PBKT" | link version | mode` (0: open,
//! 1: keyed), and read the other's. Bytes that are not a peer's (HTTP, noise, a length prefix) are
//! refused from the first of them, and a mode mismatch (a secret on one end only) ends the connection
//! before either end has said anything else: an open peer never sends its hello to a keyed one.
//!
//! An open link then carries plaintext frames. A keyed link runs `Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s`
//! with the pre-shared key derived from the cluster secret: the dialer sends `psk, e`, the acceptor
//! answers `e, ee, s, es` and the dialer ends with `s, se`. The first message already carries a tag
//! under the key, so the acceptor tells a wrong secret from the right one (trying each secret it
//! accepts, which is how a rotation works) before it sends a byte of Noise, and it hands its static
//! key only to an end that proved the secret; the answer proves the acceptor's key to the dialer, the
//! third message the dialer's static key to the acceptor, and `ee` gives the link keys forward secrecy.
//! The payload of the second and third messages is one byte: whether that end's static key is stable
//! (kept in a data directory) or drawn for this process; `keys` decides what a proven key may claim.
//! Each Noise message travels as `len: u16 (big endian) | message`; after the handshake the frame
//! stream is cut into transport messages of at most 65,535 bytes (tag included), so a batch of frames
//! larger than that is several records, and a record may end mid-frame.

use std::sync::Arc;

use blake2::{Blake2s256, Digest};
use snow::{Builder, HandshakeState, StatelessTransportState};

/// First bytes of every connection between peers.
pub const MAGIC: [u8; 4] = *b"PBKT";
/// Version of the preamble, handshake and record layout; another version is refused.
pub const LINK_VERSION: u8 = 2;
/// Bytes of the preamble: magic, version, mode.
pub const PREAMBLE_LEN: usize = 6;
/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;
/// Secrets a node accepts at once: the one it dials with and, during a rotation, one more.
pub const MAX_SECRETS: usize = 2;
/// Largest Noise message, tag included (the protocol's own limit).
pub const MAX_RECORD: usize = 65_535;
/// Bytes of the authentication tag of every Noise message.
pub const TAG_LEN: usize = 16;
/// Largest plaintext one record carries.
pub const MAX_RECORD_PAYLOAD: usize = MAX_RECORD - TAG_LEN;
/// Bytes of the length prefix of a handshake message or record.
pub const RECORD_LEN_BYTES: usize = 2;
/// Bytes of a public or private X25519 key.
pub const KEY_LEN: usize = 32;
/// The dialer's first message: its ephemeral key and the tag of the empty payload.
pub const FIRST_MSG_LEN: usize = KEY_LEN + TAG_LEN;
/// The acceptor's answer: its ephemeral key, its encrypted static key, and the one-byte payload.
pub const ANSWER_MSG_LEN: usize = KEY_LEN + (KEY_LEN + TAG_LEN) + 1 + TAG_LEN;
/// The dialer's last message: its encrypted static key and the one-byte payload.
pub const LAST_MSG_LEN: usize = (KEY_LEN + TAG_LEN) + 1 + TAG_LEN;
/// The largest handshake message.
const MAX_HANDSHAKE_MSG: usize = ANSWER_MSG_LEN;

const MODE_OPEN: u8 = 0;
const MODE_KEYED: u8 = 1;
const NOISE_PARAMS: &str = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s";
/// Hashed ahead of the secret, so the key serves this protocol only.
const PSK_CONTEXT: &[u8] = b"peer-buckets cluster key v1\0";

type Psk = [u8; 32];
/// A static public key: what a keyed handshake proves about the other end.
pub type PublicKey = [u8; KEY_LEN];

/// A key as 64 hex digits.
pub fn key_to_hex(key: &[u8; KEY_LEN]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 hex digits as a key; `None` for anything else.
pub fn key_from_hex(text: &str) -> Option<[u8; KEY_LEN]> {
    let text = text.trim();
    if text.len() != 2 * KEY_LEN || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut key = [0u8; KEY_LEN];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

/// This node's static key pair, proven to the other end of every keyed link. `stable` when it is kept
/// in a data directory (the same key every run), else drawn for this process.
#[derive(Clone)]
pub struct Identity {
    private: [u8; KEY_LEN],
    public: PublicKey,
    stable: bool,
}

impl Identity {
    /// A fresh key pair for this process.
    pub fn generate() -> Identity {
        let mut private = [0u8; KEY_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut private);
        Identity::from_private(private, false)
    }

    /// The key pair of a stored private key (`stable`: it is kept across runs).
    pub fn from_private(private: [u8; KEY_LEN], stable: bool) -> Identity {
        use snow::resolvers::CryptoResolver;
        let mut dh = snow::resolvers::DefaultResolver
            .resolve_dh(&snow::params::DHChoice::Curve25519)
            .expect("snow resolves X25519");
        dh.set(&private);
        let mut public = [0u8; KEY_LEN];
        public.copy_from_slice(dh.pubkey());
        Identity {
            private,
            public,
            stable,
        }
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    pub fn private(&self) -> &[u8; KEY_LEN] {
        &self.private
    }

    pub fn is_stable(&self) -> bool {
        self.stable
    }
}

/// How a node's links are secured: not at all, or by the keys derived from its secrets and its
/// static key pair.
#[derive(Clone, Default)]
pub enum Security {
    #[default]
    Open,
    /// The first key is the one this node dials with; each is accepted.
    Keyed {
        keys: Arc<[Psk]>,
        identity: Arc<Identity>,
    },
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Security::Open => f.write_str("Open"),
            Security::Keyed { keys, .. } => write!(f, "Keyed({} secrets)", keys.len()),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("secret {index} has {len} bytes; at least {MIN_SECRET_LEN} are needed")]
    TooShort { index: usize, len: usize },
    #[error("{0} secrets given; at most {MAX_SECRETS} are accepted at once")]
    TooMany(usize),
}

impl Security {
    /// No secrets: an open node. Otherwise the first secret is dialed with and all are accepted, and
    /// the node proves a static key drawn for this process (`with_identity` sets a stored one).
    pub fn from_secrets<S: AsRef<[u8]>>(secrets: &[S]) -> Result<Security, SecretError> {
        if secrets.is_empty() {
            return Ok(Security::Open);
        }
        if secrets.len() > MAX_SECRETS {
            return Err(SecretError::TooMany(secrets.len()));
        }
        let mut keys = Vec::with_capacity(secrets.len());
        for (index, secret) in secrets.iter().enumerate() {
            let secret = secret.as_ref();
            if secret.len() < MIN_SECRET_LEN {
                return Err(SecretError::TooShort {
                    index,
                    len: secret.len(),
                });
            }
            let mut hash = Blake2s256::new();
            hash.update(PSK_CONTEXT);
            hash.update(secret);
            keys.push(hash.finalize().into());
        }
        Ok(Security::Keyed {
            keys: keys.into(),
            identity: Arc::new(Identity::generate()),
        })
    }

    /// The same secrets, proving `identity`; an open node has no identity to prove.
    pub fn with_identity(self, identity: Identity) -> Security {
        match self {
            Security::Open => Security::Open,
            Security::Keyed { keys, .. } => Security::Keyed {
                keys,
                identity: Arc::new(identity),
            },
        }
    }

    pub fn is_keyed(&self) -> bool {
        matches!(self, Security::Keyed { .. })
    }

    /// The static key this node proves on keyed links.
    pub fn public_key(&self) -> Option<&PublicKey> {
        match self {
            Security::Open => None,
            Security::Keyed { identity, .. } => Some(identity.public()),
        }
    }

    fn preamble(&self) -> [u8; PREAMBLE_LEN] {
        let mode = if self.is_keyed() {
            MODE_KEYED
        } else {
            MODE_OPEN
        };
        [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], LINK_VERSION, mode]
    }
}

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

fn builder<'a>(psk: &'a Psk, identity: &'a Identity) -> Result<Builder<'a>, HandshakeError> {
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
            } => Some((
                Sealer {
                    state: state.clone(),
                    nonce: 0,
                },
                Opener { state, nonce: 0 },
            )),
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
fn write_message(
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

/// Why a keyed link's stream was refused after the handshake.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record of {0} bytes is shorter than its tag")]
    Short(usize),
    #[error("record failed authentication")]
    Forged,
    #[error("too many records on one link")]
    Exhausted,
}

/// Encrypts the frame stream a keyed link sends.
pub struct Sealer {
    state: Arc<StatelessTransportState>,
    nonce: u64,
}

impl Sealer {
    /// Appends `plain` to `out` as records of at most `MAX_RECORD` bytes each.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        for chunk in plain.chunks(MAX_RECORD_PAYLOAD) {
            let len = chunk.len() + TAG_LEN;
            out.extend_from_slice(&(len as u16).to_be_bytes());
            let at = out.len();
            out.resize(at + len, 0);
            if let Err(e) = self.state.write_message(self.nonce, chunk, &mut out[at..]) {
                out.truncate(at - RECORD_LEN_BYTES);
                return Err(match e {
                    snow::Error::State(_) => RecordError::Exhausted,
                    _ => RecordError::Forged,
                });
            }
            self.nonce += 1;
        }
        Ok(())
    }
}

/// Decrypts the frame stream a keyed link receives.
pub struct Opener {
    state: Arc<StatelessTransportState>,
    nonce: u64,
}

impl Opener {
    /// Decrypts the record at the start of `input` onto the end of `plain`; returns the bytes it took
    /// from `input`, 0 while the record is not whole yet. Nothing is allocated before the length passed
    /// its check, and a record is at most `MAX_RECORD` bytes.
    pub fn open(&mut self, input: &[u8], plain: &mut Vec<u8>) -> Result<usize, RecordError> {
        let Some(prefix) = input.get(..RECORD_LEN_BYTES) else {
            return Ok(0);
        };
        let len = u16::from_be_bytes([prefix[0], prefix[1]]) as usize;
        if len < TAG_LEN {
            return Err(RecordError::Short(len));
        }
        let Some(record) = input.get(RECORD_LEN_BYTES..RECORD_LEN_BYTES + len) else {
            return Ok(0);
        };
        let at = plain.len();
        plain.resize(at + len - TAG_LEN, 0);
        match self
            .state
            .read_message(self.nonce, record, &mut plain[at..])
        {
            Ok(n) => {
                plain.truncate(at + n);
                self.nonce += 1;
                Ok(RECORD_LEN_BYTES + len)
            }
            Err(e) => {
                plain.truncate(at);
                Err(match e {
                    snow::Error::State(_) => RecordError::Exhausted,
                    _ => RecordError::Forged,
                })
            }
        }
    }
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

#[cfg(test)]
mod tests {
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
}
