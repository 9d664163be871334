//! Settings and credentials kept in AWS, so a fleet needs no file and no
//! secret on a command line: the registry settings from an SSM parameter
//! (`ssm:/name`, SecureString included) or a Secrets Manager secret
//! (`secretsmanager:ARN`), a registry's credentials from a secret
//! (`credentials_secret`), and AWS keys for an ECR registry in another
//! partition (`aws_credentials_secret`).
//!
//! Values are read once per process and kept only in memory. A credential
//! secret is read again after the registry refuses what it held (a 401: the
//! secret was rotated). Errors name the parameter or secret, never a value.

use std::collections::HashMap;
use std::path::PathBuf;

use aws_config::SdkConfig;
use serde::Deserialize;
use tokio::sync::{Mutex, OnceCell};

use crate::registry::auth::{Credentials, DockerConfig, Secret};

/// Where the registry settings come from (`--registries`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingsSource {
    File(PathBuf),
    /// An SSM parameter name (`/mirrorfleet/registries`), decrypted if SecureString.
    Ssm(String),
    /// A Secrets Manager secret (ARN or name) whose string is the YAML.
    Secret(String),
}

impl SettingsSource {
    pub fn parse(raw: &str) -> SettingsSource {
        if let Some(name) = raw.strip_prefix("ssm:") {
            SettingsSource::Ssm(name.to_string())
        } else if let Some(id) = raw.strip_prefix("secretsmanager:") {
            SettingsSource::Secret(id.to_string())
        } else {
            SettingsSource::File(PathBuf::from(raw))
        }
    }
}

impl std::fmt::Display for SettingsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SettingsSource::File(p) => write!(f, "{}", p.display()),
            SettingsSource::Ssm(n) => write!(f, "SSM parameter {n}"),
            SettingsSource::Secret(id) => write!(f, "secret {id}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read SSM parameter {name}: {message}")]
    Parameter {
        name: String,
        message: String,
        #[source]
        cause: Option<crate::error::Cause>,
    },
    #[error("cannot read secret {id}: {message}")]
    Read {
        id: String,
        message: String,
        #[source]
        cause: Option<crate::error::Cause>,
    },
    #[error(
        "secret {id} holds no credentials for {host}: it must be JSON with \"username\" and \
         \"password\", or a Docker config with an \"auths\" entry for the registry"
    )]
    Shape { id: String, host: String },
    #[error(
        "secret {id} holds no AWS keys: it must be JSON with \"aws_access_key_id\" and \
         \"aws_secret_access_key\" (and optionally \"aws_session_token\")"
    )]
    AwsKeysShape { id: String },
}

/// The AWS reads, shared per process.
#[derive(Default)]
pub struct Secrets {
    config: OnceCell<SdkConfig>,
    /// Secret strings by id, until the registry refuses what one held.
    cache: Mutex<HashMap<String, Secret>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the values.
        f.debug_struct("Secrets").finish_non_exhaustive()
    }
}

impl Secrets {
    /// The process's one AWS configuration, loaded on first use.
    pub(crate) async fn config(&self) -> &SdkConfig {
        self.config.get_or_init(crate::aws::config).await
    }

