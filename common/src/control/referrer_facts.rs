//! The controller's referrer facts (`--check-referrers`, and push events of
//! referrer tags): which of an image's referrer tags each destination lacks
//! against the source, for `control::plan::plan_with_referrers`. Tags are
//! looked up in each repository's listing first
//! (`registry::client::listing`), so only those that exist are HEADed.

use crate::control::plan::{Plan, Probe};
use crate::control::scan::probe;
use crate::control::table::Row;
use crate::copy::Engine;
use crate::oci::reference::Reference;
use crate::registry::Role;

/// The referrer tags the source has that the destination lacks or holds at
/// another digest. Both lists are in `tags` order.
pub fn referrers_missing(
    tags: &[String],
    source: &[Option<crate::oci::digest::Digest>],
    dest: &[Option<crate::oci::digest::Digest>],
) -> Vec<String> {
    tags.iter()
        .zip(source.iter().zip(dest))
        .filter(|(_, (s, d))| s.is_some() && s != d)
        .map(|(t, _)| t.clone())
        .collect()
}

/// The referrer tags each destination lacks against the source, for the
/// planner; only destinations the plan finds in sync are asked (the others
/// are copied anyway, referrers included). `None` when the source has no
/// referrer tags (nothing to lack) or the plan copies nothing.
pub(crate) async fn referrer_facts(
    engine: &Engine,
    row: &Row,
    digest: &crate::oci::digest::Digest,
    p: &Plan,
    since: std::time::Instant,
) -> Option<Vec<Vec<String>>> {
    let Plan::Act { copy, pending, .. } = p else {
        return None;
    };
    let tags = crate::oci::referrers::referrer_tags(digest);
    let at_source = head_tags(engine, &row.mirror.source, &tags, Role::Source, since).await;
    if at_source.iter().all(Option::is_none) {
        return None;
    }
    let mut missing = Vec::with_capacity(row.mirror.destinations.len());
    for d in &row.mirror.destinations {
        if copy.iter().any(|(c, _)| c == d) || pending.contains(d) {
            missing.push(Vec::new());
            continue;
        }
        let at_dest = head_tags(engine, d, &tags, Role::Destination, since).await;
        missing.push(referrers_missing(&tags, &at_source, &at_dest));
    }
    Some(missing)
}

/// The digest each of `tags` of `image`'s repository points at, if any:
/// by HEAD, for the tags the repository's listing (one per repository and
/// scan) holds, or for all where it is not listed.
async fn head_tags(
    engine: &Engine,
    image: &Reference,
    tags: &[String],
    role: Role,
    since: std::time::Instant,
) -> Vec<Option<crate::oci::digest::Digest>> {
    let listed = match engine.registries().get(image.registry(), role).await {
        Ok(reg) => reg.referrer_tags(image.repository(), since).await,
        Err(_) => None,
    };
    let mut out = Vec::with_capacity(tags.len());
    for t in tags {
        if listed.as_ref().is_some_and(|l| !l.contains(t)) {
            out.push(None);
            continue;
        }
        let found = match image.with_tag(t) {
            Ok(tagged) => probe(engine, &tagged, role).await,
            Err(e) => Probe::Error(e.to_string()),
        };
        out.push(match found {
            Probe::Found(d) => Some(d),
            _ => None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::digest::Digest;

    #[test]
    fn referrer_tags_missing_at_the_destination() {
        let digest = Digest::sha256_of(b"image");
        let tags = crate::oci::referrers::referrer_tags(&digest);
        let stem = digest.to_string().replace(':', "-");
        assert_eq!(
            tags,
            [
                stem.clone(),
                format!("{stem}.sig"),
                format!("{stem}.att"),
                format!("{stem}.sbom")
            ]
        );
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        let source = [None, Some(a.clone()), Some(b.clone()), None];
        assert!(referrers_missing(&tags, &source, &source).is_empty());
        // Extra tags at the destination do not matter; missing or different ones do.
        let dest = [Some(a.clone()), Some(a.clone()), None, Some(b.clone())];
        assert_eq!(
            referrers_missing(&tags, &source, &dest),
            [format!("{stem}.att")]
        );
        let dest = [None, Some(b), Some(a), None];
        assert_eq!(
            referrers_missing(&tags, &source, &dest),
            [format!("{stem}.sig"), format!("{stem}.att")]
        );
    }
}
