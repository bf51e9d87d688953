//! Cache keys of function calls: arguments, their stable encoding, hashing.
//!
//! A call's key is built from its arguments, each encoded with bincode and
//! written with its name and its length, then hashed with XXH3 (a fixed,
//! published algorithm: keys are the same in every process, on every
//! machine, in every release). Length prefixes make the encoding injective,
//! so two different argument tuples never share a key.
//!
//! Key suffix layout (after `{ns}:f:{funcname}:`):
//!
//! | mode | suffix |
//! |---|---|
//! | default | `{prefix}\|{h128}` (32 hex digits) |
//! | full args | `{prefix}\|;{name}={h64};{name}={h64}…` |
//! | no args | `{prefix}\|-` |
//!
//! with `r={h64};` inserted after the `|` when the request path or query
//! string is part of the key. The prefix may not contain `|` or `;`, and
//! argument names are identifiers, so a full-args part `;{name}={h64}` can
//! be matched exactly by `SSCAN … MATCH *;{name}={h64}*`.

use serde::Serialize;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use crate::{Error, Result};

/// Arguments of a cached call, written into its key.
///
/// Implemented for tuples of up to eight serde values (named `0`, `1`, …),
/// for `()`, and for [`Args`], which names each argument (the attribute
/// macro uses it with the function's parameter names, so that
/// `ignore_args` and partial invalidation can refer to them).
pub trait KeyArgs {
    /// Writes each argument with [`ArgsWriter::arg`].
    ///
    /// # Errors
    /// When an argument cannot be encoded.
    fn write_args(&self, out: &mut ArgsWriter) -> Result<()>;
}

/// Collects the encoded arguments of a call.
#[derive(Debug, Default)]
pub struct ArgsWriter {
    parts: Vec<(String, Vec<u8>)>,
}

impl ArgsWriter {
    /// The arguments written so far: name and encoding.
    pub(crate) fn parts(&self) -> &[(String, Vec<u8>)] {
        &self.parts
    }

    /// Adds argument `name` with `value`.
    ///
    /// # Errors
    /// [`Error::Encode`] when the value cannot be encoded.
    pub fn arg<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) -> Result<()> {
        let mut bytes = Vec::new();
        crate::codec::bincode_encode_into(value, &mut bytes)
            .map_err(|e| Error::Encode(format!("argument {name}: {e}")))?;
        self.parts.push((name.to_owned(), bytes));
        Ok(())
    }
}

impl KeyArgs for () {
    fn write_args(&self, _: &mut ArgsWriter) -> Result<()> {
        Ok(())
    }
}

macro_rules! tuple_args {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Serialize),+> KeyArgs for ($($t,)+) {
            fn write_args(&self, out: &mut ArgsWriter) -> Result<()> {
                $(out.arg(stringify!($i), &self.$i)?;)+
                Ok(())
            }
        }
    };
}
tuple_args!(A 0);
tuple_args!(A 0, B 1);
tuple_args!(A 0, B 1, C 2);
tuple_args!(A 0, B 1, C 2, D 3);
tuple_args!(A 0, B 1, C 2, D 3, E 4);
tuple_args!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_args!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_args!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);

/// Named arguments, built ahead of a call.
///
/// ```
/// # fn main() -> cachenode::Result<()> {
/// let args = cachenode::Args::new().arg("user_id", &42u64)?.arg("lang", "fr")?;
/// # Ok(()) }
/// ```
#[derive(Debug, Default, Clone)]
pub struct Args {
    parts: Vec<(String, Vec<u8>)>,
}

impl Args {
    /// No arguments yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds argument `name` (an identifier: letters, digits, `_`).
    ///
    /// # Errors
    /// [`Error::Encode`] when the value cannot be encoded,
    /// [`Error::Config`] for an invalid name.
    pub fn arg<T: Serialize + ?Sized>(mut self, name: &str, value: &T) -> Result<Self> {
        check_arg_name(name)?;
        let mut w = ArgsWriter::default();
        w.arg(name, value)?;
        self.parts.append(&mut w.parts);
        Ok(self)
    }
}

impl KeyArgs for Args {
    fn write_args(&self, out: &mut ArgsWriter) -> Result<()> {
        out.parts.extend(self.parts.iter().cloned());
        Ok(())
    }
}

/// Checks that `name` is an identifier.
pub(crate) fn check_arg_name(name: &str) -> Result<()> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "argument name {name:?} must be letters, digits and _"
        )))
    }
}

/// Checks a function name: 1 to 200 characters, none of `:` (the key
/// separator), whitespace or glob characters.
pub(crate) fn check_funcname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || ":*?[]\\{}".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "function name {name:?} must be 1 to 200 characters without whitespace or any of : * ? [ ] \\ {{ }}"
        )))
    }
}

