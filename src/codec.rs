//! How values are turned into bytes for Redis, and back.
//!
//! Every value stored in Redis is wrapped in a small versioned *envelope*:
//!
//! ```text
//! byte 0       magic 0xCB (a cachenode value)
//! byte 1       envelope version (2)
//! byte 2       codec format id (1 = bincode 2, standard config)
//! byte 3       flags (reserved, 0)
//! bytes 4..12  absolute expiry, Unix milliseconds, little endian (0 = never)
//! bytes 12..20 type fingerprint of the value, little endian (see below)
//! bytes 20..   the payload, encoded by the codec
//! ```
//!
//! The expiry travels with the value so a Redis hit knows how long it may keep
//! the value in RAM without a second round trip (`PTTL`). Decoding checks every
//! header field and decodes the payload under a size limit, so bytes planted in
//! Redis by anything else are refused without panicking or allocating without
//! bound.
//!
//! # The type fingerprint
//!
//! The payload encoding does not describe itself: bincode writes a `u64` 0 as
//! the byte `0`, which also reads as an empty `String`. So the envelope
//! records which type was written: the 64-bit XXH3 hash of
//! [`std::any::type_name`] of the value's type (e.g. `alloc::string::String`,
//! `myapp::User`), and a read as any other type is refused before the payload
//! is looked at: a counted miss, never a misread.
//!
//! `type_name` is the Rust type's full path, so the fingerprint survives
//! restarts, processes and machines built from the same source with the same
//! compiler; XXH3 is a fixed algorithm. It is not promised to be stable
//! across compiler versions, nor across a type's move to another module or
//! crate: after such a change a value written by the old build reads as
//! another type. That costs one miss and a refill per key (the new build
//! writes its own fingerprint), never a misread, which is what a cache can
//! afford. The fingerprint names a type, not its shape: a type whose fields
//! change under the same path keeps its fingerprint, and the payload decoder
//! is what refuses the old bytes (as a corrupt value) when it can tell.
//!
//! Values written in version 1 of the envelope (no fingerprint) are read as
//! an unknown version: a counted miss, the key removed.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Length of the envelope header in bytes.
pub(crate) const HEADER_LEN: usize = 20;
const MAGIC: u8 = 0xCB;
/// The envelope version this build writes and reads (1 had no type
/// fingerprint).
pub(crate) const ENVELOPE_VERSION: u8 = 2;

/// The type fingerprint of `T` (see the [module docs](self)): the XXH3-64
/// hash of its [`type_name`](std::any::type_name).
pub(crate) fn type_fingerprint<T: ?Sized>() -> u64 {
    xxhash_rust::xxh3::xxh3_64(std::any::type_name::<T>().as_bytes())
}

/// A serialization format for values stored in Redis.
///
/// The envelope records the codec's [`FORMAT`](Codec::FORMAT) id, so a value
/// written in another format is recognised as such and treated as a miss
/// instead of being misread.
pub trait Codec: Send + Sync + 'static {
    /// The id written into every envelope (1 is [`Bincode`]).
    const FORMAT: u8;

    /// Appends the encoding of `value` to `out`.
    ///
    /// # Errors
    /// A message describing why the value cannot be encoded.
    fn encode_into<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), String>;

    /// Decodes a whole `bytes` slice into a `T`, allocating at most about
    /// `limit` bytes. Trailing bytes are an error.
    ///
    /// # Errors
    /// A message describing why the bytes are not a `T`.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8], limit: usize) -> Result<T, String>;

    /// The encoded size of `value` in bytes, used to weigh RAM entries that
    /// are never written to Redis.
    fn encoded_len<T: Serialize + ?Sized>(&self, value: &T) -> Option<usize>;
}

/// The default codec: bincode 2 with its standard configuration (varints).
#[derive(Debug, Clone, Copy, Default)]
pub struct Bincode;

impl Codec for Bincode {
    const FORMAT: u8 = 1;

