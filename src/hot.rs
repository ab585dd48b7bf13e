//! The hot calls (`get`, `getChanged`, `has`, `set` of each value kind, `delete`) as plain Node-API
//! callbacks.
//!
//! A `#[napi]` function opens and closes a borrow scope on every call (it keeps arguments borrowed
//! across async work alive, which these calls never do); measured here, that scope cost about 60 ns of
//! a 150 ns `has`. These callbacks read their arguments with the same conversions (`KeyArg`,
//! `TextArg`), run inside `catch_unwind` like every `#[napi(catch_unwind)]` function, and throw the
//! same errors. `hotCalls()` hands them to `index.js` as one object.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use napi::bindgen_prelude::*;
use napi::sys;
use napi_derive::napi;
use peer_buckets_engine::value;
use peer_buckets_engine::Lifetime;

use crate::contract::{self, closed, internal, Code};
use crate::convert::{stamp_is_known, typed_array, KeyArg, RawValue, TextArg};
use crate::handles::with_bucket;
use crate::{lifetime, write};

/// The arguments of one call; missing ones read as `undefined` (and fail their conversion).
struct Args<const N: usize> {
    env: sys::napi_env,
    argv: [sys::napi_value; N],
}

impl<const N: usize> Args<N> {
    unsafe fn read(env: sys::napi_env, info: sys::napi_callback_info) -> contract::Result<Self> {
        let mut argc = N;
        let mut argv = [ptr::null_mut(); N];
        let status = unsafe {
            sys::napi_get_cb_info(
                env,
                info,
                &mut argc,
                argv.as_mut_ptr(),
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        if status != sys::Status::napi_ok {
            return Err(Error::new(
                Code::Internal,
                "cannot read the call's arguments",
            ));
        }
        Ok(Args { env, argv })
    }

    fn get<T: FromNapiValue>(&self, i: usize) -> contract::Result<T> {
        unsafe { T::from_napi_value(self.env, self.argv[i]) }.map_err(internal)
    }

    /// A `Uint8Array` argument's bytes (a Buffer is one).
    fn bytes(&self, i: usize) -> contract::Result<&[u8]> {
        let Some((sys::TypedarrayType::uint8_array, len, data)) =
            (unsafe { typed_array(self.env, self.argv[i]) })
        else {
            return Err(Error::new(Code::InvalidArg, "expected a Uint8Array"));
        };
        if len == 0 {
            return Ok(&[]);
        }
        // SAFETY: the array is an argument of the running call, alive until it returns; the slice
        // does not outlive `self`, which lives only as long as the call.
        Ok(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) })
    }
}

/// Runs a callback body: its value, or a thrown error (a panic becomes one too).
fn guarded(
    env: sys::napi_env,
    body: impl FnOnce() -> contract::Result<RawValue>,
) -> sys::napi_value {
    let outcome =
        catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|p| Err(internal(panic_to_error(p))));
    match outcome {
        Ok(v) => v.raw(),
        Err(e) => {
            unsafe { JsError::from(e).throw_into(env) };
            ptr::null_mut()
        }
    }
}

/// `get(bucket, key)`: a string (JSON text or a string value, as the value-kind slot says), a
/// Buffer, or undefined.
unsafe extern "C" fn get(env: sys::napi_env, info: sys::napi_callback_info) -> sys::napi_value {
    guarded(env, || {
        let args = unsafe { Args::<2>::read(env, info)? };
        let (bucket, key): (u32, KeyArg) = (args.get(0)?, args.get(1)?);
        with_bucket(bucket, |b| {
            let mut out = Ok(RawValue::undefined(env));
            b.read(key.as_str(), &mut |stored| {
                out = RawValue::from_stored_for_get(env, stored).map_err(internal);
            });
            out
        })
        .ok_or_else(closed)?
    })
}

