//! The records of a keyed link once its handshake is done: the frame stream cut into Noise transport
//! messages of at most `MAX_RECORD` bytes, each with its length and tag. Each direction counts its
//! own nonces from 0, so a record replayed, dropped or reordered fails authentication, and nothing is
//! allocated for a record before its length passed its check.

use std::sync::Arc;

use snow::StatelessTransportState;

use super::{MAX_RECORD_PAYLOAD, RECORD_LEN_BYTES, TAG_LEN};

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
    pub(super) fn new(state: Arc<StatelessTransportState>) -> Sealer {
        Sealer { state, nonce: 0 }
    }

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
    pub(super) fn new(state: Arc<StatelessTransportState>) -> Opener {
        Opener { state, nonce: 0 }
    }

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
