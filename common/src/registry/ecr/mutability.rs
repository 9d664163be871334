//! Tag mutability as ECR reports it, exclusion filters included.

/// A repository's tag mutability, with ECR's exclusion filters (July 2025):
/// `IMMUTABLE_WITH_EXCLUSION` keeps tags matching a filter mutable,
/// `MUTABLE_WITH_EXCLUSION` makes them immutable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TagMutability {
    pub immutable: bool,
    /// Wildcard filters (`*` stands for any run of characters).
    pub exclusions: Vec<String>,
}

impl TagMutability {
    /// From ECR's mutability name and filters; an unknown name is mutable.
    pub fn from_ecr(mutability: &str, exclusions: Vec<String>) -> TagMutability {
        match mutability {
            "IMMUTABLE" => TagMutability {
                immutable: true,
                exclusions: Vec::new(),
            },
            "IMMUTABLE_WITH_EXCLUSION" => TagMutability {
                immutable: true,
                exclusions,
            },
            "MUTABLE_WITH_EXCLUSION" => TagMutability {
                immutable: false,
                exclusions,
            },
            _ => TagMutability::default(),
        }
    }

    /// Whether a tag, once pushed, may never point elsewhere (ECR refuses
    /// any push to it, even of the same digest).
    pub fn is_immutable(&self, tag: &str) -> bool {
        self.immutable != self.exclusions.iter().any(|f| wildcard_matches(f, tag))
    }
}

/// `*` matches any run of characters (none included); all else literally.
pub fn wildcard_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let middle: Vec<&str> = parts.collect();
    let Some((last, inner)) = middle.split_last() else {
        return rest.is_empty();
    };
    for p in inner {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}
