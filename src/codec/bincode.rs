//! The default codec, [`Bincode`]: bincode 2 with its standard configuration
//! (varints). Also the encoding of everything cachenode writes for itself
//! (argument encodings in keys, bus messages, build jobs), whatever codec
//! the node's values use: [`encode_into`] and [`decode`].

use ::bincode::config::{standard, Config};
use ::bincode::de::read::Reader;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Codec, DepthLimit, ValueRef, ValueSlot};

/// The default codec: bincode 2 with its standard configuration (varints),
/// format id 1. Compact and fast; the bytes do not describe themselves (no
/// field names, no types), so they are read back by programs built with the
/// same types.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bincode;

impl Bincode {
    /// The format id of [`Bincode`] values.
    pub const FORMAT_ID: u8 = 1;
}

impl Codec for Bincode {
    fn format_id(&self) -> u8 {
        Self::FORMAT_ID
    }

    fn name(&self) -> &str {
        "bincode"
    }

    fn encode(&self, value: ValueRef<'_>, out: &mut Vec<u8>) -> Result<(), String> {
        encode_into(&value, out)
    }

    fn decode(&self, bytes: &[u8], limit: usize, slot: ValueSlot<'_>) -> Result<(), String> {
        const MIB: usize = 1 << 20;
        if limit <= 4 * MIB {
            slot_with::<{ 4 * MIB }>(bytes, slot)
        } else if limit <= 64 * MIB {
            slot_with::<{ 64 * MIB }>(bytes, slot)
        } else {
            slot_with::<{ 1024 * MIB }>(bytes, slot)
        }
    }

    fn encoded_len(&self, value: ValueRef<'_>) -> Option<usize> {
        encoded_len(&value)
    }
}

/// Appends the bincode encoding of `value` to `out`.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    ::bincode::serde::encode_into_std_write(value, out, standard())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Decodes a whole `bytes` slice into a `T`, allocating at most about
/// `limit` bytes, nesting at most
/// [`MAX_DECODE_DEPTH`](super::MAX_DECODE_DEPTH) levels. Trailing bytes are
/// an error.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, String> {
    decode_under(bytes, limit, &DepthLimit::default())
}

/// [`decode`] under `depth`, which tells afterwards whether the value
/// nested too deep.
pub(crate) fn decode_under<T: DeserializeOwned>(
    bytes: &[u8],
    limit: usize,
    depth: &DepthLimit,
) -> Result<T, String> {
    // bincode's limit is a const generic; pick the smallest tier that
    // admits `limit`. The limit bounds what a hostile length prefix can
    // make the decoder allocate before it notices the input is too short.
    const MIB: usize = 1 << 20;
    let decoded = if limit <= 4 * MIB {
        decode_with::<T, { 4 * MIB }>(bytes, depth)
    } else if limit <= 64 * MIB {
        decode_with::<T, { 64 * MIB }>(bytes, depth)
    } else {
        decode_with::<T, { 1024 * MIB }>(bytes, depth)
    };
    let (value, used) = decoded.map_err(|e| e.to_string())?;
    no_trailing_bytes(bytes.len() - used)?;
    Ok(value)
}

/// The size of the bincode encoding of `value`, without encoding it.
pub(crate) fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Option<usize> {
    let mut size = ::bincode::enc::write::SizeWriter::default();
    ::bincode::serde::encode_into_writer(value, &mut size, standard()).ok()?;
    Some(size.bytes_written)
}

/// bincode's slice decoder (the one `decode_from_slice` runs), given a
/// seed that puts the deserializer under `depth`.
fn decode_with<T: DeserializeOwned, const N: usize>(
    bytes: &[u8],
    depth: &DepthLimit,
) -> Result<(T, usize), ::bincode::error::DecodeError> {
    ::bincode::serde::seed_decode_from_slice(depth.seed::<T>(), bytes, standard().with_limit::<N>())
}

/// The erased form of [`decode`]: the same configuration, limit and
/// trailing-bytes check, through a serde deserializer handed to `slot`.
fn slot_with<const N: usize>(bytes: &[u8], slot: ValueSlot<'_>) -> Result<(), String> {
    let mut rest = Rest(bytes);
    decode_slot(&mut rest, standard().with_limit::<N>(), slot)?;
    no_trailing_bytes(rest.0.len())
}

fn decode_slot<C: Config>(
    rest: &mut Rest<'_>,
    config: C,
    slot: ValueSlot<'_>,
) -> Result<(), String> {
    let mut decoder = ::bincode::serde::OwnedSerdeDecoder::from_reader(rest, config);
    slot.deserialize(decoder.as_deserializer())
        .map_err(|e| e.to_string())
}

fn no_trailing_bytes(left: usize) -> Result<(), String> {
    match left {
        0 => Ok(()),
        n => Err(format!("{n} trailing bytes after the value")),
    }
}

/// A reader over a slice that tells what it has not read.
struct Rest<'a>(&'a [u8]);

impl Reader for Rest<'_> {
    fn read(&mut self, out: &mut [u8]) -> Result<(), ::bincode::error::DecodeError> {
        if out.len() > self.0.len() {
            return Err(::bincode::error::DecodeError::UnexpectedEnd {
                additional: out.len() - self.0.len(),
            });
        }
        let (read, rest) = self.0.split_at(out.len());
        out.copy_from_slice(read);
        self.0 = rest;
        Ok(())
    }

    fn peek_read(&mut self, n: usize) -> Option<&[u8]> {
        self.0.get(..n)
    }

    fn consume(&mut self, n: usize) {
        self.0 = &self.0[n.min(self.0.len())..];
    }
}
