//! Per-registry settings: endpoint overrides, TLS, credentials, concurrency.
//!
//! Read from a YAML file (`--registries FILE`) and completed by flags such as
//! `--plain-http HOST`. Nothing is plain HTTP unless it is named here, not
//! even localhost.
//!
//! ```yaml
//! registries:
//!   registry.internal:5000:
//!     ca_file: /etc/ssl/internal-ca.pem
//!     username: mirror
//!     password_env: INTERNAL_REGISTRY_PASSWORD
//!     max_concurrency: 8
//!     read_timeout_seconds: 60
//!     manifest_puts_per_second: 5      # default: unlimited (10 for ECR hosts)
//!     blob_http: "1.1"                 # blob bodies' HTTP version over TLS
//!     api_http: "2"                    # manifests', HEADs' and uploads' HTTP version
//!   210987654321.dkr.ecr.us-east-1.amazonaws.com:
//!     role_arn: arn:aws:iam::210987654321:role/mirrorfleet-mirror
//!     external_id: mirrorfleet-prod
//!     manifest_puts_per_second: 0.5    # per worker: 20 workers share ECR's 10/s
//!   123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn:
//!     aws_credentials_secret: arn:aws:secretsmanager:us-east-1:111122223333:secret:cn-keys
//! ecr:
//!   tag_mutability: IMMUTABLE
//!   scan_on_push: true
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::registry::auth::{Credentials, Secret};

/// Default number of concurrent requests to one registry.
pub const DEFAULT_MAX_CONCURRENCY: usize = 16;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub registries: HashMap<String, RegistrySettings>,
    #[serde(default)]
    pub ecr: EcrRepositorySettings,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySettings {
    /// Connect here instead of the registry's own host (`host[:port]`).
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub plain_http: bool,
    /// Extra CA certificates (PEM) to trust for this registry.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Skip TLS verification. Only for registries explicitly marked; warned about.
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
    #[serde(default)]
    pub username: Option<String>,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// A file holding the password (a mounted secret).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A Secrets Manager secret (ARN or name) holding this registry's
    /// credentials: `{"username": ..., "password": ...}`, or a Docker config
    /// with an `auths` entry for the registry. Read when first needed, kept
    /// in memory only, read again after the registry refuses it (rotation).
    #[serde(default)]
    pub credentials_secret: Option<String>,
    /// Concurrent requests to this registry (default 16).
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// Seconds a response may stay silent before the request is retried
    /// (default 120).
    #[serde(default)]
    pub read_timeout_seconds: Option<u64>,
    /// For ECR hosts: assume this role (in the registry's account) for every
    /// ECR call and the registry's token.
    #[serde(default)]
    pub role_arn: Option<String>,
    /// The external id the role's trust policy asks for.
    #[serde(default)]
    pub external_id: Option<String>,
    /// For ECR hosts in another partition (China, GovCloud), which the fleet's
    /// own credentials cannot reach: a Secrets Manager secret holding
    /// `{"aws_access_key_id": ..., "aws_secret_access_key": ...}` (and
    /// optionally `"aws_session_token"`) for that partition. With `role_arn`,
    /// these keys assume the role.
    #[serde(default)]
    pub aws_credentials_secret: Option<String>,
    /// Manifest pushes per second from this process (default: 10 for ECR
    /// hosts, unlimited otherwise). A quota is per account and region, so a
    /// fleet of workers divides it between them.
    #[serde(default)]
    pub manifest_puts_per_second: Option<f64>,
    /// The HTTP version for blob bodies over TLS: `"1.1"` (a connection per
    /// blob in flight) or `"2"` (every blob on one multiplexed connection).
    /// Default: see [`HttpVersion::blob_default`].
    #[serde(default)]
    pub blob_http: Option<HttpVersion>,
    /// The HTTP version for everything else over TLS: manifests, HEADs,
    /// upload sessions, tag lists, tokens. Default: see
    /// [`HttpVersion::api_default`].
    #[serde(default)]
    pub api_http: Option<HttpVersion>,
}

/// An HTTP version over TLS (`blob_http`, `api_http`). Plain HTTP is always
/// HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum HttpVersion {
    #[serde(rename = "1.1")]
    Http1,
    /// What ALPN picks: HTTP/2 where the registry offers it.
    #[serde(rename = "2")]
    Http2,
}

