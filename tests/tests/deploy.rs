//! The CloudFormation stack, created in moto, then used: the controller and
//! the worker run against the table, queue and job definitions it made.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use mirrorfleet_tests::*;
use serde_json::Value;

/// The EMF documents a component wrote to stderr.
fn emf_lines(stderr: &str, component: &str) -> Vec<Value> {
    let docs: Vec<Value> = stderr
        .lines()
        .filter(|l| l.contains("\"_aws\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["Component"] == component)
        .collect();
    assert!(!docs.is_empty(), "no EMF line from {component}: {stderr}");
    docs
}

fn create_stack(stack: &Stack, name: &str, settings_parameter: &str) -> Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(mirrorfleet_tests::moto::venv_python())
        .arg(root.join("scripts/moto_stack.py"))
        .arg(&stack.moto)
        .arg(name)
        .arg(root.join("cloudformation/mirrorfleet.yaml"))
        .arg(settings_parameter)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn the_stack_creates_what_the_fleet_uses_and_the_fleet_runs_on_it() {
    let stack = Stack::get();
    let name = unique("mf-stack").replace('_', "-");
    // The registry settings every job reads, in an SSM parameter the stack
    // is given: the stack's two plain registries speak HTTP, and the
    // basic-auth one's password exists only in a Secrets Manager secret.
    let (user, pass) = stack.basic_creds.split_once(':').unwrap();
    let secret = moto_secrets(&stack)
        .create_secret()
        .name(format!("{name}/basic"))
        .secret_string(serde_json::json!({"username": user, "password": pass}).to_string())
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_string();
    let settings = format!("/mirrorfleet/{name}/registries");
    moto_ssm(&stack)
        .put_parameter()
        .name(&settings)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .value(format!(
            "registries:\n  {}:\n    plain_http: true\n  {}:\n    plain_http: true\n  {}:\n    plain_http: true\n    credentials_secret: {secret}\n",
            stack.src, stack.dst, stack.basic
        ))
        .send()
        .await
        .unwrap();
    let created = create_stack(&stack, &name, &settings);
    assert_eq!(created["status"], "CREATE_COMPLETE", "{created:#}");
    // moto silently skips types it does not know: check the ones we rely on.
    for (logical, kind) in [
        ("MirrorTable", "AWS::DynamoDB::Table"),
        ("JobQueue", "AWS::SQS::Queue"),
        ("DeadLetterQueue", "AWS::SQS::Queue"),
        ("ComputeEnvironment", "AWS::Batch::ComputeEnvironment"),
        ("BatchJobQueue", "AWS::Batch::JobQueue"),
        ("EventJobQueue", "AWS::Batch::JobQueue"),
        ("ControllerJobDefinition", "AWS::Batch::JobDefinition"),
        ("ControllerEventJobDefinition", "AWS::Batch::JobDefinition"),
        ("WorkerJobDefinition", "AWS::Batch::JobDefinition"),
        ("CopyJobDefinition", "AWS::Batch::JobDefinition"),
        ("ControllerRole", "AWS::IAM::Role"),
        ("WorkerRole", "AWS::IAM::Role"),
        ("CopyRole", "AWS::IAM::Role"),
        ("RegistryAccessPolicy", "AWS::IAM::ManagedPolicy"),
        ("RegistrySecretsPolicy", "AWS::IAM::ManagedPolicy"),
        ("DestinationRolesPolicy", "AWS::IAM::ManagedPolicy"),
        ("SourceRolesPolicy", "AWS::IAM::ManagedPolicy"),
        ("RegistrySettingsPolicy", "AWS::IAM::ManagedPolicy"),
        ("BatchJobFailedRule", "AWS::Events::Rule"),
        ("ScheduleRule", "AWS::Events::Rule"),
        ("EcrPushRule", "AWS::Events::Rule"),
        ("WorkerLogGroup", "AWS::Logs::LogGroup"),
        ("AlarmTopic", "AWS::SNS::Topic"),
    ] {
        let r = &created["resources"][logical];
        assert_eq!(r["type"], kind, "{logical}: {created:#}");
        assert_eq!(r["status"], "CREATE_COMPLETE", "{logical}");
    }
    let outputs = &created["outputs"];
    let table = outputs["TableName"].as_str().unwrap().to_string();
    let queue = outputs["QueueUrl"].as_str().unwrap().to_string();
    let dlq = outputs["DeadLetterQueueUrl"].as_str().unwrap().to_string();
    let job_queue = outputs["JobQueue"].as_str().unwrap().to_string();

    // The queue dead-letters after 3 receives.
    let attrs = moto_sqs(&stack)
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .unwrap();
    let redrive: Value = serde_json::from_str(
        &attrs.attributes().unwrap()[&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy],
    )
    .unwrap();
    assert_eq!(
        redrive["maxReceiveCount"]
            .as_u64()
            .or_else(|| redrive["maxReceiveCount"]
                .as_str()
                .and_then(|s| s.parse().ok())),
        Some(3)
    );

    // The fleet, on the stack's resources, started exactly as the job
    // definitions say: their command and environment (the table, the queue,
    // JSON logs, EMF metrics and the settings parameter). Only moto's
    // endpoint and keys are added, and trace-level logging.
    let job = |def: String| {
        let stack = stack.clone();
        async move {
            let defs = moto_batch(&stack)
                .describe_job_definitions()
                .job_definition_name(&def)
                .send()
                .await
                .unwrap();
            let d = defs
                .job_definitions()
                .first()
                .unwrap_or_else(|| panic!("no job definition {def}"));
            let c = d.container_properties().unwrap();
            let mut env: Vec<(String, String)> = c
                .environment()
                .iter()
                .map(|kv| {
                    (
                        kv.name().unwrap().to_string(),
                        kv.value().unwrap().to_string(),
                    )
                })
                .collect();
            env.sort();
            (c.command().to_vec(), env)
        }
    };
    let (controller_cmd, controller_env) = job(format!("{name}-controller")).await;
    let (worker_cmd, worker_env) = job(format!("{name}-worker")).await;
    for e in [&controller_env, &worker_env] {
        assert!(
            e.contains(&(
                "MIRRORFLEET_REGISTRIES".to_string(),
                format!("ssm:{settings}")
            )),
            "{e:?}"
        );
    }
    assert!(controller_env.contains(&("MIRRORFLEET_TABLE".to_string(), table.clone())));
    assert!(worker_env.contains(&("MIRRORFLEET_QUEUE_URL".to_string(), queue.clone())));
    let with_moto = |job: &[(String, String)]| -> Vec<(String, String)> {
        moto_env(&stack)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .chain(job.iter().cloned())
            .chain([("MIRRORFLEET_LOG".to_string(), "trace".to_string())])
            .collect()
    };
    let controller_env = with_moto(&controller_env);
    let worker_env = with_moto(&worker_env);
    let controller: Vec<(&str, &str)> = controller_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let worker: Vec<(&str, &str)> = worker_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let argv = |cmd: &[String], bin: &str| -> Vec<String> {
        assert_eq!(cmd[0], bin, "{cmd:?}");
        cmd[1..].to_vec()
    };
    let no_password = |out: &str| assert!(!out.contains(pass), "the password was logged");

    // The source is in the basic-auth registry: the ad-hoc copy job's
    // command (read from the template: moto mangles that job definition's
    // empty Parameters), with the worker's settings, puts it there.
    let repo = unique("stack");
    let digest = push_image(&stack, &repo, "v1").await;
    let src = format!("{}/{repo}:v1", stack.basic);
    let dest = format!("{}/{repo}:v1", stack.dst);
    let copy_cmd = template_command(
        "CopyJobDefinition",
        &[
            ("source", &format!("{}/{repo}:v1", stack.src)),
            ("dest", &src),
        ],
    );
    let copy_args = argv(&copy_cmd, "mirrorfleet-worker");
    let copy_args: Vec<&str> = copy_args.iter().map(String::as_str).collect();
    let (code, out, err) = run_bin("mirrorfleet-worker", &copy_args, &worker);
    assert_eq!(code, 0, "{out}{err}");
    no_password(&format!("{out}{err}"));
    let (code, out, err) = run_bin(
        "mirrorfleet-controller",
        &["table", "add", &src, &dest],
        &controller,
    );
    assert_eq!(code, 0, "{out}{err}");
    // The controller job's command names the stack's job queue and worker
    // job definition; moto's Batch takes the workers it starts.
    let args = argv(&controller_cmd, "mirrorfleet-controller");
    assert!(
        args.contains(&format!("{name}-worker")) && args.contains(&job_queue),
        "{args:?}"
    );
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--output", "json"]);
    let (code, out, err) = run_bin("mirrorfleet-controller", &args, &controller);
    assert_eq!(code, 0, "{out}{err}");
    no_password(&format!("{out}{err}"));
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["jobs_enqueued"], 1, "{s}");
    assert_eq!(s["workers_started"], 1, "{s}");
    let emf = emf_lines(&err, "controller");
    assert_eq!(emf[0]["JobsEnqueued"], 1.0, "{err}");
    assert_eq!(
        emf[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        format!("mirrorfleet/{name}")
    );
    // The worker job's command, but for the idle wait: a minute in the job
    // definition, two seconds here.
    let mut args = argv(&worker_cmd, "mirrorfleet-worker");
    let idle = args.iter().position(|a| a == "--exit-when-idle").unwrap();
    args[idle + 1] = "2s".into();
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--wait", "1s", "--output", "json"]);
    let (code, out, err) = run_bin("mirrorfleet-worker", &args, &worker);
    assert_eq!(code, 0, "{out}{err}");
    no_password(&format!("{out}{err}"));
    let emf = emf_lines(&err, "worker");
    assert_eq!(emf[0]["ImagesSynced"], 1.0, "{err}");
    assert!(emf[0]["BytesCopied"].as_f64().unwrap() > 0.0);
    assert!(emf[0]["QueueLagSeconds"].as_f64().is_some());
    // Every log line about the job carries its id.
    let synced: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("destination synced"))
        .collect();
    assert_eq!(synced.len(), 1, "{err}");
    for line in synced {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(v["span"]["job_id"].is_string(), "{line}");
        assert_eq!(v["span"]["source"], src, "{line}");
    }
    assert_eq!(Skopeo::plain().digest(&dest).unwrap(), digest);
    assert_eq!(queue_depth(&stack, &queue).await, 0);
    assert_eq!(queue_depth(&stack, &dlq).await, 0);
    let (code, out, _) = run_bin(
        "mirrorfleet-controller",
        &["table", "ls", "--output", "json"],
        &controller,
    );
    assert_eq!(code, 0);
    let rows: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["state"], "synced", "{rows:#}");
}

