//! A recording registry front: it streams every request to a local registry
//! (bodies never buffered, so a client that dies mid-upload delivers a cut
//! upload) and records each one in order: method, path and query, status,
//! the `Authorization` it carried, and for requests with a body whether the
//! whole body arrived cleanly.
//!
//! Three modes a test may turn on:
//! - **Not validating** (`keep_manifests`): manifests are kept by the front
//!   itself, accepted whatever they reference, as a registry that checks
//!   nothing would. Each manifest PUT is checked against what is present at
//!   that moment (blobs upstream, children here), and every reference that
//!   was missing is recorded as a violation, so a test fails if mirrorfleet
//!   ever pushes a manifest before what it references. Manifest GETs and
//!   HEADs are answered from the same store, so skopeo can read through it.
//! - **Login** (`require_login`): requests without `Authorization` get 401
//!   with a basic challenge (the front accepts any login and strips it).
//! - **Redirects** (`redirect_blobs`): blob GETs answer 307 to a second
//!   listener of the front, which records what arrives there too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::serve::{Body, SyncStream, registry_error, relay, serve, upstream_request};

/// What the front does besides forwarding.
#[derive(Debug, Clone, Default)]
pub struct RecordingConfig {
    pub keep_manifests: bool,
    pub require_login: bool,
    pub redirect_blobs: bool,
}

/// One request, as the front saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// 0 for the front's own listener, 1 for the redirect target.
    pub listener: usize,
    pub method: String,
    /// Path and query.
    pub target: String,
    pub status: u16,
    pub authorization: Option<String>,
    /// For a request with a body: whether all of it arrived and ended cleanly.
    pub body_complete: Option<bool>,
}

impl Recorded {
    /// A blob upload closed with its digest (`PUT .../uploads/...?digest=`).
    pub fn completes_upload(&self) -> bool {
        self.method == "PUT"
            && self.target.contains("/blobs/uploads/")
            && self.target.contains("digest=")
    }
}

/// How much of a request's body arrived, and whether it broke off.
#[derive(Debug, Default)]
struct BodyTrack {
    bytes: u64,
    broken: bool,
    ended: bool,
}

/// A stored manifest.
#[derive(Debug, Clone)]
struct Stored {
    media_type: String,
    raw: Bytes,
    digest: String,
}

struct State {
    config: RecordingConfig,
    upstream: String,
    addr: String,
    redirect_addr: String,
    http: reqwest::Client,
    log: Mutex<Vec<Recorded>>,
    /// (repository, tag or digest) → manifest.
    manifests: Mutex<HashMap<(String, String), Stored>>,
    violations: Mutex<Vec<String>>,
}

/// A running front; stops when dropped.
pub struct RecordingFront {
    /// `127.0.0.1:PORT`, a plain-HTTP registry host.
    pub addr: String,
    state: Arc<State>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for RecordingFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingFront")
            .field("addr", &self.addr)
            .finish()
    }
}

impl RecordingFront {
    /// A front on the plain-HTTP registry `upstream` (`host:port`).
    pub fn start(upstream: &str, config: RecordingConfig) -> Result<RecordingFront> {
        let holder: Arc<Mutex<Option<Arc<State>>>> = Arc::new(Mutex::new(None));
        let h = holder.clone();
        let upstream = upstream.to_string();
        let (addrs, stop) = serve(2, move |addrs| {
            let state = Arc::new(State {
                config,
                upstream,
                addr: addrs[0].clone(),
                redirect_addr: addrs[1].clone(),
                http: reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .http1_only()
                    .build()
                    .expect("a plain reqwest client builds"),
                log: Mutex::new(Vec::new()),
                manifests: Mutex::new(HashMap::new()),
                violations: Mutex::new(Vec::new()),
            });
            *h.lock().unwrap() = Some(state.clone());
            move |listener: usize, req: Request<Incoming>| {
                let state = state.clone();
                async move { state.handle(listener, req).await }
            }
        })?;
        let state = holder
            .lock()
            .unwrap()
            .clone()
            .expect("set before the address is sent");
        Ok(RecordingFront {
            addr: addrs[0].clone(),
            state,
            _stop: stop,
        })
    }

