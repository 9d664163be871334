//! The controller's first half: read every row, HEAD each source and
//! destination (HEAD does not count against Docker Hub's pull limit), and
//! decide with [`crate::control::plan::plan`].
//!
//! Rows are planned as the scan's pages arrive ([`plan_stream`]), so probing
//! overlaps scanning, and at most `concurrency` rows are in hand at once:
//! memory is bounded by the page size and the concurrency, not the table.
//! An event's rows are looked up in the source index
//! ([`crate::store::index`]) instead; a scheduled scan keeps that index
//! current.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{Stream, StreamExt as _};
use tokio::sync::Semaphore;

use crate::control::known::{self, Known};
use crate::control::plan::{
    Plan, Probe, known_subset_digest, plan, plan_with_referrers, without_probes,
};
use crate::control::referrer_facts;
use crate::control::table::{Row, ScannedRow};
use crate::copy::Engine;
use crate::oci::reference::Reference;
use crate::registry::Role;
use crate::store::{Store, StoreError};

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
        self.same_repository(source) && source.tag() == Some(self.tag.as_str())
    }

    /// The same repository of the same registry: for ECR the same account
    /// and region, whichever endpoint form the row's source is written in
    /// (`.amazonaws.com.cn`, FIPS, dual-stack).
    fn same_repository(&self, source: &Reference) -> bool {
        source.repository() == self.repository
            && self
                .registry
                .as_deref()
                .is_none_or(|r| crate::registry::ecr::same_registry(r, source.registry()))
    }

    /// For a push of a signature, attestation or SBOM under its tag
    /// (`sha256-<hex>`, `.sig`, `.att`, `.sbom`): the digest it is about.
    pub fn referrer_subject(&self) -> Option<String> {
        crate::oci::referrers::subject_of_tag(&self.tag)
    }

    /// Whether the event concerns the image `source`: its own push, or a
    /// referrer pushed next to it (whose subject is checked once its
    /// digest is known).
    pub fn concerns(&self, source: &Reference) -> bool {
        self.matches(source) || (self.referrer_subject().is_some() && self.same_repository(source))
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

/// How a scan runs.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Parallel DynamoDB scan segments.
    pub segments: u32,
    /// HEAD requests in flight at once.
    pub concurrency: usize,
    /// See [`crate::control::plan::DEFAULT_REQUEUE_AFTER`].
    pub requeue_after: Duration,
    /// For images in sync, also compare their referrer tags (tag schema
    /// index and cosign's) at both ends, so a signature added later to an
    /// unchanged image is copied: four HEADs per image and destination.
    pub check_referrers: bool,
    /// Strongly consistent scan reads (twice the read units). Not needed
    /// for correctness: every write the controller makes is conditional.
    pub consistent: bool,
    /// Write the source index entry of rows that lack it or hold a stale
    /// one (a scheduled run; never a dry run).
    pub reindex: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            segments: 1,
            concurrency: 16,
            requeue_after: crate::control::plan::DEFAULT_REQUEUE_AFTER,
            check_referrers: false,
            consistent: false,
            reindex: false,
        }
    }
}

/// What every row's planning shares.
#[derive(Clone)]
struct Ctx<'a> {
    engine: &'a Engine,
    filter: Option<&'a EventFilter>,
    /// Bounds the HEADs in flight, across rows and a repository row's images.
    limit: Arc<Semaphore>,
    opts: &'a ScanOptions,
    /// When the scan started: a repository's tag listing taken since then
    /// serves every row in it.
    started: std::time::Instant,
}

/// A row and its plan; `plan` is `Err` for a row that cannot be used.
#[derive(Debug, Clone)]
pub struct RowPlan {
    pub key: String,
    pub row: Option<Row>,
    pub plan: Result<Plan, String>,
}

