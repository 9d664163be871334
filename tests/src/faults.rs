//! A fault-injecting HTTP proxy for the reliability tests.
//!
//! It sits between mirrorfleet and one real registry of the local stack and,
//! per request, may answer 5xx or 429 itself, drop the connection half way
//! through a body, stall, flip a byte of a blob, strip headers, or pretend the
//! caller's token expired. Everything else is forwarded unchanged (`Location`
//! is rewritten to point back at the proxy, as a registry behind a load
//! balancer would do). Decisions come from a seeded RNG and every injected
//! fault is counted, so a test can say exactly what it survived.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Which faults to inject, as shares of the requests they apply to.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Answer 500/502/503 without forwarding.
    pub server_error: f64,
    /// Forward, then answer 500 anyway: the registry did the work but the
    /// caller cannot know (the nasty case for idempotency).
    pub error_after_forward: f64,
    /// Answer 429 with `Retry-After: 1`.
    pub throttle: f64,
    /// Forward, send the headers and half the body, then cut the connection.
    /// Requests without a response body get their connection cut instead.
    pub drop: f64,
    /// Wait this long before answering (for read timeouts).
    pub stall: f64,
    pub stall_for: Duration,
    /// Flip one byte of a blob GET's body.
    pub corrupt: f64,
    /// Headers removed from every response.
    pub omit_headers: Vec<String>,
    /// Throttle response bodies to this many bytes per second (0: no limit).
    pub bytes_per_second: u64,
    /// Only requests whose `METHOD /path` contains this get faults.
    pub only: Option<String>,
    /// Docker Hub's pull quota, `(limit, window seconds)`: manifest GET
    /// responses carry `ratelimit-limit`/`ratelimit-remaining`, one pull
    /// fewer each time (HEADs are free, as on Docker Hub).
    pub rate_limit_remaining: Option<(u64, u64)>,
}

/// An expired-token scenario: from request number `after` on, the
/// `Authorization` value in use is refused once as expired; a fresh one passes.
#[derive(Debug, Clone)]
pub enum Expiry {
    /// Bearer style: 401 with the registry's challenge; the rejected token
    /// stays rejected, as a real expired token would.
    Unauthorized { after: u64 },
    /// ECR style: 403 "Your authorization token has expired." for the next
    /// `count` requests. ECR tokens from moto are deterministic, so the
    /// proxy cannot tell a refreshed token from the old one by its value.
    EcrForbidden { after: u64, count: u64 },
}

/// What the proxy did, for assertions and reports.
#[derive(Debug, Default)]
pub struct Counts {
    pub requests: AtomicU64,
    pub server_errors: AtomicU64,
    pub errors_after_forward: AtomicU64,
    pub throttled: AtomicU64,
    pub dropped: AtomicU64,
    pub stalled: AtomicU64,
    pub corrupted: AtomicU64,
    pub expired: AtomicU64,
    /// Headers removed (not a fault of its own, so not in [`Counts::faults`]).
    pub stripped: AtomicU64,
    /// Faults that hit a blob transfer (a GET or an upload), which the
    /// engine answers by restarting the whole transfer.
    pub blob_faults: AtomicU64,
}

impl Counts {
    /// All injected faults together.
    pub fn faults(&self) -> u64 {
        [
            &self.server_errors,
            &self.errors_after_forward,
            &self.throttled,
            &self.dropped,
            &self.stalled,
            &self.corrupted,
            &self.expired,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Called with (method, path) of every request before it is handled.
pub type Hook = Arc<dyn Fn(&str, &str) + Send + Sync>;

struct Shared {
    upstream: String,
    addr: String,
    http: reqwest::Client,
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    expiry: Mutex<Option<Expiry>>,
    expired_tokens: Mutex<HashSet<String>>,
    ecr_expired_left: AtomicU64,
    pulls: AtomicU64,
    hook: Mutex<Option<Hook>>,
    counts: Counts,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    /// `127.0.0.1:PORT`, to be used as a plain-HTTP registry host.
    pub addr: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .finish()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Proxy to the plain-HTTP registry at `upstream` (`host:port`).
    pub async fn start(upstream: &str, faults: Faults, seed: u64) -> Result<FaultProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            addr: addr.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .http1_only()
                .build()?,
            faults: Mutex::new(faults),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            expiry: Mutex::new(None),
            expired_tokens: Mutex::new(HashSet::new()),
            ecr_expired_left: AtomicU64::new(0),
            pulls: AtomicU64::new(0),
            hook: Mutex::new(None),
            counts: Counts::default(),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { s.handle(req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), service)
                        .await;
                });
            }
        });
        Ok(FaultProxy { addr, shared, task })
    }

    pub fn counts(&self) -> &Counts {
        &self.shared.counts
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap() = faults;
    }

    pub fn set_expiry(&self, expiry: Expiry) {
        if let Expiry::EcrForbidden { count, .. } = &expiry {
            self.shared
                .ecr_expired_left
                .store(*count, Ordering::Relaxed);
        }
        *self.shared.expiry.lock().unwrap() = Some(expiry);
    }

    pub fn set_hook(&self, hook: Option<Hook>) {
        *self.shared.hook.lock().unwrap() = hook;
    }
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

