//! moto, the AWS double: clients, queues with a dead-letter queue, roles.

use crate::Stack;

/// The environment that points the AWS SDK at moto.
pub fn moto_env(stack: &Stack) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", stack.moto.clone()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

/// [`moto_env`], with the AWS calls sent to `endpoint` instead (a gate in
/// front of moto).
pub fn moto_env_via(stack: &Stack, endpoint: &str) -> Vec<(&'static str, String)> {
    let mut env = moto_env(stack);
    for (k, v) in &mut env {
        if *k == "AWS_ENDPOINT_URL" {
            *v = endpoint.to_string();
        }
    }
    env
}

macro_rules! moto_client {
    ($name:ident, $krate:ident) => {
        /// A client for moto, configured explicitly (no process environment).
        pub fn $name(stack: &Stack) -> $krate::Client {
            let conf = $krate::config::Builder::new()
                .behavior_version($krate::config::BehaviorVersion::latest())
                .region($krate::config::Region::new("us-east-1"))
                .endpoint_url(&stack.moto)
                .credentials_provider(aws_credential_types::Credentials::new(
                    "testing", "testing", None, None, "moto",
                ))
                .build();
            $krate::Client::from_conf(conf)
        }
    };
}

moto_client!(moto_ecr, aws_sdk_ecr);

moto_client!(moto_sqs, aws_sdk_sqs);

moto_client!(moto_dynamodb, aws_sdk_dynamodb);

moto_client!(moto_batch, aws_sdk_batch);
moto_client!(moto_ssm, aws_sdk_ssm);
moto_client!(moto_secrets, aws_sdk_secretsmanager);

/// A fresh SQS queue with a dead-letter queue after `max_receives`; returns
/// (queue URL, DLQ URL).
pub async fn moto_queue_with_dlq(stack: &Stack, name: &str, max_receives: u32) -> (String, String) {
    let sqs = moto_sqs(stack);
    let dlq = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .unwrap();
    let dlq_url = dlq.queue_url().unwrap().to_string();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    let q = sqs
        .create_queue()
        .queue_name(name)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max_receives})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    (q.queue_url().unwrap().to_string(), dlq_url)
}

/// Messages visible in a queue (moto answers exactly).
pub async fn queue_depth(stack: &Stack, url: &str) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = moto_sqs(stack)
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let a = out.attributes().unwrap();
    a[&A::ApproximateNumberOfMessages].parse::<u64>().unwrap()
        + a[&A::ApproximateNumberOfMessagesNotVisible]
            .parse::<u64>()
            .unwrap()
}

/// Create an IAM role in moto (its Batch checks service roles exist); returns
/// the ARN. One query-API call: moto routes it by the credential scope.
pub async fn moto_create_role(stack: &Stack, name: &str) -> String {
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"batch.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    let resp = reqwest::Client::new()
        .post(format!("{}/", stack.moto))
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("Action", "CreateRole")
                .append_pair("Version", "2010-05-08")
                .append_pair("RoleName", name)
                .append_pair("AssumeRolePolicyDocument", policy)
                .finish(),
        )
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert!(status.is_success(), "CreateRole: {status} {body}");
    let start = body.find("<Arn>").unwrap() + 5;
    let end = body[start..].find("</Arn>").unwrap() + start;
    body[start..end].to_string()
}