/// A job definition's `Command` in the template, with the Batch parameters
/// (`Ref::name`) substituted as Batch does.
fn template_command(job_definition: &str, parameters: &[(&str, &str)]) -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("cloudformation/mirrorfleet.yaml")).unwrap();
    let doc: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let cmd = doc["Resources"][job_definition]["Properties"]["ContainerProperties"]["Command"]
        .as_sequence()
        .unwrap();
    cmd.iter()
        .map(|a| {
            let a = a
                .as_str()
                .unwrap_or_else(|| panic!("{job_definition}: {a:?} is not plain"));
            match a.strip_prefix("Ref::") {
                Some(p) => parameters
                    .iter()
                    .find(|(k, _)| *k == p)
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_else(|| panic!("no parameter {p}")),
                None => a.to_string(),
            }
        })
        .collect()
}

/// The template's operations, read from it: alarms reach the topic (a key
/// CloudWatch and EventBridge may use, a topic policy for EventBridge, an
/// alarm on row errors, a rule on failed Batch jobs), failed copies count
/// once each, and the ad-hoc copy job retries exit code 3 only.
#[test]
fn alarms_can_arrive_and_the_copy_job_retries_transient_failures() {
    use serde_norway::Value as Yaml;
    let text = std::fs::read_to_string(mirrorfleet_tests::iam::template_path()).unwrap();
    let doc: Yaml = serde_norway::from_str(&text).unwrap();
    let res = &doc["Resources"];
    let flat = |v: &Yaml| serde_norway::to_string(v).unwrap();

    // The topic is under the stack's key (or the user's), never alias/aws/sns.
    let topic_key = flat(&res["AlarmTopic"]["Properties"]["KmsMasterKeyId"]);
    assert!(!topic_key.contains("alias/aws/sns"), "{topic_key}");
    assert!(
        topic_key.contains("AlarmKey") && topic_key.contains("AlarmKmsKeyArn"),
        "{topic_key}"
    );
    let statements = res["AlarmKey"]["Properties"]["KeyPolicy"]["Statement"]
        .as_sequence()
        .unwrap();
    let grant = statements
        .iter()
        .find(|s| flat(&s["Principal"]).contains("cloudwatch.amazonaws.com"))
        .expect("the key policy grants CloudWatch");
    let services = flat(&grant["Principal"]["Service"]);
    assert!(services.contains("events.amazonaws.com"), "{services}");
    let actions = flat(&grant["Action"]);
    for a in ["kms:GenerateDataKey*", "kms:Decrypt"] {
        assert!(actions.contains(a), "{a} missing: {actions}");
    }
    assert_eq!(
        res["AlarmKey"]["Properties"]["EnableKeyRotation"],
        Yaml::Bool(true)
    );

    // EventBridge may publish failed Batch jobs to the topic.
    let rule = &res["BatchJobFailedRule"]["Properties"];
    assert_eq!(
        flat(&rule["EventPattern"]["detail"]["status"]).trim(),
        "- FAILED"
    );
    assert!(flat(&rule["Targets"]).contains("AlarmTopic"));
    let policy = flat(&res["AlarmTopicPolicy"]["Properties"]["PolicyDocument"]);
    assert!(
        policy.contains("events.amazonaws.com") && policy.contains("sns:Publish"),
        "{policy}"
    );
    assert!(flat(&res["RowsFailedAlarm"]["Properties"]["AlarmActions"]).contains("AlarmTopic"));
    assert_eq!(
        res["RowsFailedAlarm"]["Properties"]["MetricName"].as_str(),
        Some("RowsFailed")
    );

    // Each failed destination is one log line the metric filter counts: the
    // worker's "destination failed", the ad-hoc copy's "copy failed", each
    // logged in one place only (the engine says something else).
    let pattern = res["FailedCopyMetric"]["Properties"]["FilterPattern"]
        .as_str()
        .unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (message, file) in [
        ("destination failed", "common/src/control/consume.rs"),
        ("copy failed", "worker/src/copy.rs"),
    ] {
        assert!(
            pattern.contains(&format!("$.message = \"{message}\"")),
            "{pattern}"
        );
        let mut places = Vec::new();
        for dir in ["common/src", "worker/src", "controller/src"] {
            let out = Command::new("grep")
                .args(["-rln", &format!("\"{message}\""), dir])
                .current_dir(&root)
                .output()
                .unwrap();
            places.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_string),
            );
        }
        assert_eq!(places, [file], "{message:?} is logged in {places:?}");
    }

    // Every job definition reads the registry settings parameter, when given.
    for def in [
        "ControllerJobDefinition",
        "ControllerEventJobDefinition",
        "WorkerJobDefinition",
        "CopyJobDefinition",
    ] {
        let env = flat(&res[def]["Properties"]["ContainerProperties"]["Environment"]);
        assert!(
            env.contains("HasRegistrySettings")
                && env.contains("MIRRORFLEET_REGISTRIES")
                && env.contains("ssm:${RegistrySettingsParameter}"),
            "{def}: {env}"
        );
    }

    // The copy job retries exit code 3 (transient) and nothing else.
    let retry = &res["CopyJobDefinition"]["Properties"]["RetryStrategy"];
    assert!(retry["Attempts"].as_u64().unwrap() > 1);
    let on_exit: Vec<(String, String)> = retry["EvaluateOnExit"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["OnExitCode"].as_str().unwrap().to_string(),
                e["Action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        on_exit,
        [
            ("3".to_string(), "RETRY".to_string()),
            ("*".to_string(), "EXIT".to_string())
        ]
    );
}

