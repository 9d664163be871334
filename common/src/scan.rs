//! The controller's first half: read every row, HEAD each source and
//! destination (HEAD does not count against Docker Hub's pull limit), and
//! decide with [`crate::plan::plan`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;

use crate::copy::Engine;
use crate::ecr::EcrHost;
use crate::plan::{Plan, Probe, known_subset_digest, plan};
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
            let key = scanned.key;
            let row = match scanned.row {
                Ok(r) => r,
                Err(reason) => {
                    return vec![RowPlan {
                        key,
                        row: None,
                        plan: Err(reason),
                    }];
                }
            };
            if row.mirror.select.is_none()
                && let Some(f) = filter
                && !f.matches(&row.mirror.source)
            {
                return Vec::new();
            }
            if !row.mirror.enabled {
                return vec![RowPlan {
                    key,
                    plan: Ok(Plan::Disabled),
                    row: Some(row),
                }];
            }
            if row.mirror.select.is_some() {
                return plan_repository(engine, key, row, filter, &limit, requeue_after).await;
            }
            vec![plan_image(engine, key, row, &limit, requeue_after).await]
        });
    }
    Ok(futures_util::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect())
}

/// HEAD one image's source and destinations, and plan it.
async fn plan_image(
    engine: &Engine,
    key: String,
    row: Row,
    limit: &Semaphore,
    requeue_after: Duration,
) -> RowPlan {
    let Ok(_permit) = limit.acquire().await else {
        return RowPlan {
            key,
            row: Some(row),
            plan: Err("the scan was stopped".into()),
        };
    };
    let source = probe(engine, &row.mirror.source, Role::Source).await;
    // A platform subset is compared by its own digest, which only the
    // source's index can tell (one GET), unless the statuses already do.
    let filtered = match (&source, row.mirror.platforms.is_empty()) {
        (Probe::Found(digest), false) => match known_subset_digest(&row, digest) {
            Some(known) => Some(known),
            None => match subset_digest(engine, &row, digest).await {
                Ok(d) => d,
                Err(e) => {
                    return RowPlan {
                        key,
                        plan: Ok(Plan::SourceProblem(e.to_string())),
                        row: Some(row),
                    };
                }
            },
        },
        _ => None,
    };
    let mut dests = Vec::with_capacity(row.mirror.destinations.len());
    // Destinations only matter when the source is readable.
    if matches!(source, Probe::Found(_)) {
        for d in &row.mirror.destinations {
            dests.push(probe(engine, d, Role::Destination).await);
        }
    }
    let p = plan(
        &row,
        &source,
        filtered.as_ref(),
        &dests,
        SystemTime::now(),
        requeue_after,
    );
    RowPlan {
        key,
        plan: Ok(p),
        row: Some(row),
    }
}

/// The digest of the row's platform subset of the source at `digest`, or
/// `None` when the subset is the whole source.
async fn subset_digest(
    engine: &Engine,
    row: &Row,
    digest: &crate::digest::Digest,
) -> crate::error::Result<Option<crate::digest::Digest>> {
    let source = &row.mirror.source;
    let src = engine
        .registries()
        .get(source.registry(), Role::Source)
        .await?;
    Ok(engine
        .select_platforms(&src, source, digest, &row.mirror.platforms)
        .await?
        .map(|m| m.digest))
}

