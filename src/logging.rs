//! The engine's log lines: where they go, at which level, and how many.
//!
//! - One subscriber for the process, installed at the first `peerOpen`: its level is
//!   `PEER_BUCKETS_LOG` (an `EnvFilter` directive such as `debug` or `peer_buckets_engine=info`), `warn`
//!   when unset, so warnings (`warning.rs`) and refused handshakes are heard by default.
//! - A line belongs to the peer whose runtime thread emitted it: each peer's runtime marks its threads
//!   with that peer's [`Sink`] (`on_thread_start`). A peer opened with a `logger` hands its lines to
//!   JavaScript (a `log` event, which `lib/peer.js` passes to `logger.warn/info/debug/error`); any other
//!   line goes to stderr, plain text unless stderr is a terminal (no colour codes in files).
//! - Lines at `warn` and `error` are rate-limited per call site (and per warning code: a flood of one
//!   code never hides another): at most [`PER_WINDOW`] per [`WINDOW`], the next line saying how many
//!   were left out. Lower levels are asked for explicitly and are not limited.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use peer_buckets_engine::Throttle;
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::events::EngineEvent;

/// Lines at `warn` or `error` per call site (and code) and window, at most.
const PER_WINDOW: u32 = 10;
const WINDOW: Duration = Duration::from_secs(10);
/// Lines kept for a logger while its peer starts (before its event stream is up), at most.
const EARLY_KEPT: usize = 64;
/// The level when `PEER_BUCKETS_LOG` is unset.
const DEFAULT_LEVEL: &str = "warn";

/// One peer's destination for its lines.
#[derive(Default)]
pub struct Sink {
    /// The peer's id, once known, to name it on stderr.
    id: OnceLock<String>,
    /// With a JavaScript logger: its event stream once up, and the lines emitted before.
    logger: Option<Mutex<Forward>>,
}

#[derive(Default)]
struct Forward {
    tx: Option<mpsc::UnboundedSender<EngineEvent>>,
    early: Vec<(Level, String)>,
}

impl Sink {
    /// A sink writing to stderr, or (`to_logger`) to the JavaScript logger once `connect`ed.
    pub fn new(to_logger: bool) -> Arc<Sink> {
        Arc::new(Sink {
            id: OnceLock::new(),
            logger: to_logger.then(|| Mutex::new(Forward::default())),
        })
    }

    pub fn set_id(&self, id: &str) {
        let _ = self.id.set(id.to_string());
    }

    /// From now on, lines go to `tx` (the peer's event stream), those kept while starting first.
    pub fn connect(&self, tx: mpsc::UnboundedSender<EngineEvent>) {
        if let Some(logger) = &self.logger {
            let mut f = logger.lock();
            for (level, line) in f.early.drain(..) {
                let _ = tx.send(EngineEvent::Log(level, line));
            }
            f.tx = Some(tx);
        }
    }

    /// Marks the calling thread (a runtime thread of this sink's peer) as this peer's.
    pub fn enter(self: &Arc<Sink>) {
        CURRENT.with(|c| *c.borrow_mut() = Some(self.clone()));
    }

    fn write(&self, level: Level, line: String) {
        if let Some(logger) = &self.logger {
            let mut f = logger.lock();
            match &f.tx {
                Some(tx) => {
                    let _ = tx.send(EngineEvent::Log(level, line));
                }
                None if f.early.len() < EARLY_KEPT => f.early.push((level, line)),
                None => {}
            }
            return;
        }
        stderr(level, self.id.get().map(String::as_str), &line);
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Sink>>> = const { RefCell::new(None) };
}

/// Installs the process's subscriber (once; later calls do nothing).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let directive =
            std::env::var("PEER_BUCKETS_LOG").unwrap_or_else(|_| DEFAULT_LEVEL.to_string());
        let filter =
            EnvFilter::try_new(&directive).unwrap_or_else(|_| EnvFilter::new(DEFAULT_LEVEL));
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(Router::default())
            .try_init();
    });
}

/// Sends each line to its peer's sink (stderr without one), rate-limited as the module notes say.
#[derive(Default)]
struct Router {
    windows: Mutex<HashMap<(usize, String), Throttle>>,
}

impl Router {
    /// Whether a line of this key may go now, and how many of it were left out before it.
    fn admit(&self, key: (usize, String)) -> Option<u64> {
        let mut windows = self.windows.lock();
        windows
            .entry(key)
            .or_insert_with(|| Throttle::new(PER_WINDOW, WINDOW))
            .admit()
    }
}

impl<S: Subscriber> Layer<S> for Router {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        let mut line = Line::default();
        event.record(&mut line);
        let mut text = line.message;
        if level <= Level::WARN {
            let site = event.metadata() as *const _ as usize;
            let code = line.code.clone().unwrap_or_default();
            match self.admit((site, code)) {
                None => return,
                Some(0) => {}
                Some(n) => {
                    let _ = write!(text, " (and {n} more like it not logged)");
                }
            }
        }
        text.push_str(&line.fields);
        match CURRENT.with(|c| c.borrow().clone()) {
            Some(sink) => sink.write(level, text),
            None => stderr(level, None, &text),
        }
    }
}

/// An event's message and its other fields as ` key=value` (fields naming nothing, `-`, left out).
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
    code: Option<String>,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl Line {
    fn record(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            _ if value == "-" => {}
            name => {
                if name == "code" {
                    self.code = Some(value.clone());
                }
                let _ = write!(self.fields, " {name}={value}");
            }
        }
    }
}

/// `2026-01-31T12:00:00.000Z WARN peer-buckets[id]: line`, the level coloured only on a terminal.
fn stderr(level: Level, id: Option<&str>, line: &str) {
    static TTY: OnceLock<bool> = OnceLock::new();
    let tty = *TTY.get_or_init(|| std::io::stderr().is_terminal());
    let level_text = if tty {
        let colour = match level {
            Level::ERROR => "31",
            Level::WARN => "33",
            Level::INFO => "32",
            _ => "2",
        };
        format!("\x1b[{colour}m{level:>5}\x1b[0m")
    } else {
        format!("{level:>5}")
    };
    let who = id.map_or_else(String::new, |id| format!("[{id}]"));
    let _ = writeln!(
        std::io::stderr().lock(),
        "{} {level_text} peer-buckets{who}: {line}",
        utc_now()
    );
}

/// Now as an ISO 8601 UTC timestamp with milliseconds.
fn utc_now() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}
