//! An ECR double: a front on a local distribution registry that answers the
//! Docker Registry API the way Amazon ECR does, and a gate in front of moto
//! that enforces IAM on ECR's control plane. Both allow exactly what one role
//! of `cloudformation/mirrorfleet.yaml` allows ([`crate::iam`]).
//!
//! What the front does as ECR does, and where that is written down:
//! - **IAM per call.** Each call needs its action on the repository's ARN:
//!   manifest HEAD/GET `ecr:BatchGetImage`, blob GET
//!   `ecr:GetDownloadUrlForLayer`, blob HEAD `ecr:BatchCheckLayerAvailability`,
//!   upload POST `ecr:InitiateLayerUpload`, PATCH `ecr:UploadLayerPart`,
//!   closing PUT `ecr:CompleteLayerUpload` (and `UploadLayerPart` with a body),
//!   manifest PUT `ecr:PutImage`, `tags/list` `ecr:ListImages` (ECR's
//!   "Registry authentication" and IAM pages; skopeo#726 for the listing).
//!   A refused call gets 403 `DENIED` "User: ... is not authorized to perform:
//!   ecr:X on resource: ARN because no identity-based policy allows the ecr:X
//!   action" (the body ECR sends, everything2/everything2#2562).
//! - **Repositories must exist** (ECR has no push-to-create): pushes to a
//!   repository moto does not know get 404 `NAME_UNKNOWN`.
//! - **Immutable tags** (the repository's mutability and exclusion filters,
//!   from moto): any push to an existing immutable tag gets 400 `TAG_INVALID`
//!   "The image tag 'x' already exists in the 'r' repository and cannot be
//!   overwritten because the repository is immutable.", even of the same
//!   digest (aws/containers-roadmap#2179).
//! - **Blob GETs** answer 307 to a second host, the "S3" bucket, whose
//!   presigned URL refuses any `Authorization` header with 400
//!   `InvalidArgument` "Only one auth mechanism allowed" (S3's answer).
//! - **Manifest PUT** answers without `Location`; PATCH answers 201, not 202
//!   (dotnet/sdk-container-builds#279).
//! - **Throttling** per action at the configured rate: 429 `TOOMANYREQUESTS`
//!   "Rate exceeded" (ECR's common errors).
//! - **Refusals:** a 0-byte blob (400 `BLOB_UPLOAD_INVALID` "... cannot be
//!   completed because it does not have any parts", radius-project/radius#7887;
//!   `EmptyUploadException`), an OCI 1.1 artifact manifest with a `subject`
//!   (405, aws/containers-roadmap#2783), a cross-repository mount unless
//!   enabled (the POST opens a normal upload: 202), no referrers API and no
//!   catalog (404).
//! - **Expired tokens** on command: 403 `DENIED` "Your authorization token has
//!   expired. Reauthenticate and try again." (aws/aws-cli#6580).
//!
//! The gate in front of moto ([`crate::gate`]) enforces the same role on
//! the AWS APIs.
//!
//! Each runs on a runtime of its own thread, so tests may block on a child
//! process while it serves.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use mirrorfleet_common::registry::ecr::TagMutability;

use crate::iam::{ACCOUNT, Policy};

pub use crate::gate::{AwsGate, note_exclusions};
use crate::serve::{Body, SyncStream, json, registry_error, relay, serve, upstream_request};

