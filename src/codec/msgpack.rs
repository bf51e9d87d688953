//! MessagePack values, [`MsgPack`] (feature `msgpack`): rmp-serde, structs
//! written as maps with their field names.
//!
//! MessagePack describes itself: every value starts with a marker that says
//! its kind and, for strings, binaries and containers, its length. A hostile
//! length costs nothing here: before serde sees the bytes, [`check`] walks
//! them once and refuses any length longer than the bytes left, and any
//! trailing byte. So every collection the decoder pre-allocates for holds at
//! most as many elements as the payload has bytes, and the payload itself is
//! under the node's size limit. Values nest at most
//! [`MAX_DECODE_DEPTH`](super::MAX_DECODE_DEPTH) levels, as with every
//! codec: the node's depth adapter counts them (rmp-serde's own limit
//! counts arrays and maps only, not the single-entry maps of enum variants,
//! so a hostile `{"Node": {"Node": ...}}` went under it).

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::depth::Typed;
use super::{Codec, DepthLimit, ValueRef, ValueSlot};

/// MessagePack through rmp-serde, format id 2 (feature `msgpack`, on by
/// default). Structs are written as maps with their field names, so a field
/// added with `#[serde(default)]` still reads values written before it, and
/// programs in other languages can read the payload (after the envelope's
/// 20-byte header). Larger and a little slower than [`Bincode`](crate::Bincode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsgPack;

impl MsgPack {
    /// The format id of [`MsgPack`] values.
    pub const FORMAT_ID: u8 = 2;
}

impl Codec for MsgPack {
    fn format_id(&self) -> u8 {
        Self::FORMAT_ID
    }

    fn name(&self) -> &str {
        "msgpack"
    }

    fn encode(&self, value: ValueRef<'_>, out: &mut Vec<u8>) -> Result<(), String> {
        encode_into(&value, out)
    }

    fn decode(&self, bytes: &[u8], _limit: usize, slot: ValueSlot<'_>) -> Result<(), String> {
        check(bytes)?;
        let mut rest = bytes;
        // The slot puts the deserializer under the depth limit.
        slot.deserialize(&mut rmp_serde::Deserializer::new(&mut rest))
            .map_err(|e| e.to_string())?;
        no_trailing_bytes(rest.len())
    }

    fn encoded_len(&self, value: ValueRef<'_>) -> Option<usize> {
        encoded_len(&value)
    }
}

/// Appends the MessagePack encoding of `value` (structs as maps) to `out`.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    rmp_serde::encode::write_named(out, value).map_err(|e| e.to_string())
}

/// Decodes a whole `bytes` slice into a `T` under `depth` (see the [module
/// docs](self) for what bounds its allocations). Trailing bytes are an
/// error.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], depth: &DepthLimit) -> Result<T, String> {
    check(bytes)?;
    let mut rest = bytes;
    let mut de = rmp_serde::Deserializer::new(&mut rest);
    let value = T::deserialize(depth.wrap::<Typed, _>(&mut de)).map_err(|e| e.to_string())?;
    no_trailing_bytes(rest.len())?;
    Ok(value)
}

/// The size of the MessagePack encoding of `value`, without keeping it.
pub(crate) fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Option<usize> {
    let mut count = Count(0);
    rmp_serde::encode::write_named(&mut count, value).ok()?;
    Some(count.0)
}

fn no_trailing_bytes(left: usize) -> Result<(), String> {
    match left {
        0 => Ok(()),
        n => Err(format!("{n} trailing bytes after the value")),
    }
}

/// Counts the bytes written to it.
struct Count(usize);

impl std::io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Checks that `bytes` is exactly one well-formed MessagePack value whose
/// every length fits in the bytes that follow it.
///
/// One pass, no recursion and no allocation: `pending` counts the values
/// still to read (a container adds its elements; a map two per entry). Each
/// value takes at least one byte, so more pending values than bytes left is
/// a length that lies.
pub(crate) fn check(bytes: &[u8]) -> Result<(), String> {
    let mut at = 0usize;
    let mut pending: u64 = 1;
    let short = || "a length runs past the end of the value".to_owned();
    while pending > 0 {
        let marker = *bytes.get(at).ok_or_else(short)?;
        at += 1;
        pending -= 1;
        // (bytes of data after the marker, elements that follow it)
        let (skip, elements): (u64, u64) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (u64::from(marker & 0x1f), 0),
            0xc1 => return Err("the never-used marker 0xc1".to_owned()),
            0xc4 | 0xd9 => (1 + length(bytes, at, 1)?, 0),
            0xc5 | 0xda => (2 + length(bytes, at, 2)?, 0),
            0xc6 | 0xdb => (4 + length(bytes, at, 4)?, 0),
            // ext: length, then a type byte, then the data.
            0xc7 => (1 + 1 + length(bytes, at, 1)?, 0),
            0xc8 => (2 + 1 + length(bytes, at, 2)?, 0),
            0xc9 => (4 + 1 + length(bytes, at, 4)?, 0),
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (2, length(bytes, at, 2)?),
            0xdd => (4, length(bytes, at, 4)?),
            0xde => (2, 2 * length(bytes, at, 2)?),
            0xdf => (4, 2 * length(bytes, at, 4)?),
        };
        let left = (bytes.len() - at) as u64;
        if skip > left {
            return Err(short());
        }
        at += skip as usize;
        pending += elements;
        if pending > left - skip {
            return Err(short());
        }
    }
    no_trailing_bytes(bytes.len() - at)
}

