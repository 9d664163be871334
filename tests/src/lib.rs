//! Test harness for mirrorfleet's integration tests.
//!
//! Talks to the real local stack started by `scripts/stack.sh up` (registries
//! and moto on 127.0.0.1). Fixtures are pushed with a deliberately minimal
//! client of its own (monolithic POST+PUT), and results are checked with
//! skopeo, so neither side trusts mirrorfleet's registry client.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

pub mod ecr_double;
pub mod faults;
pub mod iam;
pub mod recording;
mod serve;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Addresses and credentials of the local stack (from `scripts/stack.sh env`).
#[derive(Debug, Clone)]
pub struct Stack {
    pub src: String,
    pub dst: String,
    pub basic: String,
    pub basic_creds: String,
    pub token: String,
    pub token_creds: String,
    pub tls: String,
    pub tls_ca: PathBuf,
    pub tls_cert_dir: PathBuf,
    pub moto: String,
    /// Serves the ECR host name in tests; its login is moto's ECR token.
    pub ecr: String,
    pub ecr_creds: String,
    pub dir: PathBuf,
}

impl Stack {
    /// The stack, checked to be up. Panics with instructions when it is not:
    /// these tests must never pass by skipping.
    pub fn get() -> Stack {
        let dir = PathBuf::from(
            std::env::var("MIRRORFLEET_STACK_DIR")
                .unwrap_or_else(|_| "/tmp/mirrorfleet-stack".into()),
        );
        // The env file written by `stack.sh up` has the credentials; real
        // environment variables win over it.
        let mut file_vars = std::collections::HashMap::new();
        if let Ok(text) = std::fs::read_to_string(dir.join("env")) {
            for line in text.lines() {
                if let Some((k, v)) = line.trim_start_matches("export ").split_once('=') {
                    file_vars.insert(k.to_string(), v.trim_matches('\'').to_string());
                }
            }
        }
        let get = |k: &str, d: &str| -> String {
            std::env::var(k)
                .ok()
                .or_else(|| file_vars.get(k).cloned())
                .unwrap_or_else(|| d.to_string())
        };
        let s = Stack {
            src: get("MF_SRC", "127.0.0.1:5001"),
            dst: get("MF_DST", "127.0.0.1:5002"),
            basic: get("MF_BASIC", "127.0.0.1:5003"),
            basic_creds: get("MF_BASIC_CREDS", ""),
            token: get("MF_TOKEN", "127.0.0.1:5004"),
            token_creds: get("MF_TOKEN_CREDS", ""),
            tls: get("MF_TLS", "127.0.0.1:5006"),
            tls_ca: PathBuf::from(get("MF_TLS_CA", "/tmp/mirrorfleet-stack/certs/ca.crt")),
            tls_cert_dir: PathBuf::from(get(
                "MF_TLS_CERT_DIR",
                "/tmp/mirrorfleet-stack/certs/skopeo",
            )),
            moto: get("MF_MOTO", "http://127.0.0.1:5000"),
            ecr: get("MF_ECR", "127.0.0.1:5007"),
            ecr_creds: get("MF_ECR_CREDS", "AWS:123456789012-auth-token"),
            dir,
        };
        let probe = std::net::TcpStream::connect(&s.src);
        assert!(
            probe.is_ok(),
            "the local test stack is not running (no registry at {}): run `scripts/stack.sh up` first, \
             or use scripts/test.sh",
            s.src
        );
        s
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A repository name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

/// Where a fixture is pushed: host, optional `user:pass`, and scheme.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub creds: Option<String>,
    pub https_ca: Option<PathBuf>,
}

impl Target {
    pub fn plain(host: &str) -> Target {
        Target {
            host: host.to_string(),
            creds: None,
            https_ca: None,
        }
    }
    fn client(&self) -> Result<reqwest::Client> {
        let mut b = reqwest::Client::builder();
        if let Some(ca) = &self.https_ca {
            b = b.tls_certs_merge(reqwest::Certificate::from_pem_bundle(&std::fs::read(ca)?)?);
        }
        Ok(b.build()?)
    }
    fn base(&self) -> String {
        let scheme = if self.https_ca.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.host)
    }
    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.creds.as_deref().and_then(|c| c.split_once(':')) {
            Some((u, p)) => rb.basic_auth(u, Some(p)),
            None => rb,
        }
    }
}

