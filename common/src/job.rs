//! The job message the controller sends and the worker consumes: versioned
//! JSON, so a fleet can be upgraded one side at a time.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::reference::Reference;

pub const JOB_VERSION: u32 = 1;

/// The message body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub version: u32,
    pub source: String,
    #[serde(default)]
    pub source_digest: Option<Digest>,
    pub destinations: Vec<String>,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub enqueued_at: String,
}

/// A job whose references are parsed and valid.
#[derive(Debug, Clone)]
pub struct ValidJob {
    pub source: Reference,
    pub source_digest: Option<Digest>,
    pub destinations: Vec<Reference>,
    pub reason: String,
    /// When the controller queued it (RFC 3339), for queue-lag metrics.
    pub enqueued_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("the message is not a mirrorfleet job (invalid JSON: {0})")]
    Json(String),
    #[error(
        "job version {0} is not understood by this worker (it reads version {JOB_VERSION}); upgrade the workers"
    )]
    Version(u32),
    #[error("the job's {field} is invalid: {message}")]
    Reference {
        field: &'static str,
        message: String,
    },
    #[error("the job has no destinations")]
    NoDestinations,
}

impl Job {
    pub fn new(
        source: &Reference,
        source_digest: Option<Digest>,
        destinations: &[Reference],
        reason: &str,
    ) -> Job {
        Job {
            version: JOB_VERSION,
            source: source.to_string(),
            source_digest,
            destinations: destinations.iter().map(ToString::to_string).collect(),
            reason: reason.to_string(),
            enqueued_at: crate::table::now_rfc3339(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parse and validate a message body.
    pub fn parse(body: &str) -> Result<ValidJob, JobError> {
        // Read the version first so a newer job with new fields is refused
        // for its version, not for a confusing field error.
        #[derive(Deserialize)]
        struct Versioned {
            version: Option<u32>,
        }
        let v: Versioned = serde_json::from_str(body).map_err(|e| JobError::Json(e.to_string()))?;
        match v.version {
            Some(JOB_VERSION) => {}
            Some(other) => return Err(JobError::Version(other)),
            None => return Err(JobError::Json("missing field `version`".into())),
        }
        let job: Job = serde_json::from_str(body).map_err(|e| JobError::Json(e.to_string()))?;
        let source = job
            .source
            .parse()
            .map_err(|e: crate::reference::ReferenceError| JobError::Reference {
                field: "source",
                message: e.to_string(),
            })?;
        let destinations = job
            .destinations
            .iter()
            .map(|d| {
                d.parse()
                    .map_err(|e: crate::reference::ReferenceError| JobError::Reference {
                        field: "destination",
                        message: e.to_string(),
                    })
            })
            .collect::<Result<Vec<Reference>, _>>()?;
        if destinations.is_empty() {
            return Err(JobError::NoDestinations);
        }
        Ok(ValidJob {
            source,
            source_digest: job.source_digest,
            destinations,
            reason: job.reason,
            enqueued_at: job.enqueued_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let src: Reference = "golang:1.17".parse().unwrap();
        let dst: Reference = "a.example.com/g:1.17".parse().unwrap();
        let j = Job::new(
            &src,
            Some(Digest::sha256_of(b"x")),
            std::slice::from_ref(&dst),
            "destination missing",
        );
        let v = Job::parse(&j.to_json()).unwrap();
        assert_eq!(v.source, src);
        assert_eq!(v.destinations, vec![dst]);
    }

    #[test]
    fn bad_messages_say_why() {
        let cases = [
            ("not json", "invalid JSON"),
            ("{}", "missing field `version`"),
            (r#"{"version":2,"source":"a"}"#, "version 2"),
            (
                r#"{"version":1,"destinations":["a.example.com/x:1"]}"#,
                "source",
            ),
            (
                r#"{"version":1,"source":"Bad","destinations":["a.example.com/x:1"]}"#,
                "source is invalid",
            ),
            (
                r#"{"version":1,"source":"a:1","destinations":["Bad"]}"#,
                "destination is invalid",
            ),
            (
                r#"{"version":1,"source":"a:1","destinations":[]}"#,
                "no destinations",
            ),
            (
                r#"{"version":1,"source":"a:1","destinations":"x"}"#,
                "invalid JSON",
            ),
        ];
        for (body, want) in cases {
            let err = Job::parse(body).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
    }
}
