//! Warnings: what an operator must hear about even though the node keeps serving (a peer with another
//! secret, a clock too far off, another wire version, two processes with one id, a failing disk).
//!
//! Every part of a node reports through one sink, `Warnings`, which does three things with each one:
//! counts it by code (always, however many arrive: `stats().warnings`, the metrics), logs it, and hands
//! it to the subscriber (the JavaScript `'warning'` event). Logging and handing over are rate-limited
//! per code, so a flood of one kind (a scanner with a wrong secret) neither floods the log nor grows the
//! queue to JavaScript, and never hides a warning of another kind; the next line logged for a code says
//! how many of it were left out. Warnings emitted before anyone subscribed (while the node starts) wait,
//! a bounded few, for the first subscriber.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::report::{Handoff, Throttle};

/// Warnings of one code logged and handed over per window at most; the rest are counted only.
const PER_WINDOW: u32 = 10;
const WINDOW: Duration = Duration::from_secs(10);
/// Warnings kept for a subscriber that has not come yet.
const EARLY_KEPT: usize = 64;

/// What a warning is about; `as_str` is the `code` JavaScript sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WarningCode {
    /// A handshake failed on the secret: the other end holds another one, or only one end has one.
    Auth,
    /// A link refused because a clock is too far off.
    Skew,
    /// The other end speaks another link or wire protocol version.
    Version,
    /// Another process uses this node's id, or two processes use one id.
    IdConflict,
    /// The data directory could not be written.
    Disk,
    /// A link closed because the other end broke the protocol.
    Protocol,
    /// A connection refused because it would be unencrypted off the loopback interface.
    Insecure,
    /// A seed that has not answered for a long time.
    Unreachable,
    /// What a peer sent went past a limit of this peer (`maxBuckets`) and was ignored.
    Limit,
    /// A peer id none of whose links was up came back with another static key (`keys`).
    IdKey,
    /// This replica and a linked peer stored different registers under equal contexts, and a
    /// repair from that peer changed what this replica stores (`sync::digest`).
    Diverged,
}

impl WarningCode {
    /// Every code, in the order counts are reported.
    pub const ALL: [WarningCode; 11] = [
        WarningCode::Auth,
        WarningCode::Skew,
        WarningCode::Version,
        WarningCode::IdConflict,
        WarningCode::Disk,
        WarningCode::Protocol,
        WarningCode::Insecure,
        WarningCode::Unreachable,
        WarningCode::Limit,
        WarningCode::IdKey,
        WarningCode::Diverged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WarningCode::Auth => "EAUTH",
            WarningCode::Skew => "ESKEW",
            WarningCode::Version => "EVERSION",
            WarningCode::IdConflict => "EIDCONFLICT",
            WarningCode::Disk => "EDISK",
            WarningCode::Protocol => "EPROTOCOL",
            WarningCode::Insecure => "EINSECURE",
            WarningCode::Unreachable => "EUNREACHABLE",
            WarningCode::Limit => "ELIMIT",
            WarningCode::IdKey => "EIDKEY",
            WarningCode::Diverged => "EDIVERGED",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for WarningCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One warning: what happened, and when known, which peer (its id) and which address it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub code: WarningCode,
    pub message: String,
    pub peer: Option<String>,
    pub address: Option<String>,
}

impl Warning {
    pub fn new(code: WarningCode, message: impl Into<String>) -> Warning {
        Warning {
            code,
            message: message.into(),
            peer: None,
            address: None,
        }
    }

    pub fn peer(mut self, peer: impl Into<String>) -> Warning {
        self.peer = Some(peer.into());
        self
    }

