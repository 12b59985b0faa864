//! Log lines an outsider can provoke at will (a flood of connections, a
//! hostile provider repeating a refused request) are written at most once
//! per interval, so the log cannot be used to fill a disk or drown the
//! lines that matter. What was skipped is counted in the next line.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a rate-limited line may be written.
const INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct LogLimit {
    /// When a line was last let through, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimit {
    /// Whether to write the line now.
    pub fn allow(&self) -> bool {
        self.take().is_some()
    }

    /// `Some(lines held back since the last one)` if the line may be
    /// written now.
    pub fn take(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, skipped) = &mut *state;
        if last.is_some_and(|last| last.elapsed() < INTERVAL) {
            *skipped += 1;
            return None;
        }
        *last = Some(Instant::now());
        Some(std::mem::take(skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_rest_counted() {
        let limit = LogLimit::default();
        assert_eq!(limit.take(), Some(0));
        assert_eq!(limit.take(), None);
        assert_eq!(limit.take(), None);
        limit.state.lock().unwrap().0 = Some(Instant::now() - INTERVAL);
        assert_eq!(limit.take(), Some(2));
    }
}
