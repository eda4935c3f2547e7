//! The Sentry envelope: a JSON header line followed by items, each an item-header line and a payload.
//!
//! ```text
//! {"event_id":"9ec79c33ec9942ab8353589fcb2e04dc","dsn":"https://e12d836b15bb49d7bbf99e64295d995b@sentry.io/42"}\n
//! {"type":"event","length":41,"content_type":"application/json"}\n
//! {"message":"hello world","level":"error"}\n
//! {"type":"attachment","length":7,"filename":"a.txt"}\n
//! \xef\xbb\xbfHello\r\n
//! ```
//!
//! Parsing is strict about structure and lenient about what SDKs really send (see `shared/design/sdk-traffic.md`):
//! `length` is optional (the payload then runs to the next `\n`), the final newline is optional, and an attachment
//! that ends in `\n` leaves an empty line before the next item header. Unknown header keys and unknown item types
//! are kept as they are. Payloads are zero-copy slices of the request body.
//!
//! Serializing always writes `length` for every item, so the upstream never has to guess where a payload ends.

mod item;

pub use item::{Item, ItemType};

use bytes::Bytes;
use serde_json::{Map, Value};

/// Why an envelope could not be parsed. Every variant names the byte offset where it went wrong, never the content.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("empty envelope")]
    Empty,
    #[error("envelope header is not a JSON object")]
    InvalidHeader,
    #[error("item header at byte {offset} is not a JSON object")]
    InvalidItemHeader { offset: usize },
    #[error("item header at byte {offset} has no string `type`")]
    MissingItemType { offset: usize },
    #[error("item header at byte {offset} has an invalid `length`")]
    InvalidLength { offset: usize },
    #[error("item at byte {offset} declares {length} bytes but only {available} remain")]
    UnexpectedEof {
        offset: usize,
        length: usize,
        available: usize,
    },
    #[error("payload at byte {offset} is not followed by a newline")]
    MissingNewline { offset: usize },
    #[error("envelope has more than {max} items")]
    TooManyItems { max: usize },
}

/// An upper bound on items per envelope. SDKs send a handful; this only stops an envelope of a million empty items
/// from costing a million allocations.
pub const MAX_ITEMS: usize = 10_000;

/// A parsed envelope. The header keeps every key the SDK sent, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub headers: Map<String, Value>,
    pub items: Vec<Item>,
}

impl Envelope {
    /// An envelope with the given header and no items.
    pub fn new(headers: Map<String, Value>) -> Self {
        Envelope {
            headers,
            items: Vec::new(),
        }
    }

    /// Parses a whole (already decompressed) envelope. Payloads borrow from `bytes`.
    pub fn parse(bytes: Bytes) -> Result<Envelope, EnvelopeError> {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(EnvelopeError::Empty);
        }
        let (header_line, mut pos) = next_line(&bytes, 0);
        let headers = parse_object(header_line).ok_or(EnvelopeError::InvalidHeader)?;
        let mut items = Vec::new();

        while pos < bytes.len() {
            // Blank lines between items: an attachment that ends in `\n`, or a trailing newline.
            if bytes[pos] == b'\n' || bytes[pos] == b'\r' {
                pos += 1;
                continue;
            }
            if items.len() >= MAX_ITEMS {
                return Err(EnvelopeError::TooManyItems { max: MAX_ITEMS });
            }
            let header_offset = pos;
            let (line, after_header) = next_line(&bytes, pos);
            let item_headers = parse_object(line).ok_or(EnvelopeError::InvalidItemHeader { offset: header_offset })?;
            if !matches!(item_headers.get("type"), Some(Value::String(_))) {
                return Err(EnvelopeError::MissingItemType { offset: header_offset });
            }
            let payload_start = after_header;
            let (payload, next) = match item_headers.get("length") {
                None | Some(Value::Null) => {
                    let (line, next) = next_line(&bytes, payload_start);
                    let start = payload_start.min(bytes.len());
                    (bytes.slice(start..start + line.len()), next)
                }
                Some(length) => {
                    let length = length
                        .as_u64()
                        .and_then(|l| usize::try_from(l).ok())
                        .ok_or(EnvelopeError::InvalidLength { offset: header_offset })?;
                    let available = bytes.len().saturating_sub(payload_start);
                    if length > available {
                        return Err(EnvelopeError::UnexpectedEof {
                            offset: header_offset,
                            length,
                            available,
                        });
                    }
                    let end = payload_start + length;
                    let next = match bytes.get(end) {
                        None => end,
                        Some(b'\n') => end + 1,
                        Some(b'\r') if bytes.get(end + 1) == Some(&b'\n') => end + 2,
                        Some(_) => return Err(EnvelopeError::MissingNewline { offset: end }),
                    };
                    // `Bytes::slice` panics out of range; the checks above keep `end <= bytes.len()`.
                    (bytes.slice(payload_start..end), next)
                }
            };
            items.push(Item::from_parts(item_headers, payload));
            pos = next;
        }
        Ok(Envelope { headers, items })
    }

    /// Writes the envelope with a correct `length` on every item and a final newline.
    pub fn to_bytes(&self) -> Bytes {
        // Room for the header lines too: an SDK's envelope header (trace context, sdk) is a few hundred bytes, and a
        // guess short of them grew (and copied) the whole buffer once per envelope.
        let items: usize = self.items.iter().map(|i| i.payload().len() + 128).sum();
        let mut out = Vec::with_capacity(512 + items);
        // Serializing a `Map<String, Value>` into a Vec cannot fail: keys are strings and values are already JSON.
        serde_json::to_writer(&mut out, &self.headers).expect("JSON map serializes");
        out.push(b'\n');
        out.reserve(items);
        for item in &self.items {
            item.write_headers_with_length(&mut out);
            out.push(b'\n');
            out.extend_from_slice(item.payload());
            out.push(b'\n');
        }
        Bytes::from(out)
    }

    /// The envelope's `event_id` header, as the SDK wrote it (Rust SDKs hyphenate it).
    pub fn event_id(&self) -> Option<&str> {
        self.headers.get("event_id").and_then(Value::as_str)
    }

    /// The `dsn` header that JavaScript tunnels put in every envelope.
    pub fn dsn(&self) -> Option<&str> {
        self.headers.get("dsn").and_then(Value::as_str)
    }
}

/// Returns the line starting at `start` (without its `\n` or `\r\n`) and the position after the newline.
fn next_line(bytes: &[u8], start: usize) -> (&[u8], usize) {
    let rest = bytes.get(start..).unwrap_or_default();
    // Vectorized: a payload without a `length` header is found by its newline, and a byte loop over a 4 KB event was
    // 3.6 % of the scrub bench's time on the raw captures.
    match memchr::memchr(b'\n', rest) {
        Some(i) => {
            let line = &rest[..i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            (line, start + i + 1)
        }
        None => (rest, bytes.len()),
    }
}

fn parse_object(line: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(line) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
