//! The RAM layer: a bounded, per-process moka cache of decoded values.
//!
//! Entries hold the user's value as an `Arc<dyn Any>`, so a hit costs one
//! reference-count increment and a type check, never a decode. The cache is
//! bounded in bytes (each entry is weighed when inserted) and every entry has
//! its own expiry.
//!
//! One concern, the RAM layer, in one file although it passes 600 lines
//! (a third of them its unit tests): the entries, the fences that keep an
//! old value out, the lease and the one fill routine ([`LocalLayer::fill`])
//! are one invariant, and split apart each would be read only with the
//! others open.
//!
//! # Invalidation epochs and fenced fills
//!
//! Every invalidation applied to this layer (of a key, of a function's keys,
//! or of everything) takes a new number from one monotonic *epoch* counter
//! and records it as a fence: per key in a fixed table of hashed slots, per
//! function name, and for "everything". A fill (a value read from Redis or
//! computed, about to be put in RAM) takes a [`FillTicket`] with the current
//! epoch *before* it starts reading. When it inserts, an entry is only kept
//! if no fence that covers it is newer than the ticket; otherwise the value
//! it carries may predate the invalidation and is dropped (DESIGN §5).
//!
//! Function and "everything" fences are also checked on every read (an entry
//! is valid while its stamp is not older than its function's fence and the
//! global fence), which makes dropping every entry of a function O(1). Key
//! fences are checked right after the insert instead, so a read does not hash
//! the key a second time: an insert that lost the race removes itself.
//!
//! # The lease
//!
//! On a node with a bus, RAM is served only under a [`Lease`]: a deadline
//! that the bus listener moves to `start + deletion_check_period` after
//! each deletion check that *started* at `start` and brought the node up to
//! Redis's sequence number. Every invalidation acknowledged before `start` is
//! then applied, so an entry served before the deadline is not older than any
//! invalidation acknowledged more than one period ago. The read path checks
//! the deadline itself, against [`clock::Ticks`](crate::clock::Ticks): when
//! the listener cannot run (a reader that never yields, a `current_thread`
//! runtime, workers all busy, a listener dead or behind its backlog) or
//! cannot reach Redis, the lease runs out and reads go to Redis, which is
//! where the listener gets its turn again. Entries are kept meanwhile, and
//! served again once a check succeeds: it applied every invalidation they
//! could have missed, and fills made meanwhile were fenced as usual. Values
//! kept in this process's RAM alone (RAM-only writes, memory functions) are
//! served outside the lease: nothing in Redis stands behind them.

use std::any::Any;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::clock::{unix_millis, Ticks};

/// Bytes charged to every entry on top of its key and value, for the entry
/// itself and moka's bookkeeping. Measured in `benches/` (see BENCHMARKS.md).
pub(crate) const ENTRY_OVERHEAD_BYTES: u32 = 96;

/// Number of hashed slots in the per-key fence table. A collision only makes
/// a racing fill skip its RAM insert, which costs a later Redis read.
const KEY_FENCE_SLOTS: usize = 4096;

/// Per-function state: the fence that drops all of a function's entries.
#[derive(Debug)]
pub(crate) struct Group {
    fence: AtomicU64,
}

/// One RAM entry.
#[derive(Clone)]
pub(crate) struct Entry {
    value: Arc<dyn Any + Send + Sync>,
    ttl: Option<Duration>,
    weight: u32,
    /// The epoch of the fill that produced the entry.
    stamp: u64,
    group: Option<Arc<Group>>,
    /// Served only while the lease holds (see the module docs); false for
    /// values that live in this process's RAM alone.
    leased: bool,
}

impl Entry {
    /// An entry for `value` living at most `ttl` (`None`: until evicted or
    /// invalidated), weighing about `value_bytes`.
    pub(crate) fn new(
        value: Arc<dyn Any + Send + Sync>,
        ttl: Option<Duration>,
        value_bytes: usize,
        group: Option<Arc<Group>>,
    ) -> Self {
        let weight = u32::try_from(value_bytes)
            .unwrap_or(u32::MAX)
            .saturating_add(ENTRY_OVERHEAD_BYTES);
        Entry {
            value,
            ttl,
            weight,
            stamp: 0,
            group,
            leased: true,
        }
    }

    /// Marks a value that lives in this process's RAM alone (a RAM-only
    /// write, a memory function): no other instance writes it, so it is
    /// served whether or not the lease holds. Invalidations from the bus
    /// still remove it when they are applied, but the staleness bound does
    /// not cover it.
    pub(crate) fn ram_only(mut self) -> Self {
        self.leased = false;
        self
    }
}

