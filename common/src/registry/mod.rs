//! Builds and caches one [`Registry`] client per registry host (and per
//! explicit credential set), resolving each host's settings and credentials.

pub mod auth;
pub mod client;
pub mod ecr;
pub(crate) mod limit;
pub(crate) mod pace;
pub mod secrets;
pub mod settings;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::error::Result;
use crate::oci::digest::Digest;
use crate::oci::reference::Reference;
use crate::registry::auth::{Credentials, DockerConfig};
use crate::registry::client::{CredentialSource, Registry, RequestCounts};
use crate::registry::ecr::{Ecr, EcrAccess, EcrHost, ImageDigests, RepositoryInfo};
use crate::registry::secrets::{Secrets, SettingsSource};
use crate::registry::settings::Settings;
use crate::registry::settings::{RegistrySettings, SettingsError};

/// Which side of a copy a registry is used for; explicit `--src-creds` and
/// `--dest-creds` apply to one side only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Source,
    Destination,
}

/// Clients are keyed by host, and by role only when that role has explicit credentials.
type ClientKey = (String, Option<Role>);

#[derive(Debug)]
pub struct Registries {
    settings: Settings,
    docker_config: DockerConfig,
    source_creds: Option<Credentials>,
    dest_creds: Option<Credentials>,
    ecr: Arc<Ecr>,
    secrets: Arc<Secrets>,
    clients: Mutex<HashMap<ClientKey, Arc<Registry>>>,
    /// Registries whose bulk digest call failed once this run: HEADs from then on.
    no_bulk: std::sync::Mutex<HashSet<String>>,
}

impl Registries {
    pub fn new(
        settings: Settings,
        docker_config: DockerConfig,
        source_creds: Option<Credentials>,
        dest_creds: Option<Credentials>,
    ) -> Registries {
        Registries::with_secrets(
            settings,
            docker_config,
            source_creds,
            dest_creds,
            Arc::new(Secrets::default()),
        )
    }

