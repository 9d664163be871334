//! Credentials and the registry authentication handshake.
//!
//! Sources, in the order a registry's credentials are looked up: explicit
//! `--src-creds/--dest-creds`, the registry settings file, ECR (for ECR hosts),
//! then the Docker `config.json` (`auths`, `credHelpers`, `credsStore`), else
//! anonymous. Secrets live in [`Secret`], which never prints its value, so no
//! log line or error chain can carry one.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;

/// A secret string whose `Debug` is redacted and that has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The value, for the one place that puts it into a request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What to present to a registry.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: Secret,
    },
    /// A ready-made registry token (`identitytoken` in Docker's config).
    IdentityToken(Secret),
}

impl Credentials {
    /// Parse `USER:PASS` as given to `--src-creds/--dest-creds`.
    pub fn from_user_pass(s: &str) -> Result<Credentials, AuthError> {
        let (u, p) = s.split_once(':').ok_or(AuthError::CredsFormat)?;
        if u.is_empty() {
            return Err(AuthError::CredsFormat);
        }
        Ok(Credentials::Basic {
            username: u.to_string(),
            password: Secret::new(p),
        })
    }

    pub fn basic_header(&self) -> Option<String> {
        match self {
            Credentials::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{}", password.expose()))
            )),
            _ => None,
        }
    }

    /// A short, secret-free description for logs ("basic auth as mirror").
    pub fn describe(&self) -> String {
        match self {
            Credentials::Anonymous => "anonymous".into(),
            Credentials::Basic { username, .. } => format!("basic auth as {username}"),
            Credentials::IdentityToken(_) => "identity token".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("credentials must be given as USER:PASSWORD")]
    CredsFormat,
    #[error("cannot read Docker config {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Docker config {path} is not valid JSON: {source}")]
    ConfigParse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("Docker config entry for {host} has an `auth` value that is not base64 USER:PASSWORD")]
    ConfigAuth { host: String },
    #[error("credential helper docker-credential-{helper} failed for {host}: {message}")]
    Helper {
        helper: String,
        host: String,
        message: String,
    },
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl Challenge {
    /// Parse the header value; unknown schemes give `None`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        let params = parse_params(rest);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Challenge::Basic),
            "bearer" => Some(Challenge::Bearer {
                realm: params.get("realm")?.clone(),
                service: params.get("service").cloned(),
            }),
            _ => None,
        }
    }
}

/// `key="value", key2=value2` with quoted strings that may contain commas.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next().is_none() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n)
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    out
}

/// A bearer token with its expiry.
#[derive(Clone, Debug)]
pub struct Token {
    pub value: Secret,
    pub expires_at: Instant,
}

impl Token {
    /// Treat a token as expired a little early so a request never races its expiry.
    pub fn fresh(&self) -> bool {
        Instant::now() + Duration::from_secs(10) < self.expires_at
    }
}

#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub(crate) fn into_token(self) -> Option<Token> {
        let value = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        // The distribution spec says 60 s when unstated.
        let ttl = self.expires_in.unwrap_or(60).max(1);
        Some(Token {
            value: Secret::new(value),
            expires_at: Instant::now() + Duration::from_secs(ttl),
        })
    }
}