/// Until when RAM may be served (see the module docs).
pub(crate) struct Lease {
    ticks: &'static Ticks,
    /// Deadline in [`Ticks`]; `u64::MAX` when unbounded (no bus).
    until: AtomicU64,
    /// The period a renewal adds, in ticks.
    period: u64,
}

impl Lease {
    /// A lease that never runs out: a node without a bus has nothing to
    /// wait for.
    fn unbounded() -> Self {
        Lease {
            ticks: Ticks::get(),
            until: AtomicU64::new(u64::MAX),
            period: u64::MAX,
        }
    }

    /// A lease renewed by `period` at a time, run out until the first
    /// renewal.
    fn renewable(period: Duration) -> Self {
        let ticks = Ticks::get();
        Lease {
            ticks,
            until: AtomicU64::new(0),
            period: ticks.ticks_in(period),
        }
    }

    /// Whether RAM may be served now.
    #[inline]
    fn holds(&self) -> bool {
        let until = self.until.load(Ordering::Acquire);
        until == u64::MAX || self.ticks.now() < until
    }
}

/// The instant a deletion check started, for [`LocalLayer::renew_lease`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct CheckStart(u64);

/// Taken before a fill starts; see the module docs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FillTicket(u64);

/// When a value put into RAM expires.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Expiry {
    /// After this long (`None`: never), as the value's TTL says.
    After(Option<Duration>),
    /// At this instant, Unix ms, as the value's envelope in Redis says (0:
    /// never); a value already past it is not put in RAM.
    At(u64),
}

/// How a fill is fenced (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fence {
    /// A read or a computation that took this ticket before it started.
    Ticket(FillTicket),
    /// This node's own write, begun with [`LocalLayer::begin_own_write`].
    OwnWrite(FillTicket),
}

/// A value on its way into RAM: what every fill site hands
/// [`LocalLayer::fill`].
pub(crate) struct Fill {
    /// When it expires.
    pub(crate) expiry: Expiry,
    /// The longest it stays in RAM whatever its expiry (the node's
    /// `ram_max_ttl`; `None`: no cap).
    pub(crate) cap: Option<Duration>,
    /// About how many bytes it weighs (its encoded size when known).
    pub(crate) bytes: usize,
    /// The function it belongs to, if any.
    pub(crate) group: Option<Arc<Group>>,
    /// Kept in this process's RAM alone (see [`Entry::ram_only`]).
    pub(crate) ram_only: bool,
}

impl Fill {
    /// How long the value may stay in RAM: its expiry, capped; `None` when
    /// it has already expired.
    fn ttl(&self) -> Option<Option<Duration>> {
        let ttl = match self.expiry {
            Expiry::After(ttl) => ttl,
            Expiry::At(0) => None,
            Expiry::At(at) => {
                let now = unix_millis();
                if at <= now {
                    return None;
                }
                Some(Duration::from_millis(at - now))
            }
        };
        Some(match (ttl, self.cap) {
            (Some(t), Some(cap)) => Some(t.min(cap)),
            (t, cap) => t.or(cap),
        })
    }
}

struct PerEntryExpiry;

impl moka::Expiry<String, Entry> for PerEntryExpiry {
    fn expire_after_create(&self, _: &String, value: &Entry, _: Instant) -> Option<Duration> {
        value.ttl
    }

    fn expire_after_update(
        &self,
        _: &String,
        value: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        value.ttl
    }
}

/// Why the whole RAM layer was dropped (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlushReason {
    /// A user or a peer asked to invalidate everything.
    InvalidateAll,
    /// The bus could not catch up (stream trimmed, Redis replaced).
    BusGap,
}

impl FlushReason {
    pub(crate) fn label(self) -> &'static str {
        match self {
            FlushReason::InvalidateAll => "invalidate_all",
            FlushReason::BusGap => "bus_gap",
        }
    }
}

/// How the RAM layer hashes its keys: foldhash (its "quality" variant, as
/// moka also feeds the hash to its frequency sketch), seeded at random per
/// process. Every lookup hashes its key once; with SipHash, std's default,
/// that cost a cached function's hit about 220 of its 2650 instructions
/// (its RAM keys are about 50 bytes) and a plain `get_arc` about 130 of
/// 1390 (benches/hit_cost.rs). Like SipHash's random keys, the random
/// seed keeps a client who chooses cache keys from aiming at collisions,
/// though foldhash claims only "minimal" resistance against one who
/// studies a long-running process to recover it.
type KeyHasher = foldhash::quality::RandomState;

