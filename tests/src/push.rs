//! Fixtures pushed with a deliberately minimal client of its own
//! (monolithic POST+PUT), so the fixtures never depend on mirrorfleet's.

use std::path::PathBuf;

use crate::Stack;
use crate::random_bytes;
use crate::sha256;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

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
