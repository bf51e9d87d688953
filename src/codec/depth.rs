//! The nesting limit of every decode: a serde adapter around a format's
//! `Deserializer` that counts how deep the value being read nests and fails
//! past [`MAX_DECODE_DEPTH`] levels.
//!
//! serde decodes a recursive type (`enum Tree { Leaf(u64),
//! Node(Box<Tree>) }`) by recursing once per level of the input, so bytes
//! planted in Redis that nest a hundred thousand levels deep would overflow
//! the reading thread's stack, which aborts the process. The adapter stands
//! between the type's `Deserialize` and the format: it wraps the
//! deserializer it is given, every visitor handed to it, and every
//! sequence, map and enum access, `Some` and newtype struct the format hands
//! back. Each value handed out from inside another is one level deeper:
//!
//! * the top value is at level 0;
//! * an element of a sequence, tuple or struct (bincode reads structs as
//!   tuples), a map's key or value, an enum's variant tag and its fields,
//!   the content of `Some` and of a newtype struct are one level below their
//!   container.
//!
//! A value at a level past the limit is refused with the format's own
//! error (`serde::de::Error::custom`) before its `Deserialize` runs, and the
//! limit records that it was reached, so the read is counted as `too_deep`
//! rather than as a corrupt payload. The stack a decode uses is then bounded
//! by the limit times what one level of the type costs, whatever the bytes.
//!
//! Counting every handed-out value, and not only sequences and maps as
//! serde_json does, is what makes the bound hold for any format: a
//! recursion through `Option` (bincode's tag byte 1, then the content)
//! or through a newtype reads no container at all.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::marker::PhantomData;

use serde::de::{
    DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// How deep a value read from Redis may nest: 128 levels. The whole value
/// is at level 0; an element of a sequence, tuple or struct, a map's key or
/// value, an enum's variant and its fields, and the content of `Some` or of
/// a newtype struct are each one level below their container. A value with
/// anything past level 128 is a counted miss (reason `too_deep`), as a
/// corrupt one is, and removed from Redis. The same limit applies to what
/// cachenode decodes for itself (bus messages, build jobs, the arguments
/// of build jobs and refreshes).
///
/// 128 is serde_json's default recursion limit, and far past the shape of a
/// cached value (a struct of vectors of structs is 3 levels; a linked list
/// of `Option<Box<_>>` takes 2 levels a link, a boxed tree 1 or 2 a
/// generation). What bounds it is the stack of the task that reads: a
/// level costs 1.3 to 5.8 KiB of stack in a debug build and 0.2 to 1.2
/// KiB in a release build (measured on three recursive shapes, bincode and
/// MessagePack, typed and through the [`Codec`](crate::Codec) trait; the
/// trait's MessagePack path is the costliest; BENCHMARKS.md has the
/// figures), so a read at the limit needs at most about 730 KiB of a tokio
/// worker's 2 MiB in a debug build, 150 KiB in a release one. Values that nest deeper are written, but
/// read back as misses: keep cached values shallower, or flatten them (a
/// tree as a vector of nodes that name each other by index).
pub const MAX_DECODE_DEPTH: usize = 128;

/// The nesting limit of one decode, and whether the value reached it.
#[derive(Debug)]
pub(crate) struct DepthLimit {
    max: usize,
    exceeded: Cell<bool>,
    /// On the erased path, an error is on its way up, with this message
    /// (see [`Erased`]).
    failing: Cell<bool>,
    message: RefCell<String>,
}

impl Default for DepthLimit {
    fn default() -> Self {
        DepthLimit::new(MAX_DECODE_DEPTH)
    }
}

impl DepthLimit {
    /// A limit of `max` levels below the top value.
    pub(crate) fn new(max: usize) -> Self {
        DepthLimit {
            max,
            exceeded: Cell::new(false),
            failing: Cell::new(false),
            message: RefCell::new(String::new()),
        }
    }

    /// Whether a decode under this limit met a value nested past it.
    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded.get()
    }

    /// `de`, the deserializer of a whole value, under this limit; `M` says
    /// whether erased-serde sits above it ([`Erased`]) or not ([`Typed`]).
    pub(crate) fn wrap<M: Path, D>(&self, de: D) -> Deep<'_, D, M> {
        Deep {
            de,
            level: 0,
            limit: self,
            path: PhantomData,
        }
    }

    /// A seed that deserializes a whole `T` under this limit, on the typed
    /// path (for decoders that take a seed, as bincode's slice decoder
    /// does).
    pub(crate) fn seed<T>(&self) -> Whole<'_, T> {
        Whole(self, PhantomData)
    }

    /// `de` at `level`, or the error that refuses a value that deep.
    #[inline]
    fn at<'de, M: Path, D: Deserializer<'de>>(
        &self,
        level: usize,
        de: D,
    ) -> Result<Deep<'_, D, M>, D::Error> {
        if level > self.max {
            return Err(self.refuse(M::SETTLES));
        }
        Ok(Deep {
            de,
            level,
            limit: self,
            path: PhantomData,
        })
    }

    /// The error of a value nested past the limit, noted as such.
    #[cold]
    #[inline(never)]
    fn refuse<E: serde::de::Error>(&self, settles: bool) -> E {
        self.exceeded.set(true);
        let message = format!("the value nests deeper than {} levels", self.max);
        let e = E::custom(&message);
        if settles {
            // Settled from here up.
            *self.message.borrow_mut() = message;
            self.failing.set(true);
        }
        e
    }

    /// On the erased path, before a value is read: any error seen before
    /// was dealt with by the type that read it, since decoding goes on.
    #[inline]
    fn enter(&self) {
        self.failing.set(false);
    }

    /// On the erased path, after a value is read: an error met here for
    /// the first time is kept and its message remembered; one that comes
    /// from below is replaced by a fresh error of that message.
    #[inline]
    fn leave<T, E: serde::de::Error>(&self, read: Result<T, E>) -> Result<T, E> {
        if read.is_ok() {
            return read;
        }
        read.map_err(|e| self.settle(e))
    }

    #[cold]
    #[inline(never)]
    fn settle<E: serde::de::Error>(&self, e: E) -> E {
        if self.failing.replace(true) {
            E::custom(self.message.borrow().as_str())
        } else {
            *self.message.borrow_mut() = e.to_string();
            e
        }
    }
}

