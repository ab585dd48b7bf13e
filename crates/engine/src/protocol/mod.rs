//! What replicas say to each other, still without I/O: the versioned messages and their frames
//! (`wire`), the per-link replication state machine (`sync`) and when tombstones may be dropped
//! (`collect`). A link (`node::link`) moves these frames; the tests drive them directly.

pub mod collect;
pub mod sync;
pub mod wire;
