//! Rendering: bus messages as text and JSON, timestamps.

use cachenode::{BusMessage, Invalidation, MalformedMessage, RamKey};
use serde_json::{json, Value};

/// Keys shown per message in text mode (JSON shows them all).
const KEYS_SHOWN: usize = 20;

/// A bus message on one line.
pub fn message_text(m: &BusMessage) -> String {
    format!(
        "#{} {} from {} {}",
        m.seq,
        rfc3339(m.sent_at_us),
        m.origin,
        invalidation_text(&m.invalidation)
    )
}

/// A bus message as JSON; `received_at_us` is when this tool got it.
pub fn message_json(m: &BusMessage, received_at_us: u64) -> Value {
    json!({
        "seq": m.seq,
        "origin": m.origin.to_string(),
        "sent_at_us": m.sent_at_us,
        "sent_at": rfc3339(m.sent_at_us),
        "received_at_us": received_at_us,
        "invalidation": invalidation_json(&m.invalidation),
    })
}

/// A payload that did not decode, on one line.
pub fn malformed_text(m: &MalformedMessage) -> String {
    let seq = m.seq.map_or_else(|| "#?".to_owned(), |s| format!("#{s}"));
    format!("{seq} malformed: {} ({} bytes)", m.reason, m.len)
}

/// A payload that did not decode, as JSON.
pub fn malformed_json(m: &MalformedMessage) -> Value {
    json!({ "seq": m.seq, "malformed": m.reason, "bytes": m.len })
}

fn invalidation_text(inv: &Invalidation) -> String {
    match inv {
        Invalidation::Keys(keys) => {
            let mut out = format!("keys({})", keys.len());
            for k in keys.iter().take(KEYS_SHOWN) {
                let shown = RamKey::parse(k).to_string();
                if shown.contains([' ', ',', '"']) {
                    out.push_str(&format!(" {shown:?}"));
                } else {
                    out.push(' ');
                    out.push_str(&shown);
                }
            }
            if keys.len() > KEYS_SHOWN {
                out.push_str(&format!(" … and {} more", keys.len() - KEYS_SHOWN));
            }
            out
        }
        Invalidation::Func(name) => format!("func {}", name.escape_debug()),
        Invalidation::All => "all".to_owned(),
    }
}

fn invalidation_json(inv: &Invalidation) -> Value {
    match inv {
        Invalidation::Keys(keys) => {
            let keys: Vec<Value> = keys
                .iter()
                .map(|k| match RamKey::parse(k) {
                    RamKey::Plain(key) => json!({ "kind": "plain", "key": key }),
                    RamKey::Func { name, call } => {
                        json!({ "kind": "func", "func": name, "call": call })
                    }
                })
                .collect();
            json!({ "type": "keys", "keys": keys })
        }
        Invalidation::Func(name) => json!({ "type": "func", "func": name }),
        Invalidation::All => json!({ "type": "all" }),
    }
}

/// Unix microseconds as RFC 3339 UTC with microseconds.
pub fn rfc3339(unix_us: u64) -> String {
    let secs = unix_us / 1_000_000;
    let micros = unix_us % 1_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Now, Unix microseconds.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(
            rfc3339(1_700_000_000_123_456),
            "2023-11-14T22:13:20.123456Z"
        );
    }

    #[test]
    fn invalidations_read_well() {
        let keys = Invalidation::Keys(vec![
            "user:1".into(),
            "\0fget_user:|;user=00ff".into(),
            "a b".into(),
        ]);
        assert_eq!(
            invalidation_text(&keys),
            "keys(3) k:user:1 f:get_user:|;user=00ff \"k:a b\""
        );
        assert_eq!(invalidation_text(&Invalidation::All), "all");
        assert_eq!(
            invalidation_json(&keys)["keys"][1],
            json!({"kind": "func", "func": "get_user", "call": "|;user=00ff"})
        );
        let many = Invalidation::Keys((0..25).map(|i| format!("k{i}")).collect());
        assert!(invalidation_text(&many).ends_with("k:k19 … and 5 more"));
    }
}