impl HttpVersion {
    /// Blob bodies: HTTP/1.1, measured faster and cheaper for large blobs
    /// over TLS than one HTTP/2 connection, whose per-stream flow control
    /// paces a single large blob (`bench/tls.sh`; the figures are in the
    /// README's design notes).
    pub const fn blob_default() -> HttpVersion {
        HttpVersion::Http1
    }

    /// The many small requests: what ALPN picks, one connection for them
    /// all. HTTP/1.1 measured the same within the runs' spread on the TLS
    /// fleet (`TLS=1 API_HTTP=1.1 bench/sync.sh`; bench/README.md).
    pub const fn api_default() -> HttpVersion {
        HttpVersion::Http2
    }
}

/// How repositories created in ECR destinations are set up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcrRepositorySettings {
    #[serde(default = "default_true")]
    pub create_repositories: bool,
    /// `MUTABLE`, `IMMUTABLE`, or with exclusions (ECR, July 2025)
    /// `IMMUTABLE_WITH_EXCLUSION` / `MUTABLE_WITH_EXCLUSION`.
    #[serde(default = "default_mutability")]
    pub tag_mutability: String,
    /// For the `*_WITH_EXCLUSION` kinds: up to 5 wildcard filters (`*` for
    /// any run of characters) naming the tags that behave the other way,
    /// e.g. `["sha256-*"]` so cosign can update signature tags of an
    /// otherwise immutable repository.
    #[serde(default)]
    pub tag_mutability_exclusions: Vec<String>,
    #[serde(default)]
    pub scan_on_push: bool,
    /// `AES256` or `KMS`.
    #[serde(default)]
    pub encryption: Option<String>,
    #[serde(default)]
    pub kms_key: Option<String>,
}

fn default_true() -> bool {
    true
}
fn default_mutability() -> String {
    "MUTABLE".into()
}

