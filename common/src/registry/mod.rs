//! Builds and caches one [`Registry`] client per registry host (and per
//! explicit credential set), resolving each host's settings and credentials.

pub mod auth;
pub mod client;
pub mod ecr;
pub mod limit;
pub mod pace;
pub mod settings;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::error::Result;
use crate::registry::auth::{Credentials, DockerConfig};
use crate::registry::client::{CredentialSource, Registry, RequestCounts};
use crate::registry::ecr::{Ecr, EcrHost};
use crate::registry::settings::Settings;

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
    clients: Mutex<HashMap<ClientKey, Arc<Registry>>>,
}

impl Registries {
    pub fn new(
        settings: Settings,
        docker_config: DockerConfig,
        source_creds: Option<Credentials>,
        dest_creds: Option<Credentials>,
    ) -> Registries {
        Registries {
            settings,
            docker_config,
            source_creds,
            dest_creds,
            ecr: Arc::new(Ecr::new()),
            clients: Mutex::new(HashMap::new()),
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
        let rs = self.settings.registry(host);
        let source = match explicit {
            Some(c) => CredentialSource::Static(c),
            None => match rs.credentials(host)? {
                Some(c) => CredentialSource::Static(c),
                None => match EcrHost::parse(host) {
                    Some(ecr_host) => CredentialSource::Ecr {
                        host: ecr_host,
                        role_arn: rs.role_arn.clone(),
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
}