    /// The settings text of an SSM parameter, decrypted.
    pub async fn parameter(&self, name: &str) -> Result<String, SecretError> {
        let client = aws_sdk_ssm::Client::new(self.config().await);
        let out = client
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| SecretError::Parameter {
                name: name.to_string(),
                message: sdk_words(&e),
                cause: Some(Box::new(e)),
            })?;
        out.parameter()
            .and_then(|p| p.value())
            .map(str::to_string)
            .ok_or_else(|| SecretError::Parameter {
                name: name.to_string(),
                message: "it has no value".into(),
                cause: None,
            })
    }

    /// A secret's string, from memory after the first read.
    pub async fn string(&self, id: &str) -> Result<Secret, SecretError> {
        if let Some(s) = self.cache.lock().await.get(id) {
            return Ok(s.clone());
        }
        let client = aws_sdk_secretsmanager::Client::new(self.config().await);
        let out = client
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .map_err(|e| SecretError::Read {
                id: id.to_string(),
                message: sdk_words(&e),
                cause: Some(Box::new(e)),
            })?;
        let value = out.secret_string().ok_or_else(|| SecretError::Read {
            id: id.to_string(),
            message: "it holds binary data, not a string".into(),
            cause: None,
        })?;
        let s = Secret::new(value);
        self.cache.lock().await.insert(id.to_string(), s.clone());
        Ok(s)
    }

    /// Forget a secret, so the next use reads it again (after a rotation).
    pub async fn forget(&self, id: &str) {
        self.cache.lock().await.remove(id);
    }

    /// The credentials for `host` in secret `id`.
    pub async fn credentials(&self, id: &str, host: &str) -> Result<Credentials, SecretError> {
        let text = self.string(id).await?;
        credentials_in(text.expose(), host).ok_or_else(|| SecretError::Shape {
            id: id.to_string(),
            host: host.to_string(),
        })
    }
}

impl Secrets {
    /// AWS keys kept in secret `id`, for an ECR registry in another partition.
    pub async fn aws_keys(
        &self,
        id: &str,
    ) -> Result<aws_credential_types::Credentials, SecretError> {
        #[derive(Deserialize)]
        struct Keys {
            aws_access_key_id: String,
            aws_secret_access_key: String,
            #[serde(default)]
            aws_session_token: Option<String>,
        }
        let text = self.string(id).await?;
        let keys: Keys = serde_json::from_str(text.expose())
            .map_err(|_| SecretError::AwsKeysShape { id: id.to_string() })?;
        Ok(aws_credential_types::Credentials::new(
            keys.aws_access_key_id,
            keys.aws_secret_access_key,
            keys.aws_session_token,
            None,
            "mirrorfleet-aws-credentials-secret",
        ))
    }
}

/// The credentials for `host` in a secret's text: `{"username", "password"}`,
/// or a Docker config's `{"auths": {...}}`.
fn credentials_in(text: &str, host: &str) -> Option<Credentials> {
    #[derive(Deserialize)]
    struct UserPass {
        username: String,
        password: String,
    }
    if let Ok(u) = serde_json::from_str::<UserPass>(text) {
        return Some(Credentials::Basic {
            username: u.username,
            password: Secret::new(u.password),
        });
    }
    let config = DockerConfig::parse(text.as_bytes(), &PathBuf::from("secret")).ok()?;
    config.stored(host)
}

/// An SDK error in words: its code and message when the service sent them.
fn sdk_words<E, R>(e: &aws_sdk_ssm::error::SdkError<E, R>) -> String
where
    E: aws_sdk_ssm::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    match e {
        aws_sdk_ssm::error::SdkError::ServiceError(ctx) => {
            let err = ctx.err();
            match (err.code(), err.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_string(),
                _ => crate::error::error_line(e),
            }
        }
        _ => crate::error::error_line(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_shapes() {
        assert_eq!(
            SettingsSource::parse("ssm:/mirrorfleet/registries"),
            SettingsSource::Ssm("/mirrorfleet/registries".into())
        );
        assert_eq!(
            SettingsSource::parse("secretsmanager:arn:aws:secretsmanager:us-east-1:1:secret:x"),
            SettingsSource::Secret("arn:aws:secretsmanager:us-east-1:1:secret:x".into())
        );
        assert_eq!(
            SettingsSource::parse("registries.yaml"),
            SettingsSource::File("registries.yaml".into())
        );
        let basic = credentials_in(r#"{"username": "u", "password": "p"}"#, "r.example.com");
        assert!(matches!(basic, Some(Credentials::Basic { ref username, .. }) if username == "u"));
        // "u:p" in base64.
        let docker = r#"{"auths": {"r.example.com": {"auth": "dTpw"}}}"#;
        assert!(credentials_in(docker, "r.example.com").is_some());
        assert!(credentials_in(docker, "other.example.com").is_none());
        assert!(credentials_in(r#"{"user": "u"}"#, "r.example.com").is_none());
    }
}
