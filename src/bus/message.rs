//! The bus's wire format.
//!
//! A message *body* is one version byte followed by the bincode encoding of
//! [`Body`]. The sequence number is not inside the body: Redis assigns it in
//! the publish script, which then writes
//!
//! * to the log (a stream): entry id `{seq}-0`, field `m` = body;
//! * to the channel: `{seq}:` followed by the body.
//!
//! Decoding checks the version and decodes under [`MAX_MESSAGE_BYTES`], so a
//! malformed or oversized message is refused without panicking.
//!
//! **Authenticated bodies.** With a bus secret configured, bodies are version
//! [`VERSION_SIGNED`]: the version byte, a 32-byte tag, then the bincode
//! encoding, where tag = HMAC-SHA256(secret, namespace || 0x00 || bincode).
//! The namespace is bound into the tag, so a message signed for one
//! namespace is refused in another. The sequence number is *not* covered
//! (Redis assigns it after signing), so a party that can publish could
//! replay a genuine signed body it captured under another number; the
//! listener's [replay guard](super::replay) refuses those. A node with a secret accepts only
//! signed bodies with a valid tag (checked in constant time); a node without
//! one writes version 1 and reads both versions, the tag of version 2
//! unchecked (it trusts every message anyway), and warns loudly: mixing
//! nodes with and without a secret in one namespace is a misconfiguration.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The body version this build writes and reads without a secret.
pub(crate) const VERSION: u8 = 1;
/// The body version written and required with a bus secret.
pub(crate) const VERSION_SIGNED: u8 = 2;
/// Length of the HMAC-SHA256 tag of a signed body.
pub(crate) const TAG_LEN: usize = 32;

/// The keyed MAC of a namespace's bus: signs and verifies bodies. Its
/// `Debug` never shows the secret.
#[derive(Clone)]
pub(crate) struct BusAuth {
    /// Keyed with the secret and already fed `namespace || 0x00`.
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for BusAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusAuth(<secret>)")
    }
}

impl BusAuth {
    /// The MAC for `namespace`'s bus under `secret`.
    pub(crate) fn new(secret: &[u8], namespace: &str) -> Self {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
        mac.update(namespace.as_bytes());
        mac.update(&[0]);
        BusAuth { mac }
    }

    fn tag(&self, encoded: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(encoded);
        mac.finalize().into_bytes().into()
    }

    fn verify(&self, tag: &[u8], encoded: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(encoded);
        mac.verify_slice(tag).is_ok()
    }
}

/// The largest body accepted; bigger invalidations are split by the publisher.
pub(crate) const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// What an invalidation drops from RAM on every instance.
///
/// Keys are RAM keys (plain keys as given, function keys in their internal
/// form), so applying a message needs no knowledge of the namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Invalidation {
    /// These keys.
    Keys(Vec<String>),
    /// Every value of this cached function.
    Func(String),
    /// Everything.
    All,
}

/// A decoded message body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Body {
    /// The id of the node that published it.
    pub(crate) origin: [u8; 16],
    /// When it was published, Unix microseconds (for the propagation delay).
    pub(crate) sent_at_us: u64,
    /// What to drop.
    pub(crate) invalidation: Invalidation,
}

/// Why a message was refused (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// Larger than [`MAX_MESSAGE_BYTES`].
    Oversized,
    /// Written by a newer cachenode.
    UnknownVersion,
    /// Not a message at all.
    Garbage,
    /// Not signed, on a node that has a bus secret.
    Unsigned,
    /// Signed, but the tag does not match (another secret, another
    /// namespace, or tampered with).
    BadSignature,
    /// Signed and genuine, but applied before or published too long ago:
    /// replayed on the channel (see [`super::replay`]).
    Replayed,
}

impl Malformed {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Malformed::Oversized => "oversized",
            Malformed::UnknownVersion => "unknown_version",
            Malformed::Garbage => "garbage",
            Malformed::Unsigned => "unsigned",
            Malformed::BadSignature => "bad_signature",
            Malformed::Replayed => "replayed",
        }
    }

    /// Whether the message was refused for lack of a valid signature (it may
    /// be forged: it must never cause a flush or a catch-up).
    pub(crate) fn is_unauthenticated(self) -> bool {
        matches!(
            self,
            Malformed::Unsigned | Malformed::BadSignature | Malformed::Replayed
        )
    }
}

