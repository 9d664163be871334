//! The controller's decision, as a pure function: given a row, what HEAD said
//! about its source and each destination, and the time, what to do.
//!
//! No I/O happens here, so every case is a unit test.

use std::time::{Duration, SystemTime};

use crate::control::table::{Row, State};
use crate::oci::digest::Digest;
use crate::oci::reference::Reference;

/// What a HEAD request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Found(Digest),
    Missing,
    /// Unreachable, refused, or otherwise unreadable; the words say why.
    Error(String),
}

/// The plan for one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// `enabled: false`: nothing is checked or written.
    Disabled,
    /// The source cannot be read: the row's status says why; nothing is queued.
    SourceProblem(String),
    /// Per destination, what to do.
    Act {
        source_digest: Digest,
        /// What the destinations must hold: the source digest, or for a row
        /// with a platform subset, the filtered index's digest.
        dest_digest: Digest,
        /// Destinations to copy, with the reason for each.
        copy: Vec<(Reference, String)>,
        /// Destinations already at the source digest whose status does not say so yet.
        mark_synced: Vec<Reference>,
        /// Destinations with a job already queued for this digest (not queued again).
        pending: Vec<Reference>,
    },
}

impl Plan {
    pub fn copies(&self) -> &[(Reference, String)] {
        match self {
            Plan::Act { copy, .. } => copy,
            _ => &[],
        }
    }
}

/// How long a `queued` or `copying` status holds off another job for the same
/// digest: long enough for a backlog to drain, short enough that a lost job is
/// retried on a later run.
pub const DEFAULT_REQUEUE_AFTER: Duration = Duration::from_secs(3600);

/// The plan of a row that needs no probe at all (`enabled: false`), so the
/// controller can skip its HEADs; `None` when the row must be probed.
pub fn without_probes(row: &Row) -> Option<Plan> {
    (!row.mirror.enabled).then_some(Plan::Disabled)
}

/// Decide what to do with `row`. `dests` has one probe per destination, in the
/// row's order. `filtered` is the digest of the source cut down to the row's
/// platforms, when that differs from the source's own.
pub fn plan(
    row: &Row,
    source: &Probe,
    filtered: Option<&Digest>,
    dests: &[Probe],
    now: SystemTime,
    requeue_after: Duration,
) -> Plan {
    plan_with_referrers(row, source, filtered, dests, &[], now, requeue_after)
}

/// [`plan`], knowing which referrer tags (`sha256-<hex>`, `.sig`, ...) each
/// destination lacks against the source: one list per destination in the
/// row's order, or none at all when they were not checked. A destination in
/// sync that lacks some is copied again (the copy finds the image in sync and
/// brings the referrers), except for tags its status says it refused
/// (immutable there at another digest: queueing again would repeat that
/// forever).
pub fn plan_with_referrers(
    row: &Row,
    source: &Probe,
    filtered: Option<&Digest>,
    dests: &[Probe],
    referrers_missing: &[Vec<String>],
    now: SystemTime,
    requeue_after: Duration,
) -> Plan {
    if let Some(p) = without_probes(row) {
        return p;
    }
    let source_digest = match source {
        Probe::Found(d) => d.clone(),
        Probe::Missing => {
            return Plan::SourceProblem(format!(
                "source image {} was not found (check the tag exists)",
                row.mirror.source
            ));
        }
        Probe::Error(e) => return Plan::SourceProblem(format!("cannot read the source: {e}")),
    };
    let want = filtered.unwrap_or(&source_digest).clone();
    let mut copy = Vec::new();
    let mut mark_synced = Vec::new();
    let mut pending = Vec::new();
    // Referrer copies come after the others, as the controller reports them.
    let mut referrer_copies = Vec::new();
    for (i, (dest, probe)) in row.mirror.destinations.iter().zip(dests).enumerate() {
        let status = row.status.get(&dest.to_string());
        let reason = match probe {
            Probe::Found(d) if *d == want => {
                let refused = status.and_then(|s| s.refused_referrers.as_deref());
                let missing: Vec<&str> = referrers_missing
                    .get(i)
                    .into_iter()
                    .flatten()
                    .map(String::as_str)
                    .filter(|t| !refused.is_some_and(|r| r.split(',').any(|x| x == *t)))
                    .collect();
                if !missing.is_empty() {
                    referrer_copies.push((
                        dest.clone(),
                        format!("signatures or attestations missing: {}", missing.join(", ")),
                    ));
                    continue;
                }
                let recorded = status.is_some_and(|s| {
                    s.state == Some(State::Synced) && s.dest_digest.as_ref() == Some(d)
                });
                if !recorded {
                    mark_synced.push(dest.clone());
                }
                continue;
            }
            Probe::Found(d) if want != source_digest => {
                format!(
                    "destination holds {d}, the source's platforms {} are {want}",
                    platforms(row)
                )
            }
            Probe::Found(d) => format!("destination holds {d}, source is {source_digest}"),
            Probe::Missing => "destination missing".to_string(),
            Probe::Error(e) => format!("destination unreadable ({e})"),
        };
        let in_flight = status.is_some_and(|s| {
            matches!(s.state, Some(State::Queued) | Some(State::Copying))
                && s.source_digest.as_ref() == Some(&source_digest)
                && s.queued_at
                    .as_deref()
                    .and_then(|t| humantime::parse_rfc3339(t).ok())
                    .is_some_and(|t| now.duration_since(t).unwrap_or_default() < requeue_after)
        });
        if in_flight {
            pending.push(dest.clone());
        } else {
            copy.push((dest.clone(), reason));
        }
    }
    copy.extend(referrer_copies);
    Plan::Act {
        source_digest,
        dest_digest: want,
        copy,
        mark_synced,
        pending,
    }
}

