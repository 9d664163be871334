//! The distribution API's endpoints: manifests, referrers, tag and catalog
//! listings, blob checks, mounts, uploads and downloads.

use std::sync::atomic::Ordering;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use crate::error::{Error, Result};
use crate::oci::digest::Digest;
use crate::oci::manifest::{ACCEPT as MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, Manifest};
use crate::retry::{self, Backoff, Class};

use super::errors::{error_message, header_str, read_error_text, read_limited, same_origin};
use super::send::is_transient;
use super::token::Auth;
use super::{ManifestHead, Mount, Registry, Scope};

impl Registry {
    /// HEAD a manifest; `None` when it does not exist. Falls back to GET and
    /// hashing when the registry sends no `Docker-Content-Digest`.
    pub async fn head_manifest(&self, repo: &str, reference: &str) -> Result<Option<ManifestHead>> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"));
        let resp = self
            .send(&Scope::pull(repo), |c| {
                c.request(Method::HEAD, url.clone())
                    .header(ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let h = resp.headers();
        let media_type = header_str(h, CONTENT_TYPE).unwrap_or_default();
        let digest = header_str(h, "docker-content-digest").and_then(|d| d.parse::<Digest>().ok());
        let size = header_str(h, CONTENT_LENGTH).and_then(|s| s.parse().ok());
        match (digest, size) {
            (Some(digest), Some(size)) => Ok(Some(ManifestHead {
                digest,
                media_type,
                size,
            })),
            _ => match self.get_manifest_opt(repo, reference).await? {
                Some(m) => Ok(Some(ManifestHead {
                    digest: m.digest,
                    media_type: m.media_type,
                    size: m.raw.len() as u64,
                })),
                None => Ok(None),
            },
        }
    }

    /// GET a manifest's raw bytes. A reference that is a digest is verified
    /// against the bytes, and so is any `Docker-Content-Digest` the registry sends.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<Manifest> {
        self.get_manifest_opt(repo, reference)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("manifest {}/{repo}:{reference}", self.host),
            })
    }

    pub(super) async fn get_manifest_opt(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<Manifest>> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"));
        let what = format!("manifest {}/{repo}@{reference}", self.host);
        // `send` retries until the headers arrive; a body cut short is
        // retried here with the same budget.
        let mut backoff = Backoff::default();
        let (content_type, claimed, raw) = loop {
            let resp = self
                .send(&Scope::pull(repo), |c| {
                    c.get(url.clone()).header(ACCEPT, MANIFEST_ACCEPT)
                })
                .await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let content_type = header_str(resp.headers(), CONTENT_TYPE).unwrap_or_default();
            let claimed = header_str(resp.headers(), "docker-content-digest");
            if let Some(len) = resp
                .content_length()
                .filter(|l| *l > MAX_MANIFEST_BYTES as u64)
            {
                return Err(Error::Manifest {
                    what,
                    source: crate::oci::manifest::ManifestError::TooLarge(len as usize),
                });
            }
            match read_limited(resp, MAX_MANIFEST_BYTES).await {
                Ok(raw) => break (content_type, claimed, raw),
                Err(e) if is_transient(&e) && backoff.wait(None).await => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(registry = %self.host, error = %crate::error::error_line(&e), "manifest body cut short; retried");
                }
                Err(e) => return Err(self.transport_error(&e)),
            }
        };
        let manifest =
            Manifest::from_raw(raw, &content_type).map_err(|source| Error::Manifest {
                what: what.clone(),
                source,
            })?;
        let expected = reference
            .parse::<Digest>()
            .ok()
            .or_else(|| claimed.and_then(|c| c.parse().ok()));
        if let Some(expected) = expected
            && expected.algorithm() == manifest.digest.algorithm()
            && expected != manifest.digest
        {
            return Err(Error::DigestMismatch {
                what,
                expected,
                actual: manifest.digest,
            });
        }
        Ok(Some(manifest))
    }

    /// PUT a manifest's raw bytes under `reference` (a tag or its digest),
    /// paced by `manifest_puts_per_second` (in `send`, so retries are too).
    pub async fn put_manifest(&self, repo: &str, reference: &str, m: &Manifest) -> Result<()> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"));
        let resp = self
            .send(&Scope::push(repo), |c| {
                c.put(url.clone())
                    .header(CONTENT_TYPE, m.media_type.as_str())
                    .body(m.raw.clone())
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(self.status_error(resp).await);
        }
        // Location is optional (ECR omits it); the digest header, when sent, must agree.
        if let Some(d) = header_str(resp.headers(), "docker-content-digest")
            .and_then(|d| d.parse::<Digest>().ok())
            && d != m.digest
        {
            return Err(Error::DigestMismatch {
                what: format!("manifest pushed to {}/{repo}:{reference}", self.host),
                expected: m.digest.clone(),
                actual: d,
            });
        }
        Ok(())
    }

    /// The manifests that name `digest` as their `subject`, from the OCI 1.1
    /// referrers API (every page). `None` when the registry lacks the API:
    /// older ones answer 404, some 400, 405 or 501, and the caller then
    /// falls back to the tag schema. The index is only read, never pushed,
    /// so its pages may be merged.
    pub async fn referrers(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<Vec<crate::oci::manifest::Descriptor>>> {
        #[derive(serde::Deserialize)]
        struct Index {
            #[serde(default)]
            manifests: Option<Vec<crate::oci::manifest::Descriptor>>,
        }
        use std::sync::atomic::Ordering;
        if self.no_referrers_api.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let url = self.url(&format!("v2/{repo}/referrers/{digest}"));
        let absent = || {
            self.no_referrers_api.store(true, Ordering::Relaxed);
            Ok(None)
        };
        match self
            .paginate::<Index>(
                &Scope::pull(repo),
                url,
                &format!("referrers of {}/{repo}@{digest}", self.host),
            )
            .await
        {
            Ok(pages) => Ok(Some(
                pages
                    .into_iter()
                    .flat_map(|p| p.manifests.unwrap_or_default())
                    .collect(),
            )),
            Err(Error::NotFound { .. }) => absent(),
            Err(Error::Registry {
                status: 400 | 405 | 501,
                ..
            }) => absent(),
            Err(e) => Err(e),
        }
    }

    /// Every tag of `repo`, in the registry's order, `page` per request
    /// (at most 1000: ECR refuses more), following each `Link: <...>;
    /// rel="next"` as given (its cursor is opaque).
    pub async fn list_tags(&self, repo: &str, page: usize) -> Result<Vec<String>> {
        Ok(self
            .list_tags_upto(repo, page, usize::MAX)
            .await?
            .unwrap_or_default())
    }

    /// As [`Registry::list_tags`], but `None` as soon as the listing is
    /// known to hold more than `max` tags (no further page is read).
    pub async fn list_tags_upto(
        &self,
        repo: &str,
        page: usize,
        max: usize,
    ) -> Result<Option<Vec<String>>> {
        #[derive(serde::Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut url = self.url(&format!("v2/{repo}/tags/list"));
        url.query_pairs_mut()
            .append_pair("n", &page.clamp(1, 1000).to_string());
        let mut tags = Vec::new();
        let complete = self
            .paginate_with(
                &Scope::pull(repo),
                url,
                &format!("tags of {}/{repo}", self.host),
                |p: Tags| {
                    tags.extend(p.tags.unwrap_or_default());
                    tags.len() <= max
                },
            )
            .await?;
        Ok(complete.then_some(tags))
    }

    /// Every repository the registry lists in `/v2/_catalog` (with
    /// credentials that may list it), `page` per request.
    pub async fn catalog(&self, page: usize) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Catalog {
            #[serde(default)]
            repositories: Option<Vec<String>>,
        }
        let mut url = self.url("v2/_catalog");
        url.query_pairs_mut()
            .append_pair("n", &page.clamp(1, 1000).to_string());
        let pages: Vec<Catalog> = self
            .paginate(
                &Scope::catalog(),
                url,
                &format!("the catalog of {}", self.host),
            )
            .await?;
        Ok(pages
            .into_iter()
            .flat_map(|p| p.repositories.unwrap_or_default())
            .collect())
    }

    /// GET `url` and each `rel="next"` page after it, parsed as `T`.
    pub(super) async fn paginate<T: serde::de::DeserializeOwned>(
        &self,
        scope: &Scope,
        first: Url,
        what: &str,
    ) -> Result<Vec<T>> {
        let mut pages = Vec::new();
        self.paginate_with(scope, first, what, |p| {
            pages.push(p);
            true
        })
        .await?;
        Ok(pages)
    }

    /// GET `url` and each `rel="next"` page after it, handing each page,
    /// parsed as `T`, to `take`; `take` answers whether to go on. `false`
    /// when `take` stopped it.
    pub(super) async fn paginate_with<T: serde::de::DeserializeOwned>(
        &self,
        scope: &Scope,
        first: Url,
        what: &str,
        mut take: impl FnMut(T) -> bool,
    ) -> Result<bool> {
        let mut next = Some(first);
        let mut seen = std::collections::HashSet::new();
        while let Some(url) = next.take() {
            // A registry that links a page to itself would loop forever.
            if !seen.insert(url.to_string()) {
                break;
            }
            let resp = self.send(scope, |c| c.get(url.clone())).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(Error::NotFound {
                    what: what.to_string(),
                });
            }
            next = header_str(resp.headers(), "link")
                .and_then(|l| next_link(&l))
                .and_then(|l| url.join(&l).ok())
                .filter(|u| same_origin(u, &self.base));
            let body = read_limited(resp, 16 * 1024 * 1024)
                .await
                .map_err(|e| self.transport_error(&e))?;
            let page = serde_json::from_slice(&body).map_err(|e| Error::Registry {
                registry: self.host.clone(),
                status: 200,
                code: None,
                message: format!("{what}: the answer is not the expected JSON: {e}"),
            })?;
            if !take(page) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether the repository exists at all (has any tag). A missing one is
    /// known to hold no blobs, which spares a HEAD per blob.
    pub async fn repository_exists(&self, repo: &str) -> Result<bool> {
        let mut url = self.url(&format!("v2/{repo}/tags/list"));
        url.query_pairs_mut().append_pair("n", "1");
        match self.send(&Scope::pull(repo), |c| c.get(url.clone())).await {
            Ok(resp) => Ok(resp.status().is_success()),
            // Listing needs a permission of its own on some registries
            // (ECR's ListImages): unknown, so blobs are HEADed as usual.
            Err(Error::Denied { message, .. }) => {
                tracing::debug!(registry = %self.host, repo, %message, "tag listing refused; checking blobs one by one");
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    pub async fn blob_exists(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"));
        let resp = self
            .send(&Scope::pull(repo), |c| c.request(Method::HEAD, url.clone()))
            .await?;
        Ok(resp.status().is_success())
    }

    /// Try to mount `digest` from `from` into `repo` on this registry.
    pub async fn mount_blob(&self, repo: &str, digest: &Digest, from: &str) -> Result<Mount> {
        let mut url = self.url(&format!("v2/{repo}/blobs/uploads/"));
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from);
        let resp = self
            .send(&Scope::mount(repo, from), |c| {
                c.post(url.clone()).header(CONTENT_LENGTH, "0")
            })
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::Upload(self.location(&resp)?)),
            _ => Err(self.status_error(resp).await),
        }
    }

    /// Open an upload session; returns where to PUT the bytes.
    pub async fn start_upload(&self, repo: &str) -> Result<Url> {
        let url = self.url(&format!("v2/{repo}/blobs/uploads/"));
        let resp = self
            .send(&Scope::push(repo), |c| {
                c.post(url.clone()).header(CONTENT_LENGTH, "0")
            })
            .await?;
        match resp.status() {
            StatusCode::ACCEPTED | StatusCode::CREATED => self.location(&resp),
            _ => Err(self.status_error(resp).await),
        }
    }

    pub(super) fn location(&self, resp: &Response) -> Result<Url> {
        let loc = header_str(resp.headers(), LOCATION).ok_or_else(|| Error::Registry {
            registry: self.host.clone(),
            status: resp.status().as_u16(),
            code: None,
            message: "the upload session has no Location header".into(),
        })?;
        self.base.join(&loc).map_err(|_| Error::Registry {
            registry: self.host.clone(),
            status: resp.status().as_u16(),
            code: None,
            message: format!("the upload Location {loc:?} is not a URL"),
        })
    }

    /// Finish an upload with one streaming PUT of `size` bytes. Not retried
    /// here: the body is a stream; the copy engine retries the whole transfer.
    pub async fn put_blob(
        &self,
        repo: &str,
        mut location: Url,
        digest: &Digest,
        size: u64,
        body: reqwest::Body,
    ) -> Result<()> {
        location
            .query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let mut req = self
            .blob_http
            .put(location.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(body);
        // Only our own registry gets our credentials, never an upload host elsewhere.
        let auth = if same_origin(&location, &self.base) {
            self.authorization(&Scope::push(repo), false).await?
        } else {
            Auth::default()
        };
        if let Some(a) = &auth.header {
            req = req.header(AUTHORIZATION, a);
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        if status == StatusCode::CREATED || status == StatusCode::NO_CONTENT {
            self.limit.succeeded();
            return Ok(());
        }
        // The body was a stream, so this attempt cannot be sent again here:
        // the engine restarts the transfer, after what the registry asks.
        match retry::classify(status) {
            Class::Reauth => {
                self.learn_challenge(resp.headers());
                self.tokens.lock().await.remove(&Scope::push(repo).key());
                self.invalidate_credentials(&auth).await;
            }
            Class::Retry if status == StatusCode::TOO_MANY_REQUESTS => {
                self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                self.limit.throttled();
                let retry_after = retry::retry_after(resp.headers());
                let (_, message) = error_message(&read_error_text(resp).await);
                return Err(Error::RateLimited {
                    registry: self.host.clone(),
                    message,
                    retry_after,
                });
            }
            _ => {}
        }
        match self.status_error(resp).await {
            // ECR cannot store an empty blob (EmptyUploadException).
            Error::Registry {
                registry,
                status: 400,
                code,
                message,
            } if size == 0 => Err(Error::Registry {
                message: format!(
                    "the registry refuses empty (0-byte) blobs such as {digest}, so this image \
                     cannot be stored there as it is ({message})"
                ),
                registry,
                status: 400,
                code,
            }),
            e => Err(e),
        }
    }

    /// GET a blob; the caller streams and verifies the body. Redirects (to
    /// object storage or a CDN) are followed by reqwest, which drops the
    /// Authorization header whenever the redirect leaves this host.
    pub async fn get_blob(&self, repo: &str, digest: &Digest) -> Result<Response> {
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"));
        let resp = self
            .send_via(&self.blob_http, &Scope::pull(repo), |c| c.get(url.clone()))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(Error::NotFound {
                what: format!("blob {digest} in {}/{repo}", self.host),
            });
        }
        Ok(resp)
    }
}

/// The target of `rel="next"` in a `Link` header
/// (`</v2/x/tags/list?last=b&n=2>; rel="next"`).
pub(super) fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            p.trim()
                .replace(' ', "")
                .eq_ignore_ascii_case("rel=\"next\"")
        });
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| target.to_string())
    })
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn finds_the_next_link() {
        let cases = [
            (
                r#"</v2/a/tags/list?last=b&n=2>; rel="next""#,
                Some("/v2/a/tags/list?last=b&n=2"),
            ),
            (
                r#"<https://r.example.com/v2/_catalog?last=x%2Fy&n=100>;rel="next""#,
                Some("https://r.example.com/v2/_catalog?last=x%2Fy&n=100"),
            ),
            (r#"</p1>; rel="prev", </p3>; rel="next""#, Some("/p3")),
            (r#"</v2/a/tags/list?last=b>; rel="prev""#, None),
            ("garbage", None),
        ];
        for (header, want) in cases {
            assert_eq!(next_link(header).as_deref(), want, "{header}");
        }
    }
}
