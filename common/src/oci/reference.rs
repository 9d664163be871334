//! Image references, normalised the way the Docker and OCI tools do.
//!
//! `golang:1.17` means `docker.io/library/golang:1.17`; a first path component
//! is a registry host only when it contains a `.` or a `:`, is `localhost`, or
//! is a bracketed IPv6 address. A reference without a tag or digest means
//! `:latest`. Every part of mirrorfleet compares references in this one form.

use std::fmt;
use std::str::FromStr;

use crate::oci::digest::Digest;

/// Docker Hub's canonical name; its API is served from `registry-1.docker.io`.
pub const DOCKER_HUB: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;
/// Name, tag and a sha512 digest together stay well under this.
const MAX_REFERENCE_LEN: usize = 1024;

/// A fully normalised image reference: registry, repository, and a tag and/or digest.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {}: {reason}", quoted(.input))]
pub struct ReferenceError {
    pub input: String,
    pub reason: String,
}

/// The input, quoted; a very long one is cut short (with its length), so an
/// error about a megabyte of garbage is still one readable line.
fn quoted(input: &str) -> String {
    const SHOWN: usize = 200;
    let len = input.chars().count();
    if len <= SHOWN {
        return format!("{input:?}");
    }
    let head: String = input.chars().take(60).collect();
    format!("{:?} ({len} characters)", format!("{head}…"))
}

impl Reference {
    /// Registry host as written by users, with port if any (`docker.io`, `[::1]:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What goes into `/v2/<name>/manifests/<here>`: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The same repository at another digest (used for child manifests).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            tag: None,
            ..self.clone()
        }
    }

    /// The same repository at another tag.
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        validate_tag(tag).map_err(|reason| ReferenceError {
            input: tag.to_string(),
            reason,
        })?;
        Ok(Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        })
    }

    /// A repository named without tag or digest (`registry.example.com/team/app`),
    /// for rows whose tags are picked by a rule.
    pub fn parse_repository(s: &str) -> Result<Reference, ReferenceError> {
        let r: Reference = s.parse()?;
        let last = s.trim().rsplit('/').next().unwrap_or_default();
        if r.digest.is_some() || last.contains(':') {
            return Err(ReferenceError {
                input: s.to_string(),
                reason: "a row with a `tags` rule names a repository without a tag or digest; \
                         the rule picks the tags"
                    .into(),
            });
        }
        Ok(Reference { tag: None, ..r })
    }

    /// A registry, or a namespace in it, whose repositories a row selects:
    /// `registry.example.com/team/*` or `registry.example.com/*`. The result
    /// has the namespace as its repository path (empty for a whole registry).
    pub fn parse_namespace(s: &str) -> Result<Reference, ReferenceError> {
        let err = |reason: &str| ReferenceError {
            input: s.to_string(),
            reason: reason.into(),
        };
        let stem = s
            .trim()
            .strip_suffix("/*")
            .ok_or_else(|| err("a registry-wide row ends in /*"))?;
        if stem.contains('/') {
            let r = Reference::parse_repository(stem)?;
            return Ok(Reference { tag: None, ..r });
        }
        // A bare host: it must look like one (a dot, a port or localhost),
        // as a first path component must for the registry to be named.
        if !(stem.contains('.') || stem.contains(':') || stem == "localhost") {
            return Err(err(
                "name a registry host before /* (registry.example.com/*, or a namespace: registry.example.com/team/*)",
            ));
        }
        let probe = Reference::parse_repository(&format!("{stem}/x"))?;
        Ok(Reference {
            repository: String::new(),
            tag: None,
            ..probe
        })
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// True when both name the same manifest slot (same registry, repository and tag/digest).
    pub fn same_location(&self, other: &Reference) -> bool {
        self.registry == other.registry
            && self.repository == other.repository
            && self.manifest_ref() == other.manifest_ref()
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        parse(input).map_err(|reason| ReferenceError {
            input: input.to_string(),
            reason,
        })
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn parse(input: &str) -> Result<Reference, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if s != input {
        return Err("it has leading or trailing whitespace".into());
    }
    if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("it contains the character {c:?}"));
    }
    if s.len() > MAX_REFERENCE_LEN {
        return Err(format!(
            "it is far too long (a repository name is at most {MAX_NAME_LEN} characters)"
        ));
    }
    if s.contains("://") {
        return Err("write the reference without a scheme (no http:// or https://)".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-/:@[]".contains(*c)))
    {
        return Err(format!(
            "it contains the character {c:?}, which is not allowed in an image reference"
        ));
    }
    // "[::1]" is an IPv6 host; anywhere else "::" is a typo.
    let after_host = match s.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or("", |(_, after)| after),
        None => s,
    };
    if after_host.contains("::") {
        return Err(
            "it contains \"::\" (one ':' separates the tag, or a registry host's port)".into(),
        );
    }

    let (rest, digest) = match s.rsplit_once('@') {
        Some((rest, d)) => (
            rest,
            Some(
                d.parse::<Digest>()
                    .map_err(|e| format!("the digest after '@' is invalid: {}", e.reason))?,
            ),
        ),
        None => (s, None),
    };

    // A ':' after the last '/' starts the tag; earlier ones belong to a host's
    // port or an IPv6 address.
    let last_slash = rest.rfind('/');
    let (name, tag) = match rest.rfind(':') {
        Some(i) if last_slash.is_none_or(|j| i > j) => {
            (&rest[..i], Some(rest[i + 1..].to_string()))
        }
        _ => (rest, None),
    };
    if let Some(t) = &tag {
        validate_tag(t)?;
    }

    let (registry, repository) = split_registry(name)?;
    if repository.len() + registry.len() + 1 > MAX_NAME_LEN {
        return Err(format!("the name is longer than {MAX_NAME_LEN} characters"));
    }
    validate_repository(&repository)?;
    let tag = match (tag, &digest) {
        (None, None) => Some(DEFAULT_TAG.to_string()),
        (t, _) => t,
    };
    Ok(Reference {
        registry,
        repository,
        tag,
        digest,
    })
}

