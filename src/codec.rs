//! How values are turned into bytes for Redis, and back.
//!
//! Every value stored in Redis is wrapped in a small versioned *envelope*:
//!
//! ```text
//! byte 0      magic 0xCB (a cachenode value)
//! byte 1      envelope version (1)
//! byte 2      codec format id (1 = bincode 2, standard config)
//! byte 3      flags (reserved, 0)
//! bytes 4..12 absolute expiry, Unix milliseconds, little endian (0 = never)
//! bytes 12..  the payload, encoded by the codec
//! ```
//!
//! The expiry travels with the value so a Redis hit knows how long it may keep
//! the value in RAM without a second round trip (`PTTL`). Decoding checks every
//! header field and decodes the payload under a size limit, so bytes planted in
//! Redis by anything else are refused without panicking or allocating without
//! bound.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Length of the envelope header in bytes.
pub(crate) const HEADER_LEN: usize = 12;
const MAGIC: u8 = 0xCB;
/// The envelope version this build writes and reads.
pub(crate) const ENVELOPE_VERSION: u8 = 1;

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

    fn encode_into<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
            .map(|_| ())
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
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Payload(_) => "payload",
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::NotAnEnvelope => write!(f, "not a cachenode envelope"),
            DecodeError::UnknownVersion(v) => write!(f, "unknown envelope version {v}"),
            DecodeError::UnknownFormat(c) => write!(f, "unknown codec format {c}"),
            DecodeError::TooLarge { size, limit } => {
                write!(f, "{size} bytes exceed the limit of {limit}")
            }
            DecodeError::Payload(e) => write!(f, "payload does not decode: {e}"),
        }
    }
}

/// Encodes `value` in an envelope expiring at `expires_at_ms` (0 = never).
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
    out.extend_from_slice(&[MAGIC, ENVELOPE_VERSION, C::FORMAT, 0]);
    out.extend_from_slice(&expires_at_ms.to_le_bytes());
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
}

/// Checks the header of `bytes` and returns it with the payload.
pub(crate) fn open<C: Codec>(bytes: &[u8], limit: usize) -> Result<(Header, &[u8]), DecodeError> {
    if bytes.len() < HEADER_LEN || bytes[0] != MAGIC {
        return Err(DecodeError::NotAnEnvelope);
    }
    if bytes[1] != ENVELOPE_VERSION {
        return Err(DecodeError::UnknownVersion(bytes[1]));
    }
    if bytes[2] != C::FORMAT {
        return Err(DecodeError::UnknownFormat(bytes[2]));
    }
    let payload = &bytes[HEADER_LEN..];
    if payload.len() > limit {
        return Err(DecodeError::TooLarge {
            size: payload.len(),
            limit,
        });
    }
    let mut expiry = [0u8; 8];
    expiry.copy_from_slice(&bytes[4..12]);
    Ok((
        Header {
            expires_at_ms: u64::from_le_bytes(expiry),
        },
        payload,
    ))
}

/// Opens an envelope and decodes its payload as a `T`.
pub(crate) fn unseal<C: Codec, T: DeserializeOwned>(
    codec: &C,
    bytes: &[u8],
    limit: usize,
) -> Result<(Header, T), DecodeError> {
    let (header, payload) = open::<C>(bytes, limit)?;
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
        // A u8 reads the first byte of the User and leaves trailing bytes.
        assert!(matches!(
            unseal::<_, u8>(&Bincode, &bytes, 1 << 20),
            Err(DecodeError::Payload(_))
        ));
    }

    #[test]
    fn hostile_length_prefix_does_not_allocate_unbounded() {
        // A Vec<u64> claiming 2^60 elements in a 20-byte payload.
        let mut bytes = vec![0xCB, ENVELOPE_VERSION, Bincode::FORMAT, 0];
        bytes.extend_from_slice(&0u64.to_le_bytes());
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
