//! `cloudformation/mirror-role.yaml`, the role deployed in other accounts,
//! created in moto's CloudFormation and read back from moto's IAM:
//!
//! - the trust policy names exactly the fleet's role ARNs, with an
//!   `sts:ExternalId` condition when one is given and none when not;
//! - the permissions, evaluated for the calls mirrorfleet makes: a push role
//!   creates and pushes under its prefix only, in its regions only, and may
//!   use the named KMS keys for new repositories; a pull role reads and
//!   refuses every write;
//! - the role can be assumed through moto's STS (with the external id) and
//!   its credentials work. moto does not enforce trust policies, so this
//!   shows only the wiring: that the trust policy is right is shown above.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use mirrorfleet_tests::iam::{self, Policy, Statement};
use mirrorfleet_tests::*;
use serde_json::{Value, json};

/// Creates the stack, reads the role back, assumes it, deletes the stack and
/// prints all of it as JSON. argv: endpoint, stack, template, parameters
/// (JSON), external id to assume with ("" = none).
const CREATE: &str = r#"
import ast, json, sys, time
import boto3
endpoint, name, template, params, external_id = sys.argv[1:6]
params = json.loads(params)
kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
cfn, iam, sts = (boto3.client(s, **kw) for s in ("cloudformation", "iam", "sts"))
cfn.create_stack(StackName=name, TemplateBody=open(template).read(),
    Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
    Capabilities=["CAPABILITY_NAMED_IAM"])
for _ in range(120):
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    if not stack["StackStatus"].endswith("IN_PROGRESS"):
        break
    time.sleep(0.5)
out = {"status": stack["StackStatus"], "reason": stack.get("StackStatusReason"),
       "outputs": {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}}

def doc(d):
    # moto returns a role's own inline policy as Python's repr of the document.
    if isinstance(d, dict):
        return d
    try:
        return json.loads(d)
    except ValueError:
        return ast.literal_eval(d)

