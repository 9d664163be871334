//! A token bucket: at most `rate` operations per second on average, and at
//! most `burst` at once after a quiet spell.
//!
//! Used for manifest pushes, which ECR limits per account and region
//! (`PutImage`, 10 per second) independently of how many requests are in
//! flight, so the concurrency limit in [`crate::registry::limit`] cannot express it.
//! Time comes from `tokio::time`, so tests can pause and advance it.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    // An async mutex held across the wait: callers queue in arrival order
    // (tokio's mutex is fair) instead of racing for each new token.
    state: tokio::sync::Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` tokens per second, up to `burst` saved (at least one, or no
    /// token could ever be taken). `None` when `rate` is not a positive
    /// finite number: there is no such bucket.
    pub fn new(rate: f64, burst: f64) -> Option<TokenBucket> {
        if !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        let burst = if burst.is_finite() {
            burst.max(1.0)
        } else {
            1.0
        };
        Some(TokenBucket {
            rate,
            burst,
            state: tokio::sync::Mutex::new(State {
                tokens: burst,
                last: Instant::now(),
            }),
        })
    }

    #[cfg(test)]
    fn burst(&self) -> f64 {
        self.burst
    }

    /// Wait for a token and take it. Cancel-safe: a caller dropped while
    /// waiting takes nothing.
    pub async fn take(&self) {
        let mut st = self.state.lock().await;
        loop {
            let now = Instant::now();
            let earned = now.saturating_duration_since(st.last).as_secs_f64() * self.rate;
            st.tokens = (st.tokens + earned).min(self.burst);
            st.last = now;
            // Float error must not cost a whole extra timer tick (1 ms).
            if st.tokens >= 1.0 - 1e-9 {
                st.tokens = (st.tokens - 1.0).max(0.0);
                return;
            }
            let wait = (1.0 - st.tokens) / self.rate;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    /// Whether `fut` finishes without the clock moving.
    async fn ready<F: std::future::Future>(fut: F) -> bool {
        tokio::time::timeout(Duration::ZERO, fut).await.is_ok()
    }

    #[test]
    fn refuses_rates_that_are_not_positive() {
        assert!(TokenBucket::new(0.0, 1.0).is_none());
        assert!(TokenBucket::new(-1.0, 1.0).is_none());
        assert!(TokenBucket::new(f64::NAN, 1.0).is_none());
        assert!(TokenBucket::new(f64::INFINITY, 1.0).is_none());
        let b = TokenBucket::new(0.5, 0.0).unwrap();
        assert_eq!(
            b.burst(),
            1.0,
            "a burst below one token could never be taken"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_one_token_per_interval() {
        let b = TokenBucket::new(2.0, 3.0).unwrap();
        for _ in 0..3 {
            assert!(ready(b.take()).await, "the burst is available at once");
        }
        assert!(!ready(b.take()).await, "the fourth waits");
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(!ready(b.take()).await, "not before half a second at 2/s");
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(ready(b.take()).await);
        assert!(!ready(b.take()).await);
    }

    #[tokio::test(start_paused = true)]
    async fn saves_no_more_than_the_burst() {
        let b = TokenBucket::new(10.0, 2.0).unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(ready(b.take()).await);
        assert!(ready(b.take()).await);
        assert!(!ready(b.take()).await, "a quiet minute saved only 2 tokens");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_rates_wait_whole_seconds() {
        let b = TokenBucket::new(0.5, 1.0).unwrap();
        let start = Instant::now();
        b.take().await;
        b.take().await;
        b.take().await;
        // Auto-advance of the paused clock jumps straight to each deadline.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(4) && took < Duration::from_millis(4010),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_takers_share_the_rate() {
        let b = Arc::new(TokenBucket::new(5.0, 1.0).unwrap());
        let start = Instant::now();
        let tasks: Vec<_> = (0..11)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move {
                    b.take().await;
                    start.elapsed()
                })
            })
            .collect();
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap());
        }
        times.sort();
        // One at once, then one per 200 ms: the last after 2 s.
        assert!(times[0] < Duration::from_millis(1), "{times:?}");
        let last = times[10];
        assert!(
            last >= Duration::from_secs(2) && last < Duration::from_millis(2010),
            "{times:?}"
        );
        for w in times.windows(2) {
            assert!(w[1] - w[0] >= Duration::from_millis(199), "{times:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_takes_nothing() {
        let b = TokenBucket::new(1.0, 1.0).unwrap();
        b.take().await;
        assert!(!ready(b.take()).await);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(ready(b.take()).await, "the cancelled take left its token");
    }
}
