//! The ECR push rule's hand-off to the controller, as deployed: the
//! `EcrPushRule` EventPattern and InputTransformer and the Command of the
//! job definition it targets, all read from `cloudformation/mirrorfleet.yaml`,
//! are applied to the ECR user guide's sample "ECR Image Action" push event
//! the way EventBridge and AWS Batch apply them. The argv that results runs
//! the controller against moto and plans exactly the pushed image: one job,
//! for its row; the same repository's other tag, another repository with the
//! same tag, and the same repository and tag on another registry are left
//! alone. Events the rule must ignore (a delete, a failed push, a scan
//! result, an untagged push, and with a `RepositoryPrefix` the fleet's own
//! pushes under it) do not match its pattern.
//!
//! moto 5.2.5's `TestEventPattern` is a stub (an empty answer), and its
//! InputTransformer inserts strings without quotes, unlike EventBridge, so
//! both are implemented here for the forms the template uses.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use mirrorfleet_tests::*;
use serde_json::{Value, json};
use serde_norway::Value as Yaml;

const ACCOUNT: &str = "123456789012";
const REGION: &str = "us-east-1";

/// EventBridge matching for patterns of plain value lists: every key of the
/// pattern is in the event, and a leaf list matches a value (or any element
/// of an array value) equal to one of its entries.
fn matches(pattern: &Value, event: &Value) -> bool {
    match pattern {
        Value::Object(fields) => fields
            .iter()
            .all(|(k, p)| event.get(k).is_some_and(|e| matches(p, e))),
        Value::Array(options) => options.iter().any(|o| match o {
            // The field is there (`matches` was only called because it is).
            Value::Object(m) if m.get("exists") == Some(&Value::Bool(true)) => true,
            Value::Object(m) if m.contains_key("anything-but") => {
                let prefix = m["anything-but"]["prefix"]
                    .as_str()
                    .unwrap_or_else(|| panic!("only anything-but prefix is implemented: {o}"));
                event.as_str().is_some_and(|e| !e.starts_with(prefix))
            }
            Value::Object(_) | Value::Array(_) => panic!("not implemented here: {o}"),
            plain => match event {
                Value::Array(items) => items.contains(plain),
                e => e == plain,
            },
        }),
        other => panic!("not an EventBridge pattern: {other}"),
    }
}

/// A template value as JSON, with `!If` on the template's conditions and
/// `!Ref RepositoryPrefix` resolved for `prefix`.
fn pattern_json(doc: &Yaml, v: &Yaml, prefix: &str) -> Value {
    match v {
        Yaml::Tagged(t) => {
            let tag = t.tag.to_string();
            match tag.trim_start_matches('!') {
                "If" => {
                    let args = t.value.as_sequence().unwrap();
                    let name = args[0].as_str().unwrap();
                    let branch = if truth(doc, &doc["Conditions"][name], prefix) {
                        &args[1]
                    } else {
                        &args[2]
                    };
                    pattern_json(doc, branch, prefix)
                }
                "Ref" if t.value.as_str() == Some("RepositoryPrefix") => json!(prefix),
                other => panic!("!{other} is not resolved in a pattern by this test"),
            }
        }
        Yaml::Mapping(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    (
                        k.as_str().unwrap().to_string(),
                        pattern_json(doc, v, prefix),
                    )
                })
                .collect(),
        ),
        Yaml::Sequence(items) => {
            Value::Array(items.iter().map(|i| pattern_json(doc, i, prefix)).collect())
        }
        plain => serde_json::to_value(plain).unwrap(),
    }
}

/// A condition of the template (`!Not`, `!Equals`, `!Ref RepositoryPrefix`).
fn truth(doc: &Yaml, v: &Yaml, prefix: &str) -> bool {
    let Yaml::Tagged(t) = v else {
        panic!("not a condition: {v:?}")
    };
    let args = t.value.as_sequence().cloned().unwrap_or_default();
    match t.tag.to_string().trim_start_matches('!') {
        "Not" => !truth(doc, &args[0], prefix),
        "Equals" => pattern_json(doc, &args[0], prefix) == pattern_json(doc, &args[1], prefix),
        other => panic!("!{other} is not evaluated by this test"),
    }
}

