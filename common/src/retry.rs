//! The one table that decides what an HTTP status means for a retry, and the
//! jittered exponential backoff used for registry requests.

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

/// Delays between attempts: 200 ms doubling to at most 10 s, with full jitter
/// so a fleet of workers hitting one registry does not retry in lockstep.
pub fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_max_times(MAX_ATTEMPTS - 1)
        .with_jitter()
        .build()
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
        let delays: Vec<_> = backoff().collect();
        assert_eq!(delays.len(), MAX_ATTEMPTS - 1);
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(20)));
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
