//! How values are turned into bytes for Redis, and back: the envelope, the
//! [`Codec`] trait that encodes the payload, and the node's resolved codec.
//!
//! Every value stored in Redis is wrapped in a small versioned *envelope*:
//!
//! ```text
//! byte 0       magic 0xCB (a cachenode value)
//! byte 1       envelope version (2)
//! byte 2       codec format id: 1 = bincode 2 (standard config),
//!              2 = MessagePack (rmp-serde, structs as maps),
//!              3..=63 reserved for cachenode, 64..=255 a user's codec
//! byte 3       flags (reserved, 0)
//! bytes 4..12  absolute expiry, Unix milliseconds, little endian (0 = never)
//! bytes 12..20 type fingerprint of the value, little endian (see below)
//! bytes 20..   the payload, encoded by the codec
//! ```
//!
//! The expiry travels with the value so a Redis hit knows how long it may keep
//! the value in RAM without a second round trip (`PTTL`). Decoding checks every
//! header field and decodes the payload under a size limit and a nesting
//! limit, so bytes planted in Redis by anything else are refused without
//! panicking, allocating without bound or exhausting the stack.
//!
//! # Codecs
//!
//! A node encodes every value it stores with one codec, chosen at build
//! ([`CacheNodeBuilder::codec`](crate::CacheNodeBuilder::codec), default
//! [`Bincode`]): the built-in [`Bincode`] and `MsgPack` (feature
//! `msgpack`), or a user's type implementing [`Codec`] with a format id in
//! [`USER_CODEC_IDS`]. A user's codec claiming a reserved id is refused at
//! build ([`Error::Config`](crate::Error::Config)).
//!
//! The format id is checked on every read, before the payload is looked at:
//! a value written with another codec (a node of the namespace configured
//! differently, the fleet half-way through a change of codec) is a counted
//! miss, never a misread. Like a value of another type, it is left in
//! Redis: it is sound, and the nodes of its codec read it well (removing it
//! would make two halves of a fleet delete each other's values, each removal
//! a bus message). The reader computes its own value or is given one, and
//! its write replaces the other (a cached function's store, a `set`; not a
//! `fill`, which writes only where Redis holds nothing, so that key misses on
//! the reader until the value expires or is written over).
//!
//! The codec is for values only. What cachenode writes for itself (the
//! argument encodings hashed into function keys, bus messages, build jobs,
//! recorded arguments) is always bincode, so nodes with different codecs
//! still agree on every key and hear each other's invalidations.
//!
//! ## Why the trait looks the way it does
//!
//! A node holds its codec as an `Arc<dyn Codec>`, so the trait must be
//! object safe, and serde's `Serialize` / `Deserialize` are generic. The
//! trait takes the value as a [`ValueRef`] (any serde value behind
//! [erased-serde](https://docs.rs/erased-serde)'s object-safe `Serialize`;
//! it implements `serde::Serialize`) and returns it through a [`ValueSlot`]
//! (which takes the codec's own `serde::Deserializer` and runs the
//! requested type's `Deserialize` through erased-serde's object-safe
//! `Deserializer`). A codec implements it with its format's ordinary serde
//! entry points and never names erased-serde. The cost is a virtual call
//! per serde event (each field, each element). The built-in codecs skip it:
//! a node whose codec is [`Bincode`] or `MsgPack` (recognised by type when
//! the node is built) calls the codec's serde functions directly, typed, as
//! before this trait was object safe ([`NodeCodec`]).
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
//!
//! # The nesting limit
//!
//! serde reads a recursive type (`enum Tree { Leaf(u64), Node(Box<Tree>) }`,
//! `struct Link { next: Option<Box<Link>> }`) by recursing once per level of
//! the bytes, so a payload planted a hundred thousand levels deep would
//! overflow the reading thread's stack and abort the process. Every decode
//! of a value, whatever the codec, runs under [`MAX_DECODE_DEPTH`] (128
//! levels): an adapter between the type's `Deserialize` and the codec's
//! `Deserializer` (`codec/depth.rs`) counts the levels and fails the read
//! past the limit, before the deeper level is read. The read is a counted
//! miss (reason `too_deep`) and the value is removed, as a corrupt one is.
//! The built-in codecs' typed paths wrap their deserializer in it
//! (bincode's through its seeded slice decoder); a codec of yours gets it
//! from [`ValueSlot::deserialize`], so it needs no limit of its own. What
//! cachenode decodes for itself with bincode (bus messages, build jobs,
//! the arguments of jobs and refreshes) runs under the same limit. See
//! [`MAX_DECODE_DEPTH`] for how levels are counted and why 128.

