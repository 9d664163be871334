//! The `tags` rules: which tags of a repository a row takes (globs,
//! regexes, version ranges, the newest N), and in which order.

use std::cmp::Ordering;
use std::collections::HashSet;

use crate::control::select::SelectError;
use crate::control::select::VersionRange;
use crate::control::select::one_or_many;
use regex::Regex;
use semver::Version;
use serde::{Deserialize, Serialize};

/// Which tags of a repository to mirror, as the user wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TagRules {
    /// Regexes; a tag must match at least one. Empty takes every tag.
    #[serde(
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub include: Vec<String>,
    /// Regexes; a tag matching any of them is dropped.
    #[serde(
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub exclude: Vec<String>,
    /// A version range; tags that are not versions are dropped when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    /// Keep only the newest this many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest: Option<usize>,
}

impl TagRules {
    /// No rule at all: every tag is taken, in listing order.
    pub fn is_empty(&self) -> bool {
        self.include.is_empty()
            && self.exclude.is_empty()
            && self.semver.is_none()
            && self.latest.is_none()
    }

    /// Checks every rule and compiles the regexes and range, once per row
    /// rather than once per tag.
    pub fn compile(&self) -> Result<CompiledTagRules, SelectError> {
        let include = compile_regexes("tags.include", &self.include)?;
        let exclude = compile_regexes("tags.exclude", &self.exclude)?;
        let range = self
            .semver
            .as_deref()
            .map(VersionRange::parse)
            .transpose()?;
        if self.latest == Some(0) {
            return Err(SelectError::LatestZero);
        }
        Ok(CompiledTagRules {
            include,
            exclude,
            range,
            latest: self.latest,
        })
    }
}

pub(super) fn compile_regexes(
    field: &'static str,
    patterns: &[String],
) -> Result<Vec<Regex>, SelectError> {
    patterns
        .iter()
        .enumerate()
        .map(|(index, pattern)| {
            Regex::new(pattern).map_err(|e| SelectError::Regex {
                field,
                index,
                pattern: pattern.clone(),
                reason: regex_reason(&e),
            })
        })
        .collect()
}

/// The regex crate's syntax errors draw the pattern with a caret under the
/// fault over several lines; a row's status holds one line, so keep the
/// `error:` line.
pub(super) fn regex_reason(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(text) => text
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("error:"))
            .map(|l| l.trim().to_string())
            .unwrap_or_else(|| text.lines().map(str::trim).collect::<Vec<_>>().join(" ")),
        regex::Error::CompiledTooBig(limit) => {
            format!("it compiles to more than {limit} bytes; simplify it")
        }
        other => other.to_string(),
    }
}

/// [`TagRules`] ready to apply.
#[derive(Debug, Clone)]
pub struct CompiledTagRules {
    include: Vec<Regex>,
    exclude: Vec<Regex>,
    range: Option<VersionRange>,
    latest: Option<usize>,
}

impl CompiledTagRules {
    /// Whether `tag` passes include, exclude and semver. `latest` is left
    /// out: it depends on the whole listing, see [`Self::apply`].
    pub fn matches(&self, tag: &str) -> bool {
        self.passes_patterns(tag)
            && match &self.range {
                None => true,
                Some(range) => tag_version(tag).is_some_and(|v| range.matches(&v)),
            }
    }

    pub(super) fn passes_patterns(&self, tag: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|r| r.is_match(tag)))
            && !self.exclude.iter().any(|r| r.is_match(tag))
    }

    /// The tags to mirror out of a listing, in the registry's order (older
    /// first). A tag listed twice counts once.
    ///
    /// Without `semver` and `latest` the result is in listing order;
    /// with either, newest first: semver tags by descending precedence
    /// (ties, such as `1.2` and `1.2.0`, in listing order), then, with
    /// `latest` alone, the other tags last listed first. `latest` then
    /// keeps the first N.
    pub fn apply<S: AsRef<str>>(&self, tags: &[S]) -> Vec<String> {
        let mut seen = HashSet::new();
        let listed = tags
            .iter()
            .map(AsRef::as_ref)
            .filter(|t| seen.insert(*t))
            .filter(|t| self.passes_patterns(t));
        if self.range.is_none() && self.latest.is_none() {
            return listed.map(str::to_string).collect();
        }
        let mut ranked: Vec<(usize, &str, Option<Version>)> = listed
            .map(|t| (t, tag_version(t)))
            .filter(|(_, v)| match (&self.range, v) {
                (None, _) => true,
                (Some(range), Some(v)) => range.matches(v),
                (Some(_), None) => false,
            })
            .enumerate()
            .map(|(i, (t, v))| (i, t, v))
            .collect();
        ranked.sort_by(|a, b| match (&a.2, &b.2) {
            (Some(x), Some(y)) => precedence(y, x).then(a.0.cmp(&b.0)),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => b.0.cmp(&a.0),
        });
        ranked
            .into_iter()
            .take(self.latest.unwrap_or(usize::MAX))
            .map(|(_, t, _)| t.to_string())
            .collect()
    }
}

/// Semver precedence, which ignores build metadata (`Version`'s own `Ord`
/// does not).
pub(super) fn precedence(a: &Version, b: &Version) -> Ordering {
    (a.major, a.minor, a.patch)
        .cmp(&(b.major, b.minor, b.patch))
        .then_with(|| a.pre.cmp(&b.pre))
}

/// The version a tag stands for, if it is one: one leading `v` is dropped
/// and a missing minor or patch counts as 0 (`v1.20-alpine` is
/// `1.20.0-alpine`). Numbers with leading zeros are not versions.
pub fn tag_version(tag: &str) -> Option<Version> {
    let text = tag.strip_prefix('v').unwrap_or(tag);
    let (core, rest) = text.split_at(text.find(['-', '+']).unwrap_or(text.len()));
    let numeric = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !core.split('.').all(numeric) {
        return None;
    }
    let full = match core.split('.').count() {
        1 => format!("{core}.0.0{rest}"),
        2 => format!("{core}.0{rest}"),
        3 => text.to_string(),
        _ => return None,
    };
    Version::parse(&full).ok()
}
