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

use std::collections::BTreeMap;
use std::path::Path;

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

impl Mirror {
    /// Validate and normalise a mirror from its raw parts.
    pub fn new(source: &str, destinations: &[String]) -> Result<Mirror, String> {
        let source: Reference = source
            .trim()
            .parse()
            .map_err(|e: crate::oci::reference::ReferenceError| format!("source: {e}"))?;
        let mut dests: Vec<Reference> = Vec::new();
        for (i, d) in destinations
            .iter()
            .flat_map(|d| d.split(','))
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .enumerate()
        {
            if d.ends_with('/') {
                return Err(format!(
                    "destination {}: {d} is a prefix, which only a row that picks tags can use \
                     (a source without a tag plus a `tags` rule, e.g. --include-tags '.*', or a source ending in /*)",
                    i + 1
                ));
            }
            let r: Reference = d
                .parse()
                .map_err(|e: crate::oci::reference::ReferenceError| {
                    format!("destination {}: {e}", i + 1)
                })?;
            if r.same_location(&source) {
                return Err(format!("destination {r} is the source itself"));
            }
            if dests.contains(&r) {
                return Err(format!("destination {r} is listed twice"));
            }
            dests.push(r);
        }
        if dests.is_empty() {
            return Err(format!("mirror {source} has no destinations"));
        }
        Ok(Mirror {
            source,
            destinations: dests,
            enabled: true,
            overwrite: None,
            expires: None,
            select: None,
            platforms: Vec::new(),
        })
    }

    /// A repository row: `source` without a tag, `tags` picking which of its
    /// tags to mirror, each target a repository or a prefix ending in `/`.
    pub fn with_tags(source: &str, targets: &[String], tags: TagRules) -> Result<Mirror, String> {
        Mirror::with_selection(source, targets, tags, None)
    }

    /// A repository row, or with `repositories` (or a source ending in `/*`)
    /// a registry-wide row whose targets must be prefixes.
    pub fn with_selection(
        source: &str,
        targets: &[String],
        tags: TagRules,
        repositories: Option<RepoRules>,
    ) -> Result<Mirror, String> {
        let wide = source.trim().ends_with("/*");
        if repositories.is_some() && !wide {
            return Err(format!(
                "`repositories` needs a registry-wide source ending in /* (not {source:?})"
            ));
        }
        let repositories = wide.then(|| repositories.unwrap_or_default());
        let source = if wide {
            Reference::parse_namespace(source)
        } else {
            Reference::parse_repository(source.trim())
        }
        .map_err(|e| format!("source: {e}"))?;
        tags.compile().map_err(|e| e.to_string())?;
        if let Some(r) = &repositories {
            r.validate().map_err(|e| e.to_string())?;
        }
        let mut parsed: Vec<Target> = Vec::new();
        for (i, raw) in targets
            .iter()
            .flat_map(|d| d.split(','))
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .enumerate()
        {
            let t = Target::parse(raw).map_err(|e| format!("destination {}: {e}", i + 1))?;
            if wide && !matches!(t, Target::Prefix { .. }) {
                return Err(format!(
                    "destination {t}: a registry-wide row mirrors many repositories, so its destinations are prefixes ending in /"
                ));
            }
            if matches!(&t, Target::Repository(r) if r.name() == source.name()) {
                return Err(format!("destination {t} is the source itself"));
            }
            if parsed.contains(&t) {
                return Err(format!("destination {t} is listed twice"));
            }
            parsed.push(t);
        }
        if parsed.is_empty() {
            return Err(format!("mirror {source} has no destinations"));
        }
        Ok(Mirror {
            source,
            destinations: Vec::new(),
            enabled: true,
            overwrite: None,
            expires: None,
            select: Some(Select {
                tags,
                targets: parsed,
                repositories,
                strip: None,
            }),
            platforms: Vec::new(),
        })
    }