/// HEAD one image: its digest, missing, or why it cannot be read.
pub async fn probe(engine: &Engine, r: &Reference, role: Role) -> Probe {
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

/// What a bulk call told of one image, else its HEAD.
async fn probe_known(known: &Known, engine: &Engine, r: &Reference, role: Role) -> Probe {
    match known.get(r, role) {
        Some(told) => told,
        None => probe(engine, r, role).await,
    }
}

/// Scan the table and plan every row (or only those an event concerns),
/// all at once, in key order: for callers that need the whole plan (a dry
/// run's table, local `sync`). The controller streams with [`plan_stream`].
pub async fn scan(
    store: &Store,
    engine: &Engine,
    filter: Option<&EventFilter>,
    opts: &ScanOptions,
) -> Result<Vec<RowPlan>, StoreError> {
    let mut plans = Vec::new();
    let mut stream = std::pin::pin!(plan_stream(store, engine, filter, opts).await);
    while let Some(p) = stream.next().await {
        plans.extend(p?);
    }
    plans.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(plans)
}

/// Plan rows as the scan reads them: each item is one row's plans (a
/// repository row has one per image; a row an event does not concern has
/// none), in no particular order. At most `opts.concurrency` rows are
/// planned at once, and the scan reads only a page per segment ahead.
pub async fn plan_stream<'a>(
    store: &'a Store,
    engine: &'a Engine,
    filter: Option<&'a EventFilter>,
    opts: &'a ScanOptions,
) -> impl Stream<Item = Result<Vec<RowPlan>, StoreError>> + 'a {
    let ctx = Ctx {
        engine,
        filter,
        limit: Arc::new(Semaphore::new(opts.concurrency.max(1))),
        opts,
        started: std::time::Instant::now(),
    };
    // An event's rows come from the source index; only an event that names
    // no registry (or a file's table) needs the scan.
    let pages = match filter.and_then(|f| store.event_pages(f)) {
        Some(found) => found,
        None => {
            if filter.is_some() {
                tracing::warn!("the event names no registry: scanning the whole table");
            }
            store.pages(opts.segments, opts.consistent).await
        }
    };
    // Each page's digests are asked in bulk where a registry can tell many
    // at once; the next page's are asked while this one's rows are planned.
    let pages = pages
        .map(move |page| async move {
            let rows = page?;
            let known = Arc::new(known::ask(engine, &rows, filter).await);
            Ok::<_, StoreError>((rows, known))
        })
        .buffered(2);
    let rows = pages.flat_map(|page| {
        let rows: Vec<Result<(ScannedRow, Arc<Known>), StoreError>> = match page {
            Ok((rows, known)) => rows.into_iter().map(|r| Ok((r, known.clone()))).collect(),
            Err(e) => vec![Err(e)],
        };
        futures_util::stream::iter(rows)
    });
    rows.map(move |row| {
        let ctx = ctx.clone();
        async move {
            let (row, known) = row?;
            if opts.reindex {
                // The index only speeds up events; a row it misses is still
                // planned by every scheduled run.
                match store.keep_indexed(&row).await {
                    Ok(true) => tracing::debug!(source = %row.key, "indexed the row"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(source = %row.key, error = %e, "cannot index the row"),
                }
            }
            Ok(plan_row(&ctx, &known, row).await)
        }
    })
    .buffer_unordered(opts.concurrency.max(1))
}

/// One row's plans.
async fn plan_row(ctx: &Ctx<'_>, known: &Known, scanned: ScannedRow) -> Vec<RowPlan> {
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
        && let Some(f) = ctx.filter
        && !f.concerns(&row.mirror.source)
    {
        return Vec::new();
    }
    if let Some(p) = without_probes(&row) {
        return vec![RowPlan {
            key,
            plan: Ok(p),
            row: Some(row),
        }];
    }
    if row.mirror.select.is_some() {
        return plan_repository(ctx, key, row).await;
    }
    vec![plan_image(ctx, known, key, row).await]
}