use std::any::Any;
use std::ops::RangeInclusive;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

mod bincode;
mod depth;
#[cfg(feature = "msgpack")]
mod msgpack;

pub use self::bincode::Bincode;
pub(crate) use self::bincode::{decode as bincode_decode, encode_into as bincode_encode_into};
pub(crate) use self::depth::DepthLimit;
use self::depth::Erased;
pub use self::depth::MAX_DECODE_DEPTH;
#[cfg(feature = "msgpack")]
pub use self::msgpack::MsgPack;

/// Length of the envelope header in bytes.
pub(crate) const HEADER_LEN: usize = 20;
const MAGIC: u8 = 0xCB;
/// The envelope version this build writes and reads (1 had no type
/// fingerprint).
pub(crate) const ENVELOPE_VERSION: u8 = 2;

/// The format ids a user's [`Codec`] may take: 64 to 255. Ids below are
/// cachenode's (1 [`Bincode`], 2 `MsgPack`, the rest reserved); a user's
/// codec that claims one is refused at build with
/// [`Error::Config`](crate::Error::Config).
pub const USER_CODEC_IDS: RangeInclusive<u8> = 64..=255;

/// The type fingerprint of `T` (see the [module docs](self)): the XXH3-64
/// hash of its [`type_name`](std::any::type_name).
pub(crate) fn type_fingerprint<T: ?Sized>() -> u64 {
    xxhash_rust::xxh3::xxh3_64(std::any::type_name::<T>().as_bytes())
}

/// A serialization format for the values a node stores in Redis: the
/// built-in [`Bincode`] (the default) and `MsgPack` (feature `msgpack`),
/// or your own, given to
/// [`CacheNodeBuilder::codec`](crate::CacheNodeBuilder::codec).
///
/// Every value's envelope records the codec's [format
/// id](Codec::format_id), and a read checks it first: a value written with
/// another codec is a counted miss
/// ([`NodeStats::decode_failures`](crate::NodeStats::decode_failures), the
/// reason `other_codec`), never a misread. Your codec's id must be in
/// [`USER_CODEC_IDS`], and stay the same as long as values it wrote may be
/// in Redis: nodes of one namespace should share a codec.
///
/// The trait is object safe: the value to encode comes as a [`ValueRef`],
/// which implements `serde::Serialize`, and the decoded value goes into a
/// [`ValueSlot`], which takes your format's `serde::Deserializer`. Only
/// values go through it; keys and the bus are always bincode.
///
/// # Example: a JSON codec
///
/// ```
/// use cachenode::{Codec, ValueRef, ValueSlot};
///
/// #[derive(Debug)]
/// struct Json;
///
/// impl Codec for Json {
///     fn format_id(&self) -> u8 {
///         64
///     }
///     fn name(&self) -> &str {
///         "json"
///     }
///     fn encode(&self, value: ValueRef<'_>, out: &mut Vec<u8>) -> Result<(), String> {
///         serde_json::to_writer(out, &value).map_err(|e| e.to_string())
///     }
///     fn decode(&self, bytes: &[u8], _limit: usize, slot: ValueSlot<'_>) -> Result<(), String> {
///         let mut de = serde_json::Deserializer::from_slice(bytes);
///         slot.deserialize(&mut de).map_err(|e| e.to_string())?;
///         de.end().map_err(|e| e.to_string()) // no trailing bytes
///     }
/// }
///
/// let json: &dyn Codec = &Json;
/// let mut bytes = Vec::new();
/// json.encode_value(&vec![1u8, 2], &mut bytes).unwrap();
/// assert_eq!(bytes, b"[1,2]");
/// assert_eq!(json.decode_value::<Vec<u8>>(&bytes, 1 << 20), Ok(vec![1, 2]));
///
/// # async fn build() -> cachenode::Result<()> {
/// let node = cachenode::CacheNode::builder().codec(Json).build().await?;
/// # Ok(()) }
/// ```
pub trait Codec: Any + Send + Sync {
    /// The id written into every envelope this codec encodes (byte 2): for
    /// your codec, one of [`USER_CODEC_IDS`]. It must not change while values
    /// written with it may be read.
    fn format_id(&self) -> u8;

