//! Crashes: workers killed with SIGKILL at chosen points of a copy, and
//! controllers killed mid-scan or mid-enqueue, or run twice at once. Nothing
//! may be lost, nothing copied twice at the same time, and no destination tag
//! may ever point at an incomplete image (checked with skopeo after every
//! kill).

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mirrorfleet_tests::faults::{FaultProxy, Faults};
use mirrorfleet_tests::recording::{RecordingConfig, RecordingFront};
use mirrorfleet_tests::*;
use rand::Rng;
use serde_json::Value;
use tokio::sync::mpsc;

/// Run to the end; (exit code, stdout, stderr).
async fn run(bin: &str, args: &[&str], env: &Env) -> (i32, String, String) {
    let out = spawn_bin(bin, args, env).wait_with_output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether the tag exists (a HEAD); skopeo then checks it whole.
fn tag_exists(host: &str, repo: &str, tag: &str) -> bool {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-I", "-w", "%{http_code}"])
        .arg(format!("http://{host}/v2/{repo}/manifests/{tag}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout) == "200"
}

/// The highest `receive_count` a worker's job spans name in `logs`.
fn max_receive_count(logs: &str) -> u32 {
    logs.split("receive_count=")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
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
    /// A moment after an index was pushed: that image is whole, the
    /// worker's other copy is cut.
    AfterIndex,
}

impl KillPoint {
    fn matches(self, event: &str) -> bool {
        match self {
            KillPoint::Random => false,
            KillPoint::MidBlob => event.starts_with("PUT ") && event.contains("/blobs/uploads/"),
            KillPoint::BetweenChildren => {
                event.starts_with("PUT ") && event.contains("/manifests/sha256:")
            }
            KillPoint::AtIndex | KillPoint::AfterIndex => {
                event.starts_with("PUT ") && event.contains("/manifests/t")
            }
        }
    }
}

#[tokio::test]
async fn workers_killed_at_any_point_lose_nothing_and_never_leave_a_broken_tag() {
    const KILLS: usize = 25;
    const IMAGES: u64 = 24;
    let stack = Stack::get();
    let table = unique("crash");
    // Jobs come back 3 s after a kill (the worker's visibility), and after 3
    // receives, as deployed, a job is in the dead-letter queue.
    let (queue, dlq) = moto_queue_with_dlq(&stack, &unique("crash"), 3).await;

    // 24 images, 2 platforms, 512 KiB layers, read at 1 MiB/s per stream
    // from the source: a copy takes long enough to be killed inside it.
    let prefix = unique("crash");
    let fleet = Pusher::new(Target::plain(&stack.src))
        .unwrap()
        .fleet(&prefix, 6, 4, 512)
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
    // The destination checks nothing (it takes a manifest whatever it
    // references), as some registries do, and records every manifest pushed
    // before what it references: distribution's own checks cannot hide a
    // wrong order here.
    let lax = RecordingFront::start(
        &stack.dst,
        RecordingConfig {
            keep_manifests: true,
            ..Default::default()
        },
    )
    .unwrap();
    // Hold index pushes a moment so a kill "at the index" lands before it is written.
    let dp = FaultProxy::start(
        &lax.addr,
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
    let env = control_env(&stack, &table, &queue, &[&sp.addr, &dp.addr, &lax.addr]);
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
    assert_eq!(queue_depth(&stack, &queue).await, IMAGES);

    // Every tag present must be whole: skopeo reads every manifest and
    // every blob of it, digests checked. Any skopeo failure but the tag
    // itself being absent fails the test. A tag found whole stays whole.
    let sk = Skopeo::plain();
    let whole = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let check_tags = || {
        for (repo, tag, digest) in &fleet {
            let reference = format!("{}/{repo}:{tag}", lax.addr);
            if whole.borrow().contains(&reference) || !tag_exists(&lax.addr, repo, tag) {
                continue;
            }
            let complete = sk
                .complete(&reference)
                .unwrap_or_else(|e| panic!("{reference} is present but broken: {e}"));
            if complete {
                assert_eq!(&sk.digest(&reference).unwrap(), digest, "{reference}");
                whole.borrow_mut().insert(reference);
            }
        }
        assert_eq!(
            lax.violations(),
            Vec::<String>::new(),
            "pushed out of order"
        );
        whole.borrow().len()
    };

    // One job per worker while killing, so a kill cuts one job's receive.
    let worker_args = [
        "consume",
        "--jobs",
        "1",
        "--visibility",
        "3s",
        "--wait",
        "1s",
    ];
    let recovery_args = [
        "consume",
        "--jobs",
        "4",
        "--visibility",
        "3s",
        "--wait",
        "1s",
        "--exit-when-idle",
        "8s",
        "--output",
        "json",
    ];
    let points = [
        KillPoint::Random,
        KillPoint::MidBlob,
        KillPoint::BetweenChildren,
        KillPoint::AtIndex,
        KillPoint::AfterIndex,
    ];
    let mut kills: BTreeMap<KillPoint, usize> = BTreeMap::new();
    let mut missed = 0;
    let mut logs = String::new();
    for i in 0..KILLS {
        let point = points[i % points.len()];
        while events.try_recv().is_ok() {}
        let child = spawn_bin("mirrorfleet-worker", &worker_args, &env);
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
        if point == KillPoint::AfterIndex && hit {
            // The index push is held 300 ms by the proxy, then written.
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        logs.push_str(&kill9(child).await);
        if hit {
            *kills.entry(point).or_default() += 1;
        } else {
            missed += 1;
        }
        // Never a broken tag, at any moment.
        check_tags();
    }
    let present_before_recovery = check_tags();
    assert!(
        present_before_recovery > 0,
        "no image was ever complete before recovery: the kills proved nothing"
    );

    // Recovery: one worker runs until the queue stays empty.
    dp.set_hook(None);
    let (code, out, err) = run("mirrorfleet-worker", &recovery_args, &env).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("panicked at"), "{err}");
    logs.push_str(&err);
    let receives = max_receive_count(&logs);
    assert!(
        (1..=3).contains(&receives),
        "a job was received {receives} times (the queue allows 3)"
    );
    assert_eq!(
        queue_depth(&stack, &queue).await,
        0,
        "jobs left in the queue"
    );
    // A job killed on all three of its receives is in the dead-letter queue.
    // Its row must say so (never "synced"), and the controller's hold-off
    // queues it again: what reached the DLQ is reported and recovered.
    let dead = queue_depth(&stack, &dlq).await;
    let ls = || async {
        let (code, out, err) = run(
            "mirrorfleet-controller",
            &["table", "ls", "--output", "json"],
            &env,
        )
        .await;
        assert_eq!(code, 0, "{err}");
        table_rows(&out)
    };
    let rows = ls().await;
    let unsynced = rows.iter().filter(|r| r["state"] != "synced").count() as u64;
    // (A job killed after its status was written may be there with its row
    // synced: the work was done.)
    assert!(
        unsynced <= dead,
        "{unsynced} rows not synced, {dead} jobs in the DLQ: {rows:#?}"
    );
    if unsynced > 0 {
        let (code, out, err) = run(
            "mirrorfleet-controller",
            &["run", "--requeue-after", "1s", "--output", "json"],
            &env,
        )
        .await;
        assert_eq!(code, 0, "{out}{err}");
        let summary: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(summary["jobs_enqueued"], unsynced, "{summary}");
        let (code, out, err) = run("mirrorfleet-worker", &recovery_args, &env).await;
        assert_eq!(code, 0, "{out}\n{err}");
    }
    assert_eq!(check_tags() as u64, IMAGES, "every image converged");
    let rows = ls().await;
    assert_eq!(rows.len() as u64, IMAGES);
    for r in &rows {
        assert_eq!(r["state"], "synced", "{r}");
    }
    let total: usize = kills.values().sum();
    eprintln!(
        "crash: {total} kills at a copy point {kills:?}, {missed} with the queue momentarily empty; \
         {present_before_recovery}/{IMAGES} images complete before recovery, all after; \
         at most {receives} receives per job; {dead} in the DLQ, reported and queued again"
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

    // Killed while enqueueing, on a table nothing has claimed yet: its SQS
    // traffic goes through a gate that holds every send after the first
    // batch, so the next batch is claimed and never sent, which only the
    // hold-off below brings back.
    let scan = ["run", "--segments", "1", "--scan-page-size", "3"];
    let gate = mirrorfleet_tests::ecr_double::AwsGate::start(
        &stack.moto,
        mirrorfleet_tests::iam::Policy::everything(),
    )
    .unwrap();
    gate.hold_after("SendMessageBatch", 1);
    let mut gated = env.clone();
    for (k, v) in &mut gated {
        if k == "AWS_ENDPOINT_URL" {
            *v = gate.url.clone();
        }
    }
    let child = spawn_bin("mirrorfleet-controller", &scan, &gated);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while gate.held() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gate.held(), 1, "the second batch was never sent");
    kill9(child).await;
    let after_gate = queue_depth(&stack, &queue).await;
    assert_eq!(after_gate, 10, "the first batch, and nothing after it");
    // Then killed mid-scan, twice (small pages: the scan takes a while). The
    // controller enqueues page by page, so these may send a batch, or claim
    // one and die before sending it: the accounting below counts both.
    for _ in 0..2 {
        let child = spawn_bin("mirrorfleet-controller", &scan, &env);
        let ms = rand::rng().random_range(50..400);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        kill9(child).await;
    }
    let after_kills = queue_depth(&stack, &queue).await;
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
    assert!(
        second > 0,
        "the rows claimed but never sent were not queued again"
    );
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
        "controllers: 1 killed mid-enqueue ({after_gate} jobs sent), 2 killed mid-scan ({after_kills} sent by then), 2 concurrent; \
         {first} jobs, then {second} re-queued after the hold-off; {ROWS} rows synced once each"
    );
}
