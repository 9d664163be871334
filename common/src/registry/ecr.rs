//! Amazon ECR: registry hosts, authorization tokens, repository creation.
//!
//! ECR registries speak the distribution API with HTTP basic auth whose
//! password is a 12-hour token from `GetAuthorizationToken`. Tokens are cached
//! per account, region and role, fetched by one caller at a time (the others
//! wait for its answer: `GetAuthorizationToken` allows 20 calls a second), and
//! refreshed an hour before they expire, or at once when a registry refuses
//! the very token a request carried. Destination repositories are created on
//! first use; `RepositoryAlreadyExistsException` is success.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::{Region, SdkConfig};
use aws_sdk_ecr::types::{
    EncryptionConfiguration, EncryptionType, ImageScanningConfiguration, ImageTagMutability,
    ImageTagMutabilityExclusionFilter, ImageTagMutabilityExclusionFilterType,
};
use base64::Engine as _;
use tokio::sync::{Mutex, OnceCell};

use crate::registry::auth::{Credentials, Secret};
use crate::registry::settings::EcrRepositorySettings;

/// ECR's `PutImage` quota: 10 per second per account and region.
pub const MANIFEST_PUTS_PER_SECOND: f64 = 10.0;

/// An ECR registry host, parsed. The forms AWS documents:
/// `<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]` and the dual-stack
/// `<account>.dkr-ecr[-fips].<region>.on.aws`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EcrHost {
    pub account: String,
    pub region: String,
    /// A FIPS endpoint: the ECR API client uses FIPS endpoints too.
    pub fips: bool,
    /// A dual-stack (IPv4 and IPv6) endpoint: so does the API client.
    pub dual_stack: bool,
}

impl EcrHost {
    pub fn parse(host: &str) -> Option<EcrHost> {
        let host = host.split(':').next()?.to_ascii_lowercase();
        let (rest, dual_stack) = if let Some(r) = host
            .strip_suffix(".amazonaws.com")
            .or_else(|| host.strip_suffix(".amazonaws.com.cn"))
        {
            (r, false)
        } else {
            (host.strip_suffix(".on.aws")?, true)
        };
        let mut parts = rest.split('.');
        let account = parts.next()?;
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let service = if dual_stack {
            parts.next()?
        } else {
            if parts.next()? != "dkr" {
                return None;
            }
            parts.next()?
        };
        let fips = match (service, dual_stack) {
            ("ecr", false) | ("dkr-ecr", true) => false,
            ("ecr-fips", false) | ("dkr-ecr-fips", true) => true,
            _ => return None,
        };
        let region = parts.next()?;
        let region_ok = !region.is_empty()
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if parts.next().is_some() || !region_ok {
            return None;
        }
        Some(EcrHost {
            account: account.to_string(),
            region: region.to_string(),
            fips,
            dual_stack,
        })
    }

    /// The ARN partition of the host's region.
    pub fn partition(&self) -> &'static str {
        if self.region.starts_with("cn-") {
            "aws-cn"
        } else if self.region.starts_with("us-gov-") {
            "aws-us-gov"
        } else {
            "aws"
        }
    }

    /// Whether `other` names the same registry (account and region), in
    /// whichever endpoint form.
    pub fn same_registry(&self, other: &EcrHost) -> bool {
        self.account == other.account && self.region == other.region
    }
}

/// Whether two registry hosts are the same registry: the same ECR account
/// and region in any endpoint form (standard, FIPS, dual-stack), or else the
/// same host name.
pub fn same_registry(a: &str, b: &str) -> bool {
    match (EcrHost::parse(a), EcrHost::parse(b)) {
        (Some(x), Some(y)) => x.same_registry(&y),
        _ => a.eq_ignore_ascii_case(b),
    }
}

/// ECR's repository name rule (`CreateRepository`): 2 to 256 characters,
/// lowercase path components separated by single `.`, `_` or `-`, so `__`,
/// `--` and a trailing separator are refused, which the distribution
/// grammar allows.
pub fn valid_repository_name(name: &str) -> bool {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.split(['.', '_', '-']).all(|w| {
                !w.is_empty()
                    && w.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            })
    };
    (2..=256).contains(&name.len()) && name.split('/').all(component_ok)
}