    /// A short name for logs and errors (`"bincode"`, `"msgpack"`).
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }

    /// Appends the encoding of `value` to `out`.
    ///
    /// # Errors
    /// A message saying why the value cannot be encoded; the write fails
    /// with [`Error::Encode`](crate::Error::Encode).
    fn encode(&self, value: ValueRef<'_>, out: &mut Vec<u8>) -> Result<(), String>;

    /// Decodes the whole of `bytes` into `slot`, by handing
    /// [`ValueSlot::deserialize`] a deserializer over `bytes`.
    ///
    /// `bytes` comes from Redis and may be anything: a codec must refuse
    /// trailing bytes after the value, and must not allocate much more than
    /// `limit` (the node's [value
    /// limit](crate::CacheNodeBuilder::max_value_bytes); `bytes` is never
    /// longer) whatever lengths the bytes claim, nor panic. How deep the
    /// value nests is the slot's to bound ([`MAX_DECODE_DEPTH`]), not the
    /// codec's.
    ///
    /// # Errors
    /// A message saying why `bytes` is not a value of the requested type:
    /// the read is a counted miss, and the value is removed from Redis.
    /// Returning `Ok` without having called `slot` is such an error too.
    fn decode(&self, bytes: &[u8], limit: usize, slot: ValueSlot<'_>) -> Result<(), String>;

    /// The encoded size of `value` in bytes, used to weigh RAM entries that
    /// are never written to Redis; `None` when it cannot be encoded. By
    /// default, the length of [`encode`](Self::encode)'s output.
    fn encoded_len(&self, value: ValueRef<'_>) -> Option<usize> {
        let mut out = Vec::new();
        self.encode(value, &mut out).ok()?;
        Some(out.len())
    }
}

impl dyn Codec {
    /// Encodes `value` through this codec's object-safe methods (the path a
    /// node takes for a codec of yours), appending to `out`.
    ///
    /// # Errors
    /// The codec's message when the value cannot be encoded.
    pub fn encode_value<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        self.encode(ValueRef::new(&SizedRef(value)), out)
    }

    /// Decodes the whole of `bytes` as a `T` through this codec's object-safe
    /// methods (the path a node takes for a codec of yours).
    ///
    /// # Errors
    /// The codec's message when `bytes` is not a `T`.
    pub fn decode_value<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
        limit: usize,
    ) -> Result<T, String> {
        self.decode_value_under(bytes, limit, &DepthLimit::default())
    }

    /// [`decode_value`](Self::decode_value) under `depth`, which tells
    /// afterwards whether the value nested too deep.
    pub(crate) fn decode_value_under<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
        limit: usize,
        depth: &DepthLimit,
    ) -> Result<T, String> {
        let mut value = None;
        let mut fill = |de: &mut dyn erased_serde::Deserializer<'_>| {
            value = Some(erased_serde::deserialize::<T>(de)?);
            Ok(())
        };
        let slot = ValueSlot {
            fill: &mut fill,
            depth,
        };
        self.decode(bytes, limit, slot)?;
        value.ok_or_else(|| format!("codec {} decoded no value", self.name()))
    }
}