/// Docker's `config.json`: static `auths` and credential helpers.
#[derive(Debug, Default, Clone)]
pub struct DockerConfig {
    auths: HashMap<String, Credentials>,
    cred_helpers: HashMap<String, String>,
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawDockerConfig {
    #[serde(default)]
    auths: HashMap<String, RawAuth>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl DockerConfig {
    /// The default location: `$REGISTRY_AUTH_FILE`, `$DOCKER_CONFIG/config.json`,
    /// or `~/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
            return Some(PathBuf::from(p));
        }
        if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
            return Some(PathBuf::from(d).join("config.json"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
    }

    /// Load `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<DockerConfig, AuthError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(DockerConfig::default());
            }
            Err(source) => {
                return Err(AuthError::ConfigRead {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        DockerConfig::parse(&text, path)
    }

    /// A Docker config's JSON; `origin` names it in errors.
    pub fn parse(text: &[u8], origin: &Path) -> Result<DockerConfig, AuthError> {
        let path = origin;
        let raw: RawDockerConfig =
            serde_json::from_slice(text).map_err(|source| AuthError::ConfigParse {
                path: path.to_path_buf(),
                source,
            })?;
        let mut auths = HashMap::new();
        for (key, entry) in raw.auths {
            let host = normalise_config_host(&key);
            let creds = if let Some(tok) = entry.identitytoken.filter(|t| !t.is_empty()) {
                Credentials::IdentityToken(Secret::new(tok))
            } else if let Some(a) = entry.auth.filter(|a| !a.is_empty()) {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(a.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| AuthError::ConfigAuth { host: host.clone() })?;
                Credentials::from_user_pass(&decoded)
                    .map_err(|_| AuthError::ConfigAuth { host: host.clone() })?
            } else if let (Some(u), Some(p)) = (entry.username, entry.password) {
                Credentials::Basic {
                    username: u,
                    password: Secret::new(p),
                }
            } else {
                continue;
            };
            auths.insert(host, creds);
        }
        let cred_helpers = raw
            .cred_helpers
            .into_iter()
            .map(|(k, v)| (normalise_config_host(&k), v))
            .collect();
        Ok(DockerConfig {
            auths,
            cred_helpers,
            creds_store: raw.creds_store.filter(|s| !s.is_empty()),
        })
    }

    /// The credentials stored for `host` in `auths` (no helper is run).
    pub fn stored(&self, host: &str) -> Option<Credentials> {
        self.auths.get(host).cloned()
    }

    /// Credentials for `host` (as in a [`crate::oci::reference::Reference`]), running a
    /// credential helper if one is configured. The helper gets the host on stdin,
    /// never on its command line.
    pub async fn lookup(&self, host: &str) -> Result<Option<Credentials>, AuthError> {
        let helper = self.cred_helpers.get(host).or(self
            .creds_store
            .as_ref()
            .filter(|_| !self.auths.contains_key(host)));
        if let Some(helper) = helper {
            let server = if host == crate::oci::reference::DOCKER_HUB {
                "https://index.docker.io/v1/"
            } else {
                host
            };
            if let Some(c) = run_helper(helper, server).await? {
                return Ok(Some(c));
            }
        }
        Ok(self.auths.get(host).cloned())
    }
}

/// Config keys are written many ways: `https://index.docker.io/v1/`, `quay.io`,
/// `http://localhost:5000/v2/`.
fn normalise_config_host(key: &str) -> String {
    let k = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            crate::oci::reference::DOCKER_HUB.to_string()
        }
        _ => host,
    }
}

async fn run_helper(helper: &str, server: &str) -> Result<Option<Credentials>, AuthError> {
    use tokio::io::AsyncWriteExt;
    let fail = |message: String| AuthError::Helper {
        helper: helper.to_string(),
        host: server.to_string(),
        message,
    };
    let mut child = tokio::process::Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot start it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .await
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .map_err(|_| fail("it did not answer within 30 s".into()))?
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // Helpers say "credentials not found in native keychain" for unknown hosts.
        if msg.to_ascii_lowercase().contains("not found") {
            return Ok(None);
        }
        return Err(fail(format!("exit status {}", out.status)));
    }
    #[derive(Deserialize)]
    struct HelperOut {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let parsed: HelperOut = serde_json::from_slice(&out.stdout)
        .map_err(|_| fail("its output is not the expected JSON".into()))?;
    // Docker's convention: username "<token>" means the secret is an identity token.
    Ok(Some(if parsed.username == "<token>" {
        Credentials::IdentityToken(Secret::new(parsed.secret))
    } else {
        Credentials::Basic {
            username: parsed.username,
            password: Secret::new(parsed.secret),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let c = Credentials::from_user_pass("me:hunter2").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.describe(), "basic auth as me");
        assert!(Credentials::from_user_pass("nocolon").is_err());
        assert!(Credentials::from_user_pass(":pw").is_err());
        // Passwords may themselves contain ':'.
        match Credentials::from_user_pass("u:a:b").unwrap() {
            Credentials::Basic { password, .. } => assert_eq!(password.expose(), "a:b"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/a:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(Challenge::parse("Bearer service=x"), None);
    }

    #[test]
    fn loads_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(
            &p,
            r#"{"auths":{
                "https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},
                "http://localhost:5000/v2/":{"username":"a","password":"b"},
                "quay.io":{"identitytoken":"tok"},
                "empty.example.com":{}
              },
              "credHelpers":{"123456789012.dkr.ecr.us-east-1.amazonaws.com":"ecr-login"}}"#,
        )
        .unwrap();
        let cfg = DockerConfig::load(&p).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let hub = rt.block_on(cfg.lookup("docker.io")).unwrap().unwrap();
        assert_eq!(hub, Credentials::from_user_pass("user:pass").unwrap());
        let local = rt.block_on(cfg.lookup("localhost:5000")).unwrap().unwrap();
        assert_eq!(local, Credentials::from_user_pass("a:b").unwrap());
        assert!(matches!(
            rt.block_on(cfg.lookup("quay.io")).unwrap(),
            Some(Credentials::IdentityToken(_))
        ));
        assert_eq!(rt.block_on(cfg.lookup("empty.example.com")).unwrap(), None);
        // The helper is not installed: a clear error naming it.
        let err = rt
            .block_on(cfg.lookup("123456789012.dkr.ecr.us-east-1.amazonaws.com"))
            .unwrap_err();
        assert!(
            err.to_string().contains("docker-credential-ecr-login"),
            "{err}"
        );
        assert!(
            DockerConfig::load(&dir.path().join("missing.json"))
                .unwrap()
                .auths
                .is_empty()
        );
    }
}
