//! Amazon ECR: registry hosts, authorization tokens, repository creation.
//!
//! ECR registries speak the distribution API with HTTP basic auth whose
//! password is a 12-hour token from `GetAuthorizationToken`. Tokens are cached
//! per account, region and role and refreshed an hour before they expire (or at
//! once when a registry says the token expired). Destination repositories are
//! created on first use; `RepositoryAlreadyExistsException` is success.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_config::{Region, SdkConfig};
use aws_sdk_ecr::types::{
    EncryptionConfiguration, EncryptionType, ImageScanningConfiguration, ImageTagMutability,
};
use base64::Engine as _;
use tokio::sync::{Mutex, OnceCell};

use crate::auth::{Credentials, Secret};
use crate::settings::EcrRepositorySettings;

/// An ECR registry host, parsed: `<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EcrHost {
    pub account: String,
    pub region: String,
    pub fips: bool,
}

impl EcrHost {
    pub fn parse(host: &str) -> Option<EcrHost> {
        let host = host.split(':').next()?;
        let rest = host
            .strip_suffix(".amazonaws.com")
            .or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
        let mut parts = rest.split('.');
        let account = parts.next()?;
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if parts.next()? != "dkr" {
            return None;
        }
        let fips = match parts.next()? {
            "ecr" => false,
            "ecr-fips" => true,
            _ => return None,
        };
        let region = parts.next()?;
        if parts.next().is_some() || region.is_empty() {
            return None;
        }
        Some(EcrHost {
            account: account.to_string(),
            region: region.to_string(),
            fips,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EcrError {
    #[error("ECR GetAuthorizationToken for account {account} in {region} failed: {message}")]
    Token {
        account: String,
        region: String,
        message: String,
    },
    #[error("ECR could not create repository {repository} in {region}: {message}")]
    Create {
        repository: String,
        region: String,
        message: String,
    },
    #[error("ECR DescribeRepositories for {repository} in {region} failed: {message}")]
    Describe {
        repository: String,
        region: String,
        message: String,
    },
    #[error("ECR {operation} in account {account}, {region} failed: {message}")]
    List {
        operation: &'static str,
        account: String,
        region: String,
        message: String,
    },
}

/// What we need to know about a destination repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepositoryInfo {
    pub immutable_tags: bool,
    pub created: bool,
}

type TokenKey = (String, String, Option<String>);

/// ECR control-plane access shared by all copies in a process.
#[derive(Debug, Default)]
pub struct Ecr {
    base: OnceCell<SdkConfig>,
    clients: Mutex<HashMap<(String, Option<String>), aws_sdk_ecr::Client>>,
    tokens: Mutex<HashMap<TokenKey, (Credentials, SystemTime)>>,
    repositories: Mutex<HashMap<(EcrHost, String), RepositoryInfo>>,
}

/// Refresh this long before ECR's stated expiry.
const REFRESH_MARGIN: Duration = Duration::from_secs(3600);
/// How long a token reported as already expired is used before asking again.
const SKEWED_TOKEN_USE: Duration = Duration::from_secs(300);

fn display_error<E: std::error::Error>(e: &E) -> String {
    // The SDK's Display is terse ("service error"); the source chain has the words.
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

impl Ecr {
    pub fn new() -> Ecr {
        Ecr::default()
    }

    async fn client(&self, region: &str, role_arn: Option<&str>) -> aws_sdk_ecr::Client {
        let key = (region.to_string(), role_arn.map(str::to_string));
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(&key) {
            return c.clone();
        }
        // Region and credentials come from the standard AWS_* variables and
        // profiles; the SDK's own retry policy covers throttling.
        let base = self.base.get_or_init(crate::aws::config).await;
        let mut builder =
            aws_sdk_ecr::config::Builder::from(base).region(Region::new(region.to_string()));
        if let Some(role) = role_arn {
            let provider = aws_config::sts::AssumeRoleProvider::builder(role)
                .session_name("mirrorfleet")
                .region(Region::new(region.to_string()))
                .configure(base)
                .build()
                .await;
            builder = builder.credentials_provider(provider);
        }
        let client = aws_sdk_ecr::Client::from_conf(builder.build());
        clients.insert(key, client.clone());
        client
    }

    /// Basic-auth credentials for an ECR registry, from cache when still fresh.
    pub async fn credentials(
        &self,
        host: &EcrHost,
        role_arn: Option<&str>,
    ) -> Result<Credentials, EcrError> {
        let key = (
            host.account.clone(),
            host.region.clone(),
            role_arn.map(str::to_string),
        );
        if let Some((c, exp)) = self.tokens.lock().await.get(&key)
            && SystemTime::now() + REFRESH_MARGIN < *exp
        {
            return Ok(c.clone());
        }
        let err = |message: String| EcrError::Token {
            account: host.account.clone(),
            region: host.region.clone(),
            message,
        };
        let client = self.client(&host.region, role_arn).await;
        #[allow(deprecated)] // registryIds still selects the account for cross-account pulls
        let out = client
            .get_authorization_token()
            .registry_ids(&host.account)
            .send()
            .await
            .map_err(|e| err(display_error(&e)))?;
        let data = out
            .authorization_data()
            .first()
            .ok_or_else(|| err("the response had no authorization data".into()))?;
        let token = data
            .authorization_token()
            .ok_or_else(|| err("the response had no token".into()))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| err("the token is not base64 USER:PASSWORD".into()))?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or_else(|| err("the token is not USER:PASSWORD".into()))?;
        let creds = Credentials::Basic {
            username: user.to_string(),
            password: Secret::new(pass),
        };
        let now = SystemTime::now();
        let expires = data
            .expires_at()
            .and_then(|t| SystemTime::try_from(*t).ok())
            .unwrap_or_else(|| now + Duration::from_secs(12 * 3600));
        // A token that says it is already (nearly) expired was still just
        // issued: a skewed clock, or moto's fixed date. Keep it a few minutes
        // rather than fetching a new one for every request; a registry that
        // refuses it as expired makes us fetch at once anyway.
        let expires = expires.max(now + REFRESH_MARGIN + SKEWED_TOKEN_USE);
        self.tokens
            .lock()
            .await
            .insert(key, (creds.clone(), expires));
        Ok(creds)
    }

    /// Forget a cached token (the registry said it expired).
    pub async fn invalidate(&self, host: &EcrHost, role_arn: Option<&str>) {
        let key = (
            host.account.clone(),
            host.region.clone(),
            role_arn.map(str::to_string),
        );
        self.tokens.lock().await.remove(&key);
    }

    /// Make sure `repository` exists, creating it with `settings` when allowed,
    /// and report whether its tags are immutable.
    pub async fn ensure_repository(
        &self,
        host: &EcrHost,
        role_arn: Option<&str>,
        repository: &str,
        settings: &EcrRepositorySettings,
    ) -> Result<RepositoryInfo, EcrError> {
        let key = (host.clone(), repository.to_string());
        if let Some(info) = self.repositories.lock().await.get(&key) {
            return Ok(*info);
        }
        let client = self.client(&host.region, role_arn).await;
        let info = match self.describe(&client, host, repository).await? {
            Some(immutable_tags) => RepositoryInfo {
                immutable_tags,
                created: false,
            },
            None if settings.create_repositories => {
                self.create(&client, host, repository, settings).await?
            }
            None => {
                return Err(EcrError::Describe {
                    repository: repository.to_string(),
                    region: host.region.clone(),
                    message: "the repository does not exist and create_repositories is off".into(),
                });
            }
        };
        self.repositories.lock().await.insert(key, info);
        Ok(info)
    }

    /// Every repository of the registry (`DescribeRepositories`, all pages):
    /// ECR has no `/v2/_catalog`.
    /// Which of `digests` the repository already holds, from
    /// `BatchCheckLayerAvailability` (100 digests per call, ECR's limit):
    /// one call instead of a HEAD per blob.
    pub async fn available_layers(
        &self,
        host: &EcrHost,
        role_arn: Option<&str>,
        repository: &str,
        digests: &[crate::digest::Digest],
    ) -> Result<Vec<crate::digest::Digest>, EcrError> {
        let client = self.client(&host.region, role_arn).await;
        let mut out = Vec::new();
        for chunk in digests.chunks(100) {
            let answer = client
                .batch_check_layer_availability()
                .registry_id(&host.account)
                .repository_name(repository)
                .set_layer_digests(Some(chunk.iter().map(ToString::to_string).collect()))
                .send()
                .await
                .map_err(|e| self.list_error("BatchCheckLayerAvailability", host, &e))?;
            out.extend(
                answer
                    .layers()
                    .iter()
                    .filter(|l| {
                        l.layer_availability()
                            == Some(&aws_sdk_ecr::types::LayerAvailability::Available)
                    })
                    .filter_map(|l| l.layer_digest()?.parse().ok()),
            );
        }
        Ok(out)
    }

    pub async fn list_repositories(
        &self,
        host: &EcrHost,
        role_arn: Option<&str>,
    ) -> Result<Vec<String>, EcrError> {
        let client = self.client(&host.region, role_arn).await;
        let mut pages = client
            .describe_repositories()
            .registry_id(&host.account)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.list_error("DescribeRepositories", host, &e))?;
            out.extend(
                page.repositories()
                    .iter()
                    .filter_map(|r| r.repository_name().map(str::to_string)),
            );
        }
        Ok(out)
    }

    /// Every tag of `repository`, oldest push first (`DescribeImages`, all
    /// pages), so "the newest N" can fall back to push order for tags that
    /// are not versions.
    pub async fn list_tags(
        &self,
        host: &EcrHost,
        role_arn: Option<&str>,
        repository: &str,
    ) -> Result<Vec<String>, EcrError> {
        use aws_sdk_ecr::types::{DescribeImagesFilter, TagStatus};
        let client = self.client(&host.region, role_arn).await;
        let mut pages = client
            .describe_images()
            .registry_id(&host.account)
            .repository_name(repository)
            .filter(
                DescribeImagesFilter::builder()
                    .tag_status(TagStatus::Tagged)
                    .build(),
            )
            .into_paginator()
            .send();
        let mut images: Vec<(i64, Vec<String>)> = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.list_error("DescribeImages", host, &e))?;
            for d in page.image_details() {
                let pushed = d.image_pushed_at().map(|t| t.secs()).unwrap_or_default();
                images.push((pushed, d.image_tags().to_vec()));
            }
        }
        images.sort_by_key(|(pushed, _)| *pushed);
        Ok(images.into_iter().flat_map(|(_, tags)| tags).collect())
    }

    fn list_error<E: std::error::Error + 'static>(
        &self,
        operation: &'static str,
        host: &EcrHost,
        e: &E,
    ) -> EcrError {
        EcrError::List {
            operation,
            account: host.account.clone(),
            region: host.region.clone(),
            message: display_error(e),
        }
    }

    async fn describe(
        &self,
        client: &aws_sdk_ecr::Client,
        host: &EcrHost,
        repository: &str,
    ) -> Result<Option<bool>, EcrError> {
        use aws_sdk_ecr::operation::describe_repositories::DescribeRepositoriesError;
        match client
            .describe_repositories()
            .registry_id(&host.account)
            .repository_names(repository)
            .send()
            .await
        {
            Ok(out) => Ok(out.repositories().first().map(|r| {
                matches!(
                    r.image_tag_mutability(),
                    Some(ImageTagMutability::Immutable)
                )
            })),
            Err(e) => match e.as_service_error() {
                Some(DescribeRepositoriesError::RepositoryNotFoundException(_)) => Ok(None),
                _ => Err(EcrError::Describe {
                    repository: repository.to_string(),
                    region: host.region.clone(),
                    message: display_error(&e),
                }),
            },
        }
    }

    async fn create(
        &self,
        client: &aws_sdk_ecr::Client,
        host: &EcrHost,
        repository: &str,
        settings: &EcrRepositorySettings,
    ) -> Result<RepositoryInfo, EcrError> {
        use aws_sdk_ecr::operation::create_repository::CreateRepositoryError;
        let err = |message: String| EcrError::Create {
            repository: repository.to_string(),
            region: host.region.clone(),
            message,
        };
        let mut req = client
            .create_repository()
            .registry_id(&host.account)
            .repository_name(repository)
            .image_tag_mutability(ImageTagMutability::from(settings.tag_mutability.as_str()))
            .image_scanning_configuration(
                ImageScanningConfiguration::builder()
                    .scan_on_push(settings.scan_on_push)
                    .build(),
            );
        if let Some(enc) = &settings.encryption {
            let cfg = EncryptionConfiguration::builder()
                .encryption_type(EncryptionType::from(enc.as_str()))
                .set_kms_key(settings.kms_key.clone())
                .build()
                .map_err(|e| err(e.to_string()))?;
            req = req.encryption_configuration(cfg);
        }
        match req.send().await {
            Ok(_) => {
                tracing::info!(repository, region = %host.region, "created ECR repository");
                Ok(RepositoryInfo {
                    immutable_tags: settings.tag_mutability == "IMMUTABLE",
                    created: true,
                })
            }
            Err(e) => match e.as_service_error() {
                // Another worker created it between our describe and create.
                Some(CreateRepositoryError::RepositoryAlreadyExistsException(_)) => {
                    let immutable = self
                        .describe(client, host, repository)
                        .await?
                        .unwrap_or(false);
                    Ok(RepositoryInfo {
                        immutable_tags: immutable,
                        created: false,
                    })
                }
                _ => Err(err(display_error(&e))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ecr_hosts() {
        let h = EcrHost::parse("123456789012.dkr.ecr.us-east-1.amazonaws.com").unwrap();
        assert_eq!(
            (h.account.as_str(), h.region.as_str(), h.fips),
            ("123456789012", "us-east-1", false)
        );
        let h = EcrHost::parse("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com").unwrap();
        assert!(h.fips);
        let h = EcrHost::parse("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn").unwrap();
        assert_eq!(h.region, "cn-north-1");
        for bad in [
            "docker.io",
            "12345.dkr.ecr.us-east-1.amazonaws.com",
            "123456789012.dkr.ecr.amazonaws.com",
            "123456789012.dkr.ecr.us-east-1.example.com",
            "public.ecr.aws",
            "123456789012.api.ecr.us-east-1.amazonaws.com",
        ] {
            assert!(EcrHost::parse(bad).is_none(), "{bad}");
        }
    }
}
