//! Coalescing concurrent decrypts into batches, for providers that export
//! `kms-batch` (see `wit/provider.wit`).
//!
//! There is no timer. A decrypt that finds fewer than `max_in_flight`
//! batches running starts one at once; otherwise it queues, and the next
//! batch to finish takes the queue (up to `max_items`) with it. So a
//! provider with no crowd sees single decrypts with no added latency, and in
//! a decrypt storm (every object's DEK after an apiserver restart) a decrypt
//! waits at most for one batch in flight before its own starts.
//!
//! Batches run on their own tasks: a caller that gives up (the apiserver
//! cancelled its RPC, or its deadline passed) abandons only its answer,
//! never its neighbours'. Its decrypt is then dropped from the queue before
//! the next batch is sent, so a backend coming back after an outage is not
//! handed every call that gave up on it meanwhile. The queue is bounded
//! (`batch.max_queued`); a decrypt beyond it fails at once with
//! RESOURCE_EXHAUSTED.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use kmsgate_core::error::{ProviderError, TimeLimit};
use kmsgate_core::kms::{Batching, Call, DecryptItem, KmsProvider};
use kmsgate_core::secret::Plaintext;

/// Counts for operators, per provider; they outlive swaps.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Provider calls that carried two or more decrypts.
    pub batches: AtomicU64,
    /// Decrypts carried by those calls.
    pub items: AtomicU64,
    /// Queued decrypts dropped unsent: their caller left or its deadline
    /// passed.
    pub abandoned: AtomicU64,
}

/// Batches the decrypts of one serving provider version.
pub struct Coalescer {
    provider: Arc<dyn KmsProvider>,
    max_items: usize,
    max_in_flight: usize,
    max_queued: usize,
    stats: Arc<BatchStats>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Waiting>,
    /// Tasks running batches (each runs them one after another until the
    /// queue is empty).
    running: usize,
}

struct Waiting {
    item: DecryptItem,
    deadline: Option<Instant>,
    answer: oneshot::Sender<Result<Plaintext, ProviderError>>,
}

impl Waiting {
    /// Whether its caller still waits for the answer.
    fn wanted(&self, now: Instant) -> bool {
        !self.answer.is_closed() && self.deadline.is_none_or(|deadline| deadline > now)
    }
}

impl Coalescer {
    pub fn new(
        provider: Arc<dyn KmsProvider>,
        batching: Batching,
        stats: Arc<BatchStats>,
    ) -> Coalescer {
        Coalescer {
            provider,
            max_items: batching.max_items.max(1),
            max_in_flight: batching.max_in_flight.max(1),
            max_queued: batching.max_queued.max(1),
            stats,
            state: Mutex::new(State::default()),
        }
    }

    /// Decrypts `item` alone or in a batch, answering by `deadline` if
    /// the caller has one.
    pub async fn decrypt(
        self: &Arc<Self>,
        item: DecryptItem,
        deadline: Option<Instant>,
    ) -> Result<Plaintext, ProviderError> {
        let (answer, answered) = oneshot::channel();
        let start_runner = {
            let mut state = self.state.lock().expect("coalescer lock");
            if state.queue.len() >= self.max_queued {
                return Err(ProviderError::Busy(format!(
                    "{} decrypts are already queued for batching (batch.max_queued)",
                    state.queue.len()
                )));
            }
            state.queue.push_back(Waiting {
                item,
                deadline,
                answer,
            });
            let start = state.running < self.max_in_flight;
            if start {
                state.running += 1;
            }
            start
        };
        if start_runner {
            tokio::spawn(self.clone().run());
        }
        let lost = || {
            Err(ProviderError::Internal(
                "the decrypt batch carrying this call was lost".into(),
            ))
        };
        match deadline {
            None => answered.await.unwrap_or_else(|_| lost()),
            Some(deadline) => {
                let waited = Instant::now();
                match tokio::time::timeout_at(deadline.into(), answered).await {
                    Ok(answer) => answer.unwrap_or_else(|_| lost()),
                    // Dropping the receiver tells the runner not to send it.
                    Err(_elapsed) => Err(ProviderError::TimedOut(
                        waited.elapsed().as_millis() as u64,
                        TimeLimit::Caller,
                    )),
                }
            }
        }
    }