/// The digest of zero bytes: a blob ECR cannot store.
const EMPTY_SHA256: &str =
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// How the front behaves.
#[derive(Debug, Clone)]
pub struct EcrConfig {
    /// The plain-HTTP distribution registry holding the data (`host:port`).
    pub upstream: String,
    /// Its basic-auth login, which is also the ECR token callers present.
    pub upstream_creds: String,
    /// moto, where repositories and their mutability live.
    pub moto: String,
    /// What the caller's role may do.
    pub policy: Policy,
    /// Cross-repository mounts (ECR's `BLOB_MOUNTING` account setting).
    pub mount_enabled: bool,
    /// Requests per second per action before 429 (`ecr:PutImage` → 10).
    pub rates: BTreeMap<String, u32>,
    /// The next N requests of an action answered 429, whatever the rate.
    pub throttle_first: BTreeMap<String, u32>,
    /// The region the registry is in (`us-east-1`): IAM checks ARNs there.
    pub region: String,
    /// The registry's account: IAM checks ARNs there, and only a token
    /// issued for it is accepted (moto's, `AWS:<account>-auth-token`).
    pub account: String,
}

impl EcrConfig {
    /// A front for `role` of the template, over the stack's ECR registry.
    pub fn for_role(stack: &crate::Stack, role: &str) -> EcrConfig {
        EcrConfig {
            upstream: stack.ecr.clone(),
            upstream_creds: stack.ecr_creds.clone(),
            moto: stack.moto.clone(),
            policy: Policy::of(role),
            mount_enabled: false,
            rates: BTreeMap::new(),
            throttle_first: BTreeMap::new(),
            region: crate::iam::REGION.to_string(),
            account: ACCOUNT.to_string(),
        }
    }

    /// The ARN IAM checks for `repository` of this registry.
    fn repository_arn(&self, repository: &str) -> String {
        let place = crate::iam::Place {
            region: self.region.clone(),
            account: self.account.clone(),
            ..crate::iam::Place::default()
        };
        Policy::repository_arn_in(&place, repository)
    }
}

/// One request the front answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub action: String,
    pub method: String,
    pub path: String,
    pub status: u16,
}

struct State {
    config: EcrConfig,
    addr: String,
    s3_addr: String,
    http: reqwest::Client,
    ecr: aws_sdk_ecr::Client,
    seen: Mutex<Vec<Seen>>,
    s3_requests: AtomicU64,
    s3_refused: AtomicU64,
    expire_after: AtomicU64,
    expire_left: AtomicU64,
    expired: AtomicU64,
    /// Tags whose next manifest PUT is committed and its reply lost.
    lose_reply: Mutex<HashSet<String>>,
    windows: Mutex<HashMap<String, (Instant, u32)>>,
    throttle_first: Mutex<BTreeMap<String, u32>>,
    known_repos: Mutex<HashSet<String>>,
}

/// A running front; stops when dropped.
pub struct EcrDouble {
    /// `127.0.0.1:PORT`: the endpoint for the ECR host in registry settings.
    pub addr: String,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for EcrDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcrDouble")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for EcrDouble {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn moto_ecr(endpoint: &str, region: &str) -> aws_sdk_ecr::Client {
    let conf = aws_sdk_ecr::config::Builder::new()
        .behavior_version(aws_sdk_ecr::config::BehaviorVersion::latest())
        .region(aws_sdk_ecr::config::Region::new(region.to_string()))
        .endpoint_url(endpoint)
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .build();
    aws_sdk_ecr::Client::from_conf(conf)
}

