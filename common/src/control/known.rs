//! Digests asked in bulk before a page's rows are probed: for each
//! repository that page names more than once, one call per 100 images where
//! the registry answers many at once (ECR's `DescribeImages`, through
//! [`crate::registry::Registries::image_digests`]), instead of a HEAD each.
//! A probe consults these first and HEADs only what they leave undecided.
//!
//! Only image rows are asked ahead: a repository row's images are known only
//! once its tags are listed, row by row.

use std::collections::{BTreeSet, HashMap};

use futures_util::StreamExt;

use crate::Engine;
use crate::control::plan::{Probe, without_probes};
use crate::control::scan::EventFilter;
use crate::control::table::ScannedRow;
use crate::oci::reference::Reference;
use crate::registry::Role;

/// Repositories asked at once for one page.
const REPOSITORIES_AT_ONCE: usize = 4;

/// A repository with fewer images than this in a page is HEADed: one
/// request either way, and the registry's data plane has the larger quota.
const BULK_FROM: usize = 2;

/// One image on one side, as a probe names it.
type Key = (Role, String, String, String);

fn key(r: &Reference, role: Role) -> Key {
    (
        role,
        r.registry().to_string(),
        r.repository().to_string(),
        r.manifest_ref(),
    )
}

/// What the bulk calls told, for one page.
#[derive(Debug, Default)]
pub struct Known {
    digests: HashMap<Key, Probe>,
}

impl Known {
    /// The image's digest (or that it is missing) if a bulk call told.
    pub fn get(&self, r: &Reference, role: Role) -> Option<Probe> {
        self.digests.get(&key(r, role)).cloned()
    }
}

/// Ask, per repository, for the sources and destinations of `rows` that the
/// planner will probe.
pub async fn ask(engine: &Engine, rows: &[ScannedRow], filter: Option<&EventFilter>) -> Known {
    let mut wanted: HashMap<(Role, String, String), (Reference, BTreeSet<String>)> = HashMap::new();
    let mut want = |r: &Reference, role: Role| {
        wanted
            .entry((role, r.registry().to_string(), r.repository().to_string()))
            .or_insert_with(|| (r.clone(), BTreeSet::new()))
            .1
            .insert(r.manifest_ref());
    };
    for row in rows.iter().filter_map(|s| s.row.as_ref().ok()) {
        let m = &row.mirror;
        if m.select.is_some()
            || without_probes(row).is_some()
            || filter.is_some_and(|f| !f.concerns(&m.source))
        {
            continue;
        }
        want(&m.source, Role::Source);
        for d in &m.destinations {
            want(d, Role::Destination);
        }
    }
    let asks = wanted
        .into_iter()
        .filter(|(_, (_, ids))| ids.len() >= BULK_FROM)
        .map(|((role, registry, repository), (image, ids))| async move {
            let ids: Vec<String> = ids.into_iter().collect();
            let Some(told) = engine.registries().image_digests(&image, role, &ids).await else {
                return Vec::new();
            };
            told.into_iter()
                .map(|(id, digest)| {
                    let probe = digest.map_or(Probe::Missing, Probe::Found);
                    ((role, registry.clone(), repository.clone(), id), probe)
                })
                .collect()
        });
    let mut known = Known::default();
    let mut answers =
        std::pin::pin!(futures_util::stream::iter(asks).buffer_unordered(REPOSITORIES_AT_ONCE));
    while let Some(told) = answers.next().await {
        known.digests.extend(told);
    }
    known
}
