//! The flusher: drains every bucket's journal onto the disk, in strict mode as soon as a write rings
//! (appended to the log and synced), in relaxed mode once per interval (a redb commit), and
//! checkpoints the log into redb when due.
//!
//! It runs on its own OS thread when the file system's calls block (the real disk), or as a task of
//! the current tokio runtime when they do not (a simulated disk), so a simulation drives it with its
//! own clock; both run the same `Rounds`.
//!
//! Invariants: a flush generation is reported flushed only after its drain was stored and synced;
//! when a flush fails, strict writes waiting on it end with a disk error (what they wrote stays owed
//! and is retried by every later round), each failure is an `EDISK` warning (counted, logged and
//! handed to JavaScript by `Warnings`, which rate-limits), and the first round that succeeds again
//! logs that the disk recovered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Disk, Durability};
use crate::protocol::sync::{Local, Ring};
use crate::warning::{Warning, WarningCode, Warnings};

/// How often a strict flusher looks for work without a ring (and retries what is owed).
const STRICT_IDLE: Duration = Duration::from_millis(200);

/// Wakes the flusher; ringing an already rung bell costs one atomic swap.
#[derive(Default)]
pub struct Doorbell {
    rung: AtomicBool,
    lock: Mutex<()>,
    thread: Condvar,
    task: Notify,
}

impl Ring for Doorbell {
    fn ring(&self) {
        if !self.rung.swap(true, Ordering::AcqRel) {
            drop(self.lock.lock());
            self.thread.notify_one();
            self.task.notify_one();
        }
    }
}

impl Doorbell {
    /// Waits for a ring up to `timeout`; returns whether it rang.
    fn wait_blocking(&self, timeout: Duration) -> bool {
        let mut guard = self.lock.lock();
        if !self.rung.swap(false, Ordering::AcqRel) {
            self.thread.wait_for(&mut guard, timeout);
            return self.rung.swap(false, Ordering::AcqRel);
        }
        true
    }

    async fn wait(&self, timeout: Duration) -> bool {
        if !self.rung.swap(false, Ordering::AcqRel) {
            let _ = tokio::time::timeout(timeout, self.task.notified()).await;
            return self.rung.swap(false, Ordering::AcqRel);
        }
        true
    }
}

/// The flusher's work, whatever runs it.
struct Rounds {
    disk: Disk,
    local: Arc<Local>,
    strict: bool,
    interval: Duration,
    warnings: Arc<Warnings>,
    /// Since when the disk has been failing.
    failing: Option<Instant>,
}

impl Rounds {
    /// How long to wait for a ring.
    fn wait(&self) -> Duration {
        if self.strict {
            STRICT_IDLE
        } else {
            self.interval
        }
    }

    /// Relaxed: a ring only says there is work; the interval sets the pace.
    fn paced(&self, rang: bool, stopping: bool) -> bool {
        !self.strict && rang && !stopping
    }

    /// One flush (and a checkpoint when due); the last one also records a clean stop. True when the
    /// flush, the checkpoint and (stopping) the clean stop were all written.
    fn round(&mut self, stopping: bool) -> bool {
        // Writes that read a generation up to `gen` were journaled before this drain.
        let gen = self.local.acks.next_flush_generation();
        let flushed = if self.strict {
            self.disk.log(&self.local)
        } else {
            self.disk.flush(&self.local)
        };
        let checkpointed = self.disk.checkpoint(stopping);
        match &flushed {
            Ok(_) => self.local.acks.on_flushed(gen),
            Err(_) => self.local.acks.on_flush_failed(gen),
        }
        let mut stored = match flushed.and(checkpointed) {
            Ok(()) => {
                self.recovered();
                true
            }
            Err(e) => {
                self.failed(e);
                false
            }
        };
        if stopping {
            if let Err(e) = self.disk.mark_clean() {
                tracing::error!(error = %e, dir = %self.disk.dir().display(), "cannot record the clean stop");
                stored = false;
            }
        }
        stored
    }

