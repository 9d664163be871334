//! Every change of a destination's status, as pure functions of the status
//! before it, and the one rule that decides whether a write may land.
//!
//! The controller marks destinations `synced` (found in sync) and `queued`
//! (claimed for a job); a worker marks them `copying`, then `synced` or
//! `failed`. Nothing else writes a [`DestStatus`]: the stores only apply
//! these values under [`Guard`].

use crate::oci::digest::Digest;

use super::{DestStatus, State};

/// What must still hold for a status write to land, so a status never
/// regresses: a worker's older result never overwrites a newer attempt's,
/// and two controllers never both claim one destination.
#[derive(Debug, Clone, Copy)]
pub enum Guard<'a> {
    /// No newer attempt's result is recorded (results of workers).
    Attempt,
    /// `queued_at` is still what the controller saw (claims of controllers).
    QueuedAt(Option<&'a str>),
}

impl Guard<'_> {
    /// Whether `new` may replace `old` (`None`: nothing recorded yet). The
    /// file store asks this; the DynamoDB store states the same rule as its
    /// condition expression (`store::dynamo`), and the store tests hold both
    /// to it. Times are RFC 3339 UTC strings of one format, so they compare
    /// in time order.
    pub fn allows(&self, old: Option<&DestStatus>, new: &DestStatus) -> bool {
        match self {
            Guard::Attempt => {
                match (old.and_then(|o| o.last_attempt.as_ref()), &new.last_attempt) {
                    (Some(old), Some(new)) => old <= new,
                    _ => true,
                }
            }
            Guard::QueuedAt(seen) => old.and_then(|o| o.queued_at.as_deref()) == *seen,
        }
    }
}

impl DestStatus {
    /// The controller found the destination at the source's digest.
    pub fn found_in_sync(
        &self,
        source_digest: &Digest,
        dest_digest: &Digest,
        platforms: Option<String>,
    ) -> DestStatus {
        DestStatus {
            state: Some(State::Synced),
            source_digest: Some(source_digest.clone()),
            dest_digest: Some(dest_digest.clone()),
            platforms,
            error: None,
            ..self.clone()
        }
    }

    /// The controller claimed the destination for a job at `now`.
    pub fn queued(&self, source_digest: Option<Digest>, now: &str) -> DestStatus {
        DestStatus {
            state: Some(State::Queued),
            source_digest,
            queued_at: Some(now.to_string()),
            ..self.clone()
        }
    }

    /// A worker started an attempt at `started`.
    pub fn copying(&self, started: &str) -> DestStatus {
        DestStatus {
            state: Some(State::Copying),
            attempts: self.attempts + 1,
            last_attempt: Some(started.to_string()),
            ..self.clone()
        }
    }

    /// The attempt that started at `started` left the destination at
    /// `dest_digest` (copied, or found in sync).
    pub fn synced(
        &self,
        attempt: &Attempt,
        dest_digest: Option<Digest>,
        bytes_copied: u64,
        refused_referrers: &[String],
    ) -> DestStatus {
        DestStatus {
            state: Some(State::Synced),
            dest_digest,
            platforms: attempt.platforms.clone(),
            last_success: Some(attempt.finished.clone()),
            bytes_copied,
            error: None,
            refused_referrers: (!refused_referrers.is_empty()).then(|| refused_referrers.join(",")),
            ..self.attempted(attempt)
        }
    }

    /// The attempt that started at `started` failed with `error`.
    pub fn failed(&self, attempt: &Attempt, error: Option<String>) -> DestStatus {
        DestStatus {
            state: Some(State::Failed),
            error,
            ..self.attempted(attempt)
        }
    }

    /// What every finished attempt records, on the status as it was before
    /// the attempt began.
    fn attempted(&self, attempt: &Attempt) -> DestStatus {
        DestStatus {
            attempts: self.attempts + 1,
            last_attempt: Some(attempt.started.clone()),
            source_digest: attempt.source_digest.clone(),
            ..self.clone()
        }
    }
}

/// One finished attempt of a worker, as its results record it.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub started: String,
    pub finished: String,
    pub source_digest: Option<Digest>,
    /// The row's platform subset (`None`: all platforms).
    pub platforms: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    #[test]
    fn a_worker_attempt_goes_copying_then_synced_or_failed() {
        let before = DestStatus {
            state: Some(State::Queued),
            attempts: 2,
            error: Some("old".into()),
            queued_at: Some("2026-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        let copying = before.copying("2026-01-01T00:00:05Z");
        assert_eq!(copying.state, Some(State::Copying));
        assert_eq!(copying.attempts, 3);
        let attempt = Attempt {
            started: "2026-01-01T00:00:05Z".into(),
            finished: "2026-01-01T00:00:09Z".into(),
            source_digest: Some(digest('a')),
            platforms: None,
        };
        let done = before.synced(&attempt, Some(digest('a')), 10, &["sha256-x.sig".into()]);
        assert_eq!(done.state, Some(State::Synced));
        assert_eq!(done.attempts, 3, "one attempt counts once");
        assert_eq!(done.error, None);
        assert_eq!(done.last_success.as_deref(), Some("2026-01-01T00:00:09Z"));
        assert_eq!(done.refused_referrers.as_deref(), Some("sha256-x.sig"));
        assert_eq!(
            done.queued_at, before.queued_at,
            "the claim stays for the controller"
        );
        let failed = before.failed(&attempt, Some("refused".into()));
        assert_eq!(failed.state, Some(State::Failed));
        assert_eq!(
            (failed.attempts, failed.error.as_deref()),
            (3, Some("refused"))
        );
        assert_eq!(failed.last_success, None);
    }

    #[test]
    fn the_guard_never_lets_a_status_regress() {
        let at = |t: &str| DestStatus {
            last_attempt: Some(t.into()),
            queued_at: Some("q1".into()),
            ..Default::default()
        };
        let newer = at("2026-01-01T00:00:10Z");
        let older = at("2026-01-01T00:00:05Z");
        assert!(!Guard::Attempt.allows(Some(&newer), &older));
        assert!(Guard::Attempt.allows(Some(&older), &newer));
        assert!(Guard::Attempt.allows(None, &older));
        assert!(Guard::QueuedAt(Some("q1")).allows(Some(&newer), &newer));
        assert!(!Guard::QueuedAt(None).allows(Some(&newer), &newer));
        assert!(Guard::QueuedAt(None).allows(None, &newer));
    }
}
