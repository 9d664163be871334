//! The library's error type. Every message is meant to be read by the person
//! who owns the mirror row: it says what failed, where, and what to check.

use crate::oci::digest::Digest;
use crate::oci::manifest::ManifestError;
use crate::oci::reference::ReferenceError;
use crate::registry::auth::AuthError;
use crate::registry::ecr::EcrError;
use crate::registry::settings::SettingsError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("{what}: {source}")]
    Manifest { what: String, source: ManifestError },
    #[error("login to {registry} failed: {message}")]
    Auth { registry: String, message: String },
    #[error("{registry} refused access: {message}")]
    Denied { registry: String, message: String },
    #[error("{what} was not found")]
    NotFound { what: String },
    #[error("source image {0} was not found (check the tag exists)")]
    SourceMissing(String),
    #[error("{registry} answered {status}{}: {message}", code.as_ref().map(|c| format!(" {c}")).unwrap_or_default())]
    Registry {
        registry: String,
        status: u16,
        code: Option<String>,
        message: String,
    },
    #[error("cannot reach {registry}: {message}")]
    Transport { registry: String, message: String },
    /// 429 on a request that cannot be retried in place (a streamed blob
    /// upload): the transfer starts again after `retry_after`.
    #[error("{registry} is rate limiting requests (429): {message}")]
    RateLimited {
        registry: String,
        message: String,
        retry_after: Option<std::time::Duration>,
    },
    /// The registry's pull quota (Docker Hub's) is used up: nothing will
    /// succeed before it resets, so the job waits for that, not retries.
    #[error(
        "the pull quota of {registry} is used up ({message}); trying again in {} when it resets",
        humantime::format_duration(*retry_after)
    )]
    QuotaExhausted {
        registry: String,
        message: String,
        retry_after: std::time::Duration,
    },
    /// A token was issued, yet the registry refused its scope: what Docker
    /// Hub answers for a repository that does not exist or is private.
    #[error(
        "repository {repository} on {registry} was not found or {} (the registry refused the \
         token's scope: insufficient_scope)",
        if *anonymous {
            "it needs credentials and none were found: give them with --src-creds/--dest-creds, \
             the registry settings file, or a Docker config login"
        } else {
            "is not accessible with these credentials"
        }
    )]
    RepositoryInaccessible {
        registry: String,
        repository: String,
        /// No credentials were presented, only an anonymous token.
        anonymous: bool,
    },
    /// The TLS handshake failed: retrying cannot help until settings change.
    #[error("cannot reach {registry} over TLS: {message}")]
    Tls { registry: String, message: String },
    #[error("{what} does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what} has {actual} bytes but its descriptor says {expected}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "overwrite refused: {dest} already holds {existing}, not the source's {wanted} \
         (tags are immutable there, or overwrite is off for this mirror)"
    )]
    OverwriteRefused {
        dest: String,
        existing: Digest,
        wanted: Digest,
    },
    #[error("destination {0} is the source itself")]
    SameAsSource(String),
    #[error(transparent)]
    Ecr(#[from] EcrError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    AuthConfig(#[from] AuthError),
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// A registry error code from the distribution error body, if any.
    pub fn registry_code(&self) -> Option<&str> {
        match self {
            Error::Registry { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Whether trying the same job later could succeed (transient trouble)
    /// rather than needing a person to change something.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::RateLimited { .. } | Error::QuotaExhausted { .. } => {
                true
            }
            // What the retry table retries is what is worth trying later.
            Error::Registry { status, .. } => reqwest::StatusCode::from_u16(*status)
                .is_ok_and(|s| crate::retry::classify(s) == crate::retry::Class::Retry),
            Error::Ecr(e) => e.is_transient(),
            _ => false,
        }
    }

    /// How long to wait before trying again, when the registry said.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::RateLimited { retry_after, .. } => *retry_after,
            Error::QuotaExhausted { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes on one line, each said once: a cause whose words
/// are already in the message above it (a `{source}` in its format) is not
/// repeated.
pub fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

/// A cause kept as the `#[source]` of an error that says, in its own
/// words, what it was doing (an AWS SDK error, typically).
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_say_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read m.yaml: {source}")]
        struct Read {
            source: std::io::Error,
        }
        let e = Read {
            source: std::io::Error::other("no such file"),
        };
        assert_eq!(error_line(&e), "cannot read m.yaml: no such file");
    }
    use std::time::Duration;

    #[test]
    fn what_is_worth_trying_later() {
        let throttled_token = Error::Ecr(EcrError::Token {
            account: "123456789012".into(),
            region: "us-east-1".into(),
            message: "ThrottlingException: Rate exceeded".into(),
            transient: true,
            keys_refused: false,
            cause: None,
        });
        assert!(throttled_token.is_transient());
        let quota = Error::QuotaExhausted {
            registry: "docker.io".into(),
            message: "0 pulls left".into(),
            retry_after: Duration::from_secs(3600),
        };
        assert!(quota.is_transient());
        assert_eq!(quota.retry_after(), Some(Duration::from_secs(3600)));
        assert!(quota.to_string().contains("trying again in 1h"), "{quota}");
        let limited = Error::RateLimited {
            registry: "r".into(),
            message: "Rate exceeded".into(),
            retry_after: None,
        };
        assert!(limited.is_transient() && limited.retry_after().is_none());
        let status = |status| Error::Registry {
            registry: "r".into(),
            status,
            code: None,
            message: String::new(),
        };
        // The same answers as the retry table's.
        for (code, transient) in [
            (408, true),
            (425, true),
            (429, true),
            (500, true),
            (501, false),
            (503, true),
            (505, false),
            (404, false),
        ] {
            assert_eq!(status(code).is_transient(), transient, "{code}");
        }
        let bad_name = Error::Ecr(EcrError::InvalidName {
            repository: "a__b".into(),
        });
        assert!(!bad_name.is_transient());
    }
}
