//! What this process asked of DynamoDB and SQS: requests per operation
//! (retries included, as AWS bills them) and the read and write capacity
//! units DynamoDB reports for them (`ReturnConsumedCapacity`), for run
//! reports and the cost arithmetic in `docs/deploy.md`.
//!
//! Requests are counted by an interceptor on each client ([`Tally`]), so no
//! call site can be missed; capacity units come back in each operation's own
//! output, so the store's calls hand them over ([`consumed`]).

use std::collections::BTreeMap;
use std::sync::Mutex;

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::types::ConsumedCapacity;

/// The process's figures so far.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Usage {
    /// By `service:Operation` (`dynamodb:Scan`, `sqs:SendMessageBatch`).
    pub requests: BTreeMap<String, u64>,
    pub dynamodb_read_units: f64,
    pub dynamodb_write_units: f64,
}

impl Usage {
    /// Requests to `service` (`dynamodb`, `sqs`).
    pub fn requests_to(&self, service: &str) -> u64 {
        let prefix = format!("{service}:");
        self.requests
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, n)| n)
            .sum()
    }
}

static USAGE: Mutex<Usage> = Mutex::new(Usage {
    requests: BTreeMap::new(),
    dynamodb_read_units: 0.0,
    dynamodb_write_units: 0.0,
});

fn usage() -> std::sync::MutexGuard<'static, Usage> {
    // Poisoned only by a panic mid-increment: the figures are still usable.
    USAGE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A copy of the figures so far.
pub fn snapshot() -> Usage {
    usage().clone()
}

/// Record the capacity DynamoDB reported for one call (`reads`: a read
/// operation, whose units are read units).
pub fn consumed<'a>(reads: bool, capacity: impl IntoIterator<Item = &'a ConsumedCapacity>) {
    let units: f64 = capacity
        .into_iter()
        .map(|c| {
            let split = if reads {
                c.read_capacity_units()
            } else {
                c.write_capacity_units()
            };
            split.or(c.capacity_units()).unwrap_or_default()
        })
        .sum();
    let mut u = usage();
    if reads {
        u.dynamodb_read_units += units;
    } else {
        u.dynamodb_write_units += units;
    }
}

/// Counts each request a client sends, by its `X-Amz-Target`.
#[derive(Debug, Default)]
pub struct Tally;

impl Intercept for Tally {
    fn name(&self) -> &'static str {
        "mirrorfleet::usage::Tally"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("unknown.unknown");
        if let Some(name) = operation(target) {
            *usage().requests.entry(name).or_default() += 1;
        }
        Ok(())
    }
}

/// `DynamoDB_20120810.Scan` → `dynamodb:Scan`, `AmazonSQS.SendMessage` →
/// `sqs:SendMessage`.
fn operation(target: &str) -> Option<String> {
    let (service, op) = target.split_once('.')?;
    let service = if service.starts_with("DynamoDB") {
        "dynamodb"
    } else if service == "AmazonSQS" {
        "sqs"
    } else {
        return None;
    };
    Some(format!("{service}:{op}"))
}

#[cfg(test)]
mod tests {
    use super::operation;

    #[test]
    fn targets_name_their_service_and_operation() {
        assert_eq!(
            operation("DynamoDB_20120810.BatchGetItem").as_deref(),
            Some("dynamodb:BatchGetItem")
        );
        assert_eq!(
            operation("AmazonSQS.SendMessageBatch").as_deref(),
            Some("sqs:SendMessageBatch")
        );
        assert_eq!(
            operation("AmazonEC2ContainerRegistry_V20150921.PutImage"),
            None
        );
        assert_eq!(operation("nothing"), None);
    }
}
