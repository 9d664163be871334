//! Amazon ECR: registry hosts, authorization tokens, repository creation.
//!
//! ECR registries speak the distribution API with HTTP basic auth whose
//! password is a 12-hour token from `GetAuthorizationToken`. Tokens are cached
//! per account, region and access (role, external id, keys), fetched by one caller at a time (the others
//! wait for its answer: `GetAuthorizationToken` allows 20 calls a second), and
//! refreshed an hour before they expire, or at once when a registry refuses
//! the very token a request carried. Destination repositories are created on
//! first use; `RepositoryAlreadyExistsException` is success.

mod access;
mod digests;
mod host;
mod mutability;
#[cfg(test)]
mod tests;

pub use access::EcrAccess;
pub use digests::{IMAGES_PER_CALL, ImageDigests};
pub use host::{
    EcrHost, canonical_registry, endpoint_flags, registry_spellings, same_registry,
    valid_repository_name,
};
pub use mutability::{TagMutability, wildcard_matches};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_ecr::types::{
    EncryptionConfiguration, EncryptionType, ImageScanningConfiguration, ImageTagMutability,
    ImageTagMutabilityExclusionFilter, ImageTagMutabilityExclusionFilterType,
};
use base64::Engine as _;
use tokio::sync::Mutex;

use crate::error::Cause;
use crate::registry::auth::{Credentials, Secret};
use crate::registry::secrets::{SecretError, Secrets};
use crate::registry::settings::EcrRepositorySettings;

/// ECR's `PutImage` quota: 10 per second per account and region.
pub const MANIFEST_PUTS_PER_SECOND: f64 = 10.0;