/// The digest of the row's platform subset of `source_digest`, when the
/// statuses already tell it: every destination synced from that source
/// digest with the same subset, to one digest. The controller then skips the
/// GET of the source index (a pull, where registries count pulls).
pub fn known_subset_digest(row: &Row, source_digest: &Digest) -> Option<Digest> {
    let subset = row.mirror.platforms_key()?;
    let mut known: Option<Digest> = None;
    for d in &row.mirror.destinations {
        let st = row.status.get(&d.to_string())?;
        if st.state != Some(State::Synced)
            || st.source_digest.as_ref() != Some(source_digest)
            || st.platforms.as_deref() != Some(subset.as_str())
        {
            return None;
        }
        let digest = st.dest_digest.as_ref()?;
        if known.get_or_insert_with(|| digest.clone()) != digest {
            return None;
        }
    }
    known
}

fn platforms(row: &Row) -> String {
    let list: Vec<String> = row
        .mirror
        .platforms
        .iter()
        .map(ToString::to_string)
        .collect();
    list.join(", ")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::control::table::{DestStatus, Mirror};

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn row(dests: &[&str]) -> Row {
        let dests: Vec<String> = dests.iter().map(|s| s.to_string()).collect();
        Row {
            mirror: Mirror::new("golang:1.17", &dests).unwrap(),
            status: BTreeMap::new(),
            error: None,
        }
    }

    const A: &str = "a.example.com/golang:1.17";
    const B: &str = "b.example.com/golang:1.17";

    fn now() -> SystemTime {
        humantime::parse_rfc3339("2026-11-22T12:00:00Z").unwrap()
    }

    fn run(r: &Row, src: Probe, dests: &[Probe]) -> Plan {
        plan(r, &src, None, dests, now(), DEFAULT_REQUEUE_AFTER)
    }

    #[test]
    fn in_sync_does_nothing_but_record() {
        let mut r = row(&[A]);
        let p = run(&r, Probe::Found(d(1)), &[Probe::Found(d(1))]);
        assert!(p.copies().is_empty());
        assert!(matches!(&p, Plan::Act { mark_synced, .. } if mark_synced.len() == 1));
        // Once recorded as synced at that digest, nothing at all.
        r.status.insert(
            A.parse::<Reference>().unwrap().to_string(),
            DestStatus {
                state: Some(State::Synced),
                dest_digest: Some(d(1)),
                ..Default::default()
            },
        );
        let p = run(&r, Probe::Found(d(1)), &[Probe::Found(d(1))]);
        assert!(
            matches!(&p, Plan::Act { copy, mark_synced, pending, .. } if copy.is_empty() && mark_synced.is_empty() && pending.is_empty())
        );
    }

    #[test]
    fn lagging_referrers_copy_an_in_sync_destination_unless_refused() {
        let mut r = row(&[A, B]);
        let sig = "sha256-aa.sig".to_string();
        let missing = [vec![sig.clone()], vec![sig.clone()]];
        r.status.insert(
            B.parse::<Reference>().unwrap().to_string(),
            DestStatus {
                refused_referrers: Some(sig.clone()),
                ..Default::default()
            },
        );
        let found = [Probe::Found(d(1)), Probe::Found(d(1))];
        let p = plan_with_referrers(
            &r,
            &Probe::Found(d(1)),
            None,
            &found,
            &missing,
            now(),
            DEFAULT_REQUEUE_AFTER,
        );
        let Plan::Act {
            copy, mark_synced, ..
        } = &p
        else {
            panic!("{p:?}")
        };
        assert_eq!(copy.len(), 1, "{copy:?}");
        assert_eq!(copy[0].0.to_string(), A);
        assert_eq!(
            copy[0].1,
            format!("signatures or attestations missing: {sig}")
        );
        // B refused that tag once: it is in sync, not queued again.
        assert_eq!(
            mark_synced
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [B]
        );
        assert!(without_probes(&r).is_none());
        r.mirror.enabled = false;
        assert_eq!(without_probes(&r), Some(Plan::Disabled));
    }

    #[test]
    fn copies_only_the_destinations_that_differ() {
        let r = row(&[A, B]);
        let p = run(
            &r,
            Probe::Found(d(1)),
            &[Probe::Found(d(1)), Probe::Found(d(2))],
        );
        let copies = p.copies();
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].0.to_string(), B);
        assert!(copies[0].1.contains("destination holds"));
        let p = run(
            &r,
            Probe::Found(d(1)),
            &[Probe::Missing, Probe::Error("refused".into())],
        );
        assert_eq!(p.copies().len(), 2);
        assert_eq!(p.copies()[0].1, "destination missing");
        assert!(p.copies()[1].1.contains("refused"));
    }

    #[test]
    fn source_problems_are_reported_not_queued() {
        let r = row(&[A]);
        match run(&r, Probe::Missing, &[Probe::Missing]) {
            Plan::SourceProblem(m) => assert!(m.contains("was not found"), "{m}"),
            other => panic!("{other:?}"),
        }
        match run(
            &r,
            Probe::Error("connection refused".into()),
            &[Probe::Missing],
        ) {
            Plan::SourceProblem(m) => assert!(m.contains("connection refused")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn disabled_rows_are_left_alone() {
        let mut r = row(&[A]);
        r.mirror.enabled = false;
        assert_eq!(run(&r, Probe::Missing, &[Probe::Missing]), Plan::Disabled);
    }

    #[test]
    fn a_recent_job_for_the_same_digest_is_not_queued_twice() {
        let mut r = row(&[A]);
        let key = A.parse::<Reference>().unwrap().to_string();
        r.status.insert(
            key.clone(),
            DestStatus {
                state: Some(State::Queued),
                source_digest: Some(d(1)),
                queued_at: Some("2026-11-22T11:30:00Z".into()),
                ..Default::default()
            },
        );
        let p = run(&r, Probe::Found(d(1)), &[Probe::Missing]);
        assert!(
            matches!(&p, Plan::Act { copy, pending, .. } if copy.is_empty() && pending.len() == 1)
        );
        // A new source digest supersedes the queued job.
        assert_eq!(
            run(&r, Probe::Found(d(2)), &[Probe::Missing])
                .copies()
                .len(),
            1
        );
        // A job queued long ago is presumed lost and queued again.
        r.status.get_mut(&key).unwrap().queued_at = Some("2026-11-22T09:00:00Z".into());
        assert_eq!(
            run(&r, Probe::Found(d(1)), &[Probe::Missing])
                .copies()
                .len(),
            1
        );
    }

    #[test]
    fn a_known_subset_digest_needs_every_destination_synced_from_the_same_source_and_subset() {
        let mut r = row(&[A, B]);
        let synced = |subset: &str, src: u8, dst: u8| DestStatus {
            state: Some(State::Synced),
            source_digest: Some(d(src)),
            dest_digest: Some(d(dst)),
            platforms: Some(subset.into()),
            ..Default::default()
        };
        let key = |s: &str| s.parse::<Reference>().unwrap().to_string();
        // No subset on the row: nothing to know.
        r.status.insert(key(A), synced("linux/amd64", 1, 9));
        r.status.insert(key(B), synced("linux/amd64", 1, 9));
        assert_eq!(known_subset_digest(&r, &d(1)), None);
        r.mirror.set_platforms(&["linux/amd64".into()]).unwrap();
        assert_eq!(known_subset_digest(&r, &d(1)), Some(d(9)));
        // A new source digest, another subset, a destination not synced,
        // or two different results: read the source again.
        assert_eq!(known_subset_digest(&r, &d(2)), None);
        r.mirror.set_platforms(&["linux/arm64".into()]).unwrap();
        assert_eq!(known_subset_digest(&r, &d(1)), None);
        r.mirror.set_platforms(&["linux/amd64".into()]).unwrap();
        r.status.insert(key(B), synced("linux/amd64", 1, 8));
        assert_eq!(known_subset_digest(&r, &d(1)), None);
        r.status.remove(&key(B));
        assert_eq!(known_subset_digest(&r, &d(1)), None);
    }

    #[test]
    fn a_platform_subset_is_compared_by_its_filtered_digest() {
        let mut r = row(&[A, B]);
        r.mirror
            .set_platforms(&["linux/arm64,linux/amd64".into()])
            .unwrap();
        let filtered = d(9);
        let p = plan(
            &r,
            &Probe::Found(d(1)),
            Some(&filtered),
            &[Probe::Found(d(9)), Probe::Found(d(1))],
            now(),
            DEFAULT_REQUEUE_AFTER,
        );
        let Plan::Act {
            source_digest,
            dest_digest,
            copy,
            mark_synced,
            ..
        } = &p
        else {
            panic!("{p:?}")
        };
        assert_eq!((source_digest, dest_digest), (&d(1), &d(9)));
        assert_eq!(mark_synced.len(), 1);
        assert_eq!(copy.len(), 1);
        assert_eq!(
            copy[0].1,
            format!(
                "destination holds {}, the source's platforms linux/amd64, linux/arm64 are {}",
                d(1),
                d(9)
            )
        );
    }
}
