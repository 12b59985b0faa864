//! A circuit breaker per provider. While a provider's backend is known to
//! be down, its calls fail at once with UNAVAILABLE instead of each waiting
//! out the caller's deadline (kube-apiserver gives up after 3 s, and so
//! would every call queued behind it).
//!
//! - **Closed**: calls go through. A call (or status refresh) that finds
//!   the backend unavailable opens the breaker.
//! - **Open**: calls fail at once. After a cool-down (0.5 s, doubling up to
//!   [`MAX_COOLDOWN`] while the backend stays down) the next call goes
//!   through as a probe.
//! - **Probing**: one call is out to see whether the backend is back; the
//!   others fail at once. A call that succeeds closes the breaker;
//!   unavailability opens it again; any other failure (a timeout on the
//!   caller's deadline, a bad ciphertext, a full queue) says nothing about
//!   the backend, and the next call after the cool-down probes again.
//!
//! The status refresher also probes: a status answer closes the breaker,
//! unavailability opens it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const FIRST_COOLDOWN: Duration = Duration::from_millis(500);
/// The longest cool-down between probes.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    Probing,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::Probing => "probing",
        }
    }
}

#[derive(Debug)]
enum State {
    Closed,
    Open {
        since: Instant,
        retry_at: Instant,
        cooldown: Duration,
        why: String,
    },
    Probing {
        since: Instant,
        cooldown: Duration,
        why: String,
    },
}

#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    /// Calls failed at once because the breaker was open.
    pub fast_failures: AtomicU64,
    /// Times the breaker opened.
    pub opened: AtomicU64,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: Mutex::new(State::Closed),
            fast_failures: AtomicU64::new(0),
            opened: AtomicU64::new(0),
        }
    }
}

/// What a call learned about the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// It answered.
    Up,
    /// It could not be reached, or did not answer in the provider's time.
    Down(&'a str),
    /// Nothing either way.
    Neutral,
}

impl<'a> Outcome<'a> {
    /// Why the backend is down, for an outcome that says it is.
    pub fn down(self) -> Option<&'a str> {
        match self {
            Outcome::Down(why) => Some(why),
            _ => None,
        }
    }
}

/// Leave to make one call. Say how it went with [`Admission::finish`]; a
/// probe dropped unfinished (its caller gave up) lets a call probe again
/// after another cool-down.
#[must_use]
pub struct Admission<'a> {
    breaker: &'a Breaker,
    probe: bool,
}