if out["status"] == "CREATE_COMPLETE":
    role_name = params["RoleName"]
    role = iam.get_role(RoleName=role_name)["Role"]
    out["role_arn"] = role["Arn"]
    out["trust"] = doc(role["AssumeRolePolicyDocument"])
    out["policies"] = {p: doc(iam.get_role_policy(RoleName=role_name, PolicyName=p)["PolicyDocument"])
                       for p in iam.list_role_policies(RoleName=role_name)["PolicyNames"]}
    out["attached"] = [p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"]]
    extra = {"ExternalId": external_id} if external_id else {}
    assumed = sts.assume_role(RoleArn=role["Arn"], RoleSessionName="mirrorfleet", **extra)
    c = assumed["Credentials"]
    me = boto3.client("sts", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=c["AccessKeyId"],
                      aws_secret_access_key=c["SecretAccessKey"], aws_session_token=c["SessionToken"]).get_caller_identity()
    out["assumed"] = {"user": assumed["AssumedRoleUser"]["Arn"], "caller": me["Arn"]}
cfn.delete_stack(StackName=name)
print(json.dumps(out))
"#;

/// What mirrorfleet does on a destination repository (whitespace-separated).
const PUSH: &str = "ecr:CreateRepository ecr:DescribeRepositories ecr:DescribeImages \
    ecr:ListImages ecr:InitiateLayerUpload ecr:UploadLayerPart \
    ecr:CompleteLayerUpload ecr:PutImage ecr:BatchCheckLayerAvailability \
    ecr:BatchGetImage ecr:GetDownloadUrlForLayer";

/// What it does on a source repository (and to list a whole registry).
const PULL: &str = "ecr:BatchGetImage ecr:GetDownloadUrlForLayer \
    ecr:BatchCheckLayerAvailability ecr:DescribeImages ecr:ListImages \
    ecr:DescribeRepositories";

/// The push actions that write.
const WRITES: &str = "ecr:CreateRepository ecr:InitiateLayerUpload ecr:UploadLayerPart \
    ecr:CompleteLayerUpload ecr:PutImage";

/// Writes mirrorfleet never needs.
const NEVER: &str = "ecr:BatchDeleteImage ecr:DeleteRepository ecr:PutImageTagMutability \
    ecr:PutImageScanningConfiguration ecr:SetRepositoryPolicy ecr:PutLifecyclePolicy \
    ecr:TagResource";

const KEY: &str = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";

/// The fleet stack's three roles, named the way CloudFormation names them.
fn fleet_roles() -> Vec<String> {
    ["ControllerRole-AbC1", "WorkerRole-DeF2", "CopyRole-GhI3"]
        .iter()
        .map(|r| format!("arn:aws:iam::111122223333:role/mf-{r}"))
        .collect()
}

fn repo(region: &str, name: &str) -> String {
    format!("arn:aws:ecr:{region}:{}:repository/{name}", iam::ACCOUNT)
}

/// A string or a list of them.
fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

/// Creates the stack with `params` (and a unique RoleName), returns what
/// the script printed, and checks what every variant shares.
fn create(params: Value, external_id: &str) -> Value {
    let stack = Stack::get();
    let name = unique("mf-role").replace('_', "-");
    let role_name = format!("{name}-mirror");
    let mut params = params;
    params["RoleName"] = json!(role_name);
    params["FleetRoleArns"] = json!(fleet_roles().join(","));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(mirrorfleet_tests::moto::venv_python())
        .args(["-c", CREATE, &stack.moto, &name])
        .arg(root.join("cloudformation/mirror-role.yaml"))
        .args([params.to_string().as_str(), external_id])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["status"], "CREATE_COMPLETE", "{created:#}");
    let arn = format!("arn:aws:iam::{}:role/{role_name}", iam::ACCOUNT);
    assert_eq!(created["role_arn"], arn.as_str());
    assert_eq!(created["outputs"]["RoleArn"], arn.as_str());
    assert_eq!(
        created["outputs"]["RegistryHost"],
        format!("{}.dkr.ecr.us-east-1.amazonaws.com", iam::ACCOUNT)
    );
    assert_eq!(created["attached"], json!([]), "only inline policies");

    // Trusted: exactly the fleet's roles, to assume the role, nothing else.
    let trust = &created["trust"]["Statement"];
    assert_eq!(trust.as_array().map(Vec::len), Some(1), "{trust:#}");
    let t = &trust[0];
    assert_eq!(
        (&t["Effect"], &t["Action"]),
        (&json!("Allow"), &json!("sts:AssumeRole"))
    );
    let principals: BTreeSet<String> = strings(&t["Principal"]["AWS"]).into_iter().collect();
    assert_eq!(principals, fleet_roles().into_iter().collect(), "{t:#}");
    if external_id.is_empty() {
        assert!(t.get("Condition").is_none(), "{t:#}");
    } else {
        assert_eq!(
            t["Condition"],
            json!({"StringEquals": {"sts:ExternalId": external_id}})
        );
    }

    // Assumed with the fleet's session name; the credentials are the role's.
    let session = format!(
        "arn:aws:sts::{}:assumed-role/{role_name}/mirrorfleet",
        iam::ACCOUNT
    );
    assert_eq!(created["assumed"]["user"], session.as_str());
    assert_eq!(created["assumed"]["caller"], session.as_str());
    created
}

/// What the role may do: the statements of all its policies, each in the
/// regions its `aws:RequestedRegion` condition names (if any). Other
/// condition keys are ignored, which can only allow more than IAM does: a
/// refusal found here is a refusal in AWS.
fn policy(created: &Value) -> Policy {
    let mut statements = Vec::new();
    for doc in created["policies"].as_object().unwrap().values() {
        for s in doc["Statement"].as_array().unwrap() {
            assert_eq!(s["Effect"], "Allow", "only Allow is evaluated: {s:#}");
            let regions = strings(&s["Condition"]["StringEquals"]["aws:RequestedRegion"]);
            statements.push(Statement {
                sid: s["Sid"].as_str().map(str::to_string),
                actions: strings(&s["Action"]),
                resources: strings(&s["Resource"]),
                regions: (!regions.is_empty()).then_some(regions),
            });
        }
    }
    Policy {
        role: "mirror role".into(),
        statements,
    }
}

