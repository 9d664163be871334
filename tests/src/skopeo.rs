//! skopeo, the independent checker: digests, raw manifests, whole trees.

use std::path::PathBuf;
use std::process::Command;

use crate::sha256;
use crate::unique;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

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

pub(crate) fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

pub(crate) fn tempfile_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(unique("mf-skopeo"));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
