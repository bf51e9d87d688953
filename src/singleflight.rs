//! Single-flight: concurrent misses of one key in one process run the
//! computation once and share its result.
//!
//! The first caller of a key becomes the *leader*; later callers wait for
//! it. A leader that finishes with a value hands it to every waiter; one that
//! fails (the user's function returned an error, or the leader was dropped)
//! releases them empty-handed, and each then computes for itself, so errors
//! are never shared or cached.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

type Shared = Arc<dyn Any + Send + Sync>;

#[derive(Clone)]
enum State {
    Pending,
    Done(Option<Shared>),
}

/// The flights in progress of one cached function.
#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, watch::Receiver<State>>>,
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
    tx: watch::Sender<State>,
    finished: bool,
}

/// A caller that waits for the leader.
pub(crate) struct Follower(watch::Receiver<State>);

impl Flights {
    /// Joins the flight of `key`, starting it when there is none.
    pub(crate) fn join(&self, key: &str) -> Role<'_> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = map.get(key) {
            return Role::Follower(Follower(rx.clone()));
        }
        let (tx, rx) = watch::channel(State::Pending);
        map.insert(key.to_owned(), rx);
        Role::Leader(Leader {
            flights: self,
            key: key.to_owned(),
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
        // the cache the leader has just filled.
        self.flights
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
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

    #[tokio::test]
    async fn followers_get_the_leaders_value() {
        let flights = Flights::default();
        let Role::Leader(leader) = flights.join("k") else {
            panic!("first caller leads")
        };
        let Role::Follower(f) = flights.join("k") else {
            panic!("second caller follows")
        };
        leader.finish(Some(Arc::new(5u32)));
        assert_eq!(f.wait::<u32>().await.as_deref(), Some(&5));
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn a_failed_leader_releases_followers_empty() {
        let flights = Flights::default();
        let leader = flights.join("k");
        let Role::Follower(f) = flights.join("k") else {
            panic!()
        };
        drop(leader);
        assert!(f.wait::<u32>().await.is_none());
        assert!(matches!(flights.join("k"), Role::Leader(_)));
    }
}
