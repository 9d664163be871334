//! Docker Hub's pull quota: read from every answer's `ratelimit-*` headers;
//! manifest GETs are spaced out as it runs low, and refused at once when it
//! is used up, so a job waits for the window to reset instead.

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::header::HeaderMap;

use crate::error::{Error, Result};

use super::Registry;
use super::errors::header_str;

/// Pacing of manifest GETs while a registry's pull quota is low.
#[derive(Debug, Default)]
pub(super) struct PullPace {
    pub(super) low: bool,
    pub(super) gap: Duration,
    /// When the next manifest GET may go.
    pub(super) next: Option<tokio::time::Instant>,
    /// The quota is used up until then: a manifest GET would only be refused.
    pub(super) exhausted_until: Option<tokio::time::Instant>,
}

/// Pull quota left at or below this (or the concurrency limit, if higher)
/// slows the registry down.
pub(super) const PULLS_LOW_WATER: u64 = 5;

/// A registry's pull quota as its response headers tell it (Docker Hub:
/// `ratelimit-remaining: 76;w=21600`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullQuota {
    pub remaining: u64,
    /// The quota's window, when the registry says.
    pub window: Option<Duration>,
}

impl PullQuota {
    /// From `ratelimit-remaining`, with the window from its `w=`, else from
    /// `ratelimit-limit`'s `w=`, else `ratelimit-reset` (seconds).
    pub fn from_headers(h: &HeaderMap) -> Option<PullQuota> {
        let (remaining, w) = parse_quota_value(&header_str(h, "ratelimit-remaining")?)?;
        let window = w
            .or_else(|| header_str(h, "ratelimit-limit").and_then(|v| parse_quota_value(&v)?.1))
            .or_else(|| header_str(h, "ratelimit-reset").and_then(|v| v.parse().ok()))
            .map(Duration::from_secs);
        Some(PullQuota { remaining, window })
    }

    /// How long to leave between pulls so the rest lasts the window (no
    /// cap: Docker Hub's windows are hours long, and a pull refused for
    /// quota costs as much as one made).
    pub fn gap(&self) -> Duration {
        self.window
            .map(|w| w / u32::try_from(self.remaining.max(1)).unwrap_or(u32::MAX))
            .unwrap_or_default()
    }

    /// With nothing left, how long until the window has room again (at
    /// worst the whole window, which slides); `None` while pulls remain.
    pub fn exhausted_for(&self) -> Option<Duration> {
        (self.remaining == 0).then(|| self.window.unwrap_or(Duration::from_secs(3600)))
    }
}

/// `76;w=21600` → (76, Some(21600)); a bare `76` has no window.
pub(super) fn parse_quota_value(v: &str) -> Option<(u64, Option<u64>)> {
    let mut parts = v.split(';');
    let n = parts.next()?.trim().parse().ok()?;
    let w = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("w")
            .then(|| v.trim().parse().ok())
            .flatten()
    });
    Some((n, w))
}

impl Registry {
    pub(super) fn pull_pace(&self) -> std::sync::MutexGuard<'_, PullPace> {
        // Poisoned only by a panic mid-update of plain values: still usable.
        self.pulls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Slow down or speed up again per the pull quota a response reports.
    pub(super) fn note_pull_quota(&self, headers: &HeaderMap) {
        let Some(q) = PullQuota::from_headers(headers) else {
            return;
        };
        let low_water = (self.limit.limit() as u64).max(PULLS_LOW_WATER);
        let mut p = self.pull_pace();
        p.exhausted_until = q.exhausted_for().map(|d| tokio::time::Instant::now() + d);
        if q.remaining > low_water {
            if p.low {
                tracing::info!(registry = %self.host, remaining = q.remaining, "registry pull limit recovered; full speed again");
            }
            *p = PullPace::default();
            return;
        }
        let gap = q.gap();
        if !p.low {
            tracing::warn!(
                registry = %self.host,
                seconds_between_pulls = gap.as_secs_f64(),
                "registry pull limit nearly used up: {} pulls left in the window; slowing down",
                q.remaining
            );
        }
        p.low = true;
        p.gap = gap;
        let after_this = tokio::time::Instant::now() + gap;
        p.next = Some(p.next.map_or(after_this, |n| n.max(after_this)));
    }

    /// The quota-used-up error, while the last answer said nothing is left.
    pub(super) fn quota_exhausted(&self) -> Option<Error> {
        let until = self.pull_pace().exhausted_until?;
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        (!left.is_zero()).then(|| Error::QuotaExhausted {
            registry: self.host.clone(),
            message: "0 pulls left in the window".into(),
            retry_after: Duration::from_secs(left.as_secs().max(1)),
        })
    }

    /// Wait for this manifest GET's turn while the pull quota is low; with
    /// none left, fail at once so the job waits for the reset instead.
    pub(super) async fn pace_pull(&self) -> Result<()> {
        if let Some(e) = self.quota_exhausted() {
            return Err(e);
        }
        let slot = {
            let mut p = self.pull_pace();
            if !p.low || p.gap.is_zero() {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            let slot = p.next.map_or(now, |n| n.max(now));
            p.next = Some(slot + p.gap);
            slot
        };
        if slot > tokio::time::Instant::now() {
            self.stats.slowed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep_until(slot).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn reads_docker_hub_pull_quotas() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().unwrap());
            }
            m
        };
        let hub = h(&[
            ("ratelimit-limit", "100;w=21600"),
            ("ratelimit-remaining", "76;w=21600"),
            ("docker-ratelimit-source", "203.0.113.7"),
        ]);
        let q = PullQuota::from_headers(&hub).unwrap();
        assert_eq!(
            q,
            PullQuota {
                remaining: 76,
                window: Some(Duration::from_secs(21600))
            }
        );
        // 21600 s / 76 pulls: no cap, however long.
        assert_eq!(q.gap(), Duration::from_secs(21600) / 76);
        assert_eq!(q.exhausted_for(), None);
        let q = PullQuota::from_headers(&h(&[("RateLimit-Remaining", "0;w=3600")])).unwrap();
        assert_eq!(q.remaining, 0);
        assert_eq!(q.gap(), Duration::from_secs(3600), "0 left divides by 1");
        assert_eq!(q.exhausted_for(), Some(Duration::from_secs(3600)));
        let q = PullQuota::from_headers(&h(&[("ratelimit-remaining", "4;w=2")])).unwrap();
        assert_eq!(q.gap(), Duration::from_millis(500));
        // The window from the limit header, or the reset, when remaining has none.
        let q = PullQuota::from_headers(&h(&[
            ("ratelimit-limit", "100;w=300"),
            ("ratelimit-remaining", "3"),
        ]))
        .unwrap();
        assert_eq!(q.window, Some(Duration::from_secs(300)));
        let q = PullQuota::from_headers(&h(&[
            ("ratelimit-remaining", "10"),
            ("ratelimit-reset", "50"),
        ]))
        .unwrap();
        assert_eq!(q.gap(), Duration::from_secs(5));
        let q = PullQuota::from_headers(&h(&[("ratelimit-remaining", "7")])).unwrap();
        assert_eq!((q.window, q.gap()), (None, Duration::ZERO));
        assert_eq!(
            PullQuota::from_headers(&h(&[("ratelimit-limit", "100;w=21600")])),
            None
        );
        assert_eq!(
            PullQuota::from_headers(&h(&[("ratelimit-remaining", "lots")])),
            None
        );
        assert_eq!(
            parse_quota_value(" 76 ; W = 21600 "),
            Some((76, Some(21600)))
        );
        assert_eq!(parse_quota_value("76;x=1;w=5"), Some((76, Some(5))));
    }
}
