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
//!
//! Precisely, with `u64le(n)` the 8 bytes of `n` little-endian, `enc(v)`
//! the bincode 2 standard encoding of `v` (varints), and `hex` lowercase,
//! zero-padded:
//!
//! - `{h128}` = `hex(XXH3-128(frames))`, where `frames` concatenates, for
//!   each kept argument in order, `u64le(len(name)) name u64le(len(enc(v)))
//!   enc(v)`;
//! - `{h64}` of an argument = `hex(XXH3-64(enc(v)))`;
//! - `r={h64}` = `hex(XXH3-64(path "?" query))`, each empty when not part
//!   of the key;
//!
//! all with seed 0 and the default secret. The golden test below pins both
//! forms.
//!
//! A hit builds its key without allocating: [`ArgsWriter`] keeps the
//! buffers of the arguments it has held (the slots beyond `len` are reused,
//! not dropped) and keeps `frames` as it goes, and the cached functions
//! build keys in one [`KeyBuf`] per thread ([`with_key_buf`]).

use std::cell::RefCell;

use serde::Serialize;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64, Xxh3Default};

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
    /// Name and encoding of each argument; only the first `len` are
    /// written, the others are buffers kept for reuse.
    parts: Vec<(String, Vec<u8>)>,
    len: usize,
    /// The written arguments framed as the default key mode hashes them
    /// (see the module docs), kept up to date by every write.
    frames: Vec<u8>,
    /// Writes go to `frames` alone (`parts` stays empty): a key that
    /// hashes every argument needs nothing else.
    frames_only: bool,
}

/// Past this many bytes of arguments, a reused writer gives its buffers
/// back rather than keep them for the next call.
const KEPT_BYTES: usize = 4096;

impl ArgsWriter {
    /// The arguments written so far: name and encoding.
    pub(crate) fn parts(&self) -> &[(String, Vec<u8>)] {
        &self.parts[..self.len]
    }

    /// Adds argument `name` with `value`.
    ///
    /// # Errors
    /// [`Error::Encode`] when the value cannot be encoded.
    #[inline]
    pub fn arg<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) -> Result<()> {
        if self.frames_only {
            // The frame written in place: the encoding's length is known
            // once it is written.
            let frames = &mut self.frames;
            let start = frames.len();
            frames.extend_from_slice(&(name.len() as u64).to_le_bytes());
            frames.extend_from_slice(name.as_bytes());
            let len_at = frames.len();
            frames.extend_from_slice(&[0; 8]);
            if let Err(e) = crate::codec::bincode_encode_into(value, frames) {
                frames.truncate(start);
                return Err(Error::Encode(format!("argument {name}: {e}")));
            }
            let len = (frames.len() - len_at - 8) as u64;
            frames[len_at..len_at + 8].copy_from_slice(&len.to_le_bytes());
            return Ok(());
        }
        let slot = self.next_slot();
        slot.0.push_str(name);
        if let Err(e) = crate::codec::bincode_encode_into(value, &mut slot.1) {
            return Err(Error::Encode(format!("argument {name}: {e}")));
        }
        self.commit();
        Ok(())
    }

    /// Adds an argument already encoded.
    fn push_encoded(&mut self, name: &str, encoded: &[u8]) {
        if self.frames_only {
            let frames = &mut self.frames;
            frames.extend_from_slice(&(name.len() as u64).to_le_bytes());
            frames.extend_from_slice(name.as_bytes());
            frames.extend_from_slice(&(encoded.len() as u64).to_le_bytes());
            frames.extend_from_slice(encoded);
            return;
        }
        let slot = self.next_slot();
        slot.0.push_str(name);
        slot.1.extend_from_slice(encoded);
        self.commit();
    }

    /// The first unwritten slot, emptied.
    #[inline]
    fn next_slot(&mut self) -> &mut (String, Vec<u8>) {
        if self.len == self.parts.len() {
            self.parts.push(Default::default());
        }
        let slot = &mut self.parts[self.len];
        slot.0.clear();
        slot.1.clear();
        slot
    }

    /// Counts the slot filled by the last write, and frames it.
    #[inline]
    fn commit(&mut self) {
        let (name, bytes) = &self.parts[self.len];
        let frames = &mut self.frames;
        frames.reserve(16 + name.len() + bytes.len());
        frames.extend_from_slice(&(name.len() as u64).to_le_bytes());
        frames.extend_from_slice(name.as_bytes());
        frames.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        frames.extend_from_slice(bytes);
        self.len += 1;
    }

    /// Forgets the arguments, keeping the buffers.
    #[inline]
    fn clear(&mut self) {
        self.len = 0;
        self.frames.clear();
        self.frames_only = false;
    }

    /// Gives the buffers back if they grew large. (Each part's buffer is
    /// at most twice the largest argument framed, so the frames tell.)
    #[inline]
    fn trim(&mut self) {
        if self.frames.capacity() > KEPT_BYTES {
            *self = ArgsWriter::default();
        }
    }

    /// From now on, keeps only what a key of `mode` leaving out `ignore`
    /// needs: for one hash of every argument, the frames alone.
    #[inline]
    pub(crate) fn keep_for(&mut self, mode: ArgsInKey, ignore: &[String]) {
        self.frames_only = mode == ArgsInKey::Hashed && ignore.is_empty();
    }

    /// The written arguments minus those named in `ignore`.
    fn kept<'a>(&'a self, ignore: &'a [String]) -> impl Iterator<Item = &'a (String, Vec<u8>)> {
        self.parts()
            .iter()
            .filter(move |(name, _)| !ignore.iter().any(|i| i == name))
    }
}

