//! The hash maps and sets of the engine. Production hashes with a per-process random seed (iteration
//! order differs from run to run); under the `sim` feature the seed is fixed, so a simulation run
//! iterates members, buckets, keys and acks in the same order every time and a seed replays exactly.

#[cfg(not(feature = "sim"))]
pub type DefaultHashBuilder = hashbrown::DefaultHashBuilder;
#[cfg(feature = "sim")]
pub type DefaultHashBuilder = foldhash::fast::FixedState;

pub type HashMap<K, V> = hashbrown::HashMap<K, V, DefaultHashBuilder>;
pub type HashSet<K> = hashbrown::HashSet<K, DefaultHashBuilder>;
