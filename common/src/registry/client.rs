//! A registry client of our own, on reqwest, for the copy path.
//!
//! One [`Registry`] per registry host and credential set. It owns the auth
//! handshake (challenge, token cache honouring `expires_in`, one re-auth on
//! 401 or on ECR's "token expired" 403), retries with jittered backoff per the
//! [`crate::retry`] table, and a per-registry concurrency limit for short
//! requests. Streaming blob bodies are bounded by the copy engine instead, so a
//! transfer holding a permit never waits on another transfer's permit.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, LOCATION};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use crate::error::{Error, Result};
use crate::oci::digest::Digest;
use crate::oci::manifest::{ACCEPT as MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, Manifest};
use crate::registry::auth::{Challenge, Credentials, Token, TokenResponse};
use crate::registry::ecr::{Ecr, EcrHost};
use crate::registry::limit::Limiter;
use crate::registry::pace::TokenBucket;
use crate::registry::settings::{DEFAULT_MAX_CONCURRENCY, RegistrySettings};
use crate::retry::{self, Class};

/// Where a registry's credentials come from.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    Static(Credentials),
    Ecr {
        host: EcrHost,
        role_arn: Option<String>,
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
    pub reauths: u64,
    pub token_fetches: u64,
    pub slowed: u64,
}

