//! Manifest trees: fetched level by level from the source, pushed children
//! first, the top manifest last, so a destination never holds a manifest
//! whose references are missing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::oci::digest::Digest;
use crate::oci::manifest::Manifest;
use crate::registry::client::Registry;

use super::dest::Dest;
use super::{Engine, Root};

impl Engine {
    /// GET the manifest at `digest` and, level by level, every child; returns
    /// them deepest level first so children are pushed before their parents.
    pub(super) async fn fetch_tree(
        &self,
        src: &Registry,
        repo: &str,
        root: Root,
    ) -> Result<Vec<Manifest>> {
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

    /// Push every manifest of the tree to `d`: children by digest, then the
    /// top one under the destination's tag. A push refused because a blob or
    /// a child is unknown re-checks what that manifest references once and
    /// tries again.
    ///
    /// Children are claimed in the ledger like blobs: tags of one image copied
    /// at once into one repository PUT each child once (distribution 2.8
    /// corrupts a link written twice at once), and a child known present is
    /// not sent again.
    pub(super) async fn push_manifests(
        &self,
        src: &Arc<Registry>,
        src_repo: &str,
        manifests: &[Manifest],
        d: &Dest,
        bytes_read: &AtomicU64,
    ) -> Result<()> {
        let last = manifests.len().saturating_sub(1);
        for (i, m) in manifests.iter().enumerate() {
            if i == last {
                let reference = d.reference.manifest_ref();
                self.put_rechecked(src, src_repo, manifests, m, d, &reference, bytes_read)
                    .await?;
            } else {
                self.push_child(src, src_repo, manifests, m, d, bytes_read)
                    .await?;
                if d.failed() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// PUT a child manifest by digest unless the ledger knows it present or
    /// another copy is putting it (then wait for that one).
    async fn push_child(
        &self,
        src: &Arc<Registry>,
        src_repo: &str,
        manifests: &[Manifest],
        m: &Manifest,
        d: &Dest,
        bytes_read: &AtomicU64,
    ) -> Result<()> {
        let Some(guard) = self.ledger.acquire(d.key(&m.digest)).await else {
            return Ok(());
        };
        let reference = m.digest.to_string();
        if self
            .put_rechecked(src, src_repo, manifests, m, d, &reference, bytes_read)
            .await?
        {
            guard.complete();
        }
        Ok(())
    }

    /// PUT `m` as `reference`; when refused for something it references,
    /// place that again and PUT once more. False when `d` failed meanwhile.
    #[allow(clippy::too_many_arguments)]
    async fn put_rechecked(
        &self,
        src: &Arc<Registry>,
        src_repo: &str,
        manifests: &[Manifest],
        m: &Manifest,
        d: &Dest,
        reference: &str,
        bytes_read: &AtomicU64,
    ) -> Result<bool> {
        let reg = d.registry();
        let repo = d.reference.repository();
        match put_manifest_idempotent(reg, repo, reference, m).await {
            Err(e) if refused_for_missing(&e) => {
                self.recheck_references(src, src_repo, manifests, m, d, bytes_read)
                    .await?;
                if d.failed() {
                    return Ok(false);
                }
                put_manifest_idempotent(reg, repo, reference, m).await?;
            }
            r => r?,
        }
        d.manifests.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// The registry refused `m` for a reference it lacks, though the ledger
    /// had it present: forget what `m` references and place it again (blobs
    /// streamed, children re-PUT).
    async fn recheck_references(
        &self,
        src: &Arc<Registry>,
        src_repo: &str,
        manifests: &[Manifest],
        m: &Manifest,
        d: &Dest,
        bytes_read: &AtomicU64,
    ) -> Result<()> {
        tracing::warn!(destination = %d.reference, manifest = %m.digest, "registry lost a blob or child manifest; re-checking");
        for b in m.blobs() {
            self.ledger.forget(&d.key(&b.digest));
            self.transfer_blob(src, src_repo, b, std::slice::from_ref(d), bytes_read)
                .await?;
        }
        let reg = d.registry();
        let repo = d.reference.repository();
        for c in m.children() {
            self.ledger.forget(&d.key(&c.digest));
            if let Some(child) = manifests.iter().find(|x| x.digest == c.digest) {
                put_manifest_idempotent(reg, repo, &child.digest.to_string(), child).await?;
            }
        }
        Ok(())
    }
}

/// A manifest PUT refused because something it references is not there.
fn refused_for_missing(e: &Error) -> bool {
    matches!(
        e.registry_code(),
        Some("MANIFEST_BLOB_UNKNOWN" | "BLOB_UNKNOWN")
    )
}

/// PUT a manifest where a tag may be immutable. ECR refuses any push to an
/// existing immutable tag with `TAG_INVALID`, even of the same digest: after
/// a reply that was lost (and retried), or another worker's push, the tag
/// may already hold exactly this manifest, which is success.
pub(super) async fn put_manifest_idempotent(
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