    /// Set the platform subset from what a user wrote: each entry one
    /// platform or a comma-separated list.
    pub fn set_platforms(&mut self, raw: &[String]) -> Result<(), String> {
        let mut out: Vec<PlatformSpec> = raw
            .iter()
            .flat_map(|p| p.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().map_err(|e| format!("`platforms`: {e}")))
            .collect::<Result<_, String>>()?;
        out.sort();
        out.dedup();
        self.platforms = out;
        Ok(())
    }

    /// Set the leading path removed before sources are placed under prefix
    /// destinations. It must lead the row's source path (a registry-wide
    /// row over a whole registry takes any), so a typo is caught here
    /// rather than mirroring everything under the full path.
    pub fn set_strip(&mut self, raw: Option<&str>) -> Result<(), String> {
        let raw = raw
            .map(|r| r.trim().trim_matches('/'))
            .filter(|r| !r.is_empty());
        let Some(strip) = raw else {
            if let Some(sel) = &mut self.select {
                sel.strip = None;
            }
            return Ok(());
        };
        let source_path = self.source.repository().to_string();
        let Some(sel) = &mut self.select else {
            return Err("`strip` needs a row that picks tags or repositories, with prefix destinations (ending in /)".into());
        };
        if !sel
            .targets
            .iter()
            .any(|t| matches!(t, Target::Prefix { .. }))
        {
            return Err(
                "`strip` applies to prefix destinations (ending in /), and this row has none"
                    .into(),
            );
        }
        let leads = |path: &str| {
            path == strip
                || path
                    .strip_prefix(strip)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        let wide = sel.repositories.is_some();
        // On `registry/*` any path goes: repositories outside it keep theirs.
        let fits = (wide && source_path.is_empty())
            || leads(&source_path)
            || (wide && leads_namespace(strip, &source_path));
        if !fits {
            return Err(format!(
                "`strip`: {strip} is not a leading part of the source path {source_path}"
            ));
        }
        if !wide && source_path == strip {
            return Err(format!(
                "`strip`: {strip} is the whole repository path; use a repository destination (without /) instead"
            ));
        }
        sel.strip = Some(strip.to_string());
        Ok(())
    }

    /// The platform subset as recorded in a status (`None`: every platform).
    pub fn platforms_key(&self) -> Option<String> {
        let list: Vec<String> = self.platforms.iter().map(ToString::to_string).collect();
        (!list.is_empty()).then(|| list.join(","))
    }

    /// The row's key as users write it: the source, with `/*` for a
    /// registry-wide row.
    pub fn key(&self) -> String {
        let wide = matches!(
            &self.select,
            Some(Select {
                repositories: Some(_),
                ..
            })
        );
        match (wide, self.source.repository().is_empty()) {
            (true, true) => format!("{}/*", self.source.registry()),
            (true, false) => format!("{}/*", self.source.name()),
            (false, _) => self.source.to_string(),
        }
    }

    /// For a registry-wide row: whether `repo` (a full path from the
    /// catalog) is one it mirrors.
    pub fn selects_repository(&self, repo: &str) -> bool {
        let Some(Select {
            repositories: Some(rules),
            ..
        }) = &self.select
        else {
            return false;
        };
        let ns = self.source.repository();
        (ns.is_empty()
            || repo
                .strip_prefix(ns)
                .is_some_and(|rest| rest.starts_with('/')))
            && rules.matches(repo)
    }

    /// For a registry-wide row: the repository row for one of its
    /// repositories (same tag rule and targets).
    pub fn for_repository(&self, repo: &str) -> Result<Mirror, String> {
        let Some(sel) = &self.select else {
            return Err(format!("{} is not a registry-wide row", self.key()));
        };
        let source = Reference::parse_repository(&format!("{}/{repo}", self.source.registry()))
            .map_err(|e| e.to_string())?;
        Ok(Mirror {
            source,
            select: Some(Select {
                repositories: None,
                ..sel.clone()
            }),
            ..self.clone()
        })
    }

    /// What the row names as destinations, as written (targets for a
    /// repository row).
    pub fn destination_names(&self) -> Vec<String> {
        match &self.select {
            Some(sel) => sel.targets.iter().map(ToString::to_string).collect(),
            None => self.destinations.iter().map(ToString::to_string).collect(),
        }
    }

    /// One image mirror per tag of a repository row (tags as listed by the
    /// registry, already picked by the rule). An image row expands to itself.
    pub fn expand(&self, tags: &[String]) -> Result<Vec<Mirror>, String> {
        let Some(sel) = &self.select else {
            return Ok(vec![self.clone()]);
        };
        let mut out = Vec::with_capacity(tags.len());
        for tag in tags {
            let source = self.source.with_tag(tag).map_err(|e| e.to_string())?;
            let destinations = sel
                .targets
                .iter()
                .map(|t| t.destination(&source, sel.strip.as_deref()))
                .collect::<Result<Vec<_>, _>>()?;
            out.push(Mirror {
                source,
                destinations,
                select: None,
                ..self.clone()
            });
        }
        Ok(out)
    }

    /// Whether copying `source` to `dest` is still what this row asks for
    /// (a worker checks before acting on a queued job). For a repository row
    /// the tag must still pass the rule's filters (not `latest`, which
    /// depends on the other tags).
    pub fn covers(&self, source: &Reference, dest: &Reference) -> bool {
        let Some(sel) = &self.select else {
            return self.destinations.contains(dest);
        };
        if sel.repositories.is_some() {
            return source.registry() == self.source.registry()
                && self.selects_repository(source.repository())
                && self
                    .for_repository(source.repository())
                    .is_ok_and(|m| m.covers(source, dest));
        }
        let tag_ok = source.name() == self.source.name()
            && source
                .tag()
                .is_some_and(|t| sel.tags.compile().is_ok_and(|c| c.matches(t)));
        tag_ok
            && sel.targets.iter().any(|t| {
                t.destination(source, sel.strip.as_deref())
                    .is_ok_and(|d| &d == dest)
            })
    }
}

/// The YAML file form.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with a `mirrors:` list of {source, destinations}"
)]
pub struct MirrorFile {
    #[serde(default)]
    pub mirrors: Vec<FileRow>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRow {
    pub source: String,
    pub destinations: Destinations,
    /// For a source without a tag: which of its tags to mirror.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<TagRules>,
    /// For a registry-wide source (`registry/team/*`): which repositories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repositories: Option<RepoRules>,
    /// A leading path dropped before sources go under prefix destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overwrite: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    /// Only these platforms (`linux/amd64`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platforms: Option<Platforms>,
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

/// A list, or one comma-separated string, as people write them.
#[derive(Debug, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "`destinations` must be a list of image references or one comma-separated string"
)]
pub enum Destinations {
    List(Vec<String>),
    One(String),
}

