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

mod handshake;
mod records;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use blake2::{Blake2s256, Digest};

#[cfg(test)]
pub use handshake::{handshake_in_memory, Outcome};
pub use handshake::{Handshake, HandshakeError, Proven};
pub use records::{Opener, RecordError, Sealer};

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