#[derive(Debug, thiserror::Error)]
pub enum EcrError {
    #[error("ECR GetAuthorizationToken for account {account} in {region} failed: {message}")]
    Token {
        account: String,
        region: String,
        message: String,
        /// Throttled or unreachable: trying later may succeed.
        transient: bool,
        /// The API refused keys read from a secret (rotated since).
        keys_refused: bool,
        #[source]
        cause: Option<Cause>,
    },
    #[error("ECR could not create repository {repository} in {region}: {message}")]
    Create {
        repository: String,
        region: String,
        message: String,
        #[source]
        cause: Option<Cause>,
    },
    #[error("ECR DescribeRepositories for {repository} in {region} failed: {message}")]
    Describe {
        repository: String,
        region: String,
        message: String,
        #[source]
        cause: Option<Cause>,
    },
    /// The keys for the registry could not be read from their secret.
    #[error("ECR account {account} in {region}: {source}")]
    Keys {
        account: String,
        region: String,
        #[source]
        source: SecretError,
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
        #[source]
        cause: Option<Cause>,
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

type TokenKey = (String, String, EcrAccess);

/// One cached token, behind its own lock so only one caller fetches it.
type TokenSlot = Arc<Mutex<Option<(Credentials, SystemTime)>>>;

type ClientKey = (String, EcrAccess, bool, bool);

/// ECR control-plane access shared by all copies in a process.
#[derive(Debug, Default)]
pub struct Ecr {
    /// The AWS configuration, and the secrets keys are read from.
    secrets: Arc<Secrets>,
    clients: Mutex<HashMap<ClientKey, aws_sdk_ecr::Client>>,
    tokens: std::sync::Mutex<HashMap<TokenKey, TokenSlot>>,
    repositories: std::sync::Mutex<HashMap<(EcrHost, String), RepositoryInfo>>,
    /// ECR API calls made, by operation, for run reports.
    calls: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

/// Refresh this long before ECR's stated expiry.
const REFRESH_MARGIN: Duration = Duration::from_secs(3600);

/// How long a token reported as already expired is used before asking again.
const SKEWED_TOKEN_USE: Duration = Duration::from_secs(300);

impl Ecr {
    /// ECR access that reads keys from `secrets` and shares its AWS configuration.
    pub fn new(secrets: Arc<Secrets>) -> Ecr {
        Ecr {
            secrets,
            ..Ecr::default()
        }
    }

    async fn client(
        &self,
        host: &EcrHost,
        access: &EcrAccess,
    ) -> Result<aws_sdk_ecr::Client, EcrError> {
        let (fips, dual_stack) = endpoint_flags(host);
        let key = (host.region.clone(), access.clone(), fips, dual_stack);
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        // Region and credentials come from the standard AWS_* variables and
        // profiles unless the access names keys or a role; the SDK's own
        // retry policy covers throttling.
        let base = self.secrets.config().await;
        // Boxed: built once per registry, and it keeps callers' futures shallow.
        let config = Box::pin(access::config(base, &host.region, access, &self.secrets))
            .await
            .map_err(|source| EcrError::Keys {
                account: host.account.clone(),
                region: host.region.clone(),
                source,
            })?;
        let conf = aws_sdk_ecr::config::Builder::from(&config)
            .use_fips(fips)
            .use_dual_stack(dual_stack)
            .build();
        let client = aws_sdk_ecr::Client::from_conf(conf);
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Forget keys a registry's API refused, so the next client reads their
    /// secret again (it was rotated).
    async fn forget_keys(&self, host: &EcrHost, access: &EcrAccess) {
        if let Some(id) = &access.aws_credentials_secret {
            self.secrets.forget(id).await;
            let (fips, dual_stack) = endpoint_flags(host);
            let key = (host.region.clone(), access.clone(), fips, dual_stack);
            self.clients.lock().await.remove(&key);
        }
    }

    fn count_call(&self, operation: &'static str) {
        // Poisoned only by a panic mid-increment: the count is still usable.
        *self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(operation)
            .or_default() += 1;
    }

    /// The ECR API calls made so far, by operation.
    pub fn api_calls(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn repos(&self) -> std::sync::MutexGuard<'_, HashMap<(EcrHost, String), RepositoryInfo>> {
        // Poisoned only by a panic mid-insert of plain values: still usable.
        self.repositories.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slot(&self, host: &EcrHost, access: &EcrAccess) -> TokenSlot {
        let key = (host.account.clone(), host.region.clone(), access.clone());
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone()
    }

    /// Basic-auth credentials for an ECR registry, from cache when still
    /// fresh. Concurrent callers for one registry and access share one fetch.
    pub async fn credentials(
        &self,
        host: &EcrHost,
        access: &EcrAccess,
    ) -> Result<Credentials, EcrError> {
        let slot = self.slot(host, access);
        let mut cached = slot.lock().await;
        if let Some((c, exp)) = cached.as_ref()
            && SystemTime::now() + REFRESH_MARGIN < *exp
        {
            return Ok(c.clone());
        }
        let fetched = match self.fetch_token(host, access).await {
            // Keys from a secret that ECR does not know any more were rotated:
            // read the secret again, once.
            Err(EcrError::Token {
                keys_refused: true, ..
            }) => {
                self.forget_keys(host, access).await;
                self.fetch_token(host, access).await?
            }
            other => other?,
        };
        *cached = Some(fetched.clone());
        Ok(fetched.0)
    }

    async fn fetch_token(
        &self,
        host: &EcrHost,
        access: &EcrAccess,
    ) -> Result<(Credentials, SystemTime), EcrError> {
        let err = |message: String, transient: bool, cause: Option<Cause>| EcrError::Token {
            account: host.account.clone(),
            region: host.region.clone(),
            message,
            transient,
            keys_refused: false,
            cause,
        };
        let client = self.client(host, access).await?;
        self.count_call("GetAuthorizationToken");
        #[allow(deprecated)] // registryIds still selects the account for cross-account pulls
        let out = client
            .get_authorization_token()
            .registry_ids(&host.account)
            .send()
            .await
            .map_err(|e| {
                use aws_sdk_ecr::error::ProvideErrorMetadata as _;
                let (message, transient) = match access::credentials_failure(&e, access) {
                    Some(failure) => failure,
                    None => (crate::aws::describe(&e), crate::aws::is_transient(&e)),
                };
                EcrError::Token {
                    account: host.account.clone(),
                    region: host.region.clone(),
                    message,
                    transient,
                    keys_refused: access.aws_credentials_secret.is_some()
                        && access::keys_refused(e.code()),
                    cause: Some(Box::new(e)),
                }
            })?;
        let data = out
            .authorization_data()
            .first()
            .ok_or_else(|| err("the response had no authorization data".into(), false, None))?;
        let token = data
            .authorization_token()
            .ok_or_else(|| err("the response had no token".into(), false, None))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| err("the token is not base64 USER:PASSWORD".into(), false, None))?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or_else(|| err("the token is not USER:PASSWORD".into(), false, None))?;
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
    pub async fn invalidate(&self, host: &EcrHost, access: &EcrAccess, used: &Credentials) {
        let slot = self.slot(host, access);
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
        access: &EcrAccess,
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
        let client = self.client(host, access).await?;
        let info = match self.describe(&client, host, access, repository).await? {
            Some(mutability) => RepositoryInfo {
                mutability,
                created: false,
            },
            None if settings.create_repositories => {
                self.create(&client, host, access, repository, settings)
                    .await?
            }
            None => {
                return Err(EcrError::Describe {
                    repository: repository.to_string(),
                    region: host.region.clone(),
                    message: "the repository does not exist and create_repositories is off".into(),
                    cause: None,
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
        access: &EcrAccess,
        repository: &str,
        digests: &[crate::oci::digest::Digest],
    ) -> Result<Vec<crate::oci::digest::Digest>, EcrError> {
        let client = self.client(host, access).await?;
        let mut out = Vec::new();
        for chunk in digests.chunks(100) {
            self.count_call("BatchCheckLayerAvailability");
            let answer = client
                .batch_check_layer_availability()
                .registry_id(&host.account)
                .repository_name(repository)
                .set_layer_digests(Some(chunk.iter().map(ToString::to_string).collect()))
                .send()
                .await
                .map_err(|e| self.list_error("BatchCheckLayerAvailability", host, access, e))?;
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
        access: &EcrAccess,
    ) -> Result<Vec<String>, EcrError> {
        let client = self.client(host, access).await?;
        let mut pages = client
            .describe_repositories()
            .registry_id(&host.account)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            self.count_call("DescribeRepositories");
            let page =
                page.map_err(|e| self.list_error("DescribeRepositories", host, access, e))?;
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
        access: &EcrAccess,
        repository: &str,
    ) -> Result<Vec<String>, EcrError> {
        use aws_sdk_ecr::types::{DescribeImagesFilter, TagStatus};
        let client = self.client(host, access).await?;
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
            self.count_call("DescribeImages");
            let page = page.map_err(|e| self.list_error("DescribeImages", host, access, e))?;
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
        access: &EcrAccess,
        e: aws_sdk_ecr::error::SdkError<E, aws_sdk_ecr::config::http::HttpResponse>,
    ) -> EcrError
    where
        E: aws_sdk_ecr::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        EcrError::List {
            operation,
            account: host.account.clone(),
            region: host.region.clone(),
            message: words(&e, access),
            cause: Some(Box::new(e)),
        }
    }

    async fn describe(
        &self,
        client: &aws_sdk_ecr::Client,
        host: &EcrHost,
        access: &EcrAccess,
        repository: &str,
    ) -> Result<Option<TagMutability>, EcrError> {
        use aws_sdk_ecr::operation::describe_repositories::DescribeRepositoriesError;
        self.count_call("DescribeRepositories");
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
                    message: words(&e, access),
                    cause: Some(Box::new(e)),
                }),
            },
        }
    }

    async fn create(
        &self,
        client: &aws_sdk_ecr::Client,
        host: &EcrHost,
        access: &EcrAccess,
        repository: &str,
        settings: &EcrRepositorySettings,
    ) -> Result<RepositoryInfo, EcrError> {
        use aws_sdk_ecr::operation::create_repository::CreateRepositoryError;
        let err = |message: String, cause: Option<Cause>| EcrError::Create {
            repository: repository.to_string(),
            region: host.region.clone(),
            message,
            cause,
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
                .map_err(|e| err(e.to_string(), Some(Box::new(e))))?;
            req = req.image_tag_mutability_exclusion_filters(filter);
        }
        if let Some(enc) = &settings.encryption {
            let cfg = EncryptionConfiguration::builder()
                .encryption_type(EncryptionType::from(enc.as_str()))
                .set_kms_key(settings.kms_key.clone())
                .build()
                .map_err(|e| err(e.to_string(), Some(Box::new(e))))?;
            req = req.encryption_configuration(cfg);
        }
        self.count_call("CreateRepository");
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
                        .describe(client, host, access, repository)
                        .await?
                        .unwrap_or_default();
                    Ok(RepositoryInfo {
                        mutability,
                        created: false,
                    })
                }
                _ => Err(err(words(&e, access), Some(Box::new(e)))),
            },
        }
    }
}

/// An ECR API error in words; a failure to get credentials names the role or
/// secret it came from.
fn words<E>(
    e: &aws_sdk_ecr::error::SdkError<E, aws_sdk_ecr::config::http::HttpResponse>,
    access: &EcrAccess,
) -> String
where
    E: aws_sdk_ecr::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    access::credentials_failure(e, access).map_or_else(|| crate::aws::describe(e), |(w, _)| w)
}