impl EcrDouble {
    pub fn start(config: EcrConfig) -> Result<EcrDouble> {
        let holder: Arc<Mutex<Option<Arc<State>>>> = Arc::new(Mutex::new(None));
        let h = holder.clone();
        let (addrs, stop) = serve(2, move |addrs| {
            let throttle_first = config.throttle_first.clone();
            let state = Arc::new(State {
                http: reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .http1_only()
                    .build()
                    .expect("a plain reqwest client builds"),
                ecr: moto_ecr(&config.moto, &config.region),
                config,
                addr: addrs[0].clone(),
                s3_addr: addrs[1].clone(),
                seen: Mutex::new(Vec::new()),
                s3_requests: AtomicU64::new(0),
                s3_refused: AtomicU64::new(0),
                expire_after: AtomicU64::new(0),
                expire_left: AtomicU64::new(0),
                expired: AtomicU64::new(0),
                lose_reply: Mutex::new(HashSet::new()),
                windows: Mutex::new(HashMap::new()),
                throttle_first: Mutex::new(throttle_first),
                known_repos: Mutex::new(HashSet::new()),
            });
            *h.lock().unwrap() = Some(state.clone());
            move |listener: usize, req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    if listener == 1 {
                        state.s3(req).await
                    } else {
                        state.handle(req).await
                    }
                }
            }
        })?;
        let state = holder
            .lock()
            .unwrap()
            .clone()
            .expect("set before the address is sent");
        Ok(EcrDouble {
            addr: addrs[0].clone(),
            state,
            stop: Some(stop),
        })
    }

    /// Every request answered so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// How many requests needed `action`, and how many of those were answered `status`.
    pub fn count(&self, action: &str, status: Option<u16>) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.action == action && status.is_none_or(|c| c == s.status))
            .count()
    }

    /// Blob GETs that reached the "S3" host, and those it refused for carrying `Authorization`.
    pub fn s3(&self) -> (u64, u64) {
        (
            self.state.s3_requests.load(Ordering::Relaxed),
            self.state.s3_refused.load(Ordering::Relaxed),
        )
    }

    /// After `after` more authenticated requests, the next `count` are
    /// refused as expired (moto's tokens never change, so the double cannot
    /// tell a fetched-again token from the old one by its value).
    pub fn expire_tokens(&self, after: u64, count: u64) {
        self.state.expire_after.store(after, Ordering::Relaxed);
        self.state.expire_left.store(count, Ordering::Relaxed);
    }

    /// Requests refused as expired so far.
    pub fn expired(&self) -> u64 {
        self.state.expired.load(Ordering::Relaxed)
    }

    /// The next manifest PUT of `tag` is written, and its reply lost.
    pub fn lose_reply_of_put(&self, tag: &str) {
        self.state
            .lose_reply
            .lock()
            .unwrap()
            .insert(tag.to_string());
    }
}

/// What a registry request is: its IAM action and repository.
fn classify(method: &str, path: &str, query: &str) -> (String, Option<String>) {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return ("none".into(), None);
    };
    if rest.is_empty() {
        return ("ping".into(), None);
    }
    if rest.starts_with("_catalog") {
        return ("catalog".into(), None);
    }
    let split = |marker: &str| {
        rest.find(marker)
            .map(|i| (&rest[..i], &rest[i + marker.len()..]))
    };
    if let Some((repo, _)) = split("/manifests/") {
        let action = match method {
            "PUT" => "ecr:PutImage",
            "DELETE" => "ecr:BatchDeleteImage",
            _ => "ecr:BatchGetImage",
        };
        return (action.into(), Some(repo.to_string()));
    }
    if let Some((repo, tail)) = split("/blobs/uploads") {
        let action = match method {
            "POST" => "ecr:InitiateLayerUpload",
            "PATCH" => "ecr:UploadLayerPart",
            "PUT" => "ecr:CompleteLayerUpload",
            _ => "ecr:UploadLayerPart",
        };
        let _ = (tail, query);
        return (action.into(), Some(repo.to_string()));
    }
    if let Some((repo, _)) = split("/blobs/") {
        let action = if method == "HEAD" {
            "ecr:BatchCheckLayerAvailability"
        } else {
            "ecr:GetDownloadUrlForLayer"
        };
        return (action.into(), Some(repo.to_string()));
    }
    if let Some((repo, _)) = split("/tags/list") {
        return ("ecr:ListImages".into(), Some(repo.to_string()));
    }
    if let Some((repo, _)) = split("/referrers/") {
        return ("referrers".into(), Some(repo.to_string()));
    }
    ("unknown".into(), None)
}

