//! The bucket calls that read a bucket a part at a time or without copying it out: `count`, a paged
//! count, paged `scan` and a key's time left. A scan cursor crosses to JavaScript as an opaque string, the decimal
//! position it holds (see `ScanCursor`): the empty string starts a scan and is returned when it is done.

use napi::bindgen_prelude::*;
use napi_derive::napi;
use peer_buckets_engine::ScanCursor;

use crate::contract::{closed, internal, Code, CountPage, Result};
use crate::convert::{ArrayBuilder, RawValue};
use crate::handles::with_bucket;

/// How many live keys are under `prefix`.
#[napi(catch_unwind)]
pub fn bucket_count(bucket: u32, prefix: String) -> Result<u32> {
    with_bucket(bucket, |b| b.count(&prefix) as u32).ok_or_else(closed)
}

/// One page of a count of the live keys under `prefix` from `cursor` on: at most `limit` of them, over
/// the bounded stretch of the table a scan page of `limit` looks at, and the cursor of the next page.
/// Counted in place, as `count` does: the keys never cross to JavaScript.
#[napi(catch_unwind)]
pub fn bucket_count_page(
    bucket: u32,
    prefix: String,
    cursor: String,
    limit: u32,
) -> Result<CountPage> {
    let from = parse_cursor(&cursor).ok_or_else(|| {
        Error::new(
            Code::InvalidArg,
            format!("countAsync(): cursor '{cursor}' is not a cursor a count page returned"),
        )
    })?;
    with_bucket(bucket, |b| {
        let mut count = 0u32;
        let next = b.scan_page(&prefix, from, limit as usize, &mut |_, _| count += 1);
        CountPage {
            count,
            cursor: next.map_or(String::new(), |c| c.position.to_string()),
        }
    })
    .ok_or_else(closed)
}

fn parse_cursor(cursor: &str) -> Option<ScanCursor> {
    if cursor.is_empty() {
        return Some(ScanCursor::default());
    }
    let position = cursor.parse().ok()?;
    Some(ScanCursor { position })
}

/// One page of live entries under `prefix` from `cursor` on, at most `limit`: a flat array of keys
/// (each followed by its value, as in get, when `values`), ending with the next cursor ('' when done).
#[napi(catch_unwind, ts_return_type = "Array<string | Buffer>")]
pub fn bucket_scan(
    env: Env,
    bucket: u32,
    prefix: String,
    cursor: String,
    limit: u32,
    values: bool,
) -> Result<RawValue> {
    let from = parse_cursor(&cursor).ok_or_else(|| {
        Error::new(
            Code::InvalidArg,
            format!("scan(): options.cursor '{cursor}' is not a cursor a scan returned"),
        )
    })?;
    let raw_env = env.raw();
    with_bucket(bucket, |b| {
        let mut items = ArrayBuilder::new(raw_env).map_err(internal)?;
        let mut result = Ok(());
        let next = b.scan_page(&prefix, from, limit as usize, &mut |k, stored| {
            if result.is_ok() {
                result = items.push_str(k).and_then(|_| {
                    if values {
                        items.push(RawValue::from_stored(raw_env, stored)?)
                    } else {
                        Ok(())
                    }
                });
            }
        });
        result.map_err(internal)?;
        let next = next.map_or(String::new(), |c| c.position.to_string());
        items.push_str(&next).map_err(internal)?;
        Ok(items.finish())
    })
    .ok_or_else(closed)?
}

/// Milliseconds until `key`'s live value expires: `Infinity` when it never does, undefined when the
/// key has no live value.
#[napi(catch_unwind)]
pub fn bucket_ttl(bucket: u32, key: String) -> Result<Option<f64>> {
    with_bucket(bucket, |b| {
        b.ttl_left(&key)
            .map(|left| left.map_or(f64::INFINITY, |ms| ms as f64))
    })
    .ok_or_else(closed)
}
