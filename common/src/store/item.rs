//! The DynamoDB item codec: rows and statuses to attribute values and back,
//! keeping attributes the user added.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;

use crate::control::table::{DestStatus, Mirror, Row, ScannedRow, State};
use crate::store::dynamo::s;

/// Read an item as typed by hand in the console: destinations as a list, a
/// string set or one comma-separated string; wrong types are a row error.
pub fn row_from_item(item: &HashMap<String, AttributeValue>) -> ScannedRow {
    let key = match item.get("source") {
        Some(AttributeValue::S(k)) => k.clone(),
        _ => {
            return ScannedRow {
                key: String::new(),
                row: Err("the row has no string `source`".into()),
                scope: None,
            };
        }
    };
    let row = (|| {
        let dests: Vec<String> = match item.get("destinations") {
            Some(AttributeValue::L(l)) => l
                .iter()
                .map(|v| match v {
                    AttributeValue::S(s) => Ok(s.clone()),
                    _ => Err("`destinations` must hold strings".to_string()),
                })
                .collect::<Result<_, _>>()?,
            Some(AttributeValue::Ss(ss)) => ss.clone(),
            Some(AttributeValue::S(s)) => vec![s.clone()],
            Some(_) => {
                return Err(
                    "`destinations` must be a list, a string set or a comma-separated string"
                        .into(),
                );
            }
            None => return Err("the row has no `destinations`".into()),
        };
        let tags = match item.get("tags") {
            None => None,
            Some(v) => Some(
                serde_json::from_value::<crate::control::select::TagRules>(attr_to_json(v))
                    .map_err(|e| format!("`tags`: {e}"))?,
            ),
        };
        let platforms = match item.get("platforms") {
            None => Vec::new(),
            Some(AttributeValue::L(items)) => items
                .iter()
                .map(|v| match v {
                    AttributeValue::S(s) => Ok(s.clone()),
                    _ => Err("`platforms` must be a list of strings such as linux/amd64"),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(AttributeValue::Ss(v)) => v.clone(),
            Some(AttributeValue::S(s)) => vec![s.clone()],
            Some(_) => {
                return Err(
                    "`platforms` must be a list, a string set or a comma-separated string".into(),
                );
            }
        };
        let repositories = match item.get("repositories") {
            None => None,
            Some(v) => Some(
                serde_json::from_value::<crate::control::select::RepoRules>(attr_to_json(v))
                    .map_err(|e| format!("`repositories`: {e}"))?,
            ),
        };
        let mut mirror = if tags.is_some() || repositories.is_some() || key.ends_with("/*") {
            Mirror::with_selection(&key, &dests, tags.unwrap_or_default(), repositories)?
        } else {
            Mirror::new(&key, &dests)?
        };
        mirror.set_platforms(&platforms)?;
        match item.get("strip") {
            None => {}
            Some(AttributeValue::S(strip)) => mirror.set_strip(Some(strip))?,
            Some(_) => return Err("`strip` must be a string (a leading path such as team)".into()),
        }
        mirror.enabled = match item.get("enabled") {
            None => true,
            Some(AttributeValue::Bool(b)) => *b,
            Some(AttributeValue::S(s)) if s.eq_ignore_ascii_case("true") => true,
            Some(AttributeValue::S(s)) if s.eq_ignore_ascii_case("false") => false,
            Some(_) => return Err("`enabled` must be true or false".into()),
        };
        mirror.overwrite = match item.get("overwrite") {
            None => None,
            Some(AttributeValue::Bool(b)) => Some(*b),
            Some(AttributeValue::S(s)) if s == "allow" => Some(true),
            Some(AttributeValue::S(s)) if s == "refuse" => Some(false),
            Some(_) => {
                return Err("`overwrite` must be true or false (or \"allow\"/\"refuse\")".into());
            }
        };
        mirror.expires = match item.get("expires") {
            None => None,
            Some(AttributeValue::N(n)) => Some(
                n.parse()
                    .map_err(|_| "`expires` must be a whole number of Unix seconds")?,
            ),
            Some(_) => return Err("`expires` must be a number (Unix seconds)".into()),
        };
        let mut status = BTreeMap::new();
        match item.get("status") {
            None => {}
            Some(AttributeValue::M(m)) => {
                for (dest, v) in m {
                    if let AttributeValue::M(fields) = v {
                        status.insert(dest.clone(), status_from_attr(fields));
                    }
                }
            }
            // Status writes go into this map; any other type would make every
            // result of this row's copies fail to record.
            Some(_) => {
                return Err(
                    "`status` is written by mirrorfleet and must be a map; remove the attribute"
                        .into(),
                );
            }
        }
        let error = match item.get("error") {
            Some(AttributeValue::S(e)) => Some(e.clone()),
            _ => None,
        };
        Ok(Row {
            mirror,
            status,
            error,
        })
    })();
    let scope = match item.get(crate::store::index::ATTRIBUTE) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    };
    ScannedRow { key, row, scope }
}

/// A DynamoDB value as JSON, so hand-typed maps (a row's `tags`) are read
/// with the same serde rules as the YAML file. A map typed as a JSON string
/// is read as that JSON.
pub(super) fn attr_to_json(v: &AttributeValue) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        AttributeValue::S(x) => serde_json::from_str::<J>(x)
            .ok()
            .filter(J::is_object)
            .unwrap_or_else(|| J::String(x.clone())),
        AttributeValue::N(n) => n
            .parse::<i64>()
            .map(J::from)
            .or_else(|_| n.parse::<f64>().map(J::from))
            .unwrap_or_else(|_| J::String(n.clone())),
        AttributeValue::Bool(b) => J::Bool(*b),
        AttributeValue::Null(_) => J::Null,
        AttributeValue::L(l) => J::Array(l.iter().map(attr_to_json).collect()),
        AttributeValue::Ss(ss) => J::Array(ss.iter().cloned().map(J::String).collect()),
        AttributeValue::M(m) => J::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), attr_to_json(v)))
                .collect(),
        ),
        _ => J::Null,
    }
}

