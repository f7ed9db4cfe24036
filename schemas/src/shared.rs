//! Zero-copy decoding of body bytes.
//!
//! A body field decoded the usual way is copied out of the message into a new buffer. Decoded
//! through [`crate::decode_shared`], a body field instead becomes a slice of the received
//! message's own buffer ([`Bytes::slice_ref`]): a 64 KiB data chunk crosses a process without
//! being copied between the socket read and the next write.
//!
//! Serde gives a visitor the borrowed input but not the [`Bytes`] that owns it, so the owner is
//! lent for the duration of one decode through a thread-local; decoding is synchronous, so no
//! other decode can observe it. Fields outside such a decode are copied as before.

use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;
use serde::Deserializer;
use serde::de::{Error, SeqAccess, Visitor};

thread_local! {
    /// The message being decoded by [`with_source`] on this thread.
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` with `source` lent to the body fields it decodes.
pub(crate) fn with_source<T>(source: &Bytes, decode: impl FnOnce() -> T) -> T {
    /// Takes the source back even when `decode` unwinds.
    struct Lent(Option<Bytes>);
    impl Drop for Lent {
        fn drop(&mut self) {
            SOURCE.with(|source| *source.borrow_mut() = self.0.take());
        }
    }
    let previous = SOURCE.with(|current| current.borrow_mut().replace(source.clone()));
    let _lent = Lent(previous);
    decode()
}

/// Deserializes a body field: a slice of the lent source when the bytes lie inside it, a copy
/// otherwise. Accepts `bin`, `str` and arrays of integers, as [`Bytes`]' own impl does.
pub(crate) fn body<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    deserializer.deserialize_byte_buf(BodyVisitor)
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Bytes;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("body bytes")
    }

    fn visit_borrowed_bytes<E: Error>(self, bytes: &'de [u8]) -> Result<Bytes, E> {
        let shared = SOURCE.with(|source| {
            source.borrow().as_ref().filter(|source| contains(source, bytes)).map(|source| source.slice_ref(bytes))
        });
        Ok(shared.unwrap_or_else(|| Bytes::copy_from_slice(bytes)))
    }

    fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(bytes))
    }

    fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(bytes))
    }

    fn visit_str<E: Error>(self, text: &str) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(Bytes::from(bytes))
    }
}

/// Whether `part` lies within `whole`'s memory.
fn contains(whole: &Bytes, part: &[u8]) -> bool {
    let start = whole.as_ptr() as usize;
    let part_start = part.as_ptr() as usize;
    part_start >= start && part_start + part.len() <= start + whole.len()
}