/// Whether erased-serde sits above the adapter, which then settles errors
/// ([`Erased`]); fixed by type, so the typed path pays nothing for it.
pub(crate) trait Path {
    /// Errors are settled on their way up.
    const SETTLES: bool;
}

/// The built-in codecs' typed path: errors climb as they are.
pub(crate) enum Typed {}

impl Path for Typed {
    const SETTLES: bool = false;
}

/// Under a [`ValueSlot`](super::ValueSlot), erased-serde sits above the
/// adapter, and the adapter keeps the size of an error bounded as it climbs
/// out of a deep value. Each level there converts the error to
/// erased-serde's and back to the format's, through their `Display`;
/// bincode's `Display` is its `Debug`, which escapes the quotes and
/// backslashes of the message it holds, so the message grew fourfold a
/// level: a corrupt value 12 levels deep took 10 s and a 268 MB message to
/// refuse (a debug build), one 16 levels deep would exhaust the memory, one
/// at the limit would never be. So on that path the adapter remembers the
/// message of an error where it first meets it, and hands each level above
/// a fresh error with that message.
pub(crate) enum Erased {}

impl Path for Erased {
    const SETTLES: bool = true;
}

/// A deserializer of a value at `level`.
pub(crate) struct Deep<'b, D, M> {
    de: D,
    level: usize,
    limit: &'b DepthLimit,
    path: PhantomData<M>,
}

impl<'b, D, M> Deep<'b, D, M> {
    fn visiting<V>(&self, visitor: V) -> Visiting<'b, V, M> {
        Visiting {
            visitor,
            level: self.level,
            limit: self.limit,
            path: PhantomData,
        }
    }
}