fn query_param(query: &str, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn denied(policy: &Policy, action: &str, resource: &str) -> String {
    format!(
        "User: arn:aws:sts::{ACCOUNT}:assumed-role/{role}/mirrorfleet is not authorized to perform: \
         {action} on resource: {resource} because no identity-based policy allows the {action} action",
        role = policy.role
    )
}

impl State {
    fn record(&self, action: &str, method: &str, path: &str, status: u16) {
        self.seen.lock().unwrap().push(Seen {
            action: action.to_string(),
            method: method.to_string(),
            path: path.to_string(),
            status,
        });
    }

    /// Whether `action` is over its rate this second.
    fn throttled(&self, action: &str) -> bool {
        {
            let mut first = self.throttle_first.lock().unwrap();
            if let Some(n) = first.get_mut(action).filter(|n| **n > 0) {
                *n -= 1;
                return true;
            }
        }
        let Some(&rate) = self.config.rates.get(action) else {
            return false;
        };
        let mut w = self.windows.lock().unwrap();
        let now = Instant::now();
        let slot = w.entry(action.to_string()).or_insert((now, 0));
        if now.duration_since(slot.0) >= Duration::from_secs(1) {
            *slot = (now, 0);
        }
        slot.1 += 1;
        slot.1 > rate
    }

    async fn repository_mutability(&self, repo: &str) -> Option<TagMutability> {
        let out = describe_as(&self.ecr, &self.config.account, repo).await?;
        let r = out.repositories().first()?;
        self.known_repos.lock().unwrap().insert(repo.to_string());
        Some(TagMutability::from_ecr(
            r.image_tag_mutability().map_or("MUTABLE", |m| m.as_str()),
            r.image_tag_mutability_exclusion_filters()
                .iter()
                .map(|f| f.filter().to_string())
                .collect(),
        ))
    }

    async fn repository_exists(&self, repo: &str) -> bool {
        if self.known_repos.lock().unwrap().contains(repo) {
            return true;
        }
        self.repository_mutability(repo).await.is_some()
    }

    fn upstream_auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.config.upstream_creds.split_once(':') {
            Some((u, p)) => rb.basic_auth(u, Some(p)),
            None => rb,
        }
    }

    /// Whether a request's basic login is the token moto issues for this
    /// registry's account.
    fn token_is_ours(&self, req: &Request<Incoming>) -> bool {
        use base64::Engine as _;
        let want = format!("AWS:{}-auth-token", self.config.account);
        req.headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .is_some_and(|login| login == want.as_bytes())
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> std::io::Result<Response<Body>> {
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let (action, repo) = classify(&method, &path, &query);
        let authed = req.headers().contains_key("authorization");
        let answer = if !authed {
            // As ECR: a 401 with the basic challenge first (from upstream).
            self.forward(req, &query).await
        } else {
            self.authorised(req, &action, repo.as_deref(), &method, &path, &query)
                .await
        };
        let status = answer.as_ref().map_or(0, |r| r.status().as_u16());
        self.record(&action, &method, &path, status);
        answer
    }

    async fn authorised(
        &self,
        req: Request<Incoming>,
        action: &str,
        repo: Option<&str>,
        method: &str,
        path: &str,
        query: &str,
    ) -> std::io::Result<Response<Body>> {
        let policy = &self.config.policy;
        let waiting = self
            .expire_after
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if !waiting
            && self
                .expire_left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        {
            self.expired.fetch_add(1, Ordering::Relaxed);
            return Ok(registry_error(
                403,
                "DENIED",
                "Your authorization token has expired. Reauthenticate and try again.",
            ));
        }
        // A token is issued for one registry.
        if !self.token_is_ours(&req) {
            return Ok(registry_error(
                403,
                "DENIED",
                &format!(
                    "Your authorization token is not valid for registry {}",
                    self.config.account
                ),
            ));
        }
        // The token itself came from GetAuthorizationToken.
        if !policy.allows("ecr:GetAuthorizationToken", "*") {
            return Ok(registry_error(
                403,
                "DENIED",
                &denied(policy, "ecr:GetAuthorizationToken", "*"),
            ));
        }
        match action {
            "ping" => return self.forward(req, query).await,
            "catalog" | "referrers" | "unknown" | "none" => {
                return Ok(registry_error(
                    404,
                    "NOT_FOUND",
                    "Requested resource not found",
                ));
            }
            _ => {}
        }
        let Some(repo) = repo else {
            return Ok(registry_error(
                404,
                "NOT_FOUND",
                "Requested resource not found",
            ));
        };
        let arn = self.config.repository_arn(repo);
        let mut needed = vec![(action.to_string(), arn.clone())];
        let mount_from = (method == "POST")
            .then(|| query_param(query, "from"))
            .flatten();
        if let (Some(from), true) = (&mount_from, self.config.mount_enabled) {
            needed.push((
                "ecr:GetDownloadUrlForLayer".into(),
                self.config.repository_arn(from),
            ));
        }
        let has_body = req
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v != "0");
        if action == "ecr:CompleteLayerUpload" && has_body {
            needed.push(("ecr:UploadLayerPart".into(), arn.clone()));
        }
        for (a, r) in &needed {
            if !policy.allows(a, r) {
                return Ok(registry_error(403, "DENIED", &denied(policy, a, r)));
            }
        }
        if self.throttled(action) {
            return Ok(registry_error(429, "TOOMANYREQUESTS", "Rate exceeded"));
        }
        let pushes = matches!(
            action,
            "ecr:PutImage"
                | "ecr:InitiateLayerUpload"
                | "ecr:UploadLayerPart"
                | "ecr:CompleteLayerUpload"
        );
        if pushes && !self.repository_exists(repo).await {
            return Ok(registry_error(
                404,
                "NAME_UNKNOWN",
                &format!(
                    "The repository with name '{repo}' does not exist in the registry with id '{}'",
                    self.config.account
                ),
            ));
        }
        match action {
            "ecr:GetDownloadUrlForLayer" => {
                let digest = path.rsplit('/').next().unwrap_or_default();
                let sig = hex::encode(&sha2_digest(format!("{repo}/{digest}").as_bytes())[..8]);
                let location = format!(
                    "http://{}/{repo}/{digest}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&X-Amz-Signature={sig}",
                    self.s3_addr
                );
                Ok(json(307, &[("location", &location)], String::new()))
            }
            "ecr:CompleteLayerUpload"
                if query_param(query, "digest").as_deref() == Some(EMPTY_SHA256) =>
            {
                let id = path.rsplit('/').next().unwrap_or_default();
                Ok(registry_error(
                    400,
                    "BLOB_UPLOAD_INVALID",
                    &format!(
                        "The upload with id '{id}' in the repository with name '{repo}' in registry with id \
                         '{ACCOUNT}' cannot be completed because it does not have any parts."
                    ),
                ))
            }
            "ecr:InitiateLayerUpload" if mount_from.is_some() && !self.config.mount_enabled => {
                // Mounting is off: the POST opens an ordinary upload.
                let plain: String = url::form_urlencoded::parse(query.as_bytes())
                    .filter(|(k, _)| k != "mount" && k != "from")
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("&");
                self.forward(req, &plain).await
            }
            "ecr:PutImage" => self.put_image(req, repo, path, query).await,
            "ecr:UploadLayerPart" => {
                let mut r = self.forward(req, query).await?;
                if r.status() == 202 {
                    *r.status_mut() = hyper::StatusCode::CREATED;
                }
                Ok(r)
            }
            _ => self.forward(req, query).await,
        }
    }

    async fn put_image(
        &self,
        req: Request<Incoming>,
        repo: &str,
        path: &str,
        query: &str,
    ) -> std::io::Result<Response<Body>> {
        let reference = path.rsplit('/').next().unwrap_or_default().to_string();
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if manifest.get("subject").is_some() && manifest.get("artifactType").is_some() {
            return Ok(registry_error(
                405,
                "UNSUPPORTED",
                "Method Not Allowed: the manifest is not supported",
            ));
        }
        if !reference.starts_with("sha256:") {
            let mutability = self.repository_mutability(repo).await.unwrap_or_default();
            if mutability.is_immutable(&reference) && self.upstream_has_tag(repo, &reference).await
            {
                return Ok(registry_error(
                    400,
                    "TAG_INVALID",
                    &format!(
                        "The image tag '{reference}' already exists in the '{repo}' repository and cannot \
                         be overwritten because the repository is immutable."
                    ),
                ));
            }
        }
        let lose = self.lose_reply.lock().unwrap().remove(&reference);
        let mut r = self.forward_full(parts, body, query).await?;
        r.headers_mut().remove("location");
        if lose && r.status().is_success() {
            // Written, and the caller never hears of it.
            return Err(std::io::Error::other("ECR double: reply lost"));
        }
        Ok(r)
    }

    async fn upstream_has_tag(&self, repo: &str, tag: &str) -> bool {
        let url = format!("http://{}/v2/{repo}/manifests/{tag}", self.config.upstream);
        self.upstream_auth(self.http.head(url))
            .header(
                "accept",
                "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
                 application/vnd.docker.distribution.manifest.list.v2+json, \
                 application/vnd.docker.distribution.manifest.v2+json",
            )
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Forward with the body streamed, never buffered.
    async fn forward(
        &self,
        req: Request<Incoming>,
        query: &str,
    ) -> std::io::Result<Response<Body>> {
        let (parts, body) = req.into_parts();
        let stream = body.into_data_stream().map_err(std::io::Error::other);
        let body = reqwest::Body::wrap_stream(SyncStream(Box::pin(stream)));
        self.send_upstream(parts, query, body).await
    }

    async fn forward_full(
        &self,
        parts: hyper::http::request::Parts,
        body: Bytes,
        query: &str,
    ) -> std::io::Result<Response<Body>> {
        self.send_upstream(parts, query, reqwest::Body::from(body))
            .await
    }

    async fn send_upstream(
        &self,
        parts: hyper::http::request::Parts,
        query: &str,
        body: reqwest::Body,
    ) -> std::io::Result<Response<Body>> {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        let url = format!("http://{}{}{q}", self.config.upstream, parts.uri.path());
        // The caller's token was checked here; upstream gets its own login
        // (an unauthenticated request stays so, for the challenge).
        let authed = parts.headers.contains_key("authorization");
        let mut out = upstream_request(&self.http, &parts, url, &["authorization"])?;
        if authed {
            out = self.upstream_auth(out);
        }
        let upstream = out.body(body).send().await.map_err(std::io::Error::other)?;
        Ok(self.relay(upstream))
    }

    /// The upstream's answer, as the front's own (`Location` pointed back here).
    fn relay(&self, upstream: reqwest::Response) -> Response<Body> {
        relay(upstream, &self.config.upstream, &self.addr)
    }

    /// The "S3" host: presigned blob URLs; a request that also carries an
    /// `Authorization` header is refused, as S3 refuses two auth mechanisms.
    async fn s3(self: Arc<Self>, req: Request<Incoming>) -> std::io::Result<Response<Body>> {
        self.s3_requests.fetch_add(1, Ordering::Relaxed);
        if req.headers().contains_key("authorization") {
            self.s3_refused.fetch_add(1, Ordering::Relaxed);
            let mut r = Response::builder()
                .status(400)
                .header("content-type", "application/xml");
            r = r.header("x-amz-request-id", "double");
            return Ok(r
                .body(
                    Full::new(Bytes::from_static(
                        b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InvalidArgument</Code>\
<Message>Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string \
parameter or the Authorization header should be specified</Message><ArgumentName>Authorization</ArgumentName></Error>",
                    ))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
                )
                .expect("static response parts are valid"));
        }
        let path = req.uri().path().trim_start_matches('/').to_string();
        let Some((repo, digest)) = path.rsplit_once('/') else {
            return Ok(registry_error(404, "NoSuchKey", "no such key"));
        };
        let url = format!("http://{}/v2/{repo}/blobs/{digest}", self.config.upstream);
        let upstream = self
            .upstream_auth(self.http.get(url))
            .send()
            .await
            .map_err(std::io::Error::other)?;
        Ok(self.relay(upstream))
    }
}

/// `DescribeRepositories` of one repository as `account` (moto's
/// `x-moto-account-id`), `None` when it does not exist there.
async fn describe_as(
    ecr: &aws_sdk_ecr::Client,
    account: &str,
    repo: &str,
) -> Option<aws_sdk_ecr::operation::describe_repositories::DescribeRepositoriesOutput> {
    let account = account.to_string();
    ecr.describe_repositories()
        .registry_id(&account)
        .repository_names(repo)
        .customize()
        .mutate_request(move |r| {
            r.headers_mut().insert("x-moto-account-id", account.clone());
        })
        .send()
        .await
        .ok()
}

/// Whether moto holds `repo` in `account`'s registry in `region`.
pub async fn moto_has_repository(moto: &str, region: &str, account: &str, repo: &str) -> bool {
    describe_as(&moto_ecr(moto, region), account, repo)
        .await
        .is_some_and(|o| !o.repositories().is_empty())
}

fn sha2_digest(b: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).to_vec()
}

