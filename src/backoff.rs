//! Capped exponential backoff: the one pause rule of every loop that talks
//! to Redis (the bus listener resubscribing, a builder reconnecting, a
//! caller waiting for another instance's at-most-once computation).
//!
//! A leaf, so each of those rooms takes its pauses from here rather than
//! writing its own doubling.

use std::time::Duration;

/// Pauses that double from `min` up to `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    current: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `min`.
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            current: min,
            min,
            max,
        }
    }

    /// The pause to take now, without moving on.
    pub(crate) fn current(&self) -> Duration {
        self.current
    }

    /// Doubles the pause, up to `max`.
    pub(crate) fn grow(&mut self) {
        self.current = (self.current * 2).min(self.max);
    }

    /// The pause to take now; the next one is twice as long (up to `max`).
    pub(crate) fn next(&mut self) -> Duration {
        let d = self.current;
        self.grow();
        d
    }

    /// Back to `min`, after a success.
    pub(crate) fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let taken: Vec<u64> = (0..6).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(taken, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.current(), Duration::from_millis(100));
        b.grow();
        assert_eq!(b.current(), Duration::from_millis(200));
    }
}