/// Forwards `deserialize_*` methods, wrapping the visitor.
macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, Self::Error> {
            let limit = self.limit;
            let visitor = self.visiting(visitor);
            if !M::SETTLES {
                return self.de.$method($($arg,)* visitor);
            }
            limit.enter();
            limit.leave(self.de.$method($($arg,)* visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>, M: Path> Deserializer<'de> for Deep<'_, D, M> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }

    #[inline]
    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

/// A visitor of a value at `level`: what the format hands it from inside
/// the value is at `level + 1`.
struct Visiting<'b, V, M> {
    visitor: V,
    level: usize,
    limit: &'b DepthLimit,
    path: PhantomData<M>,
}

impl<'b, V, M> Visiting<'b, V, M> {
    /// `access`, of the value this visitor visits.
    fn inside<A>(&self, access: A) -> Inside<'b, A, M> {
        Inside {
            access,
            level: self.level,
            limit: self.limit,
            path: PhantomData,
        }
    }
}

/// Forwards `visit_*` methods that carry no nested value.
macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {$(
        #[inline]
        fn $method<E: serde::de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.visitor.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>, M: Path> Visitor<'de> for Visiting<'_, V, M> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    forward_visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    #[inline]
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.visitor.visit_none()
    }

    #[inline]
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.visitor.visit_unit()
    }

    #[inline]
    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        let de = self.limit.at::<M, D>(self.level + 1, de)?;
        self.visitor.visit_some(de)
    }

    #[inline]
    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        let de = self.limit.at::<M, D>(self.level + 1, de)?;
        self.visitor.visit_newtype_struct(de)
    }

    #[inline]
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let seq = self.inside(seq);
        self.visitor.visit_seq(seq)
    }

    #[inline]
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let map = self.inside(map);
        self.visitor.visit_map(map)
    }

    #[inline]
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let data = self.inside(data);
        self.visitor.visit_enum(data)
    }
}

/// A sequence, map, enum or variant access of a value at `level`: what it
/// hands out is at `level + 1`.
struct Inside<'b, A, M> {
    access: A,
    level: usize,
    limit: &'b DepthLimit,
    path: PhantomData<M>,
}

impl<'b, A, M> Inside<'b, A, M> {
    /// `seed`, to deserialize a value one level below this one.
    fn below<S>(&self, seed: S) -> Below<'b, S, M> {
        Below {
            seed,
            level: self.level + 1,
            limit: self.limit,
            path: PhantomData,
        }
    }

    /// A visitor of this value's own level (a tuple or struct variant's:
    /// the fields it is handed are one below).
    fn visiting<V>(&self, visitor: V) -> Visiting<'b, V, M> {
        Visiting {
            visitor,
            level: self.level,
            limit: self.limit,
            path: PhantomData,
        }
    }
}

impl<'de, A: SeqAccess<'de>, M: Path> SeqAccess<'de> for Inside<'_, A, M> {
    type Error = A::Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        let seed = self.below(seed);
        self.access.next_element_seed(seed)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.access.size_hint()
    }
}

impl<'de, A: MapAccess<'de>, M: Path> MapAccess<'de> for Inside<'_, A, M> {
    type Error = A::Error;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let seed = self.below(seed);
        self.access.next_key_seed(seed)
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let seed = self.below(seed);
        self.access.next_value_seed(seed)
    }

    #[inline]
    fn next_entry_seed<K: DeserializeSeed<'de>, V: DeserializeSeed<'de>>(
        &mut self,
        key: K,
        value: V,
    ) -> Result<Option<(K::Value, V::Value)>, Self::Error> {
        let (key, value) = (self.below(key), self.below(value));
        self.access.next_entry_seed(key, value)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.access.size_hint()
    }
}

impl<'de, 'b, A: EnumAccess<'de>, M: Path> EnumAccess<'de> for Inside<'b, A, M> {
    type Error = A::Error;
    type Variant = Inside<'b, A::Variant, M>;

    #[inline]
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), Self::Error> {
        let seed = self.below(seed);
        let (tag, variant) = self.access.variant_seed(seed)?;
        let variant = Inside {
            access: variant,
            level: self.level,
            limit: self.limit,
            path: PhantomData,
        };
        Ok((tag, variant))
    }
}

