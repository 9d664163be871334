//! Referrers: signatures, attestations and SBOMs that refer to an image,
//! discovered at the source and copied next to the image at each
//! destination. Their failures are warnings, never the image's outcome.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::oci::digest::Digest;
use crate::oci::manifest::{Descriptor, Manifest};
use crate::oci::reference::Reference;
use crate::oci::referrers::{COSIGN_TAGS, is_attestation};
use crate::registry::Role;
use crate::registry::client::Registry;

use super::dest::Dest;
use super::tree::put_manifest_idempotent;
use super::{Engine, Resolved, Root};

/// Referrers of referrers are followed this many levels down (a signature
/// on an attestation is level 2); a deeper chain is almost surely a loop.
const MAX_REFERRER_DEPTH: usize = 3;

/// A referrer push's failure that no retry can mend, in words that say
/// what to do about it; `None` for the others.
pub(super) fn referrer_advice(e: &Error) -> Option<String> {
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

/// An artifact that refers to a subject: by digest (referrers API or tag
/// schema index) or under a cosign tag.
pub(super) struct Artifact {
    digest: Digest,
    tag: Option<String>,
}

/// What a subject's referrers are at the source.
#[derive(Default)]
pub(super) struct Found {
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
    pub(super) async fn copy_referrers(
        &self,
        source: &Reference,
        resolved: &Resolved,
        dests: &[Dest],
        bytes_read: &AtomicU64,
        since: Instant,
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
            let found = match self.discover(&src, repo, &subject, since).await {
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

    pub(super) fn wanted(&self, artifact_type: Option<&str>) -> bool {
        self.options.artifact_types.is_empty()
            || artifact_type.is_some_and(|t| self.options.artifact_types.iter().any(|w| w == t))
    }

    /// List what refers to `subject` at the source: the referrers API, or
    /// the tag schema index where the API is missing, plus cosign's tags
    /// (cosign writes those whatever the registry supports). Referrer tags
    /// are looked up in the repository's listing (one per repository, sent
    /// no earlier than `since`, when the image was read), so only those that
    /// exist are asked for; by HEAD where the repository is not listed.
    pub(super) async fn discover(
        &self,
        src: &Registry,
        repo: &str,
        subject: &Digest,
        since: Instant,
    ) -> Result<Found> {
        let mut found = Found::default();
        let by_digest = |d: &Descriptor| Artifact {
            digest: d.digest.clone(),
            tag: None,
        };
        let api = src.referrers(repo, subject).await?;
        let wanted_cosign: Vec<_> = COSIGN_TAGS
            .iter()
            .filter(|(_, t)| self.wanted(Some(t)))
            .collect();
        let listed = if api.is_none() || !wanted_cosign.is_empty() {
            src.referrer_tags(repo, since).await
        } else {
            None
        };
        let present = |tag: &str| listed.as_ref().is_none_or(|l| l.contains(tag));
        match api {
            Some(list) => found.artifacts.extend(
                list.iter()
                    .filter(|d| self.wanted(d.artifact_type.as_deref()))
                    .map(by_digest),
            ),
            None => {
                let tag = subject.tag_form();
                if present(&tag)
                    && let Some(head) = src.head_manifest(repo, &tag).await?
                {
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
        for (suffix, _) in wanted_cosign {
            let tag = subject.cosign_tag(suffix);
            if !present(&tag) {
                continue;
            }
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
    pub(super) async fn copy_artifact(
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
                        .is_some_and(|t| self.registries.known_immutable(&d.reference, t)) =>
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
    pub(super) async fn push_fallback_index(
        &self,
        d: &Dest,
        tag: &str,
        index: &Manifest,
    ) -> Result<()> {
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