/// Checks a static key prefix.
pub(crate) fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.contains(['|', ';']) {
        Err(Error::Config(format!(
            "cache key prefix {prefix:?} may not contain | or ;"
        )))
    } else {
        Ok(())
    }
}

/// Makes a dynamic prefix safe for the key layout.
pub(crate) fn sanitize_prefix(prefix: String) -> String {
    if prefix.contains(['|', ';']) {
        prefix.replace(['|', ';'], "_")
    } else {
        prefix
    }
}

/// How a function's arguments go into its keys
/// ([`FuncBuilder::key_args`](crate::FuncBuilder::key_args)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArgsInKey {
    /// One hash of all (kept) arguments: the default.
    #[default]
    Hashed,
    /// One hash per argument, so that [`CachedFn::delete_some`](crate::CachedFn::delete_some)
    /// can find the values of some arguments.
    Each,
    /// Arguments are not part of the key: every call shares one value.
    Omitted,
}

/// The hash of one argument value, as it appears in full-args keys.
pub(crate) fn arg_part(name: &str, encoded: &[u8]) -> String {
    format!(";{name}={:016x}", xxh3_64(encoded))
}

/// Builds the key suffix of a call.
pub(crate) fn suffix(
    prefix: &str,
    request: Option<&str>,
    mode: ArgsInKey,
    args: &ArgsWriter,
    ignore: &[String],
) -> String {
    let mut out = String::with_capacity(prefix.len() + 40);
    out.push_str(prefix);
    out.push('|');
    if let Some(r) = request {
        out.push_str(&format!("r={:016x};", xxh3_64(r.as_bytes())));
    }
    let kept = args
        .parts
        .iter()
        .filter(|(name, _)| !ignore.iter().any(|i| i == name));
    match mode {
        ArgsInKey::Omitted => out.push('-'),
        ArgsInKey::Each => {
            let mut any = false;
            for (name, bytes) in kept {
                out.push_str(&arg_part(name, bytes));
                any = true;
            }
            if !any {
                out.push('-');
            }
        }
        ArgsInKey::Hashed => {
            let mut buf = Vec::with_capacity(64);
            for (name, bytes) in kept {
                buf.extend_from_slice(&(name.len() as u64).to_le_bytes());
                buf.extend_from_slice(name.as_bytes());
                buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                buf.extend_from_slice(bytes);
            }
            out.push_str(&format!("{:032x}", xxh3_128(&buf)));
        }
    }
    out
}

/// Encodes `args`.
pub(crate) fn encode_args<A: KeyArgs + ?Sized>(args: &A) -> Result<ArgsWriter> {
    let mut w = ArgsWriter::default();
    args.write_args(&mut w)?;
    Ok(w)
}

/// Whether a serde value is `None` or `()` at its top level.
pub(crate) fn is_none<T: Serialize + ?Sized>(value: &T) -> bool {
    value.serialize(NoneProbe).is_ok()
}

/// A serializer that succeeds only for `none` and `unit`, and stops at the
/// first call of any other kind: it answers "is this value None?" without
/// encoding anything.
struct NoneProbe;

#[derive(Debug)]
struct NotNone;

impl std::fmt::Display for NotNone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not none")
    }
}
impl std::error::Error for NotNone {}
impl serde::ser::Error for NotNone {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        NotNone
    }
}

macro_rules! not_none {
    ($($name:ident($($t:ty),*)),* $(,)?) => {
        $(fn $name(self, $(_: $t),*) -> std::result::Result<(), NotNone> { Err(NotNone) })*
    };
}

impl serde::Serializer for NoneProbe {
    type Ok = ();
    type Error = NotNone;
    type SerializeSeq = serde::ser::Impossible<(), NotNone>;
    type SerializeTuple = serde::ser::Impossible<(), NotNone>;
    type SerializeTupleStruct = serde::ser::Impossible<(), NotNone>;
    type SerializeTupleVariant = serde::ser::Impossible<(), NotNone>;
    type SerializeMap = serde::ser::Impossible<(), NotNone>;
    type SerializeStruct = serde::ser::Impossible<(), NotNone>;
    type SerializeStructVariant = serde::ser::Impossible<(), NotNone>;