fn split_registry(name: &str) -> Result<(String, String), String> {
    let (first, remainder) = match name.split_once('/') {
        Some((first, rem)) => (first, Some(rem)),
        None => (name, None),
    };
    let is_host = remainder.is_some()
        && (first.contains('.')
            || first.contains(':')
            || first == "localhost"
            || first.starts_with('['));
    let (registry, repository) = if is_host {
        validate_host(first)?;
        let host = first.to_ascii_lowercase();
        // Docker Hub answers to several names; keep one so comparisons work.
        let host = match host.as_str() {
            "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
                DOCKER_HUB.to_string()
            }
            _ => host,
        };
        (host, remainder.unwrap_or_default().to_string())
    } else {
        (DOCKER_HUB.to_string(), name.to_string())
    };
    let repository = if registry == DOCKER_HUB && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    Ok((registry, repository))
}

fn validate_host(host: &str) -> Result<(), String> {
    let (hostname, port) = if let Some(stripped) = host.strip_prefix('[') {
        let (addr, after) = stripped
            .split_once(']')
            .ok_or("an IPv6 registry address needs a closing ']'")?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{addr:?} is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or("expected ':' and a port after ']'")?,
            ),
        };
        (None, port)
    } else {
        match host.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(host), None),
        }
    };
    if let Some(h) = hostname {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if h.is_empty() || !h.split('.').all(label_ok) {
            return Err(format!("{h:?} is not a valid registry host name"));
        }
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(format!("{p:?} is not a valid port")),
        }
    }
    Ok(())
}