pub(super) fn json_to_attr(v: &serde_json::Value) -> AttributeValue {
    use serde_json::Value as J;
    match v {
        J::Null => AttributeValue::Null(true),
        J::Bool(b) => AttributeValue::Bool(*b),
        J::Number(n) => AttributeValue::N(n.to_string()),
        J::String(x) => s(x.clone()),
        J::Array(a) => AttributeValue::L(a.iter().map(json_to_attr).collect()),
        J::Object(o) => AttributeValue::M(
            o.iter()
                .map(|(k, v)| (k.clone(), json_to_attr(v)))
                .collect(),
        ),
    }
}

pub(super) fn status_to_attr(st: &DestStatus) -> AttributeValue {
    let mut m = HashMap::new();
    if let Some(state) = st.state {
        m.insert("state".to_string(), s(state.as_str()));
    }
    let opt = |m: &mut HashMap<String, AttributeValue>, k: &str, v: Option<String>| {
        if let Some(v) = v {
            m.insert(k.to_string(), s(v));
        }
    };
    opt(
        &mut m,
        "source_digest",
        st.source_digest.as_ref().map(ToString::to_string),
    );
    opt(
        &mut m,
        "dest_digest",
        st.dest_digest.as_ref().map(ToString::to_string),
    );
    opt(&mut m, "last_attempt", st.last_attempt.clone());
    opt(&mut m, "last_success", st.last_success.clone());
    opt(&mut m, "queued_at", st.queued_at.clone());
    opt(&mut m, "error", st.error.clone());
    opt(&mut m, "platforms", st.platforms.clone());
    opt(&mut m, "refused_referrers", st.refused_referrers.clone());
    m.insert(
        "bytes_copied".into(),
        AttributeValue::N(st.bytes_copied.to_string()),
    );
    m.insert(
        "attempts".into(),
        AttributeValue::N(st.attempts.to_string()),
    );
    AttributeValue::M(m)
}

pub(super) fn status_from_attr(m: &HashMap<String, AttributeValue>) -> DestStatus {
    let get = |k: &str| match m.get(k) {
        Some(AttributeValue::S(s)) => Some(s.clone()),
        _ => None,
    };
    let num = |k: &str| match m.get(k) {
        Some(AttributeValue::N(n)) => n.parse().unwrap_or(0),
        _ => 0,
    };
    DestStatus {
        state: get("state").and_then(|s| match s.as_str() {
            "queued" => Some(State::Queued),
            "copying" => Some(State::Copying),
            "synced" => Some(State::Synced),
            "failed" => Some(State::Failed),
            _ => None,
        }),
        source_digest: get("source_digest").and_then(|d| d.parse().ok()),
        dest_digest: get("dest_digest").and_then(|d| d.parse().ok()),
        last_attempt: get("last_attempt"),
        last_success: get("last_success"),
        queued_at: get("queued_at"),
        bytes_copied: num("bytes_copied"),
        attempts: num("attempts"),
        error: get("error"),
        platforms: get("platforms"),
        refused_referrers: get("refused_referrers"),
    }
}