impl Destinations {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Destinations::List(v) => v.clone(),
            Destinations::One(s) => vec![s.clone()],
        }
    }
}

impl MirrorFile {
    /// Parse YAML; each invalid row is an error naming its position and source.
    pub fn parse(text: &str, path: &str) -> Result<Vec<Mirror>, TableError> {
        let file: MirrorFile = serde_norway::from_str(text).map_err(|e| TableError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        let mut out: Vec<Mirror> = Vec::new();
        for (i, row) in file.mirrors.iter().enumerate() {
            let dests = row.destinations.to_vec();
            let made = if row.tags.is_some()
                || row.repositories.is_some()
                || row.source.trim().ends_with("/*")
            {
                Mirror::with_selection(
                    &row.source,
                    &dests,
                    row.tags.clone().unwrap_or_default(),
                    row.repositories.clone(),
                )
            } else {
                Mirror::new(&row.source, &dests)
            };
            let mut m = made.map_err(|e| TableError::Parse {
                path: path.to_string(),
                message: format!("mirror {} ({}): {e}", i + 1, shortened(&row.source)),
            })?;
            if out.iter().any(|o| o.source == m.source) {
                return Err(TableError::Parse {
                    path: path.to_string(),
                    message: format!(
                        "mirror {} ({}): the source is listed twice",
                        i + 1,
                        m.source
                    ),
                });
            }
            m.enabled = row.enabled.unwrap_or(true);
            m.overwrite = row.overwrite;
            m.expires = row.expires;
            let platforms = match &row.platforms {
                None => Vec::new(),
                Some(Platforms::List(v)) => v.clone(),
                Some(Platforms::One(one)) => vec![one.clone()],
            };
            m.set_platforms(&platforms)
                .and_then(|()| m.set_strip(row.strip.as_deref()))
                .map_err(|e| TableError::Parse {
                    path: path.to_string(),
                    message: format!("mirror {} ({}): {e}", i + 1, m.key()),
                })?;
            out.push(m);
        }
        Ok(out)
    }

    pub fn load(path: &Path) -> Result<Vec<Mirror>, TableError> {
        let text = std::fs::read_to_string(path).map_err(|source| TableError::Read {
            path: path.display().to_string(),
            source,
        })?;
        MirrorFile::parse(&text, &path.display().to_string())
    }

    pub fn render(mirrors: &[Mirror]) -> String {
        let file = MirrorFile {
            mirrors: mirrors
                .iter()
                .map(|m| FileRow {
                    source: m.key(),
                    destinations: Destinations::List(m.destination_names()),
                    // Empty rules of a /* row are implied by its source; a
                    // repository row keeps `tags: {}`, or it would read back
                    // as the image `:latest`.
                    tags: m
                        .select
                        .as_ref()
                        .filter(|s| !(s.repositories.is_some() && s.tags.is_empty()))
                        .map(|s| s.tags.clone()),
                    repositories: m
                        .select
                        .as_ref()
                        .and_then(|s| s.repositories.clone())
                        .filter(|r| !r.is_empty()),
                    strip: m.select.as_ref().and_then(|s| s.strip.clone()),
                    enabled: (!m.enabled).then_some(false),
                    overwrite: m.overwrite,
                    expires: m.expires,
                    platforms: (!m.platforms.is_empty()).then(|| {
                        Platforms::List(m.platforms.iter().map(ToString::to_string).collect())
                    }),
                })
                .collect(),
        };
        serde_norway::to_string(&file).unwrap_or_default()
    }
}

/// A hand-typed value for a message: a very long one is cut short.
fn shortened(s: &str) -> String {
    if s.chars().count() <= 200 {
        return s.to_string();
    }
    let head: String = s.chars().take(60).collect();
    format!("{head}… ({} characters)", s.chars().count())
}

/// CSV form for import/export: `source,destination[,destination...]` per line,
/// `#` comments allowed.
pub fn parse_csv(text: &str) -> Result<Vec<Mirror>, TableError> {
    let mut out: Vec<Mirror> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut cells = line.split(',').map(|c| c.trim().trim_matches('"'));
        let source = cells.next().unwrap_or_default();
        if n == 0 && source.eq_ignore_ascii_case("source") {
            continue;
        }
        let dests: Vec<String> = cells.map(str::to_string).collect();
        let m = Mirror::new(source, &dests)
            .map_err(|e| TableError::Invalid(format!("line {}: {e}", n + 1)))?;
        if out.iter().any(|o| o.source == m.source) {
            return Err(TableError::Invalid(format!(
                "line {}: the source {} is listed twice",
                n + 1,
                m.source
            )));
        }
        out.push(m);
    }
    Ok(out)
}

