//! The copy engine: one source image to N destinations, all platforms, bytes
//! unchanged.
//!
//! Order, per call:
//! 1. HEAD the source and every destination; destinations already at the
//!    source digest are done (zero bytes moved). ECR repositories are created
//!    here, and overwrite rules are checked.
//! 2. GET the manifest tree once (index, children, nested indexes), by digest.
//! 3. Blobs, concurrently: each unique blob is claimed in the [`Ledger`] per
//!    destination repository, then skipped if present, mounted if it lives on
//!    the same registry, or read ONCE from the source and streamed to every
//!    destination lacking it. The sha256 is checked while streaming and the
//!    last chunk is held back until it matches, so a lying source never
//!    completes an upload.
//! 4. Manifests, per destination: children by digest, the top one by tag last.
//!
//! 5. Referrers (signatures, attestations, SBOMs), per destination that
//!    succeeded or was in sync: see [`Engine::copy_referrers`]. Their
//!    failures are warnings, never the image's outcome.
//!
//! A destination that fails stops receiving work; the others go on. The
//! outcome is reported per destination.

pub mod ledger;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::copy::ledger::{BlobKey, Claim, Ledger};
use crate::error::{Error, Result};
use crate::oci::digest::Digest;
use crate::oci::manifest::{Descriptor, Manifest, PlatformSpec};
use crate::oci::reference::Reference;
use crate::registry::client::{Mount, Registry};
use crate::registry::ecr::EcrHost;
use crate::registry::{Registries, Role};

/// How a copy behaves.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Replace a destination tag that points at another digest.
    pub overwrite: bool,
    /// Blob transfers in flight at once, across all copies of this engine.
    pub blob_concurrency: usize,
    /// Attempts per blob transfer (a transfer restarts from a new upload session).
    pub blob_attempts: usize,
    /// Also copy the artifacts that refer to each image (signatures,
    /// attestations, SBOMs): a mirror without its signatures fails
    /// verification at the far end.
    pub referrers: bool,
    /// Only referrers of these artifact types; empty means all. Matched
    /// against each referrer descriptor's `artifactType`. cosign's tags carry
    /// no descriptor, so they are matched by the types cosign gives them:
    /// `.sig` = `application/vnd.dev.cosign.artifact.sig.v1+json`,
    /// `.att` = `application/vnd.dsse.envelope.v1+json`,
    /// `.sbom` = `text/spdx+json` (see [`COSIGN_TAGS`]).
    pub artifact_types: Vec<String>,
}

/// One copy's own rules, from its mirror row.
#[derive(Debug, Clone, Default)]
pub struct CopyRules {
    /// Overrides [`CopyOptions::overwrite`] (a row's `overwrite`).
    pub overwrite: Option<bool>,
    /// Only these platforms of a multi-platform source; empty means all.
    pub platforms: Vec<PlatformSpec>,
}

/// cosign's tag scheme: `<alg>-<hex>.<suffix>` next to the image, with the
/// artifact type each suffix stands for (for the `artifact_types` filter).
pub const COSIGN_TAGS: [(&str, &str); 3] = [
    (".sig", "application/vnd.dev.cosign.artifact.sig.v1+json"),
    (".att", "application/vnd.dsse.envelope.v1+json"),
    (".sbom", "text/spdx+json"),
];

/// Referrers of referrers are followed this many levels down (a signature
/// on an attestation is level 2); a deeper chain is almost surely a loop.
const MAX_REFERRER_DEPTH: usize = 3;

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            overwrite: true,
            blob_concurrency: 8,
            blob_attempts: 5,
            referrers: true,
            artifact_types: Vec::new(),
        }
    }
}

/// Live counters for progress bars.
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes_total: AtomicU64,
    pub bytes_read: AtomicU64,
    pub blobs_total: AtomicU64,
    pub blobs_done: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Copied in this run.
    Copied,
    /// Already at the source digest; nothing moved.
    InSync,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct DestinationReport {
    pub destination: String,
    pub outcome: Outcome,
    pub digest: Option<Digest>,
    pub bytes_copied: u64,
    pub blobs_copied: u64,
    pub blobs_mounted: u64,
    pub blobs_skipped: u64,
    pub manifests_pushed: u64,
    /// Signatures, attestations and SBOMs copied in this run (not those
    /// already there).
    pub referrers_copied: u64,
    pub seconds: f64,
    pub error: Option<String>,
    /// Whether retrying later may help (the failure looked transient).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
    /// How long to wait before trying again, when the registry said so
    /// (a used-up pull quota): the job is put off that long, not retried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    /// Referrers that could not be copied: visible, but the image's outcome
    /// stands, so a signature problem never fails the mirror itself.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Referrer tags the destination holds at another digest and cannot
    /// take (immutable tags): no later run can copy them either.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused_referrers: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    pub source: String,
    pub source_digest: Option<Digest>,
    /// Bytes read from the source (each blob once, however many destinations).
    pub bytes_read: u64,
    pub seconds: f64,
    pub destinations: Vec<DestinationReport>,
}

impl CopyReport {
    pub fn all_synced(&self) -> bool {
        self.destinations
            .iter()
            .all(|d| d.outcome != Outcome::Failed)
    }
}

/// Why a destination failed: the words, whether it looked transient, and
/// how long the registry asked us to wait.
#[derive(Debug, Clone)]
struct Failure {
    message: String,
    transient: bool,
    retry_after: Option<Duration>,
    /// For a referrer: why it cannot be pushed there, with what to do.
    referrer_advice: Option<String>,
}

