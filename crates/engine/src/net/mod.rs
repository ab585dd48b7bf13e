//! Bytes between peers: the transport seam (real or simulated TCP, name resolution), frames over a
//! stream, the Noise handshake and encrypted records, which key may speak for which id, defences
//! against hostile connections, and membership (who the peers are, one link per pair, dialing).
//! Nothing here applies a write; links hand frames to `protocol::sync`.

pub mod connection;
pub mod guard;
pub mod keys;
pub mod membership;
pub mod secure;
pub mod transport;