/// CSV holds image rows only; a repository row's tag rule needs YAML.
pub fn render_csv(mirrors: &[Mirror]) -> Result<String, TableError> {
    let mut s = String::from("source,destinations\n");
    for m in mirrors {
        if m.select.is_some() {
            return Err(TableError::Invalid(format!(
                "mirror {} has a `tags` rule, which CSV cannot hold; export as YAML",
                m.source
            )));
        }
        if !m.platforms.is_empty() {
            return Err(TableError::Invalid(format!(
                "mirror {} has `platforms`, which CSV cannot hold; export as YAML",
                m.source
            )));
        }
        s.push_str(&m.source.to_string());
        for d in m.destination_names() {
            s.push(',');
            s.push_str(&d);
        }
        s.push('\n');
    }
    Ok(s)
}

/// Now as RFC 3339 with seconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_as_a_list_or_a_string_and_carry_into_expanded_rows() {
        let text = "mirrors:\n  - source: a.example.com/x:1\n    destinations: [b.example.com/x:1]\n    platforms: [linux/arm64, linux/amd64, linux/arm64]\n  - source: a.example.com/y\n    tags: {latest: 1}\n    destinations: [b.example.com/m/]\n    platforms: 'linux/arm/v7, linux/amd64'\n";
        let m = MirrorFile::parse(text, "m.yaml").unwrap();
        let shown =
            |m: &Mirror| -> Vec<String> { m.platforms.iter().map(ToString::to_string).collect() };
        assert_eq!(shown(&m[0]), ["linux/amd64", "linux/arm64"]);
        let images = m[1].expand(&["1.0".into()]).unwrap();
        assert_eq!(shown(&images[0]), ["linux/amd64", "linux/arm/v7"]);
        // The export reads back the same.
        assert_eq!(
            MirrorFile::parse(&MirrorFile::render(&m), "m.yaml").unwrap(),
            m
        );
        let bad = "mirrors:\n  - source: a.example.com/x:1\n    destinations: [b.example.com/x:1]\n    platforms: [amd64]\n";
        assert_eq!(
            MirrorFile::parse(bad, "m.yaml").unwrap_err().to_string(),
            "m.yaml: mirror 1 (a.example.com/x:1): `platforms`: \"amd64\" is not a platform: write os/architecture[/variant], e.g. linux/amd64 or linux/arm/v7"
        );
        assert!(
            render_csv(&m[..1])
                .unwrap_err()
                .to_string()
                .contains("`platforms`")
        );
    }

    #[test]
    fn strip_drops_a_leading_path_under_prefixes() {
        let parse = |yaml: &str| MirrorFile::parse(&format!("mirrors:\n{yaml}"), "m.yaml");
        let dests = |m: &Mirror, repo: Option<&str>, tag: &str| -> Vec<String> {
            let m = match repo {
                Some(r) => m.for_repository(r).unwrap(),
                None => m.clone(),
            };
            m.expand(&[tag.into()]).unwrap()[0]
                .destinations
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        let repo_row = &parse("  - source: r.example.com/team/app\n    tags: {}\n    destinations: [e.example.com/mirror/, e.example.com/copy/x]\n    strip: /team/\n").unwrap()[0];
        assert_eq!(
            dests(repo_row, None, "1"),
            ["e.example.com/mirror/app:1", "e.example.com/copy/x:1"]
        );
        let image = repo_row.expand(&["1".into()]).unwrap().remove(0);
        assert!(repo_row.covers(&image.source, &image.destinations[0]));
        assert!(!repo_row.covers(
            &image.source,
            &"e.example.com/mirror/team/app:1".parse().unwrap()
        ));

        let ns = &parse("  - source: r.example.com/team/*\n    destinations: [e.example.com/m/]\n    strip: team\n").unwrap()[0];
        assert_eq!(dests(ns, Some("team/a/b"), "1"), ["e.example.com/m/a/b:1"]);
        let deeper = &parse("  - source: r.example.com/team/*\n    destinations: [e.example.com/m/]\n    strip: team/legacy\n").unwrap()[0];
        assert_eq!(
            dests(deeper, Some("team/legacy/a"), "1"),
            ["e.example.com/m/a:1"]
        );
        assert_eq!(
            dests(deeper, Some("team/new"), "1"),
            ["e.example.com/m/team/new:1"]
        );
        let all = &parse("  - source: r.example.com/*\n    destinations: [e.example.com/m/]\n    strip: library\n").unwrap()[0];
        assert_eq!(dests(all, Some("library/x"), "1"), ["e.example.com/m/x:1"]);
        assert_eq!(
            dests(all, Some("libraryx/y"), "1"),
            ["e.example.com/m/libraryx/y:1"]
        );
        // Round trip.
        let rows = vec![repo_row.clone(), ns.clone(), all.clone()];
        assert_eq!(
            MirrorFile::parse(&MirrorFile::render(&rows), "m.yaml").unwrap(),
            rows
        );

        for (yaml, message) in [
            (
                "  - source: r.example.com/a:1\n    destinations: [e.example.com/a:1]\n    strip: a\n",
                "`strip` needs a row that picks tags or repositories, with prefix destinations (ending in /)",
            ),
            (
                "  - source: r.example.com/team/app\n    tags: {}\n    destinations: [e.example.com/m/]\n    strip: teem\n",
                "`strip`: teem is not a leading part of the source path team/app",
            ),
            (
                "  - source: r.example.com/team/app\n    tags: {}\n    destinations: [e.example.com/m/]\n    strip: tea\n",
                "`strip`: tea is not a leading part of the source path team/app",
            ),
            (
                "  - source: r.example.com/team/app\n    tags: {}\n    destinations: [e.example.com/m/]\n    strip: team/app\n",
                "`strip`: team/app is the whole repository path; use a repository destination (without /) instead",
            ),
            (
                "  - source: r.example.com/team/app\n    tags: {}\n    destinations: [e.example.com/m/x]\n    strip: team\n",
                "`strip` applies to prefix destinations (ending in /), and this row has none",
            ),
        ] {
            let e = parse(yaml).unwrap_err().to_string();
            assert!(e.ends_with(message), "{e}");
        }
    }

    #[test]
    fn repository_rows_expand_to_one_image_per_tag() {
        let text = "mirrors:\n  - source: registry.example.com/team/app\n    tags: {semver: '>=1.1', latest: 2}\n    destinations: [r.example.com/mirror/, s.example.com/copy/app]\n";
        let m = MirrorFile::parse(text, "m.yaml").unwrap();
        let row = &m[0];
        assert_eq!(row.source.to_string(), "registry.example.com/team/app");
        assert!(row.destinations.is_empty());
        assert_eq!(
            row.destination_names(),
            ["r.example.com/mirror/", "s.example.com/copy/app"]
        );
        let images = row.expand(&["1.2.0".into(), "1.1.0".into()]).unwrap();
        let pairs: Vec<(String, Vec<String>)> = images
            .iter()
            .map(|i| {
                (
                    i.source.to_string(),
                    i.destinations.iter().map(ToString::to_string).collect(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            [
                (
                    "registry.example.com/team/app:1.2.0".to_string(),
                    vec![
                        "r.example.com/mirror/team/app:1.2.0".to_string(),
                        "s.example.com/copy/app:1.2.0".to_string()
                    ]
                ),
                (
                    "registry.example.com/team/app:1.1.0".to_string(),
                    vec![
                        "r.example.com/mirror/team/app:1.1.0".to_string(),
                        "s.example.com/copy/app:1.1.0".to_string()
                    ]
                ),
            ]
        );
        // A worker acts only on pairs the row still asks for.
        let src: Reference = "registry.example.com/team/app:1.2.0".parse().unwrap();
        let ok: Reference = "r.example.com/mirror/team/app:1.2.0".parse().unwrap();
        let other: Reference = "r.example.com/mirror/team/app:9.9.9".parse().unwrap();
        let old: Reference = "registry.example.com/team/app:1.0.0".parse().unwrap();
        let old_dest: Reference = "s.example.com/copy/app:1.0.0".parse().unwrap();
        assert!(row.covers(&src, &ok));
        assert!(!row.covers(&src, &other));
        assert!(!row.covers(&old, &old_dest), "1.0.0 is outside the range");
        // The YAML form survives export and import.
        assert_eq!(
            MirrorFile::parse(&MirrorFile::render(&m), "again").unwrap(),
            m
        );
        assert!(
            render_csv(&m)
                .unwrap_err()
                .to_string()
                .contains("CSV cannot hold")
        );
    }

    #[test]
    fn registry_wide_rows_select_repositories_under_their_namespace() {
        let text = "mirrors:\n  - source: registry.example.com/team/*\n    repositories: {exclude: ['team/tmp-*']}\n    tags: {latest: 1}\n    destinations: r.example.com/mirror/\n  - source: registry.example.com/*\n    destinations: [s.example.com/all/]\n";
        let m = MirrorFile::parse(text, "m.yaml").unwrap();
        assert_eq!(m[0].key(), "registry.example.com/team/*");
        assert_eq!(m[1].key(), "registry.example.com/*");
        assert!(m[0].selects_repository("team/app"));
        assert!(m[0].selects_repository("team/sub/app"));
        assert!(!m[0].selects_repository("team/tmp-1"), "excluded");
        assert!(!m[0].selects_repository("teamx/app"), "another namespace");
        assert!(!m[0].selects_repository("other/app"));
        assert!(m[1].selects_repository("anything/at/all"));
        let repo = m[0].for_repository("team/app").unwrap();
        let images = repo.expand(&["2.0".into()]).unwrap();
        assert_eq!(
            images[0].destinations[0].to_string(),
            "r.example.com/mirror/team/app:2.0"
        );
        let src: Reference = "registry.example.com/team/app:2.0".parse().unwrap();
        assert!(m[0].covers(&src, &images[0].destinations[0]));
        let tmp: Reference = "registry.example.com/team/tmp-1:2.0".parse().unwrap();
        let tmp_dest: Reference = "r.example.com/mirror/team/tmp-1:2.0".parse().unwrap();
        assert!(!m[0].covers(&tmp, &tmp_dest));
        assert_eq!(
            MirrorFile::parse(&MirrorFile::render(&m), "again").unwrap(),
            m
        );

        let err = Mirror::with_selection(
            "registry.example.com/team/*",
            &["r.example.com/one/repo".into()],
            TagRules::default(),
            None,
        )
        .unwrap_err();
        assert_eq!(
            err,
            "destination r.example.com/one/repo: a registry-wide row mirrors many repositories, so its destinations are prefixes ending in /"
        );
        let err = Mirror::with_selection(
            "team/*",
            &["r.example.com/m/".into()],
            TagRules::default(),
            None,
        )
        .unwrap_err();
        assert!(err.contains("name a registry host before /*"), "{err}");
        let err = Mirror::with_selection(
            "registry.example.com/team/app",
            &["r.example.com/m/".into()],
            TagRules::default(),
            Some(RepoRules::default()),
        )
        .unwrap_err();
        assert!(
            err.contains("`repositories` needs a registry-wide source"),
            "{err}"
        );
    }

    #[test]
    fn repository_rows_refuse_what_cannot_work() {
        let cases = [
            (
                "registry.example.com/team/app:1.0",
                vec!["r.example.com/m/"],
                "source: invalid image reference \"registry.example.com/team/app:1.0\": a row with a `tags` rule names a repository without a tag or digest; the rule picks the tags",
            ),
            (
                "registry.example.com/team/app",
                vec!["registry.example.com/team/app"],
                "destination registry.example.com/team/app is the source itself",
            ),
            (
                "registry.example.com/team/app",
                vec!["r.example.com/m/", "r.example.com/m/"],
                "destination r.example.com/m/ is listed twice",
            ),
            (
                "registry.example.com/team/app",
                vec!["r.example.com/m:1"],
                "destination 1: invalid image reference \"r.example.com/m:1\": a row with a `tags` rule names a repository without a tag or digest; the rule picks the tags",
            ),
            (
                "registry.example.com/team/app",
                vec![],
                "mirror registry.example.com/team/app has no destinations",
            ),
        ];
        for (source, dests, want) in cases {
            let dests: Vec<String> = dests.into_iter().map(String::from).collect();
            let err = Mirror::with_tags(source, &dests, TagRules::default()).unwrap_err();
            assert_eq!(err, want);
        }
        let bad = TagRules {
            latest: Some(0),
            ..Default::default()
        };
        let err =
            Mirror::with_tags("a.example.com/x", &["b.example.com/y".into()], bad).unwrap_err();
        assert_eq!(err, "tags.latest must be at least 1");
    }

    #[test]
    fn parses_yaml_with_both_destination_forms() {
        let text = "mirrors:\n  - source: golang:1.17\n    destinations:\n      - 127.0.0.1:5002/golang:1.17\n      - 127.0.0.1:5003/golang:1.17\n  - source: quay.io/a/b:1\n    destinations: 'r.example.com/b:1, s.example.com/b:1'\n    overwrite: false\n";
        let m = MirrorFile::parse(text, "m.yaml").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].source.to_string(), "docker.io/library/golang:1.17");
        assert_eq!(m[1].destinations.len(), 2);
        assert_eq!(m[1].overwrite, Some(false));
        let again = MirrorFile::parse(&MirrorFile::render(&m), "x").unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let text = "mirrors:\n  - source: golang:1.17\n    destinations: [a.example.com/g:1]\n    overwrte: false\n";
        let err = MirrorFile::parse(text, "m.yaml").unwrap_err().to_string();
        assert!(err.contains("overwrte") && err.contains("line 4"), "{err}");
    }

    #[test]
    fn invalid_rows_say_why() {
        let cases = [
            (
                "mirrors:\n  - source: Bad\n    destinations: [a.example.com/x:1]\n",
                "lowercase",
            ),
            (
                "mirrors:\n  - source: golang:1\n    destinations: []\n",
                "no destinations",
            ),
            (
                "mirrors:\n  - source: golang:1\n    destinations: ''\n",
                "no destinations",
            ),
            (
                "mirrors:\n  - source: golang:1\n    destinations: [golang:1]\n",
                "the source itself",
            ),
            (
                "mirrors:\n  - source: golang:1\n    destinations: [a.example.com/g:1, a.example.com/g:1]\n",
                "listed twice",
            ),
            (
                "mirrors:\n  - source: golang:1\n    destinations: [a.example.com/g:1]\n  - source: docker.io/library/golang:1\n    destinations: [b.example.com/g:1]\n",
                "listed twice",
            ),
            (
                "mirrors:\n  - source: golang:1\n    destinations: [a.example.com/G:1]\n",
                "destination",
            ),
            (
                "mirrors:\n  - destinations: [a.example.com/g:1]\n",
                "source",
            ),
            ("mirrors: {}\n", "mirrors"),
            (
                "mirrors:\n  - source: golang:1\n    destinations: 5\n",
                "`destinations` must be a list of image references or one comma-separated string",
            ),
            ("hello\n", "expected a mapping with a `mirrors:` list"),
        ];
        for (text, want) in cases {
            let err = MirrorFile::parse(text, "m.yaml").unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn csv_round_trip() {
        let m = parse_csv("source,destinations\n# comment\ngolang:1.17,a.example.com/g:1.17,b.example.com/g:1.17\n\n").unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].destinations.len(), 2);
        assert_eq!(parse_csv(&render_csv(&m).unwrap()).unwrap(), m);
        assert!(
            parse_csv("golang:1\n")
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
    }
}
