//! The `repositories` rules: which repositories of a registry a row takes.

use std::collections::HashSet;

use crate::control::select::SelectError;
use crate::control::select::glob::glob_matches;
use crate::control::select::glob::glob_tokens;
use crate::control::select::one_or_many;
use serde::{Deserialize, Serialize};

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