/// A repository's tag mutability, with ECR's exclusion filters (July 2025):
/// `IMMUTABLE_WITH_EXCLUSION` keeps tags matching a filter mutable,
/// `MUTABLE_WITH_EXCLUSION` makes them immutable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TagMutability {
    pub immutable: bool,
    /// Wildcard filters (`*` stands for any run of characters).
    pub exclusions: Vec<String>,
}

impl TagMutability {
    /// From ECR's mutability name and filters; an unknown name is mutable.
    pub fn from_ecr(mutability: &str, exclusions: Vec<String>) -> TagMutability {
        match mutability {
            "IMMUTABLE" => TagMutability {
                immutable: true,
                exclusions: Vec::new(),
            },
            "IMMUTABLE_WITH_EXCLUSION" => TagMutability {
                immutable: true,
                exclusions,
            },
            "MUTABLE_WITH_EXCLUSION" => TagMutability {
                immutable: false,
                exclusions,
            },
            _ => TagMutability::default(),
        }
    }

    /// Whether a tag, once pushed, may never point elsewhere (ECR refuses
    /// any push to it, even of the same digest).
    pub fn is_immutable(&self, tag: &str) -> bool {
        self.immutable != self.exclusions.iter().any(|f| wildcard_matches(f, tag))
    }
}

/// `*` matches any run of characters (none included); all else literally.
pub fn wildcard_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let middle: Vec<&str> = parts.collect();
    let Some((last, inner)) = middle.split_last() else {
        return rest.is_empty();
    };
    for p in inner {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[derive(Debug, thiserror::Error)]
pub enum EcrError {
    #[error("ECR GetAuthorizationToken for account {account} in {region} failed: {message}")]
    Token {
        account: String,
        region: String,
        message: String,
        /// Throttled or unreachable: trying later may succeed.
        transient: bool,
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
    #[error(
        "{repository:?} is not a valid ECR repository name: ECR takes 2 to 256 characters, \
         lowercase letters and digits in path components separated by single '.', '_' or '-' \
         (no \"__\" or \"--\")"
    )]
    InvalidName { repository: String },
    #[error("ECR {operation} in account {account}, {region} failed: {message}")]
    List {
        operation: &'static str,
        account: String,
        region: String,
        message: String,
    },
}

impl EcrError {
    /// Whether trying later may succeed (a throttled or unreachable ECR API).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            EcrError::Token {
                transient: true,
                ..
            }
        )
    }
}

/// What we need to know about a destination repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryInfo {
    pub mutability: TagMutability,
    /// Created by this process just now: it holds nothing we did not write.
    pub created: bool,
}

type TokenKey = (String, String, Option<String>);
/// One cached token, behind its own lock so only one caller fetches it.
type TokenSlot = Arc<Mutex<Option<(Credentials, SystemTime)>>>;
type ClientKey = (String, Option<String>, bool, bool);

/// ECR control-plane access shared by all copies in a process.
#[derive(Debug, Default)]
pub struct Ecr {
    base: OnceCell<SdkConfig>,
    clients: Mutex<HashMap<ClientKey, aws_sdk_ecr::Client>>,
    tokens: std::sync::Mutex<HashMap<TokenKey, TokenSlot>>,
    repositories: std::sync::Mutex<HashMap<(EcrHost, String), RepositoryInfo>>,
}

/// Refresh this long before ECR's stated expiry.
const REFRESH_MARGIN: Duration = Duration::from_secs(3600);
/// How long a token reported as already expired is used before asking again.
const SKEWED_TOKEN_USE: Duration = Duration::from_secs(300);

/// The SDK flags an ECR host's endpoint form asks for: (FIPS, dual-stack).
pub fn endpoint_flags(host: &EcrHost) -> (bool, bool) {
    (host.fips, host.dual_stack)
}

impl Ecr {
    pub fn new() -> Ecr {
        Ecr::default()
    }