impl Default for EcrRepositorySettings {
    fn default() -> Self {
        EcrRepositorySettings {
            create_repositories: true,
            tag_mutability: default_mutability(),
            tag_mutability_exclusions: Vec::new(),
            scan_on_push: false,
            encryption: None,
            kms_key: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read registry settings {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("registry settings {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_norway::Error,
    },
    #[error("registry settings for {host}: {message}")]
    Invalid { host: String, message: String },
    #[error("registry settings: {0}")]
    Aws(#[from] crate::registry::secrets::SecretError),
}

impl Settings {
    pub fn load(path: &Path) -> Result<Settings, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Settings::parse(&text, path)
    }

    /// Settings from their YAML text; `origin` names where it came from.
    pub fn parse(text: &str, origin: &Path) -> Result<Settings, SettingsError> {
        let mut s: Settings =
            serde_norway::from_str(text).map_err(|source| SettingsError::Parse {
                path: origin.to_path_buf(),
                source,
            })?;
        s.registries = s
            .registries
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        for (host, r) in &self.registries {
            let bad = |message: &str| SettingsError::Invalid {
                host: host.clone(),
                message: message.to_string(),
            };
            if r.password_env.is_some() && r.password_file.is_some() {
                return Err(bad("give password_env or password_file, not both"));
            }
            if r.credentials_secret.is_some() && r.username.is_some() {
                return Err(bad("give username or credentials_secret, not both"));
            }
            if (r.password_env.is_some() || r.password_file.is_some()) && r.username.is_none() {
                return Err(bad("a password needs a username"));
            }
            if let Some(rate) = r.manifest_puts_per_second
                && !(rate.is_finite() && rate > 0.0)
            {
                return Err(bad("manifest_puts_per_second must be a number above 0"));
            }
            let aws_only = r.role_arn.is_some() || r.aws_credentials_secret.is_some();
            if aws_only && crate::registry::ecr::EcrHost::parse(host).is_none() {
                return Err(bad(
                    "role_arn and aws_credentials_secret are for ECR hosts \
                     (ACCOUNT.dkr.ecr.REGION.amazonaws.com) only",
                ));
            }
            if r.external_id.is_some() && r.role_arn.is_none() {
                return Err(bad("external_id needs a role_arn"));
            }
            if r.max_concurrency == Some(0) {
                return Err(bad("max_concurrency must be at least 1"));
            }
            if r.plain_http && (r.ca_file.is_some() || r.insecure_skip_tls_verify) {
                return Err(bad("plain_http registries have no TLS settings"));
            }
        }
        self.ecr.validate()
    }

    /// Mark `host` as plain HTTP (from `--plain-http`).
    pub fn mark_plain_http(&mut self, host: &str) {
        self.registries
            .entry(host.to_ascii_lowercase())
            .or_default()
            .plain_http = true;
    }

    pub fn registry(&self, host: &str) -> RegistrySettings {
        self.registries.get(host).cloned().unwrap_or_default()
    }
}

impl EcrRepositorySettings {
    fn validate(&self) -> Result<(), SettingsError> {
        let bad = |message: String| SettingsError::Invalid {
            host: "ecr".into(),
            message,
        };
        let with_exclusion = match self.tag_mutability.as_str() {
            "MUTABLE" | "IMMUTABLE" => false,
            "MUTABLE_WITH_EXCLUSION" | "IMMUTABLE_WITH_EXCLUSION" => true,
            other => {
                return Err(bad(format!(
                    "tag_mutability must be MUTABLE, IMMUTABLE, IMMUTABLE_WITH_EXCLUSION or \
                     MUTABLE_WITH_EXCLUSION, not {other:?}"
                )));
            }
        };
        let filters = &self.tag_mutability_exclusions;
        if with_exclusion && !(1..=5).contains(&filters.len()) {
            return Err(bad(format!(
                "tag_mutability {} needs 1 to 5 tag_mutability_exclusions, not {}",
                self.tag_mutability,
                filters.len()
            )));
        }
        if !with_exclusion && !filters.is_empty() {
            return Err(bad(format!(
                "tag_mutability_exclusions need tag_mutability IMMUTABLE_WITH_EXCLUSION or \
                 MUTABLE_WITH_EXCLUSION, not {}",
                self.tag_mutability
            )));
        }
        // ECR's pattern for a filter: ^[0-9a-zA-Z._*-]{1,128}$
        if let Some(f) = filters.iter().find(|f| {
            !(1..=128).contains(&f.len())
                || !f
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._*-".contains(&b))
        }) {
            return Err(bad(format!(
                "tag_mutability_exclusions: {f:?} must be 1 to 128 letters, digits, '.', '_', '-' or '*'"
            )));
        }
        Ok(())
    }
}

impl RegistrySettings {
    /// Credentials configured for this registry, reading the password from its
    /// environment variable or file now (never stored elsewhere).
    pub fn credentials(&self, host: &str) -> Result<Option<Credentials>, SettingsError> {
        let Some(username) = &self.username else {
            return Ok(None);
        };
        let password = if let Some(var) = &self.password_env {
            std::env::var(var).map_err(|_| SettingsError::Invalid {
                host: host.to_string(),
                message: format!("environment variable {var} (password_env) is not set"),
            })?
        } else if let Some(file) = &self.password_file {
            std::fs::read_to_string(file)
                .map_err(|e| SettingsError::Invalid {
                    host: host.to_string(),
                    message: format!("cannot read password_file {}: {e}", file.display()),
                })?
                .trim_end_matches(['\n', '\r'])
                .to_string()
        } else {
            String::new()
        };
        Ok(Some(Credentials::Basic {
            username: username.clone(),
            password: Secret::new(password),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.yaml");
        std::fs::write(
            &p,
            "registries:\n  Reg.Example.com:5000:\n    endpoint: 127.0.0.1:5002\n    plain_http: true\n    max_concurrency: 4\necr:\n  tag_mutability: IMMUTABLE\n",
        )
        .unwrap();
        let s = Settings::load(&p).unwrap();
        let r = s.registry("reg.example.com:5000");
        assert!(r.plain_http);
        assert_eq!(r.endpoint.as_deref(), Some("127.0.0.1:5002"));
        assert_eq!(s.ecr.tag_mutability, "IMMUTABLE");
        assert!(s.ecr.create_repositories);

        std::fs::write(
            &p,
            "ecr:\n  tag_mutability: IMMUTABLE_WITH_EXCLUSION\n  tag_mutability_exclusions: ['sha256-*']\n",
        )
        .unwrap();
        let s = Settings::load(&p).unwrap();
        assert_eq!(s.ecr.tag_mutability_exclusions, ["sha256-*"]);
        for (yaml, want) in [
            (
                "ecr:\n  tag_mutability: IMMUTABLE_WITH_EXCLUSION\n",
                "needs 1 to 5",
            ),
            (
                "ecr:\n  tag_mutability: IMMUTABLE\n  tag_mutability_exclusions: ['x']\n",
                "need tag_mutability IMMUTABLE_WITH_EXCLUSION",
            ),
            (
                "ecr:\n  tag_mutability: MUTABLE_WITH_EXCLUSION\n  tag_mutability_exclusions: ['a b']\n",
                "must be 1 to 128",
            ),
            ("ecr:\n  tag_mutability: FROZEN\n", "not \"FROZEN\""),
        ] {
            std::fs::write(&p, yaml).unwrap();
            let err = Settings::load(&p).unwrap_err().to_string();
            assert!(err.contains(want), "{yaml}: {err}");
        }

        std::fs::write(&p, "registries:\n  x:\n    plain_htp: true\n").unwrap();
        let err = Settings::load(&p).unwrap_err().to_string();
        assert!(err.contains("plain_htp") && err.contains("line 3"), "{err}");

        for (yaml, want) in [
            (
                "registries:\n  r.example.com:\n    role_arn: arn:aws:iam::1:role/r\n",
                "for ECR hosts",
            ),
            (
                "registries:\n  123456789012.dkr.ecr.us-east-1.amazonaws.com:\n    external_id: x\n",
                "external_id needs a role_arn",
            ),
        ] {
            std::fs::write(&p, yaml).unwrap();
            let err = Settings::load(&p).unwrap_err().to_string();
            assert!(err.contains(want), "{yaml}: {err}");
        }

        std::fs::write(&p, "registries:\n  x:\n    password_env: P\n").unwrap();
        assert!(
            Settings::load(&p)
                .unwrap_err()
                .to_string()
                .contains("username")
        );
    }

    #[test]
    fn manifest_put_rate_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.yaml");
        std::fs::write(&p, "registries:\n  x:\n    manifest_puts_per_second: 2.5\n").unwrap();
        let s = Settings::load(&p).unwrap();
        assert_eq!(s.registry("x").manifest_puts_per_second, Some(2.5));
        std::fs::write(&p, "registries:\n  x:\n    manifest_puts_per_second: 0\n").unwrap();
        let err = Settings::load(&p).unwrap_err().to_string();
        assert!(err.contains("manifest_puts_per_second"), "{err}");
    }

    #[test]
    fn http_versions_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.yaml");
        std::fs::write(
            &p,
            "registries:\n  x:\n    blob_http: \"1.1\"\n    api_http: \"1.1\"\n  y: {}\n",
        )
        .unwrap();
        let s = Settings::load(&p).unwrap();
        assert_eq!(s.registry("x").blob_http, Some(HttpVersion::Http1));
        assert_eq!(s.registry("x").api_http, Some(HttpVersion::Http1));
        assert_eq!(s.registry("y").blob_http, None);
        for key in ["blob_http", "api_http"] {
            std::fs::write(&p, format!("registries:\n  x:\n    {key}: \"3\"\n")).unwrap();
            let err = Settings::load(&p).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    /// The README's example settings file is a valid one.
    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("```yaml\nregistries:\n  registry.internal:5000:")
            .expect("the README's registries example");
        let body = &readme[start + "```yaml\n".len()..];
        let text = &body[..body.find("```").unwrap()];
        let s = Settings::parse(text, Path::new("README.md")).unwrap();
        let internal = s.registry("registry.internal:5000");
        assert_eq!(internal.blob_http, Some(HttpVersion::Http1));
        assert_eq!(internal.api_http, Some(HttpVersion::Http2));
        assert_eq!(internal.max_concurrency, Some(8));
    }

    #[test]
    fn reads_password_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let r = RegistrySettings {
            username: Some("u".into()),
            password_file: Some(pw),
            ..Default::default()
        };
        match r.credentials("h").unwrap().unwrap() {
            Credentials::Basic { password, .. } => assert_eq!(password.expose(), "s3cret"),
            other => panic!("{other:?}"),
        }
    }
}
