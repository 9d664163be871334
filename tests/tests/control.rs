//! The control plane end to end: rows → controller → queue → worker →
//! images at the destinations → status in the table. Against moto (DynamoDB,
//! SQS, Batch) and the local registries; local mode against a YAML file.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use mirrorfleet_tests::*;
use mirrorfleet_tests::{run_env as run, table_ls_json as table_json};
use serde_json::{Value, json};

/// A fresh table and queue (DLQ after 3 receives), plain HTTP for the
/// local registries.
async fn setup(stack: &Stack, name: &str) -> (Env, String, String) {
    control_setup(stack, name, &[&stack.src, &stack.dst, &stack.basic], 3).await
}

/// `table add SOURCE DESTS`, which must succeed.
fn add_row(env: &Env, source: &str, dests: &str) {
    let (code, out, err) = run(
        "mirrorfleet-controller",
        &["table", "add", source, dests],
        env,
    );
    assert_eq!(code, 0, "{out}{err}");
}

fn state_of(rows: &[Value], dest: &str) -> (String, Value) {
    let r = rows
        .iter()
        .find(|r| r["destination"] == dest)
        .unwrap_or_else(|| panic!("{dest} not in {rows:#?}"));
    (
        r["state"].as_str().unwrap_or_default().to_string(),
        r["status"].clone(),
    )
}

/// A mirror file of its own for a local-mode test.
fn mirrors_file(name: &str, yaml: String) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mirrors.yaml");
    std::fs::write(&file, yaml).unwrap();
    file
}