    #[inline]
    fn encode_into<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        // Straight into the vector: the same bytes as through
        // `std::io::Write`, without its adapter on every write.
        bincode::serde::encode_into_writer(value, VecWriter(out), bincode::config::standard())
            .map_err(|e| e.to_string())
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8], limit: usize) -> Result<T, String> {
        // bincode's limit is a const generic; pick the smallest tier that
        // admits `limit`. The limit bounds what a hostile length prefix can
        // make the decoder allocate before it notices the input is too short.
        const MIB: usize = 1 << 20;
        let decoded = if limit <= 4 * MIB {
            decode_with::<T, { 4 * MIB }>(bytes)
        } else if limit <= 64 * MIB {
            decode_with::<T, { 64 * MIB }>(bytes)
        } else {
            decode_with::<T, { 1024 * MIB }>(bytes)
        };
        let (value, used) = decoded.map_err(|e| e.to_string())?;
        if used != bytes.len() {
            return Err(format!(
                "{} trailing bytes after the value",
                bytes.len() - used
            ));
        }
        Ok(value)
    }

    fn encoded_len<T: Serialize + ?Sized>(&self, value: &T) -> Option<usize> {
        let mut size = bincode::enc::write::SizeWriter::default();
        bincode::serde::encode_into_writer(value, &mut size, bincode::config::standard()).ok()?;
        Some(size.bytes_written)
    }
}

/// Appends bincode's output to a vector.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for VecWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

fn decode_with<T: DeserializeOwned, const N: usize>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard().with_limit::<N>())
}

/// Why bytes read from Redis could not be turned back into a value.
///
/// Never surfaced to callers: the read becomes a miss and the reason is counted
/// (its [`label`](DecodeError::label) is a bounded metric label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Too short, or the magic byte is wrong: not written by cachenode.
    NotAnEnvelope,
    /// Written by a newer cachenode with an envelope this build cannot read.
    UnknownVersion(u8),
    /// Written with another codec.
    UnknownFormat(u8),
    /// Written as another type than the one asked for (the fingerprints
    /// differ). The value is sound: the reader asked for the wrong type.
    WrongType {
        /// The fingerprint in the envelope.
        found: u64,
        /// The fingerprint of the type asked for.
        expected: u64,
    },
    /// Larger than the node's value limit.
    TooLarge { size: usize, limit: usize },
    /// The payload is not a valid encoding of the requested type.
    Payload(String),
}

impl DecodeError {
    /// A short, bounded label for metrics and logs.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            DecodeError::NotAnEnvelope => "not_an_envelope",
            DecodeError::UnknownVersion(_) => "unknown_version",
            DecodeError::UnknownFormat(_) => "unknown_format",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Payload(_) => "payload",
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::NotAnEnvelope => write!(f, "not a cachenode envelope"),
            DecodeError::UnknownVersion(v) => write!(
                f,
                "unknown envelope version {v} (this build reads {ENVELOPE_VERSION})"
            ),
            DecodeError::UnknownFormat(c) => write!(f, "unknown codec format {c}"),
            DecodeError::WrongType { found, expected } => write!(
                f,
                "written as another type (fingerprint {found:016x}, expected {expected:016x})"
            ),
            DecodeError::TooLarge { size, limit } => {
                write!(f, "{size} bytes exceed the limit of {limit}")
            }
            DecodeError::Payload(e) => write!(f, "payload does not decode: {e}"),
        }
    }
}

/// The header of an envelope for a `T` expiring at `expires_at_ms`.
pub(crate) fn header<C: Codec, T: ?Sized>(expires_at_ms: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&[MAGIC, ENVELOPE_VERSION, C::FORMAT, 0]);
    h[4..12].copy_from_slice(&expires_at_ms.to_le_bytes());
    h[12..20].copy_from_slice(&type_fingerprint::<T>().to_le_bytes());
    h
}

