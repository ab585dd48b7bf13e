//! Bytes of resident memory per key in a bucket replica, engine only (no Node): writes N session-like
//! values and reports the growth of RSS. `cargo run --release --example memory_per_key -- 1000000`

use std::sync::Arc;

use peer_buckets_engine::value;
use peer_buckets_engine::Bucket;
use peer_buckets_engine::Lifetime;
use peer_buckets_engine::Local;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let local = Local::new("mem".into(), 1, Arc::new(Default::default()), 60_000);
    let bucket: Arc<Bucket> = local.bucket("sessions");
    let value = value::encode_json(&format!(
        "{{\"user\":\"user-00000\",\"roles\":[\"reader\",\"writer\"],\"csrf\":\"{}\",\"created\":1764133200000,\"ip\":\"10.1.2.3\"}}",
        "x".repeat(90)
    ));
    let before = rss_bytes();
    for i in 0..n {
        bucket.write(format!("sess:{i}"), Some(value.clone()), Lifetime::Forever);
    }
    let after = rss_bytes();
    println!(
        "{n} keys, value {} bytes: RSS +{:.1} MiB = {:.0} bytes/key",
        value.len() - 1,
        (after - before) as f64 / 1048576.0,
        (after - before) as f64 / n as f64
    );
}
