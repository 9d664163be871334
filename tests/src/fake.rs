//! A fake registry on a local port, answering each request from a route
//! table, for behaviours no real registry shows on demand.

use anyhow::Result;

/// A tiny HTTP/1.1 server answering fixed responses by path (or path and
/// query), recording each request, for registries
/// that misbehave in ways a real one will not (serving bytes that do not
/// match their digest). Every response closes the connection.
#[derive(Debug)]
pub struct FakeRegistry {
    pub addr: String,
    /// Every request's method and target (path and query), in arrival order.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _task: tokio::task::JoinHandle<()>,
}

/// (status, content type, extra headers, body) for a path.
pub type FakeRoute = (u16, String, Vec<(String, String)>, Vec<u8>);

impl FakeRegistry {
    /// How many requests so far start with `prefix` (`"HEAD /v2/app/"`).
    pub fn count(&self, prefix: &str) -> usize {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|r| r.starts_with(prefix))
            .count()
    }

    pub async fn start(
        routes: std::collections::HashMap<String, FakeRoute>,
    ) -> Result<FakeRegistry> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let routes = std::sync::Arc::new(routes);
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let routes = routes.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let mut parts = head.split_whitespace();
                    let method = parts.next().unwrap_or("").to_string();
                    let target = parts.next().unwrap_or("").to_string();
                    let path = target.split('?').next().unwrap_or("").to_string();
                    log.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("{method} {target}"));
                    // A route for the path with its query (pages of a
                    // listing) comes before the one for the bare path.
                    let route = routes.get(&target).or_else(|| routes.get(&path));
                    let (status, ct, headers, body) = route.cloned().unwrap_or((
                        404,
                        "application/json".into(),
                        vec![],
                        br#"{"errors":[{"code":"NOT_FOUND","message":"not here"}]}"#.to_vec(),
                    ));
                    let mut resp = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n",
                        body.len()
                    );
                    for (k, v) in headers {
                        resp.push_str(&format!("{k}: {v}\r\n"));
                    }
                    resp.push_str("\r\n");
                    let _ = sock.write_all(resp.as_bytes()).await;
                    if method != "HEAD" {
                        let _ = sock.write_all(&body).await;
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        Ok(FakeRegistry {
            addr,
            requests,
            _task: task,
        })
    }
}
