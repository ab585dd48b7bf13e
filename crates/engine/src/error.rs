//! Errors the engine reports to its callers.

use std::io;

use crate::net::secure::{key_to_hex, HandshakeError, PublicKey, RecordError, SecretError};
use crate::protocol::wire::WireError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: io::Error },
    #[error("invalid address {0:?}: expected host:port or a port number")]
    BadAddress(String),
    #[error("the peer is closed")]
    Closed,
    #[error("peer {0} is not connected")]
    NotConnected(String),
    #[error("the data directory {0} is in use by another peer (in this process or another)")]
    DataDirInUse(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("invalid secret: {0}")]
    Secret(#[from] SecretError),
}

/// Why a key may not speak as an id (`keys::KeyBook::admit`).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeyRefused {
    #[error("the id is pinned to the key {}", key_to_hex(.0))]
    Pinned(PublicKey),
    #[error("the id is linked with the key {}", key_to_hex(.0))]
    InUse(PublicKey),
}

/// Why a link was closed; logged with the remote address.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("wire: {0}")]
    Wire(#[from] WireError),
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("encrypted stream: {0}")]
    Record(#[from] RecordError),
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    #[error("handshake slot taken by a newer connection")]
    Evicted,
    #[error("no frame for {0:?}")]
    Silent(std::time::Duration),
    #[error("the other side read nothing for {0:?}")]
    Stalled(std::time::Duration),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("the peer says it is {id}, but {why}")]
    KeyRefused { id: String, why: KeyRefused },
    #[error("dialed myself")]
    SelfDial,
    #[error("a link to this peer already exists")]
    Duplicate,
    #[error("the other side's clock is {ahead_ms} ms ahead of ours, past the allowed skew")]
    ClockSkew { ahead_ms: u64 },
    #[error("closed by the other side")]
    Remote,
    #[error("shutting down")]
    Shutdown,
}