    async fn client(&self, host: &EcrHost, role_arn: Option<&str>) -> aws_sdk_ecr::Client {
        let (fips, dual_stack) = endpoint_flags(host);
        let key = (
            host.region.clone(),
            role_arn.map(str::to_string),
            fips,
            dual_stack,
        );
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(&key) {
            return c.clone();
        }
        // Region and credentials come from the standard AWS_* variables and
        // profiles; the SDK's own retry policy covers throttling.
        let base = self.base.get_or_init(crate::aws::config).await;
        let region = Region::new(host.region.clone());
        let mut builder = aws_sdk_ecr::config::Builder::from(base)
            .region(region.clone())
            .use_fips(fips)
            .use_dual_stack(dual_stack);
        if let Some(role) = role_arn {
            let provider = aws_config::sts::AssumeRoleProvider::builder(role)
                .session_name("mirrorfleet")
                .region(region)
                .configure(base)
                .build()
                .await;
            builder = builder.credentials_provider(provider);
        }
        let client = aws_sdk_ecr::Client::from_conf(builder.build());
        clients.insert(key, client.clone());
        client
    }

    fn repos(&self) -> std::sync::MutexGuard<'_, HashMap<(EcrHost, String), RepositoryInfo>> {
        // Poisoned only by a panic mid-insert of plain values: still usable.
        self.repositories.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slot(&self, host: &EcrHost, role_arn: Option<&str>) -> TokenSlot {
        let key = (
            host.account.clone(),
            host.region.clone(),
            role_arn.map(str::to_string),
        );
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone()
    }

    /// Basic-auth credentials for an ECR registry, from cache when still
    /// fresh. Concurrent callers for one registry and role share one fetch.
    pub async fn credentials(
        &self,
        host: &EcrHost,
        role_arn: Option<&str>,
    ) -> Result<Credentials, EcrError> {
        let slot = self.slot(host, role_arn);
        let mut cached = slot.lock().await;
        if let Some((c, exp)) = cached.as_ref()
            && SystemTime::now() + REFRESH_MARGIN < *exp
        {
            return Ok(c.clone());
        }
        let fetched = self.fetch_token(host, role_arn).await?;
        *cached = Some(fetched.clone());
        Ok(fetched.0)
    }