    /// Every request so far, in the order they were answered.
    pub fn log(&self) -> Vec<Recorded> {
        self.state.log.lock().unwrap().clone()
    }

    /// References a manifest PUT named before they were present.
    pub fn violations(&self) -> Vec<String> {
        self.state.violations.lock().unwrap().clone()
    }
}

/// `/v2/<repo>/manifests/<reference>` → (repo, reference).
fn manifest_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/v2/")?;
    let i = rest.find("/manifests/")?;
    Some((
        rest[..i].to_string(),
        rest[i + "/manifests/".len()..].to_string(),
    ))
}

impl State {
    fn record(&self, r: Recorded) {
        self.log.lock().unwrap().push(r);
    }

    async fn handle(
        self: Arc<Self>,
        listener: usize,
        req: Request<Incoming>,
    ) -> std::io::Result<Response<Body>> {
        let method = req.method().as_str().to_string();
        let target = req
            .uri()
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string());
        let authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let length = req
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let has_body =
            length.is_some_and(|l| l > 0) || req.headers().contains_key("transfer-encoding");
        let completion = Arc::new(Mutex::new(BodyTrack::default()));
        let answer = self
            .answer(
                listener,
                req,
                &method,
                &target,
                authorization.is_some(),
                completion.clone(),
            )
            .await;
        let status = answer.as_ref().map_or(0, |r| r.status().as_u16());
        let body_complete = has_body.then(|| {
            let t = completion.lock().unwrap();
            !t.broken && (t.ended || length.is_some_and(|l| t.bytes == l))
        });
        self.record(Recorded {
            listener,
            method,
            target,
            status,
            authorization,
            body_complete,
        });
        answer
    }

    async fn answer(
        &self,
        listener: usize,
        req: Request<Incoming>,
        method: &str,
        target: &str,
        authed: bool,
        completion: Arc<Mutex<BodyTrack>>,
    ) -> std::io::Result<Response<Body>> {
        let path = target.split('?').next().unwrap_or_default().to_string();
        if listener == 1 {
            // The redirect target: a presigned URL needs no login.
            let blob = path.trim_start_matches('/').to_string();
            return self.forward(req, &format!("/v2/{blob}"), completion).await;
        }
        if self.config.require_login && !authed {
            let mut r = registry_error(401, "UNAUTHORIZED", "authentication required");
            r.headers_mut().insert(
                "www-authenticate",
                hyper::header::HeaderValue::from_static("Basic realm=\"recording\""),
            );
            return Ok(r);
        }
        if self.config.redirect_blobs
            && method == "GET"
            && path.contains("/blobs/sha256:")
            && !path.contains("/uploads/")
        {
            let blob = path.trim_start_matches("/v2/");
            let location = format!(
                "http://{}/{blob}?X-Amz-Signature=recording",
                self.redirect_addr
            );
            let mut r = registry_error(307, "REDIRECT", "see Location");
            r.headers_mut().insert(
                "location",
                hyper::header::HeaderValue::from_str(&location).map_err(std::io::Error::other)?,
            );
            return Ok(r);
        }
        if self.config.keep_manifests
            && let Some((repo, reference)) = manifest_path(&path)
        {
            return match method {
                "PUT" => self.keep_manifest(req, &repo, &reference, completion).await,
                "GET" | "HEAD" => Ok(self.serve_manifest(&repo, &reference, method == "HEAD")),
                _ => Ok(registry_error(405, "UNSUPPORTED", "not here")),
            };
        }
        self.forward(req, target, completion).await
    }

    async fn keep_manifest(
        &self,
        req: Request<Incoming>,
        repo: &str,
        reference: &str,
        completion: Arc<Mutex<BodyTrack>>,
    ) -> std::io::Result<Response<Body>> {
        let media_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let raw = req
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        {
            let mut t = completion.lock().unwrap();
            t.bytes = raw.len() as u64;
            t.ended = true;
        }
        let digest = crate::sha256(&raw);
        let v: serde_json::Value = serde_json::from_slice(&raw).unwrap_or_default();
        // What must be present before this manifest is: children (kept
        // here) and blobs (upstream).
        let mut missing = Vec::new();
        for child in v["manifests"].as_array().into_iter().flatten() {
            let d = child["digest"].as_str().unwrap_or_default();
            if !self
                .manifests
                .lock()
                .unwrap()
                .contains_key(&(repo.to_string(), d.to_string()))
            {
                missing.push(format!("child {d}"));
            }
        }
        let blobs = v["config"]
            .as_object()
            .into_iter()
            .chain(
                v["layers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|l| l.as_object()),
            )
            .filter(|b| b.get("urls").is_none())
            .filter_map(|b| b.get("digest").and_then(|d| d.as_str()).map(str::to_string))
            .collect::<Vec<_>>();
        for d in blobs {
            let url = format!("http://{}/v2/{repo}/blobs/{d}", self.upstream);
            let present = self
                .http
                .head(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if !present {
                missing.push(format!("blob {d}"));
            }
        }
        if !missing.is_empty() {
            self.violations.lock().unwrap().push(format!(
                "{repo}:{reference} ({digest}) pushed before {}",
                missing.join(", ")
            ));
        }
        let stored = Stored {
            media_type,
            raw,
            digest: digest.clone(),
        };
        let mut m = self.manifests.lock().unwrap();
        m.insert((repo.to_string(), digest.clone()), stored.clone());
        m.insert((repo.to_string(), reference.to_string()), stored);
        drop(m);
        let mut r = registry_error(201, "CREATED", "");
        let h = r.headers_mut();
        h.insert(
            "docker-content-digest",
            hyper::header::HeaderValue::from_str(&digest).map_err(std::io::Error::other)?,
        );
        h.insert(
            "location",
            hyper::header::HeaderValue::from_str(&format!("/v2/{repo}/manifests/{digest}"))
                .map_err(std::io::Error::other)?,
        );
        Ok(r)
    }

    fn serve_manifest(&self, repo: &str, reference: &str, head: bool) -> Response<Body> {
        let found = self
            .manifests
            .lock()
            .unwrap()
            .get(&(repo.to_string(), reference.to_string()))
            .cloned();
        let Some(m) = found else {
            return registry_error(404, "MANIFEST_UNKNOWN", "manifest unknown");
        };
        let body = if head { Bytes::new() } else { m.raw.clone() };
        Response::builder()
            .status(200)
            .header("content-type", m.media_type)
            .header("docker-content-digest", m.digest)
            .header("content-length", m.raw.len())
            .body(
                Full::new(body)
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .expect("stored manifest parts are valid")
    }

    /// Stream the request to `target` upstream and the answer back; whether
    /// the request body arrived whole is noted in `completion`.
    async fn forward(
        &self,
        req: Request<Incoming>,
        target: &str,
        completion: Arc<Mutex<BodyTrack>>,
    ) -> std::io::Result<Response<Body>> {
        let (parts, body) = req.into_parts();
        let track = completion.clone();
        let stream = body.into_data_stream().map(move |chunk| {
            let mut t = track.lock().unwrap();
            match &chunk {
                Ok(b) => t.bytes += b.len() as u64,
                Err(_) => t.broken = true,
            }
            chunk.map_err(std::io::Error::other)
        });
        let body = reqwest::Body::wrap_stream(SyncStream(Box::pin(stream)));
        let url = format!("http://{}{target}", self.upstream);
        // The upstream takes no login: the front's own is stripped.
        let out = upstream_request(&self.http, &parts, url, &["authorization"])?;
        let upstream = match out.body(body).send().await {
            Ok(r) => r,
            // The client's body broke off: the upload is cut at the registry.
            Err(e) => return Err(std::io::Error::other(e)),
        };
        Ok(relay(upstream, &self.upstream, &self.addr))
    }
}
