//! Which images a many-image mirror row takes.
//!
//! A mirror row may name one image, or many: a repository without a tag plus
//! a `tags` rule, or a whole registry or namespace
//! (`registry.example.com/team/*`) plus a `repositories` rule. The controller
//! lists the tags (`/v2/<repo>/tags/list`) or the repositories
//! (`/v2/_catalog`) and asks this module which to mirror. It does no I/O, so
//! every decision can be tested from a listing alone.
//!
//! ```yaml
//! tags:
//!   include: ["^v?\\d+\\.\\d+\\.\\d+$"]  # regexes; a tag must match one (none = all)
//!   exclude: ["-rc", "-alpha"]          # regexes; a tag matching any is dropped
//!   semver: ">=1.20 <2"                 # a version range; other tags are dropped
//!   latest: 10                          # the newest 10
//! repositories:
//!   include: ["team/*", "base/**"]      # globs on the repository path (none = all)
//!   exclude: ["team/tmp-*"]
//! ```
//!
//! Tag rules apply in the order include, exclude, semver, latest: the first
//! three only filter, so only `latest` depends on the order, and it counts
//! what the others left. [`CompiledTagRules::apply`] returns the listing
//! order when neither `semver` nor `latest` is set, and newest first when
//! either is (semver tags by precedence, ties in listing order; then, with
//! `latest` only, the tags that are not semver, the last listed first,
//! since registries list older tags first).
//!
//! A tag is read as a version after dropping one leading `v`; docker's short
//! tags count as a full version (`1.20` is `1.20.0`, `1` is `1.0.0`), and
//! what follows a `-` is a pre-release, so `1.20-alpine` is `1.20.0-alpine`
//! and sorts below `1.20`. Ranges are written as npm and helm write them:
//! comparators separated by spaces or commas must all hold, `||` separates
//! alternatives, a bare version is exact (`1.2` means any `1.2.x`), and
//! `1.2 - 1.4` is inclusive. A pre-release tag only matches a range that
//! names a pre-release of the same `MAJOR.MINOR.PATCH`, as in npm, so
//! `>=1.20` never picks up `2.0.0-rc1`.
//!
//! Repository globs match the whole repository path as the catalog lists it
//! (no registry host): `*` is any run of characters within one path
//! component, `?` one character other than `/`, `**` any run including `/`,
//! and a `**/` component also matches no component at all (`a/**/b` takes
//! `a/b`). Exclude wins over include.
//!
//! Rules are checked once, when a row is read ([`TagRules::compile`],
//! [`RepoRules::validate`]), so a bad pattern is reported against its row
//! with the field and index the owner has to fix.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt;

use regex::Regex;
use semver::{Comparator, Version, VersionReq};
use serde::{Deserialize, Serialize};

/// A rule that cannot be used, in words naming the field to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("{field}[{index}]: invalid regular expression \"{pattern}\": {reason}")]
    Regex {
        field: &'static str,
        index: usize,
        pattern: String,
        reason: String,
    },
    #[error("tags.semver: invalid version range \"{range}\": {reason}")]
    Range { range: String, reason: String },
    #[error("tags.latest must be at least 1")]
    LatestZero,
    #[error("{field}[{index}]: invalid pattern \"{pattern}\": {reason}")]
    Glob {
        field: &'static str,
        index: usize,
        pattern: String,
        reason: String,
    },
}

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