impl<'de, A: VariantAccess<'de>, M: Path> VariantAccess<'de> for Inside<'_, A, M> {
    type Error = A::Error;

    #[inline]
    fn unit_variant(self) -> Result<(), Self::Error> {
        self.access.unit_variant()
    }

    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        let seed = self.below(seed);
        self.access.newtype_variant_seed(seed)
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let visitor = self.visiting(visitor);
        self.access.tuple_variant(len, visitor)
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let visitor = self.visiting(visitor);
        self.access.struct_variant(fields, visitor)
    }
}

/// A seed of a value at `level`.
struct Below<'b, S, M> {
    seed: S,
    level: usize,
    limit: &'b DepthLimit,
    path: PhantomData<M>,
}

impl<'de, S: DeserializeSeed<'de>, M: Path> DeserializeSeed<'de> for Below<'_, S, M> {
    type Value = S::Value;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        let de = self.limit.at::<M, D>(self.level, de)?;
        self.seed.deserialize(de)
    }
}

/// A seed of a whole `T` under a limit, on the typed path
/// ([`DepthLimit::seed`]).
pub(crate) struct Whole<'b, T>(&'b DepthLimit, PhantomData<T>);

impl<'de, T: serde::Deserialize<'de>> DeserializeSeed<'de> for Whole<'_, T> {
    type Value = T;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<T, D::Error> {
        T::deserialize(self.0.wrap::<Typed, D>(de))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::codec::{Bincode, Codec};

    /// Each `Node` is one level: `Node(Box<Tree>)` hands out its content.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Tree {
        Leaf(u64),
        Node(Box<Tree>),
        Pair(Box<Tree>, u8),
        Named { inner: Box<Tree> },
    }