/// `getChanged(bucket, key)`: `true` when the live value's stamp is the one the calling thread's
/// value-kind slot holds (the caller's decoded copy is current), else what `get` returns, the slot
/// then holding the value's stamp; undefined when there is no live value.
unsafe extern "C" fn get_changed(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> sys::napi_value {
    guarded(env, || {
        let args = unsafe { Args::<2>::read(env, info)? };
        let (bucket, key): (u32, KeyArg) = (args.get(0)?, args.get(1)?);
        with_bucket(bucket, |b| {
            let mut out = Ok(RawValue::undefined(env));
            b.read_stamped(key.as_str(), &mut |stored, stamp| {
                out = if stamp_is_known(stamp) {
                    Ok(RawValue::boolean(env, true))
                } else {
                    RawValue::from_stored_for_get(env, stored).map_err(internal)
                };
            });
            out
        })
        .ok_or_else(closed)?
    })
}

/// `has(bucket, key)`.
unsafe extern "C" fn has(env: sys::napi_env, info: sys::napi_callback_info) -> sys::napi_value {
    guarded(env, || {
        let args = unsafe { Args::<2>::read(env, info)? };
        let (bucket, key): (u32, KeyArg) = (args.get(0)?, args.get(1)?);
        let found = with_bucket(bucket, |b| b.contains(key.as_str())).ok_or_else(closed)?;
        Ok(RawValue::boolean(env, found))
    })
}

/// The shared tail of the writes: `(ttl, ack, timeout)` from arguments `at..`, then the write; the
/// result is 0 when the ack level is met already, else a ticket whose outcome comes as an event.
fn finish_write(
    args: &Args<6>,
    bucket: u32,
    key: KeyArg,
    stored: Option<Box<[u8]>>,
    at: usize,
    has_ttl: bool,
) -> contract::Result<RawValue> {
    let life = if has_ttl {
        lifetime(args.get::<f64>(at)?)
    } else {
        Lifetime::Forever
    };
    let at = at + has_ttl as usize;
    let (ack, timeout): (u32, f64) = (args.get(at)?, args.get(at + 1)?);
    let ticket = write(bucket, key, stored, life, ack, timeout)?;
    RawValue::number(args.env, ticket).map_err(internal)
}

/// `setJson(bucket, key, jsonText, ttlMs, ack, timeoutMs)` (`TAG` = `value::TAG_JSON`) and
/// `setString(bucket, key, string, ttlMs, ack, timeoutMs)` (`TAG` = `value::TAG_STRING`: the string
/// itself is the value).
unsafe extern "C" fn set_text<const TAG: u8>(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> sys::napi_value {
    guarded(env, || {
        let args = unsafe { Args::<6>::read(env, info)? };
        let (bucket, key, text): (u32, KeyArg, TextArg<TAG>) =
            (args.get(0)?, args.get(1)?, args.get(2)?);
        finish_write(&args, bucket, key, Some(text.into_stored()), 3, true)
    })
}

/// `setBytes(bucket, key, uint8Array, ttlMs, ack, timeoutMs)`.
unsafe extern "C" fn set_bytes(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> sys::napi_value {
    guarded(env, || {
        let args = unsafe { Args::<6>::read(env, info)? };
        let (bucket, key): (u32, KeyArg) = (args.get(0)?, args.get(1)?);
        let stored = value::encode_bytes(args.bytes(2)?);
        finish_write(&args, bucket, key, Some(stored), 3, true)
    })
}

/// `delete(bucket, key, ack, timeoutMs)`: a tombstone that replicates.
unsafe extern "C" fn delete(env: sys::napi_env, info: sys::napi_callback_info) -> sys::napi_value {
    guarded(env, || {
        let args = unsafe { Args::<6>::read(env, info)? };
        let (bucket, key): (u32, KeyArg) = (args.get(0)?, args.get(1)?);
        finish_write(&args, bucket, key, None, 2, false)
    })
}

type Callback = unsafe extern "C" fn(sys::napi_env, sys::napi_callback_info) -> sys::napi_value;

/// The hot calls, as an object `{ get, getChanged, has, setJson, setString, setBytes, delete }` of
/// functions taking a bucket handle first.
#[napi(
    catch_unwind,
    ts_return_type = "{ get: Function, getChanged: Function, has: Function, setJson: Function, setString: Function, setBytes: Function, delete: Function }"
)]
pub fn hot_calls(env: Env) -> contract::Result<RawValue> {
    let env = env.raw();
    let calls: [(&str, Callback); 7] = [
        ("get", get),
        ("getChanged", get_changed),
        ("has", has),
        ("setJson", set_text::<{ value::TAG_JSON }>),
        ("setString", set_text::<{ value::TAG_STRING }>),
        ("setBytes", set_bytes),
        ("delete", delete),
    ];
    let mut object = ptr::null_mut();
    check(unsafe { sys::napi_create_object(env, &mut object) })?;
    for (name, callback) in calls {
        let mut function = ptr::null_mut();
        check(unsafe {
            sys::napi_create_function(
                env,
                name.as_ptr().cast(),
                name.len() as isize,
                Some(callback),
                ptr::null_mut(),
                &mut function,
            )
        })?;
        let mut key = ptr::null_mut();
        check(unsafe {
            sys::napi_create_string_utf8(env, name.as_ptr().cast(), name.len() as isize, &mut key)
        })?;
        check(unsafe { sys::napi_set_property(env, object, key, function) })?;
    }
    Ok(RawValue::from_raw(object))
}

fn check(status: sys::napi_status) -> contract::Result<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(Error::new(Code::Internal, "cannot build the hot calls"))
    }
}
