//! What one provider may hold at once, so that no provider can starve
//! another: instances (busy or idle) and the guest memory they use.
//!
//! Each provider has its own [`InstanceQuota`], shared by every version of
//! it (a swap does not double it):
//! - `max_concurrent_calls` permits for calls. A live instance holds one,
//!   idle or busy, so a provider never has more instances than that.
//! - `instances_memory_mib`: a new instance for callers is made only while
//!   the provider's instances, with one more of the size its last new
//!   instance had, fit in it (at least one always may run). So a provider
//!   of 12 MiB instances (a Python interpreter) runs five where one of 1 MiB
//!   instances runs sixteen: instances are bounded by bytes, not only by
//!   count, busy or idle.
//! - A call that can neither take an idle instance nor make a new one
//!   waits ([`InstanceQuota::acquire`]) until an instance is parked or goes
//!   away, up to `max_queued_calls` calls and at most until its deadline;
//!   beyond either it fails with [`ProviderError::Busy`]
//!   (RESOURCE_EXHAUSTED), and nothing runs.
//! - [`CONTROL_PERMITS`] more, for the host's own calls (status refresh,
//!   init, canary), so a provider saturated by callers still reports its
//!   health and can be swapped for a fixed version.
//!
//! Guest memory is counted per provider and for the whole daemon
//! ([`MemoryBudget`]); an instance's growth past the daemon's budget is
//! refused like growth past its own cap. Config validation already keeps
//! the sum of every provider's worst case within the budget, so the
//! daemon-wide check is a backstop, not a way to share memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use kmsgate_core::error::ProviderError;

/// Permits beyond `max_concurrent_calls` for the host's own calls: the
/// status refresher and one reload (init or canary) at a time.
pub const CONTROL_PERMITS: usize = 2;

/// Which permits a call draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// A KMS call from a caller.
    Call,
    /// The host's own: status refresh, init, canary.
    Control,
}

/// The sizes of a quota, from the provider's `limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub max_concurrent: usize,
    pub max_queued: usize,
    /// Guest memory the provider's caller instances may hold together.
    pub pool_bytes: usize,
}

/// One provider's instance and memory quota.
#[derive(Debug)]
pub struct InstanceQuota {
    calls: Arc<Semaphore>,
    control: Arc<Semaphore>,
    sizes: Sizes,
    queued: AtomicUsize,
    /// Guest memory of all this provider's live instances, in bytes.
    memory: AtomicUsize,
    /// Memory of the provider's last new instance right after it was made:
    /// what one more is expected to take. 0 until one was made.
    instance_bytes: AtomicUsize,
    /// The expected memory of caller instances being made now (not yet
    /// charged by their limiter).
    reserved: AtomicUsize,
    /// Makes "may another instance be made?" and taking its permit one
    /// step, so concurrent callers cannot all pass the check.
    growing: Mutex<()>,
    /// Woken when an instance is parked, goes away, or was just made.
    changed: Notify,
    budget: Arc<MemoryBudget>,
}

/// A permit for one live instance; given back when the instance drops.
#[derive(Debug)]
pub struct Permit {
    /// An `Option` only so that `Drop` can give it back before waking the
    /// callers that wait for it.
    permit: Option<OwnedSemaphorePermit>,
    pub lane: Lane,
    quota: Arc<InstanceQuota>,
    /// Held in `quota.reserved` until the instance is made.
    reserved: usize,
}

/// What [`InstanceQuota::acquire`] found for a call.
pub enum Acquired<T> {
    /// An idle instance, taken by the caller's closure.
    Idle(T),
    /// A permit to make a new one.
    Permit(Permit),
}

impl InstanceQuota {
    pub fn new(sizes: Sizes, budget: Arc<MemoryBudget>) -> Self {
        InstanceQuota {
            calls: Arc::new(Semaphore::new(sizes.max_concurrent)),
            control: Arc::new(Semaphore::new(CONTROL_PERMITS)),
            sizes,
            queued: AtomicUsize::new(0),
            memory: AtomicUsize::new(0),
            instance_bytes: AtomicUsize::new(0),
            reserved: AtomicUsize::new(0),
            growing: Mutex::new(()),
            changed: Notify::new(),
            budget,
        }
    }

