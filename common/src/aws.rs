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

/// Whether an AWS call failed in a way that trying later may mend: throttled,
/// timed out, unreachable, or a 5xx (the SDK has already retried those).
pub fn is_transient<E>(
    e: &aws_sdk_ecr::error::SdkError<E, aws_sdk_ecr::config::http::HttpResponse>,
) -> bool
where
    E: aws_sdk_ecr::error::ProvideErrorMetadata,
{
    use aws_sdk_ecr::error::SdkError;
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code().unwrap_or_default();
            code.contains("Throttl")
                || code == "TooManyRequestsException"
                || code == "RequestLimitExceeded"
                || ctx.raw().status().as_u16() >= 500
        }
        _ => false,
    }
}

/// An AWS error in words: the SDK's own chain ("service error" alone says
/// little), plus the service's error code and message when it sent them
/// (an `AccessDeniedException` names the action and resource refused).
pub fn describe<E>(
    e: &aws_sdk_ecr::error::SdkError<E, aws_sdk_ecr::config::http::HttpResponse>,
) -> String
where
    E: aws_sdk_ecr::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let mut msg = crate::error::error_line(e);
    if let aws_sdk_ecr::error::SdkError::ServiceError(ctx) = e {
        let err = ctx.err();
        if let Some(m) = err.message()
            && !msg.contains(m)
        {
            msg = format!("{msg}: {}: {m}", err.code().unwrap_or("error"));
        }
    }
    msg
}