fn validate_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("the repository name is empty".into());
    }
    for component in repo.split('/') {
        if component.is_empty() {
            return Err("the repository name has an empty path component".into());
        }
        if component.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "repository names must be lowercase ({component:?} is not)"
            ));
        }
        if !component_ok(component) {
            return Err(format!(
                "{component:?} is not a valid repository path component \
                 (lowercase letters and digits, separated by '.', '_', '__' or dashes)"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*` from the distribution grammar.
fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let b = tag.as_bytes();
    if b.is_empty() {
        return Err("the tag after ':' is empty".into());
    }
    if b.len() > 128 {
        return Err("a tag is at most 128 characters".into());
    }
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    if !word(b[0]) {
        return Err(format!(
            "tag {tag:?} must start with a letter, digit or '_'"
        ));
    }
    if !b.iter().all(|&x| word(x) || x == b'.' || x == b'-') {
        return Err(format!(
            "tag {tag:?} may contain only letters, digits, '_', '.' and '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalises() {
        let cases: &[(&str, &str, &str, Option<&str>, bool)] = &[
            // input, registry, repository, tag, has digest
            (
                "golang",
                "docker.io",
                "library/golang",
                Some("latest"),
                false,
            ),
            (
                "golang:1.17",
                "docker.io",
                "library/golang",
                Some("1.17"),
                false,
            ),
            (
                "bitnami/redis:7",
                "docker.io",
                "bitnami/redis",
                Some("7"),
                false,
            ),
            (
                "docker.io/golang",
                "docker.io",
                "library/golang",
                Some("latest"),
                false,
            ),
            (
                "index.docker.io/library/golang:1",
                "docker.io",
                "library/golang",
                Some("1"),
                false,
            ),
            (
                "registry-1.docker.io/x/y:z",
                "docker.io",
                "x/y",
                Some("z"),
                false,
            ),
            (
                "quay.io/coreos/etcd:v3.5.0",
                "quay.io",
                "coreos/etcd",
                Some("v3.5.0"),
                false,
            ),
            ("localhost/app", "localhost", "app", Some("latest"), false),
            (
                "localhost:5000/app:1",
                "localhost:5000",
                "app",
                Some("1"),
                false,
            ),
            (
                "127.0.0.1:5001/a/b/c:t",
                "127.0.0.1:5001",
                "a/b/c",
                Some("t"),
                false,
            ),
            ("[::1]:5000/app:v1", "[::1]:5000", "app", Some("v1"), false),
            ("[::1]/app", "[::1]", "app", Some("latest"), false),
            (
                "[2001:db8::1]:443/ns/app",
                "[2001:db8::1]:443",
                "ns/app",
                Some("latest"),
                false,
            ),
            (
                "Registry.Example.COM/app",
                "registry.example.com",
                "app",
                Some("latest"),
                false,
            ),
            (
                "123456789012.dkr.ecr.us-east-1.amazonaws.com/golang:1.17",
                "123456789012.dkr.ecr.us-east-1.amazonaws.com",
                "golang",
                Some("1.17"),
                false,
            ),
            (
                "ubuntu@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "docker.io",
                "library/ubuntu",
                None,
                true,
            ),
            (
                "ubuntu:22.04@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "docker.io",
                "library/ubuntu",
                Some("22.04"),
                true,
            ),
            (
                "localhost:5000/a@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "localhost:5000",
                "a",
                None,
                true,
            ),
            (
                "a__b/c-d/e.f_g:T_1.0-x",
                "docker.io",
                "a__b/c-d/e.f_g",
                Some("T_1.0-x"),
                false,
            ),
            (
                "my-registry:5000/x",
                "my-registry:5000",
                "x",
                Some("latest"),
                false,
            ),
        ];
        for (input, registry, repository, tag, has_digest) in cases {
            let r: Reference = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry(), *registry, "{input}");
            assert_eq!(r.repository(), *repository, "{input}");
            assert_eq!(r.tag(), *tag, "{input}");
            assert_eq!(r.digest().is_some(), *has_digest, "{input}");
            // Printing and re-parsing is the identity.
            let again: Reference = r.to_string().parse().unwrap();
            assert_eq!(again, r, "{input}");
        }
    }

    #[test]
    fn manifest_ref_prefers_digest() {
        let r: Reference = format!("golang:1.17@{D}").parse().unwrap();
        assert_eq!(r.manifest_ref(), D);
        let r: Reference = "golang:1.17".parse().unwrap();
        assert_eq!(r.manifest_ref(), "1.17");
    }

    #[test]
    fn rejects_with_reasons() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            (" golang", "whitespace"),
            ("gol ang", "character"),
            ("https://quay.io/app", "scheme"),
            ("Golang", "lowercase"),
            ("quay.io/", "empty"),
            ("quay.io//app", "empty path component"),
            ("app:", "tag after ':' is empty"),
            ("app:-x", "must start"),
            ("app:a]b", "may contain only"),
            ("app:a+b", "the character '+'"),
            ("a.example.com/x:1;b.example.com/x:1", "the character ';'"),
            ("x::y", "\"::\""),
            ("app@sha256:abc", "has 64 hexadecimal characters"),
            ("app@md5:abc", "only sha256"),
            ("-app", "not a valid repository path component"),
            ("app-", "not a valid repository path component"),
            ("a..b", "not a valid repository path component"),
            ("a___b", "not a valid repository path component"),
            ("host:99999/app", "not a valid port"),
            ("host:/app", "not a valid port"),
            ("[::1/app", "closing"),
            ("[zz::1]:5000/app", "not an IPv6 address"),
            ("-bad.example.com/app", "not a valid registry host"),
        ];
        for (input, want) in cases {
            match input.parse::<Reference>() {
                Ok(r) => panic!("{input:?} was accepted as {r}"),
                Err(e) => assert!(
                    e.to_string().contains(want),
                    "{input:?}: {e} does not mention {want:?}"
                ),
            }
        }
        let long = format!("quay.io/{}", "a".repeat(300));
        assert!(
            long.parse::<Reference>()
                .unwrap_err()
                .reason
                .contains("longer")
        );
        let long_tag = format!("app:{}", "t".repeat(129));
        assert!(long_tag.parse::<Reference>().is_err());
        // A megabyte of input makes a one-line message, not a megabyte one.
        let huge = format!("quay.io/{}", "A".repeat(1 << 20));
        let msg = huge.parse::<Reference>().unwrap_err().to_string();
        assert!(msg.len() < 300, "{msg}");
        assert!(msg.contains("(1048584 characters)"), "{msg}");
    }

    #[test]
    fn same_location() {
        let a: Reference = "golang:1.17".parse().unwrap();
        let b: Reference = "docker.io/library/golang:1.17".parse().unwrap();
        let c: Reference = "golang:1.18".parse().unwrap();
        assert!(a.same_location(&b));
        assert!(!a.same_location(&c));
    }
}