/// The value a [`Codec`] encodes: any serde value, behind an object-safe
/// `Serialize`. It implements [`serde::Serialize`]: hand it to your format's
/// serializer.
#[derive(Clone, Copy)]
pub struct ValueRef<'a>(&'a dyn erased_serde::Serialize);

impl<'a> ValueRef<'a> {
    /// `value`, to be encoded.
    pub fn new<T: Serialize>(value: &'a T) -> Self {
        ValueRef(value)
    }
}

impl Serialize for ValueRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl std::fmt::Debug for ValueRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ValueRef")
    }
}

/// Where a [`Codec`] puts the value it decodes: hand
/// [`deserialize`](Self::deserialize) your format's `serde::Deserializer`,
/// and the type the node asked for is read from it, under the nesting
/// limit [`MAX_DECODE_DEPTH`].
pub struct ValueSlot<'a> {
    fill: &'a mut dyn FnMut(
        &mut dyn erased_serde::Deserializer<'_>,
    ) -> Result<(), erased_serde::Error>,
    depth: &'a DepthLimit,
}

impl ValueSlot<'_> {
    /// Reads the requested value from `deserializer`, refusing a value that
    /// nests deeper than [`MAX_DECODE_DEPTH`] levels whatever the format
    /// (the read is then counted as `too_deep`).
    ///
    /// # Errors
    /// The deserializer's error when its input is not a value of the
    /// requested type, or nests too deep.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<(), D::Error> {
        let mut erased = <dyn erased_serde::Deserializer<'de>>::erase(
            self.depth.wrap::<Erased, D>(deserializer),
        );
        (self.fill)(&mut erased).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Debug for ValueSlot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ValueSlot")
    }
}

/// A possibly unsized value, made sized so that it can stand behind
/// erased-serde's `dyn Serialize`.
struct SizedRef<'a, T: ?Sized>(&'a T);

impl<T: Serialize + ?Sized> Serialize for SizedRef<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// How a node runs its codec: typed for the built-in ones, through the
/// object-safe trait for a user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Bincode,
    #[cfg(feature = "msgpack")]
    MsgPack,
    Erased,
}

/// A node's codec, resolved when the node is built: the `Arc<dyn Codec>`
/// it was given, its format id (read once), and whether it is a built-in
/// codec run on the typed path (see the [module docs](self)).
#[derive(Clone)]
pub(crate) struct NodeCodec {
    codec: Arc<dyn Codec>,
    format_id: u8,
    path: Path,
}

impl Default for NodeCodec {
    fn default() -> Self {
        NodeCodec::new(Arc::new(Bincode))
    }
}

impl std::fmt::Debug for NodeCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCodec")
            .field("name", &self.codec.name())
            .field("format_id", &self.format_id)
            .field("path", &self.path)
            .finish()
    }
}

impl NodeCodec {
    /// Resolves `codec`; [`check`](Self::check) says whether a node may
    /// use it.
    pub(crate) fn new(codec: Arc<dyn Codec>) -> Self {
        let any: &dyn Any = &*codec;
        let path = if any.is::<Bincode>() {
            Path::Bincode
        } else {
            #[cfg(feature = "msgpack")]
            if any.is::<MsgPack>() {
                return NodeCodec {
                    format_id: MsgPack::FORMAT_ID,
                    path: Path::MsgPack,
                    codec,
                };
            }
            Path::Erased
        };
        NodeCodec {
            format_id: codec.format_id(),
            path,
            codec,
        }
    }

    /// Refuses a user's codec that claims one of cachenode's format ids.
    pub(crate) fn check(&self) -> crate::Result<()> {
        if self.path == Path::Erased && !USER_CODEC_IDS.contains(&self.format_id) {
            return Err(crate::Error::Config(format!(
                "codec {:?} claims format id {}, which is reserved for cachenode's codecs; \
                 a codec of your own takes an id in {}..={}",
                self.codec.name(),
                self.format_id,
                USER_CODEC_IDS.start(),
                USER_CODEC_IDS.end()
            )));
        }
        Ok(())
    }

    /// The id written into byte 2 of every envelope.
    #[inline]
    pub(crate) fn format_id(&self) -> u8 {
        self.format_id
    }