/// Encodes `value` in an envelope expiring at `expires_at_ms` (0 = never),
/// under the fingerprint of `T`.
///
/// # Errors
/// [`Error::Encode`](crate::Error::Encode) when the codec fails,
/// [`Error::ValueTooLarge`](crate::Error::ValueTooLarge) past `limit`.
pub(crate) fn seal<C: Codec, T: Serialize + ?Sized>(
    codec: &C,
    value: &T,
    expires_at_ms: u64,
    limit: usize,
) -> crate::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&header::<C, T>(expires_at_ms));
    codec
        .encode_into(value, &mut out)
        .map_err(crate::Error::Encode)?;
    let size = out.len() - HEADER_LEN;
    if size > limit {
        return Err(crate::Error::ValueTooLarge { size, limit });
    }
    Ok(out)
}

/// The header of an envelope, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Absolute expiry in Unix milliseconds, 0 = never.
    pub(crate) expires_at_ms: u64,
    /// The [type fingerprint](type_fingerprint) of the value written.
    pub(crate) type_fingerprint: u64,
}

/// Checks the header of `bytes` (all but the type) and returns it with the
/// payload.
pub(crate) fn open<C: Codec>(bytes: &[u8]) -> Result<(Header, &[u8]), DecodeError> {
    if bytes.len() < 2 || bytes[0] != MAGIC {
        return Err(DecodeError::NotAnEnvelope);
    }
    if bytes[1] != ENVELOPE_VERSION {
        return Err(DecodeError::UnknownVersion(bytes[1]));
    }
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::NotAnEnvelope);
    }
    if bytes[2] != C::FORMAT {
        return Err(DecodeError::UnknownFormat(bytes[2]));
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(w)
    };
    Ok((
        Header {
            expires_at_ms: word(4),
            type_fingerprint: word(12),
        },
        &bytes[HEADER_LEN..],
    ))
}

