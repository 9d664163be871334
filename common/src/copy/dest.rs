//! One destination's state during a copy: its client, whether it needs the
//! copy, its counters, and its first failure (later ones add nothing).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::copy::ledger::BlobKey;
use crate::error::Error;
use crate::oci::digest::Digest;
use crate::oci::reference::Reference;
use crate::registry::client::Registry;

use super::DestinationReport;
use super::Outcome;
use super::referrers::referrer_advice;

/// Why a destination failed: the words, whether it looked transient, and
/// how long the registry asked us to wait.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    message: String,
    transient: bool,
    retry_after: Option<Duration>,
    /// For a referrer: why it cannot be pushed there, with what to do.
    referrer_advice: Option<String>,
}

/// One destination's state during a copy.
pub(super) struct Dest {
    pub(super) reference: Reference,
    pub(super) registry: Option<Arc<Registry>>,
    pub(super) needs_copy: AtomicBool,
    pub(super) in_sync: AtomicBool,
    pub(super) failure: Mutex<Option<Failure>>,
    pub(super) bytes: AtomicU64,
    pub(super) copied: AtomicU64,
    pub(super) mounted: AtomicU64,
    pub(super) skipped: AtomicU64,
    pub(super) manifests: AtomicU64,
    pub(super) referrers: AtomicU64,
    pub(super) warnings: Mutex<Vec<String>>,
    pub(super) refused: Mutex<Vec<String>>,
}

impl Dest {
    pub(super) fn new(reference: Reference) -> Dest {
        Dest {
            reference,
            registry: None,
            needs_copy: AtomicBool::new(false),
            in_sync: AtomicBool::new(false),
            failure: Mutex::new(None),
            bytes: AtomicU64::new(0),
            copied: AtomicU64::new(0),
            mounted: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            manifests: AtomicU64::new(0),
            referrers: AtomicU64::new(0),
            warnings: Mutex::new(Vec::new()),
            refused: Mutex::new(Vec::new()),
        }
    }

    /// The same registry client, for an artifact stored next to this image.
    pub(super) fn sibling(&self, reference: Reference) -> Dest {
        let mut d = Dest::new(reference);
        d.registry = self.registry.clone();
        d
    }

    pub(super) fn warn(&self, message: String) {
        tracing::warn!(destination = %self.reference, "{message}");
        self.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
    }

    /// Fold an artifact copy's counters into this destination's.
    pub(super) fn absorb(&self, other: &Dest) {
        for (to, from) in [
            (&self.bytes, &other.bytes),
            (&self.copied, &other.copied),
            (&self.mounted, &other.mounted),
            (&self.skipped, &other.skipped),
            (&self.manifests, &other.manifests),
        ] {
            to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    pub(super) fn failure_message(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|f| f.message.clone())
    }

    /// The advice-bearing form of this destination's failure, for an
    /// artifact copied next to an image.
    pub(super) fn failure_words(&self, what: &str) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|f| f.referrer_advice.as_ref())
            .map(|advice| format!("{what}: {advice}"))
    }

    pub(super) fn fail(&self, e: &Error) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            tracing::warn!(destination = %self.reference, error = %e, "destination gets no more work in this copy");
            *f = Some(Failure {
                message: e.to_string(),
                transient: e.is_transient(),
                retry_after: e.retry_after(),
                referrer_advice: referrer_advice(e),
            });
        }
    }

    pub(super) fn failed(&self) -> bool {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    pub(super) fn active(&self) -> bool {
        self.needs_copy.load(Ordering::Relaxed) && !self.failed()
    }

    pub(super) fn registry(&self) -> &Arc<Registry> {
        // Only called for destinations that passed `prepare`, which sets it.
        #[allow(clippy::expect_used)]
        self.registry
            .as_ref()
            .expect("registry resolved in prepare")
    }

    pub(super) fn key(&self, digest: &Digest) -> BlobKey {
        BlobKey {
            registry: self.reference.registry().to_string(),
            repository: self.reference.repository().to_string(),
            digest: digest.clone(),
        }
    }

    pub(super) fn report(&self, digest: Option<&Digest>, started: Instant) -> DestinationReport {
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let outcome = match (&failure, self.in_sync.load(Ordering::Relaxed)) {
            (Some(_), _) => Outcome::Failed,
            (None, true) => Outcome::InSync,
            (None, false) => Outcome::Copied,
        };
        DestinationReport {
            destination: self.reference.to_string(),
            outcome,
            digest: if outcome == Outcome::Failed {
                None
            } else {
                digest.cloned()
            },
            bytes_copied: self.bytes.load(Ordering::Relaxed),
            blobs_copied: self.copied.load(Ordering::Relaxed),
            blobs_mounted: self.mounted.load(Ordering::Relaxed),
            blobs_skipped: self.skipped.load(Ordering::Relaxed),
            manifests_pushed: self.manifests.load(Ordering::Relaxed),
            referrers_copied: self.referrers.load(Ordering::Relaxed),
            seconds: started.elapsed().as_secs_f64(),
            transient: failure.as_ref().is_some_and(|f| f.transient),
            retry_after_seconds: failure
                .as_ref()
                .and_then(|f| f.retry_after)
                .map(|d| d.as_secs().max(1)),
            error: failure.map(|f| f.message),
            warnings: self
                .warnings
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            refused_referrers: self
                .refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}