/// EventBridge's InputTransformer: each `<name>` of the JSON template is
/// replaced by the value its `$.a.b` path picks, as JSON (a string with its
/// quotes, as in the user guide's "Simple JSON" example).
fn transform(paths: &BTreeMap<String, String>, template: &str, event: &Value) -> Value {
    let mut out = template.to_string();
    for (name, path) in paths {
        let keys = path.strip_prefix("$.").unwrap_or_else(|| panic!("{path}"));
        let value = keys.split('.').fold(event, |v, k| {
            v.get(k)
                .unwrap_or_else(|| panic!("{path} is not in {event}"))
        });
        let placeholder = format!("<{name}>");
        assert!(
            !out.contains(&format!("\"{placeholder}")),
            "placeholders inside JSON strings are not implemented here: {template}"
        );
        out = out.replace(&placeholder, &value.to_string());
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"))
}

/// A CloudFormation value: a string, `!Sub` or `!Ref` of `vars`.
fn resolve(v: &Yaml, vars: &BTreeMap<&str, String>) -> String {
    let var = |n: &str| {
        vars.get(n)
            .unwrap_or_else(|| panic!("{n} is not resolved by this test"))
            .clone()
    };
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Tagged(t) => match (t.tag.to_string().trim_start_matches('!'), &t.value) {
            ("Ref", Yaml::String(n)) => var(n),
            ("Sub", Yaml::String(s)) => {
                let (mut out, mut rest) = (String::new(), s.as_str());
                while let Some(i) = rest.find("${") {
                    let end = i + rest[i..].find('}').unwrap();
                    out.push_str(&rest[..i]);
                    out.push_str(&var(&rest[i + 2..end]));
                    rest = &rest[end + 1..];
                }
                out + rest
            }
            (tag, _) => panic!("!{tag} is not resolved by this test"),
        },
        other => panic!("{other:?} is not a string"),
    }
}

fn resource<'a>(doc: &'a Yaml, name: &str) -> &'a Yaml {
    doc["Resources"]
        .get(name)
        .unwrap_or_else(|| panic!("no resource {name} in the template"))
}

/// A one-platform OCI index pushed to the stack's ECR registry; its digest.
async fn push_ecr(stack: &Stack, repo: &str, tag: &str) -> String {
    let pusher = Pusher::new(Target {
        creds: Some(stack.ecr_creds.clone()),
        ..Target::plain(&stack.ecr)
    })
    .unwrap();
    let img = pusher
        .image(repo, false, ("linux", "amd64"), &[300], json!({}))
        .await
        .unwrap();
    pusher
        .index(repo, tag, false, vec![img], json!({}))
        .await
        .unwrap()
}

