//! The copy engine: one source image to N destinations, all platforms, bytes
//! unchanged.
//!
//! Order, per call:
//! 1. HEAD the source and every destination; destinations already at the
//!    source digest are done (zero bytes moved). ECR repositories are created
//!    here, and overwrite rules are checked.
//! 2. GET the manifest tree once (index, children, nested indexes), by digest.
//! 3. Blobs, concurrently: each unique blob is claimed in the ledger (`ledger`) per
//!    destination repository, then skipped if present, mounted if it lives on
//!    the same registry, or read ONCE from the source and streamed to every
//!    destination lacking it. The sha256 is checked while streaming and the
//!    last chunk is held back until it matches, so a lying source never
//!    completes an upload.
//! 4. Manifests, per destination: children by digest, the top one by tag last.
//!
//! 5. Referrers (signatures, attestations, SBOMs), per destination that
//!    succeeded or was in sync: see `referrers`. Their
//!    failures are warnings, never the image's outcome.
//!
//! A destination that fails stops receiving work; the others go on. The
//! outcome is reported per destination.

mod blobs;
mod dest;
pub(crate) mod ledger;
mod referrers;
mod tree;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::copy::ledger::Ledger;
use crate::error::{Error, Result};
use crate::oci::digest::Digest;
use crate::oci::manifest::{Descriptor, Manifest, PlatformSpec};
use crate::oci::reference::Reference;
use crate::registry::client::Registry;
use crate::registry::{Registries, Role};

use dest::Dest;

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
    /// `.sbom` = `text/spdx+json` (see [`crate::oci::referrers::COSIGN_TAGS`]).
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
                        () = self.copy_referrers(source, &resolved, &dests, &bytes_read, started) => {}
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
            checks.push(self.learn_known_blobs(d, &blobs));
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
        if let Some(info) = self.registries.ensure_repository(dest).await? {
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
}

/// What the source reference resolved to.
pub(super) struct Resolved {
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
pub(super) enum Root {
    Digest(Digest),
    Manifest(Manifest),
}