    /// Each link is two levels: the field, then the content of `Some`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Link {
        next: Option<Box<Link>>,
    }

    /// Each level of `Wrap` is two: the newtype's content, then the map's
    /// value.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Wrap(BTreeMap<u8, Wrap>);

    fn nodes(n: usize, leaf: Tree, wrap: fn(Tree) -> Tree) -> Tree {
        (0..n).fold(leaf, |t, _| wrap(t))
    }

    fn links(n: usize) -> Link {
        (0..n).fold(Link { next: None }, |l, _| Link {
            next: Some(Box::new(l)),
        })
    }

    fn wraps(n: usize) -> Wrap {
        (0..n).fold(Wrap(BTreeMap::new()), |w, _| Wrap([(1, w)].into()))
    }

    /// Whether `value`, encoded with bincode and with MessagePack, decodes
    /// under a limit of `max` on every path (typed, through the trait),
    /// and the same answer on all; a refusal must say the limit was met.
    fn fits<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
        value: &T,
        max: usize,
    ) -> bool {
        let mut answers = Vec::new();
        let mut check = |decoded: Result<T, String>, depth: DepthLimit| {
            match &decoded {
                Ok(v) => assert_eq!(v, value),
                Err(e) => assert!(depth.exceeded(), "refused for another reason: {e}"),
            }
            answers.push(decoded.is_ok());
        };
        let mut bytes = Vec::new();
        crate::codec::bincode::encode_into(value, &mut bytes).unwrap();
        let depth = DepthLimit::new(max);
        check(
            crate::codec::bincode::decode_under(&bytes, 1 << 20, &depth),
            depth,
        );
        let depth = DepthLimit::new(max);
        let erased: &dyn Codec = &Bincode;
        check(erased.decode_value_under(&bytes, 1 << 20, &depth), depth);
        #[cfg(feature = "msgpack")]
        {
            let mut bytes = Vec::new();
            crate::codec::msgpack::encode_into(value, &mut bytes).unwrap();
            let depth = DepthLimit::new(max);
            check(crate::codec::msgpack::decode(&bytes, &depth), depth);
            let depth = DepthLimit::new(max);
            let erased: &dyn Codec = &crate::codec::MsgPack;
            check(erased.decode_value_under(&bytes, 1 << 20, &depth), depth);
        }
        assert!(
            answers.iter().all(|&a| a == answers[0]),
            "paths disagree: {answers:?}"
        );
        answers[0]
    }

    #[test]
    fn a_value_fits_exactly_when_its_deepest_level_is_within_the_limit() {
        // Leaf(u64) at level k after k wrappings: its u64 is at k + 1.
        let node = |t| Tree::Node(Box::new(t));
        let pair = |t| Tree::Pair(Box::new(t), 3);
        let named = |t| Tree::Named { inner: Box::new(t) };
        for wrap in [node, pair, named] {
            assert!(fits(&nodes(7, Tree::Leaf(1), wrap), 8));
            assert!(!fits(&nodes(8, Tree::Leaf(1), wrap), 8));
        }
        // After n links, the last `next` (None) is at level 2n + 1.
        assert!(fits(&links(3), 7));
        assert!(!fits(&links(4), 7));
        // Wrap: n + 1 of them, the innermost's empty map at level 2n + 1.
        assert!(fits(&wraps(3), 7));
        assert!(!fits(&wraps(4), 7));
        // Flat values: a sequence's elements are one level down, whatever
        // their number.
        assert!(fits(&vec![1u64; 1000], 1));
        assert!(!fits(&vec![1u64; 1], 0));
        assert!(fits(&Vec::<u64>::new(), 0));
        assert!(fits(&5u64, 0));
    }

    #[test]
    fn the_default_limit_admits_its_figure() {
        assert_eq!(DepthLimit::default().max, MAX_DECODE_DEPTH);
        let node = |t| Tree::Node(Box::new(t));
        let at_limit = nodes(MAX_DECODE_DEPTH - 1, Tree::Leaf(1), node);
        let past = nodes(MAX_DECODE_DEPTH, Tree::Leaf(1), node);
        assert!(fits(&at_limit, MAX_DECODE_DEPTH));
        assert!(!fits(&past, MAX_DECODE_DEPTH));
        // The node's own decode (bincode for keys, bus messages, jobs)
        // runs under it too.
        let mut bytes = Vec::new();
        crate::codec::bincode::encode_into(&past, &mut bytes).unwrap();
        let e = crate::codec::bincode_decode::<Tree>(&bytes, 1 << 20).unwrap_err();
        assert!(e.contains("deeper than 128 levels"), "{e}");
    }

    #[test]
    fn a_value_past_the_limit_through_the_trait_is_refused_with_a_short_message() {
        // As a corrupt one is (the codec tests): the error is settled on
        // its way up.
        let node = |t| Tree::Node(Box::new(t));
        let erased: &dyn Codec = &Bincode;
        let mut bytes = Vec::new();
        let value = nodes(1000, Tree::Leaf(1), node);
        crate::codec::bincode::encode_into(&value, &mut bytes).unwrap();
        let depth = DepthLimit::default();
        let e = erased
            .decode_value_under::<Tree>(&bytes, 1 << 20, &depth)
            .unwrap_err();
        assert!(depth.exceeded());
        assert_eq!(
            e,
            r#"OtherString("OtherString(\"the value nests deeper than 128 levels\")")"#
        );
    }

    #[test]
    fn a_hostile_nesting_is_refused_on_a_small_stack() {
        // 100 000 levels of Node in bincode: the variant index 1, again and
        // again, then a Leaf. Without the limit a debug build overflows a
        // 2 MiB stack at about 4 500 of them (466 bytes a level, see
        // `stack_per_level`).
        let mut bytes = vec![1u8; 100_000];
        bytes.extend_from_slice(&[0, 7]);
        std::thread::Builder::new()
            .stack_size(512 << 10)
            .spawn(move || {
                let codec = crate::codec::NodeCodec::default();
                assert_eq!(
                    codec.decode::<Tree>(&bytes, 1 << 20),
                    Err(crate::codec::DecodeError::TooDeep {
                        max: MAX_DECODE_DEPTH
                    })
                );
            })
            .unwrap()
            .join()
            .unwrap();
    }
}

