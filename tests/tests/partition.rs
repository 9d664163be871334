//! ECR in another partition (docs/deploy.md, "ECR in the China partition"):
//! the fleet's own keys do not exist there, so an `.amazonaws.com.cn` host
//! takes its token, and creates its repository, with the keys kept in the
//! registry's `aws_credentials_secret`.
//!
//! moto runs with IAM enforced (a server of the test's own): the fleet's
//! keys (an `aws` partition user) may only read that secret, and the China
//! keys (an `aws-cn` partition user) may only use ECR. So the copy fails if
//! the default chain is used for ECR, which the first run shows. A secret
//! without AWS keys is named, and the keys appear in no log, at trace level.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use mirrorfleet_tests::moto::PrivateMoto;
use mirrorfleet_tests::recording::{RecordingConfig, RecordingFront};
use mirrorfleet_tests::*;
use serde_json::Value;

const CN_HOST: &str = "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn";

/// Users and the secret, made while moto still lets anyone in.
const SETUP: &str = r#"
import boto3, json, os
ep = os.environ["ENDPOINT"]
def client(service, region, keys=("testing", "testing")):
    return boto3.client(service, endpoint_url=ep, region_name=region,
                        aws_access_key_id=keys[0], aws_secret_access_key=keys[1])
def user(name, actions, region):
    iam = client("iam", region)
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="only", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return [key["AccessKeyId"], key["SecretAccessKey"]]
fleet = user("fleet", ["secretsmanager:GetSecretValue"], "us-east-1")
china = user("china-mirror", ["ecr:*"], "cn-north-1")
sm = client("secretsmanager", "us-east-1")
keys = sm.create_secret(Name="mirrorfleet/cn-keys", SecretString=json.dumps(
    {"aws_access_key_id": china[0], "aws_secret_access_key": china[1]}))["ARN"]
wrong = sm.create_secret(Name="mirrorfleet/not-keys", SecretString=json.dumps(
    {"username": "u", "password": "p"}))["ARN"]
print(json.dumps({"fleet": fleet, "china": china, "keys": keys, "wrong": wrong}))
"#;

/// Whether the China user sees `repo` in cn-north-1 (IAM enforced).
fn china_has_repository(moto: &PrivateMoto, keys: &Value, repo: &str) -> bool {
    let code = format!(
        r#"
import boto3, os
ecr = boto3.client("ecr", endpoint_url=os.environ["ENDPOINT"], region_name="cn-north-1",
                   aws_access_key_id="{}", aws_secret_access_key="{}")
print([r["repositoryArn"] for r in ecr.describe_repositories()["repositories"]])
"#,
        keys[0].as_str().unwrap(),
        keys[1].as_str().unwrap()
    );
    moto.python(&code).contains(&format!(
        "arn:aws-cn:ecr:cn-north-1:123456789012:repository/{repo}"
    ))
}

#[tokio::test]
async fn a_china_ecr_host_uses_the_keys_in_its_secret_not_the_default_chain() {
    let stack = Stack::get();
    let moto = PrivateMoto::start();
    let made: Value = serde_json::from_str(&moto.python(SETUP)).unwrap();
    moto.enforce_iam();
    let repo = unique("china");
    let digest = push_image(&stack, &repo, "v1").await;
    // The China registry: any login is taken, and recorded.
    let front = RecordingFront::start(
        &stack.dst,
        RecordingConfig {
            require_login: true,
            ..Default::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &str| {
        let settings = dir.path().join(format!("{}.yaml", unique("cn")));
        std::fs::write(
            &settings,
            format!(
                "registries:\n  {src}:\n    plain_http: true\n  {CN_HOST}:\n    endpoint: {front}\n    plain_http: true\n{extra}",
                src = stack.src,
                front = front.addr,
            ),
        )
        .unwrap();
        let env = [
            ("AWS_ENDPOINT_URL", moto.url.as_str()),
            ("AWS_ACCESS_KEY_ID", made["fleet"][0].as_str().unwrap()),
            ("AWS_SECRET_ACCESS_KEY", made["fleet"][1].as_str().unwrap()),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("MIRRORFLEET_REGISTRIES", settings.to_str().unwrap()),
            ("MIRRORFLEET_LOG", "trace"),
        ];
        let src = format!("{}/{repo}:v1", stack.src);
        let dest = format!("{CN_HOST}/{repo}:v1");
        let (code, out, err) = run_bin("mirrorfleet-worker", &["copy", &src, &dest], &env);
        (code, format!("{out}{err}"))
    };

    // The default chain: the fleet's keys are unknown in the China partition.
    let (code, log) = run("");
    assert_eq!(code, 1, "{log}");
    // (moto refuses unknown keys with an XML body even to JSON protocols,
    // which the SDK cannot parse; AWS answers UnrecognizedClientException.)
    assert!(
        log.contains(&format!(
            "ECR DescribeRepositories for {repo} in cn-north-1 failed"
        )),
        "{log}"
    );
    assert!(!china_has_repository(&moto, &made["china"], &repo));

    // A secret that holds something else is named, its value never shown.
    let wrong = made["wrong"].as_str().unwrap();
    let (code, log) = run(&format!("    aws_credentials_secret: {wrong}\n"));
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains(&format!("secret {wrong} holds no AWS keys")),
        "{log}"
    );

    // The keys in the secret: token, repository and copy in the China partition.
    let keys = made["keys"].as_str().unwrap();
    let (code, log) = run(&format!("    aws_credentials_secret: {keys}\n"));
    assert_eq!(code, 0, "{log}");
    assert!(china_has_repository(&moto, &made["china"], &repo), "{log}");
    assert_eq!(
        Skopeo::plain()
            .digest(&format!("{}/{repo}:v1", stack.dst))
            .unwrap(),
        digest
    );
    // The registry was given the token ECR issued for it.
    let token = base64_basic("AWS:123456789012-auth-token");
    assert!(
        front
            .log()
            .iter()
            .any(|r| r.method == "PUT" && r.authorization.as_deref() == Some(token.as_str())),
        "{:?}",
        front.log()
    );
    // Nothing logged the China keys.
    let secret_key = made["china"][1].as_str().unwrap();
    assert!(
        !log.contains(secret_key),
        "the secret access key was logged"
    );
}

fn base64_basic(login: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(login)
    )
}