impl RequestCounts {
    pub fn add(&mut self, o: &RequestCounts) {
        self.requests += o.requests;
        self.retries += o.retries;
        self.throttled += o.throttled;
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
    pub stats: RequestStats,
}

/// Pacing of manifest GETs while a registry's pull quota is low.
#[derive(Debug, Default)]
struct PullPace {
    low: bool,
    gap: Duration,
    /// When the next manifest GET may go.
    next: Option<tokio::time::Instant>,
    /// The quota is used up until then: a manifest GET would only be refused.
    exhausted_until: Option<tokio::time::Instant>,
}

/// Pull quota left at or below this (or the concurrency limit, if higher)
/// slows the registry down.
const PULLS_LOW_WATER: u64 = 5;

/// One burst token for manifest PUTs: pushes are spaced evenly, so no second
/// sees more than the rate plus one.
const MANIFEST_PUT_BURST: f64 = 1.0;

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
fn parse_quota_value(v: &str) -> Option<(u64, Option<u64>)> {
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
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(
                settings
                    .read_timeout_seconds
                    .unwrap_or(DEFAULT_READ_TIMEOUT_SECS),
            ))
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(ca) = &settings.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| invalid(format!("cannot read ca_file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| invalid(format!("ca_file {} is not PEM: {e}", ca.display())))?;
            builder = builder.tls_certs_merge(certs);
        }
        if settings.insecure_skip_tls_verify {
            tracing::warn!(
                registry = host,
                "TLS certificate verification is OFF for this registry, as configured"
            );
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        if settings.plain_http {
            tracing::warn!(
                registry = host,
                "using plain HTTP for this registry, as configured"
            );
        }
        let http = builder
            .build()
            .map_err(|e| invalid(format!("cannot build the HTTP client: {e}")))?;
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
            creds,
            ecr,
            challenge: std::sync::Mutex::new(None),
            tokens: tokio::sync::Mutex::new(HashMap::new()),
            limit: Limiter::new(settings.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY)),
            manifest_puts,
            pulls: std::sync::Mutex::new(PullPace::default()),
            no_referrers_api: std::sync::atomic::AtomicBool::new(false),
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

    async fn credentials(&self) -> Result<Credentials> {
        match &self.creds {
            CredentialSource::Static(c) => Ok(c.clone()),
            CredentialSource::Ecr { host, role_arn } => {
                Ok(self.ecr.credentials(host, role_arn.as_deref()).await?)
            }
        }
    }

    fn known_challenge(&self) -> Option<Challenge> {
        self.challenge
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn learn_challenge(&self, headers: &HeaderMap) {
        if let Some(c) = headers
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(Challenge::parse)
        {
            match self.challenge.lock() {
                Ok(mut g) => *g = Some(c),
                Err(poisoned) => *poisoned.into_inner() = Some(c),
            }
        }
    }

    /// The Authorization header for `scope`, if the registry asked for one.
    async fn authorization(&self, scope: &Scope, force: bool) -> Result<Auth> {
        match self.known_challenge() {
            None => Ok(Auth::default()),
            Some(Challenge::Basic) => {
                let creds = self.credentials().await?;
                Ok(Auth {
                    header: creds.basic_header(),
                    ecr: matches!(self.creds, CredentialSource::Ecr { .. }).then_some(creds),
                    bearer: false,
                })
            }
            Some(Challenge::Bearer { realm, service }) => {
                let key = scope.key();
                let mut tokens = self.tokens.lock().await;
                if !force && let Some(t) = tokens.get(&key).filter(|t| t.fresh()) {
                    return Ok(Auth::bearer(format!("Bearer {}", t.value.expose())));
                }
                let token = self.fetch_token(&realm, service.as_deref(), scope).await?;
                let header = format!("Bearer {}", token.value.expose());
                tokens.insert(key, token);
                Ok(Auth::bearer(header))
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &Scope,
    ) -> Result<Token> {
        self.stats.token_fetches.fetch_add(1, Ordering::Relaxed);
        let auth_err = |message: String| Error::Auth {
            registry: self.host.clone(),
            message,
        };
        let mut url = Url::parse(realm)
            .map_err(|_| auth_err(format!("its token service address {realm:?} is not a URL")))?;
        let creds = self.credentials().await?;
        let mut attempt = 0;
        let mut delays = retry::backoff();
        loop {
            let req = match &creds {
                Credentials::IdentityToken(tok) => {
                    // OAuth2 refresh-token grant, as Docker does for identity tokens.
                    let mut form = url::form_urlencoded::Serializer::new(String::new());
                    form.append_pair("grant_type", "refresh_token")
                        .append_pair("refresh_token", tok.expose())
                        .append_pair("client_id", "mirrorfleet")
                        .append_pair("scope", &scope.params().join(" "));
                    if let Some(s) = service {
                        form.append_pair("service", s);
                    }
                    self.http
                        .post(url.clone())
                        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                        .body(form.finish())
                }
                other => {
                    url.query_pairs_mut().clear();
                    {
                        let mut q = url.query_pairs_mut();
                        if let Some(s) = service {
                            q.append_pair("service", s);
                        }
                        for p in scope.params() {
                            q.append_pair("scope", &p);
                        }
                    }
                    let mut r = self.http.get(url.clone());
                    if let Some(h) = other.basic_header() {
                        r = r.header(AUTHORIZATION, h);
                    }
                    r
                }
            };
            attempt += 1;
            let result = req.send().await;
            let retry_delay = match &result {
                Ok(resp) if retry::classify(resp.status()) == Class::Retry => delays.next(),
                Err(e) if is_transient(e) => delays.next(),
                _ => None,
            };
            if let Some(d) = retry_delay {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(registry = %self.host, attempt, "token service busy; retrying");
                tokio::time::sleep(d).await;
                continue;
            }
            let resp = result.map_err(|e| {
                auth_err(format!(
                    "its token service is unreachable: {}",
                    error_chain(&e)
                ))
            })?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(auth_err(format!(
                    "the token service refused {} (HTTP {}); check the username and password",
                    creds.describe(),
                    status.as_u16()
                )));
            }
            if !status.is_success() {
                return Err(auth_err(format!(
                    "the token service answered HTTP {}",
                    status.as_u16()
                )));
            }
            let body: TokenResponse = resp
                .json()
                .await
                .map_err(|e| auth_err(format!("the token service's answer is not JSON: {e}")))?;
            return body
                .into_token()
                .ok_or_else(|| auth_err("the token service returned no token".into()));
        }
    }

    /// Send a request built by `build` (called again for each attempt), with
    /// auth, re-auth once on 401, and retries on transient failures. Returns
    /// 2xx, 3xx and 404 responses; other statuses become errors.
    async fn send<F>(&self, scope: &Scope, build: F) -> Result<Response>
    where
        F: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        let mut delays = retry::backoff();
        let mut reauthed = false;
        let mut force_token = false;
        loop {
            // Every attempt counts against a quota, retries too, so each waits.
            let is_pull = match build(&self.http).build() {
                Ok(r) if r.method() == Method::PUT && r.url().path().contains("/manifests/") => {
                    if let Some(b) = &self.manifest_puts {
                        b.take().await;
                    }
                    false
                }
                // Docker Hub counts manifest GETs as pulls; HEADs (which the
                // engine sends first) and blob GETs are free, so never slowed.
                Ok(r) if r.method() == Method::GET && r.url().path().contains("/manifests/") => {
                    self.pace_pull().await?;
                    true
                }
                _ => false,
            };
            let auth = self.authorization(scope, force_token).await?;
            force_token = false;
            let mut req = build(&self.http);
            if let Some(a) = &auth.header {
                req = req.header(AUTHORIZATION, a);
            }
            let result = {
                let _permit = self.limit.acquire().await.ok_or(Error::Cancelled)?;
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                let result = req.send().await;
                if let Ok(r) = &result {
                    self.note_pull_quota(r.headers());
                }
                match &result {
                    Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => {
                        self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                        self.limit.throttled();
                        tracing::debug!(registry = %self.host, limit = self.limit.limit(), "rate limited; fewer requests at once");
                    }
                    Ok(r) if r.status().is_success() => self.limit.succeeded(),
                    _ => {}
                }
                result
            };
            let resp = match result {
                Ok(r) => r,
                Err(e) if is_transient(&e) => match delays.next() {
                    Some(d) => {
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(registry = %self.host, error = %error_chain(&e), "transient error; retrying");
                        tokio::time::sleep(d).await;
                        continue;
                    }
                    None => return Err(self.transport_error(&e)),
                },
                Err(e) => return Err(self.transport_error(&e)),
            };
            let status = resp.status();
            match retry::classify(status) {
                Class::Success => return Ok(resp),
                Class::Final if status == StatusCode::NOT_FOUND => return Ok(resp),
                Class::Reauth if !reauthed => {
                    tracing::debug!(registry = %self.host, "credentials refused or expired; authenticating again");
                    reauthed = true;
                    force_token = true;
                    self.stats.reauths.fetch_add(1, Ordering::Relaxed);
                    self.learn_challenge(resp.headers());
                    self.invalidate_ecr(&auth).await;
                    continue;
                }
                Class::Reauth if auth.bearer && insufficient_scope(resp.headers()) => {
                    // A fresh token was issued and still refused for this
                    // repository: it is missing or private (Docker Hub
                    // answers so), not a bad login.
                    return Err(Error::RepositoryInaccessible {
                        registry: self.host.clone(),
                        repository: scope.repository().to_string(),
                        anonymous: matches!(
                            &self.creds,
                            CredentialSource::Static(Credentials::Anonymous)
                        ),
                    });
                }
                Class::Final if status == StatusCode::FORBIDDEN && !reauthed => {
                    // ECR says "Your authorization token has expired" with 403.
                    let body = read_error_text(resp).await;
                    if body.to_ascii_lowercase().contains("expired") {
                        tracing::info!(registry = %self.host, "token expired; fetching a new one");
                        reauthed = true;
                        force_token = true;
                        self.stats.reauths.fetch_add(1, Ordering::Relaxed);
                        self.invalidate_ecr(&auth).await;
                        continue;
                    }
                    return Err(Error::Denied {
                        registry: self.host.clone(),
                        message: error_message(&body).1,
                    });
                }
                Class::Retry => {
                    // A pull refused because the quota is used up: every
                    // retry would be refused too, until the window resets.
                    if is_pull
                        && status == StatusCode::TOO_MANY_REQUESTS
                        && let Some(e) = self.quota_exhausted()
                    {
                        return Err(e);
                    }
                    let server_delay = retry::retry_after(resp.headers());
                    match delays.next() {
                        Some(d) => {
                            self.stats.retries.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(registry = %self.host, status = status.as_u16(), "transient status; retrying");
                            tokio::time::sleep(server_delay.unwrap_or(d)).await;
                            continue;
                        }
                        None => return Err(self.status_error(resp).await),
                    }
                }
                _ => return Err(self.status_error(resp).await),
            }
        }
    }

    fn pull_pace(&self) -> std::sync::MutexGuard<'_, PullPace> {
        // Poisoned only by a panic mid-update of plain values: still usable.
        self.pulls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Slow down or speed up again per the pull quota a response reports.
    fn note_pull_quota(&self, headers: &HeaderMap) {
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
    fn quota_exhausted(&self) -> Option<Error> {
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
    async fn pace_pull(&self) -> Result<()> {
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

    /// Drop the ECR token a refused request carried. A request sent before
    /// the registry's challenge was known carried none, and must not throw
    /// away the token the other requests share.
    async fn invalidate_ecr(&self, auth: &Auth) {
        if let (CredentialSource::Ecr { host, role_arn }, Some(used)) = (&self.creds, &auth.ecr) {
            self.ecr.invalidate(host, role_arn.as_deref(), used).await;
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> Error {
        let mut message = error_chain(e);
        if !is_tls_failure(e) {
            return Error::Transport {
                registry: self.host.clone(),
                message,
            };
        }
        // rustls' words for an HTTP answer to a TLS hello.
        if message.contains("InvalidContentType") {
            message.push_str(
                " (the registry seems to speak plain HTTP; if it should, mark it with \
                 --plain-http or plain_http in the registry settings)",
            );
        }
        Error::Tls {
            registry: self.host.clone(),
            message,
        }
    }

    async fn status_error(&self, resp: Response) -> Error {
        let status = resp.status();
        let body = read_error_text(resp).await;
        let (code, message) = error_message(&body);
        match status {
            StatusCode::UNAUTHORIZED => {
                let anonymous = matches!(
                    &self.creds,
                    CredentialSource::Static(Credentials::Anonymous)
                );
                Error::Auth {
                    registry: self.host.clone(),
                    message: if anonymous {
                        format!(
                            "the registry needs credentials and none were found ({message}); \
                             give them with --src-creds/--dest-creds, the registry settings file, \
                             or a Docker config login"
                        )
                    } else {
                        format!("the registry refused the credentials ({message})")
                    },
                }
            }
            StatusCode::FORBIDDEN => Error::Denied {
                registry: self.host.clone(),
                message,
            },
            _ => Error::Registry {
                registry: self.host.clone(),
                status: status.as_u16(),
                code,
                message,
            },
        }
    }

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

    async fn get_manifest_opt(&self, repo: &str, reference: &str) -> Result<Option<Manifest>> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"));
        let what = format!("manifest {}/{repo}@{reference}", self.host);
        // `send` retries until the headers arrive; a body cut short is
        // retried here with the same budget.
        let mut delays = retry::backoff();
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
                Err(e) if is_transient(&e) => match delays.next() {
                    Some(d) => {
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(registry = %self.host, error = %error_chain(&e), "manifest body cut short; retrying");
                        tokio::time::sleep(d).await;
                    }
                    None => return Err(self.transport_error(&e)),
                },
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
        #[derive(serde::Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut url = self.url(&format!("v2/{repo}/tags/list"));
        url.query_pairs_mut()
            .append_pair("n", &page.clamp(1, 1000).to_string());
        let pages: Vec<Tags> = self
            .paginate(
                &Scope::pull(repo),
                url,
                &format!("tags of {}/{repo}", self.host),
            )
            .await?;
        Ok(pages
            .into_iter()
            .flat_map(|p| p.tags.unwrap_or_default())
            .collect())
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
    async fn paginate<T: serde::de::DeserializeOwned>(
        &self,
        scope: &Scope,
        first: Url,
        what: &str,
    ) -> Result<Vec<T>> {
        let mut pages = Vec::new();
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
            pages.push(serde_json::from_slice(&body).map_err(|e| Error::Registry {
                registry: self.host.clone(),
                status: 200,
                code: None,
                message: format!("{what}: the answer is not the expected JSON: {e}"),
            })?);
        }
        Ok(pages)
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

    fn location(&self, resp: &Response) -> Result<Url> {
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
            .http
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
                self.invalidate_ecr(&auth).await;
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
            .send(&Scope::pull(repo), |c| c.get(url.clone()))
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
fn next_link(header: &str) -> Option<String> {
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

/// The credentials one request carried.
#[derive(Debug, Default)]
struct Auth {
    header: Option<String>,
    /// The ECR token in `header`, so only its refusal invalidates it.
    ecr: Option<Credentials>,
    /// A bearer token issued for the request's scope.
    bearer: bool,
}

impl Auth {
    fn bearer(header: String) -> Auth {
        Auth {
            header: Some(header),
            ecr: None,
            bearer: true,
        }
    }
}

/// Whether a 401's challenge says the token lacks the scope
/// (`error="insufficient_scope"`), rather than that the login is bad.
fn insufficient_scope(h: &HeaderMap) -> bool {
    h.get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("insufficient_scope"))
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

fn header_str(h: &HeaderMap, name: impl reqwest::header::AsHeaderName) -> Option<String> {
    h.get(name)?.to_str().ok().map(|s| s.trim().to_string())
}

fn is_transient(e: &reqwest::Error) -> bool {
    (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()) && !is_tls_failure(e)
}

/// A refused certificate or a server that does not speak TLS: the same
/// again later, so not worth a retry.
fn is_tls_failure(e: &reqwest::Error) -> bool {
    let chain = error_chain(e);
    e.is_connect()
        && (chain.contains("InvalidContentType")
            || chain.contains("certificate")
            || chain.contains("HandshakeFailure"))
}

/// An error with its causes ("error sending request: connection refused").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_msg = s.to_string();
        if !msg.contains(&s_msg) {
            msg.push_str(": ");
            msg.push_str(&s_msg);
        }
        src = s.source();
    }
    msg
}

async fn read_limited(
    mut resp: Response,
    limit: usize,
) -> std::result::Result<Bytes, reqwest::Error> {
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await? {
        buf.extend_from_slice(&chunk);
        if buf.len() > limit {
            break;
        }
    }
    Ok(buf.freeze())
}

async fn read_error_text(resp: Response) -> String {
    match read_limited(resp, 16 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b[..b.len().min(16 * 1024)]).into_owned(),
        Err(e) => format!("(could not read the error body: {e})"),
    }
}

/// The distribution error body `{"errors":[{"code":..,"message":..}]}`, or the text.
fn error_message(body: &str) -> (Option<String>, String) {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(b) = serde_json::from_str::<Body>(body)
        && let Some(first) = b.errors.first()
    {
        let msg = if first.message.is_empty() {
            first.code.to_ascii_lowercase().replace('_', " ")
        } else {
            first.message.clone()
        };
        return (Some(first.code.clone()).filter(|c| !c.is_empty()), msg);
    }
    let text: String = body.trim().chars().take(300).collect();
    (
        None,
        if text.is_empty() {
            "no details given".into()
        } else {
            text
        },
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn finds_the_next_link() {
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

    use super::*;

    #[test]
    fn reads_docker_hub_pull_quotas() {
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

    #[test]
    fn scopes() {
        assert_eq!(Scope::pull("a/b").key(), "repository:a/b:pull");
        assert_eq!(Scope::push("a").key(), "repository:a:pull,push");
        assert_eq!(
            Scope::mount("dst", "src").params(),
            vec!["repository:dst:pull,push", "repository:src:pull"]
        );
    }

    #[test]
    fn error_bodies() {
        let (code, msg) = error_message(
            r#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:.."}]}"#,
        );
        assert_eq!(code.as_deref(), Some("MANIFEST_BLOB_UNKNOWN"));
        assert_eq!(msg, "blob unknown to registry");
        assert_eq!(error_message("").1, "no details given");
        assert_eq!(error_message("plain words").1, "plain words");
    }

    #[test]
    fn origins() {
        let a = Url::parse("https://r.example.com/v2/").unwrap();
        assert!(same_origin(
            &Url::parse("https://r.example.com:443/x").unwrap(),
            &a
        ));
        assert!(!same_origin(
            &Url::parse("https://s3.example.com/x").unwrap(),
            &a
        ));
        assert!(!same_origin(
            &Url::parse("http://r.example.com/x").unwrap(),
            &a
        ));
    }
}
