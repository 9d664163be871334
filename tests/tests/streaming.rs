//! The controller plans the table page by page as the scan reads it, in
//! parallel segments, and enqueues as it goes. Pages of three items over
//! four segments (so every page boundary and segment is crossed) give the
//! same plan as the whole table read in one page, and the real run then
//! enqueues exactly the rows that differ, once each; a row that cannot be
//! used is reported on itself wherever it falls.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use mirrorfleet_tests::*;
use serde_json::Value;

#[tokio::test]
async fn pages_of_three_over_four_segments_plan_as_one_page_does() {
    let stack = Stack::get();
    let (env, queue, _) = control_setup(&stack, "mf-stream", &[&stack.src, &stack.dst], 3).await;
    let repo = unique("stream");
    push_image(&stack, &repo, "v1").await;
    // 12 rows in sync (copied first), 12 whose destination is missing.
    let src = format!("{}/{repo}:v1", stack.src);
    let (code, out, err) = run_env(
        "mirrorfleet-worker",
        &["copy", &src, &format!("{}/{repo}:v1", stack.dst)],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let mut missing = Vec::new();
    for i in 0..24 {
        let tag = format!("t{i}");
        // Every source is a tag of the one image, so every row is readable.
        let (code, out, err) = run_env(
            "mirrorfleet-worker",
            &["copy", &src, &format!("{}/{repo}:{tag}", stack.src)],
            &env,
        );
        assert_eq!(code, 0, "{out}{err}");
        let dest = format!("{}/{repo}:{tag}", stack.dst);
        if i % 2 == 0 {
            let (code, out, err) = run_env("mirrorfleet-worker", &["copy", &src, &dest], &env);
            assert_eq!(code, 0, "{out}{err}");
        } else {
            missing.push(format!("{}/{repo}:{tag}", stack.src));
        }
        let (code, out, err) = run_env(
            "mirrorfleet-controller",
            &[
                "table",
                "add",
                &format!("{}/{repo}:{tag}", stack.src),
                &dest,
            ],
            &env,
        );
        assert_eq!(code, 0, "{out}{err}");
    }
    // A row written by hand that cannot be used.
    moto_dynamodb(&stack)
        .put_item()
        .table_name(
            env.iter()
                .find(|(k, _)| k == "MIRRORFLEET_TABLE")
                .unwrap()
                .1
                .clone(),
        )
        .item(
            "source",
            aws_sdk_dynamodb::types::AttributeValue::S("not a reference!".into()),
        )
        .item(
            "destinations",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("{}/x:y", stack.dst)),
        )
        .send()
        .await
        .unwrap();

    let dry = |extra: &[&str]| -> Vec<Value> {
        let mut args = vec!["run", "--dry-run", "--output", "json"];
        args.extend(extra);
        let (code, out, err) = run_env("mirrorfleet-controller", &args, &env);
        assert_eq!(code, 1, "the bad row fails the run: {out}{err}");
        let plan: Vec<Value> = serde_json::from_str(&out).unwrap();
        plan
    };
    let whole = dry(&["--segments", "1"]);
    let paged = dry(&["--segments", "4", "--scan-page-size", "3"]);
    assert_eq!(whole.len(), 25, "{whole:#?}");
    assert_eq!(paged, whole);
    let copies: Vec<&str> = whole
        .iter()
        .filter(|p| p["action"] == "copy")
        .map(|p| p["source"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = missing.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(copies, want);
    assert!(whole.iter().any(|p| p["action"] == "invalid row"));

    // The real run, paged: each differing row enqueued once.
    let (code, out, err) = run_env(
        "mirrorfleet-controller",
        &[
            "run",
            "--segments",
            "4",
            "--scan-page-size",
            "3",
            "--output",
            "json",
        ],
        &env,
    );
    assert_eq!(code, 1, "{out}{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["rows_scanned"], 25, "{s}");
    assert_eq!(s["jobs_enqueued"], 12, "{s}");
    assert_eq!(s["in_sync"], 12, "{s}");
    assert_eq!(s["rows_failed"], 1, "{s}");
    assert_eq!(queue_depth(&stack, &queue).await, 12);
}

/// `table import` writes new rows in batches and updates rows that exist
/// in place: their status (written by a controller run) survives a
/// re-import, and every row of the file is there after it.
#[tokio::test]
async fn import_batches_new_rows_and_keeps_the_status_of_existing_ones() {
    let stack = Stack::get();
    let (env, _, _) = control_setup(&stack, "mf-import", &[&stack.src, &stack.dst], 3).await;
    let repo = unique("import");
    push_image(&stack, &repo, "v1").await;
    let dir = tempfile::tempdir().unwrap();
    let file = |n: usize| {
        let mut yaml = String::from("mirrors:\n");
        for i in 0..n {
            // Row 0 is the real image; the others are rows for tags that do not exist.
            let tag = if i == 0 {
                "v1".to_string()
            } else {
                format!("t{i}")
            };
            yaml.push_str(&format!(
                "  - source: {}/{repo}:{tag}\n    destinations: [{}/{repo}:{tag}]\n",
                stack.src, stack.dst
            ));
        }
        let p = dir.path().join(format!("m{n}.yaml"));
        std::fs::write(&p, yaml).unwrap();
        p.to_str().unwrap().to_string()
    };
    // 60 rows: three batches of 25, the last one short.
    let (code, out, err) = run_env(
        "mirrorfleet-controller",
        &["table", "import", &file(60)],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim_end(), "imported 60 mirrors");
    assert_eq!(table_ls_json(&env).len(), 60);
    // A run records row 0's status: queued.
    let (code, out, err) = run_env("mirrorfleet-controller", &["run"], &env);
    assert_eq!(code, 1, "the rows whose source is missing fail: {out}{err}");
    let source = format!("{}/{repo}:v1", stack.src);
    let state = |rows: &[Value]| {
        rows.iter()
            .find(|r| r["source"] == source.as_str())
            .map(|r| r["state"].clone())
    };
    assert_eq!(state(&table_ls_json(&env)), Some(Value::from("queued")));
    // Re-imported with 10 more: 70 rows, row 0 still queued.
    let (code, out, err) = run_env(
        "mirrorfleet-controller",
        &["table", "import", &file(70)],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let rows = table_ls_json(&env);
    assert_eq!(rows.len(), 70);
    assert_eq!(state(&rows), Some(Value::from("queued")), "{rows:#?}");
}
