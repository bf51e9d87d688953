//! Clocks: a monotonic tick counter for the RAM lease, read on every RAM hit,
//! and the wall clock in Unix time for what travels between processes
//! (value expiries, bus publish times).
//!
//! A leaf: every room that reads the time takes it from here, so none of
//! them depends on the node for it.
//!
//! The lease (see [`local`](crate::local)) is read by every RAM hit and must
//! not depend on the tokio scheduler: a reader that never yields, or a
//! runtime whose workers are all busy, must still see it run out. So it is
//! kept in the ticks of the processor's monotonic counter (`quanta`: the TSC
//! where it is invariant, the OS monotonic clock elsewhere), which a reader
//! reads in a few nanoseconds without any task having to run.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A monotonic clock counting in raw ticks.
#[derive(Clone, Debug)]
pub(crate) struct Ticks {
    clock: quanta::Clock,
    /// Ticks in 2^20 nanoseconds.
    per_2_20_ns: u64,
}

impl Ticks {
    /// The process's clock (calibrated once).
    pub(crate) fn get() -> &'static Ticks {
        static CLOCK: OnceLock<Ticks> = OnceLock::new();
        CLOCK.get_or_init(|| {
            let clock = quanta::Clock::new();
            // quanta scales ticks to nanoseconds; invert that scale once, so
            // that a deadline can be kept in ticks and a read compares raw
            // ticks without scaling.
            let probe: u64 = 1 << 40;
            let ns = clock.delta_as_nanos(0, probe).max(1);
            let per_2_20_ns = ((u128::from(probe) << 20) / u128::from(ns)) as u64;
            Ticks {
                clock,
                per_2_20_ns: per_2_20_ns.max(1),
            }
        })
    }

    /// Now, in ticks.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.clock.raw()
    }

    /// `d` in ticks (saturating).
    pub(crate) fn ticks_in(&self, d: Duration) -> u64 {
        let ns = d.as_nanos();
        u64::try_from((ns * u128::from(self.per_2_20_ns)) >> 20).unwrap_or(u64::MAX)
    }

    /// The time from `start` to `end` (zero when `end` is not later).
    #[cfg(test)]
    pub(crate) fn between(&self, start: u64, end: u64) -> Duration {
        Duration::from_nanos(self.clock.delta_as_nanos(start, end))
    }
}

/// The wall clock, Unix microseconds (0 before 1970).
pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The wall clock, Unix milliseconds (0 before 1970).
pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_convert_both_ways() {
        let c = Ticks::get();
        let d = Duration::from_millis(250);
        let start = c.now();
        let back = c.between(start, start + c.ticks_in(d));
        let err = back.as_nanos().abs_diff(d.as_nanos());
        assert!(err < 1_000, "250 ms came back as {back:?}");
    }

    #[test]
    fn ticks_follow_wall_time() {
        let c = Ticks::get();
        let (t0, i0) = (c.now(), std::time::Instant::now());
        std::thread::sleep(Duration::from_millis(50));
        let (t1, i1) = (c.now(), std::time::Instant::now());
        let ticks = c.between(t0, t1).as_secs_f64();
        let wall = (i1 - i0).as_secs_f64();
        assert!(
            (ticks - wall).abs() < 0.005,
            "ticks {ticks} s, wall {wall} s"
        );
    }
}

/// The schedule of a node's periodic background task: a tick every period
/// (late ticks delay the next ones rather than bunching up) until the node
/// stops.
#[derive(Debug)]
pub(crate) struct Periodic {
    tick: tokio::time::Interval,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Periodic {
    /// Ticks every `period`, the first one at once, until `stop` changes.
    pub(crate) fn new(period: Duration, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Periodic { tick, stop }
    }

    /// The same, the first tick one period from now.
    pub(crate) fn after_one_period(
        period: Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        let start = tokio::time::Instant::now() + period;
        let mut tick = tokio::time::interval_at(start, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Periodic { tick, stop }
    }

    /// Waits for the next tick: `false` once the node stops.
    pub(crate) async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.stop.changed() => false,
            _ = self.tick.tick() => true,
        }
    }
}
