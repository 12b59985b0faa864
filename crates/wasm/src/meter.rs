//! The CPU budget's clock: how long a call has been *running*, as opposed
//! to waiting.
//!
//! A call into a provider is one future (instantiate, guest code, host
//! calls, lifting the result). [`metered`] times every `poll` of it: that
//! is when its thread works for it, in the guest or in the host on the
//! guest's behalf (a clock read, copying a response into guest memory,
//! TLS). Between polls the call waits (for the backend, a timer, a free
//! thread) and the clock stands still. So a slow backend never eats the
//! budget, and a guest that loops on cheap host calls cannot hide its CPU
//! inside them.
//!
//! The epoch callback (`wasm/mod.rs`) reads [`CallMeter::running`] at
//! every tick while guest code runs, from inside a poll; so does the
//! outer timeout, to say what a call was doing when it ran out of time.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One call's clock. Shared by the call's future and its store (`Arc`).
#[derive(Debug)]
pub struct CallMeter {
    base: Instant,
    /// Nanoseconds of finished polls.
    spent: AtomicU64,
    /// When the poll in progress began (nanoseconds after `base`, plus one
    /// so that zero means "not polling").
    polling_since: AtomicU64,
    /// Outbound requests in flight, to tell a slow backend from a slow guest.
    outbound: AtomicU32,
    /// Whether the call got its instance (else it is still queued).
    started: AtomicBool,
}

impl Default for CallMeter {
    fn default() -> Self {
        CallMeter {
            base: Instant::now(),
            spent: AtomicU64::new(0),
            polling_since: AtomicU64::new(0),
            outbound: AtomicU32::new(0),
            started: AtomicBool::new(false),
        }
    }
}

impl CallMeter {
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64 + 1
    }

    /// Running time so far, the poll in progress included.
    pub fn running(&self) -> Duration {
        let since = self.polling_since.load(Ordering::Relaxed);
        let current = if since == 0 {
            0
        } else {
            self.now().saturating_sub(since)
        };
        Duration::from_nanos(self.spent.load(Ordering::Relaxed) + current)
    }

    /// Starts the budget afresh, the poll in progress included: what ran
    /// before (creating the call's instance, which for a large component
    /// is most of a first call and is bounded by the budget on its own)
    /// is not charged to the call.
    pub fn restart(&self) {
        self.spent.store(0, Ordering::Relaxed);
        if self.polling_since.load(Ordering::Relaxed) != 0 {
            self.polling_since.store(self.now(), Ordering::Relaxed);
        }
    }

    /// Marks the call as having its instance: from now on it runs.
    pub fn started(&self) {
        self.started.store(true, Ordering::Relaxed);
    }

    /// Whether the call got its instance.
    pub fn has_started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// Whether the call is waiting on its backend right now.
    pub fn awaiting_backend(&self) -> bool {
        self.outbound.load(Ordering::Relaxed) > 0
    }

    /// Runs an outbound request, marked as in flight. Deliberately not a
    /// drop guard: a call cut off by its deadline drops the request
    /// mid-flight, and must still read as waiting on its backend.
    pub async fn outbound<F: Future>(&self, request: F) -> F::Output {
        self.outbound.fetch_add(1, Ordering::Relaxed);
        let response = request.await;
        self.outbound.fetch_sub(1, Ordering::Relaxed);
        response
    }

    fn enter(&self) {
        self.polling_since.store(self.now(), Ordering::Relaxed);
    }

    fn leave(&self) {
        let since = self.polling_since.swap(0, Ordering::Relaxed);
        if since != 0 {
            let spent = self.now().saturating_sub(since);
            self.spent.fetch_add(spent, Ordering::Relaxed);
        }
    }
}

/// Runs `future`, charging the time spent inside its polls to `meter`.
pub async fn metered<F: Future>(meter: &CallMeter, future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        meter.enter();
        let polled = future.as_mut().poll(cx);
        meter.leave();
        polled
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_is_free_and_working_is_counted() {
        let meter = CallMeter::default();
        metered(&meter, async {
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
        .await;
        assert!(meter.running() < Duration::from_millis(50), "{meter:?}");

        metered(&meter, async {
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(100) {
                std::hint::spin_loop();
            }
        })
        .await;
        assert!(meter.running() >= Duration::from_millis(100), "{meter:?}");
    }

    #[tokio::test]
    async fn a_request_cut_off_still_reads_as_waiting_on_the_backend() {
        let meter = CallMeter::default();
        let cut = tokio::time::timeout(
            Duration::from_millis(10),
            meter.outbound(std::future::pending::<()>()),
        )
        .await;
        assert!(cut.is_err());
        assert!(meter.awaiting_backend());
        meter.outbound(async {}).await;
        assert!(meter.awaiting_backend(), "the cut-off request still counts");
    }

    #[tokio::test]
    async fn a_restart_forgets_what_ran_before() {
        let meter = CallMeter::default();
        metered(&meter, async {
            std::thread::sleep(Duration::from_millis(30));
            meter.restart();
            std::thread::sleep(Duration::from_millis(5));
        })
        .await;
        let running = meter.running();
        assert!(
            running >= Duration::from_millis(5) && running < Duration::from_millis(25),
            "{running:?}"
        );
    }

    #[tokio::test]
    async fn the_poll_in_progress_counts() {
        let meter = CallMeter::default();
        let seen = metered(&meter, async {
            std::thread::sleep(Duration::from_millis(30));
            meter.running()
        })
        .await;
        assert!(seen >= Duration::from_millis(30), "{seen:?}");
    }
}
