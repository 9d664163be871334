//! The one AWS configuration: region, credentials and endpoints from the
//! standard `AWS_*` variables and profiles, and the SDK's standard retry mode
//! (jittered backoff on throttling and transient errors).

use aws_config::{BehaviorVersion, SdkConfig};

pub async fn config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(5))
        .load()
        .await
}