    /// As [`Registries::new`], reading secrets (and the AWS configuration)
    /// through `secrets`, which loaded the settings too: one AWS
    /// configuration and one secret cache per process.
    pub fn with_secrets(
        settings: Settings,
        docker_config: DockerConfig,
        source_creds: Option<Credentials>,
        dest_creds: Option<Credentials>,
        secrets: Arc<Secrets>,
    ) -> Registries {
        Registries {
            settings,
            docker_config,
            source_creds,
            dest_creds,
            ecr: Arc::new(Ecr::new(secrets.clone())),
            secrets,
            clients: Mutex::new(HashMap::new()),
            no_bulk: std::sync::Mutex::default(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn ecr(&self) -> &Arc<Ecr> {
        &self.ecr
    }

    fn explicit(&self, role: Role) -> Option<&Credentials> {
        match role {
            Role::Source => self.source_creds.as_ref(),
            Role::Destination => self.dest_creds.as_ref(),
        }
    }

    /// The client for `host` in `role`, built on first use.
    pub async fn get(&self, host: &str, role: Role) -> Result<Arc<Registry>> {
        let explicit = self.explicit(role).cloned();
        let key = (host.to_string(), explicit.as_ref().map(|_| role));
        let mut clients = self.clients.lock().await;
        if let Some(r) = clients.get(&key) {
            return Ok(r.clone());
        }
        let mut rs = self.settings.registry(host);
        rs.manifest_puts_per_second = manifest_puts_per_second(&rs, host);
        let source = match explicit {
            Some(c) => CredentialSource::Static(c),
            None => match rs.credentials(host)? {
                Some(c) => CredentialSource::Static(c),
                None if rs.credentials_secret.is_some() => CredentialSource::Secret {
                    id: rs.credentials_secret.clone().unwrap_or_default(),
                    secrets: self.secrets.clone(),
                },
                None => match EcrHost::parse(host) {
                    Some(ecr_host) => CredentialSource::Ecr {
                        host: ecr_host,
                        access: EcrAccess::of(&rs),
                    },
                    None => CredentialSource::Static(
                        self.docker_config.lookup(host).await?.unwrap_or_default(),
                    ),
                },
            },
        };
        tracing::debug!(registry = host, ?role, "new registry client");
        let registry = Arc::new(Registry::new(host, &rs, source, self.ecr.clone())?);
        clients.insert(key, registry.clone());
        Ok(registry)
    }

    /// What this process asked so far of each registry and of ECR's API.
    pub async fn request_report(&self) -> RequestReport {
        RequestReport {
            registries: self.request_counts().await,
            ecr_api: self.ecr.api_calls(),
        }
    }

    /// Requests, retries and re-authentications so far, per registry host.
    pub async fn request_counts(&self) -> BTreeMap<String, RequestCounts> {
        let mut out: BTreeMap<String, RequestCounts> = BTreeMap::new();
        for ((host, _), client) in self.clients.lock().await.iter() {
            out.entry(host.clone())
                .or_default()
                .add(&client.stats.snapshot());
        }
        out
    }

    /// How often registries have pushed back so far, across every
    /// registry: 429s, and requests that timed out.
    pub async fn pushback(&self) -> u64 {
        self.clients
            .lock()
            .await
            .values()
            .map(|c| {
                let s = c.stats.snapshot();
                s.throttled + s.timeouts
            })
            .sum()
    }
}

/// What a run asked: the Registry API per host, and ECR's API per operation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RequestReport {
    pub registries: BTreeMap<String, RequestCounts>,
    pub ecr_api: BTreeMap<&'static str, u64>,
}

impl RequestReport {
    pub fn registry_requests(&self) -> u64 {
        self.registries.values().map(|c| c.requests).sum()
    }

    pub fn ecr_api_calls(&self) -> u64 {
        self.ecr_api.values().sum()
    }
}

/// The ECR-aware layer: every question whose answer differs on ECR is
/// answered here, so no other module branches on the kind of registry.
impl Registries {
    /// The ECR host `registry` names, with how its API is reached.
    fn ecr_host(&self, registry: &str) -> Option<(EcrHost, EcrAccess)> {
        let host = EcrHost::parse(registry)?;
        Some((host, EcrAccess::of(&self.settings.registry(registry))))
    }

    /// Make sure `dest`'s repository exists where the registry needs it made
    /// first (ECR: described, or created per the `ecr` settings). `None` for
    /// registries that make repositories on push.
    pub async fn ensure_repository(&self, dest: &Reference) -> Result<Option<RepositoryInfo>> {
        let Some((host, role)) = self.ecr_host(dest.registry()) else {
            return Ok(None);
        };
        let info = self
            .ecr
            .ensure_repository(&host, &role, dest.repository(), &self.settings.ecr)
            .await?;
        Ok(Some(info))
    }

    /// Which of `digests` `dest`'s repository holds, where the registry tells
    /// in bulk (ECR: 100 per call). `None` where it cannot: HEAD each blob.
    pub async fn known_blobs(
        &self,
        dest: &Reference,
        digests: &[Digest],
    ) -> Option<Result<Vec<Digest>>> {
        let (host, role) = self.ecr_host(dest.registry())?;
        Some(
            self.ecr
                .available_layers(&host, &role, dest.repository(), digests)
                .await
                .map_err(Into::into),
        )
    }

    /// The digests of `ids` (tags or digests) in `image`'s repository, where
    /// the registry tells many per call: ECR's `DescribeImages`, when `role`
    /// reaches it with the process's AWS identity (not a login of its own).
    /// `None` where it cannot, or once such a call failed this run (denied,
    /// say: logged once): HEAD each. Ids it leaves out are for HEADs too.
    pub async fn image_digests(
        &self,
        image: &Reference,
        role: Role,
        ids: &[String],
    ) -> Option<ImageDigests> {
        let host = image.registry();
        let (ecr_host, access) = self.ecr_host(host)?;
        let rs = self.settings.registry(host);
        let own_login = self.explicit(role).is_some()
            || rs.credentials_secret.is_some()
            || rs.username.is_some();
        if own_login || self.bulk_off().contains(host) {
            return None;
        }
        match self
            .ecr
            .image_digests(&ecr_host, &access, image.repository(), ids)
            .await
        {
            Ok(digests) => Some(digests),
            Err(e) => {
                if self.bulk_off().insert(host.to_string()) {
                    tracing::warn!(
                        registry = host,
                        error = %crate::error::error_line(&e),
                        "cannot ask image digests in bulk: HEADing each image instead"
                    );
                }
                None
            }
        }
    }

    fn bulk_off(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // Poisoned only by a panic mid-insert of a string: still usable.
        self.no_bulk.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `tag` in `dest`'s repository is immutable, as far as this
    /// process already knows (ECR repositories it has described).
    pub fn known_immutable(&self, dest: &Reference, tag: &str) -> bool {
        self.ecr
            .known_mutability(dest.registry(), dest.repository())
            .is_some_and(|m| m.is_immutable(tag))
    }

    /// The repositories of `registry`: ECR's API for ECR hosts (ECR has no
    /// catalog endpoint), `/v2/_catalog` for the rest.
    pub async fn list_repositories(&self, registry: &str, page: usize) -> Result<Vec<String>> {
        if let Some((host, role)) = self.ecr_host(registry) {
            return Ok(self.ecr.list_repositories(&host, &role).await?);
        }
        self.get(registry, Role::Source).await?.catalog(page).await
    }

    /// The tags of `source`'s repository, oldest first where the registry can
    /// tell (ECR's push times), else in the registry's listing order.
    pub async fn list_tags(&self, source: &Reference, page: usize) -> Result<Vec<String>> {
        if let Some((host, role)) = self.ecr_host(source.registry()) {
            return Ok(self
                .ecr
                .list_tags(&host, &role, source.repository())
                .await?);
        }
        self.get(source.registry(), Role::Source)
            .await?
            .list_tags(source.repository(), page)
            .await
    }
}

/// The registry settings from `source`: a file, an SSM parameter or a
/// Secrets Manager secret, read through `secrets`.
pub async fn load_settings(
    source: &SettingsSource,
    secrets: &Secrets,
) -> std::result::Result<Settings, SettingsError> {
    let origin = std::path::PathBuf::from(source.to_string());
    match source {
        SettingsSource::File(p) => Settings::load(p),
        SettingsSource::Ssm(name) => Settings::parse(&secrets.parameter(name).await?, &origin),
        SettingsSource::Secret(id) => Settings::parse(secrets.string(id).await?.expose(), &origin),
    }
}

/// The manifest push rate for `host`: as configured, else ECR's `PutImage`
/// quota for ECR hosts, else `None` (unlimited).
fn manifest_puts_per_second(rs: &RegistrySettings, host: &str) -> Option<f64> {
    rs.manifest_puts_per_second
        .or_else(|| EcrHost::parse(host).map(|_| crate::registry::ecr::MANIFEST_PUTS_PER_SECOND))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_put_rate_defaults_to_ecrs_quota_on_ecr_only() {
        let none = crate::registry::settings::RegistrySettings::default();
        assert_eq!(
            manifest_puts_per_second(&none, "123456789012.dkr.ecr.us-east-1.amazonaws.com"),
            Some(10.0)
        );
        assert_eq!(
            manifest_puts_per_second(&none, "registry.internal:5000"),
            None
        );
        assert_eq!(manifest_puts_per_second(&none, "docker.io"), None);
        let set = crate::registry::settings::RegistrySettings {
            manifest_puts_per_second: Some(0.5),
            ..Default::default()
        };
        assert_eq!(
            manifest_puts_per_second(&set, "123456789012.dkr.ecr.us-east-1.amazonaws.com"),
            Some(0.5)
        );
        assert_eq!(manifest_puts_per_second(&set, "r.example.com"), Some(0.5));
    }
}