/// What a call's key is built in: its arguments and the key itself.
#[derive(Debug, Default)]
pub(crate) struct KeyBuf {
    pub(crate) args: ArgsWriter,
    pub(crate) key: String,
}

impl KeyBuf {
    #[inline]
    fn clear(&mut self) {
        self.args.clear();
        self.key.clear();
    }

    #[inline]
    fn trim(&mut self) {
        self.args.trim();
        if self.key.capacity() > KEPT_BYTES {
            self.key = String::new();
        }
    }
}

impl KeyBuf {
    const fn new() -> Self {
        KeyBuf {
            args: ArgsWriter {
                parts: Vec::new(),
                len: 0,
                frames: Vec::new(),
                frames_only: false,
            },
            key: String::new(),
        }
    }
}

thread_local! {
    static KEY_BUF: RefCell<KeyBuf> = const { RefCell::new(KeyBuf::new()) };
}

/// Runs `f` with this thread's key buffer, emptied: keys are built without
/// allocating once the buffer has grown to the size of the thread's keys.
/// A fresh buffer serves when this thread's is in use (an argument whose
/// `Serialize` itself calls a cached function) or gone (the thread is
/// exiting).
#[inline]
pub(crate) fn with_key_buf<R>(mut f: impl FnMut(&mut KeyBuf) -> R) -> R {
    let reused = KEY_BUF.try_with(|cell| {
        let mut buf = cell.try_borrow_mut().ok()?;
        buf.clear();
        let r = f(&mut buf);
        buf.trim();
        Some(r)
    });
    match reused {
        Ok(Some(r)) => r,
        _ => f(&mut KeyBuf::new()),
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
    /// The type of each part's value ([`std::any::type_name`]), so that a
    /// filter can be checked against the function's arguments.
    types: Vec<&'static str>,
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
        let mut encoded = Vec::new();
        crate::codec::bincode_encode_into(value, &mut encoded)
            .map_err(|e| Error::Encode(format!("argument {name}: {e}")))?;
        self.parts.push((name.to_owned(), encoded));
        self.types.push(std::any::type_name::<T>());
        Ok(self)
    }
}

impl KeyArgs for Args {
    fn write_args(&self, out: &mut ArgsWriter) -> Result<()> {
        for (name, encoded) in &self.parts {
            out.push_encoded(name, encoded);
        }
        Ok(())
    }
}

/// An argument a function's keys hold: its name and, when known, the type
/// of its value ([`std::any::type_name`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeclaredArg {
    pub(crate) name: String,
    pub(crate) ty: Option<&'static str>,
}

/// The arguments of `A` when it is a tuple, named `0`, `1`, … as
/// [`KeyArgs`] writes them, with their types; `None` for any other type
/// (whose arguments are only known from its values).
///
/// Read from `A`'s type name, the one thing known of an unsized `A` (a
/// function's arguments may be `dyn KeyArgs`): every tuple that implements
/// `KeyArgs` is one of this module's impls, since a tuple is never a
/// user's local type.
pub(crate) fn tuple_args<A: ?Sized>() -> Option<Vec<DeclaredArg>> {
    let name = std::any::type_name::<A>();
    let inner = name.strip_prefix('(')?.strip_suffix(')')?;
    Some(
        split_top(inner, ',')
            .into_iter()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .enumerate()
            .map(|(i, ty)| DeclaredArg {
                name: i.to_string(),
                ty: Some(ty),
            })
            .collect(),
    )
}

