//! How values are stored and sent: one tag byte, then the payload.
//!
//! JSON values travel as their JSON text, so a read is one copy into a JS string plus `JSON.parse`;
//! string values travel as the string's own UTF-8 (no quotes, no escapes), so a read is the copy
//! alone; binary values (Buffers) travel as raw bytes and come back as a Buffer.

/// Payload is UTF-8 JSON text.
pub const TAG_JSON: u8 = 0;
/// Payload is raw bytes.
pub const TAG_BYTES: u8 = 1;
/// Payload is a string value as UTF-8 (the string itself, not its JSON text).
pub const TAG_STRING: u8 = 2;

/// A decoded view of a stored value.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum ValueRef<'a> {
    Json(&'a str),
    Bytes(&'a [u8]),
    Str(&'a str),
}

pub fn encode_json(text: &str) -> Box<[u8]> {
    let mut v = Vec::with_capacity(text.len() + 1);
    v.push(TAG_JSON);
    v.extend_from_slice(text.as_bytes());
    v.into_boxed_slice()
}

pub fn encode_string(text: &str) -> Box<[u8]> {
    let mut v = Vec::with_capacity(text.len() + 1);
    v.push(TAG_STRING);
    v.extend_from_slice(text.as_bytes());
    v.into_boxed_slice()
}

/// The JSON text of a string value (what `JSON.stringify` gives for it, up to which characters are
/// escaped: both parse back to the same string).
pub fn quote_json(text: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn encode_bytes(bytes: &[u8]) -> Box<[u8]> {
    let mut v = Vec::with_capacity(bytes.len() + 1);
    v.push(TAG_BYTES);
    v.extend_from_slice(bytes);
    v.into_boxed_slice()
}

/// The kind of a stored value.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Kind {
    Json,
    Bytes,
    Str,
}

/// A stored value's kind and payload, without checking that text payloads are UTF-8: for reads of
/// what the store holds, which `is_valid` checked on the way in. `None` for an unknown tag.
pub fn split(stored: &[u8]) -> Option<(Kind, &[u8])> {
    let (&tag, payload) = stored.split_first()?;
    let kind = match tag {
        TAG_JSON => Kind::Json,
        TAG_BYTES => Kind::Bytes,
        TAG_STRING => Kind::Str,
        _ => return None,
    };
    Some((kind, payload))
}

/// Splits a stored value into its kind and payload; `None` for bytes that no encoder produced.
pub fn decode(stored: &[u8]) -> Option<ValueRef<'_>> {
    match split(stored)? {
        (Kind::Json, text) => std::str::from_utf8(text).ok().map(ValueRef::Json),
        (Kind::Bytes, bytes) => Some(ValueRef::Bytes(bytes)),
        (Kind::Str, text) => std::str::from_utf8(text).ok().map(ValueRef::Str),
    }
}

/// True when `stored` is a value this engine could have produced; remote writes are checked with it.
pub fn is_valid(stored: &[u8]) -> bool {
    decode(stored).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_strings_are_json_text() {
        assert_eq!(quote_json("plain"), "\"plain\"");
        assert_eq!(quote_json("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quote_json("\n\u{1}é"), "\"\\u000a\\u0001é\"");
    }

    #[test]
    fn tags_round_trip() {
        assert_eq!(
            decode(&encode_json("{\"a\":1}")),
            Some(ValueRef::Json("{\"a\":1}"))
        );
        assert_eq!(
            decode(&encode_bytes(&[0, 255])),
            Some(ValueRef::Bytes(&[0, 255]))
        );
        assert_eq!(decode(&encode_string("é\"")), Some(ValueRef::Str("é\"")));
        assert_eq!(decode(&[TAG_STRING, 0xc3]), None);
        assert_eq!(decode(&[7, 1]), None);
        assert_eq!(decode(&[TAG_JSON, 0xff]), None);
        assert_eq!(decode(&[]), None);
    }
}
