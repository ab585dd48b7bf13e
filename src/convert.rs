//! Conversions between JavaScript values and the engine's bytes, written to copy as little as possible.

use std::ptr;
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::sys;
use peer_buckets_engine::value::{self, ValueRef};
use peer_buckets_engine::Stamp;

/// Keys up to this many bytes are read without a heap allocation.
const INLINE_KEY: usize = 128;

/// A string argument read as UTF-8: into a stack buffer when short, else onto the heap.
pub enum KeyArg {
    Inline { buf: [u8; INLINE_KEY], len: usize },
    Heap(String),
}

impl KeyArg {
    pub fn as_str(&self) -> &str {
        match self {
            // Written by napi_get_value_string_utf8, which only writes whole UTF-8 characters.
            KeyArg::Inline { buf, len } => std::str::from_utf8(&buf[..*len]).unwrap_or_default(),
            KeyArg::Heap(s) => s,
        }
    }

    pub fn into_arc(self) -> Arc<str> {
        Arc::from(self.as_str())
    }
}

unsafe fn string_len(env: sys::napi_env, v: sys::napi_value) -> Result<usize> {
    let mut len = 0;
    let status = unsafe { sys::napi_get_value_string_utf8(env, v, ptr::null_mut(), 0, &mut len) };
    if status != sys::Status::napi_ok {
        return Err(Error::new(Status::StringExpected, "expected a string"));
    }
    Ok(len)
}

unsafe fn read_string_into(
    env: sys::napi_env,
    v: sys::napi_value,
    out: &mut [u8],
) -> Result<usize> {
    let mut written = 0;
    let status = unsafe {
        sys::napi_get_value_string_utf8(env, v, out.as_mut_ptr().cast(), out.len(), &mut written)
    };
    if status != sys::Status::napi_ok {
        return Err(Error::new(Status::StringExpected, "expected a string"));
    }
    Ok(written)
}

impl TypeName for KeyArg {
    fn type_name() -> &'static str {
        "String"
    }
    fn value_type() -> ValueType {
        ValueType::String
    }
}
impl ValidateNapiValue for KeyArg {}

impl FromNapiValue for KeyArg {
    unsafe fn from_napi_value(env: sys::napi_env, v: sys::napi_value) -> Result<Self> {
        let mut buf = [0u8; INLINE_KEY];
        let len = unsafe { read_string_into(env, v, &mut buf)? };
        // A full buffer (one byte is kept for the terminator) may mean the string was cut.
        if len < INLINE_KEY - 4 {
            return Ok(KeyArg::Inline { buf, len });
        }
        let full = unsafe { string_len(env, v)? };
        let mut heap = vec![0u8; full + 1];
        let len = unsafe { read_string_into(env, v, &mut heap)? };
        heap.truncate(len);
        Ok(KeyArg::Heap(String::from_utf8(heap).map_err(|_| {
            Error::new(Status::InvalidArg, "key is not valid UTF-8")
        })?))
    }
}

/// Text from JavaScript in the stored form: the tag byte `TAG` (`value::TAG_JSON` for JSON text,
/// `value::TAG_STRING` for a string value itself), then the text as UTF-8.
pub struct TextArg<const TAG: u8>(Box<[u8]>);

impl<const TAG: u8> TextArg<TAG> {
    pub fn into_stored(self) -> Box<[u8]> {
        self.0
    }
}

impl<const TAG: u8> TypeName for TextArg<TAG> {
    fn type_name() -> &'static str {
        "String"
    }
    fn value_type() -> ValueType {
        ValueType::String
    }
}
impl<const TAG: u8> ValidateNapiValue for TextArg<TAG> {}

thread_local! {
    /// Scratch space for reading JSON text: napi writes a terminating NUL we do not keep, and an
    /// allocation shrunk afterwards would leave a sliver of heap behind for every value stored.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl<const TAG: u8> FromNapiValue for TextArg<TAG> {
    unsafe fn from_napi_value(env: sys::napi_env, v: sys::napi_value) -> Result<Self> {
        SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            // Most values fit the scratch space as it is: one pass reads them. A longer one (the text
            // filled the space) is measured and read again.
            if buf.len() < 1024 {
                buf.resize(1024, 0);
            }
            buf[0] = TAG;
            let mut written = unsafe { read_string_into(env, v, &mut buf[1..])? };
            if written + 2 >= buf.len() - 4 {
                let len = unsafe { string_len(env, v)? };
                buf.resize(len + 2, 0);
                written = unsafe { read_string_into(env, v, &mut buf[1..])? };
            }
            // Exactly the tag and the text, in an allocation of that size.
            Ok(TextArg(Box::from(&buf[..written + 1])))
        })
    }
}