/// Checks a partial deletion's `filter` against the arguments the keys of
/// `func` hold (`declared`, when known) and those it leaves out
/// (`ignored`): a filter naming an argument no key holds, or giving a value
/// of another type than the argument's, would match nothing, silently.
pub(crate) fn check_filter(
    func: &str,
    declared: Option<&[DeclaredArg]>,
    ignored: &[String],
    filter: &Args,
) -> Result<()> {
    let refuse = |why: String| Err(Error::Config(format!("delete_some on {func:?}: {why}")));
    if filter.parts.is_empty() {
        return refuse("an empty filter matches every value; delete_all deletes them all".into());
    }
    for ((name, _), &given) in filter.parts.iter().zip(&filter.types) {
        if ignored.contains(name) {
            return refuse(format!("argument {name:?} is ignored, so no key holds it"));
        }
        let Some(declared) = declared else { continue };
        let Some(arg) = declared.iter().find(|d| d.name == *name) else {
            let held: Vec<&str> = declared
                .iter()
                .map(|d| d.name.as_str())
                .filter(|n| !ignored.iter().any(|i| i == n))
                .collect();
            let held = if held.is_empty() {
                "no arguments".to_owned()
            } else {
                held.join(", ")
            };
            return refuse(format!("no argument {name:?} (its keys hold {held})"));
        };
        if let Some(expected) = arg.ty {
            if canonical_type(expected) != canonical_type(given) {
                return refuse(format!(
                    "argument {name:?} is {}, the filter gives {}",
                    short_type(expected),
                    short_type(given)
                ));
            }
        }
    }
    Ok(())
}

/// `s` split at each `sep` outside brackets (`<>`, `()`, `[]`, `{}`; the
/// `>` of a `->` is no bracket).
fn split_top(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start, mut prev) = (0usize, 0, '\0');
    for (i, c) in s.char_indices() {
        match c {
            '<' | '(' | '[' | '{' => depth += 1,
            '>' if prev == '-' => {}
            '>' | ')' | ']' | '}' => depth = depth.saturating_sub(1),
            c if c == sep && depth == 0 => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
        prev = c;
    }
    parts.push(&s[start..]);
    parts
}

/// A type name with what serde writes alike made the same: references
/// removed, `String` as `str`, `Vec<T>` as `[T]`, `Box`, `Arc`, `Rc` and
/// `Cow` as their content, `usize` / `isize` as `u64` / `i64`, lifetimes
/// dropped, at every depth. Two arguments whose types give the same
/// canonical name encode a value alike; others (`u64` and `i32`, `[T]` and
/// `[T; N]`) do not.
fn canonical_type(t: &str) -> String {
    let t = t.trim();
    if let Some(rest) = t.strip_prefix('&') {
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('\'') {
            Some(lt) => lt.split_once(' ').map_or("", |(_, r)| r),
            None => rest,
        };
        return canonical_type(rest.strip_prefix("mut ").unwrap_or(rest));
    }
    match t {
        "alloc::string::String" => return "str".to_owned(),
        "usize" => return "u64".to_owned(),
        "isize" => return "i64".to_owned(),
        _ => {}
    }
    if let Some(inner) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return match split_top(inner, ';').as_slice() {
            [elem] => format!("[{}]", canonical_type(elem)),
            [elem, len] => format!("[{}; {}]", canonical_type(elem), len.trim()),
            _ => t.to_owned(),
        };
    }
    if let Some(inner) = t.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        let elems: Vec<String> = split_top(inner, ',')
            .into_iter()
            .filter(|e| !e.trim().is_empty())
            .map(canonical_type)
            .collect();
        return match elems.as_slice() {
            [one] => format!("({one},)"),
            _ => format!("({})", elems.join(", ")),
        };
    }
    if let (Some(open), true) = (t.find('<'), t.ends_with('>')) {
        let path = &t[..open];
        let args: Vec<String> = split_top(&t[open + 1..t.len() - 1], ',')
            .into_iter()
            .map(str::trim)
            .filter(|a| !a.is_empty() && !a.starts_with('\''))
            .map(canonical_type)
            .collect();
        return match (path, args.as_slice()) {
            (
                "alloc::boxed::Box" | "alloc::sync::Arc" | "alloc::rc::Rc" | "alloc::borrow::Cow",
                [inner],
            ) => inner.clone(),
            ("alloc::vec::Vec", [inner]) => format!("[{inner}]"),
            _ => format!("{path}<{}>", args.join(", ")),
        };
    }
    t.to_owned()
}

