//! The small HTTP pieces the test doubles share: a server on its own
//! thread and runtime, responses in the distribution error format, and an
//! upstream's answer relayed as the front's own.

use anyhow::Result;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};

pub(crate) type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Serve `handle` on a fresh loopback port in a thread of its own; returns
/// the address and the stop switch.
pub(crate) fn serve<F, Fut>(
    listeners: usize,
    make: impl FnOnce(Vec<String>) -> F + Send + 'static,
) -> Result<(Vec<String>, tokio::sync::oneshot::Sender<()>)>
where
    F: Fn(usize, Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = std::io::Result<Response<Body>>> + Send + 'static,
{
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = addr_tx.send(Err(anyhow::anyhow!("runtime: {e}")));
                return;
            }
        };
        rt.block_on(async move {
            let mut socks = Vec::new();
            for _ in 0..listeners {
                match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                    Ok(l) => socks.push(l),
                    Err(e) => {
                        let _ = addr_tx.send(Err(e.into()));
                        return;
                    }
                }
            }
            let addrs: Vec<String> = socks
                .iter()
                .map(|l| l.local_addr().map(|a| a.to_string()).unwrap_or_default())
                .collect();
            let handler = make(addrs.clone());
            let _ = addr_tx.send(Ok(addrs));
            for (i, listener) in socks.into_iter().enumerate() {
                let handler = handler.clone();
                tokio::spawn(async move {
                    loop {
                        let Ok((sock, _)) = listener.accept().await else {
                            return;
                        };
                        let handler = handler.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let handler = handler.clone();
                                async move { handler(i, req).await }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(sock), service)
                                .await;
                        });
                    }
                });
            }
            let _ = stop_rx.await;
        });
    });
    let addrs = addr_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the server thread died"))??;
    Ok((addrs, stop_tx))
}

/// reqwest wants a `Sync` stream; hyper's body stream is only `Send`. The
/// mutex is uncontended: one task polls it.
pub(crate) struct SyncStream(
    pub(crate) std::pin::Pin<Box<dyn futures_util::Stream<Item = std::io::Result<Bytes>> + Send>>,
);

impl futures_util::Stream for SyncStream {
    type Item = std::io::Result<Bytes>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.as_mut().poll_next(cx)
    }
}

pub(crate) fn json(status: u16, headers: &[(&str, &str)], body: String) -> Response<Body> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.header("content-type", "application/json; charset=utf-8")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("static response parts are valid")
}

pub(crate) fn registry_error(status: u16, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        &[],
        serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string(),
    )
}

/// The request in `parts` as one to `url`, with its method and headers but
/// the hop-by-hop ones and those named in `drop` (always `host`).
pub(crate) fn upstream_request(
    http: &reqwest::Client,
    parts: &hyper::http::request::Parts,
    url: String,
    drop: &[&str],
) -> std::io::Result<reqwest::RequestBuilder> {
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .map_err(std::io::Error::other)?;
    let mut out = http.request(method, url);
    for (k, v) in &parts.headers {
        let name = k.as_str();
        if matches!(name, "host" | "transfer-encoding" | "connection") || drop.contains(&name) {
            continue;
        }
        out = out.header(name, v.as_bytes());
    }
    Ok(out)
}

/// The upstream's answer as the front's own: streamed, with a `Location`
/// naming `upstream` pointed at `front` instead.
pub(crate) fn relay(upstream: reqwest::Response, from: &str, front: &str) -> Response<Body> {
    let mut builder = Response::builder().status(upstream.status().as_u16());
    for (k, v) in upstream.headers() {
        match k.as_str() {
            "transfer-encoding" | "connection" => continue,
            "location" => {
                let loc = v
                    .to_str()
                    .unwrap_or_default()
                    .replace(&format!("//{from}"), &format!("//{front}"));
                builder = builder.header(k, loc);
            }
            _ => builder = builder.header(k, v),
        }
    }
    let stream = upstream
        .bytes_stream()
        .map(|c| c.map(Frame::data).map_err(std::io::Error::other));
    builder
        .body(BodyExt::boxed_unsync(StreamBody::new(stream)))
        .expect("relayed parts are valid")
}