/// `sync --output json` over the local source and destination registries,
/// which must succeed; returns its summary.
fn sync_json(stack: &Stack, file: &std::path::Path) -> Value {
    let plain = format!("{},{}", stack.src, stack.dst);
    let (code, out, err) = run_bin(
        "mirrorfleet-controller",
        &[
            "sync",
            "--plain-http",
            &plain,
            "--output",
            "json",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test]
async fn table_to_queue_to_worker_to_synced_and_a_second_run_enqueues_nothing() {
    let stack = Stack::get();
    let (env, queue, _) = setup(&stack, "e2e").await;
    let repo = unique("e2e-src");
    let d1 = push_image(&stack, &repo, "v1").await;
    let d2 = push_image(&stack, &repo, "v2").await;
    let src1 = format!("{}/{repo}:v1", stack.src);
    let src2 = format!("{}/{repo}:v2", stack.src);
    let dest1a = format!("{}/{repo}-a:v1", stack.dst);
    let dest1b = format!("{}/{repo}-b:v1", stack.dst);
    let dest2 = format!("{}/{repo}-a:v2", stack.dst);
    for (s, d) in [
        (&src1, format!("{dest1a},{dest1b}")),
        (&src2, dest2.clone()),
    ] {
        let (code, out, err) = run("mirrorfleet-controller", &["table", "add", s, &d], &env);
        assert_eq!(code, 0, "{out}{err}");
    }
    // Validation happens before writing.
    let (code, _, err) = run(
        "mirrorfleet-controller",
        &["table", "add", "Bad:Ref", &dest2],
        &env,
    );
    assert_eq!(code, 1);
    assert!(err.contains("invalid image reference"), "{err}");

    let (code, out, err) = run(
        "mirrorfleet-controller",
        &["run", "--output", "json", "--segments", "3"],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["rows_scanned"], 2);
    assert_eq!(s["jobs_enqueued"], 2);
    assert_eq!(s["destinations_queued"], 3);
    assert_eq!(queue_depth(&stack, &queue).await, 2);
    assert_eq!(state_of(&table_json(&env), &dest1a).0, "queued");

    let (code, out, err) = run(
        "mirrorfleet-worker",
        &[
            "consume",
            "--exit-when-idle",
            "2s",
            "--wait",
            "1s",
            "--output",
            "json",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let w: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(w["completed"], 2, "{w}");
    assert_eq!(queue_depth(&stack, &queue).await, 0);

    let sk = Skopeo::plain();
    assert_eq!(sk.digest(&dest1a).unwrap(), d1);
    assert_eq!(sk.digest(&dest1b).unwrap(), d1);
    assert_eq!(sk.digest(&dest2).unwrap(), d2);
    let rows = table_json(&env);
    for (dest, digest) in [(&dest1a, &d1), (&dest1b, &d1), (&dest2, &d2)] {
        let (state, st) = state_of(&rows, dest);
        assert_eq!(state, "synced", "{st}");
        assert_eq!(st["dest_digest"], **digest);
        assert!(st["last_success"].is_string());
    }

    let (code, out, _) = run("mirrorfleet-controller", &["run", "--output", "json"], &env);
    assert_eq!(code, 0);
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["jobs_enqueued"], 0, "{s}");
    assert_eq!(s["in_sync"], 2);
    assert_eq!(queue_depth(&stack, &queue).await, 0);

    // Export gives back what was added; import of the export is a no-op.
    let (code, yaml, _) = run("mirrorfleet-controller", &["table", "export"], &env);
    assert_eq!(code, 0);
    assert!(yaml.contains(&dest1b) && yaml.contains(&src2), "{yaml}");
}

#[tokio::test]
async fn a_destination_that_keeps_failing_ends_in_the_dlq_and_the_others_sync() {
    let stack = Stack::get();
    let (env, queue, dlq) = setup(&stack, "dlq").await;
    let repo = unique("dlq-src");
    let digest = push_image(&stack, &repo, "v1").await;
    let src = format!("{}/{repo}:v1", stack.src);
    let good = format!("{}/{repo}:v1", stack.dst);
    // The basic-auth registry without credentials: refused at once, every time.
    let bad = format!("{}/{repo}:v1", stack.basic);
    let (code, _, err) = run(
        "mirrorfleet-controller",
        &["table", "add", &src, &good, &bad],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run("mirrorfleet-controller", &["run"], &env);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(
        "mirrorfleet-worker",
        &[
            "consume",
            "--visibility",
            "3s",
            "--wait",
            "1s",
            "--exit-when-idle",
            "6s",
            "--output",
            "json",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let w: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(w["failed"], 3, "three receives, then the DLQ: {w}");
    assert_eq!(queue_depth(&stack, &queue).await, 0);
    assert_eq!(queue_depth(&stack, &dlq).await, 1);

    assert_eq!(Skopeo::plain().digest(&good).unwrap(), digest);
    let rows = table_json(&env);
    assert_eq!(state_of(&rows, &good).0, "synced");
    let (state, st) = state_of(&rows, &bad);
    assert_eq!(state, "failed");
    assert!(
        st["error"].as_str().unwrap().contains("needs credentials"),
        "{st}"
    );
    assert_eq!(st["attempts"], 3);
}

#[tokio::test]
async fn dry_run_changes_nothing_and_event_mode_plans_only_the_pushed_image() {
    let stack = Stack::get();
    let (env, queue, _) = setup(&stack, "event").await;
    let repo = unique("event-src");
    push_image(&stack, &repo, "v1").await;
    push_image(&stack, &repo, "v2").await;
    for tag in ["v1", "v2"] {
        add_row(
            &env,
            &format!("{}/{repo}:{tag}", stack.src),
            &format!("{}/{repo}:{tag}", stack.dst),
        );
    }
    let before = table_json(&env);
    let (code, out, err) = run("mirrorfleet-controller", &["run", "--dry-run"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("copy") && out.contains("destination missing"),
        "{out}"
    );
    assert_eq!(table_json(&env), before, "dry run wrote to the table");
    assert_eq!(
        queue_depth(&stack, &queue).await,
        0,
        "dry run sent messages"
    );

    // The ECR push rule passes repository and tag; only that row is planned.
    let (code, out, err) = run(
        "mirrorfleet-controller",
        &[
            "run",
            "--output",
            "json",
            "--repository",
            &repo,
            "--tag",
            "v2",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["rows_scanned"], 1, "{s}");
    assert_eq!(s["jobs_enqueued"], 1);
    let rows = table_json(&env);
    assert_eq!(
        state_of(&rows, &format!("{}/{repo}:v2", stack.dst)).0,
        "queued"
    );
    assert_eq!(
        state_of(&rows, &format!("{}/{repo}:v1", stack.dst)).0,
        "new"
    );

    // The same through an EventBridge event file.
    let event = std::env::temp_dir().join(format!("{}.json", unique("event")));
    std::fs::write(
        &event,
        json!({"detail-type": "ECR Image Action", "source": "aws.ecr",
               "detail": {"action-type": "PUSH", "result": "SUCCESS", "repository-name": repo, "image-tag": "v1"}})
        .to_string(),
    )
    .unwrap();
    let (code, out, err) = run(
        "mirrorfleet-controller",
        &[
            "run",
            "--output",
            "json",
            "--event",
            event.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["rows_scanned"], 1, "{s}");
    assert_eq!(queue_depth(&stack, &queue).await, 2);
}

#[tokio::test]
async fn scan_reads_every_page_of_every_segment() {
    let stack = Stack::get();
    let (env, _, _) = setup(&stack, "pages").await;
    let repo = unique("pages");
    // 25 rows whose sources do not exist: each is reported on itself.
    let mut yaml = String::from("mirrors:\n");
    for i in 0..25 {
        yaml.push_str(&format!(
            "  - source: {0}/{repo}:t{i}\n    destinations: [{1}/{repo}:t{i}]\n",
            stack.src, stack.dst
        ));
    }
    let out = mirrorfleet_tests::table_import(&env, &yaml);
    assert!(out.contains("imported 25 mirrors"));
    let (code, out, _) = run(
        "mirrorfleet-controller",
        &[
            "run",
            "--output",
            "json",
            "--segments",
            "3",
            "--scan-page-size",
            "4",
        ],
        &env,
    );
    assert_eq!(code, 1, "rows failed, so the run says so: {out}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["rows_scanned"], 25, "{s}");
    assert_eq!(s["rows_failed"], 25);
    let rows = table_json(&env);
    assert_eq!(rows.len(), 25);
    assert!(
        rows[0]["row_error"]
            .as_str()
            .unwrap()
            .contains("was not found"),
        "{:#}",
        rows[0]
    );
}

#[tokio::test]
async fn scaling_submits_workers_to_batch() {
    let stack = Stack::get();
    let (env, _queue, _) = setup(&stack, "scale").await;
    let batch = moto_batch(&stack);
    let name = unique("mf-scale");
    let role = moto_create_role(&stack, &name).await;
    let ce = batch
        .create_compute_environment()
        .compute_environment_name(&name)
        .r#type(aws_sdk_batch::types::CeType::Unmanaged)
        .service_role(&role)
        .send()
        .await
        .unwrap();
    let jq = batch
        .create_job_queue()
        .job_queue_name(&name)
        .state(aws_sdk_batch::types::JqState::Enabled)
        .priority(1)
        .compute_environment_order(
            aws_sdk_batch::types::ComputeEnvironmentOrder::builder()
                .order(1)
                .compute_environment(ce.compute_environment_arn().unwrap())
                .build(),
        )
        .send()
        .await
        .unwrap();
    batch
        .register_job_definition()
        .job_definition_name(&name)
        .r#type(aws_sdk_batch::types::JobDefinitionType::Container)
        .container_properties(
            aws_sdk_batch::types::ContainerProperties::builder()
                .image("mirrorfleet:latest")
                .command("mirrorfleet-worker")
                .command("consume")
                .resource_requirements(
                    aws_sdk_batch::types::ResourceRequirement::builder()
                        .r#type(aws_sdk_batch::types::ResourceType::Vcpu)
                        .value("1")
                        .build(),
                )
                .resource_requirements(
                    aws_sdk_batch::types::ResourceRequirement::builder()
                        .r#type(aws_sdk_batch::types::ResourceType::Memory)
                        .value("512")
                        .build(),
                )
                .build(),
        )
        .retry_strategy(
            aws_sdk_batch::types::RetryStrategy::builder()
                .attempts(1)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let repo = unique("scale-src");
    for i in 0..5 {
        let tag = format!("v{i}");
        push_image(&stack, &repo, &tag).await;
        add_row(
            &env,
            &format!("{}/{repo}:{tag}", stack.src),
            &format!("{}/{repo}:{tag}", stack.dst),
        );
    }
    let (code, out, err) = run(
        "mirrorfleet-controller",
        &[
            "run",
            "--output",
            "json",
            "--batch-job-queue",
            jq.job_queue_arn().unwrap(),
            "--batch-job-definition",
            &name,
            "--jobs-per-worker",
            "2",
            "--max-workers",
            "10",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["jobs_enqueued"], 5);
    assert_eq!(s["workers_started"], 3, "5 jobs at 2 per worker: {s}");
}

#[tokio::test]
async fn local_mode_end_to_end_and_incremental() {
    let stack = Stack::get();
    let repo = unique("local");
    let d1 = push_image(&stack, &repo, "v1").await;
    let d2 = push_image(&stack, &repo, "v2").await;
    let file = mirrors_file(
        "mf-local",
        format!(
            "mirrors:\n  - source: {0}/{repo}:v1\n    destinations:\n      - {1}/{repo}-a:v1\n      - {1}/{repo}-b:v1\n  - source: {0}/{repo}:v2\n    destinations: {1}/{repo}-a:v2\n",
            stack.src, stack.dst
        ),
    );
    let plain = format!("{},{}", stack.src, stack.dst);
    let (code, out, err) = run_bin(
        "mirrorfleet-controller",
        &["sync", "--plain-http", &plain, file.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out.matches(" synced ").count(), 3, "{out}");
    let sk = Skopeo::plain();
    assert_eq!(
        sk.digest(&format!("{}/{repo}-a:v1", stack.dst)).unwrap(),
        d1
    );
    assert_eq!(
        sk.digest(&format!("{}/{repo}-b:v1", stack.dst)).unwrap(),
        d1
    );
    assert_eq!(
        sk.digest(&format!("{}/{repo}-a:v2", stack.dst)).unwrap(),
        d2
    );
    assert!(file.with_extension("yaml.state.db").exists());

    // Second run: in sync, HEADs only, no blob read at the source.
    let gets_before = count_requests(&stack, "src", &["\"GET /v2/", &format!("/{repo}/")]);
    let heads_before = count_requests(&stack, "src", &["\"HEAD /v2/", &format!("/{repo}/")]);
    let (code, out, err) = run_bin(
        "mirrorfleet-controller",
        &["sync", "--plain-http", &plain, file.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        count_requests(&stack, "src", &["\"GET /v2/", &format!("/{repo}/")]),
        gets_before
    );
    assert_eq!(
        count_requests(&stack, "src", &["\"HEAD /v2/", &format!("/{repo}/")]) - heads_before,
        2,
        "one HEAD per image"
    );

    // A bad row is reported on itself; the rest still syncs.
    std::fs::write(
        &file,
        format!("mirrors:\n  - source: {0}/{repo}:nope\n    destinations: [{1}/{repo}:nope]\n  - source: {0}/{repo}:v2\n    destinations: [{1}/{repo}-c:v2]\n", stack.src, stack.dst),
    )
    .unwrap();
    let (code, out, _) = run_bin(
        "mirrorfleet-controller",
        &["sync", "--plain-http", &plain, file.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("was not found"), "{out}");
    assert_eq!(
        sk.digest(&format!("{}/{repo}-c:v2", stack.dst)).unwrap(),
        d2
    );
}

#[tokio::test]
async fn malformed_jobs_reach_the_dlq_and_a_deleted_rows_job_is_dropped() {
    let stack = Stack::get();
    let (env, queue, dlq) = setup(&stack, "malformed").await;
    let sqs = moto_sqs(&stack);
    for body in [
        "not json",
        r#"{"version":9,"source":"a:1","destinations":["b.example.com/a:1"]}"#,
        r#"{"version":1,"source":"Bad:Ref:","destinations":["b.example.com/a:1"]}"#,
    ] {
        sqs.send_message()
            .queue_url(&queue)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    // A row deleted while its job is queued.
    let repo = unique("deleted");
    push_image(&stack, &repo, "v1").await;
    let src = format!("{}/{repo}:v1", stack.src);
    add_row(&env, &src, &format!("{}/{repo}:v1", stack.dst));
    let (code, _, err) = run("mirrorfleet-controller", &["run"], &env);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run("mirrorfleet-controller", &["table", "rm", &src], &env);
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = run(
        "mirrorfleet-worker",
        &[
            "consume",
            "--wait",
            "1s",
            "--exit-when-idle",
            "3s",
            "--output",
            "json",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let w: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(w["malformed"], 9, "3 bad messages x 3 receives: {w}");
    assert!(
        err.contains("invalid JSON")
            && err.contains("version 9")
            && err.contains("invalid image reference"),
        "{err}"
    );
    assert!(err.contains("the row was deleted"), "{err}");
    assert_eq!(queue_depth(&stack, &queue).await, 0);
    assert_eq!(queue_depth(&stack, &dlq).await, 3);
    assert!(
        Skopeo::plain()
            .raw(&format!("{}/{repo}:v1", stack.dst))
            .is_err(),
        "a deleted row's job was copied"
    );
    assert!(table_json(&env).is_empty(), "the deleted row came back");
}

#[tokio::test]
async fn an_older_result_never_overwrites_a_newer_one() {
    use mirrorfleet_common::control::table::{DestStatus, State};
    use mirrorfleet_common::store::{DynamoStore, Store, StoreError};
    let stack = Stack::get();
    let (env, _, _) = setup(&stack, "regress").await;
    let table = env
        .iter()
        .find(|(k, _)| k == "MIRRORFLEET_TABLE")
        .unwrap()
        .1
        .clone();
    let src = format!("{}/{}:v1", stack.src, unique("regress"));
    let dest = format!("{}/{}:v1", stack.dst, unique("regress"));
    add_row(&env, &src, &dest);
    let store = Store::Dynamo(DynamoStore::with_client(moto_dynamodb(&stack), &table));
    let status = |state, at: &str| DestStatus {
        state: Some(state),
        last_attempt: Some(at.to_string()),
        ..Default::default()
    };
    store
        .update_status(&src, &dest, &status(State::Synced, "2026-11-22T12:00:10Z"))
        .await
        .unwrap();
    // A slow worker's older attempt finishes late: refused.
    let late = store
        .update_status(&src, &dest, &status(State::Failed, "2026-11-22T12:00:05Z"))
        .await;
    assert!(matches!(late, Err(StoreError::Stale { .. })), "{late:?}");
    let (state, _) = state_of(&table_json(&env), &dest);
    assert_eq!(state, "synced");
    // A newer attempt's result is written.
    store
        .update_status(&src, &dest, &status(State::Failed, "2026-11-22T12:00:20Z"))
        .await
        .unwrap();
    assert_eq!(state_of(&table_json(&env), &dest).0, "failed");
    // A deleted row is not brought back.
    let gone = store
        .update_status(
            "docker.io/library/nope:1",
            &dest,
            &status(State::Synced, "2026-11-22T12:00:30Z"),
        )
        .await;
    assert!(matches!(gone, Err(StoreError::RowGone(_))), "{gone:?}");
}

/// Claims are the controllers' only guard against sending a job twice: of
/// several controllers claiming one destination at once, exactly one wins.
/// (The stack serialises moto's DynamoDB, whose conditional writes are
/// otherwise not atomic; real DynamoDB's are.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_on_one_destination_have_exactly_one_winner() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use mirrorfleet_common::control::table::{DestStatus, State};
    use mirrorfleet_common::store::{DynamoStore, Store, StoreError};
    let stack = Stack::get();
    let (env, _, _) = setup(&stack, "claims").await;
    let table = env
        .iter()
        .find(|(k, _)| k == "MIRRORFLEET_TABLE")
        .unwrap()
        .1
        .clone();
    let store = std::sync::Arc::new(Store::Dynamo(DynamoStore::with_client(
        moto_dynamodb(&stack),
        &table,
    )));
    let repo = unique("claims");
    let dest = format!("{}/{repo}:v1", stack.dst);
    let dynamo = moto_dynamodb(&stack);
    for round in 0..100 {
        // Written directly: a controller process per row would take minutes.
        let src = format!("{}/{repo}:r{round}", stack.src);
        dynamo
            .put_item()
            .table_name(&table)
            .item("source", AttributeValue::S(src.clone()))
            .item(
                "destinations",
                AttributeValue::L(vec![AttributeValue::S(dest.clone())]),
            )
            .item("status", AttributeValue::M(Default::default()))
            .send()
            .await
            .unwrap();
        let claims = (0..8).map(|n| {
            let store = store.clone();
            let (src, dest) = (src.clone(), dest.clone());
            tokio::spawn(async move {
                let st = DestStatus {
                    state: Some(State::Queued),
                    queued_at: Some(format!("2026-11-23T00:00:0{n}Z")),
                    ..Default::default()
                };
                store.claim_queued(&src, &dest, None, &st).await
            })
        });
        let mut won = 0;
        for c in futures_util::future::join_all(claims).await {
            match c.unwrap() {
                Ok(()) => won += 1,
                Err(StoreError::Stale { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(
            won, 1,
            "round {round}: {won} controllers claimed one destination"
        );
    }
}

/// A repository row with a tag rule, in local mode: the picked tags arrive
/// under a prefix and in a repository, a second sync moves nothing, and a new
/// tag moves the window.
#[tokio::test]
async fn repository_rows_mirror_the_tags_their_rule_picks() {
    let stack = Stack::get();
    let repo = unique("reporow");
    let mut digests = std::collections::HashMap::new();
    for tag in ["1.0.0", "1.1.0", "1.2.0", "1.3.0-rc1", "latest"] {
        digests.insert(tag, push_image(&stack, &repo, tag).await);
    }
    let file = mirrors_file(
        "mf-reporow",
        format!(
            "mirrors:\n  - source: {0}/{repo}\n    tags: {{semver: '>=1.1', latest: 2}}\n    destinations: [{1}/mirror/, {1}/{repo}-copy]\n",
            stack.src, stack.dst
        ),
    );
    let v = sync_json(&stack, &file);
    assert_eq!(v["plan"]["jobs_enqueued"], 2, "{v}");
    let sk = Skopeo::plain();
    for tag in ["1.2.0", "1.1.0"] {
        for dest in [
            format!("{}/mirror/{repo}:{tag}", stack.dst),
            format!("{}/{repo}-copy:{tag}", stack.dst),
        ] {
            assert_eq!(sk.digest(&dest).unwrap(), digests[tag], "{dest}");
        }
    }
    for tag in ["1.0.0", "1.3.0-rc1", "latest"] {
        assert!(
            sk.raw(&format!("{}/{repo}-copy:{tag}", stack.dst)).is_err(),
            "{tag} was not picked but was mirrored"
        );
    }

    // Nothing changed: nothing to do.
    let v = sync_json(&stack, &file);
    assert_eq!(v["plan"]["jobs_enqueued"], 0, "{v}");
    assert_eq!(v["plan"]["in_sync"], 2, "{v}");

    // A newer release moves the window of the 2 newest.
    let d14 = push_image(&stack, &repo, "1.4.0").await;
    let v = sync_json(&stack, &file);
    assert_eq!(v["plan"]["jobs_enqueued"], 1, "{v}");
    assert_eq!(
        sk.digest(&format!("{}/{repo}-copy:1.4.0", stack.dst))
            .unwrap(),
        d14
    );
}

/// The same through DynamoDB, SQS and a worker: `table add` with a rule,
/// `run`, `consume`, and `table ls` as a summary and expanded.
#[tokio::test]
async fn repository_rows_through_the_queue_with_summary_and_expanded_listing() {
    let stack = Stack::get();
    let (env, queue, _) = setup(&stack, "reporow-aws").await;
    let repo = unique("reporow-aws");
    for tag in ["v1.0", "v2.0", "v2.1", "dev"] {
        push_image(&stack, &repo, tag).await;
    }
    let src = format!("{}/{repo}", stack.src);
    let (code, out, err) = run(
        "mirrorfleet-controller",
        &[
            "table",
            "add",
            "--include-tags",
            "^v",
            "--semver",
            ">=2",
            &src,
            &format!("{}/mirror/", stack.dst),
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run("mirrorfleet-controller", &["run"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(queue_depth(&stack, &queue).await, 2);
    let (code, out, err) = run(
        "mirrorfleet-worker",
        &["consume", "--wait", "1s", "--exit-when-idle", "2s"],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");

    let summary = table_json(&env);
    assert_eq!(summary.len(), 1, "{summary:#?}");
    assert_eq!(summary[0]["state"], "2 images: 2 synced", "{summary:#?}");
    assert_eq!(summary[0]["destination"], format!("{}/mirror/", stack.dst));
    let (code, out, err) = run(
        "mirrorfleet-controller",
        &["table", "ls", "--expand", "--output", "json"],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    let mut images: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            assert_eq!(r["state"], "synced", "{r}");
            assert_eq!(r["row"], src.as_str(), "{r}");
            (
                r["source"].as_str().unwrap().to_string(),
                r["destination"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    images.sort();
    assert_eq!(
        images,
        [
            (
                format!("{src}:v2.0"),
                format!("{}/mirror/{repo}:v2.0", stack.dst)
            ),
            (
                format!("{src}:v2.1"),
                format!("{}/mirror/{repo}:v2.1", stack.dst)
            ),
        ]
    );
}

/// A registry-wide row (`registry/namespace/*`): the catalog is listed, the
/// repository rule picks repositories, the tag rule picks tags, and each
/// image lands under the prefix with its path kept.
#[tokio::test]
async fn registry_wide_rows_mirror_every_picked_repository() {
    let stack = Stack::get();
    let ns = unique("wide");
    let mut want = Vec::new();
    for name in ["app", "base/os", "tmp-scratch"] {
        let repo = format!("{ns}/{name}");
        push_image(&stack, &repo, "1.0").await;
        let d = push_image(&stack, &repo, "2.0").await;
        if name != "tmp-scratch" {
            want.push((repo, d));
        }
    }
    let file = mirrors_file(
        "mf-wide",
        format!(
            "mirrors:\n  - source: {0}/{ns}/*\n    repositories: {{exclude: ['{ns}/tmp-*']}}\n    tags: {{latest: 1}}\n    destinations: [{1}/wide/]\n",
            stack.src, stack.dst
        ),
    );
    let v = sync_json(&stack, &file);
    assert_eq!(v["plan"]["jobs_enqueued"], 2, "{v}");
    let sk = Skopeo::plain();
    for (repo, digest) in &want {
        let dest = format!("{}/wide/{repo}:2.0", stack.dst);
        assert_eq!(&sk.digest(&dest).unwrap(), digest, "{dest}");
        assert!(sk.raw(&format!("{}/wide/{repo}:1.0", stack.dst)).is_err());
    }
    assert!(
        sk.raw(&format!("{}/wide/{ns}/tmp-scratch:2.0", stack.dst))
            .is_err(),
        "an excluded repository was mirrored"
    );

    // The same row with `strip`: the namespace is dropped under the prefix.
    let flat = unique("flat");
    std::fs::write(
        &file,
        format!(
            "mirrors:\n  - source: {0}/{ns}/*\n    repositories: {{exclude: ['{ns}/tmp-*']}}\n    tags: {{latest: 1}}\n    destinations: [{1}/{flat}/]\n    strip: {ns}\n",
            stack.src, stack.dst
        ),
    )
    .unwrap();
    let v = sync_json(&stack, &file);
    assert_eq!(v["plan"]["jobs_enqueued"], 2, "{v}");
    for (repo, digest) in &want {
        let name = repo.strip_prefix(&format!("{ns}/")).unwrap();
        let dest = format!("{}/{flat}/{name}:2.0", stack.dst);
        assert_eq!(&sk.digest(&dest).unwrap(), digest, "{dest}");
    }
}

/// A registry-wide row whose source is ECR: repositories come from
/// DescribeRepositories and tags from DescribeImages (moto), the bytes from
/// the registry serving the ECR host name.
#[tokio::test]
async fn an_ecr_source_is_listed_through_the_ecr_api() {
    use mirrorfleet_tests::ecr_double::ECR_HOST;
    let stack = Stack::get();
    let ns = unique("ecrsrc");
    let ecr = moto_ecr(&stack);
    let pusher = Pusher::new(Target {
        creds: Some(stack.ecr_creds.clone()),
        ..Target::plain(&stack.ecr)
    })
    .unwrap();
    let mut want = Vec::new();
    for (name, tags) in [("app", vec!["1.0", "2.0"]), ("lib", vec!["2.0"])] {
        let repo = format!("{ns}/{name}");
        ecr.create_repository()
            .repository_name(&repo)
            .send()
            .await
            .unwrap();
        for tag in tags {
            let img = pusher
                .image(&repo, false, ("linux", "amd64"), &[300], json!({}))
                .await
                .unwrap();
            let raw = serde_json::to_vec(
                &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [img]}),
            )
            .unwrap();
            let digest = sha256(&raw);
            pusher.manifest(&repo, tag, OCI_INDEX, &raw).await.unwrap();
            // The control plane learns of the tag too (moto keeps no bytes).
            ecr.put_image()
                .repository_name(&repo)
                .image_tag(tag)
                .image_manifest(String::from_utf8(raw).unwrap())
                .send()
                .await
                .unwrap();
            if tag == "2.0" {
                want.push((repo.clone(), digest));
            }
        }
    }
    // As deployed: the controller lists and HEADs as ControllerRole, the
    // worker pulls as WorkerRole, each against the template's own IAM.
    let (env, _, _) = setup(&stack, "ecrsrc").await;
    let as_role = |role: &str| {
        let front = mirrorfleet_tests::ecr_double::EcrFront::start(&stack, role);
        let settings = front.settings(&[&stack.dst], "");
        let mut e = env.clone();
        for (k, v) in &mut e {
            if k == "AWS_ENDPOINT_URL" {
                *v = front.gate.url.clone();
            }
        }
        e.push((
            "MIRRORFLEET_REGISTRIES".into(),
            settings.display().to_string(),
        ));
        (front, e)
    };
    let (controller, controller_env) = as_role("ControllerRole");
    let (worker, worker_env) = as_role("WorkerRole");
    let file = mirrors_file(
        "mf-ecrsrc",
        format!(
            "mirrors:\n  - source: {ECR_HOST}/{ns}/*\n    tags: {{semver: '>=2'}}\n    destinations: [{}/from-ecr/]\n",
            stack.dst
        ),
    );
    let (code, out, err) = run(
        "mirrorfleet-controller",
        &["table", "import", file.to_str().unwrap()],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(
        "mirrorfleet-controller",
        &["run", "--output", "json"],
        &controller_env,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["jobs_enqueued"], 2, "{v}");
    let (code, out, err) = run(
        "mirrorfleet-worker",
        &["consume", "--exit-when-idle", "2s", "--wait", "1s"],
        &worker_env,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(controller.gate.count("ecr:DescribeRepositories") >= 1);
    assert!(controller.gate.count("ecr:DescribeImages") >= 2);
    assert!(controller.double.count("ecr:BatchGetImage", Some(200)) >= 2);
    assert!(worker.double.count("ecr:GetDownloadUrlForLayer", Some(307)) >= 2);
    assert!(worker.double.s3().0 >= 2);
    for front in [&controller, &worker] {
        assert!(
            front.gate.calls().iter().all(|(_, allowed)| *allowed),
            "{:?}",
            front.gate.calls()
        );
        assert!(
            front.double.seen().iter().all(|s| s.status != 403),
            "{:?}",
            front.double.seen()
        );
    }
    let sk = Skopeo::plain();
    for (repo, digest) in &want {
        let dest = format!("{}/from-ecr/{repo}:2.0", stack.dst);
        assert_eq!(&sk.digest(&dest).unwrap(), digest, "{dest}");
    }
    assert!(
        sk.raw(&format!("{}/from-ecr/{ns}/app:1.0", stack.dst))
            .is_err()
    );
}

/// A row with `platforms`: the destination holds the source's index cut
/// down to those platforms (their attestations kept, children byte for
/// byte), its status records both digests, and a second run finds it in
/// sync instead of copying forever. Asking for every platform keeps the
/// source digest; asking for one it lacks is a row error.
#[tokio::test]
async fn platform_subsets_mirror_a_filtered_index_that_stays_in_sync() {
    let stack = Stack::get();
    let repo = unique("platforms");
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let mut children = Vec::new();
    for arch in ["amd64", "arm64", "s390x"] {
        children.push(
            p.image(&repo, false, ("linux", arch), &[2000], json!({}))
                .await
                .unwrap(),
        );
    }
    for subject in [0, 2] {
        let mut att = p
            .image(&repo, false, ("unknown", "unknown"), &[300], json!({}))
            .await
            .unwrap();
        att["annotations"] = json!({
            "vnd.docker.reference.type": "attestation-manifest",
            "vnd.docker.reference.digest": children[subject]["digest"].clone(),
        });
        children.push(att);
    }
    let source_digest = p
        .index(
            &repo,
            "v1",
            false,
            children.clone(),
            json!({"annotations": {"a": "b"}}),
        )
        .await
        .unwrap();
    for tag in ["v1-all", "v1-none"] {
        p.index(
            &repo,
            tag,
            false,
            children.clone(),
            json!({"annotations": {"a": "b"}}),
        )
        .await
        .unwrap();
    }
    let (env, queue, _) = setup(&stack, "platforms").await;
    // One row from the command line, two from YAML.
    let (code, out, err) = run(
        "mirrorfleet-controller",
        &[
            "table",
            "add",
            "--platform",
            "linux/arm64,linux/amd64",
            &format!("{}/{repo}:v1", stack.src),
            &format!("{}/{repo}-sub:v1", stack.dst),
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let file = mirrors_file(
        "mf-platforms",
        format!(
            "mirrors:\n  - source: {0}/{repo}:v1-all\n    destinations: [{1}/{repo}-all:v1]\n    platforms: linux/amd64,linux/arm64,linux/s390x\n  - source: {0}/{repo}:v1-none\n    destinations: [{1}/{repo}-none:v1]\n    platforms: [windows/amd64]\n",
            stack.src, stack.dst
        ),
    );
    let (code, out, err) = run(
        "mirrorfleet-controller",
        &["table", "import", file.to_str().unwrap()],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    // Exit 1 each time: the row without a matching platform fails.
    let control = || {
        let (code, out, err) = run("mirrorfleet-controller", &["run", "--output", "json"], &env);
        assert_eq!(code, 1, "{out}{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let summary = control();
    // The row asking for a platform the source lacks fails; the others are queued.
    assert_eq!(summary["jobs_enqueued"], 2, "{summary}");
    assert_eq!(summary["rows_failed"], 1, "{summary}");
    let (code, out, err) = run(
        "mirrorfleet-worker",
        &["consume", "--exit-when-idle", "2s", "--wait", "1s"],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(queue_depth(&stack, &queue).await, 0);

    let sk = Skopeo::plain();
    let sub = format!("{}/{repo}-sub:v1", stack.dst);
    let raw = sk.raw(&sub).unwrap();
    let got: Value = serde_json::from_slice(&raw).unwrap();
    // What the source says, minus s390x and its attestation.
    let mut want: Value =
        serde_json::from_slice(&sk.raw(&format!("{}/{repo}:v1", stack.src)).unwrap()).unwrap();
    want["manifests"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c["digest"] != children[2]["digest"] && c["digest"] != children[4]["digest"]);
    assert_eq!(got, want);
    let filtered = sha256(&raw);
    assert_ne!(filtered, source_digest);
    // Three children, each complete, byte for byte.
    assert_eq!(
        sk.assert_tree(&format!("{}/{repo}-sub", stack.dst), &filtered)
            .unwrap(),
        4
    );
    let dropped = format!(
        "{}/{repo}-sub@{}",
        stack.dst,
        children[2]["digest"].as_str().unwrap()
    );
    assert!(sk.raw(&dropped).is_err(), "the s390x image was copied");
    // Every platform asked for: nothing dropped, the source's own digest.
    assert_eq!(
        sk.digest(&format!("{}/{repo}-all:v1", stack.dst)).unwrap(),
        source_digest
    );

    let rows = table_json(&env);
    let sub_row = rows.iter().find(|r| r["destination"] == sub).unwrap();
    assert_eq!(sub_row["state"], "synced", "{sub_row}");
    assert_eq!(sub_row["status"]["source_digest"], source_digest.as_str());
    assert_eq!(sub_row["status"]["dest_digest"], filtered.as_str());
    assert_eq!(sub_row["status"]["platforms"], "linux/amd64,linux/arm64");
    assert_eq!(sub_row["platforms"], json!(["linux/amd64", "linux/arm64"]));
    let none = rows
        .iter()
        .find(|r| r["destination"].as_str().unwrap().ends_with("-none:v1"))
        .unwrap();
    assert_eq!(
        none["row_error"],
        format!(
            "source image {}/{repo}:v1-none: it has none of the platforms windows/amd64 (only linux/amd64, linux/arm64, linux/s390x)",
            stack.src
        )
        .as_str(),
        "{none}"
    );

    // Second run: the filtered digest is what the destination holds, so
    // nothing is queued; the statuses tell that digest, so the source index
    // is not even read again (HEAD only, no GET that would count as a pull).
    let gets = || {
        count_requests(
            &stack,
            "src",
            &["\"GET /v2/", &format!("/{repo}/manifests/")],
        )
    };
    let gets_before = gets();
    let summary = control();
    assert_eq!(
        gets(),
        gets_before + 1,
        "only the failing row's index is read"
    );
    assert_eq!(summary["jobs_enqueued"], 0, "{summary}");
    assert_eq!(summary["in_sync"], 2, "{summary}");
    assert_eq!(queue_depth(&stack, &queue).await, 0);
    // The subset survives an export.
    let (code, yaml, _) = run("mirrorfleet-controller", &["table", "export"], &env);
    assert_eq!(code, 0);
    assert!(
        yaml.contains("  platforms:\n  - linux/amd64\n  - linux/arm64\n"),
        "{yaml}"
    );

    // The ad-hoc copy takes the same subset.
    let plain = format!("{},{}", stack.src, stack.dst);
    let one = format!("{}/{repo}-one:v1", stack.dst);
    let (code, out, err) = run_bin(
        "mirrorfleet-worker",
        &[
            "copy",
            "--plain-http",
            &plain,
            "--platform",
            "linux/arm64",
            "--output",
            "json",
            &format!("{}/{repo}:v1", stack.src),
            &one,
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let got: Value = serde_json::from_slice(&sk.raw(&one).unwrap()).unwrap();
    let kept: Vec<&Value> = got["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["digest"])
        .collect();
    assert_eq!(kept, vec![&children[1]["digest"]]);
    assert_eq!(report["source_digest"], source_digest.as_str(), "{report}");
    assert_eq!(
        report["destinations"][0]["digest"],
        sk.digest(&one).unwrap().as_str(),
        "{report}"
    );
}

/// A signature added to an image after it was mirrored: an ordinary run
/// leaves the image alone (it is in sync), a run with `--check-referrers`
/// or the push event of the signature's tag queues it, and the worker brings
/// the signature over.
#[tokio::test]
async fn a_signature_added_later_follows_on_check_or_on_its_push_event() {
    let stack = Stack::get();
    let (env, queue, _) = setup(&stack, "late-sig").await;
    let repo = unique("late-sig");
    let image = push_image(&stack, &repo, "v1").await;
    let src = format!("{}/{repo}:v1", stack.src);
    let dest = format!("{}/{repo}:v1", stack.dst);
    add_row(&env, &src, &dest);
    let consume = || {
        let (code, out, err) = run(
            "mirrorfleet-worker",
            &["consume", "--exit-when-idle", "2s", "--wait", "1s"],
            &env,
        );
        assert_eq!(code, 0, "{out}{err}");
    };
    let control = |extra: &[&str]| -> Value {
        let mut args = vec!["run", "--output", "json"];
        args.extend(extra);
        let (code, out, err) = run("mirrorfleet-controller", &args, &env);
        assert_eq!(code, 0, "{out}{err}");
        serde_json::from_str(&out).unwrap()
    };
    assert_eq!(control(&[])["jobs_enqueued"], 1);
    consume();

    // Signed afterwards (cosign's tag scheme).
    let p = Pusher::new(Target::plain(&stack.src)).unwrap();
    let sign = |n: u8| {
        let p = &p;
        let repo = &repo;
        async move {
            let cfg = p
                .blob_typed(
                    repo,
                    format!("{{\"n\":{n}}}").as_bytes(),
                    "application/vnd.dev.cosign.artifact.sig.v1+json",
                )
                .await
                .unwrap();
            serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": cfg, "layers": []}))
            .unwrap()
        }
    };
    let sig_tag = format!("{}.sig", image.replace(':', "-"));
    let sig = sign(1).await;
    p.manifest(&repo, &sig_tag, OCI_MANIFEST, &sig)
        .await
        .unwrap();
    let sk = Skopeo::plain();
    let dest_sig = format!("{}/{repo}:{sig_tag}", stack.dst);

    let s = control(&[]);
    assert_eq!(
        s["jobs_enqueued"], 0,
        "a plain run only compares images: {s}"
    );
    let s = control(&["--check-referrers"]);
    assert_eq!(s["jobs_enqueued"], 1, "{s}");
    consume();
    assert_eq!(sk.digest(&dest_sig).unwrap(), sha256(&sig));
    assert_eq!(control(&["--check-referrers"])["jobs_enqueued"], 0);

    // Signed again (a new signature under the same tag): the push event of
    // that tag is enough.
    let resigned = sign(2).await;
    p.manifest(&repo, &sig_tag, OCI_MANIFEST, &resigned)
        .await
        .unwrap();
    let s = control(&["--repository", &repo, "--tag", &sig_tag]);
    assert_eq!(s["jobs_enqueued"], 1, "{s}");
    consume();
    assert_eq!(sk.digest(&dest_sig).unwrap(), sha256(&resigned));
    assert_eq!(queue_depth(&stack, &queue).await, 0);
    let (state, _) = state_of(&table_json(&env), &dest);
    assert_eq!(state, "synced");
}