/// HEAD one image's source and destinations, and plan it.
async fn plan_image(ctx: &Ctx<'_>, known: &Known, key: String, row: Row) -> RowPlan {
    let engine = ctx.engine;
    let Ok(_permit) = ctx.limit.acquire().await else {
        return RowPlan {
            key,
            row: Some(row),
            plan: Err("the scan was stopped".into()),
        };
    };
    let source = probe_known(known, engine, &row.mirror.source, Role::Source).await;
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
            dests.push(probe_known(known, engine, d, Role::Destination).await);
        }
    }
    let now = SystemTime::now();
    let mut p = plan(
        &row,
        &source,
        filtered.as_ref(),
        &dests,
        now,
        ctx.opts.requeue_after,
    );
    if let Probe::Found(digest) = &source {
        let check = match ctx.filter.and_then(EventFilter::referrer_subject) {
            Some(subject) => subject == digest.to_string(),
            None => ctx.opts.check_referrers,
        };
        // A subset's destinations hold another digest: the source index's
        // referrers are not theirs.
        if check
            && row.mirror.platforms.is_empty()
            && let Some(missing) =
                referrer_facts::referrer_facts(engine, &row, digest, &p, ctx.started).await
        {
            p = plan_with_referrers(
                &row,
                &source,
                filtered.as_ref(),
                &dests,
                &missing,
                now,
                ctx.opts.requeue_after,
            );
        }
    }
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
    digest: &crate::oci::digest::Digest,
) -> crate::error::Result<Option<crate::oci::digest::Digest>> {
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
async fn plan_repository(ctx: &Ctx<'_>, key: String, row: Row) -> Vec<RowPlan> {
    let (engine, filter) = (ctx.engine, ctx.filter);
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
        return match plan_tags(ctx, &key, &row, &mirror).await {
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
            Ok(m) => plan_tags(ctx, &key, &row, &m).await,
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
    ctx: &Ctx<'_>,
    key: &str,
    row: &Row,
    mirror: &crate::control::table::Mirror,
) -> Result<Vec<RowPlan>, String> {
    let (engine, filter) = (ctx.engine, ctx.filter);
    let Some(sel) = &mirror.select else {
        return Ok(Vec::new());
    };
    let rules = sel.tags.compile().map_err(|e| e.to_string())?;
    let source = &mirror.source;
    let tags = list_tags(engine, source)
        .await
        .map_err(|e| format!("cannot list the tags of {source}: {e}"))?;
    let images = mirror.expand(&rules.apply(&tags))?;
    // A repository row's images are not asked in bulk (see `known`).
    let nothing_known = Known::default();
    let mut plans = Vec::new();
    for image in images {
        if filter.is_some_and(|f| !f.concerns(&image.source)) {
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
        plans.push(plan_image(ctx, &nothing_known, key.to_string(), image_row));
    }
    Ok(futures_util::future::join_all(plans).await)
}

/// The repositories of a registry, in words on failure.
async fn list_repositories(engine: &Engine, registry: &str) -> Result<Vec<String>, String> {
    engine
        .registries()
        .list_repositories(registry, TAGS_PAGE)
        .await
        .map_err(|e| e.to_string())
}

/// The tags of a repository (oldest first where the registry can tell), in
/// words on failure.
async fn list_tags(engine: &Engine, source: &Reference) -> Result<Vec<String>, String> {
    engine
        .registries()
        .list_tags(source, TAGS_PAGE)
        .await
        .map_err(|e| e.to_string())
}

/// Tags per listing request: ECR refuses more than 1000.
const TAGS_PAGE: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(tag: &str) -> EventFilter {
        EventFilter::from_event_json(&format!(
            r#"{{"account":"123456789012","region":"eu-west-1","detail":{{"repository-name":"team/app","image-tag":"{tag}","result":"SUCCESS"}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn a_pushed_signature_concerns_the_images_of_its_repository() {
        let hex = "ab".repeat(32);
        let image: Reference = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app:1.0"
            .parse()
            .unwrap();
        let other: Reference = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/web:1.0"
            .parse()
            .unwrap();
        for suffix in ["", ".sig", ".att", ".sbom"] {
            let f = filter(&format!("sha256-{hex}{suffix}"));
            assert_eq!(
                f.referrer_subject(),
                Some(format!("sha256:{hex}")),
                "{suffix}"
            );
            assert!(f.concerns(&image) && !f.matches(&image));
            assert!(!f.concerns(&other));
        }
        for tag in [
            "1.0",
            "sha256-abc.sig",
            &format!("sha256-{hex}.tar"),
            &format!("sha512-{hex}"),
        ] {
            let f = filter(tag);
            assert_eq!(f.referrer_subject(), None, "{tag}");
        }
        assert!(filter("1.0").concerns(&image));
        assert!(!filter("2.0").concerns(&image));
    }

    #[test]
    fn events_match_ecr_sources_in_every_endpoint_form() {
        let f = filter("1.0");
        for host in [
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            "123456789012.dkr.ecr-fips.eu-west-1.amazonaws.com",
            "123456789012.dkr-ecr.eu-west-1.on.aws",
        ] {
            let src: Reference = format!("{host}/team/app:1.0").parse().unwrap();
            assert!(f.matches(&src), "{host}");
        }
        for host in [
            "123456789012.dkr.ecr.eu-west-2.amazonaws.com",
            "210987654321.dkr.ecr.eu-west-1.amazonaws.com",
            "registry.example.com",
        ] {
            let src: Reference = format!("{host}/team/app:1.0").parse().unwrap();
            assert!(!f.matches(&src), "{host}");
        }
        // The China partition: the event's account and region, another suffix.
        let cn = EventFilter::from_event_json(
            r#"{"account":"123456789012","region":"cn-north-1","detail":{"repository-name":"team/app","image-tag":"1.0"}}"#,
        )
        .unwrap();
        let src: Reference = "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/team/app:1.0"
            .parse()
            .unwrap();
        assert!(cn.matches(&src));
    }
}