/// A type name as a user writes it: each path cut to its last segment
/// (`core::option::Option<alloc::string::String>` is `Option<String>`).
fn short_type(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    let mut path = String::new();
    let flush = |path: &mut String, out: &mut String| {
        out.push_str(path.rsplit("::").next().unwrap_or(""));
        path.clear();
    };
    for c in t.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            path.push(c);
        } else {
            flush(&mut path, &mut out);
            out.push(c);
        }
    }
    flush(&mut path, &mut out);
    out
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
    let mut out = String::with_capacity(name.len() + 18);
    push_arg_part(&mut out, name, encoded);
    out
}

fn push_arg_part(out: &mut String, name: &str, encoded: &[u8]) {
    out.push(';');
    out.push_str(name);
    out.push('=');
    push_hex(out, u128::from(xxh3_64(encoded)), 16);
}

/// Appends the `digits` low hex digits of `v` (16 or 32), lowercase,
/// zero-padded.
#[inline]
fn push_hex(out: &mut String, v: u128, digits: usize) {
    let mut buf = [0u8; 32];
    buf[..16].copy_from_slice(&hex_u64((v >> 64) as u64));
    buf[16..].copy_from_slice(&hex_u64(v as u64));
    let digits = digits.min(32);
    // Always ASCII.
    out.push_str(std::str::from_utf8(&buf[32 - digits..]).unwrap_or_default());
}

/// The 16 lowercase hex digits of `x`, most significant first, computed
/// on all of them at once (this is on every hit's path: a digit at a time
/// cost several times more).
#[inline]
fn hex_u64(x: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hex_u32((x >> 32) as u32).to_be_bytes());
    out[8..].copy_from_slice(&hex_u32(x as u32).to_be_bytes());
    out
}

/// The 8 hex digits of `x` as the bytes of a `u64`, most significant
/// first when written big-endian.
#[inline]
fn hex_u32(x: u32) -> u64 {
    // Spread the nibbles, one to a byte, keeping their order.
    let x = u64::from(x);
    let x = (x & 0x0000_ffff) | ((x & 0xffff_0000) << 16);
    let x = (x & 0x0000_00ff_0000_00ff) | ((x & 0x0000_ff00_0000_ff00) << 8);
    let x = (x & 0x000f_000f_000f_000f) | ((x & 0x00f0_00f0_00f0_00f0) << 4);
    // Per byte: '0' + n, plus 'a' - '0' - 10 where n >= 10 (n + 6 carries
    // into bit 4). No byte overflows into the next.
    const ONES: u64 = 0x0101_0101_0101_0101;
    let letters = ((x + 6 * ONES) >> 4) & ONES;
    x + 0x30 * ONES + letters * 0x27
}

/// The hash of a call's request part: its path and query string, each
/// empty when it is not part of the key.
pub(crate) fn request_hash(path: &str, query: &str) -> u64 {
    let mut h = Xxh3Default::new();
    h.update(path.as_bytes());
    h.update(b"?");
    h.update(query.as_bytes());
    h.digest()
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
    let request = request.map(|r| xxh3_64(r.as_bytes()));
    push_suffix(&mut out, prefix, request, mode, args, ignore);
    out
}