/// Opens an envelope and decodes its payload as a `T`.
///
/// A value written as another type is [`DecodeError::WrongType`], checked
/// before the size limit and the payload: it says nothing about the value,
/// which other readers may read well.
pub(crate) fn unseal<C: Codec, T: DeserializeOwned>(
    codec: &C,
    bytes: &[u8],
    limit: usize,
) -> Result<(Header, T), DecodeError> {
    let (header, payload) = open::<C>(bytes)?;
    let expected = type_fingerprint::<T>();
    if header.type_fingerprint != expected {
        return Err(DecodeError::WrongType {
            found: header.type_fingerprint,
            expected,
        });
    }
    if payload.len() > limit {
        return Err(DecodeError::TooLarge {
            size: payload.len(),
            limit,
        });
    }
    let value = codec.decode(payload, limit).map_err(DecodeError::Payload)?;
    Ok((header, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct User {
        id: u64,
        name: String,
        tags: Vec<String>,
    }

    fn user() -> User {
        User {
            id: 7,
            name: "ada".into(),
            tags: vec!["a".into(), "b".into()],
        }
    }

    #[test]
    fn roundtrip_keeps_value_and_expiry() {
        let bytes = seal(&Bincode, &user(), 1234, 1 << 20).unwrap();
        let (h, u): (Header, User) = unseal(&Bincode, &bytes, 1 << 20).unwrap();
        assert_eq!(h.expires_at_ms, 1234);
        assert_eq!(u, user());
    }

    #[test]
    fn refuses_foreign_and_future_bytes() {
        assert_eq!(
            unseal::<_, User>(&Bincode, b"hello world, plain", 1 << 20).unwrap_err(),
            DecodeError::NotAnEnvelope
        );
        assert_eq!(
            unseal::<_, User>(&Bincode, &[], 1 << 20).unwrap_err(),
            DecodeError::NotAnEnvelope
        );
        let mut bytes = seal(&Bincode, &user(), 0, 1 << 20).unwrap();
        bytes[1] = 9;
        assert_eq!(
            unseal::<_, User>(&Bincode, &bytes, 1 << 20).unwrap_err(),
            DecodeError::UnknownVersion(9)
        );
        bytes[1] = ENVELOPE_VERSION;
        bytes[2] = 77;
        assert_eq!(
            unseal::<_, User>(&Bincode, &bytes, 1 << 20).unwrap_err(),
            DecodeError::UnknownFormat(77)
        );
    }

    #[test]
    fn truncated_and_mistyped_payloads_are_errors() {
        let bytes = seal(&Bincode, &user(), 0, 1 << 20).unwrap();
        let cut = &bytes[..bytes.len() - 3];
        assert!(matches!(
            unseal::<_, User>(&Bincode, cut, 1 << 20),
            Err(DecodeError::Payload(_))
        ));
        // A u8 would read the first byte of the User and leave trailing
        // bytes: the payload decoder refuses it...
        assert!(Bincode.decode::<u8>(&bytes[HEADER_LEN..], 1 << 20).is_err());
        // ...and the fingerprint refuses it before the payload is read.
        assert!(matches!(
            unseal::<_, u8>(&Bincode, &bytes, 1 << 20),
            Err(DecodeError::WrongType { .. })
        ));
    }

    #[test]
    fn a_value_read_as_another_type_is_refused_even_when_its_bytes_fit() {
        // bincode writes a u64 0 as the byte 0: also an empty String.
        let bytes = seal(&Bincode, &0u64, 0, 1 << 20).unwrap();
        assert_eq!(
            Bincode.decode::<String>(&bytes[HEADER_LEN..], 1 << 20),
            Ok(String::new())
        );
        assert_eq!(
            unseal::<_, String>(&Bincode, &bytes, 1 << 20).unwrap_err(),
            DecodeError::WrongType {
                found: type_fingerprint::<u64>(),
                expected: type_fingerprint::<String>(),
            }
        );
        assert_eq!(unseal::<_, u64>(&Bincode, &bytes, 1 << 20).unwrap().1, 0);
        // The same payload under an older envelope without a fingerprint.
        let mut v1 = vec![MAGIC, 1, Bincode::FORMAT, 0];
        v1.extend_from_slice(&0u64.to_le_bytes());
        v1.push(0);
        assert_eq!(
            unseal::<_, u64>(&Bincode, &v1, 1 << 20).unwrap_err(),
            DecodeError::UnknownVersion(1)
        );
    }

    #[test]
    fn the_fingerprint_is_the_hash_of_the_type_name() {
        // Pinned, so a change to how it is computed is seen (it would turn
        // every stored value into a miss).
        assert_eq!(
            type_fingerprint::<u64>(),
            xxhash_rust::xxh3::xxh3_64(b"u64")
        );
        assert_ne!(type_fingerprint::<u64>(), type_fingerprint::<u32>());
        assert_ne!(type_fingerprint::<Vec<u8>>(), type_fingerprint::<String>());
        let bytes = seal(&Bincode, &user(), 0, 1 << 20).unwrap();
        assert_eq!(
            bytes[12..20],
            type_fingerprint::<User>().to_le_bytes(),
            "bytes 12..20"
        );
    }

    #[test]
    fn hostile_length_prefix_does_not_allocate_unbounded() {
        // A Vec<u64> claiming 2^60 elements in a 20-byte payload.
        let mut bytes = header::<Bincode, Vec<u64>>(0).to_vec();
        bytes.push(253); // varint tag for a u64 length
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(matches!(
            unseal::<_, Vec<u64>>(&Bincode, &bytes, 1 << 20),
            Err(DecodeError::Payload(_))
        ));
    }

    #[test]
    fn size_limit_applies_on_write_and_read() {
        let big = vec![1u8; 5000];
        assert!(matches!(
            seal(&Bincode, &big, 0, 1000),
            Err(crate::Error::ValueTooLarge { limit: 1000, .. })
        ));
        let bytes = seal(&Bincode, &big, 0, 1 << 20).unwrap();
        assert!(matches!(
            unseal::<_, Vec<u8>>(&Bincode, &bytes, 1000),
            Err(DecodeError::TooLarge { limit: 1000, .. })
        ));
    }

    #[test]
    fn encoded_len_matches_encoding() {
        let mut out = Vec::new();
        Bincode.encode_into(&user(), &mut out).unwrap();
        assert_eq!(Bincode.encoded_len(&user()), Some(out.len()));
    }
}