/// Mirror roles in other accounts: the controller may assume them as well as
/// the workers and the copy job (it HEADs sources and destinations there),
/// and the settings parameter is the only one any role may read.
#[test]
fn every_role_that_reaches_other_accounts_may_assume_their_roles() {
    use mirrorfleet_tests::iam::{Policy, template_path};
    let push = "arn:aws:iam::210987654321:role/mirror-push";
    let pull = "arn:aws:iam::210987654322:role/mirror-pull";
    let params: std::collections::BTreeMap<String, String> = [
        ("DestinationRoleArns", push),
        ("SourceRoleArns", pull),
        ("RegistrySettingsParameter", "/mirrorfleet/registries"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let settings = "arn:aws:ssm:us-east-1:123456789012:parameter/mirrorfleet/registries";
    for role in ["ControllerRole", "WorkerRole", "CopyRole"] {
        let p = Policy::for_role(&template_path(), role, &params, true).unwrap();
        assert!(
            p.allows("sts:AssumeRole", push),
            "{role} cannot assume {push}"
        );
        assert!(
            p.allows("sts:AssumeRole", pull),
            "{role} cannot assume {pull}"
        );
        assert!(
            p.allows("ssm:GetParameter", settings),
            "{role} cannot read {settings}"
        );
        assert!(
            !p.allows(
                "ssm:GetParameter",
                "arn:aws:ssm:us-east-1:123456789012:parameter/other"
            ),
            "{role} may read any parameter"
        );
        assert!(
            !p.allows("sts:AssumeRole", "arn:aws:iam::210987654321:role/admin"),
            "{role} may assume any role"
        );
    }
}
