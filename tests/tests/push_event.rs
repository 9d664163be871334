//! A push event costs the same however large the table: the controller finds
//! the rows it concerns through the source index (`BatchGetItem` of the
//! pushed image's key, a `Query` each for its repository's and registry's
//! rows) and never scans. DynamoDB calls are counted by a gate in front of
//! moto. A row typed by hand (without the index attribute) is indexed by
//! the next scheduled run, after which events find it too.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use aws_sdk_dynamodb::types::AttributeValue;
use mirrorfleet_tests::gate::AwsGate;
use mirrorfleet_tests::iam::Policy;
use mirrorfleet_tests::*;
use serde_json::Value;

/// The environment with AWS calls sent through `gate`.
fn via(env: &Env, gate: &AwsGate) -> Env {
    env.iter()
        .map(|(k, v)| match k.as_str() {
            "AWS_ENDPOINT_URL" => (k.clone(), gate.url.clone()),
            _ => (k.clone(), v.clone()),
        })
        .collect()
}

/// The DynamoDB actions of the calls in `gate`'s log after the first `from`.
fn dynamo_calls(gate: &AwsGate, from: usize) -> Vec<String> {
    let mut calls: Vec<String> = gate.log()[from..]
        .iter()
        .filter(|c| c.action.starts_with("dynamodb:"))
        .map(|c| c.action.clone())
        .collect();
    calls.sort();
    calls
}

/// A dry run for a push of `repo:tag` to `host`: the plan's rows, and the
/// DynamoDB calls it made.
fn event(
    env: &Env,
    gate: &AwsGate,
    host: &str,
    repo: &str,
    tag: &str,
) -> (Vec<Value>, Vec<String>) {
    let before = gate.log().len();
    let (code, out, err) = run_env(
        "mirrorfleet-controller",
        &[
            "run",
            "--dry-run",
            "--output",
            "json",
            "--registry-host",
            host,
            "--repository",
            repo,
            "--tag",
            tag,
        ],
        &via(env, gate),
    );
    assert_eq!(code, 0, "{out}{err}");
    let plan: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    (plan, dynamo_calls(gate, before))
}

fn sources(plan: &[Value]) -> Vec<String> {
    let mut s: Vec<String> = plan
        .iter()
        .map(|p| p["source"].as_str().unwrap().to_string())
        .collect();
    s.sort();
    s.dedup();
    s
}

