//! The mirror file of local mode (`mirrors.yaml`): rows as YAML, in the
//! short form people write by hand.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::control::select::{RepoRules, TagRules};
use crate::control::table::Mirror;
use crate::control::table::Parsed;
use crate::control::table::Platforms;
use crate::control::table::TableError;

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

impl FileRow {
    /// The mirror this row asks for, or why it cannot be one (with the
    /// source as the report should name it).
    fn to_mirror(&self) -> Result<Mirror, (String, String)> {
        let dests = self.destinations.to_vec();
        let made = if self.tags.is_some()
            || self.repositories.is_some()
            || self.source.trim().ends_with("/*")
        {
            Mirror::with_selection(
                &self.source,
                &dests,
                self.tags.clone().unwrap_or_default(),
                self.repositories.clone(),
            )
        } else {
            Mirror::new(&self.source, &dests)
        };
        let mut m = made.map_err(|e| (shortened(&self.source), e))?;
        m.enabled = self.enabled.unwrap_or(true);
        m.overwrite = self.overwrite;
        m.expires = self.expires;
        let platforms = match &self.platforms {
            None => Vec::new(),
            Some(Platforms::List(v)) => v.clone(),
            Some(Platforms::One(one)) => vec![one.clone()],
        };
        m.set_platforms(&platforms)
            .and_then(|()| m.set_strip(self.strip.as_deref()))
            .map_err(|e| (m.key(), e))?;
        Ok(m)
    }
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
    /// Parse YAML, all or nothing: the first invalid row is an error naming
    /// its position and source.
    pub fn parse(text: &str, path: &str) -> Result<Vec<Mirror>, TableError> {
        Self::parse_rows(text, path)?.strict(path)
    }

    /// Parse YAML row by row. A document that is not a mirror file (bad
    /// syntax, an unknown key, a wrong type) is an error; a row that is
    /// well-formed but wrong (a bad reference, a source listed twice) is
    /// refused on its own, naming its position and source.
    pub fn parse_rows(text: &str, path: &str) -> Result<Parsed, TableError> {
        let file: MirrorFile = serde_norway::from_str(text).map_err(|e| TableError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        let mut parsed = Parsed::default();
        let mut seen: HashSet<String> = HashSet::with_capacity(file.mirrors.len());
        for (i, row) in file.mirrors.iter().enumerate() {
            let n = i + 1;
            match row.to_mirror() {
                Ok(m) if !seen.insert(m.key()) => parsed.refuse(
                    n,
                    format!("mirror {n} ({})", m.source),
                    "the source is listed twice",
                ),
                Ok(m) => parsed.take(n, format!("mirror {n} ({})", m.key()), m),
                Err((at, e)) => parsed.refuse(n, format!("mirror {n} ({at})"), e),
            }
        }
        Ok(parsed)
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
pub(super) fn shortened(s: &str) -> String {
    if s.chars().count() <= 200 {
        return s.to_string();
    }
    let head: String = s.chars().take(60).collect();
    format!("{head}… ({} characters)", s.chars().count())
}