/// The RAM layer of a node.
pub(crate) struct LocalLayer {
    cache: Cache<String, Entry, KeyHasher>,
    epoch: AtomicU64,
    key_fences: Box<[AtomicU64]>,
    all_fence: AtomicU64,
    lease: Lease,
    /// Groups of the functions this node uses (created by their handles).
    groups: Mutex<HashMap<Arc<str>, Arc<Group>>>,
    /// The newest invalidation of a function that had no group here: a group
    /// created later starts with this fence, so a fill that began before
    /// such an invalidation is still refused, while names seen only on the
    /// bus never grow the map.
    unknown_group_fence: AtomicU64,
}

impl LocalLayer {
    /// A RAM layer holding about `capacity_bytes`, served without a lease
    /// (no bus keeps it coherent with other instances).
    pub(crate) fn new(capacity_bytes: u64) -> Self {
        Self::with_lease(capacity_bytes, Lease::unbounded())
    }

    /// A RAM layer served under a lease that the bus listener renews by
    /// `period` after each confirmed deletion check; not served before the
    /// first renewal.
    pub(crate) fn leased(capacity_bytes: u64, period: Duration) -> Self {
        Self::with_lease(capacity_bytes, Lease::renewable(period))
    }

    fn with_lease(capacity_bytes: u64, lease: Lease) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|key: &String, entry: &Entry| {
                entry
                    .weight
                    .saturating_add(u32::try_from(key.len()).unwrap_or(u32::MAX))
            })
            .expire_after(PerEntryExpiry)
            .support_invalidation_closures()
            .build_with_hasher(KeyHasher::default());
        LocalLayer {
            cache,
            epoch: AtomicU64::new(1),
            key_fences: (0..KEY_FENCE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            all_fence: AtomicU64::new(0),
            lease,
            groups: Mutex::new(HashMap::new()),
            unknown_group_fence: AtomicU64::new(0),
        }
    }

    /// The group of function `name`, created on first use.
    pub(crate) fn group(&self, name: &str) -> Arc<Group> {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = groups.get(name) {
            return g.clone();
        }
        let group = Arc::new(Group {
            fence: AtomicU64::new(self.unknown_group_fence.load(Ordering::Acquire)),
        });
        groups.insert(Arc::from(name), group.clone());
        group
    }

    /// A valid entry for `key`, if any, while the lease holds. Entries
    /// invalidated through their function or through "everything" are
    /// removed as they are found.
    #[inline]
    pub(crate) fn get(&self, key: &str) -> Option<Entry> {
        let entry = self.cache.get(key)?;
        if entry.leased && !self.lease.holds() {
            // Kept: served again once the bus has confirmed it caught up.
            return None;
        }
        if self.is_valid(&entry) {
            Some(entry)
        } else {
            self.cache.invalidate(key);
            None
        }
    }

    /// The value under `key` if it is a `T`.
    pub(crate) fn get_typed<T: Any + Send + Sync>(&self, key: &str) -> Option<Arc<T>> {
        self.get(key)?.value.downcast::<T>().ok()
    }

    /// Whether no function or "everything" fence is newer than the entry.
    #[inline]
    fn is_valid(&self, entry: &Entry) -> bool {
        let group_fence = entry
            .group
            .as_ref()
            .map_or(0, |g| g.fence.load(Ordering::Acquire));
        entry.stamp >= group_fence.max(self.all_fence.load(Ordering::Acquire))
    }

    /// Whether a valid entry exists for `key`.
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Starts a fill: the returned ticket remembers the current epoch.
    pub(crate) fn ticket(&self) -> FillTicket {
        FillTicket(self.epoch.load(Ordering::Acquire))
    }

    /// Inserts `entry` under `key` unless an invalidation that covers it was
    /// applied after `ticket` was taken. Returns whether the entry was kept.
    pub(crate) fn insert(&self, key: String, mut entry: Entry, ticket: FillTicket) -> bool {
        entry.stamp = ticket.0;
        let slot = fence_slot(&key);
        if self.key_fences[slot].load(Ordering::Acquire) > ticket.0 || !self.is_valid(&entry) {
            return false;
        }
        self.cache.insert(key.clone(), entry);
        // An invalidation of this key may have run between the check and the
        // insert, and removed the key before we put ours in: look again.
        if self.key_fences[slot].load(Ordering::SeqCst) > ticket.0 {
            self.cache.invalidate(&key);
            return false;
        }
        true
    }

    /// Puts `value` under `key`: the one routine by which every value enters
    /// RAM (a Redis hit, a write, a fill, a computed value, a memory
    /// function). Caps its expiry, weighs it, and inserts it fenced: with a
    /// ticket, unless an invalidation covering it came after the ticket; as
    /// this node's own write, see [`finish_own_write`](Self::finish_own_write).
    /// Returns whether the entry was kept (never when already expired).
    pub(crate) fn fill(
        &self,
        key: String,
        value: Arc<dyn Any + Send + Sync>,
        fill: Fill,
        fence: Fence,
    ) -> bool {
        let Some(ttl) = fill.ttl() else {
            return false;
        };
        let mut entry = Entry::new(value, ttl, fill.bytes, fill.group);
        if fill.ram_only {
            entry = entry.ram_only();
        }
        match fence {
            Fence::Ticket(ticket) => self.insert(key, entry, ticket),
            Fence::OwnWrite(begun) => self.finish_own_write(key, entry, begun),
        }
    }

    /// Whether an invalidation covering `key` (of `group`, or everything)
    /// was applied after `ticket` was taken: a value computed since then may
    /// predate it and should not be stored.
    pub(crate) fn fenced_since(
        &self,
        key: &str,
        group: Option<&Group>,
        ticket: FillTicket,
    ) -> bool {
        let t = ticket.0;
        self.key_fences[fence_slot(key)].load(Ordering::Acquire) > t
            || self.all_fence.load(Ordering::Acquire) > t
            || group.is_some_and(|g| g.fence.load(Ordering::Acquire) > t)
    }

    /// Starts a write of `key` by this node, before it goes to Redis: fences
    /// the key, so the write's own RAM insert can later tell whether anything
    /// else invalidated the key meanwhile.
    pub(crate) fn begin_own_write(&self, key: &str) -> FillTicket {
        FillTicket(self.fence_key(key))
    }

    /// Finishes a write begun with [`begin_own_write`](Self::begin_own_write),
    /// once Redis has it: fences the key again (so a fill that read the
    /// previous value meanwhile cannot insert it) and inserts `entry`, unless
    /// the key was invalidated since the write began (another writer's value
    /// may have landed after ours: RAM is left empty, and the next read asks
    /// Redis). Returns whether the entry was kept.
    pub(crate) fn finish_own_write(&self, key: String, entry: Entry, begun: FillTicket) -> bool {
        let slot = &self.key_fences[fence_slot(&key)];
        let epoch = self.next_epoch();
        // A flush since the write began (the bus dropped everything, and may
        // have moved past another writer's invalidation of this key without
        // applying it) yields like an invalidation of the key.
        let flushed = self.all_fence.load(Ordering::SeqCst) > begun.0;
        if !flushed
            && slot
                .compare_exchange(begun.0, epoch, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.insert(key, entry, FillTicket(epoch))
        } else {
            slot.fetch_max(epoch, Ordering::SeqCst);
            self.cache.invalidate(&key);
            false
        }
    }

    fn next_epoch(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn fence_key(&self, key: &str) -> u64 {
        let epoch = self.next_epoch();
        self.key_fences[fence_slot(key)].fetch_max(epoch, Ordering::SeqCst);
        epoch
    }

    /// Drops `key`; returns whether a valid entry was there.
    pub(crate) fn remove(&self, key: &str) -> bool {
        self.fence_key(key);
        self.cache
            .remove(key)
            .is_some_and(|entry| self.is_valid(&entry))
    }

    /// Drops every entry of function `name`.
    pub(crate) fn remove_group(&self, name: &str) {
        let epoch = self.next_epoch();
        let group = {
            let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            match groups.get(name) {
                Some(g) => g.clone(),
                None => {
                    // Under the map's lock, so that a group created next
                    // sees this fence.
                    self.unknown_group_fence.fetch_max(epoch, Ordering::SeqCst);
                    return;
                }
            }
        };
        group.fence.fetch_max(epoch, Ordering::SeqCst);
        // Entries are already invisible (checked on read); also give their
        // memory back, in moka's background maintenance.
        let target = group.clone();
        let _ = self.cache.invalidate_entries_if(move |_, e| {
            e.group.as_ref().is_some_and(|g| Arc::ptr_eq(g, &target))
        });
    }

    /// Drops everything.
    pub(crate) fn remove_all(&self, reason: FlushReason) {
        let epoch = self.next_epoch();
        self.all_fence.fetch_max(epoch, Ordering::SeqCst);
        self.cache.invalidate_all();
        tracing::debug!(reason = reason.label(), "RAM layer flushed");
    }

    /// Now, as the start of a deletion check.
    pub(crate) fn check_start(&self) -> CheckStart {
        CheckStart(self.lease.ticks.now())
    }

    /// Serves RAM until `started` plus the lease period: a deletion check
    /// that started then has brought this node up to Redis's sequence
    /// number. Never moves the deadline back.
    pub(crate) fn renew_lease(&self, started: CheckStart) {
        if self.lease.period == u64::MAX {
            return;
        }
        let until = started.0.saturating_add(self.lease.period);
        self.lease.until.fetch_max(until, Ordering::AcqRel);
    }

    /// Whether RAM may be served now (false once the lease has run out).
    pub(crate) fn lease_holds(&self) -> bool {
        self.lease.holds()
    }

    /// Number of function groups this layer holds.
    #[cfg(test)]
    fn group_count(&self) -> usize {
        self.groups.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Number of entries (including ones invalidated but not yet reclaimed).
    pub(crate) fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// The byte budget the layer was built with.
    pub(crate) fn capacity_bytes(&self) -> u64 {
        self.cache.policy().max_capacity().unwrap_or(0)
    }

    /// Total weight of the entries in bytes.
    pub(crate) fn weighted_bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Runs moka's pending maintenance (evictions, reclaiming invalidated
    /// entries) now; tests and metrics call it to see settled numbers.
    pub(crate) fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }
}