    /// Whether this quota has the given sizes (a reload that keeps them
    /// keeps the quota, and its live instances go on counting).
    pub fn has_sizes(&self, sizes: Sizes) -> bool {
        self.sizes == sizes
    }

    /// Calls waiting for an instance now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Instances busy or idle for callers now.
    pub fn in_use(&self) -> usize {
        self.sizes.max_concurrent - self.calls.available_permits()
    }

    /// Guest memory of this provider's live instances, in bytes.
    pub fn memory_used(&self) -> usize {
        self.memory.load(Ordering::Relaxed)
    }

    /// Whether one more caller instance fits `instances_memory_mib`. The
    /// first always does; while the first is being made (its size not yet
    /// known), no other.
    fn may_grow(&self) -> bool {
        if self.in_use() == 0 {
            return true;
        }
        let size = self.instance_bytes.load(Ordering::Relaxed);
        size > 0
            && self.memory_used() + self.reserved.load(Ordering::Relaxed) + size
                <= self.sizes.pool_bytes
    }

    /// A permit for a new instance in `lane`, if one is free now (and, for
    /// callers, the instance fits the provider's memory for instances).
    pub fn try_acquire(self: &Arc<Self>, lane: Lane) -> Option<Permit> {
        let (permit, reserved) = match lane {
            Lane::Control => (self.control.clone().try_acquire_owned().ok()?, 0),
            Lane::Call => {
                let _growing = self.growing.lock().expect("quota growth lock");
                if !self.may_grow() {
                    return None;
                }
                let permit = self.calls.clone().try_acquire_owned().ok()?;
                let expected = self.instance_bytes.load(Ordering::Relaxed);
                self.reserved.fetch_add(expected, Ordering::Relaxed);
                (permit, expected)
            }
        };
        Some(Permit {
            permit: Some(permit),
            lane,
            quota: self.clone(),
            reserved,
        })
    }

    /// An idle instance (`take_idle` looks for one) or a permit for a new
    /// one, waiting no later than `until` for either. A caller that must
    /// wait takes a place in the queue, or gets RESOURCE_EXHAUSTED at once
    /// if it is full (only callers count against `max_queued_calls`; the
    /// host's own calls, at most two, do not).
    pub async fn acquire<T>(
        self: &Arc<Self>,
        lane: Lane,
        until: Instant,
        mut take_idle: impl FnMut() -> Option<T>,
    ) -> Result<Acquired<T>, ProviderError> {
        let waited = Instant::now();
        let mut place = None;
        loop {
            // Registered before looking, so that a change between the look
            // and the wait still wakes this call.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(instance) = take_idle() {
                return Ok(Acquired::Idle(instance));
            }
            if let Some(permit) = self.try_acquire(lane) {
                return Ok(Acquired::Permit(permit));
            }
            if place.is_none() {
                place = Some(self.enqueue(lane)?);
            }
            if tokio::time::timeout_at(until.into(), changed)
                .await
                .is_err()
            {
                return Err(ProviderError::Busy(format!(
                    "no instance came free within {} ms ({} instances holding {} MiB; limits.max_concurrent_calls {}, limits.instances_memory_mib {})",
                    waited.elapsed().as_millis(),
                    self.in_use(),
                    self.memory_used() >> 20,
                    self.sizes.max_concurrent,
                    self.sizes.pool_bytes >> 20,
                )));
            }
        }
    }

    /// A place in the queue in `lane`, or RESOURCE_EXHAUSTED if it is full.
    fn enqueue(&self, lane: Lane) -> Result<Queued<'_>, ProviderError> {
        if lane == Lane::Call {
            // Check and count in one step, so concurrent callers cannot all
            // pass the check.
            self.queued
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                    (queued < self.sizes.max_queued).then_some(queued + 1)
                })
                .map_err(|_| {
                    ProviderError::Busy(format!(
                        "all {} instances are busy and {} calls are queued (limits.max_concurrent_calls, limits.instances_memory_mib, limits.max_queued_calls)",
                        self.in_use(),
                        self.sizes.max_queued
                    ))
                })?;
        }
        Ok(Queued { quota: self, lane })
    }

    /// An instance was parked for the next call: wakes the waiting ones.
    pub fn parked(&self) {
        self.changed.notify_waiters();
    }

    /// Charges `bytes` of new guest memory to this provider and the daemon;
    /// false (and nothing charged) if the daemon's budget would be passed.
    pub fn charge(&self, bytes: usize) -> bool {
        if !self.budget.charge(bytes) {
            return false;
        }
        self.memory.fetch_add(bytes, Ordering::Relaxed);
        true
    }

    /// Gives back memory of an instance that went away.
    pub fn release(&self, bytes: usize) {
        self.memory.fetch_sub(bytes, Ordering::Relaxed);
        self.budget.release(bytes);
    }
}

