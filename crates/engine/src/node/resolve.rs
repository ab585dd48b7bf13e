//! Seeds given by name: a `peers` entry such as `auth:7070` (a Compose service with replicas, a
//! Kubernetes headless Service) resolves to several addresses, each dialed as a seed, and is resolved
//! again every `Config::resolve_every` so instances started later are found and gone ones stop being
//! dialed.
//!
//! Invariants:
//! - Resolution runs on the node's runtime (the system resolver on tokio's blocking pool), never on the
//!   caller's thread, and never delays the node's start: the first lookup runs in the watcher task.
//! - A failed or empty lookup keeps the addresses of the last one that answered: a DNS hiccup does not
//!   stop dialing peers that are still there. A name that has never resolved counts as one seed not
//!   met yet (`Members::cluster_size`), so a peer whose name does not resolve never meets `'majority'`
//!   alone.
//! - An address that leaves the name's answer stops being a seed; its dialer goes on only while a
//!   member is listed there (as for any learned address), so the member timeout still applies.
//! - A name that has not resolved for `Config::unreachable_after` is reported once (`EUNREACHABLE`)
//!   until it resolves again.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;

use crate::node::shared::Shared;
use crate::warning::{Warning, WarningCode};

/// Whether a seed is an address as it is (`ip:port`, `[ipv6]:port` or a bare port) rather than a name
/// to resolve.
pub fn is_literal(seed: &str) -> bool {
    seed.parse::<SocketAddr>().is_ok() || seed.parse::<u16>().is_ok()
}

/// Starts the task that resolves seed `name` now and every `resolve_every`, dialing each address found.
pub fn watch(shared: &Arc<Shared>, name: String) {
    let s = shared.clone();
    shared.spawn(async move {
        let mut shutdown = s.shutdown.clone();
        let mut unresolved_since = Instant::now();
        let mut reported = false;
        loop {
            if s.is_shutting_down() {
                break;
            }
            let found =
                tokio::time::timeout(s.config.resolve_every, s.config.resolver.resolve(&name))
                    .await
                    .unwrap_or_else(|_| {
                        Err(io::Error::new(io::ErrorKind::TimedOut, "lookup timed out"))
                    });
            match found {
                Ok(addresses) if !addresses.is_empty() => {
                    let addresses: Vec<String> =
                        addresses.iter().map(SocketAddr::to_string).collect();
                    tracing::debug!(%name, ?addresses, "seed name resolved");
                    s.members.set_resolved(&name, addresses.clone());
                    for address in addresses {
                        crate::net::membership::dial(&s, address, false);
                    }
                    unresolved_since = Instant::now();
                    reported = false;
                }
                other => {
                    let why = match other {
                        Ok(_) => "no address".to_string(),
                        Err(e) => e.to_string(),
                    };
                    tracing::debug!(%name, error = %why, "seed name did not resolve");
                    if !reported && unresolved_since.elapsed() >= s.config.unreachable_after {
                        reported = true;
                        s.warnings.emit(
                            Warning::new(
                                WarningCode::Unreachable,
                                format!(
                                    "the seed {name} has not resolved for {} s ({why}); the \
                                     addresses it last resolved to, if any, are still dialed",
                                    unresolved_since.elapsed().as_secs()
                                ),
                            )
                            .address(name.clone()),
                        );
                    }
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(s.config.resolve_every) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_literal_and_host_names_are_not() {
        for literal in ["127.0.0.1:7070", "[::1]:7070", "7070"] {
            assert!(is_literal(literal), "{literal}");
        }
        for name in [
            "localhost:7070",
            "auth:7070",
            "auth.default.svc.cluster.local:7070",
        ] {
            assert!(!is_literal(name), "{name}");
        }
    }
}