/// The figures of [`MAX_DECODE_DEPTH`]'s docs: the stack a level of three
/// recursive shapes takes, per codec and path. Run with `cargo test --lib
/// stack_per_level -- --ignored --nocapture` (and `--release`).
#[cfg(test)]
mod stack {
    use std::cell::Cell;

    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::codec::{Bincode, Codec};

    thread_local! {
        /// The lowest stack address a `Probe` was read at.
        static LOWEST: Cell<usize> = const { Cell::new(usize::MAX) };
    }

    /// A `u64` whose reading notes how deep in the stack it happens.
    #[derive(Debug, Clone, Serialize)]
    struct Probe(u64);

    impl<'de> Deserialize<'de> for Probe {
        fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
            let here = 0u8;
            let at = std::ptr::addr_of!(here) as usize;
            LOWEST.with(|l| l.set(l.get().min(at)));
            u64::deserialize(de).map(Probe)
        }
    }

    /// 1 level a link.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    enum Tree {
        Leaf(Probe),
        Node(Box<Tree>),
    }

    /// 2 levels a link (the field, then `Some`'s content).
    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Link {
        here: Probe,
        next: Option<Box<Link>>,
    }

    /// 2 levels a link (the field, then the element).
    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Arr(Probe, Vec<Arr>);

    /// Bytes of stack a link of the value `decode` reads takes.
    fn per_link<T>(links: usize, decode: impl FnOnce() -> Result<T, String>) -> usize {
        let top = 0u8;
        let top = std::ptr::addr_of!(top) as usize;
        LOWEST.with(|l| l.set(usize::MAX));
        let value = decode().expect("decodes");
        std::mem::forget(value); // a recursive drop
        (top - LOWEST.with(Cell::get)) / links
    }

    fn report<T: Serialize + DeserializeOwned>(shape: &str, levels_a_link: usize, value: &T) {
        const LINKS: usize = 400; // rmp-serde's own limit is 1024 arrays or maps
        let depth = DepthLimit::new(usize::MAX);
        let (bincode, msgpack): (&dyn Codec, &dyn Codec) = (&Bincode, &crate::codec::MsgPack);
        let mut b = Vec::new();
        crate::codec::bincode::encode_into(value, &mut b).unwrap();
        let mut m = Vec::new();
        crate::codec::msgpack::encode_into(value, &mut m).unwrap();
        let rows = [
            per_link(LINKS, || {
                ::bincode::serde::decode_from_slice::<T, _>(&b, ::bincode::config::standard())
                    .map_err(|e| e.to_string())
            }),
            per_link(LINKS, || {
                crate::codec::bincode::decode_under::<T>(&b, 1 << 20, &depth)
            }),
            per_link(LINKS, || {
                bincode.decode_value_under::<T>(&b, 1 << 20, &depth)
            }),
            per_link(LINKS, || {
                rmp_serde::from_slice::<T>(&m).map_err(|e| e.to_string())
            }),
            per_link(LINKS, || crate::codec::msgpack::decode::<T>(&m, &depth)),
            per_link(LINKS, || {
                msgpack.decode_value_under::<T>(&m, 1 << 20, &depth)
            }),
        ]
        .map(|bytes| bytes / levels_a_link);
        eprintln!(
            "{shape}: bytes a level: bincode crate {} typed {} trait {}; \
             msgpack crate {} typed {} trait {}",
            rows[0], rows[1], rows[2], rows[3], rows[4], rows[5]
        );
    }

    #[test]
    #[ignore]
    fn stack_per_level() {
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(|| {
                let links = 400;
                let probe = || Probe(1);
                let tree = (0..links).fold(Tree::Leaf(probe()), |t, _| Tree::Node(Box::new(t)));
                let link = (0..links).fold(
                    Link {
                        here: probe(),
                        next: None,
                    },
                    |l, _| Link {
                        here: probe(),
                        next: Some(Box::new(l)),
                    },
                );
                let arr = (0..links).fold(Arr(probe(), vec![]), |a, _| Arr(probe(), vec![a]));
                report("tree", 1, &tree);
                report("link", 2, &link);
                report("arr", 2, &arr);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
