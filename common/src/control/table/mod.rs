//! The mirror table: one row per source image, its destinations, and the
//! status of each destination.
//!
//! The same rows live in DynamoDB (see [`crate::store`]) and in a YAML file
//! (local mode, `table import/export`):
//!
//! ```yaml
//! mirrors:
//!   - source: docker.io/library/golang:1.17
//!     destinations:
//!       - 123456789012.dkr.ecr.us-east-1.amazonaws.com/golang:1.17
//!       - 123456789012.dkr.ecr.us-east-2.amazonaws.com/golang:1.17
//!     overwrite: false     # optional: refuse to move a destination tag
//!     platforms: [linux/amd64, linux/arm64]  # optional: a subset (new digest)
//!   - source: registry.example.com/team/*   # every repository under team/
//!     destinations: [123456789012.dkr.ecr.eu-west-1.amazonaws.com/mirror/]
//!     strip: team                            # team/app -> mirror/app
//!     enabled: true        # optional
//! ```
//!
//! Rows are edited by hand, so parsing is forgiving where it can be (a list or
//! one comma-separated string of destinations) and precise where it cannot
//! (an unknown key is an error naming the key and its line).

mod csv;
mod file;
mod mirror;
mod parsed;
pub mod status;
#[cfg(test)]
mod tests;

pub use csv::{parse_csv, render_csv};
pub use file::{Destinations, FileRow, MirrorFile};
pub use parsed::{Numbered, Parsed, Refused};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::control::select::{RepoRules, TagRules};
use crate::oci::digest::Digest;
use crate::oci::manifest::PlatformSpec;
use crate::oci::reference::Reference;

/// What a user asked for: a source and where to mirror it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub source: Reference,
    pub destinations: Vec<Reference>,
    pub enabled: bool,
    /// `Some(false)` refuses to replace a destination tag holding another digest.
    pub overwrite: Option<bool>,
    /// Unix seconds after which DynamoDB's TTL may delete the row.
    pub expires: Option<i64>,
    /// For a row naming a repository: which tags to mirror, and where. Such a
    /// row has no `destinations` of its own; [`Mirror::expand`] turns it into
    /// one image row per selected tag.
    pub select: Option<Select>,
    /// Only these platforms of a multi-platform source (sorted, no
    /// duplicates); empty means all. The destination then holds a filtered
    /// index with a digest of its own.
    pub platforms: Vec<PlatformSpec>,
}

/// A repository row's tag rule and its targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Select {
    pub tags: TagRules,
    pub targets: Vec<Target>,
    /// Set for a registry-wide row (`registry/team/*`): which repositories
    /// of the catalog (full paths, under the row's namespace) to mirror.
    pub repositories: Option<RepoRules>,
    /// A leading path removed from each source repository before it is
    /// placed under a prefix (`team` + `team/app` -> `<prefix>/app`).
    pub strip: Option<String>,
}

/// Where a selected tag goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The same tag in this repository.
    Repository(Reference),
    /// The same tag under this prefix, keeping the source's repository path
    /// (`registry/mirror/` + `team/app` -> `registry/mirror/team/app`).
    Prefix { registry: String, path: String },
}

impl Target {
    fn parse(raw: &str) -> Result<Target, String> {
        if let Some(stem) = raw.strip_suffix('/') {
            // Validate the prefix by parsing it as a repository of its own.
            let r = Reference::parse_repository(stem).map_err(|e| e.to_string())?;
            return Ok(Target::Prefix {
                registry: r.registry().to_string(),
                path: r.repository().to_string(),
            });
        }
        Ok(Target::Repository(
            Reference::parse_repository(raw).map_err(|e| e.to_string())?,
        ))
    }

    /// The destination of `source` (a tagged image of the row's
    /// repository); under a prefix, without the leading path `strip`.
    pub fn destination(
        &self,
        source: &Reference,
        strip: Option<&str>,
    ) -> Result<Reference, String> {
        let tag = source.tag().unwrap_or("latest");
        let repo = match self {
            Target::Repository(r) => r.clone(),
            Target::Prefix { registry, path } => {
                let kept = strip_leading(source.repository(), strip);
                Reference::parse_repository(&format!("{registry}/{path}/{kept}"))
                    .map_err(|e| e.to_string())?
            }
        };
        repo.with_tag(tag).map_err(|e| e.to_string())
    }
}

/// `repo` without the leading path `strip` (whole segments only); unchanged
/// when it does not start with it or nothing would be left.
fn strip_leading<'a>(repo: &'a str, strip: Option<&str>) -> &'a str {
    match strip.and_then(|s| repo.strip_prefix(s)) {
        Some(rest) => rest
            .strip_prefix('/')
            .filter(|r| !r.is_empty())
            .unwrap_or(repo),
        None => repo,
    }
}

/// Whether `strip` reaches below the namespace `ns` of a registry-wide row
/// (`team/legacy` under `team`): it then applies to the repositories there.
fn leads_namespace(strip: &str, ns: &str) -> bool {
    strip
        .strip_prefix(ns)
        .is_some_and(|rest| rest.starts_with('/'))
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Repository(r) => write!(f, "{r}"),
            Target::Prefix { registry, path } => write!(f, "{registry}/{path}/"),
        }
    }
}

/// A destination's state, as written back by the controller and workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queued,
    Copying,
    Synced,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Copying => "copying",
            State::Synced => "synced",
            State::Failed => "failed",
        }
    }
}

/// The status of one destination of a row.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DestStatus {
    pub state: Option<State>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_digest: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_digest: Option<Digest>,
    /// RFC 3339 times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<String>,
    /// When the controller last enqueued a job for this destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<String>,
    #[serde(default)]
    pub bytes_copied: u64,
    #[serde(default)]
    pub attempts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The platform subset `dest_digest` was cut to (`linux/amd64,linux/arm64`),
    /// so the controller knows the subset's digest without reading the
    /// source index again while the source is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platforms: Option<String>,
    /// Referrer tags (`sha256-<hex>.sig`, ...) this destination holds at
    /// another digest and cannot take (its tags are immutable), comma-
    /// separated: reported once by the copy, then not queued again for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_referrers: Option<String>,
}

/// A row as stored: the mirror, plus status per destination (keyed by the
/// destination's normalised reference) and a row-level error (for problems
/// such as an unreadable source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub mirror: Mirror,
    pub status: BTreeMap<String, DestStatus>,
    pub error: Option<String>,
}

impl Row {
    /// Each destination and its status: an image row's destinations (a
    /// missing status is the default, "new"), or every image a repository
    /// row has queued or mirrored so far.
    pub fn destination_statuses(&self) -> Vec<(String, DestStatus)> {
        if self.mirror.select.is_some() {
            return self
                .status
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        self.mirror
            .destinations
            .iter()
            .map(|d| {
                let k = d.to_string();
                let st = self.status.get(&k).cloned().unwrap_or_default();
                (k, st)
            })
            .collect()
    }
}

/// A row as read from the table: the raw key and either the row or why it
/// cannot be used. Bad rows are reported on themselves; they never stop a scan.
#[derive(Debug, Clone)]
pub struct ScannedRow {
    pub key: String,
    pub row: Result<Row, String>,
    /// The source index's attribute as stored (DynamoDB), which the
    /// scheduled scan brings up to date.
    pub scope: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
}

/// A list, or one comma-separated string.
#[derive(Debug, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "`platforms` must be a list such as [linux/amd64, linux/arm64] or one comma-separated string"
)]
pub enum Platforms {
    List(Vec<String>),
    One(String),
}

/// Now as RFC 3339 with seconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
