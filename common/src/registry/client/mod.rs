//! A registry client of our own, on reqwest, for the copy path.
//!
//! One [`Registry`] per registry host and credential set. It owns the auth
//! handshake (challenge, token cache honouring `expires_in`, one re-auth on
//! 401 or on ECR's "token expired" 403), retries with jittered backoff per the
//! `crate::retry` table, and a per-registry concurrency limit for short
//! requests. Streaming blob bodies are bounded by the copy engine instead, so a
//! transfer holding a permit never waits on another transfer's permit.

mod endpoints;
mod errors;
mod listing;
mod quota;
mod send;
mod token;

pub use listing::MAX_LISTED_TAGS;
pub use quota::PullQuota;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use url::Url;

use crate::error::{Error, Result};
use crate::oci::digest::Digest;
use crate::registry::auth::{Challenge, Credentials, Token};
use crate::registry::ecr::{Ecr, EcrHost};
use crate::registry::limit::Limiter;
use crate::registry::pace::TokenBucket;
use crate::registry::settings::{DEFAULT_MAX_CONCURRENCY, HttpVersion, RegistrySettings};

use quota::PullPace;

/// Where a registry's credentials come from.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    Static(Credentials),
    /// A Secrets Manager secret, read when needed and again after a 401.
    Secret {
        id: String,
        secrets: Arc<crate::registry::secrets::Secrets>,
    },
    Ecr {
        host: EcrHost,
        access: crate::registry::ecr::EcrAccess,
    },
}

/// The access a request needs, for bearer-token scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    repository: String,
    push: bool,
    mount_from: Option<String>,
}

impl Scope {
    pub fn pull(repository: &str) -> Scope {
        Scope {
            repository: repository.to_string(),
            push: false,
            mount_from: None,
        }
    }
    pub fn push(repository: &str) -> Scope {
        Scope {
            push: true,
            ..Scope::pull(repository)
        }
    }
    /// Push to `repository` and pull from `from`, in one token, for mounts.
    pub fn mount(repository: &str, from: &str) -> Scope {
        Scope {
            mount_from: Some(from.to_string()),
            ..Scope::push(repository)
        }
    }
    /// Listing `/v2/_catalog` (token scope `registry:catalog:*`).
    pub fn catalog() -> Scope {
        Scope::pull("")
    }
    /// The repository the request is about (empty for the catalog).
    pub fn repository(&self) -> &str {
        &self.repository
    }
    fn params(&self) -> Vec<String> {
        if self.repository.is_empty() {
            return vec!["registry:catalog:*".into()];
        }
        let actions = if self.push { "pull,push" } else { "pull" };
        let mut v = vec![format!("repository:{}:{actions}", self.repository)];
        if let Some(from) = &self.mount_from {
            v.push(format!("repository:{from}:pull"));
        }
        v
    }
    fn key(&self) -> String {
        self.params().join(" ")
    }
}

/// Request counters, for summaries, tests and benchmarks.
#[derive(Debug, Default)]
pub struct RequestStats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    /// 429 answers, each of which slowed this registry down.
    pub throttled: AtomicU64,
    /// Requests that timed out (connecting, or a response gone silent).
    pub timeouts: AtomicU64,
    pub reauths: AtomicU64,
    pub token_fetches: AtomicU64,
    /// Manifest GETs held back because the registry's pull quota ran low.
    pub slowed: AtomicU64,
}

/// A snapshot of [`RequestStats`], for reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    pub requests: u64,
    pub retries: u64,
    pub throttled: u64,
    pub timeouts: u64,
    pub reauths: u64,
    pub token_fetches: u64,
    pub slowed: u64,
}

impl RequestCounts {
    pub fn add(&mut self, o: &RequestCounts) {
        self.requests += o.requests;
        self.retries += o.retries;
        self.throttled += o.throttled;
        self.timeouts += o.timeouts;
        self.reauths += o.reauths;
        self.token_fetches += o.token_fetches;
        self.slowed += o.slowed;
    }
}

impl RequestStats {
    pub fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            reauths: self.reauths.load(Ordering::Relaxed),
            token_fetches: self.token_fetches.load(Ordering::Relaxed),
            slowed: self.slowed.load(Ordering::Relaxed),
        }
    }
}

/// What a HEAD on a manifest tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// The result of a cross-repository mount attempt.
#[derive(Debug)]
pub enum Mount {
    Mounted,
    /// The registry could not mount and opened an upload session instead.
    Upload(Url),
}

/// A client for one registry host.
#[derive(Debug)]
pub struct Registry {
    host: String,
    base: Url,
    http: reqwest::Client,
    /// For blob bodies (`blob_http`): `http` when both take one HTTP version.
    blob_http: reqwest::Client,
    creds: CredentialSource,
    ecr: Arc<Ecr>,
    challenge: std::sync::Mutex<Option<Challenge>>,
    tokens: tokio::sync::Mutex<HashMap<String, Token>>,
    limit: Limiter,
    /// Paces manifest PUTs (ECR's `PutImage` quota); `None`: unlimited.
    manifest_puts: Option<TokenBucket>,
    pulls: std::sync::Mutex<PullPace>,
    /// Set once the registry shows it has no referrers API (a registry with
    /// it never answers 404 there), so later subjects skip the request.
    no_referrers_api: std::sync::atomic::AtomicBool,
    /// Repositories' referrer tags, listed once (see `listing`).
    listings: listing::Listings,
    pub stats: RequestStats,
}