thread_local! {
    /// Where `hotCalls().get` tells the calling thread's JavaScript which kind of string it returned (1:
    /// JSON text to parse, 0: a string value as it is): the first element of an Int32Array bound by
    /// `bindValueKind`, kept alive by a reference that is never released. Elements 1 to 4, when the
    /// array has them, hold a value's stamp for `hotCalls().getChanged` (see `stamp_is_known`).
    static KIND_SLOT: std::cell::Cell<(*mut i32, usize)> =
        const { std::cell::Cell::new((ptr::null_mut(), 0)) };
}

/// The element type, length and data of a typed array (the data already moved by the array's offset
/// into its buffer); `None` when `v` is no typed array.
pub unsafe fn typed_array(
    env: sys::napi_env,
    v: sys::napi_value,
) -> Option<(sys::napi_typedarray_type, usize, *mut std::ffi::c_void)> {
    let mut kind = 0;
    let mut len = 0;
    let mut data = ptr::null_mut();
    let mut buffer = ptr::null_mut();
    let mut offset = 0;
    let status = unsafe {
        sys::napi_get_typedarray_info(
            env,
            v,
            &mut kind,
            &mut len,
            &mut data,
            &mut buffer,
            &mut offset,
        )
    };
    (status == sys::Status::napi_ok).then_some((kind, len, data))
}

/// Binds the calling thread's value-kind slot (an Int32Array of at least one element).
pub struct KindSlot;

impl TypeName for KindSlot {
    fn type_name() -> &'static str {
        "Int32Array"
    }
    fn value_type() -> ValueType {
        ValueType::Object
    }
}
impl ValidateNapiValue for KindSlot {}

impl FromNapiValue for KindSlot {
    unsafe fn from_napi_value(env: sys::napi_env, v: sys::napi_value) -> Result<Self> {
        let data = match unsafe { typed_array(env, v) } {
            Some((sys::TypedarrayType::int32_array, len, data)) if len >= 1 && !data.is_null() => {
                data
            }
            _ => {
                return Err(Error::new(
                    Status::InvalidArg,
                    "expected an Int32Array of at least one element",
                ))
            }
        };
        let mut reference = ptr::null_mut();
        let status = unsafe { sys::napi_create_reference(env, v, 1, &mut reference) };
        if status != sys::Status::napi_ok {
            return Err(Error::from_reason("cannot keep the value-kind slot"));
        }
        let len = unsafe { typed_array(env, v) }.map_or(1, |(_, len, _)| len);
        KIND_SLOT.with(|slot| slot.set((data.cast(), len)));
        Ok(KindSlot)
    }
}

fn tell_kind(json: bool) {
    KIND_SLOT.with(|slot| {
        let (p, _) = slot.get();
        if !p.is_null() {
            // SAFETY: the slot points into an Int32Array of this thread's JavaScript, kept alive by a
            // reference; only this thread runs JavaScript on it.
            unsafe { p.write(json as i32) };
        }
    });
}

/// Whether `stamp` is the one elements 1 to 4 of the calling thread's value-kind slot hold (the
/// caller's decoded copy of the value is current); when it is not, they take it. A live value's
/// stamp is never all zeros (its origin has an address), so zeros there match nothing.
pub fn stamp_is_known(stamp: Stamp) -> bool {
    let origin = stamp.origin as u64;
    let words = [
        stamp.hlc as i32,
        (stamp.hlc >> 32) as i32,
        origin as i32,
        (origin >> 32) as i32,
    ];
    KIND_SLOT.with(|slot| {
        let (p, len) = slot.get();
        if p.is_null() || len < 5 {
            return false;
        }
        // SAFETY: as in `tell_kind`; the array has at least 5 elements.
        let known = unsafe { std::slice::from_raw_parts_mut(p.add(1), 4) };
        if *known == words {
            return true;
        }
        known.copy_from_slice(&words);
        false
    })
}

/// A JavaScript value made by hand on the calling thread.
pub struct RawValue(sys::napi_value);

impl RawValue {
    pub fn from_raw(v: sys::napi_value) -> Self {
        RawValue(v)
    }

    pub fn raw(&self) -> sys::napi_value {
        self.0
    }

    pub fn undefined(env: sys::napi_env) -> Self {
        let mut v = ptr::null_mut();
        unsafe { sys::napi_get_undefined(env, &mut v) };
        RawValue(v)
    }

    pub fn boolean(env: sys::napi_env, b: bool) -> Self {
        let mut v = ptr::null_mut();
        unsafe { sys::napi_get_boolean(env, b, &mut v) };
        RawValue(v)
    }

