//! The one retry policy: the table that decides what an HTTP status means
//! for a retry ([`classify`]), and the one helper every retry loop waits
//! through ([`Backoff`]): registry requests, token fetches, manifest bodies
//! cut short, blob transfers, SQS batch entries and queue receives. Calls to
//! AWS APIs are also retried inside the SDK (standard mode, see
//! [`crate::aws::config`]); [`Backoff`] covers what the SDK cannot see, such
//! as the entries of a batch that SQS reports as failed.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::StatusCode;

/// What to do with a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 2xx and 3xx: hand the response to the caller.
    Success,
    /// 401: fetch fresh credentials and try once more.
    Reauth,
    /// Transient: back off and try again, within the attempt budget.
    Retry,
    /// Permanent (404, most 4xx): retrying cannot help.
    Final,
}

pub fn classify(status: StatusCode) -> Class {
    match status.as_u16() {
        200..=399 => Class::Success,
        401 => Class::Reauth,
        // Request timeout, too early, rate limited, and server-side trouble.
        408 | 425 | 429 | 500 | 502 | 503 | 504 => Class::Retry,
        // Not Implemented and other 5xx that signal a permanent gap.
        501 | 505 => Class::Final,
        500..=599 => Class::Retry,
        _ => Class::Final,
    }
}

/// How many times a request is attempted in all (first try included).
pub const MAX_ATTEMPTS: usize = 6;

/// The one retry helper: jittered exponential delays within an attempt
/// budget. A loop calls [`Backoff::wait`] after a failed attempt; it sleeps
/// and says `true` while attempts are left.
#[derive(Debug)]
pub struct Backoff {
    delays: backon::ExponentialBackoff,
    attempt: usize,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::attempts(MAX_ATTEMPTS)
    }
}

impl Backoff {
    /// At most `attempts` attempts in all (the first included).
    pub fn attempts(attempts: usize) -> Backoff {
        Backoff {
            delays: builder().with_max_times(attempts.saturating_sub(1)).build(),
            attempt: 1,
        }
    }

    /// No attempt budget: for loops that must go on (a worker's receive
    /// loop), with delays still capped and jittered.
    pub fn forever() -> Backoff {
        Backoff {
            delays: builder().without_max_times().build(),
            attempt: 1,
        }
    }

    /// The number of the attempt being made (1 for the first).
    pub fn attempt(&self) -> usize {
        self.attempt
    }

    /// The next delay, or `None` when the budget is spent; `asked` (a
    /// server's `Retry-After`) is a floor under the jittered delay.
    pub fn next_delay(&mut self, asked: Option<Duration>) -> Option<Duration> {
        let d = self.delays.next()?;
        self.attempt += 1;
        Some(asked.map_or(d, |a| a.max(d)))
    }

    /// Sleep before the next attempt; `false` (at once) when the budget is
    /// spent.
    pub async fn wait(&mut self, asked: Option<Duration>) -> bool {
        match self.next_delay(asked) {
            Some(d) => {
                tokio::time::sleep(d).await;
                true
            }
            None => false,
        }
    }
}

fn builder() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
}

/// `Retry-After` as seconds (the HTTP-date form is rare on registries and ignored).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: u64 = v.trim().parse().ok()?;
    // A registry asking for minutes would stall a whole job; cap it.
    Some(Duration::from_secs(secs.min(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        let cases = [
            (200, Class::Success),
            (201, Class::Success),
            (202, Class::Success),
            (307, Class::Success),
            (400, Class::Final),
            (401, Class::Reauth),
            (403, Class::Final),
            (404, Class::Final),
            (405, Class::Final),
            (408, Class::Retry),
            (409, Class::Final),
            (416, Class::Final),
            (429, Class::Retry),
            (500, Class::Retry),
            (501, Class::Final),
            (502, Class::Retry),
            (503, Class::Retry),
            (504, Class::Retry),
            (507, Class::Retry),
        ];
        for (code, want) in cases {
            assert_eq!(
                classify(StatusCode::from_u16(code).unwrap()),
                want,
                "{code}"
            );
        }
    }

    #[test]
    fn backoff_is_bounded_and_grows() {
        let mut b = Backoff::default();
        let delays: Vec<_> = std::iter::from_fn(|| b.next_delay(None)).collect();
        assert_eq!(delays.len(), MAX_ATTEMPTS - 1);
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(20)));
        assert_eq!(b.attempt(), MAX_ATTEMPTS);
    }

    #[test]
    fn a_servers_delay_is_a_floor() {
        let mut b = Backoff::attempts(3);
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(30))),
            Some(Duration::from_secs(30))
        );
        assert!(
            b.next_delay(None)
                .is_some_and(|d| d <= Duration::from_secs(10))
        );
        assert_eq!(b.next_delay(None), None);
    }

    #[test]
    fn reads_retry_after() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(reqwest::header::RETRY_AFTER, "3600".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(60)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }
}