    /// The codec's name, for logs.
    pub(crate) fn name(&self) -> &str {
        self.codec.name()
    }

    /// Appends the encoding of `value` to `out`.
    pub(crate) fn encode_into<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        match self.path {
            Path::Bincode => bincode::encode_into(value, out),
            #[cfg(feature = "msgpack")]
            Path::MsgPack => msgpack::encode_into(value, out),
            Path::Erased => self.codec.encode_value(value, out),
        }
    }

    /// Decodes the whole of `bytes` as a `T`, allocating at most about
    /// `limit` bytes, nesting at most [`MAX_DECODE_DEPTH`] levels.
    pub(crate) fn decode<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
        limit: usize,
    ) -> Result<T, DecodeError> {
        let depth = DepthLimit::default();
        let decoded = match self.path {
            Path::Bincode => bincode::decode_under(bytes, limit, &depth),
            #[cfg(feature = "msgpack")]
            Path::MsgPack => msgpack::decode(bytes, &depth),
            Path::Erased => self.codec.decode_value_under(bytes, limit, &depth),
        };
        decoded.map_err(|e| {
            if depth.exceeded() {
                DecodeError::TooDeep {
                    max: MAX_DECODE_DEPTH,
                }
            } else {
                DecodeError::Payload(e)
            }
        })
    }

    /// The encoded size of `value`, for RAM-only entries.
    pub(crate) fn encoded_len<T: Serialize + ?Sized>(&self, value: &T) -> Option<usize> {
        match self.path {
            Path::Bincode => bincode::encoded_len(value),
            #[cfg(feature = "msgpack")]
            Path::MsgPack => msgpack::encoded_len(value),
            Path::Erased => self.codec.encoded_len(ValueRef::new(&SizedRef(value))),
        }
    }
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
    /// Written with another codec than this node's. The value is sound:
    /// nodes of its codec read it.
    OtherCodec {
        /// The format id in the envelope.
        found: u8,
        /// This node's codec's format id.
        expected: u8,
    },
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
    /// The payload nests deeper than the decode limit
    /// ([`MAX_DECODE_DEPTH`]): refused before it exhausts the stack.
    TooDeep { max: usize },
    /// The payload is not a valid encoding of the requested type.
    Payload(String),
}

impl DecodeError {
    /// A short, bounded label for metrics and logs.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            DecodeError::NotAnEnvelope => "not_an_envelope",
            DecodeError::UnknownVersion(_) => "unknown_version",
            DecodeError::OtherCodec { .. } => "other_codec",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::TooDeep { .. } => "too_deep",
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
            DecodeError::OtherCodec { found, expected } => write!(
                f,
                "written with codec format {found}, this node's codec is format {expected}"
            ),
            DecodeError::WrongType { found, expected } => write!(
                f,
                "written as another type (fingerprint {found:016x}, expected {expected:016x})"
            ),
            DecodeError::TooLarge { size, limit } => {
                write!(f, "{size} bytes exceed the limit of {limit}")
            }
            DecodeError::TooDeep { max } => {
                write!(f, "the payload nests deeper than {max} levels")
            }
            DecodeError::Payload(e) => write!(f, "payload does not decode: {e}"),
        }
    }
}

/// The header of an envelope for a `T` encoded with codec `format_id`,
/// expiring at `expires_at_ms`.
pub(crate) fn header<T: ?Sized>(format_id: u8, expires_at_ms: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&[MAGIC, ENVELOPE_VERSION, format_id, 0]);
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
pub(crate) fn seal<T: Serialize + ?Sized>(
    codec: &NodeCodec,
    value: &T,
    expires_at_ms: u64,
    limit: usize,
) -> crate::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&header::<T>(codec.format_id(), expires_at_ms));
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

