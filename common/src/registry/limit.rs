//! Adaptive concurrency per registry: at most `max` requests at once, halved
//! when the registry answers 429 and grown back by one after a window of
//! successes (additive increase, multiplicative decrease). A registry that
//! rate-limits is then asked less often instead of being retried at full
//! speed by every task.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// One halving per this long: a burst of 429s answering requests that were
/// all sent at the old limit is one signal, not many.
const DECREASE_COOLDOWN: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Limiter {
    sem: Semaphore,
    max: usize,
    state: Mutex<State>,
    /// The lowest the limit has been, for reports and tests.
    low_water: AtomicUsize,
}

#[derive(Debug)]
struct State {
    limit: usize,
    /// Permits to retire as they come back (after a decrease).
    debt: usize,
    successes: usize,
    last_decrease: Option<Instant>,
}

/// A request slot; returned on drop.
#[derive(Debug)]
pub struct Permit<'a> {
    limiter: &'a Limiter,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.limiter.release();
    }
}

impl Limiter {
    pub fn new(max: usize) -> Limiter {
        let max = max.max(1);
        Limiter {
            sem: Semaphore::new(max),
            max,
            state: Mutex::new(State {
                limit: max,
                debt: 0,
                successes: 0,
                last_decrease: None,
            }),
            low_water: AtomicUsize::new(max),
        }
    }

    /// Wait for a slot; `None` once the limiter is closed (never, today).
    pub async fn acquire(&self) -> Option<Permit<'_>> {
        // The permit is given back by hand in `release`, which may retire it.
        self.sem.acquire().await.ok()?.forget();
        Some(Permit { limiter: self })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-update of
        // plain counters; they are still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release(&self) {
        let mut st = self.state();
        if st.debt > 0 {
            st.debt -= 1;
        } else {
            self.sem.add_permits(1);
        }
    }

    /// The registry said 429: halve the limit (at most once per cooldown).
    pub fn throttled(&self) {
        let mut st = self.state();
        if st
            .last_decrease
            .is_some_and(|t| t.elapsed() < DECREASE_COOLDOWN)
        {
            return;
        }
        let new = (st.limit / 2).max(1);
        if new < st.limit {
            st.debt += st.limit - new;
            st.limit = new;
            self.low_water.fetch_min(new, Ordering::Relaxed);
        }
        st.successes = 0;
        st.last_decrease = Some(Instant::now());
    }

    /// A request succeeded: after `limit` successes in a row, one more slot.
    pub fn succeeded(&self) {
        let mut st = self.state();
        if st.limit >= self.max {
            return;
        }
        st.successes += 1;
        if st.successes >= st.limit {
            st.successes = 0;
            st.limit += 1;
            if st.debt > 0 {
                st.debt -= 1;
            } else {
                self.sem.add_permits(1);
            }
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.state().limit
    }

    pub fn low_water(&self) -> usize {
        self.low_water.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn halves_on_429_and_grows_back_one_window_at_a_time() {
        let l = Limiter::new(8);
        l.throttled();
        assert_eq!(l.limit(), 4);
        // A second 429 from the same burst does not halve again.
        l.throttled();
        assert_eq!(l.limit(), 4);
        // 4 successes: one more slot.
        for _ in 0..4 {
            l.succeeded();
        }
        assert_eq!(l.limit(), 5);
        assert_eq!(l.low_water(), 4);
        for _ in 0..100 {
            l.succeeded();
        }
        assert_eq!(l.limit(), 8, "never above the configured maximum");
    }

    #[tokio::test]
    async fn fewer_requests_run_at_once_after_a_decrease() {
        let l = Limiter::new(4);
        let held: Vec<_> = [
            l.acquire().await,
            l.acquire().await,
            l.acquire().await,
            l.acquire().await,
        ]
        .into_iter()
        .flatten()
        .collect();
        assert_eq!(held.len(), 4);
        l.throttled();
        drop(held);
        // Limit 2 now: two slots, the third waits.
        let a = l.acquire().await;
        let b = l.acquire().await;
        let third = tokio::time::timeout(Duration::from_millis(50), l.acquire()).await;
        assert!(third.is_err(), "a third request ran at limit 2");
        drop((a, b));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), l.acquire())
                .await
                .is_ok()
        );
    }
}