#[test]
fn a_push_role_trusts_the_fleet_with_its_external_id_and_pushes_only_under_its_prefix() {
    let created = create(
        json!({"Access": "push", "RepositoryPrefix": "mirror/", "ExternalId": "mf-prod-42",
               "Regions": "us-east-1,eu-west-1", "KmsKeyArns": KEY}),
        "mf-prod-42",
    );
    let names: Vec<&String> = created["policies"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["mirrorfleet-ecr", "mirrorfleet-kms"]);
    let p = policy(&created);
    for region in ["us-east-1", "eu-west-1"] {
        assert!(p.allows_in("ecr:GetAuthorizationToken", "*", region));
        for name in ["mirror/app", "mirror/team/app"] {
            for action in PUSH.split_whitespace() {
                assert!(
                    p.allows(action, &repo(region, name)),
                    "{action} {name} {region}"
                );
            }
        }
        for name in ["other/app", "mirrorx/app", "app"] {
            for action in WRITES.split_whitespace() {
                assert!(!p.allows(action, &repo(region, name)), "{action} {name}");
            }
        }
        for action in NEVER.split_whitespace() {
            assert!(!p.allows(action, &repo(region, "mirror/app")), "{action}");
        }
    }
    // Exactly the ECR actions mirrorfleet calls, and none outside Regions.
    let mut wanted: BTreeSet<String> = PUSH.split_whitespace().map(str::to_string).collect();
    wanted.insert("ecr:GetAuthorizationToken".into());
    assert_eq!(p.actions("ecr"), wanted);
    assert!(!p.allows_in("ecr:GetAuthorizationToken", "*", "ap-south-1"));
    assert!(!p.allows("ecr:PutImage", &repo("ap-south-1", "mirror/app")));

    // The named key, for CreateRepository through ECR only.
    let kms = &created["policies"]["mirrorfleet-kms"]["Statement"][0];
    assert_eq!(strings(&kms["Resource"]), [KEY]);
    assert_eq!(
        strings(&kms["Action"]),
        ["kms:DescribeKey", "kms:CreateGrant"]
    );
    assert_eq!(
        kms["Condition"],
        json!({"StringLike": {"kms:ViaService": "ecr.*"}})
    );
    assert!(p.allows("kms:CreateGrant", KEY));
    assert!(!p.allows("kms:CreateGrant", &KEY.replace("1234abcd", "99999999")));
    assert!(!p.allows("kms:Decrypt", KEY));
}

#[test]
fn a_pull_role_trusts_the_fleet_without_an_external_id_and_writes_nothing() {
    // KmsKeyArns and RepositoryPrefix mean nothing to a pull role.
    let created = create(
        json!({"Access": "pull", "RepositoryPrefix": "mirror/", "KmsKeyArns": KEY}),
        "",
    );
    let names: Vec<&String> = created["policies"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["mirrorfleet-ecr"]);
    // Regions left empty: the stack's own region only.
    let p = policy(&created);
    assert!(p.allows_in("ecr:GetAuthorizationToken", "*", "us-east-1"));
    for name in ["team/app", "mirror/app", "*"] {
        for action in PULL.split_whitespace() {
            assert!(
                p.allows(action, &repo("us-east-1", name)),
                "{action} {name}"
            );
        }
        for action in WRITES.split_whitespace().chain(NEVER.split_whitespace()) {
            assert!(
                !p.allows(action, &repo("us-east-1", name)),
                "{action} {name}"
            );
        }
    }
    let mut wanted: BTreeSet<String> = PULL.split_whitespace().map(str::to_string).collect();
    wanted.insert("ecr:GetAuthorizationToken".into());
    assert_eq!(p.actions("ecr"), wanted);
    assert!(p.actions("kms").is_empty());
    assert!(!p.allows_in("ecr:GetAuthorizationToken", "*", "eu-west-1"));
    assert!(!p.allows("ecr:BatchGetImage", &repo("eu-west-1", "team/app")));
}