    pub fn number(env: sys::napi_env, n: f64) -> Result<Self> {
        let mut v = ptr::null_mut();
        let status = unsafe { sys::napi_create_double(env, n, &mut v) };
        if status != sys::Status::napi_ok {
            return Err(Error::from_reason("cannot create a number"));
        }
        Ok(RawValue(v))
    }

    pub fn string(env: sys::napi_env, s: &str) -> Result<Self> {
        RawValue::string_from_utf8(env, s.as_bytes())
    }

    /// A string from UTF-8 bytes (V8 decodes them; a malformed sequence would become U+FFFD).
    pub fn string_from_utf8(env: sys::napi_env, utf8: &[u8]) -> Result<Self> {
        let mut v = ptr::null_mut();
        let status = unsafe {
            sys::napi_create_string_utf8(env, utf8.as_ptr().cast(), utf8.len() as isize, &mut v)
        };
        if status != sys::Status::napi_ok {
            return Err(Error::from_reason("cannot create a string"));
        }
        Ok(RawValue(v))
    }

    pub fn buffer_copy(env: sys::napi_env, bytes: &[u8]) -> Result<Self> {
        let mut v = ptr::null_mut();
        let mut data = ptr::null_mut();
        let status = unsafe {
            sys::napi_create_buffer_copy(env, bytes.len(), bytes.as_ptr().cast(), &mut data, &mut v)
        };
        if status != sys::Status::napi_ok {
            return Err(Error::from_reason("cannot create a Buffer"));
        }
        Ok(RawValue(v))
    }

    /// A stored value as JavaScript sees it from the binding's batches (events, entries): JSON text as
    /// a string (a string value as its JSON text), bytes as a Buffer.
    pub fn from_stored(env: sys::napi_env, stored: &[u8]) -> Result<Self> {
        match value::decode(stored) {
            Some(ValueRef::Json(text)) => RawValue::string(env, text),
            Some(ValueRef::Str(text)) => RawValue::string(env, &value::quote_json(text)),
            Some(ValueRef::Bytes(bytes)) => RawValue::buffer_copy(env, bytes),
            None => Err(Error::from_reason("stored value has an unknown tag")),
        }
    }

    /// A stored value as `hotCalls().get` returns it: a string value as it is, JSON text as a string (the
    /// value-kind slot tells the two apart), bytes as a Buffer.
    /// The text was checked as UTF-8 when it entered the store, so it is not checked again here.
    pub fn from_stored_for_get(env: sys::napi_env, stored: &[u8]) -> Result<Self> {
        match value::split(stored) {
            Some((value::Kind::Str, text)) => {
                tell_kind(false);
                RawValue::string_from_utf8(env, text)
            }
            Some((value::Kind::Json, text)) => {
                tell_kind(true);
                RawValue::string_from_utf8(env, text)
            }
            Some((value::Kind::Bytes, bytes)) => RawValue::buffer_copy(env, bytes),
            None => Err(Error::from_reason("stored value has an unknown tag")),
        }
    }
}

impl ToNapiValue for RawValue {
    unsafe fn to_napi_value(_env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        Ok(val.0)
    }
}

/// Builds a JavaScript array element by element.
pub struct ArrayBuilder {
    env: sys::napi_env,
    array: sys::napi_value,
    len: u32,
}

impl ArrayBuilder {
    pub fn new(env: sys::napi_env) -> Result<Self> {
        let mut array = ptr::null_mut();
        let status = unsafe { sys::napi_create_array(env, &mut array) };
        if status != sys::Status::napi_ok {
            return Err(Error::from_reason("cannot create an array"));
        }
        Ok(ArrayBuilder { env, array, len: 0 })
    }

    pub fn push(&mut self, v: RawValue) -> Result<()> {
        let status = unsafe { sys::napi_set_element(self.env, self.array, self.len, v.0) };
        if status != sys::Status::napi_ok {
            return Err(Error::from_reason("cannot fill an array"));
        }
        self.len += 1;
        Ok(())
    }

    /// Sets element `index` (the array grows to hold it).
    pub fn set(&mut self, index: u32, v: RawValue) -> Result<()> {
        let status = unsafe { sys::napi_set_element(self.env, self.array, index, v.0) };
        if status != sys::Status::napi_ok {
            return Err(Error::from_reason("cannot fill an array"));
        }
        self.len = self.len.max(index + 1);
        Ok(())
    }

    pub fn push_str(&mut self, s: &str) -> Result<()> {
        let v = RawValue::string(self.env, s)?;
        self.push(v)
    }

    pub fn finish(self) -> RawValue {
        RawValue(self.array)
    }
}