/// A repository row: list its tags, pick them with the row's rule, and plan
/// each picked image like an image row (status kept per expanded
/// destination, under the row's own key). A registry-wide row does this for
/// each repository of the catalog its rule picks.
async fn plan_repository(
    engine: &Engine,
    key: String,
    row: Row,
    filter: Option<&EventFilter>,
    limit: &Semaphore,
    requeue_after: Duration,
) -> Vec<RowPlan> {
    let fail = |row: Row, reason: String| {
        vec![RowPlan {
            key: key.clone(),
            row: Some(row),
            plan: Err(reason),
        }]
    };
    let wide = row
        .mirror
        .select
        .as_ref()
        .is_some_and(|s| s.repositories.is_some());
    if !wide {
        let mirror = row.mirror.clone();
        return match plan_tags(engine, &key, &row, &mirror, filter, limit, requeue_after).await {
            Ok(plans) if plans.is_empty() && filter.is_none() => {
                let reason = format!("no tag of {} matches the `tags` rule", row.mirror.source);
                fail(row, reason)
            }
            Ok(plans) => plans,
            Err(reason) => fail(row, reason),
        };
    }
    let registry = row.mirror.source.registry().to_string();
    let catalog = match list_repositories(engine, &registry).await {
        Ok(c) => c,
        Err(e) => {
            return fail(
                row,
                format!("cannot list the repositories of {registry}: {e}"),
            );
        }
    };
    // An event names one repository: list only its tags.
    let repos: Vec<&String> = catalog
        .iter()
        .filter(|r| filter.is_none_or(|f| &f.repository == *r))
        .filter(|r| row.mirror.selects_repository(r))
        .collect();
    if repos.is_empty() && filter.is_some() {
        return Vec::new();
    }
    if repos.is_empty() {
        let reason = format!(
            "no repository of {} matches the row ({} listed)",
            row.mirror.key(),
            catalog.len()
        );
        return fail(row, reason);
    }
    let mut plans = Vec::new();
    let mut errors = Vec::new();
    for repo in repos {
        let planned = match row.mirror.for_repository(repo) {
            Ok(m) => plan_tags(engine, &key, &row, &m, filter, limit, requeue_after).await,
            Err(e) => Err(e),
        };
        match planned {
            Ok(p) => plans.extend(p),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        // The row keeps the error until a run lists everything; the images
        // that could be listed are still mirrored.
        for p in &mut plans {
            if let Some(r) = &mut p.row {
                r.error = None;
            }
        }
        let reason = format!(
            "{} of its repositories: {}",
            errors.len(),
            errors.join("; ")
        );
        plans.extend(fail(row, reason));
    }
    plans
}

/// List the tags of `mirror` (a repository row), pick them, and plan each
/// image; statuses come from `row`. `Err` when the tags cannot be listed.
async fn plan_tags(
    engine: &Engine,
    key: &str,
    row: &Row,
    mirror: &crate::table::Mirror,
    filter: Option<&EventFilter>,
    limit: &Semaphore,
    requeue_after: Duration,
) -> Result<Vec<RowPlan>, String> {
    let Some(sel) = &mirror.select else {
        return Ok(Vec::new());
    };
    let rules = sel.tags.compile().map_err(|e| e.to_string())?;
    let source = &mirror.source;
    let tags = list_tags(engine, source)
        .await
        .map_err(|e| format!("cannot list the tags of {source}: {e}"))?;
    let images = mirror.expand(&rules.apply(&tags))?;
    let mut plans = Vec::new();
    for image in images {
        if filter.is_some_and(|f| !f.matches(&image.source)) {
            continue;
        }
        let status = image
            .destinations
            .iter()
            .filter_map(|d| {
                let k = d.to_string();
                row.status.get(&k).map(|st| (k, st.clone()))
            })
            .collect();
        let image_row = Row {
            mirror: image,
            status,
            error: row.error.clone(),
        };
        plans.push(plan_image(
            engine,
            key.to_string(),
            image_row,
            limit,
            requeue_after,
        ));
    }
    Ok(futures_util::future::join_all(plans).await)
}

/// The repositories of a registry: ECR's API for ECR hosts (ECR has no
/// catalog endpoint), `/v2/_catalog` for the rest.
async fn list_repositories(engine: &Engine, registry: &str) -> Result<Vec<String>, String> {
    if let Some(host) = EcrHost::parse(registry) {
        let role = engine.registries().settings().registry(registry).role_arn;
        return engine
            .registries()
            .ecr()
            .list_repositories(&host, role.as_deref())
            .await
            .map_err(|e| e.to_string());
    }
    let reg = engine
        .registries()
        .get(registry, Role::Source)
        .await
        .map_err(|e| e.to_string())?;
    reg.catalog(TAGS_PAGE).await.map_err(|e| e.to_string())
}

/// The tags of a repository, oldest first where the registry can tell (ECR's
/// push times), else in the registry's listing order.
async fn list_tags(engine: &Engine, source: &Reference) -> Result<Vec<String>, String> {
    if let Some(host) = EcrHost::parse(source.registry()) {
        let role = engine
            .registries()
            .settings()
            .registry(source.registry())
            .role_arn;
        return engine
            .registries()
            .ecr()
            .list_tags(&host, role.as_deref(), source.repository())
            .await
            .map_err(|e| e.to_string());
    }
    let reg = engine
        .registries()
        .get(source.registry(), Role::Source)
        .await
        .map_err(|e| e.to_string())?;
    reg.list_tags(source.repository(), TAGS_PAGE)
        .await
        .map_err(|e| e.to_string())
}

/// Tags per listing request: ECR refuses more than 1000.
const TAGS_PAGE: usize = 1000;