fn compile_regexes(field: &'static str, patterns: &[String]) -> Result<Vec<Regex>, SelectError> {
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
fn regex_reason(e: &regex::Error) -> String {
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

    fn passes_patterns(&self, tag: &str) -> bool {
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
fn precedence(a: &Version, b: &Version) -> Ordering {
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

/// An npm-style version range: alternatives separated by `||`, each a list
/// of comparators that must all hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRange {
    alternatives: Vec<VersionReq>,
}

impl VersionRange {
    /// Reads `range`; the error names `tags.semver`, the one field ranges
    /// come from.
    pub fn parse(range: &str) -> Result<VersionRange, SelectError> {
        let invalid = |reason: String| SelectError::Range {
            range: range.to_string(),
            reason,
        };
        if range.trim().is_empty() {
            return Err(invalid("the range is empty".into()));
        }
        let alternatives = range
            .split("||")
            .map(parse_alternative)
            .collect::<Result<_, _>>()
            // A range of one comparator need not be quoted twice.
            .map_err(|reason: String| {
                let whole = format!("\"{}\": ", range.trim());
                invalid(
                    reason
                        .strip_prefix(&whole)
                        .map_or(reason.clone(), str::to_string),
                )
            })?;
        Ok(VersionRange { alternatives })
    }

    /// Whether any alternative holds, with npm's pre-release rule.
    pub fn matches(&self, version: &Version) -> bool {
        self.alternatives.iter().any(|req| req.matches(version))
    }
}

const OPERATOR: [char; 5] = ['<', '>', '=', '~', '^'];

fn is_operator(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| OPERATOR.contains(&c))
}

fn parse_alternative(text: &str) -> Result<VersionReq, String> {
    let spaced = text.replace(',', " ");
    let mut words = spaced.split_whitespace();
    let mut tokens = Vec::new();
    while let Some(word) = words.next() {
        // npm allows a space between an operator and its version (`>= 1.20`).
        if is_operator(word) {
            match words.next() {
                Some(v) if !v.starts_with(OPERATOR) && v != "-" => {
                    tokens.push(format!("{word}{v}"))
                }
                _ => return Err(format!("\"{word}\" is not followed by a version")),
            }
        } else {
            tokens.push(word.to_string());
        }
    }
    if tokens.is_empty() {
        return Err("an alternative around \"||\" is empty".into());
    }
    let mut comparators = Vec::new();
    let mut rest = tokens.iter().map(String::as_str).peekable();
    while let Some(token) = rest.next() {
        if token == "-" {
            return Err("\"-\" needs a version on each side (\"1.2 - 1.4\")".into());
        }
        if rest.peek() == Some(&"-") {
            rest.next();
            let upper = rest
                .next()
                .ok_or_else(|| format!("\"{token} -\" is not followed by a version"))?;
            for bound in [token, upper] {
                if bound.starts_with(OPERATOR) {
                    return Err(format!(
                        "\"{token} - {upper}\": both ends of a hyphen range are plain versions"
                    ));
                }
            }
            comparators.push(comparator(">=", token)?);
            comparators.push(comparator("<=", upper)?);
        } else if !matches!(token, "*" | "x" | "X") {
            // A lone wildcard allows every version: it adds no comparator.
            comparators.push(comparator("", token)?);
        }
    }
    Ok(VersionReq { comparators })
}

/// One comparator; `op` is given for the ends of a hyphen range, else read
/// from the token.
fn comparator(op: &str, token: &str) -> Result<Comparator, String> {
    let body = token.trim_start_matches(OPERATOR);
    let op = if op.is_empty() {
        &token[..token.len() - body.len()]
    } else {
        op
    };
    // The semver crate reads a bare version as a caret requirement, as Cargo
    // does; npm and helm read it as exact, which is what users of image tags
    // expect. `=1.2` still allows any 1.2.x.
    let op = if op.is_empty() { "=" } else { op };
    let body = body.strip_prefix('v').unwrap_or(body);
    format!("{op}{body}")
        .parse::<Comparator>()
        .map_err(|e| format!("\"{token}\": {e}"))
}

/// Which repositories of a registry or namespace to mirror, as the user
/// wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepoRules {
    /// Globs; a repository must match at least one. Empty takes all.
    #[serde(
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub include: Vec<String>,
    /// Globs; a repository matching any of them is dropped.
    #[serde(
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub exclude: Vec<String>,
}

impl RepoRules {
    /// No rule at all: every repository is taken.
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// Refuses patterns that can never match a repository path, which are
    /// always a mistake (usually a registry host or a stray slash).
    pub fn validate(&self) -> Result<(), SelectError> {
        let fields = [
            ("repositories.include", &self.include),
            ("repositories.exclude", &self.exclude),
        ];
        for (field, patterns) in fields {
            for (index, pattern) in patterns.iter().enumerate() {
                let reason = if pattern.is_empty() {
                    "a pattern cannot be empty"
                } else if pattern.starts_with('/') {
                    "a repository path does not start with '/'"
                } else if pattern.ends_with('/') {
                    "a repository path does not end with '/' (\"team/**\" takes everything under team/)"
                } else {
                    continue;
                };
                return Err(SelectError::Glob {
                    field,
                    index,
                    pattern: pattern.clone(),
                    reason: reason.into(),
                });
            }
        }
        Ok(())
    }

    /// Whether `repo` (a path as `/v2/_catalog` lists it, such as
    /// `team/app`) matches an include pattern, or there are none, and no
    /// exclude pattern. Call [`Self::validate`] first: a pattern it refuses
    /// matches nothing here.
    pub fn matches(&self, repo: &str) -> bool {
        let path: Vec<char> = repo.chars().collect();
        let hit = |p: &String| glob_matches(&glob_tokens(p), &path);
        (self.include.is_empty() || self.include.iter().any(hit)) && !self.exclude.iter().any(hit)
    }

    /// The repositories to mirror out of a listing, in listing order; one
    /// listed twice counts once.
    pub fn filter<S: AsRef<str>>(&self, repos: &[S]) -> Vec<String> {
        let mut seen = HashSet::new();
        repos
            .iter()
            .map(AsRef::as_ref)
            .filter(|r| seen.insert(*r) && self.matches(r))
            .map(str::to_string)
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Glob {
    Char(char),
    /// `?`
    One,
    /// `*`
    Star,
    /// `**` not forming a whole component
    DeepStar,
    /// `**/` as a whole component: zero or more components.
    DeepDirs,
}

fn glob_tokens(pattern: &str) -> Vec<Glob> {
    let mut tokens = Vec::new();
    let mut chars = pattern.chars().peekable();
    let mut prev = None;
    while let Some(c) = chars.next() {
        let token = match c {
            '?' => Glob::One,
            '*' => {
                let mut stars = 1;
                while chars.next_if_eq(&'*').is_some() {
                    stars += 1;
                }
                let component_start = matches!(prev, None | Some('/'));
                if stars == 1 {
                    Glob::Star
                } else if component_start && chars.next_if_eq(&'/').is_some() {
                    Glob::DeepDirs
                } else {
                    Glob::DeepStar
                }
            }
            c => Glob::Char(c),
        };
        // After `**/` the next token starts a component, as after a `/`.
        prev = match token {
            Glob::DeepDirs => Some('/'),
            _ => Some(c),
        };
        tokens.push(token);
    }
    tokens
}

/// Dynamic programming from the last token back, so `*` and `**` cost
/// O(tokens × length) rather than backtracking.
fn glob_matches(tokens: &[Glob], path: &[char]) -> bool {
    let n = path.len();
    // after[j]: the tokens after the current one match path[j..].
    let mut after = vec![false; n + 1];
    after[n] = true;
    for token in tokens.iter().rev() {
        let mut here = vec![false; n + 1];
        // For `**/`: some `/` at or after j has `after` true just past it.
        let mut slash_ahead = false;
        for j in (0..=n).rev() {
            let c = path.get(j).copied();
            here[j] = match token {
                Glob::Char(x) => c == Some(*x) && after[j + 1],
                Glob::One => c.is_some_and(|c| c != '/') && after[j + 1],
                Glob::Star => after[j] || (c.is_some_and(|c| c != '/') && here[j + 1]),
                Glob::DeepStar => after[j] || (c.is_some() && here[j + 1]),
                Glob::DeepDirs => {
                    slash_ahead |= c == Some('/') && after[j + 1];
                    after[j] || slash_ahead
                }
            };
        }
        after = here;
    }
    after[0]
}

/// A list of patterns, or one pattern alone (`include: "^v"`), since a
/// hand-edited row often has just one.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Patterns;
    impl<'de> serde::de::Visitor<'de> for Patterns {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a pattern or a list of patterns")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(p) = seq.next_element::<String>()? {
                out.push(p);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Patterns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(
        include: &[&str],
        exclude: &[&str],
        semver: Option<&str>,
        latest: Option<usize>,
    ) -> TagRules {
        TagRules {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            semver: semver.map(str::to_string),
            latest,
        }
    }

    #[test]
    fn tag_rules_pick_and_order() {
        // (what, include, exclude, semver, latest, listing, expected)
        type Case<'a> = (
            &'a str,
            &'a [&'a str],
            &'a [&'a str],
            Option<&'a str>,
            Option<usize>,
            &'a [&'a str],
            &'a [&'a str],
        );
        let cases: &[Case<'_>] = &[
            (
                "no rule takes everything in listing order",
                &[],
                &[],
                None,
                None,
                &["b", "1.0", "a"],
                &["b", "1.0", "a"],
            ),
            (
                "include is unanchored",
                &["1\\.2"],
                &[],
                None,
                None,
                &["v1.2.3", "11.2", "1.3", "x1.2y"],
                &["v1.2.3", "11.2", "x1.2y"],
            ),
            (
                "an anchored include takes only the exact tag",
                &["^latest$"],
                &[],
                None,
                None,
                &["latest", "latest-dev", "not-latest"],
                &["latest"],
            ),
            (
                "a tag matching any include is taken",
                &["^v?\\d+\\.\\d+\\.\\d+$", "^latest$"],
                &[],
                None,
                None,
                &["1.2.3", "latest", "v2.0.0", "1.2", "edge"],
                &["1.2.3", "latest", "v2.0.0"],
            ),
            (
                "exclude drops matches anywhere in the tag",
                &[],
                &["-rc", "-alpha"],
                None,
                None,
                &["1.0", "1.1-rc1", "1.1-alpha.2", "1.1"],
                &["1.0", "1.1"],
            ),
            (
                "exclude wins over include",
                &["^1\\."],
                &["-rc"],
                None,
                None,
                &["1.0", "1.0-rc1", "2.0"],
                &["1.0"],
            ),
            (
                "space-separated comparators all hold; newest first; non-semver dropped",
                &[],
                &[],
                Some(">=1.20 <2"),
                None,
                &["1.19.9", "1.20", "latest", "1.20.3", "2.0.0", "1.21.0", "2"],
                &["1.21.0", "1.20.3", "1.20"],
            ),
            (
                "comma-separated comparators all hold",
                &[],
                &[],
                Some(">=1.20, <2"),
                None,
                &["1.19.9", "1.20.1", "2.0.0"],
                &["1.20.1"],
            ),
            (
                "|| separates alternatives",
                &[],
                &[],
                Some("<1 || >=3.1"),
                None,
                &["0.9.0", "1.0.0", "2.5.0", "3.0.0", "3.1.0", "4.0.0"],
                &["4.0.0", "3.1.0", "0.9.0"],
            ),
            (
                "a leading v is dropped from tags and ranges",
                &[],
                &[],
                Some(">=v1.2"),
                None,
                &["v1.1.9", "v1.2.0", "v1.10.0", "vv1.3.0"],
                &["v1.10.0", "v1.2.0"],
            ),
            (
                "short tags are full versions; a bare partial version means any patch",
                &[],
                &[],
                Some("1.20"),
                None,
                &["1", "1.20", "1.20.7", "1.21", "1.2"],
                &["1.20.7", "1.20"],
            ),
            (
                "a bare full version is exact, not a caret",
                &[],
                &[],
                Some("1.2.3"),
                None,
                &["1.2.3", "1.2.4", "1.3.0", "v1.2.3"],
                &["1.2.3", "v1.2.3"],
            ),
            (
                "pre-releases stay out of a range that names none",
                &[],
                &[],
                Some(">=1.0"),
                None,
                &["1.0.0", "2.0.0-rc1", "1.5-alpine", "1.5"],
                &["1.5", "1.0.0"],
            ),
            (
                "a range naming a pre-release takes pre-releases of that version only",
                &[],
                &[],
                Some(">=2.0.0-rc.0"),
                None,
                &["2.0.0-rc.1", "2.0.0-beta", "2.1.0-rc.1", "2.0.0", "2.1.0"],
                &["2.1.0", "2.0.0", "2.0.0-rc.1"],
            ),
            (
                "a hyphen range is inclusive, partial upper bound included",
                &[],
                &[],
                Some("1.2 - 1.4"),
                None,
                &["1.1.9", "1.2.0", "1.4.9", "1.5.0"],
                &["1.4.9", "1.2.0"],
            ),
            (
                "a space after an operator is allowed",
                &[],
                &[],
                Some(">= 1.2 < 2"),
                None,
                &["1.1", "1.2", "2.0"],
                &["1.2"],
            ),
            (
                "tilde and caret",
                &[],
                &[],
                Some("~1.2 || ^3.1"),
                None,
                &["1.2.9", "1.3.0", "3.1.0", "3.9.0", "4.0.0"],
                &["3.9.0", "3.1.0", "1.2.9"],
            ),
            (
                "wildcards",
                &[],
                &[],
                Some("1.x || *"),
                None,
                &["1.0.0", "5.0.0", "5.0.0-rc1", "nightly"],
                &["5.0.0", "1.0.0"],
            ),
            (
                "latest: semver tags newest first, then other tags last listed first",
                &[],
                &[],
                None,
                Some(10),
                &["latest", "1.0", "edge", "2.0", "stable", "1.5"],
                &["2.0", "1.5", "1.0", "stable", "edge", "latest"],
            ),
            (
                "latest N cuts after the semver tags",
                &[],
                &[],
                None,
                Some(4),
                &["latest", "1.0", "edge", "2.0", "stable", "1.5"],
                &["2.0", "1.5", "1.0", "stable"],
            ),
            (
                "equal versions keep listing order",
                &[],
                &[],
                None,
                Some(4),
                &["1.2.0", "1.2", "v1.2.0", "1.1", "v1.2"],
                &["1.2.0", "1.2", "v1.2.0", "v1.2"],
            ),
            (
                "pre-releases sort below their release",
                &[],
                &[],
                None,
                Some(3),
                &["1.2.4-rc1", "1.2.3", "1.2.3-rc1", "1.2.2"],
                &["1.2.4-rc1", "1.2.3", "1.2.3-rc1"],
            ),
            (
                "latest with only non-semver tags: last listed first",
                &[],
                &[],
                None,
                Some(2),
                &["a", "b", "c"],
                &["c", "b"],
            ),
            (
                "latest counts what include, exclude and semver left",
                &["^v?1\\."],
                &["-rc"],
                Some("<1.9"),
                Some(2),
                &["1.0", "1.5", "1.8", "1.8.1-rc1", "1.9", "2.0", "1.7"],
                &["1.8", "1.7"],
            ),
            (
                "a tag listed twice counts once",
                &[],
                &[],
                None,
                Some(2),
                &["1.0", "2.0", "2.0", "1.0"],
                &["2.0", "1.0"],
            ),
            (
                "semver drops tags with leading zeros or four numbers",
                &[],
                &[],
                Some(">=1"),
                None,
                &["01.2.3", "1.2.3.4", "2024.01.15", "1.2.3"],
                &["1.2.3"],
            ),
        ];
        for (what, include, exclude, semver, latest, listing, expected) in cases {
            let compiled = rules(include, exclude, *semver, *latest)
                .compile()
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(compiled.apply(listing), *expected, "{what}");
        }
    }

    #[test]
    fn matches_leaves_latest_out() {
        let compiled = rules(&[], &["-rc"], Some(">=2"), Some(1))
            .compile()
            .unwrap();
        assert!(compiled.matches("v2.1"));
        assert!(compiled.matches("3.0.0"));
        assert!(!compiled.matches("2.1-rc1"));
        assert!(!compiled.matches("1.9"));
        assert!(!compiled.matches("latest"));
        assert!(TagRules::default().is_empty());
        assert!(TagRules::default().compile().unwrap().matches("anything"));
    }

    #[test]
    fn tag_versions() {
        let cases = [
            ("1.2.3", Some("1.2.3")),
            ("v1.2.3", Some("1.2.3")),
            ("1.20", Some("1.20.0")),
            ("1", Some("1.0.0")),
            ("v1.20-alpine", Some("1.20.0-alpine")),
            ("1.2.3-rc.1", Some("1.2.3-rc.1")),
            ("01.2", None),
            ("1.2.3.4", None),
            ("1..2", None),
            ("v", None),
            ("V1.2", None),
            ("latest", None),
            ("1.2-", None),
        ];
        for (tag, want) in cases {
            let got = tag_version(tag).map(|v| v.to_string());
            assert_eq!(got.as_deref(), want, "{tag}");
        }
    }

    #[test]
    fn invalid_rules_name_the_field() {
        let cases = [
            (
                rules(&["^v", "("], &[], None, None),
                "tags.include[1]: invalid regular expression \"(\": unclosed group",
            ),
            (
                rules(&[], &["[a"], None, None),
                "tags.exclude[0]: invalid regular expression \"[a\": unclosed character class",
            ),
            (
                rules(&[], &[], Some(">=x"), None),
                "tags.semver: invalid version range \">=x\": unexpected character 'x' while parsing major version number",
            ),
            (
                rules(&[], &[], Some(" "), None),
                "tags.semver: invalid version range \" \": the range is empty",
            ),
            (
                rules(&[], &[], Some(">=1 ||"), None),
                "tags.semver: invalid version range \">=1 ||\": an alternative around \"||\" is empty",
            ),
            (
                rules(&[], &[], Some(">= <2"), None),
                "tags.semver: invalid version range \">= <2\": \">=\" is not followed by a version",
            ),
            (
                rules(&[], &[], Some("1.2 -"), None),
                "tags.semver: invalid version range \"1.2 -\": \"1.2 -\" is not followed by a version",
            ),
            (
                rules(&[], &[], Some(">=1 - 2"), None),
                "tags.semver: invalid version range \">=1 - 2\": both ends of a hyphen range are plain versions",
            ),
            (
                rules(&[], &[], Some("latest"), None),
                "tags.semver: invalid version range \"latest\": unexpected character 'l' while parsing major version number",
            ),
            (
                rules(&[], &[], None, Some(0)),
                "tags.latest must be at least 1",
            ),
        ];
        for (rules, want) in cases {
            let err = rules.compile().map(|_| ()).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
    }

    fn repo_rules(include: &[&str], exclude: &[&str]) -> RepoRules {
        RepoRules {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn repository_globs() {
        // (include, exclude, repositories taken, repositories left)
        type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], &'a [&'a str]);
        let cases: &[Case<'_>] = &[
            (&[], &[], &["a", "team/app", "x/y/z"], &[]),
            (
                &["team/*"],
                &[],
                &["team/app", "team/a.b"],
                &["team", "team/a/b", "teams/app", "x/team/app"],
            ),
            (&["*"], &[], &["app", "my-app"], &["team/app"]),
            (
                &["base/**"],
                &[],
                &["base/a", "base/a/b", "base/a/b/c"],
                &["base", "basement/a", "x/base/a"],
            ),
            (&["**"], &[], &["a", "a/b/c"], &[]),
            (
                &["**/app"],
                &[],
                &["app", "x/app", "x/y/app"],
                &["myapp", "x/myapp", "app/x"],
            ),
            (
                &["a/**/b"],
                &[],
                &["a/b", "a/x/b", "a/x/y/b"],
                &["a/xb", "ab", "a/b/c"],
            ),
            (
                &["team/*/api"],
                &[],
                &["team/x/api"],
                &["team/api", "team/x/y/api"],
            ),
            (
                &["*-svc"],
                &[],
                &["pay-svc", "-svc"],
                &["team/pay-svc", "pay-svc2"],
            ),
            (&["app-?"], &[], &["app-1", "app-x"], &["app-", "app-12"]),
            (&["a?b"], &[], &["axb"], &["a/b", "ab"]),
            (&["lib.x/*"], &[], &["lib.x/a"], &["libzx/a", "lib.xx/a"]),
            (
                &["team/*", "base/**"],
                &["team/tmp-*"],
                &["team/app", "base/tmp-1/x"],
                &["team/tmp-1", "other/app"],
            ),
            (
                &[],
                &["**/cache"],
                &["app", "team/app"],
                &["cache", "team/cache"],
            ),
            (&["team/*"], &["team/*"], &[], &["team/app"]),
        ];
        for (include, exclude, taken, left) in cases {
            let r = repo_rules(include, exclude);
            r.validate().unwrap();
            for repo in *taken {
                assert!(
                    r.matches(repo),
                    "{include:?} - {exclude:?} should take {repo}"
                );
            }
            for repo in *left {
                assert!(
                    !r.matches(repo),
                    "{include:?} - {exclude:?} should leave {repo}"
                );
            }
        }
    }

    #[test]
    fn repository_filter_keeps_listing_order() {
        let r = repo_rules(&["team/*"], &["team/tmp-*"]);
        let got = r.filter(&["team/b", "team/tmp-1", "other/a", "team/a", "team/b"]);
        assert_eq!(got, ["team/b", "team/a"]);
    }

    #[test]
    fn invalid_repository_patterns() {
        let cases = [
            (
                repo_rules(&[""], &[]),
                "repositories.include[0]: invalid pattern \"\": a pattern cannot be empty",
            ),
            (
                repo_rules(&["team/*"], &["/team/tmp-*"]),
                "repositories.exclude[0]: invalid pattern \"/team/tmp-*\": a repository path does not start with '/'",
            ),
            (
                repo_rules(&["a", "team/"], &[]),
                "repositories.include[1]: invalid pattern \"team/\": a repository path does not end with '/' (\"team/**\" takes everything under team/)",
            ),
        ];
        for (rules, want) in cases {
            assert_eq!(rules.validate().unwrap_err().to_string(), want);
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Row {
        #[serde(default)]
        tags: TagRules,
        #[serde(default)]
        repositories: RepoRules,
    }

    #[test]
    fn parses_the_documented_yaml() {
        let yaml = r#"
tags:
  include: ["^v?\\d+\\.\\d+\\.\\d+$", "^latest$"]
  exclude: ["-rc", "-alpha"]
  semver: ">=1.20 <2"
  latest: 10
repositories:
  include: ["team/*", "base/**"]
  exclude: ["team/tmp-*"]
"#;
        let row: Row = serde_norway::from_str(yaml).unwrap();
        assert_eq!(
            row.tags,
            rules(
                &["^v?\\d+\\.\\d+\\.\\d+$", "^latest$"],
                &["-rc", "-alpha"],
                Some(">=1.20 <2"),
                Some(10)
            )
        );
        assert_eq!(
            row.repositories,
            repo_rules(&["team/*", "base/**"], &["team/tmp-*"])
        );
        let tags = row.tags.compile().unwrap();
        let got = tags.apply(&[
            "latest",
            "v1.19.0",
            "1.20.0",
            "v1.21.1",
            "1.21.2-rc1",
            "1.22",
            "2.0.0",
        ]);
        assert_eq!(got, ["v1.21.1", "1.20.0"]);
        row.repositories.validate().unwrap();
        assert!(row.repositories.matches("base/x/y"));
    }

    #[test]
    fn parses_one_pattern_and_absent_rules() {
        let row: Row = serde_norway::from_str("tags:\n  include: '^v'\n  exclude:\n").unwrap();
        assert_eq!(row.tags, rules(&["^v"], &[], None, None));
        assert!(row.repositories.is_empty());
        // Unquoted, YAML would read 1.20 as the float 1.2; the text is kept.
        let row: Row = serde_norway::from_str("tags:\n  semver: 1.20\n").unwrap();
        assert_eq!(row.tags.semver.as_deref(), Some("1.20"));
        let empty: TagRules = serde_norway::from_str("{}").unwrap();
        assert!(empty.is_empty());
        assert_eq!(serde_norway::to_string(&empty).unwrap().trim(), "{}");
    }

    #[test]
    fn refuses_unknown_keys_and_bad_types() {
        let cases = [
            ("tags:\n  latests: 3\n", "unknown field `latests`"),
            (
                "repositories:\n  includes: [a]\n",
                "unknown field `includes`",
            ),
            ("tags:\n  latest: -1\n", "invalid type: integer `-1`"),
            (
                "tags:\n  include: 5\n",
                "expected a pattern or a list of patterns",
            ),
        ];
        for (yaml, want) in cases {
            let err = serde_norway::from_str::<Row>(yaml).unwrap_err().to_string();
            assert!(err.contains(want), "{yaml:?}: {err}");
        }
    }
}