    fn serialize_none(self) -> std::result::Result<(), NotNone> {
        Ok(())
    }
    fn serialize_unit(self) -> std::result::Result<(), NotNone> {
        Ok(())
    }
    not_none!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> std::result::Result<(), NotNone> {
        Err(NotNone)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> std::result::Result<(), NotNone> {
        Err(NotNone)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> std::result::Result<(), NotNone> {
        Err(NotNone)
    }
    fn serialize_seq(self, _: Option<usize>) -> std::result::Result<Self::SerializeSeq, NotNone> {
        Err(NotNone)
    }
    fn serialize_tuple(self, _: usize) -> std::result::Result<Self::SerializeTuple, NotNone> {
        Err(NotNone)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeTupleStruct, NotNone> {
        Err(NotNone)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeTupleVariant, NotNone> {
        Err(NotNone)
    }
    fn serialize_map(self, _: Option<usize>) -> std::result::Result<Self::SerializeMap, NotNone> {
        Err(NotNone)
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeStruct, NotNone> {
        Err(NotNone)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeStructVariant, NotNone> {
        Err(NotNone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<A: KeyArgs>(mode: ArgsInKey, args: &A, ignore: &[&str]) -> String {
        let ignore: Vec<String> = ignore.iter().map(|s| s.to_string()).collect();
        suffix("", None, mode, &encode_args(args).unwrap(), &ignore)
    }

    #[test]
    fn golden_key_is_stable_across_processes_and_releases() {
        // If this changes, every deployed cache key changes: never edit the
        // expected value without a migration note. The values were checked
        // against an independent XXH3 implementation (Python's xxhash).
        assert_eq!(
            key(ArgsInKey::Hashed, &(42u64, "fr"), &[]),
            "|55d14fa839a1b10fdd7005eac6d73bf4"
        );
        assert_eq!(
            key(ArgsInKey::Each, &(42u64, "fr"), &[]),
            "|;0=79d03016b7aeed0d;1=6c001624ba5c2236"
        );
    }

    #[test]
    fn different_argument_tuples_never_share_a_key() {
        // Naive joins would make these equal.
        assert_ne!(
            key(ArgsInKey::Hashed, &("a,b", "c"), &[]),
            key(ArgsInKey::Hashed, &("a", "b,c"), &[])
        );
        assert_ne!(
            key(ArgsInKey::Hashed, &("ab", ""), &[]),
            key(ArgsInKey::Hashed, &("a", "b"), &[])
        );
        assert_ne!(
            key(ArgsInKey::Hashed, &(1u8,), &[]),
            key(ArgsInKey::Hashed, &(1u8, 0u8), &[])
        );
        assert_ne!(
            key(ArgsInKey::Hashed, &(), &[]),
            key(ArgsInKey::Hashed, &((),), &[])
        );
    }

    #[test]
    fn ignored_arguments_do_not_change_the_key() {
        let a = Args::new()
            .arg("db", "conn-1")
            .unwrap()
            .arg("id", &7u32)
            .unwrap();
        let b = Args::new()
            .arg("db", "conn-2")
            .unwrap()
            .arg("id", &7u32)
            .unwrap();
        assert_ne!(
            key(ArgsInKey::Hashed, &a, &[]),
            key(ArgsInKey::Hashed, &b, &[])
        );
        assert_eq!(
            key(ArgsInKey::Hashed, &a, &["db"]),
            key(ArgsInKey::Hashed, &b, &["db"])
        );
        assert_eq!(
            key(ArgsInKey::Each, &a, &["db"]),
            key(ArgsInKey::Each, &b, &["db"])
        );
        assert_eq!(key(ArgsInKey::Omitted, &a, &[]), "|-");
    }

    #[test]
    fn full_args_parts_can_be_matched_one_by_one() {
        let k = key(
            ArgsInKey::Each,
            &Args::new()
                .arg("user", &1u8)
                .unwrap()
                .arg("lang", "fr")
                .unwrap(),
            &[],
        );
        let mut w = ArgsWriter::default();
        w.arg("lang", "fr").unwrap();
        let (name, bytes) = &w.parts[0];
        assert!(k.contains(&arg_part(name, bytes)));
    }

    #[test]
    fn names_and_prefixes_are_checked() {
        assert!(check_funcname("app.users.get_user").is_ok());
        for bad in ["", "a:b", "a b", "a*", &"x".repeat(201)] {
            assert!(check_funcname(bad).is_err(), "{bad:?}");
        }
        assert!(check_arg_name("user_id").is_ok());
        assert!(check_arg_name("user-id").is_err());
        assert!(check_prefix("tenant-1").is_ok());
        assert!(check_prefix("a|b").is_err());
        assert_eq!(sanitize_prefix("a|b;c".into()), "a_b_c");
    }

    #[test]
    fn none_probe_finds_none_only() {
        assert!(is_none(&None::<u32>));
        assert!(is_none(&()));
        assert!(!is_none(&Some(0u32)));
        assert!(!is_none(&0u32));
        assert!(!is_none(&Vec::<u8>::new()));
        assert!(!is_none(&String::new()));
    }
}
