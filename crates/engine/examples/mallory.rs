//! A member that breaks the protocol on purpose, for the chaos run (`chaos/run.js --hostile`): it
//! dials one peer, speaks as the member `mallory` (with the cluster's secret when there is one), and
//! sends one hostile frame. It prints one JSON line: the attack, whether the peer closed the link and
//! how soon.
//!
//!   mallory --address 127.0.0.1:7000 --attack own-future --bucket chaos [--secret S] [--seed N]
//!
//! Each attack is one of issue 18's behaviours a member must not get away with; every one is a
//! protocol error, so the victim must close the link:
//! - `own-future`: an `Ops` batch covering the victim's own origin up to 2^64-1 (it would make the
//!   victim drop its own writes, or refuse new ones, if taken);
//! - `ack-beyond`: an acknowledgement of 2^64-1 of the victim's writes;
//! - `unasked-fetch`, `unasked-held`, `unasked-pull`: replies to questions nobody asked (a fetch reply,
//!   a held reply, and an `Ops` batch of a third origin, which only a pull may carry);
//! - `garbage`: a frame of random bytes;
//! - `future-stamp`: a write of mallory's own, in bucket `mallory`, stamped an hour ahead: past twice
//!   any `maxClockSkew` the chaos run uses, where no member within the skew can have stamped it (a
//!   frame merely past the ceiling is dropped and the link kept; this one would be a dot no peer
//!   ever takes, holding up tombstone collection).
//!
//! Nothing here is part of the package; it only serves to prove that honest peers keep their
//! promises while a member misbehaves.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use peer_buckets_engine::connection::{self, FrameReader, FrameWriter};
use peer_buckets_engine::value;
use peer_buckets_engine::wire::{self, ContextPart, Hello, Message, OpsBatch, WireWrite, WriteOp};
use peer_buckets_engine::{Hlc, ReplicaId, Security, Seq, SeqRanges};
use rand::{Rng, SeedableRng};

const ATTACKS: [&str; 7] = [
    "own-future",
    "ack-beyond",
    "unasked-fetch",
    "unasked-held",
    "unasked-pull",
    "garbage",
    "future-stamp",
];

struct Args {
    address: String,
    attack: String,
    bucket: String,
    secret: Option<String>,
    seed: u64,
}