#[tokio::test]
async fn a_push_reads_three_requests_of_the_table_and_never_scans() {
    let stack = Stack::get();
    let (env, _, _) = control_setup(&stack, "mf-event", &[&stack.src, &stack.dst], 3).await;
    let table = env
        .iter()
        .find(|(k, _)| k == "MIRRORFLEET_TABLE")
        .unwrap()
        .1
        .clone();
    let gate = AwsGate::start(&stack.moto, Policy::everything()).unwrap();
    let ns = unique("event");
    let app = format!("{ns}/app");
    let digest = push_image(&stack, &app, "v1").await;
    push_image(&stack, &app, "v2").await;
    push_image(&stack, &format!("{ns}/web"), "v1").await;
    let (src, dst) = (&stack.src, &stack.dst);
    let image = format!("{src}/{app}:v1");
    let repository = format!("{src}/{app}");
    let wide = format!("{src}/{ns}/*");
    let mut yaml = format!(
        "mirrors:\n\
         - source: {image}\n  destinations: [{dst}/{ns}/image:v1]\n\
         - source: {src}/{app}:v2\n  destinations: [{dst}/{ns}/image:v2]\n\
         - source: {repository}\n  tags: {{include: ['^v1$']}}\n  destinations: [{dst}/{ns}/repo]\n\
         - source: {wide}\n  repositories: {{include: ['{app}']}}\n  tags: {{include: ['^v1$']}}\n  destinations: [{dst}/{ns}/wide/]\n"
    );
    // Rows of other repositories, which no event here concerns (disabled,
    // so the scheduled run below does not fail on their missing sources).
    for i in 0..40 {
        yaml.push_str(&format!(
            "- source: {src}/{ns}/other-{i}:v1\n  destinations: [{dst}/{ns}/other-{i}:v1]\n  enabled: false\n"
        ));
    }
    table_import(&env, &yaml);
    // A repository row typed by hand in the console: no index attribute.
    let web = format!("{src}/{ns}/web");
    moto_dynamodb(&stack)
        .put_item()
        .table_name(&table)
        .item("source", AttributeValue::S(web.clone()))
        .item("destinations", AttributeValue::S(format!("{dst}/{ns}/web")))
        .item(
            "tags",
            AttributeValue::M([("include".to_string(), AttributeValue::S("^v1$".into()))].into()),
        )
        .send()
        .await
        .unwrap();

    // A tag push: the image row by key, the repository and registry rows
    // by the index; nothing else read.
    let (plan, calls) = event(&env, &gate, src, &app, "v1");
    assert_eq!(sources(&plan), {
        let mut want = vec![image.clone(), repository.clone(), wide.clone()];
        want.sort();
        want
    });
    assert_eq!(
        calls,
        ["dynamodb:BatchGetItem", "dynamodb:Query", "dynamodb:Query"],
        "{plan:#?}"
    );

    // A signature pushed next to v1: every image row of the repository is
    // asked (the one whose digest it names is checked), with three queries.
    let sig = format!("{}.sig", digest.replace(':', "-"));
    let (plan, calls) = event(&env, &gate, src, &app, &sig);
    assert!(sources(&plan).contains(&image), "{plan:#?}");
    assert!(
        !sources(&plan).iter().any(|s| s.contains("/other-")),
        "{plan:#?}"
    );
    assert_eq!(
        calls,
        ["dynamodb:Query", "dynamodb:Query", "dynamodb:Query"],
        "{plan:#?}"
    );

    // The hand-typed row is not in the index until a scheduled run puts it there.
    let (plan, calls) = event(&env, &gate, src, &format!("{ns}/web"), "v1");
    assert!(plan.is_empty(), "{plan:#?}");
    assert!(!calls.iter().any(|c| c == "dynamodb:Scan"), "{calls:?}");
    let (code, out, err) = run_env("mirrorfleet-controller", &["run"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let item = moto_dynamodb(&stack)
        .get_item()
        .table_name(&table)
        .key("source", AttributeValue::S(web.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        item.item().and_then(|i| i.get("source_scope")),
        Some(&AttributeValue::S(format!("repository#{src}/{ns}/web"))),
        "{item:?}"
    );
    let (plan, calls) = event(&env, &gate, src, &format!("{ns}/web"), "v1");
    assert_eq!(sources(&plan), [web], "{plan:#?}");
    assert!(!calls.iter().any(|c| c == "dynamodb:Scan"), "{calls:?}");
}

/// `table create` on a table made before the index adds the index; the
/// rows then carry their scope from the next write or scheduled run.
#[tokio::test]
async fn table_create_adds_the_index_to_an_older_table() {
    let stack = Stack::get();
    let table = unique("mf-old-table");
    let ddb = moto_dynamodb(&stack);
    use aws_sdk_dynamodb::types::*;
    ddb.create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("source")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("source")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let env = control_env(&stack, &table, "unused", &[]);
    let (code, out, err) = run_env("mirrorfleet-controller", &["table", "create"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("added its source index by-source-scope"),
        "{out}"
    );
    let described = ddb
        .describe_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    let names: Vec<&str> = described
        .table()
        .unwrap()
        .global_secondary_indexes()
        .iter()
        .filter_map(|i| i.index_name())
        .collect();
    assert_eq!(names, ["by-source-scope"]);
    let (code, out, err) = run_env("mirrorfleet-controller", &["table", "create"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), format!("table {table} already exists"));
}
