//! Local mode's state database (`<mirrors>.state.db`): a `sync` killed with
//! SIGKILL at any moment leaves a file the next run opens and completes;
//! two `sync` processes on one file never regress a status; a corrupt file
//! is refused by name and left as it was; an old JSON state file is
//! imported once and kept as `.bak`.

// Test code: a panic is how a check fails.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mirrorfleet_tests::*;
use rand::Rng;
use serde_json::{Value, json};
use tokio::process::Child;

fn spawn(args: &[&str]) -> Child {
    spawn_bin("mirrorfleet-controller", args, &Env::new())
}

/// Run to the end; (exit code, stdout, stderr).
async fn finish(child: Child) -> (i32, String, String) {
    let out = child.wait_with_output().await.unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(!e.contains("panicked at"), "{e}");
    (out.status.code().unwrap_or(-1), o, e)
}

/// `sync --plain-http SRC,DST FILE` with `extra` flags.
fn sync_args<'a>(plain: &'a str, file: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["sync", "--plain-http", plain];
    v.extend_from_slice(extra);
    v.push(file.to_str().unwrap());
    v
}

/// One two-platform image in `repo` at the source, tagged `t0`..`t<n-1>`
/// there, and at the destination under the tags `at_dst` picks (its blobs
/// copied there first). Returns the index digest.
async fn tagged(stack: &Stack, repo: &str, n: usize, at_dst: impl Fn(usize) -> bool) -> String {
    let digest = push_image(stack, repo, "base").await;
    let raw = reqwest::Client::new()
        .get(format!("http://{}/v2/{repo}/manifests/base", stack.src))
        .header("accept", OCI_INDEX)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&raw), digest);
    let plain = format!("{},{}", stack.src, stack.dst);
    let (code, out, err) = run_bin_off(
        "mirrorfleet-worker",
        &[
            "copy",
            "--plain-http",
            &plain,
            &format!("{}/{repo}:base", stack.src),
            &format!("{}/{repo}:base", stack.dst),
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let src = Pusher::new(Target::plain(&stack.src)).unwrap();
    let dst = Pusher::new(Target::plain(&stack.dst)).unwrap();
    let puts = (0..n)
        .map(|i| (&src, i))
        .chain((0..n).filter(|i| at_dst(*i)).map(|i| (&dst, i)));
    futures_util::stream::iter(puts)
        .map(|(p, i)| {
            let raw = &raw;
            async move {
                p.manifest(repo, &format!("t{i}"), OCI_INDEX, raw)
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    digest
}

/// Rows `SRC/repo:t<i>` -> `dest(i)` for each i below n: (source, destination).
fn rows(
    stack: &Stack,
    repo: &str,
    n: usize,
    dest: impl Fn(usize) -> String,
) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("{}/{repo}:t{i}", stack.src), dest(i)))
        .collect()
}

/// `DST/repo:t<i>`: every destination in the source's repository name.
fn same_repo(stack: &Stack, repo: &str, n: usize) -> Vec<(String, String)> {
    rows(stack, repo, n, |i| format!("{}/{repo}:t{i}", stack.dst))
}

/// Rows whose destination is `DST/repo:t<i>` where `in_sync(i)` (tagged
/// there by [`tagged`]), else `DST/repo-c<i>:t<i>`, a repository of its own
/// to copy into. Copies of one image into one repository at once push the
/// same child manifests concurrently, which trips distribution 2.8's
/// link-file race (a 400 DIGEST_INVALID) in the copy engine, not in the
/// state file these tests are about.
fn copies_apart(
    stack: &Stack,
    repo: &str,
    n: usize,
    in_sync: impl Fn(usize) -> bool,
) -> Vec<(String, String)> {
    rows(stack, repo, n, |i| {
        if in_sync(i) {
            format!("{}/{repo}:t{i}", stack.dst)
        } else {
            format!("{}/{repo}-c{i}:t{i}", stack.dst)
        }
    })
}

/// A mirror file of `rows` in a directory of its own.
fn mirror_file(rows: &[(String, String)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mirrors.yaml");
    let body: String = rows
        .iter()
        .map(|(s, d)| format!("  - source: {s}\n    destinations: [{d}]\n"))
        .collect();
    std::fs::write(&file, format!("mirrors:\n{body}")).unwrap();
    (dir, file)
}

/// Each row's status in the state file (`Null` where none).
fn statuses(rows: &[(String, String)], file: &Path) -> Vec<Value> {
    let st = local_state(file);
    rows.iter()
        .map(|(s, d)| st["status"][s][d].clone())
        .collect()
}

/// `(host, repository, tag)` of a reference with a tag.
fn parts(reference: &str) -> (&str, &str, &str) {
    let (host, rest) = reference.split_once('/').unwrap();
    let (repo, tag) = rest.rsplit_once(':').unwrap();
    (host, repo, tag)
}

/// How many of the rows' destinations hold `digest` (HEAD).
async fn holding(rows: &[(String, String)], digest: &str) -> usize {
    let client = reqwest::Client::new();
    futures_util::stream::iter(rows)
        .map(|(_, d)| {
            let client = &client;
            async move {
                let (host, repo, tag) = parts(d);
                let r = client
                    .head(format!("http://{host}/v2/{repo}/manifests/{tag}"))
                    .header("accept", OCI_INDEX)
                    .send()
                    .await
                    .unwrap();
                r.headers()
                    .get("docker-content-digest")
                    .is_some_and(|d| d.to_str().unwrap() == digest)
            }
        })
        .buffer_unordered(16)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await
}

/// Successful manifest PUTs by tag at the destination registry, per
/// `repository:tag`, in repositories whose name starts with `repo`.
fn tag_puts(stack: &Stack, repo: &str) -> BTreeMap<String, usize> {
    let log = std::fs::read_to_string(stack.dir.join("dst.log")).unwrap();
    let needle = format!("\"PUT /v2/{repo}");
    let mut out = BTreeMap::new();
    for l in log
        .lines()
        .filter(|l| l.contains(&needle) && l.contains("\" 201 "))
    {
        let path = l
            .split("\"PUT /v2/")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        if let Some((r, tag)) = path.split_once("/manifests/")
            && !tag.starts_with("sha256:")
        {
            *out.entry(format!("{r}:{tag}")).or_insert(0) += 1;
        }
    }
    out
}

#[tokio::test]
async fn a_sync_killed_at_any_moment_leaves_a_file_the_next_run_completes() {
    const ROWS: usize = 2000;
    let stack = Stack::get();
    let repo = unique("ls-kill");
    // Nine in ten destinations are in sync already (statuses to record),
    // the others must be copied (claims, then results), each into a
    // repository of its own (see `copies_apart`). Referrers are not looked
    // for: this is about the state file, and it keeps the copies quick.
    let t0 = Instant::now();
    let digest = tagged(&stack, &repo, ROWS, |i| i % 10 != 0).await;
    let rows = copies_apart(&stack, &repo, ROWS, |i| i % 10 != 0);
    let (_dir, file) = mirror_file(&rows);
    let plain = format!("{},{}", stack.src, stack.dst);
    let args = sync_args(&plain, &file, &["--workers", "8", "--no-referrers"]);

    // Killed: once as the first statuses land (a batch of in-sync statuses
    // or of claims), then once while copies land, at a random moment.
    for kill in 0..2 {
        let copied_before = statuses(&rows, &file)
            .iter()
            .filter(|s| s["state"] == "synced" && s["last_success"].is_string())
            .count();
        let child = spawn(&args);
        let start = Instant::now();
        loop {
            let now = statuses(&rows, &file);
            let written = now.iter().filter(|s| !s.is_null()).count();
            // A copy records its success time; a status found in sync has none.
            let copied = now
                .iter()
                .filter(|s| s["state"] == "synced" && s["last_success"].is_string())
                .count();
            if (kill == 0 && written > 0) || (kill > 0 && copied > copied_before) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "run {kill} made no progress"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let extra = if kill == 0 {
            0
        } else {
            rand::rng().random_range(0..500)
        };
        tokio::time::sleep(Duration::from_millis(extra)).await;
        kill9(child).await;
        assert_eq!(state_integrity(&file), "ok", "after kill {kill}");
        let left = statuses(&rows, &file);
        let synced = left.iter().filter(|s| s["state"] == "synced").count();
        let claimed = left
            .iter()
            .filter(|s| s["state"] == "queued" || s["state"] == "copying")
            .count();
        eprintln!(
            "{:.1?}: killed after {extra} ms more: {synced} of {ROWS} synced, {claimed} claimed",
            t0.elapsed()
        );
    }

    // The next run opens the file, queues again what the killed runs had
    // claimed (their queue died with them), and completes.
    let (code, out, err) = finish(spawn(&args)).await;
    eprintln!("{:.1?}: the next run completed", t0.elapsed());
    assert_eq!(
        code,
        0,
        "{err}\n{}",
        out.lines().take(20).collect::<Vec<_>>().join("\n")
    );
    for (i, s) in statuses(&rows, &file).iter().enumerate() {
        assert_eq!(s["state"], "synced", "t{i}: {s}");
        assert_eq!(s["dest_digest"], digest.as_str(), "t{i}: {s}");
    }
    assert_eq!(holding(&rows, &digest).await, ROWS);
    // And a run after it has nothing to do.
    let (code, out, err) = finish(spawn(&sync_args(&plain, &file, &["--output", "json"]))).await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["plan"]["jobs_enqueued"], 0, "{v}");
    assert_eq!(v["plan"]["in_sync"], ROWS, "{v}");
}

#[tokio::test]
async fn two_syncs_on_one_file_never_regress_a_status() {
    const ROWS: usize = 400;
    let stack = Stack::get();
    let repo = unique("ls-two");
    let digest = tagged(&stack, &repo, ROWS, |i| i % 2 == 0).await;
    // The even rows are in sync; each odd one is copied into a repository
    // of its own.
    let rows = copies_apart(&stack, &repo, ROWS, |i| i % 2 == 0);
    let (_dir, file) = mirror_file(&rows);
    let plain = format!("{},{}", stack.src, stack.dst);
    let args = sync_args(&plain, &file, &[]);

    // Both start on a file that does not exist yet.
    let a = tokio::spawn(finish(spawn(&args)));
    let b = tokio::spawn(finish(spawn(&args)));
    // Watched while they run: a destination seen synced is never seen
    // queued or copying afterwards, and its last attempt never goes back.
    let mut seen_synced: BTreeSet<usize> = BTreeSet::new();
    let mut last_attempt: BTreeMap<usize, String> = BTreeMap::new();
    let mut looks = 0;
    while !(a.is_finished() && b.is_finished()) {
        for (i, s) in statuses(&rows, &file).iter().enumerate() {
            if s.is_null() {
                assert!(!seen_synced.contains(&i), "t{i}: its status went away");
                continue;
            }
            if s["state"] == "synced" {
                seen_synced.insert(i);
            } else {
                assert!(
                    !seen_synced.contains(&i),
                    "t{i} was synced, now {s} (a regression)"
                );
            }
            if let Some(t) = s["last_attempt"].as_str() {
                if let Some(before) = last_attempt.get(&i) {
                    assert!(before.as_str() <= t, "t{i}: attempt {before} then {t}");
                }
                last_attempt.insert(i, t.to_string());
            }
        }
        looks += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ca, oa, ea) = a.await.unwrap();
    let (cb, ob, eb) = b.await.unwrap();
    // Each exits 0, or 1 when its last look found a row the other one was
    // still copying; neither fails a copy or a write.
    assert!(ca == 0 || ca == 1, "{ca}: {ea}");
    assert!(cb == 0 || cb == 1, "{cb}: {eb}");
    assert!(!ea.contains("ERROR") && !eb.contains("ERROR"), "{ea}\n{eb}");
    assert!(
        ca == 0 || cb == 0,
        "neither saw everything synced:\n{oa}\n{ob}"
    );
    eprintln!("{looks} looks at the file while both ran; exits {ca} and {cb}");
    assert!(looks > 1, "the runs ended before the file was looked at");
    for (i, s) in statuses(&rows, &file).iter().enumerate() {
        assert_eq!(s["state"], "synced", "t{i}: {s}");
        assert_eq!(s["dest_digest"], digest.as_str(), "t{i}: {s}");
    }
    assert_eq!(holding(&rows, &digest).await, ROWS);
    // The claim held across the two processes: each destination to copy
    // was pushed once, by one of them.
    let puts = tag_puts(&stack, &format!("{repo}-c"));
    assert_eq!(puts.len(), ROWS / 2, "{puts:?}");
    assert!(puts.values().all(|n| *n == 1), "copied twice: {puts:?}");
}

#[tokio::test]
async fn a_corrupt_state_file_is_refused_by_name_and_left_as_it_was() {
    let stack = Stack::get();
    let repo = unique("ls-corrupt");
    let digest = tagged(&stack, &repo, 1, |_| false).await;
    let rows = same_repo(&stack, &repo, 1);
    let (_dir, file) = mirror_file(&rows);
    let db = state_db(&file);
    let bytes = random_bytes(64 * 1024);
    std::fs::write(&db, &bytes).unwrap();
    let plain = format!("{},{}", stack.src, stack.dst);
    let (code, out, err) = finish(spawn(&sync_args(&plain, &file, &[]))).await;
    assert_eq!(code, 2, "invalid configuration: {out}{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert_eq!(
        line,
        format!(
            "error: {}: not a readable state database (move it away to start over; \
             the next run finds what is in sync again): file is not a database",
            db.display()
        )
    );
    assert_eq!(std::fs::read(&db).unwrap(), bytes, "the file was changed");
    assert_eq!(holding(&rows, &digest).await, 0, "it synced anyway");
    // Moved away, the next run starts over and syncs.
    std::fs::rename(&db, db.with_extension("db.corrupt")).unwrap();
    let (code, _, err) = finish(spawn(&sync_args(&plain, &file, &[]))).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(holding(&rows, &digest).await, 1);
}

#[tokio::test]
async fn an_old_json_state_file_is_imported_once_and_kept_as_a_backup() {
    const ROWS: usize = 20;
    let stack = Stack::get();
    let repo = unique("ls-import");
    let digest = tagged(&stack, &repo, ROWS, |_| true).await;
    let rows = same_repo(&stack, &repo, ROWS);
    let (dir, file) = mirror_file(&rows);
    // What the old format recorded: every destination synced, long ago.
    let mut status = serde_json::Map::new();
    for (s, d) in &rows {
        status.insert(
            s.clone(),
            json!({ d: {
                "state": "synced", "source_digest": digest, "dest_digest": digest,
                "last_attempt": "2020-01-01T00:00:00Z", "last_success": "2020-01-01T00:00:09Z",
                "attempts": 7, "bytes_copied": 12345
            }}),
        );
    }
    let old = serde_json::to_vec_pretty(&json!({"status": status, "errors": {}})).unwrap();
    let json_path = dir.path().join("mirrors.yaml.state.json");
    std::fs::write(&json_path, &old).unwrap();
    let plain = format!("{},{}", stack.src, stack.dst);

    let (code, out, err) = finish(spawn(&sync_args(&plain, &file, &[]))).await;
    assert_eq!(code, 0, "{err}");
    // The first run's table shows the imported statuses.
    assert_eq!(out.matches("2020-01-01T00:00:09Z").count(), ROWS, "{out}");
    assert!(!json_path.exists(), "the old file is still in place");
    let bak = dir.path().join("mirrors.yaml.state.json.bak");
    assert_eq!(std::fs::read(&bak).unwrap(), old, "the backup differs");
    // Recorded as in sync, they were not written again (still 7 attempts)
    // and nothing was copied.
    for (i, s) in statuses(&rows, &file).iter().enumerate() {
        assert_eq!(s["attempts"], 7, "t{i}: {s}");
        assert_eq!(s["last_success"], "2020-01-01T00:00:09Z", "t{i}: {s}");
    }
    let puts = tag_puts(&stack, &repo);
    assert!(puts.values().all(|n| *n == 1), "re-copied: {puts:?}");

    // A later run does not import again, even an old file put back.
    std::fs::write(
        &json_path,
        serde_json::to_vec(&json!({"status": {}, "errors": {rows[0].0.clone(): "stale"}})).unwrap(),
    )
    .unwrap();
    let (code, out, err) = finish(spawn(&sync_args(&plain, &file, &["--output", "json"]))).await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["plan"]["in_sync"], ROWS, "{v}");
    assert_eq!(v["plan"]["jobs_enqueued"], 0, "{v}");
    assert!(json_path.exists(), "a file not imported was moved");
    assert_eq!(local_state(&file)["errors"], json!({}));
}
