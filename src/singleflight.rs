//! Single-flight: concurrent misses of one key in one process run the
//! computation once and share its result.
//!
//! The first caller of a key becomes the *leader*; later callers wait for
//! it. A leader that finishes with a value hands it to every waiter; one that
//! fails (the user's function returned an error, or the leader was dropped)
//! releases them empty-handed, and each then computes for itself, so errors
//! are never shared or cached.
//!
//! A caller that arrives after an invalidation of the key does not join a
//! flight begun before it (whose value may be computed from what the
//! invalidation removed): it leads a new one.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::local::FillTicket;

type Shared = Arc<dyn Any + Send + Sync>;

#[derive(Clone)]
enum State {
    Pending,
    Done(Option<Shared>),
}

/// A flight in progress: its id (so a leader removes its own flight only),
/// the RAM fill ticket its leader took before reading, and its result.
struct Flight {
    id: u64,
    ticket: Option<FillTicket>,
    rx: watch::Receiver<State>,
}

/// The flights in progress of one cached function.
#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, Flight>>,
    next_id: AtomicU64,
}

/// What a caller of [`Flights::join`] should do.
pub(crate) enum Role<'a> {
    /// Compute, then [`Leader::finish`].
    Leader(Leader<'a>),
    /// Wait with [`Follower::wait`].
    Follower(Follower),
}

/// The caller that computes.
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: String,
    id: u64,
    tx: watch::Sender<State>,
    finished: bool,
}

/// A caller that waits for the leader.
pub(crate) struct Follower(watch::Receiver<State>);

impl Flights {
    /// Joins the flight of `key`, starting it when there is none. `ticket`
    /// is the caller's RAM fill ticket, taken before the call looks at
    /// Redis (`None` without RAM).
    ///
    /// A flight whose leader took its ticket before an invalidation of the
    /// key (`stale(ticket)`, asked under the flights' lock) is not joined:
    /// its value may be computed from data read before the invalidation,
    /// which a caller arriving after it must not get. The caller then leads
    /// a new flight, which later callers join; the old leader still answers
    /// its own followers.
    pub(crate) fn join(
        &self,
        key: &str,
        ticket: Option<FillTicket>,
        stale: impl FnOnce(FillTicket) -> bool,
    ) -> Role<'_> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = map.get(key) {
            if !flight.ticket.is_some_and(stale) {
                return Role::Follower(Follower(flight.rx.clone()));
            }
        }
        let (tx, rx) = watch::channel(State::Pending);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        map.insert(key.to_owned(), Flight { id, ticket, rx });
        Role::Leader(Leader {
            flights: self,
            key: key.to_owned(),
            id,
            tx,
            finished: false,
        })
    }

    /// Number of flights in progress.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

impl Leader<'_> {
    /// Hands `value` to the waiters (`None`: they compute themselves).
    pub(crate) fn finish<V: Send + Sync + 'static>(mut self, value: Option<Arc<V>>) {
        self.close(value.map(|v| v as Shared));
    }

    fn close(&mut self, value: Option<Shared>) {
        if self.finished {
            return;
        }
        self.finished = true;
        // Remove first: a caller arriving now starts a new flight and reads
        // the cache the leader has just filled. A flight that replaced this
        // one (begun after an invalidation) is left alone.
        {
            let mut map = self.flights.map.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&self.key).is_some_and(|f| f.id == self.id) {
                map.remove(&self.key);
            }
        }
        let _ = self.tx.send(State::Done(value));
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        // The leader failed or its future was dropped mid-computation.
        self.close(None);
    }
}

impl Follower {
    /// The leader's value, if it produced one of type `V`.
    pub(crate) async fn wait<V: Send + Sync + 'static>(mut self) -> Option<Arc<V>> {
        let state = self
            .0
            .wait_for(|s| matches!(s, State::Done(_)))
            .await
            .ok()?
            .clone();
        match state {
            State::Done(Some(v)) => v.downcast::<V>().ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::LocalLayer;

    fn never_stale(_: FillTicket) -> bool {
        false
    }

    #[tokio::test]
    async fn followers_get_the_leaders_value() {
        let flights = Flights::default();
        let Role::Leader(leader) = flights.join("k", None, never_stale) else {
            panic!("first caller leads")
        };
        let Role::Follower(f) = flights.join("k", None, never_stale) else {
            panic!("second caller follows")
        };
        leader.finish(Some(Arc::new(5u32)));
        assert_eq!(f.wait::<u32>().await.as_deref(), Some(&5));
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn a_failed_leader_releases_followers_empty() {
        let flights = Flights::default();
        let leader = flights.join("k", None, never_stale);
        let Role::Follower(f) = flights.join("k", None, never_stale) else {
            panic!()
        };
        drop(leader);
        assert!(f.wait::<u32>().await.is_none());
        assert!(matches!(
            flights.join("k", None, never_stale),
            Role::Leader(_)
        ));
    }

    #[tokio::test]
    async fn a_caller_after_an_invalidation_leads_a_new_flight() {
        let ram = LocalLayer::new(1 << 20);
        let flights = Flights::default();
        let stale = |t| ram.fenced_since("k", None, t);
        let Role::Leader(old) = flights.join("k", Some(ram.ticket()), stale) else {
            panic!("first caller leads")
        };
        // Joined before the invalidation: shares the old leader's value.
        let Role::Follower(early) = flights.join("k", Some(ram.ticket()), stale) else {
            panic!("a caller before the invalidation follows")
        };
        ram.remove("k");
        let Role::Leader(new) = flights.join("k", Some(ram.ticket()), stale) else {
            panic!("a caller after the invalidation leads a new flight")
        };
        let Role::Follower(late) = flights.join("k", Some(ram.ticket()), stale) else {
            panic!("later callers follow the new flight")
        };
        // Another key's invalidation does not make a flight stale.
        let Role::Leader(_other) =
            flights.join("j", Some(ram.ticket()), |t| ram.fenced_since("j", None, t))
        else {
            panic!()
        };
        ram.remove("unrelated");
        assert!(matches!(
            flights.join("j", Some(ram.ticket()), |t| ram.fenced_since("j", None, t)),
            Role::Follower(_)
        ));

        // The old leader finishing leaves the new flight in place.
        old.finish(Some(Arc::new(1u32)));
        assert_eq!(early.wait::<u32>().await.as_deref(), Some(&1));
        assert!(matches!(
            flights.join("k", Some(ram.ticket()), stale),
            Role::Follower(_)
        ));
        new.finish(Some(Arc::new(2u32)));
        assert_eq!(late.wait::<u32>().await.as_deref(), Some(&2));
        assert!(matches!(
            flights.join("k", Some(ram.ticket()), stale),
            Role::Leader(_)
        ));
    }

    #[tokio::test]
    async fn without_tickets_flights_are_always_joined() {
        let flights = Flights::default();
        let _leader = flights.join("k", None, |_| true);
        assert!(matches!(
            flights.join("k", None, |_| true),
            Role::Follower(_)
        ));
    }
}