/// Checks the header of `bytes` (all but the type) against codec
/// `format_id` and returns it with the payload.
pub(crate) fn open(bytes: &[u8], format_id: u8) -> Result<(Header, &[u8]), DecodeError> {
    if bytes.len() < 2 || bytes[0] != MAGIC {
        return Err(DecodeError::NotAnEnvelope);
    }
    if bytes[1] != ENVELOPE_VERSION {
        return Err(DecodeError::UnknownVersion(bytes[1]));
    }
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::NotAnEnvelope);
    }
    if bytes[2] != format_id {
        return Err(DecodeError::OtherCodec {
            found: bytes[2],
            expected: format_id,
        });
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
/// A value written with another codec ([`DecodeError::OtherCodec`]) or as
/// another type ([`DecodeError::WrongType`]) is refused before the size
/// limit and the payload: it says nothing about the value, which other
/// readers may read well.
pub(crate) fn unseal<T: DeserializeOwned>(
    codec: &NodeCodec,
    bytes: &[u8],
    limit: usize,
) -> Result<(Header, T), DecodeError> {
    let (header, payload) = open(bytes, codec.format_id())?;
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
    let value = codec.decode(payload, limit)?;
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

    fn bin() -> NodeCodec {
        NodeCodec::default()
    }

    /// Every built-in codec, on its typed path and through the trait.
    fn codecs() -> Vec<NodeCodec> {
        let all = vec![
            bin(),
            erased(Arc::new(Bincode)),
            #[cfg(feature = "msgpack")]
            NodeCodec::new(Arc::new(MsgPack)),
            #[cfg(feature = "msgpack")]
            erased(Arc::new(MsgPack)),
        ];
        all
    }

    /// `codec` run through the object-safe trait, as a user's codec is.
    fn erased(codec: Arc<dyn Codec>) -> NodeCodec {
        NodeCodec {
            format_id: codec.format_id(),
            path: Path::Erased,
            codec,
        }
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
        let bytes = seal(&bin(), &user(), 1234, 1 << 20).unwrap();
        let (h, u): (Header, User) = unseal(&bin(), &bytes, 1 << 20).unwrap();
        assert_eq!(h.expires_at_ms, 1234);
        assert_eq!(u, user());
    }

    #[test]
    fn refuses_foreign_and_future_bytes() {
        assert_eq!(
            unseal::<User>(&bin(), b"hello world, plain", 1 << 20).unwrap_err(),
            DecodeError::NotAnEnvelope
        );
        assert_eq!(
            unseal::<User>(&bin(), &[], 1 << 20).unwrap_err(),
            DecodeError::NotAnEnvelope
        );
        let mut bytes = seal(&bin(), &user(), 0, 1 << 20).unwrap();
        bytes[1] = 9;
        assert_eq!(
            unseal::<User>(&bin(), &bytes, 1 << 20).unwrap_err(),
            DecodeError::UnknownVersion(9)
        );
        bytes[1] = ENVELOPE_VERSION;
        bytes[2] = 77;
        assert_eq!(
            unseal::<User>(&bin(), &bytes, 1 << 20).unwrap_err(),
            DecodeError::OtherCodec {
                found: 77,
                expected: 1
            }
        );
    }

    #[test]
    fn truncated_and_mistyped_payloads_are_errors() {
        let bytes = seal(&bin(), &user(), 0, 1 << 20).unwrap();
        let cut = &bytes[..bytes.len() - 3];
        assert!(matches!(
            unseal::<User>(&bin(), cut, 1 << 20),
            Err(DecodeError::Payload(_))
        ));
        // A u8 would read the first byte of the User and leave trailing
        // bytes: the payload decoder refuses it...
        assert!(bin().decode::<u8>(&bytes[HEADER_LEN..], 1 << 20).is_err());
        // ...and the fingerprint refuses it before the payload is read.
        assert!(matches!(
            unseal::<u8>(&bin(), &bytes, 1 << 20),
            Err(DecodeError::WrongType { .. })
        ));
    }

    #[test]
    fn a_value_read_as_another_type_is_refused_even_when_its_bytes_fit() {
        // bincode writes a u64 0 as the byte 0: also an empty String.
        let bytes = seal(&bin(), &0u64, 0, 1 << 20).unwrap();
        assert_eq!(
            bin().decode::<String>(&bytes[HEADER_LEN..], 1 << 20),
            Ok(String::new())
        );
        assert_eq!(
            unseal::<String>(&bin(), &bytes, 1 << 20).unwrap_err(),
            DecodeError::WrongType {
                found: type_fingerprint::<u64>(),
                expected: type_fingerprint::<String>(),
            }
        );
        assert_eq!(unseal::<u64>(&bin(), &bytes, 1 << 20).unwrap().1, 0);
        // The same payload under an older envelope without a fingerprint.
        let mut v1 = vec![MAGIC, 1, Bincode::FORMAT_ID, 0];
        v1.extend_from_slice(&0u64.to_le_bytes());
        v1.push(0);
        assert_eq!(
            unseal::<u64>(&bin(), &v1, 1 << 20).unwrap_err(),
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
        let bytes = seal(&bin(), &user(), 0, 1 << 20).unwrap();
        assert_eq!(
            bytes[12..20],
            type_fingerprint::<User>().to_le_bytes(),
            "bytes 12..20"
        );
    }

    #[test]
    fn hostile_length_prefix_does_not_allocate_unbounded() {
        // A Vec<u64> claiming 2^60 elements in a 20-byte payload.
        let mut bytes = header::<Vec<u64>>(Bincode::FORMAT_ID, 0).to_vec();
        bytes.push(253); // varint tag for a u64 length
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(matches!(
            unseal::<Vec<u64>>(&bin(), &bytes, 1 << 20),
            Err(DecodeError::Payload(_))
        ));
    }

    #[test]
    fn size_limit_applies_on_write_and_read() {
        let big = vec![1u8; 5000];
        assert!(matches!(
            seal(&bin(), &big, 0, 1000),
            Err(crate::Error::ValueTooLarge { limit: 1000, .. })
        ));
        let bytes = seal(&bin(), &big, 0, 1 << 20).unwrap();
        assert!(matches!(
            unseal::<Vec<u8>>(&bin(), &bytes, 1000),
            Err(DecodeError::TooLarge { limit: 1000, .. })
        ));
    }

    #[test]
    fn encoded_len_matches_encoding() {
        for codec in codecs() {
            let mut out = Vec::new();
            codec.encode_into(&user(), &mut out).unwrap();
            assert_eq!(codec.encoded_len(&user()), Some(out.len()), "{codec:?}");
        }
    }

    #[test]
    fn every_codec_round_trips_on_both_paths() {
        for codec in codecs() {
            let bytes = seal(&codec, &user(), 99, 1 << 20).unwrap();
            assert_eq!(bytes[2], codec.format_id(), "{codec:?}");
            let (h, u): (Header, User) = unseal(&codec, &bytes, 1 << 20).unwrap();
            assert_eq!((h.expires_at_ms, u), (99, user()), "{codec:?}");
            // An unsized value (under the fingerprint of `str`), and a cut
            // payload.
            let s = seal(&codec, "text", 0, 1 << 20).unwrap();
            assert_eq!(
                codec.decode::<String>(&s[HEADER_LEN..], 1 << 20).unwrap(),
                "text"
            );
            assert!(
                matches!(
                    unseal::<User>(&codec, &bytes[..bytes.len() - 1], 1 << 20),
                    Err(DecodeError::Payload(_))
                ),
                "{codec:?}"
            );
            let mut long = bytes.clone();
            long.push(0);
            assert!(
                matches!(
                    unseal::<User>(&codec, &long, 1 << 20),
                    Err(DecodeError::Payload(_))
                ),
                "{codec:?}: trailing bytes"
            );
        }
    }

    #[test]
    fn the_typed_and_erased_paths_write_the_same_bytes() {
        let all = codecs();
        for pair in all.chunks(2) {
            let typed = seal(&pair[0], &user(), 5, 1 << 20).unwrap();
            let erased = seal(&pair[1], &user(), 5, 1 << 20).unwrap();
            assert_eq!(typed, erased, "{pair:?}");
            assert_ne!(pair[0].path, Path::Erased, "built-in codecs run typed");
            assert_eq!(pair[1].path, Path::Erased);
        }
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn a_value_written_with_another_codec_is_refused_before_its_payload() {
        let msgpack = NodeCodec::new(Arc::new(MsgPack));
        let bytes = seal(&bin(), &user(), 0, 1 << 20).unwrap();
        assert_eq!(
            unseal::<User>(&msgpack, &bytes, 1 << 20).unwrap_err(),
            DecodeError::OtherCodec {
                found: 1,
                expected: 2
            }
        );
        let bytes = seal(&msgpack, &user(), 0, 1 << 20).unwrap();
        assert_eq!(
            unseal::<User>(&bin(), &bytes, 1 << 20).unwrap_err(),
            DecodeError::OtherCodec {
                found: 2,
                expected: 1
            }
        );
        assert_eq!(
            DecodeError::OtherCodec {
                found: 2,
                expected: 1
            }
            .label(),
            "other_codec"
        );
    }

    #[test]
    fn a_corrupt_value_deep_through_the_trait_is_refused_with_a_short_message() {
        // A u64 cut short under `levels` Nodes, decoded through the trait
        // as a user's codec is. Each level converts the error through
        // erased-serde and back, and bincode's Display (its Debug) escapes
        // the message again each time: left alone, the message grows
        // fourfold a level (33 MB at 11 levels, and as many seconds).
        #[derive(Debug, Serialize, Deserialize)]
        enum Tree {
            Leaf(u64),
            Node(Box<Tree>),
        }
        let erased: &dyn Codec = &Bincode;
        for levels in [12, 100] {
            let value = (0..levels).fold(Tree::Leaf(u64::MAX), |t, _| Tree::Node(Box::new(t)));
            let mut bytes = Vec::new();
            bincode::encode_into(&value, &mut bytes).unwrap();
            bytes.truncate(bytes.len() - 4);
            let e = erased.decode_value::<Tree>(&bytes, 1 << 20).unwrap_err();
            assert!(
                e.len() < 100,
                "{levels} levels: a message of {} bytes",
                e.len()
            );
            assert_eq!(
                e,
                r#"OtherString("OtherString(\"UnexpectedEnd { additional: 4 }\")")"#
            );
        }
    }

    #[derive(Debug)]
    struct Claims(u8);

    impl Codec for Claims {
        fn format_id(&self) -> u8 {
            self.0
        }
        fn encode(&self, value: ValueRef<'_>, out: &mut Vec<u8>) -> Result<(), String> {
            bincode::encode_into(&value, out)
        }
        fn decode(&self, _: &[u8], _: usize, _: ValueSlot<'_>) -> Result<(), String> {
            // Never fills the slot.
            Ok(())
        }
    }

    #[test]
    fn a_users_codec_must_take_an_id_of_its_range() {
        for id in [0, 1, 2, 3, 63] {
            let e = NodeCodec::new(Arc::new(Claims(id))).check().unwrap_err();
            assert!(
                matches!(&e, crate::Error::Config(m) if m.contains(&format!("format id {id},")) && m.contains("64..=255")),
                "{e}"
            );
        }
        for id in [64, 200, 255] {
            NodeCodec::new(Arc::new(Claims(id))).check().unwrap();
        }
        NodeCodec::new(Arc::new(Bincode)).check().unwrap();
        #[cfg(feature = "msgpack")]
        NodeCodec::new(Arc::new(MsgPack)).check().unwrap();
    }

    #[test]
    fn a_codec_that_fills_no_value_is_an_error_not_a_panic() {
        let codec = NodeCodec::new(Arc::new(Claims(64)));
        let bytes = seal(&codec, &5u32, 0, 1 << 20).unwrap();
        assert_eq!(bytes[2], 64);
        assert!(matches!(
            unseal::<u32>(&codec, &bytes, 1 << 20),
            Err(DecodeError::Payload(m)) if m.contains("decoded no value")
        ));
    }
}