/// A Batch job queue in moto for the controller's workers, and the worker
/// job definition `definition` in it; returns the queue's ARN (what `!Ref`
/// of an `AWS::Batch::JobQueue` gives).
async fn batch_queue(stack: &Stack, name: &str, definition: &str) -> String {
    use aws_sdk_batch::types::*;
    let batch = moto_batch(stack);
    let role = moto_create_role(stack, name).await;
    let ce = batch
        .create_compute_environment()
        .compute_environment_name(name)
        .r#type(CeType::Unmanaged)
        .service_role(role)
        .send()
        .await
        .unwrap();
    let order = ComputeEnvironmentOrder::builder()
        .order(1)
        .compute_environment(ce.compute_environment_arn().unwrap())
        .build();
    let jq = batch
        .create_job_queue()
        .job_queue_name(name)
        .state(JqState::Enabled)
        .priority(1)
        .compute_environment_order(order)
        .send()
        .await
        .unwrap();
    let req = |t: ResourceType, v: &str| ResourceRequirement::builder().r#type(t).value(v);
    batch
        .register_job_definition()
        .job_definition_name(definition)
        .r#type(JobDefinitionType::Container)
        .container_properties(
            ContainerProperties::builder()
                .image("mirrorfleet:latest")
                .command("mirrorfleet-worker")
                .command("consume")
                .resource_requirements(req(ResourceType::Vcpu, "1").build())
                .resource_requirements(req(ResourceType::Memory, "512").build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    jq.job_queue_arn().unwrap().to_string()
}

#[tokio::test]
async fn the_push_rule_hands_the_sample_push_event_to_a_controller_run_of_that_image() {
    let stack = Stack::get();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cloudformation/mirrorfleet.yaml");
    let doc: Yaml = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let rule = &resource(&doc, "EcrPushRule")["Properties"];
    // The pattern as deployed with the default parameters (no prefix), and
    // with a RepositoryPrefix (the fleet's own pushes excluded).
    let pattern = pattern_json(&doc, &rule["EventPattern"], "");
    let prefixed = pattern_json(&doc, &rule["EventPattern"], "mirror/");
    let targets = rule["Targets"].as_sequence().unwrap();
    assert_eq!(targets.len(), 1, "{targets:?}");
    let target = &targets[0];
    let transformer = &target["InputTransformer"];
    let paths: BTreeMap<String, String> =
        serde_norway::from_value(transformer["InputPathsMap"].clone()).unwrap();
    let template = transformer["InputTemplate"].as_str().unwrap();
    // The job definition the rule submits, by its logical name.
    let Yaml::Tagged(def) = &target["BatchParameters"]["JobDefinition"] else {
        panic!("the target's JobDefinition is not a !Ref: {target:?}");
    };
    assert_eq!(def.tag.to_string(), "!Ref", "{def:?}");
    let def = resource(&doc, def.value.as_str().unwrap());
    let command = def["Properties"]["ContainerProperties"]["Command"]
        .as_sequence()
        .unwrap();

    // The user guide's sample, for an image of our own in our account.
    let (repo, tag) = (unique("push-rule"), unique("v"));
    let (other_repo, other_tag) = (unique("push-rule-other"), unique("v"));
    let digest = push_ecr(&stack, &repo, &tag).await;
    push_ecr(&stack, &repo, &other_tag).await;
    push_ecr(&stack, &other_repo, &tag).await;
    push_image(&stack, &repo, &tag).await;
    let event = json!({
        "version": "0",
        "id": "13cde686-328b-6117-af20-0e5566167482",
        "detail-type": "ECR Image Action",
        "source": "aws.ecr",
        "account": ACCOUNT,
        "time": "2019-11-16T01:54:34Z",
        "region": REGION,
        "resources": [],
        "detail": {
            "result": "SUCCESS",
            "repository-name": repo,
            "image-digest": digest,
            "action-type": "PUSH",
            "image-tag": tag
        }
    });
    assert!(
        matches(&pattern, &event),
        "{pattern} does not match {event}"
    );
    assert!(
        matches(&prefixed, &event),
        "{prefixed} does not match {event}"
    );
    let mut own = event.clone();
    own["detail"]["repository-name"] = json!(format!("mirror/{repo}"));
    assert!(matches(&pattern, &own));
    assert!(
        !matches(&prefixed, &own),
        "the fleet's own push matches {prefixed}"
    );
    let mut untagged = event.clone();
    untagged["detail"]
        .as_object_mut()
        .unwrap()
        .remove("image-tag");
    assert!(!matches(&pattern, &untagged) && !matches(&prefixed, &untagged));
    for (field, value) in [
        ("/detail/action-type", "DELETE"),
        ("/detail/result", "FAILURE"),
        ("/detail-type", "ECR Image Scan"),
    ] {
        let mut other = event.clone();
        *other.pointer_mut(field).unwrap() = json!(value);
        assert!(!matches(&pattern, &other), "{pattern} matches {other}");
    }

    // EventBridge's input to the Batch target, then Batch's substitution
    // (over the definition's own defaults) into the CloudFormation-resolved
    // Command.
    let input = transform(&paths, template, &event);
    let mut params: BTreeMap<String, String> = match &def["Properties"]["Parameters"] {
        Yaml::Null => BTreeMap::new(),
        defaults => serde_norway::from_value(defaults.clone()).unwrap(),
    };
    for (k, v) in input["Parameters"].as_object().unwrap() {
        let v = v.as_str().unwrap_or_else(|| panic!("parameter {k}: {v}"));
        params.insert(k.clone(), v.to_string());
    }
    let stack_name = unique("mf-push");
    let mut vars = BTreeMap::from([
        ("AWS::AccountId", ACCOUNT.to_string()),
        ("AWS::Region", REGION.to_string()),
        ("AWS::URLSuffix", "amazonaws.com".to_string()),
        ("AWS::StackName", stack_name.clone()),
    ]);
    // The worker definition the controller starts workers with, registered
    // under the name the template gives it.
    let worker_def = resolve(
        &resource(&doc, "WorkerJobDefinition")["Properties"]["JobDefinitionName"],
        &vars,
    );
    let job_queue = batch_queue(&stack, &stack_name, &worker_def).await;
    vars.insert("BatchJobQueue", job_queue.clone());
    let argv: Vec<String> = command
        .iter()
        .map(|c| {
            let s = resolve(c, &vars);
            match s.strip_prefix("Ref::") {
                Some(p) => params.get(p).unwrap_or_else(|| panic!("no {p}")).clone(),
                None => s,
            }
        })
        .collect();
    assert_eq!(argv[0], "mirrorfleet-controller", "{argv:?}");

    // A table with the pushed image's row and three that only look like it.
    let (mut env, queue, _) =
        control_setup(&stack, "push-rule", &[&stack.src, &stack.dst], 3).await;
    let ecr_host = format!("{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com");
    let settings = std::env::temp_dir().join(format!("{}.yaml", unique("mf-registries")));
    std::fs::write(
        &settings,
        format!(
            "registries:\n  {ecr_host}:\n    endpoint: {}\n    plain_http: true\n",
            stack.ecr
        ),
    )
    .unwrap();
    env.push((
        "MIRRORFLEET_REGISTRIES".into(),
        settings.display().to_string(),
    ));
    let dst = |name: &str, t: &str| format!("{}/{repo}/{name}:{t}", stack.dst);
    let pushed = (format!("{ecr_host}/{repo}:{tag}"), dst("pushed", &tag));
    let rows = [
        pushed.clone(),
        (
            format!("{ecr_host}/{repo}:{other_tag}"),
            dst("tag", &other_tag),
        ),
        (format!("{ecr_host}/{other_repo}:{tag}"), dst("repo", &tag)),
        (format!("{}/{repo}:{tag}", stack.src), dst("registry", &tag)),
    ];
    for (source, dest) in &rows {
        let (code, out, err) = run_env(
            "mirrorfleet-controller",
            &["table", "add", source, dest],
            &env,
        );
        assert_eq!(code, 0, "{out}{err}");
    }

    let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
    let (code, out, err) = run_env("mirrorfleet-controller", &args, &env);
    assert_eq!(code, 0, "{argv:?}\n{out}\n{err}");
    assert_eq!(queue_depth(&stack, &queue).await, 1, "{out}\n{err}");
    let got = moto_sqs(&stack)
        .receive_message()
        .queue_url(&queue)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    let [message] = got.messages() else {
        panic!("not one job: {got:?}");
    };
    let job: Value = serde_json::from_str(message.body().unwrap()).unwrap();
    assert_eq!(job["source"], pushed.0, "{job:#}");
    assert_eq!(job["destinations"], json!([pushed.1]), "{job:#}");
    assert_eq!(job["source_digest"], digest, "{job:#}");
    // And one worker, of the template's worker definition, in the queue:
    // statuses listed in lifecycle order, so a job moving on is not missed.
    use aws_sdk_batch::types::JobStatus::*;
    let mut workers = BTreeMap::new();
    for status in [
        Submitted, Pending, Runnable, Starting, Running, Succeeded, Failed,
    ] {
        let jobs = moto_batch(&stack)
            .list_jobs()
            .job_queue(&job_queue)
            .job_status(status)
            .send()
            .await
            .unwrap();
        for j in jobs.job_summary_list() {
            workers.insert(j.job_id().unwrap().to_string(), j.clone());
        }
    }
    let workers: Vec<_> = workers.into_values().collect();
    let [worker] = &workers[..] else {
        panic!("not one worker job in {job_queue}: {workers:?}");
    };
    let want = format!("job-definition/{worker_def}:");
    assert!(
        worker.job_definition().unwrap().contains(&want),
        "{worker:?}"
    );
    let listed = table_ls_json(&env);
    for (source, dest) in &rows {
        let row = listed
            .iter()
            .find(|r| r["destination"] == *dest)
            .unwrap_or_else(|| panic!("{dest} not in {listed:#?}"));
        let want = if *source == pushed.0 { "queued" } else { "new" };
        assert_eq!(row["state"], want, "{row:#}");
    }
}
