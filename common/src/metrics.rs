//! Metrics as CloudWatch Embedded Metric Format (EMF) log lines: one JSON
//! object on stderr per report, which CloudWatch Logs turns into metrics with
//! no agent. Off unless `--metrics emf` (the Batch job definitions turn it on).

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

static NAMESPACE: OnceLock<Option<String>> = OnceLock::new();

/// Turn EMF output on (with its namespace) or off, once per process.
pub fn init(namespace: Option<String>) {
    let _ = NAMESPACE.set(namespace);
}

#[derive(Debug, Clone, Copy)]
pub enum Unit {
    Count,
    Bytes,
    Seconds,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Bytes => "Bytes",
            Unit::Seconds => "Seconds",
        }
    }
}

/// The EMF document for `values`, with `component` as the one dimension.
pub fn document(
    namespace: &str,
    component: &str,
    values: &[(&str, f64, Unit)],
    now_ms: u128,
) -> Value {
    let mut root = Map::new();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": now_ms as u64,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [["Component"]],
                "Metrics": values.iter().map(|(n, _, u)| json!({"Name": n, "Unit": u.name()})).collect::<Vec<_>>(),
            }],
        }),
    );
    root.insert("Component".into(), json!(component));
    for (n, v, _) in values {
        root.insert((*n).into(), json!(v));
    }
    Value::Object(root)
}

/// Emit one report, if metrics are on.
pub fn emit(component: &str, values: &[(&str, f64, Unit)]) {
    let Some(Some(namespace)) = NAMESPACE.get() else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    eprintln!("{}", document(namespace, component, values, now));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_shape() {
        let d = document(
            "mirrorfleet",
            "worker",
            &[
                ("ImagesSynced", 2.0, Unit::Count),
                ("BytesCopied", 10.0, Unit::Bytes),
            ],
            5,
        );
        assert_eq!(d["_aws"]["Timestamp"], 5);
        assert_eq!(
            d["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "mirrorfleet"
        );
        assert_eq!(
            d["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0][0],
            "Component"
        );
        assert_eq!(
            d["_aws"]["CloudWatchMetrics"][0]["Metrics"][1]["Unit"],
            "Bytes"
        );
        assert_eq!(d["Component"], "worker");
        assert_eq!(d["ImagesSynced"], 2.0);
    }
}