impl Permit {
    /// Its instance was made and holds `bytes`: the expected size of the
    /// next, and no longer a reservation (the limiter charged it).
    pub fn instantiated(&mut self, bytes: usize) {
        self.quota.instance_bytes.store(bytes, Ordering::Relaxed);
        self.quota
            .reserved
            .fetch_sub(std::mem::take(&mut self.reserved), Ordering::Relaxed);
        // A caller waiting for the first instance's size may make one now.
        self.quota.changed.notify_waiters();
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.quota
            .reserved
            .fetch_sub(self.reserved, Ordering::Relaxed);
        drop(self.permit.take());
        self.quota.changed.notify_waiters();
    }
}

/// A caller's place in the queue; leaves it when dropped.
struct Queued<'a> {
    quota: &'a InstanceQuota,
    lane: Lane,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if self.lane == Lane::Call {
            self.quota.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Guest memory of every live instance in the daemon, against
/// `memory_budget_mib`.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    pub fn new(limit_bytes: usize) -> Self {
        MemoryBudget {
            limit: limit_bytes,
            used: AtomicUsize::new(0),
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn charge(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MIB: usize = 1 << 20;

    fn quota(concurrent: usize, queued: usize) -> Arc<InstanceQuota> {
        sized(concurrent, queued, 64 * MIB)
    }

    fn sized(concurrent: usize, queued: usize, pool_bytes: usize) -> Arc<InstanceQuota> {
        Arc::new(InstanceQuota::new(
            Sizes {
                max_concurrent: concurrent,
                max_queued: queued,
                pool_bytes,
            },
            Arc::new(MemoryBudget::new(1 << 30)),
        ))
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(50)
    }

    /// A permit for `lane`, waiting as a caller would (no idle instances).
    async fn acquire(
        quota: &Arc<InstanceQuota>,
        lane: Lane,
        until: Instant,
    ) -> Result<Permit, ProviderError> {
        match quota.acquire(lane, until, || None::<()>).await? {
            Acquired::Permit(permit) => Ok(permit),
            Acquired::Idle(()) => unreachable!("no idle instances here"),
        }
    }

    #[tokio::test]
    async fn calls_beyond_the_queue_are_refused_at_once() {
        let quota = quota(1, 1);
        let held = quota.try_acquire(Lane::Call).unwrap();
        let waiting = {
            let quota = quota.clone();
            tokio::spawn(async move {
                acquire(&quota, Lane::Call, Instant::now() + Duration::from_secs(5)).await
            })
        };
        while quota.queued() == 0 {
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        let refused = acquire(&quota, Lane::Call, soon()).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(40), "not at once");
        assert!(refused.to_string().contains("queued"), "{refused}");
        drop(held);
        waiting
            .await
            .unwrap()
            .expect("the queued call gets the permit");
        assert_eq!(quota.queued(), 0);
    }

    #[tokio::test]
    async fn a_queued_call_gives_up_at_its_deadline() {
        let quota = quota(1, 8);
        let _held = quota.try_acquire(Lane::Call).unwrap();
        let error = acquire(&quota, Lane::Call, soon()).await.unwrap_err();
        assert!(matches!(error, ProviderError::Busy(_)), "{error}");
        assert_eq!(quota.queued(), 0);
    }

    #[tokio::test]
    async fn a_waiting_call_takes_an_instance_parked_for_it() {
        let quota = quota(1, 8);
        let _held = quota.try_acquire(Lane::Call).unwrap();
        let parked = Arc::new(Mutex::new(None::<&str>));
        let waiting = {
            let (quota, parked) = (quota.clone(), parked.clone());
            tokio::spawn(async move {
                let take = || parked.lock().unwrap().take();
                match quota
                    .acquire(Lane::Call, Instant::now() + Duration::from_secs(5), take)
                    .await
                {
                    Ok(Acquired::Idle(instance)) => instance,
                    _ => panic!("expected the parked instance"),
                }
            })
        };
        while quota.queued() == 0 {
            tokio::task::yield_now().await;
        }
        *parked.lock().unwrap() = Some("instance");
        quota.parked();
        assert_eq!(waiting.await.unwrap(), "instance");
    }

    #[tokio::test]
    async fn the_control_lane_is_never_behind_callers_nor_counted_as_queued() {
        let quota = quota(1, 0);
        let _held = quota.try_acquire(Lane::Call).unwrap();
        let control: Vec<_> = (0..CONTROL_PERMITS)
            .map(|_| quota.try_acquire(Lane::Control).unwrap())
            .collect();
        let waiting = {
            let quota = quota.clone();
            tokio::spawn(async move {
                acquire(
                    &quota,
                    Lane::Control,
                    Instant::now() + Duration::from_secs(5),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(quota.queued(), 0, "host calls are not queued callers");
        drop(control);
        waiting.await.unwrap().unwrap();
    }

    #[test]
    fn the_queue_is_never_overshot() {
        let quota = quota(1, 3);
        let places: Vec<_> = (0..10)
            .filter_map(|_| quota.enqueue(Lane::Call).ok())
            .collect();
        assert_eq!((places.len(), quota.queued()), (3, 3));
        drop(places);
        assert_eq!(quota.queued(), 0);
    }

    /// A permit whose instance was made: `bytes` charged as its limiter
    /// would.
    fn instance(quota: &Arc<InstanceQuota>, bytes: usize) -> Option<(Permit, usize)> {
        let mut permit = quota.try_acquire(Lane::Call)?;
        assert!(quota.charge(bytes));
        permit.instantiated(bytes);
        Some((permit, bytes))
    }

    #[test]
    fn instances_are_bounded_by_bytes_as_well_as_by_count() {
        // 12 MiB instances in 64 MiB: five, though sixteen are allowed.
        let quota = sized(16, 64, 64 * MIB);
        let mut live = Vec::new();
        while let Some(made) = instance(&quota, 12 * MIB) {
            live.push(made);
        }
        assert_eq!(live.len(), 5);
        // One goes away: one more may be made.
        let (permit, bytes) = live.pop().unwrap();
        quota.release(bytes);
        drop(permit);
        assert!(instance(&quota, 12 * MIB).is_some());
        // Small instances are bounded by count.
        let small = sized(16, 64, 64 * MIB);
        let mut live = Vec::new();
        while let Some(made) = instance(&small, MIB) {
            live.push(made);
        }
        assert_eq!(live.len(), 16);
    }

    #[test]
    fn the_first_instance_always_runs_and_none_beside_it_until_its_size_is_known() {
        let quota = sized(16, 64, MIB);
        let mut first = quota
            .try_acquire(Lane::Call)
            .expect("the first always runs");
        assert!(
            quota.try_acquire(Lane::Call).is_none(),
            "a burst at start must not make instances of unknown size"
        );
        assert!(quota.charge(8 * MIB));
        first.instantiated(8 * MIB);
        assert!(
            quota.try_acquire(Lane::Call).is_none(),
            "over the bytes for instances"
        );
        // Being made counts as much as made.
        let wide = sized(16, 64, 20 * MIB);
        let (_first, _) = instance(&wide, 8 * MIB).unwrap();
        let _second = wide.try_acquire(Lane::Call).expect("16 MiB fits 20");
        assert!(
            wide.try_acquire(Lane::Call).is_none(),
            "24 MiB with the one being made"
        );
    }

    #[test]
    fn memory_is_charged_to_the_provider_and_the_daemon() {
        let budget = Arc::new(MemoryBudget::new(100));
        let sizes = Sizes {
            max_concurrent: 1,
            max_queued: 0,
            pool_bytes: 100,
        };
        let a = InstanceQuota::new(sizes, budget.clone());
        let b = InstanceQuota::new(sizes, budget.clone());
        assert!(a.charge(60));
        assert!(!b.charge(60), "over the daemon's budget");
        assert!(b.charge(40));
        assert_eq!(
            (a.memory_used(), b.memory_used(), budget.used()),
            (60, 40, 100)
        );
        a.release(60);
        assert_eq!(budget.used(), 40);
    }
}
