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

mod glob;
mod repos;
mod tags;
#[cfg(test)]
mod tests;
mod versions;

pub use repos::RepoRules;
pub use tags::{CompiledTagRules, TagRules, tag_version};
pub use versions::VersionRange;

use std::fmt;

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
