//! What one provider may hold at once, so that no provider can starve
//! another: instances (busy or idle) and the guest memory they use.
//!
//! Each provider has its own [`InstanceQuota`], shared by every version of
//! it (a swap does not double it):
//! - `max_concurrent_calls` permits for calls. A live instance holds one,
//!   idle or busy, so a provider never has more instances than that. A call
//!   without a permit queues, up to `max_queued_calls` and at most until
//!   its deadline; beyond either it fails at once with
//!   [`ProviderError::Busy`] (RESOURCE_EXHAUSTED), and nothing runs.
//! - [`CONTROL_PERMITS`] more, for the host's own calls (status refresh,
//!   init, canary), so a provider saturated by callers still reports its
//!   health and can be swapped for a fixed version.
//!
//! Guest memory is counted per provider and for the whole daemon
//! ([`MemoryBudget`]); an instance's growth past the daemon's budget is
//! refused like growth past its own cap. Config validation already keeps
//! the sum of every provider's worst case within the budget, so the
//! daemon-wide check is a backstop, not a way to share memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// One provider's instance and memory quota.
#[derive(Debug)]
pub struct InstanceQuota {
    calls: Arc<Semaphore>,
    control: Arc<Semaphore>,
    max_concurrent: usize,
    max_queued: usize,
    queued: AtomicUsize,
    /// Guest memory of all this provider's live instances, in bytes.
    memory: AtomicUsize,
    budget: Arc<MemoryBudget>,
}

/// A permit for one live instance; given back when the instance drops.
#[derive(Debug)]
pub struct Permit {
    _permit: OwnedSemaphorePermit,
    pub lane: Lane,
}

impl InstanceQuota {
    pub fn new(max_concurrent: usize, max_queued: usize, budget: Arc<MemoryBudget>) -> Self {
        InstanceQuota {
            calls: Arc::new(Semaphore::new(max_concurrent)),
            control: Arc::new(Semaphore::new(CONTROL_PERMITS)),
            max_concurrent,
            max_queued,
            queued: AtomicUsize::new(0),
            memory: AtomicUsize::new(0),
            budget,
        }
    }

    /// Whether this quota has the given sizes (a reload that keeps them
    /// keeps the quota, and its live instances go on counting).
    pub fn has_sizes(&self, max_concurrent: usize, max_queued: usize) -> bool {
        self.max_concurrent == max_concurrent && self.max_queued == max_queued
    }

    /// Calls waiting for a permit now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Instances busy or idle for callers now.
    pub fn in_use(&self) -> usize {
        self.max_concurrent - self.calls.available_permits()
    }

    /// Guest memory of this provider's live instances, in bytes.
    pub fn memory_used(&self) -> usize {
        self.memory.load(Ordering::Relaxed)
    }

    fn semaphore(&self, lane: Lane) -> &Arc<Semaphore> {
        match lane {
            Lane::Call => &self.calls,
            Lane::Control => &self.control,
        }
    }

    /// A permit for a new instance in `lane`, if one is free now.
    pub fn try_acquire(&self, lane: Lane) -> Option<Permit> {
        let permit = self.semaphore(lane).clone().try_acquire_owned().ok()?;
        Some(Permit {
            _permit: permit,
            lane,
        })
    }

    /// A place in the queue for a permit in `lane`, or RESOURCE_EXHAUSTED
    /// at once if the queue is full. Only callers count against
    /// `max_queued`; the host's own calls (at most two) do not. The caller
    /// should look for an idle instance once more after queueing: one may
    /// have been parked just before (see `WasmProvider::check_out`).
    pub fn enqueue(&self, lane: Lane) -> Result<Queued<'_>, ProviderError> {
        if lane == Lane::Call {
            // Check and count in one step, so concurrent callers cannot all
            // pass the check.
            self.queued
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                    (queued < self.max_queued).then_some(queued + 1)
                })
                .map_err(|_| {
                    ProviderError::Busy(format!(
                        "all {} instances are busy and {} calls are queued (limits.max_concurrent_calls, limits.max_queued_calls)",
                        self.max_concurrent, self.max_queued
                    ))
                })?;
        }
        Ok(Queued { quota: self, lane })
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

/// A call waiting for a permit; leaves the queue when dropped.
pub struct Queued<'a> {
    quota: &'a InstanceQuota,
    lane: Lane,
}

impl Queued<'_> {
    /// Waits for a permit, no later than `until`.
    pub async fn wait(self, until: Instant) -> Result<Permit, ProviderError> {
        let waited = Instant::now();
        let acquire = self.quota.semaphore(self.lane).clone().acquire_owned();
        match tokio::time::timeout_at(until.into(), acquire).await {
            Ok(Ok(permit)) => Ok(Permit {
                _permit: permit,
                lane: self.lane,
            }),
            Ok(Err(_closed)) => Err(ProviderError::Busy("the provider is shutting down".into())),
            Err(_elapsed) => Err(ProviderError::Busy(format!(
                "no instance came free within {} ms ({} busy, limits.max_concurrent_calls)",
                waited.elapsed().as_millis(),
                self.quota.in_use()
            ))),
        }
    }
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

    fn quota(concurrent: usize, queued: usize) -> Arc<InstanceQuota> {
        Arc::new(InstanceQuota::new(
            concurrent,
            queued,
            Arc::new(MemoryBudget::new(100)),
        ))
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(50)
    }

    /// A permit for `lane`, waiting as a caller would.
    async fn acquire(
        quota: &InstanceQuota,
        lane: Lane,
        until: Instant,
    ) -> Result<Permit, ProviderError> {
        match quota.try_acquire(lane) {
            Some(permit) => Ok(permit),
            None => quota.enqueue(lane)?.wait(until).await,
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
    async fn the_control_lane_is_never_behind_callers_nor_counted_as_queued() {
        let quota = quota(1, 0);
        let _held = quota.try_acquire(Lane::Call).unwrap();
        let control: Vec<_> = (0..CONTROL_PERMITS)
            .map(|_| quota.try_acquire(Lane::Control).unwrap())
            .collect();
        let waiting = quota.enqueue(Lane::Control).unwrap();
        assert_eq!(quota.queued(), 0, "host calls are not queued callers");
        drop(control);
        waiting.wait(soon()).await.unwrap();
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

    #[test]
    fn memory_is_charged_to_the_provider_and_the_daemon() {
        let budget = Arc::new(MemoryBudget::new(100));
        let a = InstanceQuota::new(1, 0, budget.clone());
        let b = InstanceQuota::new(1, 0, budget.clone());
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