    pub fn address(mut self, address: impl Into<String>) -> Warning {
        self.address = Some(address.into());
        self
    }
}

/// A node's warning sink; see the module notes.
pub struct Warnings {
    counts: [AtomicU64; WarningCode::ALL.len()],
    windows: Mutex<[Throttle; WarningCode::ALL.len()]>,
    delivery: Mutex<Handoff<Warning, EARLY_KEPT>>,
}

impl Default for Warnings {
    fn default() -> Self {
        Warnings::new()
    }
}

impl Warnings {
    pub fn new() -> Warnings {
        Warnings {
            counts: Default::default(),
            windows: Mutex::new(std::array::from_fn(|_| Throttle::new(PER_WINDOW, WINDOW))),
            delivery: Mutex::default(),
        }
    }

    /// Counts `w`, and unless its code's window is spent, logs it and hands it to the subscriber.
    pub fn emit(&self, w: Warning) {
        let i = w.code.index();
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let Some(left_out) = self.windows.lock()[i].admit() else {
            return;
        };
        let peer = w.peer.as_deref().unwrap_or("-");
        let address = w.address.as_deref().unwrap_or("-");
        if left_out > 0 {
            tracing::warn!(code = %w.code, %peer, %address, left_out, "{} (and {left_out} more of this code not logged)", w.message);
        } else {
            tracing::warn!(code = %w.code, %peer, %address, "{}", w.message);
        }
        self.delivery.lock().send(w);
    }

    /// Where warnings are handed from now on (one receiver at a time); those emitted before the first
    /// subscriber arrive first.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Warning> {
        self.delivery.lock().subscribe()
    }

    /// How many warnings of `code` were emitted so far (left-out ones included).
    pub fn count(&self, code: WarningCode) -> u64 {
        self.counts[code.index()].load(Ordering::Relaxed)
    }

    /// Every code with its count, zeros included, in `WarningCode::ALL` order.
    pub fn counts(&self) -> Vec<(WarningCode, u64)> {
        WarningCode::ALL
            .iter()
            .map(|&c| (c, self.count(c)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_warning_is_counted_and_a_flood_of_one_code_hides_no_other() {
        let sink = Warnings::new();
        let mut rx = sink.subscribe();
        for i in 0..100 {
            sink.emit(
                Warning::new(WarningCode::Auth, format!("attempt {i}")).address("10.0.0.9:1"),
            );
        }
        sink.emit(Warning::new(WarningCode::IdConflict, "two of me").peer("a"));
        assert_eq!(sink.count(WarningCode::Auth), 100);
        assert_eq!(sink.count(WarningCode::IdConflict), 1);
        let mut handed = Vec::new();
        while let Ok(w) = rx.try_recv() {
            handed.push(w);
        }
        let auth = handed
            .iter()
            .filter(|w| w.code == WarningCode::Auth)
            .count();
        assert_eq!(auth, PER_WINDOW as usize);
        let last = handed.last().unwrap();
        assert_eq!(
            (last.code, last.peer.as_deref(), last.address.as_deref()),
            (WarningCode::IdConflict, Some("a"), None)
        );
    }

    #[test]
    fn warnings_before_the_first_subscriber_wait_for_it_a_bounded_few() {
        let sink = Warnings::new();
        for i in 0..(EARLY_KEPT + 5) {
            // Different codes' windows are separate: spread them so none is left out by the rate limit.
            let code = WarningCode::ALL[i % WarningCode::ALL.len()];
            sink.emit(Warning::new(code, format!("{i}")));
        }
        let mut rx = sink.subscribe();
        let mut got = Vec::new();
        while let Ok(w) = rx.try_recv() {
            got.push(w.message);
        }
        assert_eq!(got.len(), EARLY_KEPT);
        assert_eq!(got.last().map(String::as_str), Some("68"));
    }

    #[test]
    fn codes_are_the_documented_strings() {
        let codes: Vec<&str> = WarningCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            codes,
            [
                "EAUTH",
                "ESKEW",
                "EVERSION",
                "EIDCONFLICT",
                "EDISK",
                "EPROTOCOL",
                "EINSECURE",
                "EUNREACHABLE",
                "ELIMIT",
                "EIDKEY",
                "EDIVERGED"
            ]
        );
    }
}