fn fence_slot(key: &str) -> usize {
    // A fixed hasher, not the std random one: slots need only be stable
    // within the process, and this one is fast for short keys.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % KEY_FENCE_SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(v: u32) -> Entry {
        Entry::new(Arc::new(v), None, 4, None)
    }

    #[test]
    fn typed_get_misses_on_other_type() {
        let l = LocalLayer::new(1 << 20);
        l.insert("a".into(), entry(5), l.ticket());
        assert_eq!(l.get_typed::<u32>("a").as_deref(), Some(&5));
        assert!(l.get_typed::<String>("a").is_none());
    }

    #[test]
    fn fill_started_before_key_invalidation_is_not_inserted() {
        let l = LocalLayer::new(1 << 20);
        let ticket = l.ticket();
        l.remove("a"); // invalidation arrives while the fill reads Redis
        assert!(!l.insert("a".into(), entry(1), ticket));
        assert!(l.get("a").is_none());
        // A fill that starts afterwards is fine.
        assert!(l.insert("a".into(), entry(2), l.ticket()));
        assert_eq!(l.get_typed::<u32>("a").as_deref(), Some(&2));
    }

    #[test]
    fn group_and_all_fences_hide_older_entries() {
        let l = LocalLayer::new(1 << 20);
        let g = l.group("f");
        let t = l.ticket();
        l.insert(
            "x".into(),
            Entry::new(Arc::new(1u8), None, 1, Some(g.clone())),
            t,
        );
        l.insert("y".into(), entry(1), t);
        l.remove_group("f");
        assert!(l.get("x").is_none());
        assert!(l.get("y").is_some());
        // A fill of the group that started before the invalidation is refused.
        assert!(!l.insert("x".into(), Entry::new(Arc::new(1u8), None, 1, Some(g)), t));
        l.remove_all(FlushReason::InvalidateAll);
        assert!(l.get("y").is_none());
        assert!(!l.insert("y".into(), entry(1), t));
    }

    #[test]
    fn own_write_yields_to_an_invalidation_that_arrived_meanwhile() {
        let l = LocalLayer::new(1 << 20);
        let begun = l.begin_own_write("k");
        assert!(l.finish_own_write("k".into(), entry(1), begun));
        assert_eq!(l.get_typed::<u32>("k").as_deref(), Some(&1));
        let begun = l.begin_own_write("k");
        l.remove("k"); // another writer's invalidation, during our Redis write
        assert!(!l.finish_own_write("k".into(), entry(2), begun));
        assert!(l.get("k").is_none());
        // A flush during the write: the write yields too.
        let begun = l.begin_own_write("k");
        l.remove_all(FlushReason::BusGap);
        assert!(!l.finish_own_write("k".into(), entry(9), begun));
        assert!(l.get("k").is_none());
        // A fill that read the old value while we wrote is refused.
        let begun = l.begin_own_write("k");
        let fill = l.ticket();
        assert!(l.finish_own_write("k".into(), entry(3), begun));
        assert!(!l.insert("k".into(), entry(0), fill));
        assert_eq!(l.get_typed::<u32>("k").as_deref(), Some(&3));
    }

    #[test]
    fn nothing_is_served_outside_the_lease() {
        let period = Duration::from_millis(100);
        let l = LocalLayer::leased(1 << 20, period);
        l.insert("a".into(), entry(1), l.ticket());
        assert!(l.get("a").is_none(), "not served before the first renewal");
        let start = l.check_start();
        l.renew_lease(start);
        assert!(l.get("a").is_some());
        // Filled while the lease holds, then the lease runs out: neither
        // entry is served, whenever it was filled.
        l.insert("b".into(), entry(2), l.ticket());
        std::thread::sleep(period + Duration::from_millis(10));
        assert!(l.get("a").is_none());
        assert!(l.get("b").is_none());
        assert!(!l.lease_holds());
        // A renewal from a check that started earlier cannot move it back.
        l.renew_lease(start);
        assert!(l.get("a").is_none());
        l.renew_lease(l.check_start());
        assert_eq!(l.get_typed::<u32>("b").as_deref(), Some(&2));
    }

    #[test]
    fn ram_only_values_are_served_outside_the_lease() {
        let l = LocalLayer::leased(1 << 20, Duration::from_millis(50));
        l.insert("kept".into(), entry(1).ram_only(), l.ticket());
        l.insert("shared".into(), entry(2), l.ticket());
        assert!(!l.lease_holds());
        assert_eq!(l.get_typed::<u32>("kept").as_deref(), Some(&1));
        assert!(l.get("shared").is_none());
        l.remove("kept");
        assert!(l.get("kept").is_none(), "invalidations still apply");
    }

    #[test]
    fn a_node_without_a_bus_always_serves() {
        let l = LocalLayer::new(1 << 20);
        l.insert("a".into(), entry(1), l.ticket());
        assert!(l.get("a").is_some());
        assert!(l.lease_holds());
    }

    #[test]
    fn invalidations_of_unknown_functions_grow_no_map_yet_fence_later_groups() {
        let l = LocalLayer::new(1 << 20);
        let before = l.ticket();
        for i in 0..1000 {
            l.remove_group(&format!("seen_only_on_the_bus_{i}"));
        }
        assert_eq!(l.group_count(), 0);
        // A fill of a function whose group appears only now, which started
        // before one of those invalidations, is still refused.
        let g = l.group("seen_only_on_the_bus_7");
        let e = Entry::new(Arc::new(1u8), None, 1, Some(g.clone()));
        assert!(!l.insert("x".into(), e, before));
        let e = Entry::new(Arc::new(1u8), None, 1, Some(g));
        assert!(l.insert("x".into(), e, l.ticket()));
    }

    #[test]
    fn byte_bound_holds() {
        let l = LocalLayer::new(100_000);
        for i in 0..10_000u32 {
            l.insert(
                format!("k{i}"),
                Entry::new(Arc::new(i), None, 1000, None),
                l.ticket(),
            );
        }
        l.run_pending_tasks();
        assert!(l.weighted_bytes() <= 100_000, "{}", l.weighted_bytes());
        assert!(l.entry_count() < 10_000);
    }
}

#[cfg(test)]
mod expiry_bound {
    use super::*;

    /// Entries expiring while new ones keep arriving over a key space far
    /// larger than the budget: the byte bound holds after maintenance.
    #[test]
    fn byte_bound_holds_while_entries_expire() {
        let l = LocalLayer::new(400_000);
        let start = Instant::now();
        let mut i = 0u64;
        let mut worst = 0;
        while start.elapsed() < Duration::from_millis(1000) {
            for _ in 0..500 {
                let key = format!("\0fdemo.get_user:|{:032x}", (i * 7919) % 2_000_000);
                let entry = Entry::new(Arc::new(i), Some(Duration::from_millis(300)), 60, None);
                l.insert(key, entry, l.ticket());
                i += 1;
            }
            l.run_pending_tasks();
            worst = worst.max(l.weighted_bytes());
        }
        assert!(worst <= 400_000, "worst {worst} bytes");
    }
}
