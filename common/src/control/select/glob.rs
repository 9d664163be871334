//! Globs on tags and repository names: `*` within a path segment, `**`
//! across segments, `?` for one character.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Glob {
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

pub(super) fn glob_tokens(pattern: &str) -> Vec<Glob> {
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
pub(super) fn glob_matches(tokens: &[Glob], path: &[char]) -> bool {
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