// ---------------------------------------------------------------- both

/// The ECR host name the tests use; its endpoint is a front's address.
pub const ECR_HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

/// A front and a gate for one role: what a process running as that role
/// of the deployed stack meets.
#[derive(Debug)]
pub struct EcrFront {
    pub double: EcrDouble,
    pub gate: AwsGate,
    _reader: AwsGate,
}

impl EcrFront {
    /// As `role` of the template (`WorkerRole`, `CopyRole`, `ControllerRole`).
    pub fn start(stack: &crate::Stack, role: &str) -> EcrFront {
        EcrFront::with(stack, EcrConfig::for_role(stack, role))
    }

    pub fn with(stack: &crate::Stack, mut config: EcrConfig) -> EcrFront {
        let gate = AwsGate::start(&stack.moto, config.policy.clone())
            .unwrap_or_else(|e| panic!("gate: {e:#}"));
        // The data plane reads repositories as ECR describes them (the
        // gate mends moto's answer); its own reads need no permission.
        let reader = AwsGate::start(&stack.moto, Policy::everything())
            .unwrap_or_else(|e| panic!("gate: {e:#}"));
        config.moto = reader.url.clone();
        gate.answer_images_from(crate::images::ImageSource {
            upstream: config.upstream.clone(),
            creds: config.upstream_creds.clone(),
        });
        let double = EcrDouble::start(config).unwrap_or_else(|e| panic!("ECR double: {e:#}"));
        EcrFront {
            double,
            gate,
            _reader: reader,
        }
    }

    /// Registry settings: the ECR host through the front, and `plain` hosts
    /// over plain HTTP, then `extra` YAML (an `ecr:` section).
    pub fn settings(&self, plain: &[&str], extra: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("{}.yaml", crate::unique("mf-registries")));
        let mut yaml = format!(
            "registries:\n  {ECR_HOST}:\n    endpoint: {}\n    plain_http: true\n",
            self.double.addr
        );
        for h in plain {
            yaml.push_str(&format!("  {h}:\n    plain_http: true\n"));
        }
        yaml.push_str(extra);
        std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    /// An ECR client as the role (through the gate): what ECR would answer.
    pub fn ecr_client(&self) -> aws_sdk_ecr::Client {
        moto_ecr(&self.gate.url, &self.double.state.config.region)
    }

    /// The AWS environment of the process: moto, through the gate.
    pub fn env(&self, stack: &crate::Stack) -> Vec<(&'static str, String)> {
        crate::moto_env_via(stack, &self.gate.url)
    }
}
