//! The controller's first half: read every row, HEAD each source and
//! destination (HEAD does not count against Docker Hub's pull limit), and
//! decide with [`crate::plan::plan`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;

use crate::copy::Engine;
use crate::plan::{Plan, Probe, plan};
use crate::reference::Reference;
use crate::registries::Role;
use crate::store::{Store, StoreError};
use crate::table::Row;

/// Which rows an event concerns: an image pushed to `repository:tag`
/// (optionally on one registry), as the ECR push rule reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    pub registry: Option<String>,
    pub repository: String,
    pub tag: String,
}

impl EventFilter {
    pub fn matches(&self, source: &Reference) -> bool {
        source.repository() == self.repository
            && source.tag() == Some(self.tag.as_str())
            && self
                .registry
                .as_deref()
                .is_none_or(|r| r == source.registry())
    }

    /// Read an EventBridge "ECR Image Action" event (the whole event, or its
    /// `detail`).
    pub fn from_event_json(text: &str) -> Result<EventFilter, String> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("the event is not JSON: {e}"))?;
        let detail = v.get("detail").unwrap_or(&v);
        let field = |k: &str| detail.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let repository =
            field("repository-name").ok_or("the event has no detail.repository-name")?;
        let tag = field("image-tag")
            .ok_or("the event has no detail.image-tag (untagged pushes are not mirrored)")?;
        if let Some(r) = field("result")
            && r != "SUCCESS"
        {
            return Err(format!("the event reports result {r}, not SUCCESS"));
        }
        let registry = match (
            v.get("account").and_then(|x| x.as_str()),
            v.get("region").and_then(|x| x.as_str()),
        ) {
            (Some(a), Some(r)) => Some(format!("{a}.dkr.ecr.{r}.amazonaws.com")),
            _ => None,
        };
        Ok(EventFilter {
            registry,
            repository,
            tag,
        })
    }
}

/// A row and its plan; `plan` is `Err` for a row that cannot be used.
#[derive(Debug, Clone)]
pub struct RowPlan {
    pub key: String,
    pub row: Option<Row>,
    pub plan: Result<Plan, String>,
}

async fn probe(engine: &Engine, r: &Reference, role: Role) -> Probe {
    let reg = match engine.registries().get(r.registry(), role).await {
        Ok(reg) => reg,
        Err(e) => return Probe::Error(e.to_string()),
    };
    match reg.head_manifest(r.repository(), &r.manifest_ref()).await {
        Ok(Some(h)) => Probe::Found(h.digest),
        Ok(None) => Probe::Missing,
        Err(e) => Probe::Error(e.to_string()),
    }
}

/// Scan the table and plan every row (or only those an event concerns).
pub async fn scan(
    store: &Store,
    engine: &Engine,
    segments: u32,
    filter: Option<&EventFilter>,
    concurrency: usize,
    requeue_after: Duration,
) -> Result<Vec<RowPlan>, StoreError> {
    let rows = store.scan(segments).await?;
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut checks = Vec::new();
    for scanned in rows {
        let limit = limit.clone();
        checks.push(async move {
            let row = match scanned.row {
                Ok(r) => r,
                Err(reason) => {
                    return Some(RowPlan {
                        key: scanned.key,
                        row: None,
                        plan: Err(reason),
                    });
                }
            };
            if let Some(f) = filter
                && !f.matches(&row.mirror.source)
            {
                return None;
            }
            if !row.mirror.enabled {
                return Some(RowPlan {
                    key: scanned.key,
                    plan: Ok(Plan::Disabled),
                    row: Some(row),
                });
            }
            let _permit = limit.acquire().await.ok()?;
            let source = probe(engine, &row.mirror.source, Role::Source).await;
            let mut dests = Vec::with_capacity(row.mirror.destinations.len());
            // Destinations only matter when the source is readable.
            if matches!(source, Probe::Found(_)) {
                for d in &row.mirror.destinations {
                    dests.push(probe(engine, d, Role::Destination).await);
                }
            }
            let p = plan(&row, &source, &dests, SystemTime::now(), requeue_after);
            Some(RowPlan {
                key: scanned.key,
                plan: Ok(p),
                row: Some(row),
            })
        });
    }
    Ok(futures_util::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect())
}
