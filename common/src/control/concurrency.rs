//! How many images a worker copies at once: adapted while it runs, so
//! nobody has to tune `--workers` or `--jobs` to reach full speed (those
//! stay as the cap).
//!
//! It starts at [`START`] and looks at each window of finished images: if
//! a registry answered 429 or a request timed out in it, the limit halves,
//! but not below the start (the registries' own request limits,
//! `registry::limit`, go lower: they bound the requests each image makes,
//! this bounds how many images make them); if throughput (images a second)
//! rose by at least [`GAIN`] over the window before, the limit grows by
//! half; otherwise it holds, and after [`PROBE_AFTER`] windows of holding
//! tries one more. 5xx answers and cut connections are not read as load:
//! they are retried, and fewer images at once would not make them rarer.
//!
//! The decision is [`next_limit`], a pure function; [`Adaptive`] keeps the
//! window and hands out the permits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;

/// Images copied at once at the start.
pub const START: usize = 4;
/// The relative throughput gain that is worth one more step up.
pub const GAIN: f64 = 1.10;
/// Windows of holding steady before one more image is tried.
pub const PROBE_AFTER: u32 = 3;
/// A window is at least this long, so a burst of small images finishing at
/// once is not read as a trend.
const MIN_WINDOW: Duration = Duration::from_millis(500);

/// Why the limit changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Throughput rose: more at once.
    Grew,
    /// Throughput held for a while: one more, to see.
    Probed,
    /// 429s or timeouts: fewer at once.
    BackedOff,
}

/// The next limit, from the window just ended: its throughput, the one
/// before, whether registries pushed back in it, and how many windows the
/// limit has held.
pub fn next_limit(
    limit: usize,
    cap: usize,
    rate: f64,
    rate_before: f64,
    trouble: bool,
    held: u32,
) -> (usize, Option<Change>) {
    let cap = cap.max(1);
    if trouble {
        let down = (limit / 2).max(START.min(cap));
        return if down < limit {
            (down, Some(Change::BackedOff))
        } else {
            (limit, None)
        };
    }
    if limit >= cap {
        return (cap, None);
    }
    if rate >= rate_before * GAIN {
        return ((limit + (limit / 2).max(1)).min(cap), Some(Change::Grew));
    }
    if held + 1 >= PROBE_AFTER {
        return (limit + 1, Some(Change::Probed));
    }
    (limit, None)
}

/// One change of the limit, for the run's summary.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub seconds: f64,
    pub limit: usize,
    pub change: Change,
    /// Images in flight when it changed.
    pub in_flight: usize,
}

/// The limit's story over a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConcurrencyReport {
    pub start: usize,
    pub cap: usize,
    pub peak: usize,
    pub last: usize,
    pub steps: Vec<Step>,
}

#[derive(Debug)]
struct State {
    limit: usize,
    /// Permits to retire as they come back (after a decrease).
    debt: usize,
    in_flight: usize,
    window_start: Instant,
    window_done: u64,
    rate_before: f64,
    /// The registries' 429s and timeouts so far, at the window's start.
    trouble_seen: u64,
    held: u32,
    report: ConcurrencyReport,
}

/// Permits for images in flight, whose number follows [`next_limit`].
#[derive(Debug)]
pub struct Adaptive {
    sem: Semaphore,
    cap: usize,
    started: Instant,
    state: Mutex<State>,
}

/// One image's slot; given back (or retired, after a decrease) on drop.
#[derive(Debug)]
pub struct JobPermit {
    adaptive: Arc<Adaptive>,
}

impl Drop for JobPermit {
    fn drop(&mut self) {
        let mut st = self.adaptive.state();
        st.in_flight = st.in_flight.saturating_sub(1);
        if st.debt > 0 {
            st.debt -= 1;
        } else {
            self.adaptive.sem.add_permits(1);
        }
    }
}