    /// Runs batches until the queue is empty.
    async fn run(self: Arc<Self>) {
        let mut running = Running {
            coalescer: &self,
            stopped: false,
        };
        loop {
            let batch: Vec<Waiting> = {
                let mut state = self.state.lock().expect("coalescer lock");
                if state.queue.is_empty() {
                    // Under the same lock as the check, so a decrypt queued
                    // after it sees one runner fewer and starts its own.
                    state.running -= 1;
                    running.stopped = true;
                    return;
                }
                let now = Instant::now();
                let mut batch = Vec::with_capacity(state.queue.len().min(self.max_items));
                while batch.len() < self.max_items {
                    let Some(waiting) = state.queue.pop_front() else {
                        break;
                    };
                    if waiting.wanted(now) {
                        batch.push(waiting);
                    } else {
                        self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
                        // Its caller's own timer may not have fired yet.
                        let _ = waiting
                            .answer
                            .send(Err(ProviderError::TimedOut(0, TimeLimit::Caller)));
                    }
                }
                batch
            };
            if !batch.is_empty() {
                self.send(batch).await;
            }
        }
    }

    async fn send(&self, mut batch: Vec<Waiting>) {
        // The batch may run until its latest caller's deadline; callers
        // with earlier ones stop waiting by themselves.
        let deadline = batch
            .iter()
            .map(|waiting| waiting.deadline)
            .reduce(|a, b| a.zip(b).map(|(a, b)| a.max(b)))
            .flatten();
        let call = Call::caller(deadline);
        if batch.len() == 1 {
            let Waiting { item, answer, .. } = batch.remove(0);
            let result = self
                .provider
                .decrypt(
                    call,
                    &item.uid,
                    &item.key_id,
                    &item.ciphertext,
                    &item.annotations,
                )
                .await;
            let _ = answer.send(result);
            return;
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .items
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let (items, answers): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|waiting| (waiting.item, waiting.answer))
            .unzip();
        let count = items.len();
        let results = self
            .provider
            .decrypt_batch(call, items)
            .await
            .and_then(|results| match results.len() {
                n if n == count => Ok(results),
                n => Err(ProviderError::Contract(format!(
                    "decrypt-batch returned {n} results for {count} items"
                ))),
            });
        match results {
            Ok(results) => {
                for (answer, result) in answers.into_iter().zip(results) {
                    let _ = answer.send(result);
                }
            }
            // Not an item's fault: every caller in the batch gets it.
            Err(error) => {
                for answer in answers {
                    let _ = answer.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Stops a runner counting as running if it ends without emptying the
/// queue (a panic): later decrypts then start a new runner, which takes
/// over what was queued.
struct Running<'a> {
    coalescer: &'a Coalescer,
    stopped: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if !self.stopped {
            let mut state = self
                .coalescer
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            state.running -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use kmsgate_core::kms::{BatchResult, Encrypted, ProviderStatus};
    use kmsgate_core::limits::Annotations;

    /// Decrypts by reversing; "bad" fails its item; a batch of `short_at`
    /// items answers one result short. Records batch sizes.
    struct Fake {
        sizes: Mutex<Vec<usize>>,
        short_at: usize,
    }

    #[async_trait]
    impl KmsProvider for Fake {
        async fn status(&self) -> Result<ProviderStatus, ProviderError> {
            unreachable!()
        }
        async fn encrypt(
            &self,
            _: Call,
            _: &str,
            _: &str,
            _: &Plaintext,
        ) -> Result<Encrypted, ProviderError> {
            unreachable!()
        }
        async fn decrypt(
            &self,
            _: Call,
            _: &str,
            _: &str,
            ciphertext: &[u8],
            _: &Annotations,
        ) -> Result<Plaintext, ProviderError> {
            self.sizes.lock().unwrap().push(1);
            tokio::time::sleep(Duration::from_millis(5)).await;
            open(ciphertext)
        }
        async fn decrypt_batch(&self, _: Call, items: Vec<DecryptItem>) -> BatchResult {
            self.sizes.lock().unwrap().push(items.len());
            tokio::time::sleep(Duration::from_millis(5)).await;
            let mut results: Vec<_> = items.iter().map(|item| open(&item.ciphertext)).collect();
            if items.len() == self.short_at {
                results.pop();
            }
            Ok(results)
        }
    }

    fn open(ciphertext: &[u8]) -> Result<Plaintext, ProviderError> {
        if ciphertext == b"bad" {
            return Err(ProviderError::InvalidCiphertext("bad".into()));
        }
        Ok(Plaintext::new(ciphertext.iter().rev().copied().collect()))
    }

    fn coalescer(short_at: usize) -> (Arc<Fake>, Arc<Coalescer>) {
        let fake = Arc::new(Fake {
            sizes: Mutex::new(Vec::new()),
            short_at,
        });
        let batching = Batching {
            max_items: 8,
            max_in_flight: 2,
            max_queued: 64,
        };
        let coalescer = Coalescer::new(fake.clone(), batching, Arc::default());
        (fake, Arc::new(coalescer))
    }

    fn item(ciphertext: &[u8]) -> DecryptItem {
        DecryptItem {
            uid: "u".into(),
            key_id: "k".into(),
            ciphertext: ciphertext.to_vec(),
            annotations: Annotations::new(),
        }
    }

    #[tokio::test]
    async fn a_lone_decrypt_goes_alone() {
        let (fake, coalescer) = coalescer(0);
        let plaintext = coalescer.decrypt(item(b"abc"), None).await.unwrap();
        assert_eq!(plaintext.as_bytes(), b"cba");
        assert_eq!(*fake.sizes.lock().unwrap(), [1]);
    }

    #[tokio::test]
    async fn a_crowd_is_batched_and_each_gets_its_own_answer() {
        let (fake, coalescer) = coalescer(0);
        let calls: Vec<_> = (0..40u8)
            .map(|i| {
                let coalescer = coalescer.clone();
                let ciphertext = if i == 7 { b"bad".to_vec() } else { vec![i, 1] };
                tokio::spawn(async move { coalescer.decrypt(item(&ciphertext), None).await })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            match call.await.unwrap() {
                Ok(plaintext) => assert_eq!(plaintext.as_bytes(), [1, i as u8]),
                Err(error) => {
                    assert_eq!(i, 7);
                    assert!(matches!(error, ProviderError::InvalidCiphertext(_)));
                }
            }
        }
        let sizes = fake.sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 40);
        assert!(sizes.iter().all(|&n| n <= 8), "{sizes:?}");
        assert!(sizes.len() < 40, "no batching: {sizes:?}");
        let state = coalescer.state.lock().unwrap();
        assert_eq!((state.running, state.queue.len()), (0, 0));
    }

    #[tokio::test]
    async fn a_batch_of_the_wrong_length_fails_all_its_items() {
        let (_, coalescer) = coalescer(3);
        let calls: Vec<_> = (0..3u8)
            .map(|i| {
                let coalescer = coalescer.clone();
                tokio::spawn(async move { coalescer.decrypt(item(&[i]), None).await })
            })
            .collect();
        // On the test's one-thread runtime all three queue before the
        // first runner starts, so it takes them as one batch.
        for call in calls {
            let error = call.await.unwrap().unwrap_err();
            assert!(matches!(error, ProviderError::Contract(_)), "{error}");
        }
    }
}
