//! Crashes: workers killed with SIGKILL at chosen points of a copy, and
//! controllers killed mid-scan or mid-enqueue, or run twice at once. Nothing
//! may be lost, nothing copied twice at the same time, and no destination tag
//! may ever point at an incomplete image (checked with skopeo after every
//! kill).

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use mirrorfleet_tests::faults::{FaultProxy, Faults};
use mirrorfleet_tests::*;
use rand::Rng;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

fn spawn(bin: &str, args: &[&str], env: &Env) -> Child {
    let path = worker_bin().with_file_name(bin);
    Command::new(path)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("RUST_LOG")
        .env("MIRRORFLEET_PROGRESS", "never")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Run to the end; (exit code, stdout, stderr).
async fn run(bin: &str, args: &[&str], env: &Env) -> (i32, String, String) {
    let out = spawn(bin, args, env).wait_with_output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// SIGKILL, and wait for the process to be gone.
async fn kill9(mut child: Child) {
    child.start_kill().unwrap();
    let out = child.wait_with_output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked at"), "{err}");
}

fn table_rows(stdout: &str) -> Vec<Value> {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Where a worker is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum KillPoint {
    /// At a random moment after start (often while receiving or planning).
    Random,
    /// When a blob upload's body starts streaming to the destination.
    MidBlob,
    /// When a child manifest is being pushed (before the index).
    BetweenChildren,
    /// When the index itself is being pushed under its tag.
    AtIndex,
}

impl KillPoint {
    fn matches(self, event: &str) -> bool {
        match self {
            KillPoint::Random => false,
            KillPoint::MidBlob => event.starts_with("PUT ") && event.contains("/blobs/uploads/"),
            KillPoint::BetweenChildren => {
                event.starts_with("PUT ") && event.contains("/manifests/sha256:")
            }
            KillPoint::AtIndex => event.starts_with("PUT ") && event.contains("/manifests/t"),
        }
    }
}

#[tokio::test]
async fn workers_killed_at_any_point_lose_nothing_and_never_leave_a_broken_tag() {
    const KILLS: usize = 24;
    let stack = Stack::get();
    let table = unique("crash");
    // Jobs come back 3 s after a kill (the worker's visibility); no job
    // may reach the DLQ because of kills, so it allows many receives.
    let (queue, dlq) = moto_queue_with_dlq(&stack, &unique("crash"), 1000).await;

    // 16 images, 2 platforms, 512 KiB layers, read at 1 MiB/s per stream
    // from the source: a copy takes long enough to be killed inside it.
    let prefix = unique("crash");
    let fleet = Pusher::new(Target::plain(&stack.src))
        .unwrap()
        .fleet(&prefix, 4, 4, 512)
        .await
        .unwrap();
    let sp = FaultProxy::start(
        &stack.src,
        Faults {
            bytes_per_second: 1024 * 1024,
            ..Default::default()
        },
        1,
    )
    .await
    .unwrap();
    // Hold index pushes a moment so a kill "at the index" lands before it is written.
    let dp = FaultProxy::start(
        &stack.dst,
        Faults {
            stall: 1.0,
            stall_for: Duration::from_millis(300),
            only: Some("/manifests/t".into()),
            ..Default::default()
        },
        2,
    )
    .await
    .unwrap();
    let (tx, mut events) = mpsc::unbounded_channel::<String>();
    dp.set_hook(Some(Arc::new(move |m: &str, p: &str| {
        let _ = tx.send(format!("{m} {p}"));
    })));
    let env = control_env(&stack, &table, &queue, &[&sp.addr, &dp.addr, &stack.dst]);
    let (code, out, err) = run("mirrorfleet-controller", &["table", "create"], &env).await;
    assert_eq!(code, 0, "{out}{err}");
    for (repo, tag, _) in &fleet {
        let (code, out, err) = run(
            "mirrorfleet-controller",
            &[
                "table",
                "add",
                &format!("{}/{repo}:{tag}", sp.addr),
                &format!("{}/{repo}:{tag}", dp.addr),
            ],
            &env,
        )
        .await;
        assert_eq!(code, 0, "{out}{err}");
    }
    let (code, out, err) = run("mirrorfleet-controller", &["run"], &env).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(queue_depth(&stack, &queue).await, 16);

    let sk = Skopeo::plain();
    let check_tags = || {
        let mut present = 0;
        for (repo, tag, digest) in &fleet {
            let name = format!("{}/{repo}", stack.dst);
            if let Ok(raw) = sk.raw(&format!("{name}:{tag}")) {
                assert_eq!(&sha256(&raw), digest, "{name}:{tag} has another digest");
                sk.assert_tree(&name, digest)
                    .unwrap_or_else(|e| panic!("{name}:{tag} is incomplete: {e}"));
                present += 1;
            }
        }
        present
    };

    let worker_args = [
        "consume",
        "--jobs",
        "2",
        "--visibility",
        "3s",
        "--wait",
        "1s",
    ];
    let points = [
        KillPoint::Random,
        KillPoint::MidBlob,
        KillPoint::BetweenChildren,
        KillPoint::AtIndex,
    ];
    let mut kills: BTreeMap<KillPoint, usize> = BTreeMap::new();
    let mut missed = 0;
    for i in 0..KILLS {
        let point = points[i % points.len()];
        while events.try_recv().is_ok() {}
        let child = spawn("mirrorfleet-worker", &worker_args, &env);
        let hit = match point {
            KillPoint::Random => {
                let ms = rand::rng().random_range(100..1500);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                true
            }
            _ => tokio::time::timeout(Duration::from_secs(8), async {
                while let Some(e) = events.recv().await {
                    if point.matches(&e) {
                        return;
                    }
                }
            })
            .await
            .is_ok(),
        };
        kill9(child).await;
        if hit {
            *kills.entry(point).or_default() += 1;
        } else {
            missed += 1;
        }
        // Never a broken tag, at any moment.
        check_tags();
    }
    let present_before_recovery = check_tags();

    // Recovery: one worker runs until the queue stays empty.
    dp.set_hook(None);
    let (code, out, err) = run(
        "mirrorfleet-worker",
        &[
            &worker_args[..],
            &["--exit-when-idle", "8s", "--output", "json"],
        ]
        .concat(),
        &env,
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("panicked at"), "{err}");
    assert_eq!(check_tags(), 16, "every image converged");
    assert_eq!(
        queue_depth(&stack, &queue).await,
        0,
        "jobs left in the queue"
    );
    assert_eq!(queue_depth(&stack, &dlq).await, 0, "jobs in the DLQ");
    let (code, out, err) = run(
        "mirrorfleet-controller",
        &["table", "ls", "--output", "json"],
        &env,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let rows = table_rows(&out);
    assert_eq!(rows.len(), 16);
    for r in &rows {
        assert_eq!(r["state"], "synced", "{r}");
    }
    let total: usize = kills.values().sum();
    eprintln!(
        "crash: {total} kills at a copy point {kills:?}, {missed} with the queue momentarily empty; \
         {present_before_recovery}/16 images complete before recovery, 16/16 after; queue 0, DLQ 0"
    );
    assert!(total >= 20, "only {total} kills landed: {kills:?}");
    assert!(
        kills.len() == points.len(),
        "some kill point never hit: {kills:?}"
    );
}

#[tokio::test]
async fn controllers_killed_mid_scan_or_run_twice_at_once_enqueue_each_row_once() {
    const ROWS: u64 = 30;
    let stack = Stack::get();
    let table = unique("ctl-crash");
    let (queue, dlq) = moto_queue_with_dlq(&stack, &unique("ctl-crash"), 3).await;
    let prefix = unique("ctl-crash");
    let fleet = Pusher::new(Target::plain(&stack.src))
        .unwrap()
        .fleet(&prefix, 3, 10, 4)
        .await
        .unwrap();
    let env = control_env(&stack, &table, &queue, &[&stack.src, &stack.dst]);
    let (code, out, err) = run("mirrorfleet-controller", &["table", "create"], &env).await;
    assert_eq!(code, 0, "{out}{err}");
    let mirrors: String = fleet
        .iter()
        .map(|(repo, tag, _)| {
            format!(
                "  - source: {}/{repo}:{tag}\n    destinations: [{}/{repo}:{tag}]\n",
                stack.src, stack.dst
            )
        })
        .collect();
    let file = std::env::temp_dir().join(format!("{}.yaml", unique("ctl-crash")));
    std::fs::write(&file, format!("mirrors:\n{mirrors}")).unwrap();
    let (code, out, err) = run(
        "mirrorfleet-controller",
        &["table", "import", file.to_str().unwrap()],
        &env,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");

    // Killed mid-scan, twice (small pages: the scan takes a while)...
    let scan = ["run", "--segments", "1", "--scan-page-size", "3"];
    for _ in 0..2 {
        let child = spawn("mirrorfleet-controller", &scan, &env);
        let ms = rand::rng().random_range(50..400);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        kill9(child).await;
    }
    // ...and once while enqueueing: within moments of its first batch of 10
    // reaching the queue, so the next batch may be claimed and never sent,
    // which only the hold-off below brings back.
    let child = spawn("mirrorfleet-controller", &scan, &env);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while queue_depth(&stack, &queue).await == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ms = rand::rng().random_range(0..60);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    kill9(child).await;
    let after_kills = queue_depth(&stack, &queue).await;
    assert!(after_kills > 0, "the third controller sent nothing in 60 s");
    // Then two at once.
    let (a, b) = tokio::join!(
        run("mirrorfleet-controller", &scan, &env),
        run("mirrorfleet-controller", &scan, &env)
    );
    assert_eq!(a.0, 0, "{}{}", a.1, a.2);
    assert_eq!(b.0, 0, "{}{}", b.1, b.2);
    let first = queue_depth(&stack, &queue).await;
    assert!(first <= ROWS, "{first} jobs for {ROWS} rows: duplicates");

    // Work the queue; then a run that re-queues whatever a killed
    // controller claimed but never sent (the hold-off, shortened).
    let worker = [
        "consume",
        "--jobs",
        "4",
        "--wait",
        "1s",
        "--exit-when-idle",
        "2s",
        "--visibility",
        "5s",
    ];
    let (code, out, err) = run("mirrorfleet-worker", &worker, &env).await;
    assert_eq!(code, 0, "{out}{err}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, out, err) = run(
        "mirrorfleet-controller",
        &["run", "--requeue-after", "1s"],
        &env,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let second = queue_depth(&stack, &queue).await;
    assert_eq!(
        first + second,
        ROWS,
        "every row enqueued exactly once ({first} + {second})"
    );
    let (code, out, err) = run("mirrorfleet-worker", &worker, &env).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(
        "mirrorfleet-controller",
        &["table", "ls", "--output", "json"],
        &env,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let rows = table_rows(&out);
    assert_eq!(rows.len() as u64, ROWS);
    for r in &rows {
        assert_eq!(r["state"], "synced", "{r}");
    }
    assert_eq!(queue_depth(&stack, &dlq).await, 0);
    eprintln!(
        "controllers: 2 killed mid-scan, 1 mid-enqueue ({after_kills} jobs sent before the kills), 2 concurrent; \
         {first} jobs, then {second} re-queued after the hold-off; {ROWS} rows synced once each"
    );
}