/// Encodes a body: version 1, or version 2 signed when `auth` is given.
pub(crate) fn encode(body: &Body, auth: Option<&BusAuth>) -> crate::Result<Vec<u8>> {
    let mut out = match auth {
        None => vec![VERSION],
        Some(_) => {
            let mut out = vec![0; 1 + TAG_LEN];
            out[0] = VERSION_SIGNED;
            out
        }
    };
    crate::codec::bincode_encode_into(body, &mut out).map_err(crate::Error::Encode)?;
    if let Some(auth) = auth {
        let tag = auth.tag(&out[1 + TAG_LEN..]);
        out[1..1 + TAG_LEN].copy_from_slice(&tag);
    }
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(crate::Error::ValueTooLarge {
            size: out.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    Ok(out)
}

/// Decodes a body. With `auth`, only a signed body whose tag verifies is
/// accepted; without, both versions are (the tag of a signed one unchecked).
pub(crate) fn decode(bytes: &[u8], auth: Option<&BusAuth>) -> Result<Body, Malformed> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(Malformed::Oversized);
    }
    let encoded = match (bytes.first(), auth) {
        (None, _) => return Err(Malformed::Garbage),
        (Some(&VERSION), None) => &bytes[1..],
        (Some(&VERSION), Some(_)) => return Err(Malformed::Unsigned),
        (Some(&VERSION_SIGNED), _) if bytes.len() < 1 + TAG_LEN => {
            return Err(match auth {
                Some(_) => Malformed::BadSignature,
                None => Malformed::Garbage,
            })
        }
        (Some(&VERSION_SIGNED), None) => &bytes[1 + TAG_LEN..],
        (Some(&VERSION_SIGNED), Some(auth)) => {
            let (tag, encoded) = bytes[1..].split_at(TAG_LEN);
            if !auth.verify(tag, encoded) {
                return Err(Malformed::BadSignature);
            }
            encoded
        }
        (Some(_), Some(_)) => return Err(Malformed::Unsigned),
        (Some(_), None) => return Err(Malformed::UnknownVersion),
    };
    crate::codec::bincode_decode(encoded, MAX_MESSAGE_BYTES).map_err(|_| Malformed::Garbage)
}

/// Whether `bytes` is a signed body (version 2), whatever its tag.
pub(crate) fn is_signed(bytes: &[u8]) -> bool {
    bytes.first() == Some(&VERSION_SIGNED)
}

/// Splits a channel payload `{seq}:{body}` into its parts.
pub(crate) fn split_channel_payload(payload: &[u8]) -> Option<(u64, &[u8])> {
    let colon = payload.iter().take(21).position(|&b| b == b':')?;
    let seq = std::str::from_utf8(&payload[..colon]).ok()?.parse().ok()?;
    Some((seq, &payload[colon + 1..]))
}

/// The sequence number of a log entry id `{seq}-0`.
pub(crate) fn seq_of_entry_id(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

/// A bus message as read from the channel, for tools that watch the bus
/// (`cachenode tail`). See [`decode_channel_payload`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusMessage {
    /// Its sequence number, assigned by Redis when it was published.
    pub seq: u64,
    /// The node that published it (a random id drawn when a node starts).
    pub origin: uuid::Uuid,
    /// When it was published, Unix microseconds (the publisher's clock).
    pub sent_at_us: u64,
    /// What it drops from RAM.
    pub invalidation: Invalidation,
}

/// A bus channel payload that is not a message this build can read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MalformedMessage {
    /// The sequence number, when the payload starts with one.
    pub seq: Option<u64>,
    /// Why: `no_sequence`, `oversized`, `unknown_version`, `garbage`, or,
    /// when the reader has a bus secret, `unsigned` or `bad_signature`.
    pub reason: &'static str,
    /// The payload's length in bytes.
    pub len: usize,
}