    fn failed(&mut self, e: crate::error::Error) {
        self.failing.get_or_insert_with(Instant::now);
        self.warnings.emit(Warning::new(
            WarningCode::Disk,
            format!(
                "the data directory {} cannot be written ({e}); what is not stored is kept and retried, strict writes fail with EDISK",
                self.disk.dir().display()
            ),
        ));
    }

    fn recovered(&mut self) {
        if let Some(since) = self.failing.take() {
            tracing::warn!(dir = %self.disk.dir().display(), failing_for = ?since.elapsed(), "the data directory is written again");
        }
    }
}

/// The flusher's loop; it ends with whether its last round (the stop) stored everything.
enum Runner {
    Thread(std::thread::JoinHandle<bool>),
    Task(tokio::task::JoinHandle<bool>),
}

/// The running flusher.
pub struct Flusher {
    doorbell: Arc<Doorbell>,
    stop: Arc<AtomicBool>,
    runner: Option<Runner>,
}

impl Flusher {
    /// Starts flushing `local`'s buckets to `disk` (a task of the current tokio runtime when the disk
    /// does not block), reporting failures to `warnings`. Returns the doorbell every change rings.
    pub fn start(
        disk: Disk,
        local: Arc<Local>,
        durability: Durability,
        interval: Duration,
        warnings: Arc<Warnings>,
    ) -> (Flusher, Arc<Doorbell>) {
        let doorbell = Arc::new(Doorbell::default());
        let stop = Arc::new(AtomicBool::new(false));
        let on_thread = disk.fs.blocks();
        let mut rounds = Rounds {
            disk,
            local,
            strict: durability == Durability::Strict,
            interval,
            warnings,
            failing: None,
        };
        let (bell, stopping) = (doorbell.clone(), stop.clone());
        let runner = if on_thread {
            let thread = std::thread::Builder::new()
                .name("peer-buckets-flush".into())
                .spawn(move || loop {
                    let rang = bell.wait_blocking(rounds.wait());
                    let stopping = stopping.load(Ordering::Acquire);
                    if rounds.paced(rang, stopping) {
                        std::thread::sleep(rounds.interval);
                    }
                    let stored = rounds.round(stopping);
                    if stopping {
                        break stored;
                    }
                })
                .expect("spawn the flusher thread");
            Runner::Thread(thread)
        } else {
            Runner::Task(tokio::spawn(async move {
                loop {
                    let rang = bell.wait(rounds.wait()).await;
                    let stopping = stopping.load(Ordering::Acquire);
                    if rounds.paced(rang, stopping) {
                        tokio::time::sleep(rounds.interval).await;
                    }
                    let stored = rounds.round(stopping);
                    if stopping {
                        break stored;
                    }
                }
            }))
        };
        (
            Flusher {
                doorbell: doorbell.clone(),
                stop,
                runner: Some(runner),
            },
            doorbell,
        )
    }

    /// Flushes what is left, records the clean stop and waits for the flusher to end. False when the
    /// data directory did not take everything (writes stay owed; the stop is not clean).
    pub async fn close(mut self) -> bool {
        self.stop.store(true, Ordering::Release);
        self.doorbell.ring();
        match self.runner.take() {
            Some(Runner::Thread(t)) => tokio::task::spawn_blocking(move || t.join())
                .await
                .is_ok_and(|joined| joined.unwrap_or(false)),
            Some(Runner::Task(t)) => t.await.unwrap_or(false),
            None => true,
        }
    }
}

impl Drop for Flusher {
    /// Without `close`: a thread still flushes what is left and is waited for; a task is told to stop
    /// and finishes on its runtime, if that still runs.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.doorbell.ring();
        if let Some(Runner::Thread(t)) = self.runner.take() {
            let _ = t.join();
        }
    }
}