/// A minimal pusher: monolithic blob upload and manifest PUT, no retries.
#[derive(Debug)]
pub struct Pusher {
    target: Target,
    client: reqwest::Client,
}

impl Pusher {
    pub fn new(target: Target) -> Result<Pusher> {
        let client = target.client()?;
        Ok(Pusher { target, client })
    }

    pub async fn blob(&self, repo: &str, data: &[u8]) -> Result<Value> {
        self.blob_typed(repo, data, OCI_LAYER).await
    }

    pub async fn blob_typed(&self, repo: &str, data: &[u8], media_type: &str) -> Result<Value> {
        let digest = sha256(data);
        let base = self.target.base();
        let r = self
            .target
            .auth(self.client.post(format!("{base}/v2/{repo}/blobs/uploads/")))
            .send()
            .await?;
        if r.status() != 202 {
            bail!(
                "POST upload: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        let loc = r
            .headers()
            .get("location")
            .context("no Location")?
            .to_str()?
            .to_string();
        let url = if loc.starts_with("http") {
            loc
        } else {
            format!("{base}{loc}")
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let r = self
            .target
            .auth(self.client.put(format!("{url}{sep}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await?;
        if r.status() != 201 {
            bail!(
                "PUT blob: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        Ok(json!({"mediaType": media_type, "digest": digest, "size": data.len()}))
    }

    /// PUT manifest bytes; returns (digest, descriptor).
    pub async fn manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        raw: &[u8],
    ) -> Result<Value> {
        let base = self.target.base();
        let r = self
            .target
            .auth(
                self.client
                    .put(format!("{base}/v2/{repo}/manifests/{reference}")),
            )
            .header("content-type", media_type)
            .body(raw.to_vec())
            .send()
            .await?;
        if r.status() != 201 {
            bail!(
                "PUT manifest {repo}:{reference}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        Ok(json!({"mediaType": media_type, "digest": sha256(raw), "size": raw.len()}))
    }

    /// An image manifest with a config and random layers of the given sizes.
    /// Returns the descriptor of the pushed manifest (pushed by digest).
    pub async fn image(
        &self,
        repo: &str,
        docker: bool,
        platform: (&str, &str),
        layers: &[usize],
        extra: Value,
    ) -> Result<Value> {
        let mut layer_descs = Vec::new();
        for size in layers {
            let mut d = self.blob(repo, &random_bytes(*size)).await?;
            d["mediaType"] = json!(if docker { DOCKER_LAYER } else { OCI_LAYER });
            layer_descs.push(d);
        }
        let config = json!({"architecture": platform.1, "os": platform.0,
            "rootfs": {"type": "layers", "diff_ids": []}, "nonce": hex::encode(random_bytes(8))});
        let cfg_bytes = serde_json::to_vec(&config)?;
        let cfg = self
            .blob_typed(
                repo,
                &cfg_bytes,
                if docker { DOCKER_CONFIG } else { OCI_CONFIG },
            )
            .await?;
        let mt = if docker {
            DOCKER_MANIFEST
        } else {
            OCI_MANIFEST
        };
        let mut m =
            json!({"schemaVersion": 2, "mediaType": mt, "config": cfg, "layers": layer_descs});
        if let (Some(obj), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        let raw = serde_json::to_vec_pretty(&m)?;
        let digest = sha256(&raw);
        let mut desc = self.manifest(repo, &digest, mt, &raw).await?;
        desc["platform"] = json!({"os": platform.0, "architecture": platform.1});
        Ok(desc)
    }

    /// An index over `children`, pushed under `tag`; returns its digest.
    pub async fn index(
        &self,
        repo: &str,
        tag: &str,
        docker: bool,
        children: Vec<Value>,
        extra: Value,
    ) -> Result<String> {
        let mt = if docker { DOCKER_LIST } else { OCI_INDEX };
        let mut m = json!({"schemaVersion": 2, "mediaType": mt, "manifests": children});
        if let (Some(obj), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        // Pretty-printed with a trailing newline: any re-serialisation would change the digest.
        let mut raw = serde_json::to_vec_pretty(&m)?;
        raw.push(b'\n');
        self.manifest(repo, tag, mt, &raw).await?;
        Ok(sha256(&raw))
    }
}

impl Pusher {
    /// `repos` x `tags` two-platform images under `<prefix>-<n>:t<m>`, all
    /// sharing one base layer per repository, each platform with a layer of
    /// its own. Returns (repository, tag, index digest) per image.
    pub async fn fleet(
        &self,
        prefix: &str,
        repos: usize,
        tags: usize,
        layer_kb: usize,
    ) -> Result<Vec<(String, String, String)>> {
        let base = random_bytes(layer_kb * 1024);
        let mut out = Vec::with_capacity(repos * tags);
        for r in 0..repos {
            let repo = format!("{prefix}-{r}");
            let base_desc = self.blob(&repo, &base).await?;
            for t in 0..tags {
                let mut children = Vec::new();
                for arch in ["amd64", "arm64"] {
                    let own = self.blob(&repo, &random_bytes(layer_kb * 1024)).await?;
                    let cfg = serde_json::to_vec(
                        &json!({"architecture": arch, "os": "linux", "tag": t}),
                    )?;
                    let cfg = self.blob_typed(&repo, &cfg, OCI_CONFIG).await?;
                    let m =
                        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                        "config": cfg, "layers": [base_desc.clone(), own]}))?;
                    let mut desc = self.manifest(&repo, &sha256(&m), OCI_MANIFEST, &m).await?;
                    desc["platform"] = json!({"os": "linux", "architecture": arch});
                    children.push(desc);
                }
                let tag = format!("t{t}");
                let digest = self.index(&repo, &tag, false, children, json!({})).await?;
                out.push((repo.clone(), tag, digest));
            }
        }
        Ok(out)
    }
}

/// Push a two-platform OCI index (one small random layer per platform) to
/// the stack's source registry; returns the index digest.
pub async fn push_image(stack: &Stack, repo: &str, tag: &str) -> String {
    let p = Pusher::new(Target::plain(&stack.src)).unwrap_or_else(|e| panic!("{e}"));
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        children.push(
            p.image(repo, false, ("linux", arch), &[2500], json!({}))
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    p.index(repo, tag, false, children, json!({}))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// skopeo as the independent client.
#[derive(Debug, Clone, Default)]
pub struct Skopeo {
    pub creds: Option<String>,
    pub cert_dir: Option<PathBuf>,
    pub tls_verify: bool,
}

impl Skopeo {
    pub fn plain() -> Skopeo {
        Skopeo::default()
    }

    /// The raw manifest at `reference`, as skopeo reads it.
    pub fn raw(&self, reference: &str) -> Result<Vec<u8>> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["inspect", "--raw", "--retry-times", "2"]);
        cmd.arg(format!("--tls-verify={}", self.tls_verify));
        if let Some(d) = &self.cert_dir {
            cmd.arg("--cert-dir").arg(d);
        }
        if let Some(c) = &self.creds {
            // Through a file, not argv: no secrets on command lines.
            let dir = tempfile_dir()?;
            let (u, p) = c.split_once(':').context("creds")?;
            let host = reference.split('/').next().unwrap_or_default();
            let auth = base64_encode(&format!("{u}:{p}"));
            let path = dir.join("auth.json");
            std::fs::write(&path, json!({"auths": {host: {"auth": auth}}}).to_string())?;
            cmd.arg("--authfile").arg(&path);
        }
        cmd.arg(format!("docker://{reference}"));
        let out = cmd.output().context("running skopeo")?;
        if !out.status.success() {
            bail!(
                "skopeo inspect {reference}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out.stdout)
    }

    /// The digest of the manifest at `reference`.
    pub fn digest(&self, reference: &str) -> Result<String> {
        Ok(sha256(&self.raw(reference)?))
    }

    /// Check that `name` (host/repo) holds the whole tree under `digest`:
    /// every child manifest of an index is present, byte for byte, and
    /// every blob of every image is there at its size (a HEAD each).
    pub fn assert_tree(&self, name: &str, digest: &str) -> Result<usize> {
        let raw = self.raw(&format!("{name}@{digest}"))?;
        if sha256(&raw) != digest {
            bail!("{name}@{digest} holds other bytes");
        }
        let v: Value = serde_json::from_slice(&raw)?;
        let mut count = 1;
        if let Some(children) = v["manifests"].as_array() {
            for c in children {
                let d = c["digest"].as_str().context("child digest")?;
                count += self.assert_tree(name, d)?;
            }
        }
        let blobs = v["config"].as_object().into_iter().chain(
            v["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l.as_object()),
        );
        for b in blobs {
            let d = b
                .get("digest")
                .and_then(|d| d.as_str())
                .context("blob digest")?;
            let size = b
                .get("size")
                .and_then(|s| s.as_u64())
                .context("blob size")?;
            self.head_blob(name, d, size)?;
        }
        Ok(count)
    }

    /// HEAD a blob with curl (an independent client, as skopeo is), checking
    /// it exists at `size` bytes.
    fn head_blob(&self, name: &str, digest: &str, size: u64) -> Result<()> {
        let (host, repo) = name.split_once('/').context("name without a repository")?;
        let scheme = if self.cert_dir.is_some() || self.tls_verify {
            "https"
        } else {
            "http"
        };
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-I",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %header{content-length}",
        ]);
        if let Some(c) = &self.creds {
            // Through a netrc-style config file, not argv.
            let dir = tempfile_dir()?;
            let path = dir.join("curl.conf");
            std::fs::write(&path, format!("user = \"{c}\"\n"))?;
            cmd.arg("-K").arg(&path);
        }
        if let Some(d) = &self.cert_dir {
            cmd.arg("--cacert").arg(d.join("ca.crt"));
        }
        cmd.arg(format!("{scheme}://{host}/v2/{repo}/blobs/{digest}"));
        let out = cmd.output().context("running curl")?;
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if answer != format!("200 {size}") {
            bail!("blob {digest} of {name}: HEAD answered {answer:?}, not 200 with {size} bytes");
        }
        Ok(())
    }

    /// Read the whole image at `reference` (every platform, every blob,
    /// digests verified by skopeo) into a throwaway OCI layout. `Ok(false)`
    /// when the tag does not exist; any other failure is an error.
    pub fn complete(&self, reference: &str) -> Result<bool> {
        let dir = tempfile_dir()?;
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--all", "--quiet", "--retry-times", "2"]);
        cmd.arg(format!("--src-tls-verify={}", self.tls_verify));
        if let Some(d) = &self.cert_dir {
            cmd.arg("--src-cert-dir").arg(d);
        }
        if let Some(c) = &self.creds {
            let (u, p) = c.split_once(':').context("creds")?;
            let host = reference.split('/').next().unwrap_or_default();
            let path = dir.join("auth.json");
            std::fs::write(
                &path,
                json!({"auths": {host: {"auth": base64_encode(&format!("{u}:{p}"))}}}).to_string(),
            )?;
            cmd.arg("--src-authfile").arg(&path);
        }
        cmd.arg(format!("docker://{reference}"));
        cmd.arg(format!("oci:{}:image", dir.join("layout").display()));
        let out = cmd.output().context("running skopeo")?;
        let _ = std::fs::remove_dir_all(&dir);
        if out.status.success() {
            return Ok(true);
        }
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        // Only the tag itself missing is "absent"; a missing child or blob
        // of a present tag is the failure this is here to catch.
        let tag_missing = err.contains("manifest unknown")
            && err.contains("reading manifest")
            && !err.contains("@sha256:");
        if tag_missing {
            return Ok(false);
        }
        bail!("skopeo copy {reference}: {err}")
    }
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

fn tempfile_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(unique("mf-skopeo"));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Count access-log lines of a stack registry matching all `needles`.
pub fn count_requests(stack: &Stack, registry: &str, needles: &[&str]) -> usize {
    let path = stack.dir.join(format!("{registry}.log"));
    // A missing log would count 0 and pass any "no such request" check.
    let log = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the access log {}: {e}", path.display()));
    log.lines()
        .filter(|l| l.contains("HTTP/1.1\"") && needles.iter().all(|n| l.contains(n)))
        .count()
}

/// The mirrorfleet-worker binary built next to the test executable.
pub fn worker_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let bin = dir.join("mirrorfleet-worker");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`; scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A tiny HTTP/1.1 server answering fixed responses by path, for registries
/// that misbehave in ways a real one will not (serving bytes that do not
/// match their digest). Every response closes the connection.
#[derive(Debug)]
pub struct FakeRegistry {
    pub addr: String,
    _task: tokio::task::JoinHandle<()>,
}

/// (status, content type, extra headers, body) for a path.
pub type FakeRoute = (u16, String, Vec<(String, String)>, Vec<u8>);

impl FakeRegistry {
    pub async fn start(
        routes: std::collections::HashMap<String, FakeRoute>,
    ) -> Result<FakeRegistry> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let routes = std::sync::Arc::new(routes);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let routes = routes.clone();
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
                    let path = parts
                        .next()
                        .unwrap_or("")
                        .split('?')
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let (status, ct, headers, body) = routes.get(&path).cloned().unwrap_or((
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
        Ok(FakeRegistry { addr, _task: task })
    }
}

/// Run a mirrorfleet binary with `args` and extra environment; returns
/// (exit code, stdout, stderr).
pub fn run_bin(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let path = worker_bin().with_file_name(bin);
    let mut cmd = Command::new(&path);
    cmd.args(args)
        .env("MIRRORFLEET_PROGRESS", "never")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`run_bin`] off the async runtime, for tests whose proxies run on it.
pub async fn run_bin_off(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let name = bin.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_bin(&name, &args, &env)
    })
    .await
    .unwrap_or_else(|e| panic!("running {bin}: {e}"))
}

/// An engine over `settings`, with no Docker config and no explicit
/// credentials, as the in-process copy tests use it.
pub fn engine_with(
    settings: mirrorfleet_common::registry::settings::Settings,
    options: mirrorfleet_common::CopyOptions,
) -> mirrorfleet_common::Engine {
    mirrorfleet_common::Engine::new(
        std::sync::Arc::new(mirrorfleet_common::registry::Registries::new(
            settings,
            mirrorfleet_common::registry::auth::DockerConfig::default(),
            None,
            None,
        )),
        options,
    )
}

/// Copy `src` to `dests` with `engine`, never cancelled.
pub async fn copy_to(
    engine: &mirrorfleet_common::Engine,
    src: &str,
    dests: &[&str],
) -> mirrorfleet_common::CopyReport {
    let src: mirrorfleet_common::Reference = src.parse().unwrap();
    let dests: Vec<mirrorfleet_common::Reference> =
        dests.iter().map(|d| d.parse().unwrap()).collect();
    engine
        .copy(&src, &dests, &tokio_util::sync::CancellationToken::new())
        .await
}

/// Environment variables for a binary, owned.
pub type Env = Vec<(String, String)>;

/// Environment for the control-plane binaries: moto, a table and a queue,
/// and plain HTTP for the registries in `plain`.
pub fn control_env(stack: &Stack, table: &str, queue: &str, plain: &[&str]) -> Env {
    let mut v: Env = moto_env(stack)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    v.push(("MIRRORFLEET_TABLE".into(), table.into()));
    v.push(("MIRRORFLEET_QUEUE_URL".into(), queue.into()));
    v.push(("MIRRORFLEET_PLAIN_HTTP".into(), plain.join(",")));
    v
}

/// [`run_bin`] with an owned environment; no run may panic, whatever it
/// was given.
pub fn run_env(bin: &str, args: &[&str], env: &Env) -> (i32, String, String) {
    let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, out, err) = run_bin(bin, args, &e);
    let shown: String = format!("{args:?}").chars().take(300).collect();
    assert!(
        !err.contains("panicked at") && !out.contains("panicked at"),
        "{bin} {shown} panicked:\n{err}"
    );
    (code, out, err)
}

/// A fresh table (created by `table create`) and queue, with a dead-letter
/// queue after `max_receives`; returns (environment, queue URL, DLQ URL).
pub async fn control_setup(
    stack: &Stack,
    name: &str,
    plain: &[&str],
    max_receives: u32,
) -> (Env, String, String) {
    let table = unique(name);
    let (queue, dlq) = moto_queue_with_dlq(stack, &unique(name), max_receives).await;
    let env = control_env(stack, &table, &queue, plain);
    let (code, out, err) = run_env("mirrorfleet-controller", &["table", "create"], &env);
    assert_eq!(code, 0, "{out}{err}");
    (env, queue, dlq)
}

/// `table ls --output json`, which must succeed.
pub fn table_ls_json(env: &Env) -> Vec<Value> {
    let (code, out, err) = run_env(
        "mirrorfleet-controller",
        &["table", "ls", "--output", "json"],
        env,
    );
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The environment that points the AWS SDK at moto.
pub fn moto_env(stack: &Stack) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", stack.moto.clone()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

macro_rules! moto_client {
    ($name:ident, $krate:ident) => {
        /// A client for moto, configured explicitly (no process environment).
        pub fn $name(stack: &Stack) -> $krate::Client {
            let conf = $krate::config::Builder::new()
                .behavior_version($krate::config::BehaviorVersion::latest())
                .region($krate::config::Region::new("us-east-1"))
                .endpoint_url(&stack.moto)
                .credentials_provider(aws_credential_types::Credentials::new(
                    "testing", "testing", None, None, "moto",
                ))
                .build();
            $krate::Client::from_conf(conf)
        }
    };
}
moto_client!(moto_ecr, aws_sdk_ecr);
moto_client!(moto_sqs, aws_sdk_sqs);
moto_client!(moto_dynamodb, aws_sdk_dynamodb);
moto_client!(moto_batch, aws_sdk_batch);

/// A fresh SQS queue with a dead-letter queue after `max_receives`; returns
/// (queue URL, DLQ URL).
pub async fn moto_queue_with_dlq(stack: &Stack, name: &str, max_receives: u32) -> (String, String) {
    let sqs = moto_sqs(stack);
    let dlq = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .unwrap();
    let dlq_url = dlq.queue_url().unwrap().to_string();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    let q = sqs
        .create_queue()
        .queue_name(name)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max_receives})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    (q.queue_url().unwrap().to_string(), dlq_url)
}

/// Messages visible in a queue (moto answers exactly).
pub async fn queue_depth(stack: &Stack, url: &str) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = moto_sqs(stack)
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let a = out.attributes().unwrap();
    a[&A::ApproximateNumberOfMessages].parse::<u64>().unwrap()
        + a[&A::ApproximateNumberOfMessagesNotVisible]
            .parse::<u64>()
            .unwrap()
}

/// Create an IAM role in moto (its Batch checks service roles exist); returns
/// the ARN. One query-API call: moto routes it by the credential scope.
pub async fn moto_create_role(stack: &Stack, name: &str) -> String {
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"batch.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    let resp = reqwest::Client::new()
        .post(format!("{}/", stack.moto))
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("Action", "CreateRole")
                .append_pair("Version", "2010-05-08")
                .append_pair("RoleName", name)
                .append_pair("AssumeRolePolicyDocument", policy)
                .finish(),
        )
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert!(status.is_success(), "CreateRole: {status} {body}");
    let start = body.find("<Arn>").unwrap() + 5;
    let end = body[start..].find("</Arn>").unwrap() + start;
    body[start..end].to_string()
}