impl std::fmt::Display for MalformedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "malformed bus message ({}, {} bytes",
            self.reason, self.len
        )?;
        if let Some(seq) = self.seq {
            write!(f, ", seq {seq}")?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for MalformedMessage {}

/// Decodes a payload of the bus channel (`{seq}:{body}`). Never panics:
/// anything else is a [`MalformedMessage`]. Signed messages (version 2) are
/// decoded without checking their tag: this function knows no secret
/// ([`tail_bus`](crate::CacheNode::tail_bus) on a node with a bus secret
/// checks it).
pub fn decode_channel_payload(payload: &[u8]) -> Result<BusMessage, MalformedMessage> {
    decode_channel_payload_with(payload, None)
}

/// [`decode_channel_payload`], verifying signatures when `auth` is given.
pub(crate) fn decode_channel_payload_with(
    payload: &[u8],
    auth: Option<&BusAuth>,
) -> Result<BusMessage, MalformedMessage> {
    let Some((seq, body)) = split_channel_payload(payload) else {
        return Err(MalformedMessage {
            seq: None,
            reason: "no_sequence",
            len: payload.len(),
        });
    };
    let body = decode(body, auth).map_err(|m| MalformedMessage {
        seq: Some(seq),
        reason: m.label(),
        len: payload.len(),
    })?;
    Ok(BusMessage {
        seq,
        origin: uuid::Uuid::from_bytes(body.origin),
        sent_at_us: body.sent_at_us,
        invalidation: body.invalidation,
    })
}

/// A key of an [`Invalidation::Keys`] message, told apart: plain keys are
/// carried as the application wrote them, keys of cached functions in an
/// internal form (`\0f{func}:{call}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamKey<'a> {
    /// A plain key (`node.set`, `node.delete`, …).
    Plain(&'a str),
    /// A value of a cached function.
    Func {
        /// The function's name.
        name: &'a str,
        /// The call's part of the key (`{prefix}|{args}`), as in Redis.
        call: &'a str,
    },
}

impl<'a> RamKey<'a> {
    /// Tells what the RAM key `key` (from an [`Invalidation::Keys`]) is.
    pub fn parse(key: &'a str) -> Self {
        if let Some(plain) = key.strip_prefix("\0k") {
            RamKey::Plain(plain)
        } else if let Some(func) = key.strip_prefix("\0f") {
            let (name, call) = func.split_once(':').unwrap_or((func, ""));
            RamKey::Func { name, call }
        } else {
            RamKey::Plain(key)
        }
    }
}

/// Shown as the Redis key after `{ns}:`: `k:{key}` or `f:{func}:{call}`,
/// control characters escaped.
impl std::fmt::Display for RamKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RamKey::Plain(key) => write!(f, "k:{}", key.escape_debug()),
            RamKey::Func { name, call } => {
                write!(f, "f:{}:{}", name.escape_debug(), call.escape_debug())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(inv: Invalidation) -> Body {
        Body {
            origin: [7; 16],
            sent_at_us: 123,
            invalidation: inv,
        }
    }

    #[test]
    fn roundtrip() {
        for inv in [
            Invalidation::Keys(vec!["a".into(), "\0fx:y".into()]),
            Invalidation::Func("get_user".into()),
            Invalidation::All,
        ] {
            let b = body(inv);
            assert_eq!(decode(&encode(&b, None).unwrap(), None).unwrap(), b);
        }
    }

    #[test]
    fn refuses_malformed() {
        assert_eq!(decode(b"", None), Err(Malformed::Garbage));
        assert_eq!(decode(b"\x01garbage", None), Err(Malformed::Garbage));
        assert_eq!(
            decode(b"\x09whatever", None),
            Err(Malformed::UnknownVersion)
        );
        assert_eq!(
            decode(&vec![1u8; MAX_MESSAGE_BYTES + 1], None),
            Err(Malformed::Oversized)
        );
        let mut ok = encode(&body(Invalidation::All), None).unwrap();
        ok.push(0);
        assert_eq!(decode(&ok, None), Err(Malformed::Garbage), "trailing bytes");
    }

    #[test]
    fn channel_payload_and_entry_ids() {
        assert_eq!(
            split_channel_payload(b"42:\x01abc"),
            Some((42, &b"\x01abc"[..]))
        );
        assert_eq!(split_channel_payload(b"x:abc"), None);
        assert_eq!(split_channel_payload(b"nocolon"), None);
        assert_eq!(split_channel_payload(b"99999999999999999999999:a"), None);
        assert_eq!(seq_of_entry_id("17-0"), Some(17));
        assert_eq!(seq_of_entry_id("bad"), None);
    }

    #[test]
    fn public_decoding_never_panics() {
        let b = body(Invalidation::Keys(vec!["a".into()]));
        let mut payload = b"7:".to_vec();
        payload.extend(encode(&b, None).unwrap());
        let m = decode_channel_payload(&payload).unwrap();
        assert_eq!(m.seq, 7);
        assert_eq!(m.origin, uuid::Uuid::from_bytes([7; 16]));
        assert_eq!(m.sent_at_us, 123);
        assert_eq!(m.invalidation, Invalidation::Keys(vec!["a".into()]));
        let bad = decode_channel_payload(b"hello").unwrap_err();
        assert_eq!((bad.seq, bad.reason, bad.len), (None, "no_sequence", 5));
        let bad = decode_channel_payload(b"3:\x01zz").unwrap_err();
        assert_eq!((bad.seq, bad.reason), (Some(3), "garbage"));
        let bad = decode_channel_payload(b"4:\x09zz").unwrap_err();
        assert_eq!(bad.reason, "unknown_version");
        assert_eq!(
            bad.to_string(),
            "malformed bus message (unknown_version, 5 bytes, seq 4)"
        );
    }

    #[test]
    fn ram_keys_are_told_apart() {
        assert_eq!(RamKey::parse("user:1"), RamKey::Plain("user:1"));
        assert_eq!(RamKey::parse("\0k\0odd"), RamKey::Plain("\0odd"));
        let f = RamKey::parse("\0fget_user:|;user=00ff");
        assert_eq!(
            f,
            RamKey::Func {
                name: "get_user",
                call: "|;user=00ff"
            }
        );
        assert_eq!(f.to_string(), "f:get_user:|;user=00ff");
        assert_eq!(RamKey::parse("user:1").to_string(), "k:user:1");
        assert_eq!(RamKey::parse("\0k\0odd").to_string(), "k:\\0odd");
    }

    #[test]
    fn oversized_invalidation_is_refused_on_encode() {
        let keys = (0..100_000).map(|i| format!("key-{i:020}")).collect();
        assert!(matches!(
            encode(&body(Invalidation::Keys(keys)), None),
            Err(crate::Error::ValueTooLarge { .. })
        ));
    }

    #[test]
    fn signed_roundtrip_and_tamper() {
        let auth = BusAuth::new(b"s3cret", "ns");
        let b = body(Invalidation::Keys(vec!["a".into(), "b".into()]));
        let signed = encode(&b, Some(&auth)).unwrap();
        assert_eq!(signed[0], VERSION_SIGNED);
        assert!(is_signed(&signed));
        assert_eq!(decode(&signed, Some(&auth)).unwrap(), b);
        // A node without a secret reads it (tag unchecked).
        assert_eq!(decode(&signed, None).unwrap(), b);

        // Unsigned, on a node with a secret.
        let plain = encode(&b, None).unwrap();
        assert_eq!(decode(&plain, Some(&auth)), Err(Malformed::Unsigned));
        // Another secret, another namespace.
        for other in [BusAuth::new(b"other", "ns"), BusAuth::new(b"s3cret", "ns2")] {
            assert_eq!(decode(&signed, Some(&other)), Err(Malformed::BadSignature));
        }
        // Any flipped bit, in the tag or the body.
        for i in 1..signed.len() {
            let mut t = signed.clone();
            t[i] ^= 0x01;
            assert_eq!(
                decode(&t, Some(&auth)),
                Err(Malformed::BadSignature),
                "byte {i}"
            );
        }
        // A v1 body re-labelled as v2 with a zero tag; truncated; other versions.
        let mut relabel = vec![VERSION_SIGNED];
        relabel.extend([0u8; TAG_LEN]);
        relabel.extend(&plain[1..]);
        assert_eq!(decode(&relabel, Some(&auth)), Err(Malformed::BadSignature));
        assert_eq!(
            decode(&signed[..20], Some(&auth)),
            Err(Malformed::BadSignature)
        );
        assert_eq!(decode(&signed[..20], None), Err(Malformed::Garbage));
        assert_eq!(decode(b"\x09x", Some(&auth)), Err(Malformed::Unsigned));
        assert!(Malformed::Unsigned.is_unauthenticated());
        assert!(Malformed::BadSignature.is_unauthenticated());
        assert!(!Malformed::Garbage.is_unauthenticated());
        // The secret never shows.
        assert_eq!(format!("{auth:?}"), "BusAuth(<secret>)");

        let mut payload = b"5:".to_vec();
        payload.extend(&plain);
        let bad = decode_channel_payload_with(&payload, Some(&auth)).unwrap_err();
        assert_eq!((bad.seq, bad.reason), (Some(5), "unsigned"));
        let mut payload = b"6:".to_vec();
        payload.extend(&signed);
        assert_eq!(
            decode_channel_payload_with(&payload, Some(&auth))
                .unwrap()
                .seq,
            6
        );
    }
}
