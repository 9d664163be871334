//! Version ranges (`>=1.2 <2`, `~1.4`, `^2`, alternatives with `||`),
//! matched against tags that read as versions.

use crate::control::select::SelectError;
use semver::{Comparator, Version, VersionReq};

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

pub(super) const OPERATOR: [char; 5] = ['<', '>', '=', '~', '^'];

pub(super) fn is_operator(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| OPERATOR.contains(&c))
}

pub(super) fn parse_alternative(text: &str) -> Result<VersionReq, String> {
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
pub(super) fn comparator(op: &str, token: &str) -> Result<Comparator, String> {
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