/// One burst token for manifest PUTs: pushes are spaced evenly, so no second
/// sees more than the rate plus one.
const MANIFEST_PUT_BURST: f64 = 1.0;

/// How long a response may go silent before the request counts as failed
/// (and is retried): long enough for a registry assembling a large blob.
const DEFAULT_READ_TIMEOUT_SECS: u64 = 120;

const USER_AGENT: &str = concat!("mirrorfleet/", env!("CARGO_PKG_VERSION"));

impl Registry {
    /// Build a client for `host` with its settings. TLS verification is on
    /// unless the settings explicitly mark the registry insecure.
    pub fn new(
        host: &str,
        settings: &RegistrySettings,
        creds: CredentialSource,
        ecr: Arc<Ecr>,
    ) -> Result<Registry> {
        let invalid = |message: String| {
            Error::Settings(crate::registry::settings::SettingsError::Invalid {
                host: host.to_string(),
                message,
            })
        };
        let endpoint = match settings.endpoint.as_deref() {
            Some(e) => e.to_string(),
            // Docker Hub's API lives on another name than its references.
            None if host == crate::oci::reference::DOCKER_HUB => "registry-1.docker.io".to_string(),
            None => host.to_string(),
        };
        let scheme = if settings.plain_http { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{endpoint}/")).map_err(|e| {
            invalid(format!(
                "endpoint {endpoint:?} is not a valid host[:port]: {e}"
            ))
        })?;
        let certs = match &settings.ca_file {
            Some(ca) => {
                let pem = std::fs::read(ca)
                    .map_err(|e| invalid(format!("cannot read ca_file {}: {e}", ca.display())))?;
                Some(
                    reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                        invalid(format!("ca_file {} is not PEM: {e}", ca.display()))
                    })?,
                )
            }
            None => None,
        };
        // Built twice when blob bodies take their own HTTP version.
        let builder = || {
            let mut b = reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .connect_timeout(Duration::from_secs(15))
                .read_timeout(Duration::from_secs(
                    settings
                        .read_timeout_seconds
                        .unwrap_or(DEFAULT_READ_TIMEOUT_SECS),
                ))
                .pool_idle_timeout(Duration::from_secs(60));
            if let Some(c) = &certs {
                b = b.tls_certs_merge(c.clone());
            }
            if settings.insecure_skip_tls_verify {
                b = b.tls_danger_accept_invalid_certs(true);
            }
            b
        };
        if settings.insecure_skip_tls_verify {
            tracing::warn!(
                registry = host,
                "TLS certificate verification is OFF for this registry, as configured"
            );
        }
        if settings.plain_http {
            tracing::warn!(
                registry = host,
                "using plain HTTP for this registry, as configured"
            );
        }
        let build = |b: reqwest::ClientBuilder| {
            b.build()
                .map_err(|e| invalid(format!("cannot build the HTTP client: {e}")))
        };
        let version = |v: HttpVersion| match v {
            HttpVersion::Http1 => builder().http1_only(),
            HttpVersion::Http2 => builder(),
        };
        let api = settings.api_http.unwrap_or(HttpVersion::api_default());
        let blob = settings.blob_http.unwrap_or(HttpVersion::blob_default());
        let http = build(version(api))?;
        // One client (one connection pool) when both take the same version.
        let blob_http = if blob == api {
            http.clone()
        } else {
            build(version(blob))?
        };
        let manifest_puts = match settings.manifest_puts_per_second {
            None => None,
            Some(rate) => Some(TokenBucket::new(rate, MANIFEST_PUT_BURST).ok_or_else(|| {
                invalid(format!(
                    "manifest_puts_per_second must be a number above 0, not {rate}"
                ))
            })?),
        };
        Ok(Registry {
            host: host.to_string(),
            base,
            http,
            blob_http,
            creds,
            ecr,
            challenge: std::sync::Mutex::new(None),
            tokens: tokio::sync::Mutex::new(HashMap::new()),
            limit: Limiter::new(settings.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY)),
            manifest_puts,
            pulls: std::sync::Mutex::new(PullPace::default()),
            no_referrers_api: std::sync::atomic::AtomicBool::new(false),
            listings: listing::Listings::default(),
            stats: RequestStats::default(),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Requests allowed at once now, and the lowest that has been after 429s.
    pub fn concurrency(&self) -> (usize, usize) {
        (self.limit.limit(), self.limit.low_water())
    }

    fn url(&self, path: &str) -> Url {
        // `path` is built from validated repository names and digests.
        self.base.join(path).unwrap_or_else(|_| self.base.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        assert_eq!(Scope::pull("a/b").key(), "repository:a/b:pull");
        assert_eq!(Scope::push("a").key(), "repository:a:pull,push");
        assert_eq!(
            Scope::mount("dst", "src").params(),
            vec!["repository:dst:pull,push", "repository:src:pull"]
        );
    }
}