enum Phase {
    Streaming,
    Fail,
    Done,
}

struct BodyState {
    stream: std::pin::Pin<Box<dyn futures_util::Stream<Item = std::io::Result<Bytes>> + Send>>,
    cut_at: u64,
    sent: u64,
    flip: bool,
    rate: u64,
    phase: Phase,
}

fn full(status: u16, headers: &[(&str, &str)], body: &'static str) -> Response<Body> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.header("content-type", "application/json")
        .body(
            Full::new(Bytes::from_static(body.as_bytes()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap()
}

/// The service's way to cut a connection without an answer.
fn cut() -> std::io::Error {
    std::io::Error::other("fault proxy: connection dropped")
}

impl Shared {
    fn note_blob_fault(&self, path: &str) {
        if path.contains("/blobs/") {
            self.counts.blob_faults.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn roll(&self, share: f64) -> bool {
        share > 0.0 && self.rng.lock().unwrap().random_bool(share.min(1.0))
    }

    /// The expired-token answer for this request, if the scenario says so.
    fn expired(&self, n: u64, auth: Option<&str>) -> Option<Response<Body>> {
        let expiry = self.expiry.lock().unwrap().clone()?;
        match expiry {
            Expiry::Unauthorized { after } => {
                let auth = auth?;
                let mut expired = self.expired_tokens.lock().unwrap();
                if n >= after && expired.is_empty() {
                    // The token in use right now is the one that expires.
                    expired.insert(auth.to_string());
                }
                if !expired.contains(auth) {
                    return None;
                }
                self.counts.expired.fetch_add(1, Ordering::Relaxed);
                Some(full(
                    401,
                    &[],
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required: token expired"}]}"#,
                ))
            }
            Expiry::EcrForbidden { after, .. } => {
                if n < after {
                    return None;
                }
                self.ecr_expired_left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                        left.checked_sub(1)
                    })
                    .ok()?;
                self.counts.expired.fetch_add(1, Ordering::Relaxed);
                Some(full(
                    403,
                    &[],
                    r#"{"errors":[{"code":"DENIED","message":"Your authorization token has expired. Reauthenticate and try again."}]}"#,
                ))
            }
        }
    }

    /// Answer one request; an error cuts the connection without an answer.
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> std::io::Result<Response<Body>> {
        let n = self.counts.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        let hook = self.hook.lock().unwrap().clone();
        if let Some(hook) = hook {
            hook(&method, &path);
        }
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(resp) = self.expired(n, auth.as_deref()) {
            return Ok(resp);
        }
        let mut f = self.faults.lock().unwrap().clone();
        if let Some(only) = &f.only
            && !format!("{method} {path}").contains(only.as_str())
        {
            f = Faults::default();
        }
        if self.roll(f.stall) {
            self.counts.stalled.fetch_add(1, Ordering::Relaxed);
            self.note_blob_fault(&path);
            tokio::time::sleep(f.stall_for).await;
        }
        if self.roll(f.server_error) {
            self.counts.server_errors.fetch_add(1, Ordering::Relaxed);
            self.note_blob_fault(&path);
            let status = [500, 502, 503][(n % 3) as usize];
            return Ok(full(
                status,
                &[],
                r#"{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}"#,
            ));
        }
        if self.roll(f.throttle) {
            self.counts.throttled.fetch_add(1, Ordering::Relaxed);
            self.note_blob_fault(&path);
            return Ok(full(
                429,
                &[("retry-after", "1")],
                r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"injected rate limit"}]}"#,
            ));
        }
        let is_head = method == "HEAD";
        let drop_now = self.roll(f.drop);
        let error_after = self.roll(f.error_after_forward);
        let corrupt = method == "GET" && path.contains("/blobs/sha256:") && self.roll(f.corrupt);

        let upstream = match self.forward(req).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("fault proxy: upstream request failed: {e}");
                return Ok(full(
                    502,
                    &[],
                    r#"{"errors":[{"code":"UNAVAILABLE","message":"upstream failed"}]}"#,
                ));
            }
        };
        if error_after {
            self.counts
                .errors_after_forward
                .fetch_add(1, Ordering::Relaxed);
            return Ok(full(
                500,
                &[],
                r#"{"errors":[{"code":"UNKNOWN","message":"injected fault after the work was done"}]}"#,
            ));
        }
        let status = upstream.status().as_u16();
        let length = upstream.content_length();
        let mut builder = Response::builder().status(status);
        for (k, v) in upstream.headers() {
            let name = k.as_str();
            if f.omit_headers.iter().any(|o| o.eq_ignore_ascii_case(name)) {
                self.counts.stripped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if name == "transfer-encoding" || name == "connection" {
                continue;
            }
            if name == "location" {
                let loc = v
                    .to_str()
                    .unwrap_or_default()
                    .replace(&format!("//{}", self.upstream), &format!("//{}", self.addr));
                builder = builder.header(k, loc);
                continue;
            }
            builder = builder.header(k, v);
        }
        if let Some((limit, window)) = f.rate_limit_remaining
            && method == "GET"
            && path.contains("/manifests/")
        {
            let pulled = self.pulls.fetch_add(1, Ordering::Relaxed) + 1;
            let left = limit.saturating_sub(pulled);
            builder = builder
                .header("ratelimit-limit", format!("{limit};w={window}"))
                .header("ratelimit-remaining", format!("{left};w={window}"));
        }
        let has_body = !is_head && length.is_some_and(|l| l > 0);
        if drop_now && !has_body {
            // The registry did the work; the caller never hears of it.
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            self.note_blob_fault(&path);
            return Err(cut());
        }
        if drop_now {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            self.note_blob_fault(&path);
        }
        if corrupt && has_body {
            self.counts.corrupted.fetch_add(1, Ordering::Relaxed);
            self.note_blob_fault(&path);
        }
        let state = BodyState {
            stream: Box::pin(
                upstream
                    .bytes_stream()
                    .map(|chunk| chunk.map_err(std::io::Error::other)),
            ),
            cut_at: if drop_now {
                length.unwrap_or(0) / 2
            } else {
                u64::MAX
            },
            sent: 0,
            flip: corrupt,
            rate: f.bytes_per_second,
            phase: Phase::Streaming,
        };
        // After a cut the stream yields what it had, then an error, which
        // makes hyper abort the connection mid-body.
        let body = futures_util::stream::unfold(state, |mut st| async move {
            match st.phase {
                Phase::Done => return None,
                Phase::Fail => {
                    st.phase = Phase::Done;
                    return Some((Err(cut()), st));
                }
                Phase::Streaming => {}
            }
            let mut chunk = match st.stream.next().await? {
                Ok(c) => c.to_vec(),
                Err(e) => {
                    st.phase = Phase::Done;
                    return Some((Err(e), st));
                }
            };
            if st.flip && !chunk.is_empty() {
                chunk[0] ^= 0xff;
                st.flip = false;
            }
            if st.sent + chunk.len() as u64 > st.cut_at {
                chunk.truncate((st.cut_at - st.sent) as usize);
                st.phase = Phase::Fail;
            }
            st.sent += chunk.len() as u64;
            if st.rate > 0 {
                let secs = chunk.len() as f64 / st.rate as f64;
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            }
            Some((Ok(Frame::data(Bytes::from(chunk))), st))
        });
        Ok(builder
            .body(BodyExt::boxed_unsync(StreamBody::new(body)))
            .unwrap())
    }

    /// Forward with the body streamed as it arrives, never buffered: a
    /// client that dies mid-upload delivers a cut upload to the registry.
    async fn forward(&self, req: Request<Incoming>) -> Result<reqwest::Response> {
        let (parts, body) = req.into_parts();
        let stream = body.into_data_stream().map_err(std::io::Error::other);
        let body = reqwest::Body::wrap_stream(crate::serve::SyncStream(Box::pin(stream)));
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let url = format!("http://{}{path}", self.upstream);
        let out = crate::serve::upstream_request(&self.http, &parts, url, &[])?;
        Ok(out.body(body).send().await?)
    }
}