impl Adaptive {
    /// Start at [`START`] (or `cap`, if lower), never above `cap`.
    pub fn new(cap: usize) -> Arc<Adaptive> {
        let cap = cap.max(1);
        let start = START.min(cap);
        Arc::new(Adaptive {
            sem: Semaphore::new(start),
            cap,
            started: Instant::now(),
            state: Mutex::new(State {
                limit: start,
                debt: 0,
                in_flight: 0,
                window_start: Instant::now(),
                window_done: 0,
                rate_before: 0.0,
                trouble_seen: 0,
                held: 0,
                report: ConcurrencyReport {
                    start,
                    cap,
                    peak: start,
                    last: start,
                    steps: Vec::new(),
                },
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain counters: still usable after a panic elsewhere.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait for a slot; `None` once closed (never, today).
    pub async fn acquire(self: &Arc<Self>) -> Option<JobPermit> {
        self.sem.acquire().await.ok()?.forget();
        self.state().in_flight += 1;
        Some(JobPermit {
            adaptive: self.clone(),
        })
    }

    /// Slots free right now.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    /// An image finished; `trouble` is the registries' count of 429s and
    /// timeouts so far. Ends the window once it holds `limit` images and
    /// [`MIN_WINDOW`], and moves the limit.
    pub fn finished(&self, trouble: u64) {
        self.finished_at(trouble, Instant::now());
    }

    fn finished_at(&self, trouble: u64, now: Instant) {
        let mut st = self.state();
        st.window_done += 1;
        let elapsed = now.saturating_duration_since(st.window_start);
        if st.window_done < st.limit as u64 || elapsed < MIN_WINDOW {
            return;
        }
        let rate = st.window_done as f64 / elapsed.as_secs_f64();
        let pushed_back = trouble > st.trouble_seen;
        let (limit, change) = next_limit(
            st.limit,
            self.cap,
            rate,
            st.rate_before,
            pushed_back,
            st.held,
        );
        if limit > st.limit {
            let up = limit - st.limit;
            let repaid = up.min(st.debt);
            st.debt -= repaid;
            self.sem.add_permits(up - repaid);
        } else if limit < st.limit {
            st.debt += st.limit - limit;
        }
        st.held = if change.is_some() { 0 } else { st.held + 1 };
        st.limit = limit;
        st.rate_before = rate;
        st.trouble_seen = trouble;
        st.window_start = now;
        st.window_done = 0;
        if let Some(change) = change {
            let step = Step {
                seconds: self.started.elapsed().as_secs_f64(),
                limit,
                change,
                in_flight: st.in_flight,
            };
            tracing::debug!(limit, ?change, rate, "images at once");
            st.report.peak = st.report.peak.max(limit);
            st.report.steps.push(step);
        }
        st.report.last = limit;
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.state().limit
    }

    pub fn report(&self) -> ConcurrencyReport {
        self.state().report.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_while_throughput_grows_and_backs_off_on_trouble() {
        // First window: any throughput beats none.
        assert_eq!(
            next_limit(4, 32, 10.0, 0.0, false, 0),
            (6, Some(Change::Grew))
        );
        assert_eq!(
            next_limit(6, 32, 12.0, 10.0, false, 0),
            (9, Some(Change::Grew))
        );
        // Under 10% more: hold, then probe one up after three windows.
        assert_eq!(next_limit(9, 32, 12.5, 12.0, false, 0), (9, None));
        assert_eq!(next_limit(9, 32, 12.5, 12.0, false, 1), (9, None));
        assert_eq!(
            next_limit(9, 32, 12.5, 12.0, false, 2),
            (10, Some(Change::Probed))
        );
        // Pushed back: halve, whatever the throughput, but not below the start.
        assert_eq!(
            next_limit(20, 32, 50.0, 1.0, true, 0),
            (10, Some(Change::BackedOff))
        );
        assert_eq!(
            next_limit(6, 32, 50.0, 1.0, true, 0),
            (START, Some(Change::BackedOff))
        );
        assert_eq!(next_limit(START, 32, 1.0, 1.0, true, 0), (START, None));
        assert_eq!(next_limit(2, 2, 1.0, 1.0, true, 0), (2, None));
        // Never above the cap.
        assert_eq!(
            next_limit(30, 32, 50.0, 1.0, false, 0),
            (32, Some(Change::Grew))
        );
        assert_eq!(next_limit(32, 32, 50.0, 1.0, false, 5), (32, None));
        assert_eq!(next_limit(4, 1, 50.0, 1.0, false, 0), (1, None));
    }

    #[tokio::test]
    async fn permits_follow_the_limit() {
        let a = Adaptive::new(16);
        let t0 = a.state().window_start;
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(a.limit(), START);
        let mut held = Vec::new();
        for _ in 0..START {
            held.push(a.acquire().await.unwrap());
        }
        assert_eq!(a.available(), 0);
        // START images in 1 s, clean: grows by half.
        for _ in 0..START {
            a.finished_at(0, at(1000));
        }
        assert_eq!(a.limit(), 6);
        assert_eq!(a.available(), 2);
        // 6 in the next second, with a 429: back to the start.
        for _ in 0..6 {
            a.finished_at(1, at(2000));
        }
        assert_eq!(a.limit(), START);
        drop(held);
        assert_eq!(a.available(), START, "the extra permits were retired");
        let r = a.report();
        assert_eq!(r.steps.len(), 2);
        assert_eq!(r.steps[1].change, Change::BackedOff);
        assert_eq!(r.steps[1].in_flight, START);
        // Too short a window decides nothing.
        for _ in 0..START {
            a.finished_at(1, at(2100));
        }
        assert_eq!(a.limit(), START);
        // No new trouble, and faster (5 in 0.5 s: 10 a second against 6
        // before): grows, and the permits with it.
        a.finished_at(1, at(2500));
        assert_eq!(a.limit(), 6);
        assert_eq!(a.available(), 6);
        assert_eq!(a.report().peak, 6);
    }
}