/// The big-endian length of `width` bytes at `at`.
fn length(bytes: &[u8], at: usize, width: usize) -> Result<u64, String> {
    let field = bytes
        .get(at..at + width)
        .ok_or_else(|| "a length runs past the end of the value".to_owned())?;
    Ok(field.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// [`decode`] under the default depth limit.
    fn read<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        decode(bytes, &DepthLimit::default())
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Kind {
        Plain,
        Tagged(u8),
        Named { x: i64 },
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Every {
        u: u64,
        i: i64,
        f: f64,
        s: String,
        bytes: Vec<u8>,
        list: Vec<u32>,
        map: std::collections::BTreeMap<String, i16>,
        none: Option<u8>,
        some: Option<String>,
        kinds: Vec<Kind>,
        unit: (),
        tuple: (bool, char),
    }

    fn every() -> Every {
        Every {
            u: u64::MAX,
            i: i64::MIN,
            f: -0.25,
            s: "ü".repeat(40),
            bytes: vec![0, 255, 7],
            list: (0..300).collect(),
            map: [("a".to_owned(), -1), ("b".to_owned(), 300)].into(),
            none: None,
            some: Some(String::new()),
            kinds: vec![Kind::Plain, Kind::Tagged(3), Kind::Named { x: -70000 }],
            unit: (),
            tuple: (true, '☃'),
        }
    }

    #[test]
    fn every_shape_round_trips_and_passes_the_check() {
        let mut out = Vec::new();
        encode_into(&every(), &mut out).unwrap();
        check(&out).unwrap();
        assert_eq!(read::<Every>(&out).unwrap(), every());
        assert_eq!(encoded_len(&every()), Some(out.len()));
    }

    #[test]
    fn structs_are_maps_with_field_names() {
        #[derive(Serialize)]
        struct Old {
            a: u8,
        }
        #[derive(Deserialize, Debug, PartialEq)]
        struct New {
            a: u8,
            #[serde(default)]
            b: u8,
        }
        let mut out = Vec::new();
        encode_into(&Old { a: 4 }, &mut out).unwrap();
        assert_eq!(out, [0x81, 0xa1, b'a', 4]);
        assert_eq!(read::<New>(&out).unwrap(), New { a: 4, b: 0 });
    }

    #[test]
    fn every_cut_of_a_value_is_refused() {
        let mut out = Vec::new();
        encode_into(&every(), &mut out).unwrap();
        for end in 0..out.len() {
            assert!(check(&out[..end]).is_err(), "cut at {end}");
            assert!(read::<Every>(&out[..end]).is_err(), "cut at {end}");
        }
        out.push(0);
        assert_eq!(check(&out).unwrap_err(), "1 trailing bytes after the value");
        assert!(read::<Every>(&out).is_err());
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Tree(Vec<Tree>);

    /// `depth` arrays nested: one-element ones around an empty one.
    fn nested(depth: usize) -> Vec<u8> {
        let mut bytes = vec![0x91; depth - 1];
        bytes.push(0x90);
        bytes
    }

    #[test]
    fn deep_nesting_is_refused_before_it_exhausts_a_workers_stack() {
        use crate::codec::MAX_DECODE_DEPTH;
        // On a thread with a tokio worker's stack, on both paths. Each
        // array is two levels (the newtype's content, then its element):
        // the innermost of `arrays` is at level 2 * arrays - 1.
        let fits = MAX_DECODE_DEPTH.div_ceil(2);
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let erased: &dyn Codec = &MsgPack;
                for arrays in [1, fits - 1, fits, fits + 1, 100_000] {
                    let bytes = nested(arrays);
                    check(&bytes).unwrap();
                    let typed = read::<Tree>(&bytes);
                    let slot = erased.decode_value::<Tree>(&bytes, 1 << 20);
                    let ok = 2 * arrays - 1 <= MAX_DECODE_DEPTH;
                    assert_eq!(typed.is_ok(), ok, "{arrays}: {typed:?}");
                    assert_eq!(slot.is_ok(), ok, "{arrays}: {slot:?}");
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn lying_lengths_are_refused_before_serde_sees_them() {
        // An array32 of 2^32-1 elements, a map32, a str32 and a bin32 of as
        // many bytes, each with one byte after it.
        for marker in [0xdd, 0xdf, 0xdb, 0xc6] {
            let bytes = [marker, 0xff, 0xff, 0xff, 0xff, 0x00];
            assert!(check(&bytes).is_err(), "{marker:#x}");
        }
        assert!(read::<Vec<u64>>(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x00]).is_err());
        // Nested arrays each claiming 15 elements, in 20 bytes.
        assert!(check(&[0x9f; 20]).is_err());
        assert!(check(&[0xc1]).is_err());
        assert!(check(&[]).is_err());
    }
}