impl Admission<'_> {
    /// Returns whether the breaker changed between closed and not.
    pub fn finish(mut self, outcome: Outcome<'_>) -> bool {
        match outcome {
            Outcome::Up => {
                self.probe = false;
                self.breaker.backend_up()
            }
            Outcome::Down(why) => {
                self.probe = false;
                self.breaker.backend_down(why)
            }
            // A probe that learned nothing: the next call after the
            // cool-down probes again (see `Drop`).
            Outcome::Neutral => false,
        }
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.probe {
            let mut state = self.breaker.lock();
            if let State::Probing {
                since,
                cooldown,
                why,
            } = &*state
            {
                *state = State::Open {
                    since: *since,
                    retry_at: Instant::now() + *cooldown,
                    cooldown: *cooldown,
                    why: why.clone(),
                };
            }
        }
    }
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        match &*self.lock() {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::Probing { .. } => BreakerState::Probing,
        }
    }

    /// How long until the next probe may go, while open.
    pub fn retry_in(&self) -> Option<Duration> {
        match &*self.lock() {
            State::Open { retry_at, .. } => {
                Some(retry_at.saturating_duration_since(Instant::now()))
            }
            _ => None,
        }
    }

    /// Lets a call through, or says why not (the backend is down).
    pub fn admit(&self) -> Result<Admission<'_>, String> {
        let mut state = self.lock();
        let now = Instant::now();
        let probe = match &*state {
            State::Closed => false,
            State::Open {
                since,
                retry_at,
                cooldown,
                why,
            } if now >= *retry_at => {
                *state = State::Probing {
                    since: *since,
                    cooldown: *cooldown,
                    why: why.clone(),
                };
                true
            }
            State::Open {
                since,
                retry_at,
                why,
                ..
            } => {
                let message = format!(
                    "backend down for {} ms ({why}); next try in {} ms",
                    now.duration_since(*since).as_millis(),
                    retry_at.duration_since(now).as_millis()
                );
                drop(state);
                self.fast_failures.fetch_add(1, Ordering::Relaxed);
                return Err(message);
            }
            State::Probing { since, why, .. } => {
                let message = format!(
                    "backend down for {} ms ({why}); a probe is out",
                    now.duration_since(*since).as_millis()
                );
                drop(state);
                self.fast_failures.fetch_add(1, Ordering::Relaxed);
                return Err(message);
            }
        };
        Ok(Admission {
            breaker: self,
            probe,
        })
    }

    /// The backend answered: close. True if it was not closed.
    pub fn backend_up(&self) -> bool {
        let mut state = self.lock();
        let was_open = !matches!(*state, State::Closed);
        *state = State::Closed;
        was_open
    }

    /// A call found the backend unavailable: open, or, after a failed
    /// probe, stay open with a longer cool-down. True if it was closed.
    pub fn backend_down(&self, why: &str) -> bool {
        self.down(why, false)
    }

    /// The status refresher's check, a probe whatever the state: up closes,
    /// down opens or pushes the next probe further out, neutral changes
    /// nothing. True if the breaker changed between closed and not.
    pub fn checked(&self, outcome: Outcome<'_>) -> bool {
        match outcome {
            Outcome::Up => self.backend_up(),
            Outcome::Down(why) => self.down(why, true),
            Outcome::Neutral => false,
        }
    }

    fn down(&self, why: &str, probed: bool) -> bool {
        let mut state = self.lock();
        let now = Instant::now();
        let (since, cooldown) = match &*state {
            State::Closed => {
                self.opened.fetch_add(1, Ordering::Relaxed);
                (now, FIRST_COOLDOWN)
            }
            State::Probing {
                since, cooldown, ..
            } => (*since, (*cooldown * 2).min(MAX_COOLDOWN)),
            State::Open {
                since, cooldown, ..
            } if probed => (*since, (*cooldown * 2).min(MAX_COOLDOWN)),
            // Calls admitted before it opened are still finishing: keep the
            // schedule.
            State::Open { .. } => return false,
        };
        let opened = matches!(*state, State::Closed);
        *state = State::Open {
            since,
            retry_at: now + cooldown,
            cooldown,
            why: kmsgate_core::sanitize::clean(why, kmsgate_core::sanitize::MAX_DETAIL),
        };
        opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_on_unavailability_and_fails_fast() {
        let breaker = Breaker::default();
        breaker
            .admit()
            .unwrap()
            .finish(Outcome::Down("connection refused"));
        assert_eq!(breaker.state(), BreakerState::Open);
        let why = breaker.admit().err().unwrap();
        assert!(why.contains("connection refused"), "{why}");
        assert_eq!(breaker.fast_failures.load(Ordering::Relaxed), 1);
        assert_eq!(breaker.opened.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn one_probe_after_the_cooldown_then_closed_when_it_answers() {
        let breaker = Breaker::default();
        breaker.backend_down("down");
        std::thread::sleep(FIRST_COOLDOWN);
        let probe = breaker.admit().unwrap();
        assert_eq!(breaker.state(), BreakerState::Probing);
        assert!(breaker.admit().is_err(), "only one probe at a time");
        probe.finish(Outcome::Up);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.admit().is_ok());
    }

    #[test]
    fn a_failed_probe_doubles_the_cooldown() {
        let breaker = Breaker::default();
        breaker.backend_down("down");
        std::thread::sleep(FIRST_COOLDOWN);
        breaker.admit().unwrap().finish(Outcome::Down("still down"));
        let wait = breaker.retry_in().unwrap();
        assert!(wait > FIRST_COOLDOWN, "{wait:?}");
    }

    #[test]
    fn a_probe_that_learns_nothing_lets_a_later_call_probe() {
        let breaker = Breaker::default();
        breaker.backend_down("down");
        std::thread::sleep(FIRST_COOLDOWN);
        drop(breaker.admit().unwrap());
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.admit().is_err(), "not before the cool-down");
        std::thread::sleep(FIRST_COOLDOWN);
        assert!(!breaker.admit().unwrap().finish(Outcome::Neutral));
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn failures_that_say_nothing_about_the_backend_leave_it_alone() {
        // A call admitted before the backend went down ends without news:
        // the breaker stays open.
        let breaker = Breaker::default();
        let admitted = breaker.admit().unwrap();
        breaker.backend_down("down");
        assert!(!admitted.finish(Outcome::Neutral));
        assert_eq!(breaker.state(), BreakerState::Open);
        // And a closed one stays closed.
        let closed = Breaker::default();
        assert!(!closed.admit().unwrap().finish(Outcome::Neutral));
        assert_eq!(closed.state(), BreakerState::Closed);
    }
}