fn usage(error: &str) -> ! {
    eprintln!("mallory: {error}");
    eprintln!(
        "usage: mallory --address HOST:PORT --attack {} --bucket NAME [--secret S] [--seed N]",
        ATTACKS.join("|")
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = std::env::args().skip(1);
    let (mut address, mut attack, mut bucket, mut secret, mut seed) = (None, None, None, None, 0);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--address" => address = Some(value()),
            "--attack" => attack = Some(value()),
            "--bucket" => bucket = Some(value()),
            "--secret" => secret = Some(value()),
            "--seed" => {
                seed = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--seed must be an integer"))
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let attack = attack.unwrap_or_else(|| usage("--attack is required"));
    if !ATTACKS.contains(&attack.as_str()) {
        usage(&format!("unknown attack {attack}"));
    }
    Args {
        address: address.unwrap_or_else(|| usage("--address is required")),
        attack,
        bucket: bucket.unwrap_or_else(|| usage("--bucket is required")),
        secret,
        seed,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Frames `msgs` and sends them as one write.
async fn send(writer: &mut FrameWriter, msgs: &[Message]) -> Result<(), String> {
    let mut out = Vec::new();
    for m in msgs {
        wire::encode_frame(m, &mut out).map_err(|e| e.to_string())?;
    }
    writer.send(&out).await.map_err(|e| e.to_string())
}

/// Reads until the victim's hello: the replica it speaks as.
async fn victim_of(reader: &mut FrameReader) -> Result<ReplicaId, String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let (msg, _) = reader
            .read(Duration::from_secs(5))
            .await
            .map_err(|e| format!("before the victim's hello: {e}"))?;
        if let Message::Hello(h) = msg {
            return Ok(h.replica);
        }
    }
    Err("no hello from the victim".into())
}

fn batch(bucket: &str, origin: ReplicaId, covered: SeqRanges, writes: Vec<WireWrite>) -> Message {
    Message::Ops(OpsBatch {
        bucket: bucket.into(),
        origin,
        covered,
        writes,
        superseders: vec![],
        superseded: vec![],
    })
}

/// The frames of `attack` against `victim`, as bytes ready to send.
fn attack_frames(
    attack: &str,
    bucket: &str,
    me: &ReplicaId,
    victim: &ReplicaId,
    rng: &mut impl Rng,
) -> Result<Vec<u8>, String> {
    let ghost = ReplicaId {
        node: "ghost".into(),
        incarnation: 1,
    };
    let msg = match attack {
        "own-future" => batch(
            bucket,
            victim.clone(),
            SeqRanges::from_ranges([(Seq::from(1), Seq::from(u64::MAX))]),
            vec![],
        ),
        "ack-beyond" => Message::Ack {
            bucket: bucket.into(),
            upto: Seq::MAX,
        },
        "unasked-fetch" => Message::FetchReply {
            id: rng.gen(),
            bucket: bucket.into(),
            origin: None,
            writes: vec![],
            done: true,
        },
        "unasked-held" => Message::HeldReply {
            bucket: bucket.into(),
            origin: ghost,
            covered: SeqRanges::up_to(Seq::from(5)),
            held: SeqRanges::new(),
            superseders: vec![],
            last: true,
        },
        "unasked-pull" => batch(bucket, ghost, SeqRanges::up_to(Seq::from(5)), vec![]),
        "future-stamp" => batch(
            "mallory",
            me.clone(),
            SeqRanges::up_to(Seq::from(1)),
            vec![WireWrite {
                key: "ahead".into(),
                hlc: Hlc::from_parts(now_ms() + 3_600_000, 0),
                seq: Seq::from(1),
                op: WriteOp::Set {
                    value: value::encode_json("\"an hour ahead\""),
                    expires_ms: None,
                },
            }],
        ),
        "garbage" => {
            let body: Vec<u8> = (0..rng.gen_range(1..512)).map(|_| rng.gen()).collect();
            let mut out = Vec::with_capacity(wire::LEN_BYTES + 1 + body.len());
            out.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
            out.push(wire::PROTOCOL_VERSION);
            out.extend_from_slice(&body);
            return Ok(out);
        }
        other => return Err(format!("unknown attack {other}")),
    };
    let mut out = Vec::new();
    wire::encode_frame(&msg, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Runs the attack; `Ok(Some(ms))` when the victim closed the link that long after it.
async fn run(args: &Args) -> Result<Option<u64>, String> {
    let security = match &args.secret {
        Some(s) => Security::from_secrets(&[s.as_bytes()]).map_err(|e| e.to_string())?,
        None => Security::Open,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let stream = tokio::net::TcpStream::connect(&args.address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut reader, mut writer) =
        connection::open(Box::new(stream), &security, true, None::<fn()>)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    let me = ReplicaId {
        node: "mallory".into(),
        incarnation: (now_ms() << 16) | rng.gen::<u16>() as u64,
    };
    send(
        &mut writer,
        &[
            Message::Hello(Hello {
                replica: me.clone(),
                // Nobody listens there: peers that learn it must back off, not hammer it.
                listen_port: 1,
                listen_host: Some("127.0.0.1".into()),
                wall_ms: now_ms(),
                members: vec![],
            }),
            Message::Contexts(ContextPart {
                buckets: vec![],
                last: true,
            }),
        ],
    )
    .await?;
    let victim = victim_of(&mut reader).await?;
    let frames = attack_frames(&args.attack, &args.bucket, &me, &victim, &mut rng)?;
    writer.send(&frames).await.map_err(|e| e.to_string())?;
    let sent = Instant::now();
    // Every attack is a protocol error, which closes the link at once.
    let watch = Duration::from_secs(5);
    let deadline = sent + watch;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        // The reader's own silence bound lies past the watch, so only a close ends the read early.
        match tokio::time::timeout(left, reader.read(watch * 2)).await {
            Err(_) => {
                // Kept, as it should be: mallory leaves as a member does, or the victim would wait
                // for it until the member timeout before collecting tombstones.
                let _ = send(&mut writer, &[Message::Leave]).await;
                return Ok(None);
            }
            Ok(Ok(_)) => continue,
            Ok(Err(_)) => return Ok(Some(sent.elapsed().as_millis() as u64)),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse_args();
    let expect_close = true;
    let line = match run(&args).await {
        Ok(closed) => format!(
            "{{\"attack\":\"{}\",\"address\":\"{}\",\"expectClose\":{},\"closed\":{},\"ms\":{}}}",
            args.attack,
            args.address,
            expect_close,
            closed.is_some(),
            closed.map_or("null".to_string(), |ms| ms.to_string()),
        ),
        Err(e) => format!(
            "{{\"attack\":\"{}\",\"address\":\"{}\",\"error\":{:?}}}",
            args.attack, args.address, e
        ),
    };
    println!("{line}");
}