    async fn fetch_token(
        &self,
        host: &EcrHost,
        role_arn: Option<&str>,
    ) -> Result<(Credentials, SystemTime), EcrError> {
        let err = |message: String, transient: bool| EcrError::Token {
            account: host.account.clone(),
            region: host.region.clone(),
            message,
            transient,
        };
        let client = self.client(host, role_arn).await;
        #[allow(deprecated)] // registryIds still selects the account for cross-account pulls
        let out = client
            .get_authorization_token()
            .registry_ids(&host.account)
            .send()
            .await
            .map_err(|e| err(crate::aws::describe(&e), crate::aws::is_transient(&e)))?;
        let data = out
            .authorization_data()
            .first()
            .ok_or_else(|| err("the response had no authorization data".into(), false))?;
        let token = data
            .authorization_token()
            .ok_or_else(|| err("the response had no token".into(), false))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| err("the token is not base64 USER:PASSWORD".into(), false))?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or_else(|| err("the token is not USER:PASSWORD".into(), false))?;
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
        Ok((creds, expires))
    }

    /// Forget a cached token that a registry refused, but only if it is the
    /// one that was refused (`used`): a request that carried no token, or an
    /// older one, must not throw away a fresh token others are using.
    pub async fn invalidate(&self, host: &EcrHost, role_arn: Option<&str>, used: &Credentials) {
        let slot = self.slot(host, role_arn);
        let mut cached = slot.lock().await;
        if cached.as_ref().is_some_and(|(c, _)| c == used) {
            *cached = None;
        }
    }

    /// Make sure `repository` exists, creating it with `settings` when allowed,
    /// and report how its tags may change.
    pub async fn ensure_repository(
        &self,
        host: &EcrHost,
        role_arn: Option<&str>,
        repository: &str,
        settings: &EcrRepositorySettings,
    ) -> Result<RepositoryInfo, EcrError> {
        if !valid_repository_name(repository) {
            return Err(EcrError::InvalidName {
                repository: repository.to_string(),
            });
        }
        let key = (host.clone(), repository.to_string());
        if let Some(info) = self.repos().get(&key) {
            return Ok(info.clone());
        }
        let client = self.client(host, role_arn).await;
        let info = match self.describe(&client, host, repository).await? {
            Some(mutability) => RepositoryInfo {
                mutability,
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
        self.repos().insert(key, info.clone());
        Ok(info)
    }

    /// The mutability of a repository this process has already described
    /// or created, without asking ECR.
    pub fn known_mutability(&self, registry: &str, repository: &str) -> Option<TagMutability> {
        let host = EcrHost::parse(registry)?;
        self.repos()
            .get(&(host, repository.to_string()))
            .map(|i| i.mutability.clone())
    }

    /// Which of `digests` the repository already holds, from
    /// `BatchCheckLayerAvailability` (100 digests per call, ECR's limit):
    /// one call instead of a HEAD per blob.
    pub async fn available_layers(
        &self,
        host: &EcrHost,
        role_arn: Option<&str>,
        repository: &str,
        digests: &[crate::oci::digest::Digest],
    ) -> Result<Vec<crate::oci::digest::Digest>, EcrError> {
        let client = self.client(host, role_arn).await;
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

    /// Every repository of the registry (`DescribeRepositories`, all pages):
    /// ECR has no `/v2/_catalog`.
    pub async fn list_repositories(
        &self,
        host: &EcrHost,
        role_arn: Option<&str>,
    ) -> Result<Vec<String>, EcrError> {
        let client = self.client(host, role_arn).await;
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
        let client = self.client(host, role_arn).await;
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

    fn list_error<E>(
        &self,
        operation: &'static str,
        host: &EcrHost,
        e: &aws_sdk_ecr::error::SdkError<E, aws_sdk_ecr::config::http::HttpResponse>,
    ) -> EcrError
    where
        E: aws_sdk_ecr::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        EcrError::List {
            operation,
            account: host.account.clone(),
            region: host.region.clone(),
            message: crate::aws::describe(e),
        }
    }

    async fn describe(
        &self,
        client: &aws_sdk_ecr::Client,
        host: &EcrHost,
        repository: &str,
    ) -> Result<Option<TagMutability>, EcrError> {
        use aws_sdk_ecr::operation::describe_repositories::DescribeRepositoriesError;
        match client
            .describe_repositories()
            .registry_id(&host.account)
            .repository_names(repository)
            .send()
            .await
        {
            Ok(out) => Ok(out.repositories().first().map(|r| {
                TagMutability::from_ecr(
                    r.image_tag_mutability().map_or("MUTABLE", |m| m.as_str()),
                    r.image_tag_mutability_exclusion_filters()
                        .iter()
                        .map(|f| f.filter().to_string())
                        .collect(),
                )
            })),
            Err(e) => match e.as_service_error() {
                Some(DescribeRepositoriesError::RepositoryNotFoundException(_)) => Ok(None),
                _ => Err(EcrError::Describe {
                    repository: repository.to_string(),
                    region: host.region.clone(),
                    message: crate::aws::describe(&e),
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
        for f in &settings.tag_mutability_exclusions {
            let filter = ImageTagMutabilityExclusionFilter::builder()
                .filter_type(ImageTagMutabilityExclusionFilterType::Wildcard)
                .filter(f)
                .build()
                .map_err(|e| err(e.to_string()))?;
            req = req.image_tag_mutability_exclusion_filters(filter);
        }
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
                    mutability: TagMutability::from_ecr(
                        &settings.tag_mutability,
                        settings.tag_mutability_exclusions.clone(),
                    ),
                    created: true,
                })
            }
            Err(e) => match e.as_service_error() {
                // Another worker created it between our describe and create.
                Some(CreateRepositoryError::RepositoryAlreadyExistsException(_)) => {
                    let mutability = self
                        .describe(client, host, repository)
                        .await?
                        .unwrap_or_default();
                    Ok(RepositoryInfo {
                        mutability,
                        created: false,
                    })
                }
                _ => Err(err(crate::aws::describe(&e))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ecr_hosts() {
        let cases = [
            (
                "123456789012.dkr.ecr.us-east-1.amazonaws.com",
                ("us-east-1", false, false, "aws"),
            ),
            (
                "123456789012.dkr.ecr.us-east-1.amazonaws.com:443",
                ("us-east-1", false, false, "aws"),
            ),
            (
                "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com",
                ("us-gov-west-1", true, false, "aws-us-gov"),
            ),
            (
                "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
                ("cn-north-1", false, false, "aws-cn"),
            ),
            (
                "123456789012.dkr-ecr.eu-west-1.on.aws",
                ("eu-west-1", false, true, "aws"),
            ),
            (
                "123456789012.dkr-ecr-fips.us-east-2.on.aws",
                ("us-east-2", true, true, "aws"),
            ),
        ];
        for (raw, (region, fips, dual, partition)) in cases {
            let h = EcrHost::parse(raw).unwrap_or_else(|| panic!("{raw}"));
            assert_eq!(h.account, "123456789012", "{raw}");
            assert_eq!(
                (h.region.as_str(), h.fips, h.dual_stack, h.partition()),
                (region, fips, dual, partition),
                "{raw}"
            );
            assert_eq!(endpoint_flags(&h), (fips, dual), "{raw}");
        }
        for bad in [
            "docker.io",
            "12345.dkr.ecr.us-east-1.amazonaws.com",
            "123456789012.dkr.ecr.amazonaws.com",
            "123456789012.dkr.ecr.us-east-1.example.com",
            "public.ecr.aws",
            "123456789012.api.ecr.us-east-1.amazonaws.com",
            "123456789012.dkr.ecr.us-east-1.on.aws",
            "123456789012.dkr-ecr.on.aws",
            "ecr.us-east-1.api.aws",
        ] {
            assert!(EcrHost::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn one_registry_in_every_endpoint_form() {
        let std = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
        assert!(same_registry(
            std,
            "123456789012.dkr.ecr-fips.us-east-1.amazonaws.com"
        ));
        assert!(same_registry(std, "123456789012.dkr-ecr.us-east-1.on.aws"));
        assert!(!same_registry(
            std,
            "123456789012.dkr.ecr.us-east-2.amazonaws.com"
        ));
        assert!(!same_registry(
            std,
            "210987654321.dkr.ecr.us-east-1.amazonaws.com"
        ));
        assert!(same_registry(
            "registry.example.com",
            "Registry.example.com"
        ));
        assert!(!same_registry("registry.example.com", std));
    }

    #[test]
    fn repository_names_follow_ecrs_rule() {
        for good in ["ab", "team/app", "a.b_c-d/e1", "mirror/library/golang"] {
            assert!(valid_repository_name(good), "{good}");
        }
        for bad in [
            "a", "a__b", "a--b", "a/", "/a", "a//b", "A-b", "a-", "-a", "a._b",
        ] {
            assert!(!valid_repository_name(bad), "{bad}");
        }
        assert!(!valid_repository_name(&"a".repeat(257)));
    }

    #[test]
    fn exclusion_filters_flip_a_tags_mutability() {
        let sig = "sha256-0123.sig";
        let plain = TagMutability::from_ecr("IMMUTABLE", vec!["*".into()]);
        assert!(plain.is_immutable("1.0") && plain.is_immutable(sig));
        let with = TagMutability::from_ecr(
            "IMMUTABLE_WITH_EXCLUSION",
            vec!["sha256-*".into(), "latest".into()],
        );
        assert!(with.is_immutable("1.0"));
        assert!(!with.is_immutable(sig) && !with.is_immutable("latest"));
        let mutable = TagMutability::from_ecr("MUTABLE_WITH_EXCLUSION", vec!["v*-rc*".into()]);
        assert!(mutable.is_immutable("v1-rc2") && !mutable.is_immutable("v1"));
        assert!(!TagMutability::from_ecr("MUTABLE", vec![]).is_immutable("x"));
        for (p, t, want) in [
            ("*", "", true),
            ("a*", "abc", true),
            ("*c", "abc", true),
            ("a*c", "ac", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "acb", false),
            ("abc", "abcd", false),
            ("*.sig", "sha256-1.sig", true),
            ("*.sig", "sha256-1.att", false),
        ] {
            assert_eq!(wildcard_matches(p, t), want, "{p} {t}");
        }
    }
}