/// Appends the key suffix of a call to `out`; `request` is its
/// [`request_hash`] when the request is part of the key.
#[inline]
pub(crate) fn push_suffix(
    out: &mut String,
    prefix: &str,
    request: Option<u64>,
    mode: ArgsInKey,
    args: &ArgsWriter,
    ignore: &[String],
) {
    out.push_str(prefix);
    out.push('|');
    if let Some(r) = request {
        out.push_str("r=");
        push_hex(out, u128::from(r), 16);
        out.push(';');
    }
    match mode {
        ArgsInKey::Omitted => out.push('-'),
        ArgsInKey::Each => {
            let mut any = false;
            for (name, bytes) in args.kept(ignore) {
                push_arg_part(out, name, bytes);
                any = true;
            }
            if !any {
                out.push('-');
            }
        }
        ArgsInKey::Hashed => {
            let ignores_some = !ignore.is_empty() && args.kept(ignore).count() < args.len;
            let hash = if ignores_some {
                // The frames of the kept arguments alone, streamed.
                let mut h = Xxh3Default::new();
                for (name, bytes) in args.kept(ignore) {
                    h.update(&(name.len() as u64).to_le_bytes());
                    h.update(name.as_bytes());
                    h.update(&(bytes.len() as u64).to_le_bytes());
                    h.update(bytes);
                }
                h.digest128()
            } else {
                xxh3_128(&args.frames)
            };
            push_hex(out, hash, 32);
        }
    }
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
    fn tuple_arguments_are_read_from_the_type_name() {
        use std::any::type_name;
        type Nested = (
            Vec<(u8, String)>,
            [u8; 2],
            Option<&'static str>,
            fn(u8, u16) -> u8,
        );
        let args = tuple_args::<Nested>().unwrap();
        let names: Vec<&str> = args.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["0", "1", "2", "3"]);
        let types: Vec<&str> = args.iter().map(|a| a.ty.unwrap()).collect();
        assert_eq!(
            types,
            [
                type_name::<Vec<(u8, String)>>(),
                type_name::<[u8; 2]>(),
                type_name::<Option<&str>>(),
                type_name::<fn(u8, u16) -> u8>(),
            ]
        );
        assert_eq!(tuple_args::<(u64,)>().unwrap().len(), 1);
        assert_eq!(tuple_args::<()>(), Some(Vec::new()));
        assert_eq!(tuple_args::<Args>(), None);
        assert_eq!(tuple_args::<dyn KeyArgs>(), None);
    }

    #[test]
    fn types_serde_writes_alike_have_one_canonical_name() {
        use std::any::type_name;
        use std::borrow::Cow;
        use std::sync::Arc;
        fn same<A: ?Sized, B: ?Sized>() -> bool {
            canonical_type(type_name::<A>()) == canonical_type(type_name::<B>())
        }
        assert!(same::<String, str>());
        assert!(same::<&str, String>());
        assert!(same::<&mut String, Box<str>>());
        assert!(same::<Arc<str>, Cow<'static, str>>());
        assert!(same::<Vec<u64>, [u64]>());
        assert!(same::<&[u64], Vec<u64>>());
        assert!(same::<Option<String>, Option<&str>>());
        assert!(same::<Vec<(String, u8)>, [(&str, u8)]>());
        assert!(same::<usize, u64>());
        assert!(same::<(u8,), (u8,)>());
        assert!(!same::<u64, i32>());
        assert!(!same::<u64, Option<u64>>());
        assert!(!same::<[u8; 3], [u8]>());
        assert!(!same::<(u8,), u8>());
        assert!(!same::<Option<u32>, Option<u64>>());
        assert_eq!(
            short_type(type_name::<Option<Vec<String>>>()),
            "Option<Vec<String>>"
        );
        assert_eq!(short_type(type_name::<&str>()), "&str");
    }

    #[test]
    fn filters_are_checked_against_the_declared_arguments() {
        let declared = tuple_args::<(u64, String, bool)>().unwrap();
        let ignored = vec!["2".to_string()];
        let check = |f: Args| check_filter("f", Some(&declared), &ignored, &f);
        assert!(check(Args::new().arg("0", &1u64).unwrap()).is_ok());
        assert!(check(Args::new().arg("1", "fr").unwrap()).is_ok());
        let err = |f: Args| check(f).unwrap_err().to_string();
        assert_eq!(
            err(Args::new().arg("3", &1u64).unwrap()),
            r#"invalid configuration: delete_some on "f": no argument "3" (its keys hold 0, 1)"#
        );
        assert_eq!(
            err(Args::new().arg("1", &vec![1u8]).unwrap()),
            r#"invalid configuration: delete_some on "f": argument "1" is String, the filter gives Vec<u8>"#
        );
        // Without declared arguments, only ignored names are refused.
        let f = Args::new().arg("x", &1u8).unwrap();
        assert!(check_filter("f", None, &ignored, &f).is_ok());
        let f = Args::new().arg("2", &true).unwrap();
        assert!(check_filter("f", None, &ignored, &f).is_err());
        let none: Vec<DeclaredArg> = Vec::new();
        assert_eq!(
            check_filter("g", Some(&none), &[], &Args::new().arg("a", &1u8).unwrap())
                .unwrap_err()
                .to_string(),
            r#"invalid configuration: delete_some on "g": no argument "a" (its keys hold no arguments)"#
        );
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

    #[test]
    fn hex_digits_are_those_of_format() {
        for v in [
            0u128,
            1,
            9,
            10,
            15,
            16,
            0xdead_beef,
            u128::from(u64::MAX),
            u128::MAX,
        ] {
            let v = v ^ (v << 67);
            let mut out = String::new();
            push_hex(&mut out, v, 32);
            assert_eq!(out, format!("{v:032x}"));
            out.clear();
            push_hex(&mut out, v, 16);
            assert_eq!(out, format!("{:016x}", v as u64));
        }
    }

    /// The suffix a call's handle builds: in a reused buffer, keeping only
    /// the frames when that is all the key needs.
    fn handle_key<A: KeyArgs + ?Sized>(mode: ArgsInKey, args: &A, ignore: &[&str]) -> String {
        let ignore: Vec<String> = ignore.iter().map(|s| s.to_string()).collect();
        with_key_buf(|buf| {
            buf.args.keep_for(mode, &ignore);
            args.write_args(&mut buf.args).unwrap();
            push_suffix(&mut buf.key, "", None, mode, &buf.args, &ignore);
            buf.key.clone()
        })
    }

    #[test]
    fn keys_built_in_the_reused_buffer_are_the_same() {
        let named = Args::new()
            .arg("db", "conn-1")
            .unwrap()
            .arg("id", &7u32)
            .unwrap();
        let only_id = Args::new().arg("id", &7u32).unwrap();
        for mode in [ArgsInKey::Hashed, ArgsInKey::Each, ArgsInKey::Omitted] {
            // Twice each: the second time in buffers left by the first.
            for _ in 0..2 {
                let tuple = (42u64, "fr".to_string(), true);
                assert_eq!(handle_key(mode, &tuple, &[]), key(mode, &tuple, &[]));
                assert_eq!(handle_key(mode, &named, &[]), key(mode, &named, &[]));
                assert_eq!(
                    handle_key(mode, &named, &["db"]),
                    key(mode, &named, &["db"])
                );
                assert_eq!(handle_key(mode, &(), &[]), key(mode, &(), &[]));
            }
        }
        // Leaving an argument out (the kept frames, streamed) is the key of
        // the call without it.
        assert_eq!(
            handle_key(ArgsInKey::Hashed, &named, &["db"]),
            key(ArgsInKey::Hashed, &only_id, &[])
        );
    }

    #[test]
    fn request_hash_is_that_of_path_and_query_joined() {
        assert_eq!(request_hash("/users", "page=2"), xxh3_64(b"/users?page=2"));
        assert_eq!(request_hash("", ""), xxh3_64(b"?"));
        assert_eq!(
            suffix(
                "",
                Some("/a?b"),
                ArgsInKey::Omitted,
                &ArgsWriter::default(),
                &[]
            ),
            format!("|r={:016x};-", request_hash("/a", "b"))
        );
    }

    /// A `Serialize` that builds a key itself while its own key is built.
    struct Reentrant;

    impl Serialize for Reentrant {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            let inner = handle_key(ArgsInKey::Hashed, &(1u8,), &[]);
            assert_eq!(inner, key(ArgsInKey::Hashed, &(1u8,), &[]));
            s.serialize_u8(2)
        }
    }

    #[test]
    fn a_key_built_while_another_is_gets_its_own_buffer() {
        assert_eq!(
            handle_key(ArgsInKey::Hashed, &(Reentrant,), &[]),
            key(ArgsInKey::Hashed, &(2u8,), &[])
        );
    }

    #[test]
    fn a_large_argument_does_not_stay_in_the_thread_buffer() {
        let big = "x".repeat(100_000);
        let k = handle_key(ArgsInKey::Hashed, &(big.as_str(),), &[]);
        assert_eq!(k, key(ArgsInKey::Hashed, &(big.as_str(),), &[]));
        // The thread's buffers are given back after such a use.
        with_key_buf(|buf| {
            assert!(buf.args.frames.capacity() <= KEPT_BYTES);
            assert!(buf
                .args
                .parts
                .iter()
                .all(|(_, b)| b.capacity() <= KEPT_BYTES));
            assert!(buf.key.capacity() <= KEPT_BYTES);
        });
    }
}
