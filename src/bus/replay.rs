//! Refuses replayed signed messages on the channel.
//!
//! A signed body's tag covers its origin (the publishing node's id) and its
//! publish time, and a node never signs two bodies with the same pair: the
//! publisher makes its timestamps strictly increasing. The tag cannot cover
//! the sequence number (Redis assigns it after signing), so a client that
//! may publish on the channel could send a genuine body it captured under
//! the *next* sequence number: applied, it would move the node past that
//! number and the real message carrying it would be skipped as already
//! seen — a lost invalidation.
//!
//! The guard remembers the (origin, publish time) of every signed message
//! this node applied within [`WINDOW`] and refuses, on the channel, any
//! message it has seen, any older than the window, and any published before
//! the listener started. Refusing is always safe: a refused message is not
//! applied and the node does not advance, so a genuine one (delayed past the
//! window, or from a node whose clock lags) is read from the log instead at
//! the next gap or periodic check, within the usual staleness bound. The log
//! itself is authoritative (every entry holds its own number) and is never
//! refused; what it applies is remembered too.

use std::collections::BTreeSet;
use std::time::Duration;

/// How long applied messages are remembered; older ones are refused.
pub(crate) const WINDOW: Duration = Duration::from_secs(30);
/// The most messages remembered; past it, the oldest are forgotten and the
/// refusal floor rises to them.
const MAX_REMEMBERED: usize = 200_000;

/// Why a signed channel message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Applied before.
    Seen,
    /// Published before the window (or the listener's start).
    TooOld,
}

/// The replay guard of one listener.
#[derive(Debug)]
pub(crate) struct ReplayGuard {
    /// (publish time µs, origin) of remembered messages, oldest first.
    seen: BTreeSet<(u64, [u8; 16])>,
    /// Messages published before this are refused.
    floor_us: u64,
}

impl ReplayGuard {
    /// A guard for a listener starting at `now_us` (Unix µs).
    pub(crate) fn new(now_us: u64) -> Self {
        ReplayGuard {
            seen: BTreeSet::new(),
            floor_us: now_us,
        }
    }

    /// Whether a signed message that arrived on the channel may be applied;
    /// when it may, it is remembered.
    pub(crate) fn admit(
        &mut self,
        origin: [u8; 16],
        sent_at_us: u64,
        now_us: u64,
    ) -> Result<(), Refusal> {
        self.forget_before(now_us.saturating_sub(window_us()));
        if sent_at_us < self.floor_us {
            return Err(Refusal::TooOld);
        }
        if !self.seen.insert((sent_at_us, origin)) {
            return Err(Refusal::Seen);
        }
        self.bound();
        Ok(())
    }

    /// Remembers a message applied from the log.
    pub(crate) fn record(&mut self, origin: [u8; 16], sent_at_us: u64, now_us: u64) {
        self.forget_before(now_us.saturating_sub(window_us()));
        if sent_at_us >= self.floor_us {
            self.seen.insert((sent_at_us, origin));
            self.bound();
        }
    }

    /// Number of remembered messages.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.len()
    }

    fn forget_before(&mut self, cutoff_us: u64) {
        if cutoff_us <= self.floor_us {
            return;
        }
        self.floor_us = cutoff_us;
        self.seen = self.seen.split_off(&(cutoff_us, [0; 16]));
    }

    fn bound(&mut self) {
        while self.seen.len() > MAX_REMEMBERED {
            if let Some((sent_at_us, _)) = self.seen.pop_first() {
                self.floor_us = self.floor_us.max(sent_at_us + 1);
            }
        }
    }
}

fn window_us() -> u64 {
    u64::try_from(WINDOW.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 16] = [1; 16];
    const B: [u8; 16] = [2; 16];
    const START: u64 = 1_000_000_000;

    #[test]
    fn a_message_is_admitted_once() {
        let mut g = ReplayGuard::new(START);
        assert_eq!(g.admit(A, START + 10, START + 20), Ok(()));
        assert_eq!(g.admit(A, START + 10, START + 30), Err(Refusal::Seen));
        // Same time, another origin: another message.
        assert_eq!(g.admit(B, START + 10, START + 30), Ok(()));
    }

    #[test]
    fn messages_from_before_the_start_or_the_window_are_refused() {
        let mut g = ReplayGuard::new(START);
        assert_eq!(g.admit(A, START - 1, START), Err(Refusal::TooOld));
        let later = START + window_us() + 5_000_000;
        assert_eq!(g.admit(A, START + 1, later), Err(Refusal::TooOld));
        assert_eq!(g.admit(A, later - 1000, later), Ok(()));
    }

    #[test]
    fn what_the_log_applied_is_refused_on_the_channel() {
        let mut g = ReplayGuard::new(START);
        g.record(A, START + 5, START + 6);
        assert_eq!(g.admit(A, START + 5, START + 7), Err(Refusal::Seen));
    }

    #[test]
    fn memory_is_bounded_by_the_window_and_the_cap() {
        let mut g = ReplayGuard::new(START);
        for i in 0..1000 {
            g.admit(A, START + i, START + i).unwrap();
        }
        assert_eq!(g.len(), 1000);
        // The window passes: everything is forgotten, and refused.
        let later = START + window_us() + 2000;
        assert_eq!(g.admit(B, later, later), Ok(()));
        assert_eq!(g.len(), 1);
        assert_eq!(g.admit(A, START + 999, later), Err(Refusal::TooOld));

        let mut g = ReplayGuard::new(START);
        for i in 0..(MAX_REMEMBERED as u64 + 10) {
            g.admit(A, START + i, START).unwrap();
        }
        assert_eq!(g.len(), MAX_REMEMBERED);
        // The forgotten ones are refused as too old, never admitted again.
        assert_eq!(g.admit(A, START, START), Err(Refusal::TooOld));
        assert_eq!(g.admit(A, START + 9, START), Err(Refusal::TooOld));
        assert_eq!(g.admit(A, START + 10, START), Err(Refusal::Seen));
    }
}
