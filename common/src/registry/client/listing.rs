//! Referrer discovery by tag listing, for registries without the referrers
//! API.
//!
//! Such a registry keeps referrers under tags next to the image
//! (`sha256-<hex>` and cosign's `.sig`, `.att`, `.sbom`). Asking for each of
//! those by HEAD costs four requests per manifest, nearly all answered 404;
//! one listing of the repository's tags answers the same question for every
//! manifest in it. So each repository is listed once, and only the referrer
//! tags it holds are kept (the others are of no use here, and a repository
//! may hold many).
//!
//! A listing is reused only by a caller that read its image before the
//! listing was taken (`since`): a signature pushed before the image was read
//! is then never missed, as with the HEADs. A repository with more than
//! [`MAX_LISTED_TAGS`] tags is not worth listing (one page of 1,000 per
//! request); it is asked by HEAD, and never listed again by this process,
//! nor is any repository of a registry that refused a listing. ECR hosts
//! are never listed (they have the referrers API; see `referrer_tags`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::error::Error;
use crate::oci::referrers::subject_of_tag;
use crate::registry::ecr::EcrHost;

use super::Registry;

/// Above this many tags a repository is asked by HEAD instead: listing it
/// would cost more requests than the HEADs of a run's images in it.
pub const MAX_LISTED_TAGS: usize = 10_000;

/// Tags per listing request (ECR's maximum; distribution's default is 100).
const LIST_PAGE: usize = 1_000;

/// What is known of one repository's referrer tags.
#[derive(Debug, Default)]
enum Known {
    #[default]
    Unknown,
    /// The referrer tags present when the listing was sent.
    Listed {
        at: Instant,
        tags: Arc<HashSet<String>>,
    },
    /// Too many tags: HEAD each tag instead.
    Unlisted,
}

/// Per repository, what its listing said; one listing in flight per
/// repository at a time (callers wait for it rather than list again).
#[derive(Debug, Default)]
pub(super) struct Listings {
    repos: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Known>>>>,
    /// The registry refused a listing (a permission of its own on some,
    /// ECR's `ecr:ListImages`) or has none: the other repositories would
    /// not be listed either.
    refused: AtomicBool,
}

impl Listings {
    fn entry(&self, repo: &str) -> Arc<tokio::sync::Mutex<Known>> {
        let mut repos = self.repos.lock().unwrap_or_else(|p| p.into_inner());
        repos.entry(repo.to_string()).or_default().clone()
    }
}

impl Registry {
    /// The referrer tags (`sha256-<hex>`, with or without a cosign suffix)
    /// `repo` holds, from a listing sent no earlier than `since`; `None`
    /// where they must be asked by HEAD (too many tags, listing refused or
    /// failing).
    pub async fn referrer_tags(&self, repo: &str, since: Instant) -> Option<Arc<HashSet<String>>> {
        // ECR has the referrers API, and listing would take `ecr:ListImages`,
        // which the stack's roles do not grant: every refusal is an
        // AccessDenied in the account's CloudTrail.
        if self.listings.refused.load(Ordering::Relaxed) || EcrHost::parse(&self.host).is_some() {
            return None;
        }
        let entry = self.listings.entry(repo);
        let mut known = entry.lock().await;
        match &*known {
            Known::Listed { at, tags } if *at >= since => return Some(tags.clone()),
            Known::Unlisted => return None,
            _ => {}
        }
        let at = Instant::now();
        match self.list_tags_upto(repo, LIST_PAGE, MAX_LISTED_TAGS).await {
            Ok(Some(all)) => {
                let tags: Arc<HashSet<String>> = Arc::new(
                    all.into_iter()
                        .filter(|t| subject_of_tag(t).is_some())
                        .collect(),
                );
                *known = Known::Listed {
                    at,
                    tags: tags.clone(),
                };
                Some(tags)
            }
            Ok(None) => {
                tracing::debug!(registry = %self.host, repo, "over {MAX_LISTED_TAGS} tags: referrer tags are asked by HEAD");
                *known = Known::Unlisted;
                None
            }
            // The image was just read from this repository, so a 404 says
            // the registry has no listing, like a refusal.
            Err(e @ (Error::Denied { .. } | Error::NotFound { .. })) => {
                tracing::debug!(registry = %self.host, repo, error = %e, "tag listing refused: referrer tags are asked by HEAD");
                self.listings.refused.store(true, Ordering::Relaxed);
                None
            }
            Err(e) => {
                tracing::debug!(registry = %self.host, repo, error = %e, "tag listing failed: referrer tags are asked by HEAD this time");
                None
            }
        }
    }
}
