//! The job message the controller sends and the worker consumes: versioned
//! JSON, so a fleet can be upgraded one side at a time.

use serde::{Deserialize, Serialize};

use crate::oci::digest::Digest;
use crate::oci::reference::Reference;

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
    /// The table row the job belongs to, when that is not `source` (a
    /// repository row expanded to one job per tag). Workers that predate it
    /// ignore it, so the version stays 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<String>,
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
    /// The table row (its `source` key) that asked for this copy.
    pub row: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("the message is not a mirrorfleet job (invalid JSON: {0})")]
    Json(String),
    #[error("the message is not a mirrorfleet job (it is JSON {0}, not an object)")]
    NotAnObject(&'static str),
    #[error(
        "job version {version} is not understood by this worker (it reads version {JOB_VERSION}); {advice}",
        version = .0,
        advice = if *.0 > u64::from(JOB_VERSION) { "upgrade the workers" } else { "it was sent by an older controller; run the controller again" }
    )]
    Version(u64),
    #[error("the job has no `{0}` field")]
    Missing(&'static str),
    #[error("the job's `{field}` must be {expected}, not {actual}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        actual: &'static str,
    },
    #[error("the job's {field} is invalid: {message}")]
    Reference { field: String, message: String },
    #[error("the job has no destinations")]
    NoDestinations,
}

/// What a JSON value is, in words.
fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "true or false",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
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
            enqueued_at: crate::control::table::now_rfc3339(),
            row: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parse and validate a message body. Every refusal names what is wrong
    /// (the field and its type), so a dead-lettered message can be fixed.
    pub fn parse(body: &str) -> Result<ValidJob, JobError> {
        use serde_json::Value;
        let v: Value = serde_json::from_str(body).map_err(|e| JobError::Json(e.to_string()))?;
        let Value::Object(obj) = &v else {
            return Err(JobError::NotAnObject(kind(&v)));
        };
        // The version first, so a newer job with new fields is refused for
        // its version, not for a confusing field error.
        match obj.get("version") {
            None => return Err(JobError::Missing("version")),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(n) if n == u64::from(JOB_VERSION) => {}
                Some(n) => return Err(JobError::Version(n)),
                None => {
                    return Err(JobError::WrongType {
                        field: "version",
                        expected: "a whole number",
                        actual: "a negative or fractional number",
                    });
                }
            },
            Some(other) => {
                return Err(JobError::WrongType {
                    field: "version",
                    expected: "a whole number",
                    actual: kind(other),
                });
            }
        }
        let string = |field: &'static str, required: bool| -> Result<String, JobError> {
            match obj.get(field) {
                None | Some(Value::Null) if !required => Ok(String::new()),
                None => Err(JobError::Missing(field)),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(JobError::WrongType {
                    field,
                    expected: "a string",
                    actual: kind(other),
                }),
            }
        };
        let source = string("source", true)?;
        let destinations: Vec<String> = match obj.get("destinations") {
            None => return Err(JobError::Missing("destinations")),
            Some(Value::Array(items)) => items
                .iter()
                .map(|d| match d {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(JobError::WrongType {
                        field: "destinations",
                        expected: "a list of strings",
                        actual: if other.is_array() {
                            "a list of lists"
                        } else {
                            "a list holding other values"
                        },
                    }),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(JobError::WrongType {
                    field: "destinations",
                    expected: "a list of strings",
                    actual: kind(other),
                });
            }
        };
        let source_digest = match string("source_digest", false)?.as_str() {
            "" => None,
            d => Some(d.parse::<Digest>().map_err(|e| JobError::Reference {
                field: "source_digest".into(),
                message: e.to_string(),
            })?),
        };
        let reason = string("reason", false)?;
        let enqueued_at = string("enqueued_at", false)?;
        let row = Some(string("row", false)?).filter(|r| !r.is_empty());
        let row_key = row.unwrap_or_else(|| source.clone());
        let source = source
            .parse()
            .map_err(
                |e: crate::oci::reference::ReferenceError| JobError::Reference {
                    field: "source".into(),
                    message: e.to_string(),
                },
            )?;
        let destinations = destinations
            .iter()
            .enumerate()
            .map(|(i, d)| {
                d.parse().map_err(
                    |e: crate::oci::reference::ReferenceError| JobError::Reference {
                        field: format!("destination {}", i + 1),
                        message: e.to_string(),
                    },
                )
            })
            .collect::<Result<Vec<Reference>, _>>()?;
        if destinations.is_empty() {
            return Err(JobError::NoDestinations);
        }
        Ok(ValidJob {
            row: row_key,
            source,
            source_digest,
            destinations,
            reason,
            enqueued_at,
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
            ("[1]", "it is JSON a list, not an object"),
            ("{}", "the job has no `version` field"),
            (
                r#"{"version":"1"}"#,
                "`version` must be a whole number, not a string",
            ),
            (r#"{"version":2,"source":"a"}"#, "version 2"),
            (r#"{"version":2,"source":"a"}"#, "upgrade the workers"),
            (r#"{"version":0}"#, "run the controller again"),
            (
                r#"{"version":1,"destinations":["a.example.com/x:1"]}"#,
                "the job has no `source` field",
            ),
            (
                r#"{"version":1,"source":["a:1"],"destinations":["a.example.com/x:1"]}"#,
                "the job's `source` must be a string, not a list",
            ),
            (
                r#"{"version":1,"source":"Bad","destinations":["a.example.com/x:1"]}"#,
                "source is invalid",
            ),
            (
                r#"{"version":1,"source":"a:1","destinations":["a.example.com/x:1","Bad"]}"#,
                "the job's destination 2 is invalid",
            ),
            (
                r#"{"version":1,"source":"a:1","destinations":[]}"#,
                "no destinations",
            ),
            (
                r#"{"version":1,"source":"a:1","destinations":"x"}"#,
                "the job's `destinations` must be a list of strings, not a string",
            ),
            (
                r#"{"version":1,"source":"a:1","destinations":[3]}"#,
                "a list holding other values",
            ),
            (
                r#"{"version":1,"source":"a:1","source_digest":"sha256:1","destinations":["b.example.com/x:1"]}"#,
                "the job's source_digest is invalid",
            ),
        ];
        for (body, want) in cases {
            let err = Job::parse(body).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
    }
}
