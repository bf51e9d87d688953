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

use serde::{Deserialize, Serialize};

use crate::codec::{Bincode, Codec};

/// The body version this build writes and reads.
pub(crate) const VERSION: u8 = 1;

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
}

impl Malformed {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Malformed::Oversized => "oversized",
            Malformed::UnknownVersion => "unknown_version",
            Malformed::Garbage => "garbage",
        }
    }
}

/// Encodes a body.
pub(crate) fn encode(body: &Body) -> crate::Result<Vec<u8>> {
    let mut out = vec![VERSION];
    Bincode
        .encode_into(body, &mut out)
        .map_err(crate::Error::Encode)?;
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(crate::Error::ValueTooLarge {
            size: out.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    Ok(out)
}

/// Decodes a body.
pub(crate) fn decode(bytes: &[u8]) -> Result<Body, Malformed> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(Malformed::Oversized);
    }
    match bytes.first() {
        None => Err(Malformed::Garbage),
        Some(&VERSION) => Bincode
            .decode(&bytes[1..], MAX_MESSAGE_BYTES)
            .map_err(|_| Malformed::Garbage),
        Some(_) => Err(Malformed::UnknownVersion),
    }
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
            assert_eq!(decode(&encode(&b).unwrap()).unwrap(), b);
        }
    }

    #[test]
    fn refuses_malformed() {
        assert_eq!(decode(b""), Err(Malformed::Garbage));
        assert_eq!(decode(b"\x01garbage"), Err(Malformed::Garbage));
        assert_eq!(decode(b"\x09whatever"), Err(Malformed::UnknownVersion));
        assert_eq!(
            decode(&vec![1u8; MAX_MESSAGE_BYTES + 1]),
            Err(Malformed::Oversized)
        );
        let mut ok = encode(&body(Invalidation::All)).unwrap();
        ok.push(0);
        assert_eq!(decode(&ok), Err(Malformed::Garbage), "trailing bytes");
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
    fn oversized_invalidation_is_refused_on_encode() {
        let keys = (0..100_000).map(|i| format!("key-{i:020}")).collect();
        assert!(matches!(
            encode(&body(Invalidation::Keys(keys))),
            Err(crate::Error::ValueTooLarge { .. })
        ));
    }
}