/// One destination's state during a copy.
struct Dest {
    reference: Reference,
    registry: Option<Arc<Registry>>,
    needs_copy: AtomicBool,
    in_sync: AtomicBool,
    failure: Mutex<Option<Failure>>,
    bytes: AtomicU64,
    copied: AtomicU64,
    mounted: AtomicU64,
    skipped: AtomicU64,
    manifests: AtomicU64,
    referrers: AtomicU64,
    warnings: Mutex<Vec<String>>,
    refused: Mutex<Vec<String>>,
}

impl Dest {
    fn new(reference: Reference) -> Dest {
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
    fn sibling(&self, reference: Reference) -> Dest {
        let mut d = Dest::new(reference);
        d.registry = self.registry.clone();
        d
    }

    fn warn(&self, message: String) {
        tracing::warn!(destination = %self.reference, "{message}");
        self.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
    }

    /// Fold an artifact copy's counters into this destination's.
    fn absorb(&self, other: &Dest) {
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

    fn failure_message(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|f| f.message.clone())
    }

    /// The advice-bearing form of this destination's failure, for an
    /// artifact copied next to an image.
    fn failure_words(&self, what: &str) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|f| f.referrer_advice.as_ref())
            .map(|advice| format!("{what}: {advice}"))
    }

    fn fail(&self, e: &Error) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            tracing::warn!(destination = %self.reference, error = %e, "destination failed");
            *f = Some(Failure {
                message: e.to_string(),
                transient: e.is_transient(),
                retry_after: e.retry_after(),
                referrer_advice: referrer_advice(e),
            });
        }
    }

    fn failed(&self) -> bool {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn active(&self) -> bool {
        self.needs_copy.load(Ordering::Relaxed) && !self.failed()
    }

    fn registry(&self) -> &Arc<Registry> {
        // Only called for destinations that passed `prepare`, which sets it.
        #[allow(clippy::expect_used)]
        self.registry
            .as_ref()
            .expect("registry resolved in prepare")
    }

    fn key(&self, digest: &Digest) -> BlobKey {
        BlobKey {
            registry: self.reference.registry().to_string(),
            repository: self.reference.repository().to_string(),
            digest: digest.clone(),
        }
    }

    fn report(&self, digest: Option<&Digest>, started: Instant) -> DestinationReport {
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

/// (registry, repository)
type RepoKey = (String, String);

/// The copy engine. Share one per process: its ledger and transfer limit span
/// every copy it runs.
#[derive(Debug)]
pub struct Engine {
    registries: Arc<Registries>,
    ledger: Ledger,
    /// Destination repositories that did not exist when first seen: they
    /// hold only what this engine wrote (tracked in the ledger), so no blob
    /// HEAD is needed there.
    new_repos: tokio::sync::Mutex<HashMap<RepoKey, Arc<tokio::sync::OnceCell<bool>>>>,
    options: CopyOptions,
    transfers: Arc<Semaphore>,
    progress: Arc<Progress>,
}

impl Engine {
    pub fn new(registries: Arc<Registries>, options: CopyOptions) -> Engine {
        let transfers = Arc::new(Semaphore::new(options.blob_concurrency.max(1)));
        Engine {
            registries,
            ledger: Ledger::default(),
            new_repos: tokio::sync::Mutex::new(HashMap::new()),
            options,
            transfers,
            progress: Arc::new(Progress::default()),
        }
    }

    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    pub fn registries(&self) -> &Arc<Registries> {
        &self.registries
    }

    /// Copy `source` to every destination. Never fails as a whole: the report
    /// says, per destination, what happened.
    pub async fn copy(
        &self,
        source: &Reference,
        destinations: &[Reference],
        cancel: &CancellationToken,
    ) -> CopyReport {
        self.copy_with(source, destinations, &CopyRules::default(), cancel)
            .await
    }

    /// [`Engine::copy`], with this copy's own rules (a mirror row's
    /// `overwrite` and `platforms`).
    pub async fn copy_with(
        &self,
        source: &Reference,
        destinations: &[Reference],
        rules: &CopyRules,
        cancel: &CancellationToken,
    ) -> CopyReport {
        let started = Instant::now();
        let mut dests: Vec<Dest> = destinations.iter().cloned().map(Dest::new).collect();
        let bytes_read = AtomicU64::new(0);
        let result = tokio::select! {
            r = self.run(source, &mut dests, &bytes_read, rules) => r,
            _ = cancel.cancelled() => Err(Error::Cancelled),
        };
        let (source_digest, pushed) = match result {
            Ok(resolved) => {
                if self.options.referrers {
                    tokio::select! {
                        () = self.copy_referrers(source, &resolved, &dests, &bytes_read) => {}
                        _ = cancel.cancelled() => {
                            for d in dests.iter().filter(|d| !d.failed()) {
                                d.warn("cancelled before all referrers were copied".into());
                            }
                        }
                    }
                }
                (Some(resolved.digest), Some(resolved.pushed))
            }
            Err(e) => {
                for d in &dests {
                    if !d.in_sync.load(Ordering::Relaxed) {
                        d.fail(&e);
                    }
                }
                (None, None)
            }
        };
        CopyReport {
            source: source.to_string(),
            bytes_read: bytes_read.load(Ordering::Relaxed),
            seconds: started.elapsed().as_secs_f64(),
            destinations: dests
                .iter()
                .map(|d| d.report(pushed.as_ref(), started))
                .collect(),
            source_digest,
        }
    }

    /// Returns what the source resolved to; per-destination failures are
    /// recorded in `dests`.
    async fn run(
        &self,
        source: &Reference,
        dests: &mut [Dest],
        bytes_read: &AtomicU64,
        rules: &CopyRules,
    ) -> Result<Resolved> {
        let overwrite = rules.overwrite.unwrap_or(self.options.overwrite);
        let src = self.registries.get(source.registry(), Role::Source).await?;
        let (src_digest, index) = match source.digest() {
            Some(d) => (d.clone(), None),
            None => {
                let head = src
                    .head_manifest(source.repository(), &source.manifest_ref())
                    .await?
                    .ok_or_else(|| Error::SourceMissing(source.to_string()))?;
                let index = matches!(
                    head.media_type.as_str(),
                    crate::oci::manifest::OCI_INDEX | crate::oci::manifest::DOCKER_LIST
                );
                (head.digest, Some(index))
            }
        };
        tracing::debug!(%source, digest = %src_digest, "source resolved");
        let top = self
            .select_platforms(&src, source, &src_digest, &rules.platforms)
            .await?;
        let want = top.as_ref().map_or(&src_digest, |m| &m.digest).clone();
        let mut resolved = Resolved {
            pushed: want.clone(),
            digest: src_digest,
            top: top.clone(),
            index,
        };

        // 1. Destinations: resolve, create ECR repositories, compare digests.
        // Futures are built in loops, not closures, so the copy future stays
        // `Send` for `tokio::spawn` (closure-made futures trip Send inference).
        let mut checks = Vec::with_capacity(dests.len());
        for d in dests.iter() {
            checks.push(self.prepare(source, &d.reference, &want, overwrite));
        }
        let prepared = futures_util::future::join_all(checks).await;
        for (d, p) in dests.iter_mut().zip(prepared) {
            match p {
                Ok((registry, in_sync)) => {
                    d.registry = Some(registry);
                    d.in_sync.store(in_sync, Ordering::Relaxed);
                    d.needs_copy.store(!in_sync, Ordering::Relaxed);
                }
                Err(e) => d.fail(&e),
            }
        }
        if !dests.iter().any(Dest::active) {
            return Ok(resolved);
        }
        let root = match top {
            Some(m) => Root::Manifest(m),
            None => Root::Digest(resolved.digest.clone()),
        };
        let mut tree = self
            .transfer_tree(&src, source.repository(), root, dests, bytes_read)
            .await?;
        resolved.top = tree.pop();
        Ok(resolved)
    }

    /// The source's index at `digest` cut down to `platforms`, or `None`
    /// to copy the source as it is (no subset asked for, nothing to drop,
    /// or a single-platform image).
    pub async fn select_platforms(
        &self,
        src: &Registry,
        source: &Reference,
        digest: &Digest,
        platforms: &[PlatformSpec],
    ) -> Result<Option<Manifest>> {
        if platforms.is_empty() {
            return Ok(None);
        }
        let top = src
            .get_manifest(source.repository(), &digest.to_string())
            .await?;
        top.select_platforms(platforms)
            .map_err(|e| Error::Manifest {
                what: format!("source image {source}"),
                source: e,
            })
    }

    /// Steps 2 to 4 for the manifest at `digest`: fetch its tree, move its
    /// blobs, push its manifests to every active destination (the top one
    /// under each destination's own reference). Returns the tree. `Err` is a
    /// source-side failure; destination failures are recorded in `dests`.
    async fn transfer_tree(
        &self,
        src: &Arc<Registry>,
        src_repo: &str,
        root: Root,
        dests: &[Dest],
        bytes_read: &AtomicU64,
    ) -> Result<Vec<Manifest>> {
        // 2. The manifest tree, children before parents.
        let manifests = self.fetch_tree(src, src_repo, root).await?;
        let mut blobs: Vec<Descriptor> = Vec::new();
        for m in &manifests {
            for b in m.blobs() {
                if !blobs.iter().any(|x| x.digest == b.digest) {
                    blobs.push(b.clone());
                }
            }
        }
        self.progress
            .bytes_total
            .fetch_add(blobs.iter().map(|b| b.size).sum(), Ordering::Relaxed);
        self.progress
            .blobs_total
            .fetch_add(blobs.len() as u64, Ordering::Relaxed);

        // ECR tells which blobs it has in one call per 100: cheaper than a
        // HEAD each, and those are then skipped like any known blob.
        let mut checks = Vec::new();
        for d in dests.iter().filter(|d| d.active()) {
            checks.push(self.learn_ecr_layers(d, &blobs));
        }
        futures_util::future::join_all(checks).await;

        // 3. Blobs. A source failure (unreadable, lying) stops the whole copy.
        let mut transfers = Vec::with_capacity(blobs.len());
        for b in &blobs {
            transfers.push(async move {
                // The engine-wide permit bounds transfers across concurrent copies.
                let _permit = self
                    .transfers
                    .acquire()
                    .await
                    .map_err(|_| Error::Cancelled)?;
                if !dests.iter().any(Dest::active) {
                    return Ok(());
                }
                let r = self
                    .transfer_blob(src, src_repo, b, dests, bytes_read)
                    .await;
                self.progress.blobs_done.fetch_add(1, Ordering::Relaxed);
                r
            });
        }
        let results: Vec<Result<()>> = futures_util::future::join_all(transfers).await;
        if let Some(e) = results.into_iter().find_map(|r| r.err()) {
            return Err(e);
        }

        // 4. Manifests, per destination, after all their blobs are in.
        let mut pushes = Vec::new();
        for d in dests.iter().filter(|d| d.active()) {
            let manifests = &manifests;
            pushes.push(async move {
                if let Err(e) = self
                    .push_manifests(src, src_repo, manifests, d, bytes_read)
                    .await
                {
                    d.fail(&e);
                }
            });
        }
        futures_util::future::join_all(pushes).await;
        Ok(manifests)
    }

    /// Resolve a destination's client and decide whether it needs a copy.
    async fn prepare(
        &self,
        source: &Reference,
        dest: &Reference,
        src_digest: &Digest,
        overwrite: bool,
    ) -> Result<(Arc<Registry>, bool)> {
        if dest.same_location(source) {
            return Err(Error::SameAsSource(dest.to_string()));
        }
        if let Some(pinned) = dest.digest()
            && pinned != src_digest
        {
            return Err(Error::OverwriteRefused {
                dest: dest.to_string(),
                existing: pinned.clone(),
                wanted: src_digest.clone(),
            });
        }
        let registry = self
            .registries
            .get(dest.registry(), Role::Destination)
            .await?;
        let mut immutable = false;
        // Whether the repository was made just now, when ECR tells (so no
        // tag listing is needed, which takes a permission of its own there).
        let mut created = None;
        if let Some(host) = EcrHost::parse(dest.registry()) {
            let role = self
                .registries
                .settings()
                .registry(dest.registry())
                .role_arn;
            let info = self
                .registries
                .ecr()
                .ensure_repository(
                    &host,
                    role.as_deref(),
                    dest.repository(),
                    &self.registries.settings().ecr,
                )
                .await?;
            immutable = dest.tag().is_some_and(|t| info.mutability.is_immutable(t));
            created = Some(info.created);
        }
        let head = registry
            .head_manifest(dest.repository(), &dest.manifest_ref())
            .await?;
        if head.is_none() {
            self.note_new_repository(&registry, dest, created).await?;
        }
        match head {
            Some(h) if &h.digest == src_digest => Ok((registry, true)),
            Some(h) if immutable || !overwrite => Err(Error::OverwriteRefused {
                dest: dest.to_string(),
                existing: h.digest,
                wanted: src_digest.clone(),
            }),
            _ => Ok((registry, false)),
        }
    }

    /// For an ECR destination, mark the blobs its repository already has as
    /// present. Best effort: on any failure the blobs are HEADed as usual.
    async fn learn_ecr_layers(&self, d: &Dest, blobs: &[Descriptor]) {
        let Some(host) = EcrHost::parse(d.reference.registry()) else {
            return;
        };
        if blobs.is_empty() || self.is_new_repository(&d.reference).await {
            return;
        }
        let role = self
            .registries
            .settings()
            .registry(d.reference.registry())
            .role_arn;
        let digests: Vec<Digest> = blobs
            .iter()
            .filter(|b| !b.is_foreign())
            .map(|b| b.digest.clone())
            .collect();
        match self
            .registries
            .ecr()
            .available_layers(&host, role.as_deref(), d.reference.repository(), &digests)
            .await
        {
            Ok(present) => {
                tracing::debug!(destination = %d.reference, present = present.len(), of = digests.len(), "ECR layer check");
                for digest in present {
                    if let Claim::Mine(guard) = self.ledger.claim(d.key(&digest)) {
                        guard.complete();
                    }
                }
            }
            Err(e) => {
                tracing::debug!(destination = %d.reference, error = %e, "ECR layer check failed; checking blobs one by one");
            }
        }
    }

    /// Whether `tag` in `dest`'s repository is immutable, as far as this
    /// process already knows (ECR repositories it has described).
    fn immutable_tags_known(&self, dest: &Reference, tag: &str) -> bool {
        self.registries
            .ecr()
            .known_mutability(dest.registry(), dest.repository())
            .is_some_and(|m| m.is_immutable(tag))
    }

    /// On first sight of a destination repository, learn whether it is new:
    /// from `created` when the registry's API said, else by listing it.
    async fn note_new_repository(
        &self,
        registry: &Registry,
        dest: &Reference,
        created: Option<bool>,
    ) -> Result<()> {
        let key = (dest.registry().to_string(), dest.repository().to_string());
        let cell = self.new_repos.lock().await.entry(key).or_default().clone();
        cell.get_or_try_init(|| async {
            match created {
                Some(c) => Ok::<_, Error>(c),
                None => Ok(!registry.repository_exists(dest.repository()).await?),
            }
        })
        .await?;
        Ok(())
    }

    async fn is_new_repository(&self, dest: &Reference) -> bool {
        let key = (dest.registry().to_string(), dest.repository().to_string());
        let cell = self.new_repos.lock().await.get(&key).cloned();
        cell.and_then(|c| c.get().copied()).unwrap_or(false)
    }

    /// GET the manifest at `digest` and, level by level, every child; returns
    /// them deepest level first so children are pushed before their parents.
    async fn fetch_tree(&self, src: &Registry, repo: &str, root: Root) -> Result<Vec<Manifest>> {
        let mut levels: Vec<Vec<Manifest>> = Vec::new();
        let mut seen: Vec<Digest> = Vec::new();
        let (digest, mut next) = match root {
            Root::Digest(d) => (d.clone(), vec![d]),
            Root::Manifest(m) => {
                let digest = m.digest.clone();
                let next: Vec<Digest> = m.children().iter().map(|c| c.digest.clone()).collect();
                seen.clone_from(&next);
                levels.push(vec![m]);
                (digest, next)
            }
        };
        while !next.is_empty() {
            if levels.len() > 8 {
                return Err(Error::Manifest {
                    what: format!("index {digest}"),
                    source: crate::oci::manifest::ManifestError::Unsupported(
                        "indexes nested more than 8 deep".into(),
                    ),
                });
            }
            let mut gets = Vec::with_capacity(next.len());
            for d in &next {
                gets.push(async move { src.get_manifest(repo, &d.to_string()).await });
            }
            let fetched = futures_util::future::join_all(gets).await;
            let mut level = Vec::new();
            next = Vec::new();
            for m in fetched {
                let m = m?;
                for child in m.children() {
                    if !seen.contains(&child.digest) {
                        seen.push(child.digest.clone());
                        next.push(child.digest.clone());
                    }
                }
                level.push(m);
            }
            levels.push(level);
        }
        Ok(levels.into_iter().rev().flatten().collect())
    }

    /// Make `blob` present in every active destination repository.
    async fn transfer_blob(
        &self,
        src: &Arc<Registry>,
        src_repo: &str,
        blob: &Descriptor,
        dests: &[Dest],
        bytes_read: &AtomicU64,
    ) -> Result<()> {
        let mut targets = Vec::new();
        for d in dests.iter().filter(|d| d.active()) {
            match self.place_without_data(src, src_repo, blob, d).await {
                Ok(None) => {}
                Ok(Some(t)) => targets.push(t),
                Err(e) => d.fail(&e),
            }
        }
        let mut attempt = 1;
        let mut delays = crate::retry::backoff();
        // What a registry asked for when it refused the last attempt (429).
        let mut asked: Option<Duration> = None;
        while !targets.is_empty() {
            if attempt > 1 {
                let backoff = delays.next().unwrap_or(Duration::from_secs(1));
                tokio::time::sleep(asked.take().map_or(backoff, |a| a.max(backoff))).await;
            }
            let outcome = self
                .stream_blob(src, src_repo, blob, &targets, bytes_read)
                .await;
            let results = match outcome {
                Ok(r) => r,
                // Bytes damaged in transit read right the next time; a registry
                // that lies keeps failing and ends with the mismatch error.
                Err(e)
                    if !(e.is_transient() || matches!(e, Error::DigestMismatch { .. }))
                        || attempt >= self.options.blob_attempts =>
                {
                    return Err(e);
                }
                Err(e) => {
                    tracing::info!(digest = %blob.digest, error = %e, attempt, "source read failed; retrying the transfer");
                    targets.iter().map(|_| Err(Error::Cancelled)).collect()
                }
            };
            let mut retry = Vec::new();
            for (t, r) in targets.into_iter().zip(results) {
                if let Err(e) = &r
                    && let Some(wait) = e.retry_after()
                {
                    asked = Some(asked.map_or(wait, |a| a.max(wait)));
                }
                match r {
                    Ok(()) => {
                        t.dest.bytes.fetch_add(blob.size, Ordering::Relaxed);
                        t.dest.copied.fetch_add(1, Ordering::Relaxed);
                        t.guard.complete();
                    }
                    Err(e)
                        if attempt < self.options.blob_attempts
                            && (e.is_transient()
                                || matches!(e, Error::Cancelled | Error::Auth { .. })) =>
                    {
                        match t
                            .dest
                            .registry()
                            .start_upload(t.dest.reference.repository())
                            .await
                        {
                            Ok(location) => retry.push(Target { location, ..t }),
                            Err(e) => t.dest.fail(&e),
                        }
                    }
                    Err(e) => t.dest.fail(&e),
                }
            }
            targets = retry;
            attempt += 1;
        }
        Ok(())
    }

    /// Claim the blob for `d`, then skip or mount it if possible. Returns an
    /// upload target when the bytes must be streamed.
    async fn place_without_data<'a>(
        &self,
        src: &Registry,
        src_repo: &str,
        blob: &Descriptor,
        d: &'a Dest,
    ) -> Result<Option<Target<'a>>> {
        let guard = loop {
            match self.ledger.claim(d.key(&blob.digest)) {
                Claim::Present => {
                    d.skipped.fetch_add(1, Ordering::Relaxed);
                    return Ok(None);
                }
                Claim::Wait(w) => {
                    if w.wait().await {
                        d.skipped.fetch_add(1, Ordering::Relaxed);
                        return Ok(None);
                    }
                }
                Claim::Mine(g) => break g,
            }
        };
        let reg = d.registry();
        let repo = d.reference.repository();
        if !self.is_new_repository(&d.reference).await
            && reg.blob_exists(repo, &blob.digest).await?
        {
            d.skipped.fetch_add(1, Ordering::Relaxed);
            guard.complete();
            return Ok(None);
        }
        let location = if reg.host() == src.host() && repo != src_repo {
            match reg.mount_blob(repo, &blob.digest, src_repo).await? {
                Mount::Mounted => {
                    d.mounted.fetch_add(1, Ordering::Relaxed);
                    guard.complete();
                    return Ok(None);
                }
                Mount::Upload(location) => location,
            }
        } else {
            reg.start_upload(repo).await?
        };
        Ok(Some(Target {
            dest: d,
            location,
            guard,
        }))
    }

    /// Read `blob` once from the source and stream it into every target's
    /// upload. `Err` means the source side failed (for all targets); the inner
    /// results are per target.
    async fn stream_blob(
        &self,
        src: &Registry,
        src_repo: &str,
        blob: &Descriptor,
        targets: &[Target<'_>],
        bytes_read: &AtomicU64,
    ) -> Result<Vec<Result<()>>> {
        let mut resp = src.get_blob(src_repo, &blob.digest).await?;
        let what = || format!("blob {} from {}/{src_repo}", blob.digest, src.host());
        if let Some(len) = resp.content_length()
            && len != blob.size
        {
            return Err(Error::SizeMismatch {
                what: what(),
                expected: blob.size,
                actual: len,
            });
        }
        // Small bounded channels: memory per transfer stays at a few chunks
        // whatever the blob size, and the slowest destination sets the pace.
        let mut senders = Vec::new();
        let mut puts = Vec::new();
        for t in targets {
            let (tx, rx) = mpsc::channel::<std::result::Result<Bytes, std::io::Error>>(8);
            let body =
                reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async {
                    rx.recv().await.map(|item| (item, rx))
                }));
            senders.push(Some(tx));
            let reg = t.dest.registry().clone();
            let repo = t.dest.reference.repository().to_string();
            let location = t.location.clone();
            let digest = blob.digest.clone();
            let size = blob.size;
            puts.push(async move { reg.put_blob(&repo, location, &digest, size, body).await });
        }
        let reader = async {
            let mut verifier = blob.digest.verifier();
            let mut held: Option<Bytes> = None;
            let read: Result<()> = loop {
                match resp.chunk().await {
                    Ok(Some(chunk)) => {
                        verifier.update(&chunk);
                        bytes_read.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        self.progress
                            .bytes_read
                            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        if verifier.len() > blob.size {
                            break Err(Error::SizeMismatch {
                                what: what(),
                                expected: blob.size,
                                actual: verifier.len(),
                            });
                        }
                        if let Some(prev) = held.replace(chunk) {
                            send_all(&mut senders, Ok(prev)).await;
                        }
                        if senders.iter().all(Option::is_none) {
                            // Every upload ended early; their errors say why.
                            break Ok(());
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => {
                        break Err(Error::Transport {
                            registry: src.host().to_string(),
                            message: format!(
                                "reading {}: {}",
                                what(),
                                crate::registry::client::error_chain(&e)
                            ),
                        });
                    }
                }
            };
            let verified = read.and_then(|()| {
                if senders.iter().all(Option::is_none) {
                    return Ok(());
                }
                if verifier.len() != blob.size {
                    return Err(Error::SizeMismatch {
                        what: what(),
                        expected: blob.size,
                        actual: verifier.len(),
                    });
                }
                let actual = verifier.finish();
                if actual != blob.digest {
                    return Err(Error::DigestMismatch {
                        what: what(),
                        expected: blob.digest.clone(),
                        actual,
                    });
                }
                Ok(())
            });
            match &verified {
                Ok(()) => {
                    if let Some(last) = held.take() {
                        send_all(&mut senders, Ok(last)).await;
                    }
                }
                Err(e) => {
                    // Fail the bodies so no upload completes with unverified bytes.
                    let msg = e.to_string();
                    send_all(&mut senders, Err(std::io::Error::other(msg))).await;
                }
            }
            senders.clear();
            verified
        };
        let (verified, results) = tokio::join!(reader, futures_util::future::join_all(puts));
        verified?;
        Ok(results)
    }

    /// Push every manifest of the tree to `d`: children by digest, then the
    /// top one under the destination's tag. A push refused because a blob is
    /// unknown re-checks that manifest's blobs once and tries again.
    async fn push_manifests(
        &self,
        src: &Arc<Registry>,
        src_repo: &str,
        manifests: &[Manifest],
        d: &Dest,
        bytes_read: &AtomicU64,
    ) -> Result<()> {
        let reg = d.registry();
        let repo = d.reference.repository();
        let last = manifests.len().saturating_sub(1);
        for (i, m) in manifests.iter().enumerate() {
            let reference = if i == last {
                d.reference.manifest_ref()
            } else {
                m.digest.to_string()
            };
            match put_manifest_idempotent(reg, repo, &reference, m).await {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.registry_code(),
                        Some("MANIFEST_BLOB_UNKNOWN" | "BLOB_UNKNOWN")
                    ) =>
                {
                    tracing::warn!(destination = %d.reference, manifest = %m.digest, "registry lost a blob; re-checking");
                    for b in m.blobs() {
                        self.ledger.forget(&d.key(&b.digest));
                        self.transfer_blob(src, src_repo, b, std::slice::from_ref(d), bytes_read)
                            .await?;
                    }
                    if d.failed() {
                        return Ok(());
                    }
                    put_manifest_idempotent(reg, repo, &reference, m).await?;
                }
                Err(e) => return Err(e),
            }
            d.manifests.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// PUT a manifest where a tag may be immutable. ECR refuses any push to an
/// existing immutable tag with `TAG_INVALID`, even of the same digest: after
/// a reply that was lost (and retried), or another worker's push, the tag
/// may already hold exactly this manifest, which is success.
async fn put_manifest_idempotent(
    reg: &Registry,
    repo: &str,
    reference: &str,
    m: &Manifest,
) -> Result<()> {
    match reg.put_manifest(repo, reference, m).await {
        Err(e) if e.registry_code() == Some("TAG_INVALID") => {
            match reg.head_manifest(repo, reference).await? {
                Some(h) if h.digest == m.digest => {
                    tracing::debug!(
                        repository = repo,
                        reference,
                        "immutable tag already holds this manifest"
                    );
                    Ok(())
                }
                Some(h) => Err(Error::OverwriteRefused {
                    dest: format!("{}/{repo}:{reference}", reg.host()),
                    existing: h.digest,
                    wanted: m.digest.clone(),
                }),
                None => Err(e),
            }
        }
        r => r,
    }
}

/// A referrer push's failure that no retry can mend, in words that say
/// what to do about it; `None` for the others.
fn referrer_advice(e: &Error) -> Option<String> {
    match e {
        Error::OverwriteRefused { .. } => Some(format!(
            "{e}; the destination's tags are immutable, so this signature tag cannot be \
             updated there (exclude referrer tags such as sha256-* with \
             IMMUTABLE_WITH_EXCLUSION)"
        )),
        Error::Registry { status: 405, .. } => Some(format!(
            "the destination refuses this kind of manifest (HTTP 405; ECR does not accept \
             some OCI 1.1 artifact manifests that name a subject): {e}"
        )),
        _ => None,
    }
}

fn is_attestation(d: &Descriptor) -> bool {
    d.annotations
        .get("vnd.docker.reference.type")
        .is_some_and(|t| t == "attestation-manifest")
}

/// What the source reference resolved to.
struct Resolved {
    digest: Digest,
    /// The top manifest pushed: `digest`, or a platform subset's own.
    pushed: Digest,
    /// That manifest, when this copy read it (a copy of nothing but
    /// in-sync destinations may not have).
    top: Option<Manifest>,
    /// Whether the source is an index, when its HEAD said.
    index: Option<bool>,
}

/// Where a manifest tree starts: a digest at the source, or a manifest
/// already in hand (a platform subset, which exists nowhere to GET).
enum Root {
    Digest(Digest),
    Manifest(Manifest),
}

/// An artifact that refers to a subject: by digest (referrers API or tag
/// schema index) or under a cosign tag.
struct Artifact {
    digest: Digest,
    tag: Option<String>,
}

/// What a subject's referrers are at the source.
#[derive(Default)]
struct Found {
    artifacts: Vec<Artifact>,
    /// The tag schema index and its tag, when every entry passed the filter:
    /// it is pushed byte for byte, so it can only go whole.
    fallback_index: Option<(String, Manifest)>,
}

impl Engine {
    /// Copy what refers to the image, to every destination that holds it
    /// now: for the top manifest and, for an index, each child (cosign signs
    /// per-platform manifests too), then what refers to those artifacts, down
    /// to [`MAX_REFERRER_DEPTH`]. Never fails the image: problems become
    /// warnings on the destination.
    async fn copy_referrers(
        &self,
        source: &Reference,
        resolved: &Resolved,
        dests: &[Dest],
        bytes_read: &AtomicU64,
    ) {
        let targets: Vec<&Dest> = dests
            .iter()
            .filter(|d| !d.failed() && d.registry.is_some())
            .collect();
        if targets.is_empty() {
            return;
        }
        let warn_all = |message: String| {
            for d in &targets {
                d.warn(message.clone());
            }
        };
        let src = match self.registries.get(source.registry(), Role::Source).await {
            Ok(s) => s,
            Err(e) => return warn_all(format!("referrers not copied: {e}")),
        };
        let repo = source.repository();

        // The digest the tag points at (what `cosign sign image:tag` signs
        // and attestations name), unless a platform subset replaced it (its
        // signatures sign the other digest), and each platform's image of an
        // index (`cosign sign --recursive`). Attestation manifests are data
        // about an image, not images: not followed, to save requests.
        let mut subjects = Vec::new();
        if resolved.pushed == resolved.digest {
            subjects.push(resolved.digest.clone());
        }
        let top = match (&resolved.top, resolved.index) {
            (Some(m), _) => Some(m.clone()),
            // A single image has no platforms to look under.
            (None, Some(false)) => None,
            (None, _) => match src.get_manifest(repo, &resolved.digest.to_string()).await {
                Ok(m) => Some(m),
                Err(e) => {
                    warn_all(format!("referrers of the platforms not copied: {e}"));
                    None
                }
            },
        };
        if let Some(top) = &top {
            subjects.extend(
                top.children()
                    .iter()
                    .filter(|c| !is_attestation(c))
                    .map(|c| c.digest.clone()),
            );
        }
        let mut queue: VecDeque<(Digest, usize)> = subjects.into_iter().map(|d| (d, 0)).collect();
        let mut seen: HashSet<Digest> = queue.iter().map(|(d, _)| d.clone()).collect();
        while let Some((subject, depth)) = queue.pop_front() {
            let found = match self.discover(&src, repo, &subject).await {
                Ok(f) => f,
                Err(e) => {
                    warn_all(format!("referrers of {subject} not copied: {e}"));
                    continue;
                }
            };
            for artifact in found.artifacts {
                if !seen.insert(artifact.digest.clone()) {
                    continue;
                }
                self.copy_artifact(&src, repo, &artifact, &targets, bytes_read)
                    .await;
                if depth + 1 < MAX_REFERRER_DEPTH {
                    queue.push_back((artifact.digest, depth + 1));
                }
            }
            if let Some((tag, index)) = found.fallback_index {
                // Its entries are in place by now, so registries that check
                // an index's children accept it.
                for d in &targets {
                    if let Err(e) = self.push_fallback_index(d, &tag, &index).await {
                        let why = referrer_advice(&e).unwrap_or_else(|| e.to_string());
                        d.warn(format!("referrers index {tag}: {why}"));
                    }
                }
            }
        }
    }

    fn wanted(&self, artifact_type: Option<&str>) -> bool {
        self.options.artifact_types.is_empty()
            || artifact_type.is_some_and(|t| self.options.artifact_types.iter().any(|w| w == t))
    }

    /// List what refers to `subject` at the source: the referrers API, or
    /// the tag schema index where the API is missing, plus cosign's tags
    /// (cosign writes those whatever the registry supports).
    async fn discover(&self, src: &Registry, repo: &str, subject: &Digest) -> Result<Found> {
        let mut found = Found::default();
        let by_digest = |d: &Descriptor| Artifact {
            digest: d.digest.clone(),
            tag: None,
        };
        match src.referrers(repo, subject).await? {
            Some(list) => found.artifacts.extend(
                list.iter()
                    .filter(|d| self.wanted(d.artifact_type.as_deref()))
                    .map(by_digest),
            ),
            None => {
                let tag = subject.tag_form();
                if let Some(head) = src.head_manifest(repo, &tag).await? {
                    let index = src.get_manifest(repo, &head.digest.to_string()).await?;
                    let entries = index.children();
                    let kept: Vec<Artifact> = entries
                        .iter()
                        .filter(|d| self.wanted(d.artifact_type.as_deref()))
                        .map(by_digest)
                        .collect();
                    if kept.len() == entries.len() && index.is_index() {
                        found.fallback_index = Some((tag, index.clone()));
                    }
                    found.artifacts.extend(kept);
                }
            }
        }
        for (suffix, artifact_type) in COSIGN_TAGS {
            if !self.wanted(Some(artifact_type)) {
                continue;
            }
            let tag = subject.cosign_tag(suffix);
            if let Some(head) = src.head_manifest(repo, &tag).await? {
                found.artifacts.push(Artifact {
                    digest: head.digest,
                    tag: Some(tag),
                });
            }
        }
        Ok(found)
    }

    /// Copy one artifact (its blobs, then its manifests) to every target that
    /// lacks it, under its tag or by digest.
    async fn copy_artifact(
        &self,
        src: &Arc<Registry>,
        src_repo: &str,
        artifact: &Artifact,
        targets: &[&Dest],
        bytes_read: &AtomicU64,
    ) {
        let what = match &artifact.tag {
            Some(t) => format!("{t} ({})", artifact.digest),
            None => format!("referrer {}", artifact.digest),
        };
        let mut parents = Vec::new();
        let mut copies = Vec::new();
        for parent in targets {
            let reference = match &artifact.tag {
                Some(t) => match parent.reference.with_tag(t) {
                    Ok(r) => r,
                    Err(e) => {
                        parent.warn(format!("{what}: {e}"));
                        continue;
                    }
                },
                None => parent.reference.with_digest(artifact.digest.clone()),
            };
            let d = parent.sibling(reference);
            match d
                .registry()
                .head_manifest(d.reference.repository(), &d.reference.manifest_ref())
                .await
            {
                Ok(Some(h)) if h.digest == artifact.digest => continue,
                Ok(Some(h))
                    if artifact
                        .tag
                        .as_deref()
                        .is_some_and(|t| self.immutable_tags_known(&d.reference, t)) =>
                {
                    let e = Error::OverwriteRefused {
                        dest: d.reference.to_string(),
                        existing: h.digest,
                        wanted: artifact.digest.clone(),
                    };
                    parent.warn(format!(
                        "{what}: {}",
                        referrer_advice(&e).unwrap_or_else(|| e.to_string())
                    ));
                    if let Some(t) = &artifact.tag {
                        parent
                            .refused
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(t.clone());
                    }
                    continue;
                }
                Ok(_) => d.needs_copy.store(true, Ordering::Relaxed),
                Err(e) => {
                    parent.warn(format!("{what}: {e}"));
                    continue;
                }
            }
            parents.push(*parent);
            copies.push(d);
        }
        if copies.is_empty() {
            return;
        }
        match self
            .transfer_tree(
                src,
                src_repo,
                Root::Digest(artifact.digest.clone()),
                &copies,
                bytes_read,
            )
            .await
        {
            Ok(_) => {}
            // Listed but gone (deleted, or the listing is stale): nothing to copy.
            Err(Error::NotFound { .. }) => {
                tracing::debug!(artifact = %what, "listed referrer missing at the source");
                return;
            }
            Err(e) => {
                for p in &parents {
                    p.warn(format!("{what}: {e}"));
                }
                return;
            }
        }
        for (p, d) in parents.iter().zip(&copies) {
            p.absorb(d);
            match d.failure_message() {
                Some(e) => p.warn(
                    d.failure_words(&what)
                        .unwrap_or_else(|| format!("{what}: {e}")),
                ),
                None => {
                    p.referrers.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Push the tag schema index as read at the source, unless the
    /// destination already has it under that tag.
    async fn push_fallback_index(&self, d: &Dest, tag: &str, index: &Manifest) -> Result<()> {
        let reg = d.registry();
        let repo = d.reference.repository();
        if let Some(h) = reg.head_manifest(repo, tag).await?
            && h.digest == index.digest
        {
            return Ok(());
        }
        put_manifest_idempotent(reg, repo, tag, index).await?;
        d.manifests.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

struct Target<'a> {
    dest: &'a Dest,
    location: Url,
    guard: crate::copy::ledger::Guard,
}

async fn send_all(
    senders: &mut [Option<mpsc::Sender<std::result::Result<Bytes, std::io::Error>>>],
    item: std::result::Result<Bytes, std::io::Error>,
) {
    for slot in senders.iter_mut() {
        if let Some(tx) = slot {
            let item = match &item {
                Ok(b) => Ok(b.clone()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            if tx.send(item).await.is_err() {
                // That upload's request ended; its own result tells why.
                *slot = None;
            }
        }
    }
}
